"""An order service for doppel's regression corpus (tests/regressions.rs), on PostgreSQL (psycopg 3) and a
payments API over HTTP (PAYMENTS_URL; payments.py is a stand-in).

REGRESSION=<kind> runs a build with one deliberate regression; unset, the unchanged build. The kinds:
  constant       a constant field (the currency) changed in every answer
  dropped-write  the order is no longer stored (the answer stays the same)
  wrong-amount   the payment API is charged one more than the total
  extra-write    every order also bumps a counter in the database
  status         a created order answers 200 instead of 201
  header         the API version header changes
  removed-field  the order's status field is gone
  type-change    the quantity is answered as a string
  reordered      an order's lines come back in the reverse order
  pagination     the listing skips one order too many (off by one)
"""
import os

import psycopg
import requests
from flask import Flask, jsonify, request

KIND = os.environ.get("REGRESSION", "")
KINDS = {"constant", "dropped-write", "wrong-amount", "extra-write", "status", "header", "removed-field",
         "type-change", "reordered", "pagination"}
if KIND and KIND not in KINDS:
    raise SystemExit(f"unknown REGRESSION={KIND}; one of {sorted(KINDS)}")

PAYMENTS = os.environ.get("PAYMENTS_URL", "http://127.0.0.1:9000")
app = Flask(__name__)
db = psycopg.connect(autocommit=True)  # PGHOST, PGPORT, PGUSER, PGDATABASE from the environment
http = requests.Session()


@app.after_request
def version_header(resp):
    resp.headers["X-Api-Version"] = "2" if KIND == "header" else "1"
    return resp


def order_json(row, lines):
    order = {"id": row[0], "sku": row[1], "qty": row[2], "total": row[3], "status": "paid",
             "currency": "USD" if KIND == "constant" else "EUR", "lines": lines}
    if KIND == "type-change":
        order["qty"] = str(order["qty"])
    if KIND == "removed-field":
        del order["status"]
    if KIND == "reordered":
        order["lines"] = list(reversed(lines))
    return order


@app.get("/health")
def health():
    return "ok"


@app.post("/orders")
def create():
    body = request.get_json()
    sku, qty = body["sku"], int(body["qty"])
    price = db.execute("SELECT price FROM products WHERE sku = %s", (sku,)).fetchone()[0]
    total = price * qty
    charged = total + 1 if KIND == "wrong-amount" else total
    payment = http.post(f"{PAYMENTS}/v1/charges", json={"amount": charged, "currency": "EUR", "reference": sku},
                        timeout=5)
    payment.raise_for_status()
    order_id = f"ord-{sku}-{qty}"
    if KIND != "dropped-write":
        db.execute("INSERT INTO orders (id, sku, qty, total) VALUES (%s, %s, %s, %s)", (order_id, sku, qty, total))
    if KIND == "extra-write":
        db.execute("UPDATE products SET sold = sold + %s WHERE sku = %s", (qty, sku))
    lines = [f"{sku} x{qty}", "shipping", "tax"]
    resp = jsonify(order_json((order_id, sku, qty, total), lines))
    return resp, 200 if KIND == "status" else 201


@app.get("/orders/<order_id>")
def show(order_id):
    row = db.execute("SELECT id, sku, qty, total FROM orders WHERE id = %s", (order_id,)).fetchone()
    if row is None:
        return jsonify({"error": "not found"}), 404
    return jsonify(order_json(row, [f"{row[1]} x{row[2]}", "shipping", "tax"]))


@app.get("/orders")
def listing():
    page, size = int(request.args.get("page", "0")), 2
    offset = page * size + (1 if KIND == "pagination" else 0)
    rows = db.execute("SELECT id FROM orders ORDER BY id LIMIT %s OFFSET %s", (size, offset)).fetchall()
    return jsonify({"page": page, "ids": [r[0] for r in rows]})


if __name__ == "__main__":
    from waitress import serve

    serve(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), threads=1)
