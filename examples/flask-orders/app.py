"""A small orders service used by doppel's integration tests (and as an example).

Outbound calls: an HTTP catalog/pricing API (CATALOG_URL, called with `requests`), a key-value store that
speaks a line protocol doppel does not parse (KV_ADDR), and DNS when CATALOG_URL names a host.
APP_VARIANT=changed is the "new build": it computes order totals differently; APP_VARIANT=newcall asks
the catalog for one more field (a call that was never recorded).
"""
import hashlib
import json
import os
import socket
import threading

import requests
from flask import Flask, Response, jsonify, request

app = Flask(__name__)
CATALOG = os.environ.get("CATALOG_URL", "http://127.0.0.1:9200")
KV_HOST, KV_PORT = os.environ.get("KV_ADDR", "127.0.0.1:9201").rsplit(":", 1)
CHANGED = os.environ.get("APP_VARIANT") == "changed"
session = requests.Session()  # keep-alive connections to the catalog
lock = threading.Lock()


def kv(command):
    with socket.create_connection((KV_HOST, int(KV_PORT)), timeout=5) as s:
        s.sendall(command.encode() + b"\n")
        return s.makefile().readline().strip()


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.get("/api/items/<int:item_id>")
def item(item_id):
    fields = "name,price,stock" if os.environ.get("APP_VARIANT") == "newcall" else "name,price"
    r = session.get(f"{CATALOG}/catalog/{item_id}", params={"fields": fields})
    if r.status_code != 200:
        return jsonify(error="catalog", status=r.status_code), 502
    data = r.json()
    return jsonify(id=item_id, name=data["name"], price=data["price"], in_stock=data["stock"] > 0)


@app.post("/api/orders")
def create_order():
    order = request.get_json()
    priced = session.post(f"{CATALOG}/pricing", json={"sku": order["sku"], "qty": order["qty"]}).json()
    total = priced["unit_price"] * order["qty"]
    if CHANGED:
        total = round(total * 1.1, 2)  # the regression: a surcharge nobody asked for
    with lock:
        seq = kv(f"INCR orders")
    return jsonify(order_id=int(seq.split()[-1]), sku=order["sku"], qty=order["qty"], total=total, echo=order.get("ref")), 201


@app.post("/api/upload")
def upload():
    h = hashlib.sha256()
    size = 0
    while True:
        chunk = request.stream.read(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        size += len(chunk)
    return jsonify(size=size, sha256=h.hexdigest())


@app.get("/api/blob")
def blob():
    r = session.get(f"{CATALOG}/blob", stream=True)
    return Response(r.iter_content(1 << 20), content_type="application/octet-stream")


@app.get("/api/stream")
def stream():
    def gen():
        for i in range(5):
            yield json.dumps({"line": i}) + "\n"
    return Response(gen(), content_type="application/x-ndjson")


@app.get("/api/slow")
def slow():
    import time

    time.sleep(float(request.args.get("s", "5")))
    return jsonify(slept=True)


@app.get("/api/crash")
def crash():
    os._exit(3)  # the app dies in the middle of a request


@app.get("/api/garbage")
def garbage():
    """Sends random bytes to the KV store (a protocol violation) and over UDP to port 53, like a broken client."""
    junk = os.urandom(300)
    try:
        with socket.create_connection((KV_HOST, int(KV_PORT)), timeout=2) as s:
            s.sendall(junk)
            s.settimeout(0.5)
            try:
                s.recv(100)
            except OSError:
                pass
    except OSError:
        pass
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(junk[:40], ("10.20.30.40", 53))
    u.close()
    return jsonify(sent=len(junk))


@app.get("/api/kv/<key>")
def kv_get(key):
    return jsonify(key=key, value=kv(f"GET {key}"))


if __name__ == "__main__":
    from waitress import serve  # a production WSGI server: keep-alive, chunked request bodies

    serve(app, host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8080")), threads=16, _quiet=True)
