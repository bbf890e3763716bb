// An HTTPS server that speaks only HTTP/2 (ALPN h2), with its own certificate ($UPSTREAM_TLS_CERT/KEY).
// Usage: node upstream.js PORT
const fs = require('fs');
const http2 = require('http2');

const server = http2.createSecureServer({
  cert: fs.readFileSync(process.env.UPSTREAM_TLS_CERT),
  key: fs.readFileSync(process.env.UPSTREAM_TLS_KEY),
  allowHTTP1: false,
});
server.on('stream', (stream, headers) => {
  const id = (headers[':path'].match(/\/rates\/(\w+)/) || [])[1];
  if (!id) {
    stream.respond({ ':status': 404 });
    stream.end();
    return;
  }
  stream.respond({ ':status': 200, 'content-type': 'application/json' });
  stream.end(JSON.stringify({ currency: id, rate: id === 'EUR' ? 0.92 : 1.0, served_over: stream.session.alpnProtocol }));
});
server.listen(Number(process.argv[2]), '127.0.0.1', () => console.log('ready'));
