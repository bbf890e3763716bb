// Calls an HTTPS API with Node's built-in fetch and with axios. GET /via/fetch/<id>, /via/axios/<id>.
// Trust comes from NODE_EXTRA_CA_CERTS, which doppel sets; APP_VARIANT=changed adds a 10% markup.
// With APP_TLS_CERT and APP_TLS_KEY it serves HTTPS itself, HTTP/2 and HTTP/1.1 chosen by ALPN.
// With APP_TLS_CLIENT_CA as well, it requires client certificates (mutual TLS).
const fs = require("fs");
const http = require("http");
const http2 = require("http2");
const axios = require("axios");

const upstream = process.env.UPSTREAM_URL;
const changed = process.env.APP_VARIANT === "changed";

function answer(res, client, data) {
  const price = Math.round(data.price * (changed ? 1.1 : 1.0) * 100) / 100;
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ client, name: data.name, price }));
}

async function handle(req, res) {
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
}

const server = process.env.APP_TLS_CERT
  ? http2.createSecureServer(
      {
        cert: fs.readFileSync(process.env.APP_TLS_CERT),
        key: fs.readFileSync(process.env.APP_TLS_KEY),
        allowHTTP1: true,
        // APP_TLS_CLIENT_CA: mutual TLS, clients must present a certificate this CA issued.
        ...(process.env.APP_TLS_CLIENT_CA && {
          ca: fs.readFileSync(process.env.APP_TLS_CLIENT_CA),
          requestCert: true,
          rejectUnauthorized: true,
        }),
      },
      handle,
    )
  : http.createServer(handle);
server.listen(Number(process.env.APP_PORT), "127.0.0.1");
