// A Fastify 5 service protecting itself with Bulwark: the `bulwarkFastify` plugin adds an onRequest hook
// (before routing and body parsing) that runs every request through the same pipeline as the gateway
// (canonical path, route, JWT, RBAC); only allowed requests reach your handlers, with the verified caller on
// `request.bulwark.identity`. Denials are the gateway's RFC 7807 problems (401 with WWW-Authenticate, 403,
// 404 for paths no Bulwark route allows).
//
//   npm run build && node examples/fastify/server.js          # PORT (default 3000) and HOST (127.0.0.1)
import Fastify from 'fastify';
// Inside this repository the package is the build in dist/; installed users write:
//   import { createBulwark, bulwarkFastify } from 'bulwark';
import { bulwarkFastify, createBulwark } from '../../dist/index.js';
import { CONFIG, ensureDevKeys, printHowToCall } from '../library/dev-keys.js';

await ensureDevKeys(); // development only: a signing key for the tokens printed below
const bulwark = await createBulwark({ config: CONFIG });

const ORDERS = [
  { id: '41', item: 'keyboard' },
  { id: '42', item: 'monitor' },
];

const app = Fastify();
await app.register(bulwarkFastify, { bulwark }); // applies to the whole app (not encapsulated)
app.addHook('onClose', () => bulwark.close());

app.get('/healthz', async () => ({ status: 'ok' }));
app.get('/orders', async (request) => ({ orders: ORDERS, caller: request.bulwark.identity.subject }));
app.get('/orders/:id', async (request, reply) => {
  const order = ORDERS.find((o) => o.id === request.params.id);
  if (!order) return reply.code(404).send({ error: 'not found' });
  return { ...order, caller: request.bulwark.identity.subject };
});
app.post('/orders', async (request, reply) => {
  const { identity, requestId } = request.bulwark;
  // A business event, in the same tamper-evident chain as Bulwark's own decisions.
  bulwark.audit.record({ action: 'order.created', subject: identity.subject, resource: 'order:new', details: { requestId } });
  return reply.code(201).send({ created: true, by: identity.subject, requestId });
});

await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' });
const { address, port } = app.server.address();
await printHowToCall('fastify', `http://${address}:${port}`);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => void app.close().then(() => process.exit(0)));
}
