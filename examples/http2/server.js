// An h2c (HTTP/2 over cleartext, prior knowledge) service on node's http2 module, for doppel's HTTP/2 tests.
// Listens on $APP_PORT; APP_VARIANT=changed is a "new build" that renames a field's value.
const http2 = require('http2');

const changed = process.env.APP_VARIANT === 'changed';
const server = http2.createServer();

server.on('stream', (stream, headers) => {
  const path = headers[':path'];
  let body = '';
  stream.on('data', (chunk) => (body += chunk));
  stream.on('end', () => {
    if (path === '/hello') {
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify({ greeting: changed ? 'hi' : 'hello', protocol: 'h2c' }));
    } else if (path === '/echo' && headers[':method'] === 'POST') {
      const item = JSON.parse(body || '{}');
      // Trailers show up on the recorded exchange.
      stream.respond({ ':status': 201, 'content-type': 'application/json' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-checksum': String(body.length) }));
      stream.end(JSON.stringify({ received: item, size: body.length }));
    } else {
      stream.respond({ ':status': 404, 'content-type': 'text/plain' });
      stream.end('not found\n');
    }
  });
});

server.listen(Number(process.env.APP_PORT || 8080), '127.0.0.1', () => console.log('ready'));
