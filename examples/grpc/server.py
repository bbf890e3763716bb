"""The example grpcio server: one method of each kind (unary, server streaming, client streaming,
bidirectional). Listens on $APP_PORT; APP_VARIANT=changed is a "new build" with a pricing bug."""
import os
import sys
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
protos, services = grpc.protos_and_services("shop.proto")

CHANGED = os.environ.get("APP_VARIANT") == "changed"


def order(order_id, customer):
    total = 1250 * order_id + (1 if CHANGED else 0)
    return protos.Order(order_id=order_id, customer=customer, total_cents=total, items=[f"sku-{order_id}", "gift-wrap"])


class Orders(services.OrdersServicer):
    def GetOrder(self, request, context):
        if request.order_id <= 0:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no order {request.order_id}")
        return order(request.order_id, request.customer)

    def ListOrders(self, request, context):
        for i in range(1, 4):
            yield order(i, request.customer)

    def UploadOrders(self, request_iterator, context):
        count, total = 0, 0
        for o in request_iterator:
            count += 1
            total += o.total_cents
        return protos.Summary(count=count, total_cents=total)

    def Track(self, request_iterator, context):
        for r in request_iterator:
            yield order(r.order_id, r.customer)


def main():
    port = int(os.environ.get("APP_PORT", "50051"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services.add_OrdersServicer_to_server(Orders(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
