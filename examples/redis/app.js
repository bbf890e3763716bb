// A small cart service on Redis with the `redis` (node-redis v4) client, used by doppel's integration tests.
// It shows the client's own habits: commands issued together are pipelined, MULTI/EXEC, a subscriber on its
// own connection (subscribed at startup, for the whole run), blocking pops on isolated connections, Lua.
// Environment: REDIS_URL, KEY_PREFIX, APP_PORT; APP_VARIANT=changed is the "new build" with a pricing bug.
// Run with NODE_PATH=examples/node/node_modules.
const http = require("http");
const { createClient, commandOptions } = require("redis");

const prefix = process.env.KEY_PREFIX || "doppel-node";
const changed = process.env.APP_VARIANT === "changed";
const key = (...parts) => [prefix, ...parts].join(":");

const client = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
const subscriber = client.duplicate();
const received = [];

async function body(req) {
  let data = "";
  for await (const chunk of req) data += chunk;
  return data ? JSON.parse(data) : {};
}

const routes = {
  "GET /health": async () => ({ status: "ok" }),

  "POST /cart": async (req) => {
    const item = await body(req);
    await client.hSet(key("cart", item.user), item.sku, JSON.stringify({ qty: item.qty, price: item.price }));
    return { items: await client.hLen(key("cart", item.user)) };
  },

  "GET /cart": async (req, query) => {
    const lines = Object.values(await client.hGetAll(key("cart", query.get("user")))).map((v) => JSON.parse(v));
    let total = lines.reduce((sum, l) => sum + l.qty * l.price, 0);
    if (changed) total *= 1.1; // the regression: a surcharge nobody asked for
    return { items: lines.length, total: Math.round(total * 100) / 100 };
  },

  // Issued in one tick: node-redis writes them as one pipeline.
  "GET /pipeline": async () => {
    const [set, n, value] = await Promise.all([
      client.set(key("p", "a"), "1"),
      client.incr(key("p", "n")),
      client.get(key("p", "a")),
    ]);
    return { set, n, value };
  },

  "GET /multi": async () => {
    const replies = await client.multi().incr(key("m", "n")).set(key("m", "k"), "v").get(key("m", "k")).exec();
    return { replies };
  },

  // The subscriber has been listening since startup; the message comes back through it.
  "POST /events": async (req) => {
    const event = await body(req);
    const before = received.length;
    await client.publish(key("events"), JSON.stringify(event));
    for (let i = 0; i < 100 && received.length === before; i++) await new Promise((r) => setTimeout(r, 20));
    return { received: received.slice(before) };
  },

  "GET /blpop": async () => {
    const isolated = commandOptions({ isolated: true });
    const empty = await client.blPop(isolated, key("q", "empty"), 1);
    await client.rPush(key("q", "jobs"), "job-1");
    const job = await client.blPop(isolated, key("q", "jobs"), 1);
    return { empty, job };
  },

  "GET /script": async () => ({
    result: await client.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", {
      keys: [key("lua")],
      arguments: ["3"],
    }),
  }),
};

async function main() {
  await client.connect();
  await subscriber.connect();
  await subscriber.subscribe(key("events"), (message) => received.push(JSON.parse(message)));
  http
    .createServer(async (req, res) => {
      const url = new URL(req.url, "http://localhost");
      const route = routes[`${req.method} ${url.pathname}`];
      try {
        const result = route ? await route(req, url.searchParams) : { error: "not found" };
        res.writeHead(route ? 200 : 404, { "Content-Type": "application/json" });
        res.end(JSON.stringify(result));
      } catch (e) {
        res.writeHead(500, { "Content-Type": "application/json" });
        res.end(JSON.stringify({ error: String(e.message || e) }));
      }
    })
    .listen(Number(process.env.APP_PORT || 8080), "127.0.0.1");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
