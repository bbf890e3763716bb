"""A sign-up / login / article service on PostgreSQL, used by doppel's tests (tests/signup.rs) to show that
values an app makes itself replay green with no hand-written rules: bcrypt and argon2 password hashes with a
fresh salt at every sign-up, and slugs with a random suffix, all sent to the database as bind parameters.

DRIVER=psycopg (psycopg 3) or DRIVER=asyncpg on PostgreSQL, named by PGHOST, PGPORT, PGUSER, PGDATABASE
(schema: schema.sql); APP_VARIANT=changed stores the user's name in capitals (the regression that must
still be caught beside the tolerated hashes); DRIVER=pymysql on MySQL/MariaDB, named by DB_HOST, DB_PORT, DB_USER, DB_NAME (schema:
schema-mysql.sql), where PyMySQL writes every value into the SQL text (inline literals). Tokens are HMACs of the user id, so a login answers the same token every time.
"""
import asyncio
import hashlib
import hmac
import os
import secrets
import threading

import argon2
import bcrypt
from flask import Flask, jsonify, request
from slugify import slugify

app = Flask(__name__)
DRIVER = os.environ.get("DRIVER", "psycopg")
SECRET = b"not-a-real-secret"
hasher = argon2.PasswordHasher()


def random_suffix():
    return secrets.token_hex(4)


def slug_of(text):
    return f"{slugify(text)}-{random_suffix()}"


def token_of(user_id):
    return hmac.new(SECRET, str(user_id).encode(), hashlib.sha256).hexdigest()


class Psycopg:
    def __init__(self):
        import psycopg

        self.conn = psycopg.connect(autocommit=True)
        self.lock = threading.Lock()

    def one(self, sql, *args):
        with self.lock:
            return self.conn.execute(to_pyformat(sql), args).fetchone()


def to_pyformat(sql):
    """$1-style placeholders (asyncpg's) as psycopg's %s."""
    for i in range(9, 0, -1):
        sql = sql.replace(f"${i}", "%s")
    return sql


class Asyncpg:
    def __init__(self):
        import asyncpg

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        async def open_pool():
            return await asyncpg.create_pool(min_size=1, max_size=2)

        self.pool = self.run(open_pool())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def one(self, sql, *args):
        async def go():
            async with self.pool.acquire() as c:
                return await c.fetchrow(sql, *args)

        return self.run(go())


class Pymysql:
    def __init__(self):
        import pymysql

        self.conn = pymysql.connect(
            host=os.environ.get("DB_HOST", "127.0.0.1"), port=int(os.environ.get("DB_PORT", "3306")),
            user=os.environ.get("DB_USER", "root"), password=os.environ.get("DB_PASSWORD", ""),
            database=os.environ.get("DB_NAME", "test"), autocommit=True, charset="utf8mb4",
        )
        self.lock = threading.Lock()

    def one(self, sql, *args):
        with self.lock, self.conn.cursor() as c:
            c.execute(to_pyformat(sql), args)
            return c.fetchone()


db = {"asyncpg": Asyncpg, "pymysql": Pymysql}.get(DRIVER, Psycopg)()


def user_of(req):
    auth = req.headers.get("Authorization", "")
    user_id = req.headers.get("X-User", "")
    if not user_id.isdigit() or not hmac.compare_digest(auth, f"Bearer {token_of(int(user_id))}"):
        return None
    return int(user_id)


@app.get("/health")
def health():
    return "ok"


@app.post("/users")
def sign_up():
    body = request.get_json()
    password = body["password"].encode()
    row = db.one(
        "INSERT INTO users (email, name, slug, bcrypt_hash, argon2_hash) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        body["email"], body["name"].upper() if os.environ.get("APP_VARIANT") == "changed" else body["name"],
        slug_of(body["name"]),
        bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode(), hasher.hash(body["password"]),
    )
    return jsonify({"id": row[0], "email": body["email"]}), 201


@app.post("/login")
def login():
    body = request.get_json()
    row = db.one("SELECT id, bcrypt_hash, argon2_hash FROM users WHERE email = $1", body["email"])
    if row is None or not bcrypt.checkpw(body["password"].encode(), row[1].encode()):
        return jsonify({"error": "wrong email or password"}), 401
    try:
        hasher.verify(row[2], body["password"])
    except argon2.exceptions.VerifyMismatchError:
        return jsonify({"error": "wrong email or password"}), 401
    return jsonify({"user": row[0], "token": token_of(row[0])})


@app.post("/articles")
def write_article():
    user = user_of(request)
    if user is None:
        return jsonify({"error": "sign in first"}), 401
    title = request.get_json()["title"]
    row = db.one("INSERT INTO articles (author, title, slug) VALUES ($1, $2, $3) RETURNING slug", user, title,
                 slug_of(title))
    return jsonify({"slug": row[0], "title": title}), 201


@app.get("/articles/<slug>")
def read_article(slug):
    row = db.one("SELECT a.title, u.name FROM articles a JOIN users u ON u.id = a.author WHERE a.slug = $1", slug)
    if row is None:
        return jsonify({"error": "no such article"}), 404
    return jsonify({"title": row[0], "author": row[1]})


if __name__ == "__main__":
    from waitress import serve

    serve(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), threads=1)
