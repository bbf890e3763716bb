"""An HTTP/JSON gateway in front of the example gRPC service: each route calls the Orders service (at
$ORDERS_ADDR) with a grpcio client and answers JSON. doppel records its gRPC calls as mocks."""
import json
import os
import queue
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
protos, services = grpc.protos_and_services("shop.proto")

CHANGED = os.environ.get("APP_VARIANT") == "changed"
# A build that asks for another customer's orders: a call the recording never made (in /track-pingpong,
# from the second message on).
OTHER = os.environ.get("APP_VARIANT") == "other-customer"
CUSTOMER = "zoe" if OTHER else "alice"
channel = grpc.insecure_channel(os.environ.get("ORDERS_ADDR", "127.0.0.1:50051"))
stub = services.OrdersStub(channel)


def as_dict(o):
    total = o.total_cents + (5 if CHANGED else 0)
    return {"order_id": o.order_id, "customer": o.customer, "total_cents": total, "items": list(o.items)}


def route(path):
    if path == "/health":
        return 200, {"ok": True}
    if path.startswith("/orders/"):
        try:
            o = stub.GetOrder(protos.OrderRequest(customer=CUSTOMER, order_id=int(path.rsplit("/", 1)[1])))
            return 200, as_dict(o)
        except grpc.RpcError as e:
            return 404, {"error": e.code().name, "details": e.details()}
    if path == "/orders":
        return 200, [as_dict(o) for o in stub.ListOrders(protos.OrderRequest(customer="bob"))]
    if path == "/upload":
        summary = stub.UploadOrders(iter([protos.Order(order_id=i, total_cents=100 * i) for i in (1, 2, 3)]))
        return 200, {"count": summary.count, "total_cents": summary.total_cents}
    if path == "/track":
        replies = stub.Track(iter([protos.OrderRequest(customer="carol", order_id=i) for i in (4, 5)]))
        return 200, [as_dict(o) for o in replies]
    if path == "/track-pingpong":
        return track_pingpong()
    return 404, {"error": "no route"}


def track_pingpong():
    """A bidirectional call in ping-pong: each request is sent only once the reply to the previous one came
    back (the request iterator blocks on a queue the replies feed)."""
    requests = queue.Queue()

    def outgoing():
        while (r := requests.get()) is not None:
            yield r

    replies = stub.Track(outgoing(), timeout=10)
    out = []
    try:
        for i in (6, 7, 8):
            requests.put(protos.OrderRequest(customer="zoe" if OTHER and i > 6 else "dave", order_id=i))
            out.append(as_dict(next(replies)))
        requests.put(None)
        out.extend(as_dict(o) for o in replies)
    except grpc.RpcError as e:
        requests.put(None)
        return 502, {"error": e.code().name, "details": e.details()}
    return 200, out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status, body = route(self.path)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("APP_PORT", "8080"))), Handler).serve_forever()
