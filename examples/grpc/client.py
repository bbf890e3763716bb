"""Drives the example gRPC server with a grpcio client: every method once, plus an error.
Usage: client.py HOST:PORT. Prints one JSON line per call."""
import json
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
protos, services = grpc.protos_and_services("shop.proto")


def as_dict(o):
    return {"order_id": o.order_id, "customer": o.customer, "total_cents": o.total_cents, "items": list(o.items)}


def main():
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = services.OrdersStub(channel)
        print(json.dumps({"get": as_dict(stub.GetOrder(protos.OrderRequest(customer="alice", order_id=7)))}))
        listed = [as_dict(o) for o in stub.ListOrders(protos.OrderRequest(customer="bob"))]
        print(json.dumps({"list": listed}))
        uploads = iter([protos.Order(order_id=i, total_cents=100 * i) for i in (1, 2, 3)])
        summary = stub.UploadOrders(uploads)
        print(json.dumps({"upload": {"count": summary.count, "total_cents": summary.total_cents}}))
        requests = iter([protos.OrderRequest(customer="carol", order_id=i) for i in (4, 5)])
        print(json.dumps({"track": [as_dict(o) for o in stub.Track(requests)]}))
        try:
            stub.GetOrder(protos.OrderRequest(customer="dave", order_id=0))
        except grpc.RpcError as e:
            print(json.dumps({"error": e.code().name, "details": e.details()}))


if __name__ == "__main__":
    main()
