"""A small shop service on MySQL/MariaDB, for doppel's tests and as an example to record.

DRIVER=pymysql (default) talks to the database with PyMySQL; DRIVER=cli runs the `mariadb`/`mysql` command
line client for every query. APP_VARIANT=changed is a "new build" with a pricing bug that replay must catch;
APP_VARIANT=new-query changes a query, which replay answers with an error (no recording) and reports.

Environment: APP_PORT (8080), DB_HOST (127.0.0.1), DB_PORT (3306), DB_USER (root), DB_PASSWORD (""),
DB_NAME (test), DB_TLS_CA (PyMySQL only: connect with TLS and verify the server against this CA bundle).
"""

import json
import os
import shutil
import subprocess
from xml.etree import ElementTree
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DRIVER = os.environ.get("DRIVER", "pymysql")
CHANGED = os.environ.get("APP_VARIANT") == "changed"
DB = dict(
    host=os.environ.get("DB_HOST", "127.0.0.1"),
    port=int(os.environ.get("DB_PORT", "3306")),
    user=os.environ.get("DB_USER", "root"),
    password=os.environ.get("DB_PASSWORD", ""),
    database=os.environ.get("DB_NAME", "test"),
)


class DbError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def plain(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class PyMySQL:
    """One connection per request, as simple services do."""

    def __init__(self):
        import pymysql
        from pymysql.constants import CLIENT

        self.pymysql = pymysql
        self.flags = CLIENT.MULTI_STATEMENTS

    def connect(self):
        tls = {}
        if os.environ.get("DB_TLS_CA"):
            # TLS, verifying the server's certificate against this CA bundle.
            tls = dict(ssl_ca=os.environ["DB_TLS_CA"], ssl_verify_cert=True)
        return self.pymysql.connect(charset="utf8mb4", client_flag=self.flags, **tls, **DB)

    def results(self, sql, params=None):
        """Every result set of `sql` as lists of dicts."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                out = []
                while True:
                    if cur.description:
                        names = [d[0] for d in cur.description]
                        out.append([{n: plain(v) for n, v in zip(names, row)} for row in cur.fetchall()])
                    if not cur.nextset():
                        return out
        except self.pymysql.err.MySQLError as e:
            raise DbError(e.args[0], e.args[1] if len(e.args) > 1 else str(e))
        finally:
            conn.close()

    def insert(self, sql, params):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                conn.commit()
                return cur.lastrowid
        finally:
            conn.close()

    def session(self):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET NAMES utf8mb4")
                cur.execute("SELECT @@version, @@autocommit, VERSION()")
                version, autocommit, _ = cur.fetchone()
                conn.ping()
                conn.select_db(DB["database"])
                return {"mariadb": "MariaDB" in version, "autocommit": autocommit}
        finally:
            conn.close()


class Cli:
    """The MariaDB/MySQL command line client, one process per request."""

    def __init__(self):
        self.binary = shutil.which("mariadb") or shutil.which("mysql")

    def run(self, sql, output="--batch"):
        cmd = [self.binary, "-h", DB["host"], "-P", str(DB["port"]), "-u", DB["user"], output]
        if DB["password"]:
            cmd.append("-p" + DB["password"])
        done = subprocess.run(cmd + ["-e", sql, DB["database"]], capture_output=True, text=True, errors="replace")
        if done.returncode != 0:
            # ERROR 1146 (42S02) at line 1: Table 'x.y' doesn't exist
            text = next((l for l in done.stderr.splitlines() if l.startswith("ERROR ")), done.stderr.strip())
            code = int(text.split()[1]) if text.startswith("ERROR ") else -1
            raise DbError(code, text.split(": ", 1)[-1])
        return done.stdout

    def results(self, sql, params=None):
        if params:
            sql = sql % tuple(int(p) for p in params)
        # --xml prints one document per result set, NULL marked with xsi:nil.
        out = []
        for doc in self.run(sql, "--xml").split("<?xml")[1:]:
            root = ElementTree.fromstring("<?xml" + doc)
            nil = "{http://www.w3.org/2001/XMLSchema-instance}nil"
            out.append(
                [{f.get("name"): None if f.get(nil) else (f.text or "") for f in row} for row in root.findall("row")]
            )
        return out

    def insert(self, sql, params):
        out = self.run(sql % tuple(int(p) for p in params) + "; SELECT LAST_INSERT_ID() AS id")
        return int(out.splitlines()[-1])

    def session(self):
        version = self.run("SELECT @@version").splitlines()[-1]
        return {"mariadb": "MariaDB" in version, "autocommit": 1}


db = Cli() if DRIVER == "cli" else PyMySQL()


def item(item_id):
    sql = "SELECT id, name, price, stock FROM items WHERE id = %s"
    if os.environ.get("APP_VARIANT") == "new-query":
        sql += " LIMIT 1"  # a build whose query the recording never saw
    rows = db.results(sql, [item_id])[0]
    return rows[0] if rows else None


def order(body):
    found = item(int(body["item_id"]))
    if not found:
        return 404, {"error": "no such item"}
    qty = int(body["qty"])
    total = Decimal(str(found["price"])) * qty
    if CHANGED:
        total = (total * Decimal("1.1")).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)  # the regression
    order_id = db.insert("INSERT INTO orders (item_id, qty) VALUES (%s, %s)", [found["id"], qty])
    return 201, {"order_id": order_id, "item": found["name"], "qty": qty, "total": float(total)}


def summary():
    counts, sums = db.results("SELECT COUNT(*) AS orders FROM orders; SELECT COALESCE(SUM(qty), 0) AS units FROM orders")
    return 200, {"orders": int(counts[0]["orders"]), "units": int(sums[0]["units"])}


def missing():
    try:
        db.results("SELECT * FROM no_such_table")
        return 200, {"error": None}
    except DbError as e:
        return 500, {"error": e.code, "message": e.message}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, payload):
        data = json.dumps(payload, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/health":
            return self.reply(200, {"ok": True})
        if path == "/items":
            rows = db.results("SELECT id, name, price, stock, weight, added, updated, notes, tag FROM items ORDER BY id")
            return self.reply(200, {"items": rows[0]})
        if path.startswith("/items/"):
            found = item(int(path.rsplit("/", 1)[1]))
            return self.reply(200 if found else 404, found or {"error": "no such item"})
        if path == "/summary":
            return self.reply(*summary())
        if path == "/missing":
            return self.reply(*missing())
        if path == "/session":
            return self.reply(200, db.session())
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/orders":
            return self.reply(*order(body))
        self.reply(404, {"error": "not found"})

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("APP_PORT", "8080"))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
