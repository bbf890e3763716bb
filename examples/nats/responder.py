"""The price service the example app asks over NATS request/reply: answers PREFIX.prices.get with the
price of the SKU in the request. Runs outside doppel, next to the real NATS server."""
import asyncio
import json
import os

import nats

PRICES = {"A-1": 3.5, "B-2": 0.25}


async def main():
    prefix = os.environ.get("PREFIX", "doppel-example")
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), name="price-responder")

    async def answer(msg):
        sku = msg.data.decode()
        await msg.respond(json.dumps({"sku": sku, "price": PRICES.get(sku)}).encode())

    await nc.subscribe(f"{prefix}.prices.get", cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
