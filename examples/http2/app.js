// An HTTP/1 service that calls an HTTPS dependency over HTTP/2 ($UPSTREAM_URL) with node's http2 client.
// Listens on $APP_PORT; APP_VARIANT=changed converts with a rounding bug.
const http = require('http');
const http2 = require('http2');

const changed = process.env.APP_VARIANT === 'changed';
let session = null;
function upstream() {
  if (!session || session.closed || session.destroyed) {
    session = http2.connect(process.env.UPSTREAM_URL);
    session.on('error', () => (session = null));
  }
  return session;
}

function rate(currency) {
  return new Promise((resolve, reject) => {
    const req = upstream().request({ ':path': `/rates/${currency}`, accept: 'application/json' });
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      try {
        resolve(JSON.parse(body));
      } catch (e) {
        reject(new Error(`bad answer: ${body}`));
      }
    });
    req.on('error', reject);
    req.end();
  });
}

http
  .createServer(async (req, res) => {
    const send = (status, obj) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    if (req.url === '/health') return send(200, { ok: true });
    const m = req.url.match(/^\/convert\/(\w+)\/(\d+)$/);
    if (!m) return send(404, { error: 'no route' });
    try {
      const r = await rate(m[1]);
      const amount = Number(m[2]) * r.rate;
      send(200, { currency: m[1], amount: changed ? Math.floor(amount) : Math.round(amount * 100) / 100, via: r.served_over });
    } catch (e) {
      send(502, { error: String(e) });
    }
  })
  .listen(Number(process.env.APP_PORT || 8080), '127.0.0.1', () => console.log('ready'));
