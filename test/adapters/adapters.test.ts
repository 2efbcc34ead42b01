import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { request } from 'undici';
import express from 'express';
import Fastify from 'fastify';
import { createBulwark, type Bulwark, type BulwarkRequestState } from '../../src/adapters/bulwark.js';
import { bulwarkFastify } from '../../src/adapters/fastify.js';

const config = {
  version: 1,
  routes: [
    { id: 'items', auth: { public: true }, match: { path: { glob: '/items/{id}' }, methods: ['GET'] } },
    { id: 'health', auth: { public: true }, match: { path: { exact: '/health' } } },
  ],
};

async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** The same behaviour, whichever adapter: allowed requests reach the handler with state; others get the gateway's problems. */
async function expectSameBehaviour(base: string): Promise<void> {
  const ok = await request(`${base}/items/7`);
  expect(ok.statusCode).toBe(200);
  const state = (await ok.body.json()) as BulwarkRequestState;
  expect(state.route).toEqual({ id: 'items', params: { id: '7' } });
  expect(state.requestId).toBe(ok.headers['x-request-id'] ?? state.requestId);

  const denied = await request(`${base}/items/7`, { method: 'DELETE' });
  expect(denied.statusCode).toBe(404);
  expect(denied.headers['content-type']).toBe('application/problem+json');
  expect(((await denied.body.json()) as { code: string }).code).toBe('route.not_found');

  const encoded = await request(`${base}/items/a%2F..%2Fb`);
  expect(encoded.statusCode).toBe(400);
  expect(((await encoded.body.json()) as { code: string }).code).toBe('request.path_encoded_slash');

  // Node's HTTP/1 parser takes an `HTTP/2.0` request line: it must not pass for an HTTP/2 stream.
  const url = new URL(base);
  const raw = await new Promise<string>((resolve, reject) => {
    const socket = connect(Number(url.port), url.hostname, () =>
      socket.write('GET /items/7 HTTP/2.0\r\nHost: a\r\nConnection: close\r\n\r\n'),
    );
    let text = '';
    socket.on('data', (d: Buffer) => (text += d.toString()));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
  expect(raw).toMatch(/^HTTP\/1\.1 400 /);
  expect((JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as { code: string }).code).toBe('request.http_version');

  const dotted = await request(`${base}/admin/../items/9`);
  expect(dotted.statusCode).toBe(200);
  expect(((await dotted.body.json()) as BulwarkRequestState).route?.params).toEqual({ id: '9' });
}

describe('library adapters run the same engine', () => {
  let bulwark: Bulwark;
  beforeAll(async () => {
    bulwark = await createBulwark({ config });
  });
  afterAll(async () => {
    await bulwark.close();
  });

  it('node:http', async () => {
    const server = createServer(
      bulwark.protect((req, res) => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(req.bulwark));
      }),
    );
    try {
      await expectSameBehaviour(await listen(server));
    } finally {
      server.close();
    }
  });

  it('Express', async () => {
    const app = express();
    app.use(bulwark.middleware());
    app.use((req, res) => {
      res.json((req as unknown as { bulwark: BulwarkRequestState }).bulwark);
    });
    const server = createServer(app);
    try {
      await expectSameBehaviour(await listen(server));
    } finally {
      server.close();
    }
  });

  it('Fastify', async () => {
    const app = Fastify();
    await app.register(bulwarkFastify, { bulwark });
    app.all('/*', async (request) => (request as unknown as { bulwark: BulwarkRequestState }).bulwark);
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    try {
      await expectSameBehaviour(base);
    } finally {
      await app.close();
    }
  });

  it('refuses an invalid config with ConfigError issues', async () => {
    await expect(
      createBulwark({ config: { version: 1, routes: [{ id: 'x', auth: { public: true }, match: { path: { prefx: '/' } } }] } }),
    ).rejects.toMatchObject({
      code: 'ERR_CONFIG_INVALID',
    });
  });
});
