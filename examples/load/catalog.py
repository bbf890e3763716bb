"""A small catalog service for `doppel diff` examples and tests (Flask, served by waitress).

Every build answers with fields that change on each call, as real services do: a random `token`, the time
it answered (`served_at`) and a measured `load` that jitters a little. APP_VARIANT selects the build:

- unset: the primary build;
- `changed`: the candidate with a regression: prices go up 10%, the description gains markup and the last
  byte of `/api/blob` changes.

Usage: APP_PORT=8080 [APP_VARIANT=changed] python3 catalog.py
"""
import itertools
import os
import random
import secrets
import time

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
CHANGED = os.environ.get("APP_VARIANT") == "changed"
PRICES = {1: 9.5, 2: 12.0, 3: 4.25, 7: 19.99}
order_ids = itertools.count(1000)


def item(item_id):
    price = PRICES.get(item_id, 1.0)
    description = f"Item number {item_id}"
    if CHANGED:
        price = round(price * 1.1, 2)
        description = f"<script>alert('item {item_id}')</script> Item number {item_id}"
    return {
        "id": item_id,
        "name": f"item-{item_id}",
        "price": price,
        "description": description,
        "token": secrets.token_hex(8),
        "served_at": time.time(),
        "load": round(0.5 + random.random() * 0.2, 3),
    }


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.get("/api/items/<int:item_id>")
def get_item(item_id):
    return jsonify(item(item_id))


@app.get("/api/items")
def list_items():
    return jsonify(items=[item(i) for i in sorted(PRICES)], count=len(PRICES))


@app.get("/api/blob")
def blob():
    """A large text body (kb KiB); the changed build alters its last byte."""
    data = "0123456789abcdef" * 64 * int(request.args.get("kb", "1"))
    if CHANGED:
        data = data[:-1] + "!"
    return Response(data, content_type="text/plain")


@app.post("/api/orders")
def create_order():
    order = request.get_json()
    return jsonify(order_id=next(order_ids), sku=order.get("sku"), qty=order.get("qty")), 201


if __name__ == "__main__":
    from waitress import serve

    serve(app, host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8080")), threads=8, _quiet=True)
