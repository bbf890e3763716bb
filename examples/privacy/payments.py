"""The payments API the privacy example calls: checks the merchant's Basic credentials and API key, answers
a charge with the last four digits of the card. Usage: python3 payments.py PORT (credentials from
MERCHANT_ID, MERCHANT_PASSWORD, MERCHANT_API_KEY)."""
import base64
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        basic = base64.b64encode(f"{os.environ['MERCHANT_ID']}:{os.environ['MERCHANT_PASSWORD']}".encode()).decode()
        ok = self.headers.get("Authorization") == f"Basic {basic}" and \
            self.headers.get("X-Api-Key") == os.environ["MERCHANT_API_KEY"]
        answer = {"status": "approved", "last4": body["card"][-4:], "amount": body["amount"]} if ok \
            else {"error": "bad merchant credentials"}
        data = json.dumps(answer).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
