"""A customer service whose traffic carries every kind of secret and personal data, used by doppel's tests
(tests/privacy.rs) to show that a recording of it is safe to commit: bearer JWTs, cookies, API keys in
headers and in the query, passwords in JSON and form bodies, a password in DATABASE_URL and a SECRET_KEY on
the command line, Basic credentials and an API key sent to a payments API; names, emails, phones, card
numbers, IBANs, national ids and client IP addresses.

Environment: SECRET_KEY (signs the JWTs), DATABASE_URL (PostgreSQL, schema.sql), CLIENT_API_KEY (what
callers of /pay and /orders must present), PAYMENTS_URL, MERCHANT_ID, MERCHANT_PASSWORD and MERCHANT_API_KEY
(the payments API), APP_PORT.
"""
import base64
import hashlib
import hmac
import json
import os
import secrets
import time

import bcrypt
import psycopg
import requests
from flask import Flask, jsonify, make_response, request

app = Flask(__name__)
SECRET = os.environ["SECRET_KEY"].encode()


def db():
    return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def issue(sub):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "iat": int(time.time())}).encode())
    sig = b64(hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def subject():
    """The customer id of a valid bearer token, else None."""
    auth = request.headers.get("Authorization", "")
    parts = auth.removeprefix("Bearer ").split(".")
    if len(parts) != 3:
        return None
    want = b64(hmac.new(SECRET, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, parts[2]):
        return None
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))["sub"]


def client_allowed(given):
    return hmac.compare_digest(given or "", os.environ["CLIENT_API_KEY"])


@app.get("/health")
def health():
    return jsonify(ok=True)


@app.post("/signup")
def signup():
    c = request.get_json()
    hashed = bcrypt.hashpw(c["password"].encode(), bcrypt.gensalt(rounds=4)).decode()
    with db() as conn:
        row = conn.execute(
            "INSERT INTO customers (first_name, last_name, email, phone, card, iban, ssn, password_hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (c["first_name"], c["last_name"], c["email"], c["phone"], c["card"], c["iban"], c["ssn"], hashed),
        ).fetchone()
    return jsonify(id=row[0], email=c["email"], token=issue(row[0])), 201


@app.post("/login")
def login():
    email, password = request.form.get("email", ""), request.form.get("password", "")
    with db() as conn:
        row = conn.execute("SELECT id, password_hash FROM customers WHERE email = %s", (email,)).fetchone()
    if row is None or not bcrypt.checkpw(password.encode(), row[1].encode()):
        return jsonify(error="wrong email or password"), 401
    resp = make_response(jsonify(welcome=email))
    resp.set_cookie("session", secrets.token_hex(16), httponly=True)
    return resp


@app.get("/me")
def me():
    sub = subject()
    if sub is None:
        return jsonify(error="invalid token"), 401
    with db() as conn:
        row = conn.execute(
            "SELECT first_name, last_name, email, phone FROM customers WHERE id = %s", (sub,)
        ).fetchone()
    return jsonify(first_name=row[0], last_name=row[1], email=row[2], phone=row[3],
                   seen_from=request.headers.get("X-Forwarded-For"))


@app.post("/pay")
def pay():
    if not client_allowed(request.headers.get("X-Api-Key")):
        return jsonify(error="unknown client"), 403
    c = request.get_json()
    basic = base64.b64encode(f"{os.environ['MERCHANT_ID']}:{os.environ['MERCHANT_PASSWORD']}".encode()).decode()
    r = requests.post(
        os.environ["PAYMENTS_URL"] + "/charges",
        json={"card": c["card"], "amount": c["amount"], "receipt_email": c["email"]},
        headers={"Authorization": f"Basic {basic}", "X-Api-Key": os.environ["MERCHANT_API_KEY"]},
        timeout=10,
    )
    return jsonify(r.json()), r.status_code


@app.get("/orders")
def orders():
    if not client_allowed(request.args.get("access_token")):
        return jsonify(error="unknown client"), 403
    with db() as conn:
        n = conn.execute("SELECT count(*) FROM customers").fetchone()[0]
    return jsonify(customers=n)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8080")), threaded=True)
