// The example shop service on node `mysql2`, using prepared statements (`execute`) for its queries.
// APP_VARIANT=changed is a "new build" with a pricing bug that replay must catch.
// Environment: APP_PORT (8080), DB_HOST (127.0.0.1), DB_PORT (3306), DB_USER (root), DB_PASSWORD, DB_NAME.
// Run with NODE_PATH=examples/node/node_modules.
'use strict';

const http = require('http');
const mysql = require('mysql2/promise');

const changed = process.env.APP_VARIANT === 'changed';
const pool = mysql.createPool({
  host: process.env.DB_HOST || '127.0.0.1',
  port: Number(process.env.DB_PORT || 3306),
  user: process.env.DB_USER || 'root',
  password: process.env.DB_PASSWORD || '',
  database: process.env.DB_NAME || 'test',
  connectionLimit: 2,
  multipleStatements: true,
  supportBigNumbers: true,
  bigNumberStrings: true,
  dateStrings: true,
});

function plain(row) {
  const out = {};
  for (const [k, v] of Object.entries(row)) out[k] = Buffer.isBuffer(v) ? v.toString('hex') : v;
  return out;
}

async function item(id) {
  const [rows] = await pool.execute('SELECT id, name, price, stock FROM items WHERE id = ?', [id]);
  return rows.length ? plain(rows[0]) : null;
}

const routes = {
  'GET /items': async () => {
    const [rows] = await pool.execute(
      'SELECT id, name, price, stock, weight, added, updated, notes, tag FROM items WHERE price > ? ORDER BY id',
      [0],
    );
    return [200, { items: rows.map(plain) }];
  },
  'POST /orders': async (body) => {
    const found = await item(Number(body.item_id));
    if (!found) return [404, { error: 'no such item' }];
    let total = Math.round(Number(found.price) * body.qty * 100) / 100;
    if (changed) total = Math.round(total * 1.1 * 100) / 100; // the regression
    const [res] = await pool.execute('INSERT INTO orders (item_id, qty) VALUES (?, ?)', [found.id, body.qty]);
    return [201, { order_id: res.insertId, item: found.name, qty: body.qty, total }];
  },
  'GET /report': async () => {
    // A procedure: two result sets and the final OK, through the binary protocol.
    const [results] = await pool.execute('CALL order_report()');
    return [200, { orders: Number(results[0][0].orders), names: results[1].map((r) => r.name) }];
  },
  'GET /summary': async () => {
    const [sets] = await pool.query('SELECT COUNT(*) AS orders FROM orders; SELECT COALESCE(SUM(qty), 0) AS units FROM orders');
    return [200, { orders: Number(sets[0][0].orders), units: Number(sets[1][0].units) }];
  },
  'GET /missing': async () => {
    try {
      await pool.execute('SELECT * FROM no_such_table WHERE id = ?', [1]);
      return [200, { error: null }];
    } catch (e) {
      return [500, { error: e.errno, sqlstate: e.sqlState }];
    }
  },
  'GET /session': async () => {
    const [rows] = await pool.query('SELECT @@version AS version, @@autocommit AS autocommit');
    return [200, { mariadb: rows[0].version.includes('MariaDB'), autocommit: Number(rows[0].autocommit) }];
  },
};

http
  .createServer((req, res) => {
    let data = '';
    req.on('data', (c) => (data += c));
    req.on('end', async () => {
      const path = req.url.split('?')[0];
      let status = 404;
      let payload = { error: 'not found' };
      try {
        if (path === '/health') [status, payload] = [200, { ok: true }];
        else if (path.startsWith('/items/') && req.method === 'GET') {
          const found = await item(Number(path.split('/')[2]));
          [status, payload] = found ? [200, found] : [404, { error: 'no such item' }];
        } else if (routes[`${req.method} ${path}`]) {
          [status, payload] = await routes[`${req.method} ${path}`](data ? JSON.parse(data) : {});
        }
      } catch (e) {
        [status, payload] = [500, { error: String(e.message) }];
      }
      const body = JSON.stringify(payload);
      res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
  })
  .listen(Number(process.env.APP_PORT || 8080), '0.0.0.0');
