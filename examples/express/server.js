// An Express 5 service protecting itself with Bulwark: `app.use(bulwark.middleware())` before the routes runs
// every request through the same pipeline as the gateway (canonical path, route, JWT, RBAC); only allowed
// requests reach your routes, with the verified caller on `req.bulwark.identity`. Denials are the gateway's
// RFC 7807 problems (401 with WWW-Authenticate, 403, 404 for paths no Bulwark route allows).
//
//   npm run build && node examples/express/server.js          # PORT (default 3000) and HOST (127.0.0.1)
import express from 'express';
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

const app = express();
app.use(bulwark.middleware()); // first: nothing runs for a request Bulwark refuses

app.get('/healthz', (_req, res) => {
  res.json({ status: 'ok' });
});
app.get('/orders', (req, res) => {
  res.json({ orders: ORDERS, caller: req.bulwark.identity.subject });
});
app.get('/orders/:id', (req, res) => {
  const order = ORDERS.find((o) => o.id === req.params.id);
  if (!order) return res.status(404).json({ error: 'not found' });
  res.json({ ...order, caller: req.bulwark.identity.subject });
});
app.post('/orders', (req, res) => {
  const { identity, requestId } = req.bulwark;
  // A business event, in the same tamper-evident chain as Bulwark's own decisions.
  bulwark.audit.record({ action: 'order.created', subject: identity.subject, resource: 'order:new', details: { requestId } });
  res.status(201).json({ created: true, by: req.bulwark.identity.subject, requestId: req.bulwark.requestId });
});

const server = app.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? '127.0.0.1', (error) => {
  if (error) throw error;
  const { address, port } = server.address();
  void printHowToCall('express', `http://${address}:${port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    server.close(() => void bulwark.close().then(() => process.exit(0)));
    server.closeIdleConnections();
  });
}
