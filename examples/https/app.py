"""Calls an HTTPS API with several real Python clients: requests, httpx, and curl (as a subprocess).

GET /via/<client>/<id> fetches UPSTREAM/catalog/<id> with that client. APP_VARIANT=changed reports
prices with a 10% markup (the regression the tests must catch). /pinned/<id> runs curl with its own trust
store (the upstream's certificate only), like a client that pins certificates.
"""
import json
import os
import subprocess

import httpx
import requests
from flask import Flask, jsonify
from waitress import serve

app = Flask(__name__)
UPSTREAM = os.environ["UPSTREAM_URL"]
CHANGED = os.environ.get("APP_VARIANT") == "changed"


def answer(client, data):
    price = data["price"] * (1.1 if CHANGED else 1.0)
    return jsonify(client=client, name=data["name"], price=round(price, 2))


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.get("/via/requests/<int:item>")
def via_requests(item):
    return answer("requests", requests.get(f"{UPSTREAM}/catalog/{item}", timeout=10).json())


@app.get("/via/httpx/<int:item>")
def via_httpx(item):
    with httpx.Client(timeout=10) as c:
        return answer("httpx", c.get(f"{UPSTREAM}/catalog/{item}").json())


@app.get("/via/curl/<int:item>")
def via_curl(item):
    out = subprocess.run(["curl", "-sS", "--fail", f"{UPSTREAM}/catalog/{item}"], capture_output=True, check=True)
    return answer("curl", json.loads(out.stdout))


@app.get("/pinned/<int:item>")
def pinned(item):
    out = subprocess.run(
        ["curl", "-sS", "--cacert", os.environ["PINNED_CERT"], f"{UPSTREAM}/catalog/{item}"],
        capture_output=True,
    )
    return jsonify(ok=out.returncode == 0, error=out.stderr.decode()[:80] if out.returncode else None)


if __name__ == "__main__":
    serve(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), threads=8, _quiet=True)
