// The example shop (same API as app.py) on Node's `pg` driver with a pg.Pool. Run with
// NODE_PATH=examples/node/node_modules. PGHOST/PGPORT/PGUSER/PGDATABASE name the database; APP_PORT the
// port; APP_VARIANT=changed charges a surcharge on orders (the regression the replay must catch).
const http = require("http");
const { Pool } = require("pg");

const pool = new Pool({
  host: process.env.PGHOST || "127.0.0.1",
  port: Number(process.env.PGPORT || 5432),
  user: process.env.PGUSER || "postgres",
  database: process.env.PGDATABASE || "test",
  max: 3,
});
const CHANGED = process.env.APP_VARIANT === "changed";

function total(price, qty) {
  let cents = Math.round(Number(price) * 100) * qty;
  if (CHANGED) cents = Math.round(cents * 1.1);
  return (cents / 100).toFixed(2);
}

async function createItem(body) {
  try {
    const r = await pool.query(
      "INSERT INTO items (name, price, tags, meta) VALUES ($1, $2, $3, $4) RETURNING id, name, price",
      [body.name, String(body.price), body.tags || [], JSON.stringify(body.meta || {})],
    );
    return [201, { id: Number(r.rows[0].id), name: r.rows[0].name, price: r.rows[0].price }];
  } catch (e) {
    if (e.code === "23505") return [409, { error: "duplicate", name: body.name }];
    throw e;
  }
}

async function getItem(id) {
  const r = await pool.query(
    "SELECT id, name, price, stock, weight, active, tags, meta, uid, created FROM items WHERE id = $1",
    [id],
  );
  if (r.rows.length === 0) return [404, { error: "not found", id }];
  const row = r.rows[0];
  return [200, { ...row, id: Number(row.id), created: row.created.toISOString() }];
}

async function buy(id, qty) {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const cur = await client.query("SELECT price, stock FROM items WHERE id = $1 FOR UPDATE", [id]);
    const { price, stock } = cur.rows[0];
    if (stock < qty) {
      await client.query("ROLLBACK");
      return [409, { error: "out of stock", id }];
    }
    await client.query("UPDATE items SET stock = stock - $1 WHERE id = $2", [qty, id]);
    const o = await client.query("INSERT INTO orders (item_id, qty) VALUES ($1, $2) RETURNING id", [id, qty]);
    await client.query("COMMIT");
    return [200, { order_id: Number(o.rows[0].id), stock_left: stock - qty, total: total(price, qty) }];
  } catch (e) {
    await client.query("ROLLBACK");
    throw e;
  } finally {
    client.release();
  }
}

async function listItems(minPrice) {
  const r = await pool.query("SELECT id, name, price FROM items WHERE price >= $1 ORDER BY id", [minPrice]);
  return [200, { items: r.rows.map((x) => ({ id: Number(x.id), name: x.name, price: x.price })) }];
}

async function route(req, body) {
  const url = new URL(req.url, "http://localhost");
  let m;
  if (req.method === "GET" && url.pathname === "/health") return [200, { status: "ok", driver: "node-pg" }];
  if (req.method === "POST" && url.pathname === "/items") return createItem(JSON.parse(body));
  if (req.method === "GET" && url.pathname === "/items") return listItems(url.searchParams.get("min_price") || "0");
  if (req.method === "GET" && (m = url.pathname.match(/^\/items\/(\d+)$/))) return getItem(Number(m[1]));
  if (req.method === "POST" && (m = url.pathname.match(/^\/items\/(\d+)\/buy$/)))
    return buy(Number(m[1]), Number(JSON.parse(body).qty || 1));
  return [404, { error: "no route" }];
}

http
  .createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", async () => {
      let status, out;
      try {
        [status, out] = await route(req, body);
      } catch (e) {
        [status, out] = [500, { error: String(e.message).split("\n")[0] }];
      }
      const text = JSON.stringify(out);
      res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
      res.end(text);
    });
  })
  .listen(Number(process.env.APP_PORT || 8080), "127.0.0.1");
