"""The flask-orders example's dependencies for tests: an HTTP catalog API and a line-protocol KV store.

usage: python3 upstream.py HTTP_PORT KV_PORT [BLOB_MB]
With UPSTREAM_TLS_CERT and UPSTREAM_TLS_KEY set (PEM files), the catalog API speaks HTTPS.
"""
import json
import os
import ssl
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOB_MB = int(sys.argv[3]) if len(sys.argv) > 3 else 1


class Catalog(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/catalog/"):
            item = int(self.path.split("/")[2].split("?")[0])
            if item == 404:
                return self.send_json(404, {"error": "no such item"})
            if item == 500:
                # Cut short: a promise of 100 bytes, 10 sent, then the connection closes.
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b'{"id": 500')
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if item == 501:
                # Hangs up without answering.
                self.close_connection = True
                self.connection.shutdown(2)
                return
            return self.send_json(200, {"id": item, "name": f"item-{item}", "price": 2.5 * item, "stock": item % 3})
        if self.path == "/blob":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(BLOB_MB << 20))
            self.end_headers()
            block = bytes(range(256)) * 4096
            for _ in range(BLOB_MB):
                self.wfile.write(block)
            return
        self.send_json(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_json(200, {"sku": body["sku"], "unit_price": 4.25, "currency": "EUR"})

    def log_message(self, *args):
        pass


class KV(socketserver.StreamRequestHandler):
    counters = {}

    def handle(self):
        for line in self.rfile:
            parts = line.decode().split()
            if parts[0] == "INCR":
                KV.counters[parts[1]] = KV.counters.get(parts[1], 0) + 1
                self.wfile.write(f"VALUE {KV.counters[parts[1]]}\n".encode())
            elif parts[0] == "GET":
                self.wfile.write(f"VALUE {KV.counters.get(parts[1], 0)}\n".encode())
            else:
                self.wfile.write(b"ERR\n")


class KVServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    http = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Catalog)
    if os.environ.get("UPSTREAM_TLS_CERT"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.environ["UPSTREAM_TLS_CERT"], os.environ["UPSTREAM_TLS_KEY"])
        ctx.set_alpn_protocols(["http/1.1"])
        http.socket = ctx.wrap_socket(http.socket, server_side=True)
    kv = KVServer(("127.0.0.1", int(sys.argv[2])), KV)
    threading.Thread(target=kv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    http.serve_forever()
