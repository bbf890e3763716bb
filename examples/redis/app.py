"""A small cart service on Redis, used by doppel's integration tests (and as an example).

Each endpoint exercises one way of talking to Redis with redis-py (or redis-cli, or a raw socket):
commands and replies, pipelines, transactions with WATCH, pub/sub, blocking pops, Lua scripts, large and
binary values, RESP3, database selection. Settings come from the environment:
REDIS_HOST, REDIS_PORT, REDIS_PASSWORD (optional), KEY_PREFIX (keeps parallel tests apart), APP_PORT.
APP_VARIANT=changed is the "new build" (a pricing bug; redis-cli sends INCRBY for INCR);
APP_VARIANT=renamed reads profiles under another key.
"""
import hashlib
import json
import os
import socket
import subprocess

import redis
from flask import Flask, jsonify, request

app = Flask(__name__)
HOST = os.environ.get("REDIS_HOST", "127.0.0.1")
PORT = int(os.environ.get("REDIS_PORT", "6379"))
PASSWORD = os.environ.get("REDIS_PASSWORD") or None
PREFIX = os.environ.get("KEY_PREFIX", "doppel-example")
VARIANT = os.environ.get("APP_VARIANT", "")

# RESP2 here (redis-py 8 would pick RESP3); /resp3 uses a RESP3 client. With REDIS_TLS_CA set, the main
# client speaks TLS and verifies the server against that CA bundle.
TLS = dict(ssl=True, ssl_ca_certs=os.environ["REDIS_TLS_CA"]) if os.environ.get("REDIS_TLS_CA") else {}
r = redis.Redis(host=HOST, port=PORT, password=PASSWORD, protocol=2, **TLS)


def key(*parts):
    return ":".join([PREFIX, *parts])


def text(value):
    return value.decode() if isinstance(value, bytes) else value


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.post("/cart/<user>")
def add_to_cart(user):
    item = request.get_json()
    r.hset(key("cart", user), item["sku"], json.dumps({"qty": item["qty"], "price": item["price"]}))
    return jsonify(items=r.hlen(key("cart", user))), 201


@app.get("/cart/<user>")
def cart(user):
    lines = {text(k): json.loads(v) for k, v in r.hgetall(key("cart", user)).items()}
    total = sum(line["qty"] * line["price"] for line in lines.values())
    if VARIANT == "changed":
        total *= 1.1  # the regression: a surcharge nobody asked for
    return jsonify(items=len(lines), total=round(total, 2))


@app.post("/counter/<name>")
def count(name):
    return jsonify(count=r.incr(key("counter", name)))


@app.put("/profile/<pid>")
def put_profile(pid):
    r.set(key("profile", pid), request.get_data(), ex=3600)
    return jsonify(saved=pid)


@app.get("/profile/<pid>")
def get_profile(pid):
    name = "user" if VARIANT == "renamed" else "profile"
    value = r.get(key(name, pid))
    if value is None:
        return jsonify(error="not found"), 404
    return jsonify(json.loads(value))


@app.get("/pipeline")
def pipeline():
    # Plain pipelining: all commands go out before any reply is read.
    p = r.pipeline(transaction=False)
    p.set(key("p", "a"), "1").incr(key("p", "n")).get(key("p", "a")).rpush(key("p", "l"), "x", "y")
    p.lrange(key("p", "l"), 0, -1)
    plain = p.execute()
    # A transaction: MULTI ... EXEC, sent as one pipeline too.
    t = r.pipeline(transaction=True)
    t.incr(key("p", "n")).set(key("p", "b"), "2").mget(key("p", "a"), key("p", "b"))
    atomic = t.execute()
    return jsonify(plain=[text(v) if not isinstance(v, list) else [text(x) for x in v] for v in plain],
                   atomic=[text(v) if not isinstance(v, list) else [text(x) for x in v] for v in atomic])


@app.post("/stock/<sku>")
def take_stock(sku):
    # Optimistic locking: WATCH, read, MULTI/EXEC; retried if the key changed meanwhile.
    k = key("stock", sku)
    r.setnx(k, 10)

    def take(pipe):
        left = int(pipe.get(k))
        pipe.multi()
        pipe.set(k, left - 1)

    r.transaction(take, k)
    return jsonify(left=int(r.get(k)))


@app.get("/pubsub")
def pubsub():
    p = r.pubsub()
    p.subscribe(key("news"))
    p.psubscribe(key("alerts", "*"))
    confirmations = [p.get_message(timeout=2) for _ in range(2)]
    r.publish(key("news"), "hello")
    r.publish(key("alerts", "disk"), "full")
    got = []
    for _ in range(20):
        m = p.get_message(timeout=2)
        if m and m["type"] in ("message", "pmessage"):
            got.append({"channel": text(m["channel"]), "data": text(m["data"])})
        if len(got) == 2:
            break
    p.unsubscribe(key("news"))
    p.get_message(timeout=2)
    p.close()
    return jsonify(subscribed=[c["type"] for c in confirmations if c], messages=got)


@app.get("/blpop")
def blpop():
    empty = r.blpop([key("queue", "empty")], timeout=1)  # times out after a second
    r.rpush(key("queue", "jobs"), "job-1")
    job = r.blpop([key("queue", "jobs")], timeout=1)
    return jsonify(empty=empty, job=[text(x) for x in job])


LUA = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@app.get("/script")
def script():
    direct = r.eval(LUA, 1, key("lua"), 5)
    registered = r.register_script(LUA)  # EVALSHA, loading the script on NOSCRIPT
    return jsonify(eval=direct, evalsha=registered(keys=[key("lua")], args=[2]))


@app.get("/large")
def large():
    value = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(100_000))  # 6.4 MB
    r.set(key("large"), value)
    back = r.get(key("large"))
    return jsonify(size=len(back), sha256=hashlib.sha256(back).hexdigest(), same=back == value)


@app.get("/binary")
def binary():
    value = bytes(range(256)) * 4
    r.set(key("binary"), value)
    back = r.get(key("binary"))
    return jsonify(size=len(back), same=back == value, sha256=hashlib.sha256(back).hexdigest())


@app.get("/db")
def other_db():
    r3 = redis.Redis(host=HOST, port=PORT, password=PASSWORD, db=3, protocol=2)
    r3.set(key("in-db-3"), "three")
    here = r.get(key("in-db-3"))
    r3.close()
    return jsonify(db3=text(redis.Redis(host=HOST, port=PORT, password=PASSWORD, db=3, protocol=2).get(key("in-db-3"))),
                   db0=text(here))


@app.get("/resp3")
def resp3():
    c = redis.Redis(host=HOST, port=PORT, password=PASSWORD, protocol=3, client_name="doppel-resp3")
    c.hset(key("r3", "h"), mapping={"a": "1", "b": "2"})
    c.zadd(key("r3", "z"), {"m": 1.5})
    fields = {text(k): text(v) for k, v in c.hgetall(key("r3", "h")).items()}  # a RESP3 map
    score = c.zscore(key("r3", "z"), "m")  # a RESP3 double
    p = c.pubsub()
    p.subscribe(key("r3", "ch"))
    p.get_message(timeout=2)
    c.publish(key("r3", "ch"), "pushed")
    message = None
    for _ in range(10):
        m = p.get_message(timeout=2)
        if m and m["type"] == "message":
            message = text(m["data"])
            break
    p.close()
    c.close()
    return jsonify(fields=fields, score=score, message=message)


def cli(*args):
    command = ["redis-cli", "-h", HOST, "-p", str(PORT)]
    if PASSWORD:
        command += ["-a", PASSWORD, "--no-auth-warning"]
    done = subprocess.run(command + list(args), capture_output=True, text=True, timeout=10)
    return done.stdout.strip()


@app.get("/cli")
def redis_cli():
    counted = cli("INCRBY", key("cli", "n"), "1") if VARIANT == "changed" else cli("INCR", key("cli", "n"))
    return jsonify(
        incr=counted,
        hset=cli("HSET", key("cli", "h"), "f", "v"),
        hgetall=cli("-3", "HGETALL", key("cli", "h")),
        missing=cli("GET", key("cli", "missing")),
    )


@app.get("/inline")
def inline():
    # Inline commands, as telnet or netcat send them.
    with socket.create_connection((HOST, PORT), timeout=5) as s:
        f = s.makefile("rb")
        lines = []
        if PASSWORD:
            s.sendall(f"AUTH {PASSWORD}\r\n".encode())
            f.readline()
        s.sendall(f"PING\r\nSET {key('inline')} \"two words\"\r\n".encode())
        lines += [f.readline().decode().strip(), f.readline().decode().strip()]
        s.sendall(f"GET {key('inline')}\r\n".encode())
        f.readline()
        lines.append(f.readline().decode().strip())
    return jsonify(replies=lines)


if __name__ == "__main__":
    from waitress import serve

    serve(app, host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8080")), threads=8, _quiet=True)
