"""A small shop service on PostgreSQL, used by doppel's integration tests (and as an example).

The same HTTP API over four ways of talking to PostgreSQL, chosen with DRIVER:
  psycopg     psycopg 3, a small pool of connections opened at start-up (server-side parameters)
  sqlalchemy  SQLAlchemy Core on psycopg 3 (QueuePool, pre-ping)
  asyncpg     asyncpg pool (prepared statements, binary format), on an event loop thread
  psql        the psql command-line client, one process per request (multi-statement scripts)

The database is named by PGHOST, PGPORT, PGUSER and PGDATABASE (schema: examples/postgres/schema.sql).
APP_VARIANT=changed is the "new build": it charges a surcharge on orders. APP_VARIANT=query changes the
parameter of the listing query (a different statement reaches the database).
"""
import asyncio
import json
import os
import queue
import subprocess
import threading
from decimal import Decimal

from flask import Flask, jsonify, request

app = Flask(__name__)
DRIVER = os.environ.get("DRIVER", "psycopg")
VARIANT = os.environ.get("APP_VARIANT", "")
HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "5432"))
USER = os.environ.get("PGUSER", "postgres")
DB = os.environ.get("PGDATABASE", "test")
POOL_SIZE = 3

ITEM_COLUMNS = "id, name, price, stock, weight, active, tags, meta, uid, created"


class Conflict(Exception):
    pass


class OutOfStock(Exception):
    pass


def plain(value):
    """JSON-friendly form of a database value."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if value is not None and not isinstance(value, (int, float, str, bool)):
        return str(value)
    return value


def item_dict(row):
    names = [c.strip() for c in ITEM_COLUMNS.split(",")]
    d = {n: plain(v) for n, v in zip(names, row)}
    if isinstance(d.get("meta"), str):
        d["meta"] = json.loads(d["meta"])
    return d


def total_of(price, qty):
    total = Decimal(price) * qty
    if VARIANT == "changed":
        total = (total * Decimal("1.1")).quantize(Decimal("0.01"))
    return str(total)


def min_price_param(value):
    return value + 1 if VARIANT == "query" else value


# --- psycopg 3 -------------------------------------------------------------------------------------
class PsycopgShop:
    def __init__(self):
        import psycopg

        self.psycopg = psycopg
        self.pool = queue.Queue()
        for _ in range(POOL_SIZE):
            self.pool.put(psycopg.connect(host=HOST, port=PORT, user=USER, dbname=DB, autocommit=True))

    def conn(self):
        shop = self

        class Lease:
            def __enter__(self):
                self.c = shop.pool.get()
                return self.c

            def __exit__(self, *exc):
                shop.pool.put(self.c)

        return Lease()

    def create(self, name, price, tags, meta):
        with self.conn() as c:
            try:
                row = c.execute(
                    "INSERT INTO items (name, price, tags, meta) VALUES (%s, %s, %s, %s) RETURNING id, name, price",
                    (name, Decimal(price), tags, self.psycopg.types.json.Jsonb(meta)),
                ).fetchone()
            except self.psycopg.errors.UniqueViolation:
                raise Conflict()
            return {"id": row[0], "name": row[1], "price": plain(row[2])}

    def get(self, item_id):
        with self.conn() as c:
            row = c.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s", (item_id,)).fetchone()
            return item_dict(row) if row else None

    def buy(self, item_id, qty):
        with self.conn() as c:
            with c.transaction():
                price, stock = c.execute("SELECT price, stock FROM items WHERE id = %s FOR UPDATE", (item_id,)).fetchone()
                if stock < qty:
                    raise OutOfStock()
                c.execute("UPDATE items SET stock = stock - %s WHERE id = %s", (qty, item_id))
                order_id = c.execute(
                    "INSERT INTO orders (item_id, qty) VALUES (%s, %s) RETURNING id", (item_id, qty)
                ).fetchone()[0]
            return {"order_id": order_id, "stock_left": stock - qty, "total": total_of(price, qty)}

    def list(self, min_price):
        with self.conn() as c:
            rows = c.execute(
                "SELECT id, name, price FROM items WHERE price >= %s ORDER BY id", (Decimal(min_price),)
            ).fetchall()
            return [{"id": r[0], "name": r[1], "price": plain(r[2])} for r in rows]


    def import_rows(self, rows):
        with self.conn() as c:
            with c.cursor().copy("COPY items (name, price) FROM STDIN") as copy:
                for name, price in rows:
                    copy.write_row((name, Decimal(str(price))))
            return len(rows)

    def export(self):
        with self.conn() as c:
            with c.cursor().copy("COPY (SELECT name, price FROM items ORDER BY id) TO STDOUT") as copy:
                data = b"".join(bytes(b) for b in copy)
            return data.decode().splitlines()

    def notify(self):
        with self.conn() as c:
            c.execute("LISTEN shop_events")
            c.execute("NOTIFY shop_events, 'restocked'")
            note = next(iter(c.notifies(timeout=5, stop_after=1)), None)
            c.execute("UNLISTEN shop_events")
            return {"channel": note.channel, "payload": note.payload} if note else None


# --- SQLAlchemy on psycopg 3 -----------------------------------------------------------------------
class SqlAlchemyShop:
    def __init__(self):
        import sqlalchemy as sa

        self.sa = sa
        self.engine = sa.create_engine(
            f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{DB}", pool_size=POOL_SIZE, pool_pre_ping=True
        )
        with self.engine.connect() as c:
            c.execute(sa.text("SELECT 1"))

    def create(self, name, price, tags, meta):
        sa = self.sa
        try:
            with self.engine.begin() as c:
                row = c.execute(
                    sa.text(
                        "INSERT INTO items (name, price, tags, meta) VALUES (:name, :price, :tags, CAST(:meta AS jsonb)) "
                        "RETURNING id, name, price"
                    ),
                    {"name": name, "price": Decimal(price), "tags": tags, "meta": json.dumps(meta)},
                ).one()
        except sa.exc.IntegrityError:
            raise Conflict()
        return {"id": row.id, "name": row.name, "price": plain(row.price)}

    def get(self, item_id):
        with self.engine.connect() as c:
            row = c.execute(self.sa.text(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = :id"), {"id": item_id}).first()
            return item_dict(tuple(row)) if row else None

    def buy(self, item_id, qty):
        sa = self.sa
        with self.engine.begin() as c:
            price, stock = c.execute(
                sa.text("SELECT price, stock FROM items WHERE id = :id FOR UPDATE"), {"id": item_id}
            ).one()
            if stock < qty:
                raise OutOfStock()
            c.execute(sa.text("UPDATE items SET stock = stock - :qty WHERE id = :id"), {"qty": qty, "id": item_id})
            order_id = c.execute(
                sa.text("INSERT INTO orders (item_id, qty) VALUES (:id, :qty) RETURNING id"), {"id": item_id, "qty": qty}
            ).scalar_one()
        return {"order_id": order_id, "stock_left": stock - qty, "total": total_of(price, qty)}

    def list(self, min_price):
        with self.engine.connect() as c:
            rows = c.execute(
                self.sa.text("SELECT id, name, price FROM items WHERE price >= :p ORDER BY id"), {"p": Decimal(min_price)}
            ).all()
            return [{"id": r.id, "name": r.name, "price": plain(r.price)} for r in rows]


# --- asyncpg ---------------------------------------------------------------------------------------
class AsyncpgShop:
    def __init__(self):
        import asyncpg

        self.asyncpg = asyncpg
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        ssl = False if os.environ.get("PGSSLMODE") == "disable" else None

        async def open_pool():
            return await asyncpg.create_pool(
                host=HOST, port=PORT, user=USER, database=DB, ssl=ssl, min_size=POOL_SIZE, max_size=POOL_SIZE
            )

        self.pool = self.run(open_pool())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def create(self, name, price, tags, meta):
        async def go():
            async with self.pool.acquire() as c:
                try:
                    return await c.fetchrow(
                        "INSERT INTO items (name, price, tags, meta) VALUES ($1, $2, $3, $4::jsonb) RETURNING id, name, price",
                        name, Decimal(price), tags, json.dumps(meta),
                    )
                except self.asyncpg.UniqueViolationError:
                    raise Conflict()

        row = self.run(go())
        return {"id": row["id"], "name": row["name"], "price": plain(row["price"])}

    def get(self, item_id):
        async def go():
            async with self.pool.acquire() as c:
                return await c.fetchrow(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = $1", item_id)

        row = self.run(go())
        return item_dict(tuple(row)) if row else None

    def buy(self, item_id, qty):
        async def go():
            async with self.pool.acquire() as c:
                async with c.transaction():
                    row = await c.fetchrow("SELECT price, stock FROM items WHERE id = $1 FOR UPDATE", item_id)
                    if row["stock"] < qty:
                        raise OutOfStock()
                    await c.execute("UPDATE items SET stock = stock - $1 WHERE id = $2", qty, item_id)
                    order_id = await c.fetchval("INSERT INTO orders (item_id, qty) VALUES ($1, $2) RETURNING id", item_id, qty)
                    return row["price"], row["stock"], order_id

        price, stock, order_id = self.run(go())
        return {"order_id": order_id, "stock_left": stock - qty, "total": total_of(price, qty)}

    def list(self, min_price):
        async def go():
            async with self.pool.acquire() as c:
                return await c.fetch("SELECT id, name, price FROM items WHERE price >= $1 ORDER BY id", Decimal(min_price))

        return [{"id": r["id"], "name": r["name"], "price": plain(r["price"])} for r in self.run(go())]

    def import_rows(self, rows):
        # executemany pipelines one Bind/Execute per row before a single Sync.
        async def go():
            async with self.pool.acquire() as c:
                await c.executemany(
                    "INSERT INTO items (name, price) VALUES ($1, $2)", [(n, Decimal(str(p))) for n, p in rows]
                )

        self.run(go())
        return len(rows)


# --- psql ------------------------------------------------------------------------------------------
class PsqlShop:
    """Each call runs psql; values travel as psql variables (:'name' quotes them as literals)."""

    def psql(self, sql, command=None, **variables):
        cmd = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(PORT), "-U", USER, "-d", DB]
        for k, v in variables.items():
            cmd += ["-v", f"{k}={v}"]
        if command:
            cmd += ["-c", command]
        r = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            if "duplicate key" in r.stderr:
                raise Conflict()
            raise RuntimeError(r.stderr.strip())
        return [line.split("|") for line in r.stdout.splitlines() if line]

    def create(self, name, price, tags, meta):
        rows = self.psql(
            "INSERT INTO items (name, price, tags, meta) VALUES (:'name', :'price', :'tags', :'meta') RETURNING id, name, price;",
            name=name, price=price, tags="{" + ",".join(tags) + "}", meta=json.dumps(meta),
        )
        i, n, p = rows[0]
        return {"id": int(i), "name": n, "price": p}

    def get(self, item_id):
        rows = self.psql("SELECT row_to_json(i) FROM (SELECT " + ITEM_COLUMNS + " FROM items WHERE id = :id) i;", id=int(item_id))
        return json.loads(rows[0][0]) if rows else None

    def buy(self, item_id, qty):
        # One multi-statement query string (psql -c sends it as a single Query message).
        item_id, qty = int(item_id), int(qty)
        try:
            rows = self.psql(
                None,
                command=f"BEGIN; SELECT price, stock FROM items WHERE id = {item_id} FOR UPDATE; "
                f"UPDATE items SET stock = stock - {qty} WHERE id = {item_id}; "
                f"INSERT INTO orders (item_id, qty) VALUES ({item_id}, {qty}) RETURNING id; COMMIT;",
            )
        except RuntimeError as e:
            if "check constraint" in str(e):
                raise OutOfStock()
            raise
        price, stock = rows[0]
        return {"order_id": int(rows[1][0]), "stock_left": int(stock) - qty, "total": total_of(price, qty)}

    def list(self, min_price):
        rows = self.psql("SELECT id, name, price FROM items WHERE price >= :'p' ORDER BY id;", p=str(min_price))
        return [{"id": int(i), "name": n, "price": p} for i, n, p in rows]


    def import_rows(self, rows):
        data = "".join(f"{name}\t{price}\n" for name, price in rows)
        self.psql("COPY items (name, price) FROM STDIN;\n" + data + "\\.\n")
        return len(rows)

    def export(self):
        return ["\t".join(r) for r in self.psql(None, command="COPY (SELECT name, price FROM items ORDER BY id) TO STDOUT")]

    def notify(self):
        # A notice (DROP ... IF EXISTS) and a notification in one multi-statement query.
        cmd = ["psql", "-X", "-q", "-h", HOST, "-p", str(PORT), "-U", USER, "-d", DB, "-c",
               "DROP TABLE IF EXISTS doppel_absent; LISTEN shop_events; NOTIFY shop_events, 'restocked'"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        said = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
        return {"said": [line.split(" received from")[0] for line in said]}


SHOPS = {"psycopg": PsycopgShop, "sqlalchemy": SqlAlchemyShop, "asyncpg": AsyncpgShop, "psql": PsqlShop}
shop = SHOPS[DRIVER]()


@app.get("/health")
def health():
    return jsonify(status="ok", driver=DRIVER)


@app.post("/items")
def create_item():
    body = request.get_json()
    try:
        item = shop.create(body["name"], str(body["price"]), body.get("tags", []), body.get("meta", {}))
    except Conflict:
        return jsonify(error="duplicate", name=body["name"]), 409
    return jsonify(item), 201


@app.get("/items/<int:item_id>")
def get_item(item_id):
    item = shop.get(item_id)
    if item is None:
        return jsonify(error="not found", id=item_id), 404
    return jsonify(item)


@app.post("/items/<int:item_id>/buy")
def buy(item_id):
    qty = int(request.get_json().get("qty", 1))
    try:
        return jsonify(shop.buy(item_id, qty))
    except OutOfStock:
        return jsonify(error="out of stock", id=item_id), 409


@app.get("/items")
def list_items():
    try:
        return jsonify(items=shop.list(min_price_param(int(request.args.get("min_price", "0")))))
    except Exception as e:  # a database error (or a doppel miss in replay) is this endpoint's 500
        return jsonify(error=str(e).splitlines()[0]), 500


@app.post("/import")
def import_items():
    return jsonify(imported=shop.import_rows(request.get_json()["rows"]))


@app.get("/export")
def export_items():
    return jsonify(lines=shop.export())


@app.get("/notify")
def notify():
    return jsonify(shop.notify())


if __name__ == "__main__":
    from waitress import serve

    serve(app, host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8080")), threads=8, _quiet=True)
