"""A small accounts service whose answers change on every run, used by doppel's noise tests.

Its responses hold what makes replays fail on real apps: created_at timestamps, UUID primary keys, random
API keys, a trace id header, a login that returns a JWT the later calls send back (Authorization: Bearer),
a POST that returns an id a GET uses, the current time, and fields no shape gives away (the worker's pid,
a list in random order). It calls two dependencies (DEPS_URL): an audit log it posts events to (with the new
id and the time) and a quota service it asks about each user.

APP_VARIANT=changed is the "new build": new users get another plan and /api/stats reports another version.
TOKEN_TTL sets the token lifetime in seconds.
`python3 app.py --mint USER` prints a token signed with JWT_SECRET, as another service of the same
system would hand it out.
"""
import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import requests
from flask import Flask, g, jsonify, request

SECRET = os.environ.get("JWT_SECRET", "dev-secret").encode()
TOKEN_TTL = int(os.environ.get("TOKEN_TTL", "3600"))
DEPS = os.environ.get("DEPS_URL", "http://127.0.0.1:9300")
CHANGED = os.environ.get("APP_VARIANT") == "changed"

app = Flask(__name__)
deps = requests.Session()
users = {}
lock = threading.Lock()


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now_iso(t=None):
    moment = datetime.fromtimestamp(t if t is not None else time.time(), timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mint(user):
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + TOKEN_TTL, "jti": secrets.token_hex(8)}
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}", claims


def verify(token):
    try:
        header, payload, signature = token.split(".")
    except ValueError:
        return None, "malformed token"
    expected = b64(hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        return None, "bad signature"
    claims = json.loads(unb64(payload))
    if claims["exp"] < time.time():
        return None, "token expired"
    return claims, None


@app.before_request
def authenticate():
    if request.path in ("/health", "/api/login", "/api/now", "/api/stats") or request.path.startswith("/api/items"):
        return None
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return jsonify(error="unauthorized"), 401
    claims, why = verify(auth[len("Bearer "):])
    if claims is None:
        return jsonify(error=why), 401
    g.user = claims["sub"]
    return None


@app.after_request
def trace(response):
    response.headers["X-Trace-Id"] = str(uuid.uuid4())
    return response


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.post("/api/login")
def login():
    body = request.get_json()
    token, claims = mint(body["user"])
    return jsonify(token=token, user=body["user"], expires_at=now_iso(claims["exp"]))


@app.get("/api/me")
def me():
    return jsonify(user=g.user)


@app.post("/api/users")
def create_user():
    body = request.get_json()
    user = {
        "id": str(uuid.uuid4()),
        "name": body["name"],
        "email": body["email"],
        "plan": "trial" if CHANGED else "free",
        "api_key": secrets.token_urlsafe(24),
        "created_at": now_iso(),
        "created_by": g.user,
    }
    with lock:
        users[user["id"]] = user
    deps.post(f"{DEPS}/events", json={"type": "user.created", "user_id": user["id"], "at": time.time()})
    response = jsonify(user)
    response.status_code = 201
    response.headers["Location"] = f"/api/users/{user['id']}"
    return response


@app.get("/api/users/<user_id>")
def get_user(user_id):
    user = users.get(user_id)
    if user is None:
        return jsonify(error="no such user"), 404
    quota = deps.get(f"{DEPS}/quota/{user_id}").json()
    return jsonify(dict(user, quota=quota["limit"]))


@app.get("/api/users")
def list_users():
    listed = sorted(users.values(), key=lambda u: u["created_at"])
    return jsonify(users=[{"id": u["id"], "name": u["name"]} for u in listed], count=len(listed))


@app.get("/api/now")
def now():
    t = time.time()
    return jsonify(now=now_iso(t), today=now_iso(t)[:10], epoch_ms=int(t * 1000))


@app.get("/api/stats")
def stats():
    features = ["search", "export", "billing", "audit", "sso", "webhooks"]
    random.shuffle(features)
    return jsonify(served_by=f"worker-{os.getpid()}", features=features, version="1.5.0" if CHANGED else "1.4.2")


@app.get("/api/items/<item>")
def item(item):
    return jsonify(id=item, name=f"item-{item}", price=round(len(item) * 1.25, 2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--mint":
        print(mint(sys.argv[2])[0])
        sys.exit(0)
    from waitress import serve

    serve(app, host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8080")), threads=8, _quiet=True)
