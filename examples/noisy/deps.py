"""The accounts service's dependencies for the tests: an audit log (POST /events) and a quota service
(GET /quota/<user id>). Usage: python3 deps.py PORT; prints "ready" when listening."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.reply(202, {"accepted": True})

    def do_GET(self):
        if self.path.startswith("/quota/"):
            self.reply(200, {"user_id": self.path.rsplit("/", 1)[-1], "limit": 100})
        else:
            self.reply(404, {"error": "not found"})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
