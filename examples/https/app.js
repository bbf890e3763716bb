// Calls an HTTPS API with Node's built-in fetch and with axios. GET /via/fetch/<id>, /via/axios/<id>.
// Trust comes from NODE_EXTRA_CA_CERTS, which doppel sets; APP_VARIANT=changed adds a 10% markup.
const http = require("http");
const axios = require("axios");

const upstream = process.env.UPSTREAM_URL;
const changed = process.env.APP_VARIANT === "changed";

function answer(res, client, data) {
  const price = Math.round(data.price * (changed ? 1.1 : 1.0) * 100) / 100;
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ client, name: data.name, price }));
}

http
  .createServer(async (req, res) => {
    const m = req.url.match(/^\/via\/(fetch|axios)\/(\d+)$/);
    try {
      if (req.url === "/health") return answer(res, "none", { name: "ok", price: 0 });
      if (!m) {
        res.writeHead(404);
        return res.end();
      }
      const url = `${upstream}/catalog/${m[2]}`;
      const data = m[1] === "fetch" ? await (await fetch(url)).json() : (await axios.get(url)).data;
      answer(res, m[1], data);
    } catch (e) {
      res.writeHead(502, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: String(e.cause || e) }));
    }
  })
  .listen(Number(process.env.APP_PORT), "127.0.0.1");
