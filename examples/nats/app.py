"""A small order service on NATS, used by doppel's integration tests (and as an example).

Each endpoint exercises one way of talking to NATS with nats-py: a plain publish (/orders), a publish
with headers (/events), a request answered by another service (/price/<sku>, see responder.py), and
JetStream: a publish acknowledged by the stream, then a pull consumer's fetch and ack (/jobs).
Settings come from the environment: NATS_URL, PREFIX (keeps subjects of parallel tests apart), APP_PORT.
APP_VARIANT=changed is the "new build": it publishes a different order payload; APP_VARIANT=renamed asks
prices on another subject.
"""
import asyncio
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nats

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
PREFIX = os.environ.get("PREFIX", "doppel-example")
VARIANT = os.environ.get("APP_VARIANT", "")
STREAM = re.sub(r"[^A-Za-z0-9]", "_", PREFIX).upper() + "_JOBS"

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()


def run(coro):
    """Runs a coroutine on the NATS event loop from an HTTP handler thread."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)


async def connect():
    nc = await nats.connect(URL, name="orders-example", allow_reconnect=False)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=[f"{PREFIX}.jobs.>"])
    pull = await js.pull_subscribe(f"{PREFIX}.jobs.new", durable="worker", stream=STREAM)
    return nc, js, pull


nc, js, pull = run(connect())


async def place_order(order):
    qty = order["qty"] + (1 if VARIANT == "changed" else 0)  # the regression: one more than asked
    payload = json.dumps({"sku": order["sku"], "qty": qty}).encode()
    await nc.publish(f"{PREFIX}.orders.created", payload)
    await nc.flush()
    return {"placed": order["sku"], "qty": qty}


async def send_event(event):
    await nc.publish(f"{PREFIX}.events", json.dumps(event).encode(), headers={"X-Kind": event["kind"]})
    await nc.flush()
    return {"sent": event["kind"]}


async def price(sku):
    subject = f"{PREFIX}.prices.lookup" if VARIANT == "renamed" else f"{PREFIX}.prices.get"
    reply = await nc.request(subject, sku.encode(), timeout=2)
    return json.loads(reply.data)


async def job(body):
    ack = await js.publish(f"{PREFIX}.jobs.new", json.dumps(body).encode())
    msgs = await pull.fetch(1, timeout=2)
    await msgs[0].ack()
    await nc.flush()
    return {"stream": ack.stream, "seq": ack.seq, "fetched": json.loads(msgs[0].data)}


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        if self.path.startswith("/price/"):
            try:
                return self.reply(200, run(price(self.path[len("/price/"):])))
            except Exception as e:  # nobody answers the request: the app says so
                return self.reply(502, {"error": type(e).__name__})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        routes = {"/orders": place_order, "/events": send_event, "/jobs": job}
        handler = routes.get(self.path)
        if handler is None:
            return self.reply(404, {"error": "not found"})
        try:
            self.reply(201, run(handler(self.body())))
        except Exception as e:  # the failure is the app's answer: the test shows it
            self.reply(502, {"error": type(e).__name__})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("APP_PORT", "8080"))), Handler).serve_forever()
