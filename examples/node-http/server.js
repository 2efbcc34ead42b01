// A plain node:http service protecting itself with Bulwark: `bulwark.protect(handler)` runs every request
// through the same pipeline as the gateway (canonical path, route, JWT, RBAC); the handler runs only for
// allowed requests, with the verified caller on `req.bulwark.identity`. Denials are the gateway's RFC 7807
// problems (401 with WWW-Authenticate, 403, 404 for paths no route allows).
//
//   npm run build && node examples/node-http/server.js        # PORT (default 3000) and HOST (127.0.0.1)
import http from 'node:http';
// Inside this repository the package is the build in dist/; installed users write:
//   import { createBulwark } from 'bulwark';
import { createBulwark } from '../../dist/index.js';
import { CONFIG, ensureDevKeys, printHowToCall } from '../library/dev-keys.js';

await ensureDevKeys(); // development only: a signing key for the tokens printed below
const bulwark = await createBulwark({ config: CONFIG });

const ORDERS = [
  { id: '41', item: 'keyboard' },
  { id: '42', item: 'monitor' },
];

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const server = http.createServer(
  bulwark.protect((req, res) => {
    const { identity, requestId } = req.bulwark; // identity: null on public routes
    const { pathname } = new URL(req.url, 'http://localhost');
    if (pathname === '/healthz') return send(res, 200, { status: 'ok' });
    if (pathname === '/orders' && req.method === 'GET') return send(res, 200, { orders: ORDERS, caller: identity.subject });
    if (pathname === '/orders' && req.method === 'POST') {
      req.resume(); // a real service would read the body here
      // A business event, in the same tamper-evident chain as Bulwark's own decisions.
      bulwark.audit.record({ action: 'order.created', subject: identity.subject, resource: 'order:new', details: { requestId } });
      return send(res, 201, { created: true, by: identity.subject, requestId });
    }
    const match = /^\/orders\/([^/]+)$/.exec(pathname);
    const order = match && ORDERS.find((o) => o.id === match[1]);
    if (order && req.method === 'GET') return send(res, 200, { ...order, caller: identity.subject });
    return send(res, 404, { error: 'not found' });
  }),
);

server.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? '127.0.0.1', () => {
  const { address, port } = server.address();
  void printHowToCall('node:http', `http://${address}:${port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    server.close(() => void bulwark.close().then(() => process.exit(0)));
    server.closeIdleConnections();
  });
}
