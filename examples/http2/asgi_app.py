"""A small ASGI service for hypercorn, which serves HTTP/1.1, h2c with prior knowledge and the HTTP/1.1
`Upgrade: h2c` path on one port. Run: hypercorn examples/http2/asgi_app:app --bind 127.0.0.1:$APP_PORT.
APP_VARIANT=changed is a "new build" that counts wrong."""
import json
import os

CHANGED = os.environ.get("APP_VARIANT") == "changed"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    words = len(body.split()) + (1 if CHANGED else 0)
    answer = json.dumps({"path": scope["path"], "http_version": scope["http_version"], "words": words}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
