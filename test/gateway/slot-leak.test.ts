/**
 * A client that leaves while an asynchronous stage waits (here: the first token waits for a
 * slow JWKS fetch) must not leave a concurrency slot behind. The exchange's end had already
 * run, so a slot the limit stage took afterwards was held for ever: every later request on
 * the route got 429 `ratelimit.concurrency` until restart.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUDIENCE, ISSUER, jwks, makeKey, mint, type TestKey } from '../authn/helpers.js';
import { startGateway, type TestGateway } from '../helpers/net.js';

describe('a client gone during an async stage', () => {
  let key: TestKey;
  let rotated: TestKey;
  let fetches = 0;
  let slowJwks: Server;
  let gw: TestGateway;
  beforeAll(async () => {
    key = await makeKey('k1');
    rotated = await makeKey('k2');
    // At start the set holds k1 (fetched at once); later fetches publish k2 too, slowly.
    slowJwks = createServer((_req, res) => {
      const first = fetches++ === 0;
      setTimeout(
        () => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify(first ? jwks(key) : jwks(key, rotated)));
        },
        first ? 0 : 400,
      );
    });
    await new Promise<void>((r) => slowJwks.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(slowJwks.address() as AddressInfo).port}/jwks`;
    gw = await startGateway(`version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { builtin: echo } }
authn:
  providers:
    idp: { issuer: ${ISSUER}, audiences: [${AUDIENCE}], algorithms: [RS256], jwksUrl: '${url}', jwks: { cooldownMs: 1 } }
rateLimits:
  policies: [{ id: one, concurrency: 1, key: [route] }]
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: idp }, rateLimit: [one] }
`);
  });
  afterAll(async () => {
    await gw.close();
    await new Promise((r) => slowJwks.close(r));
  });

  it('frees the slot the stage took after the client left', async () => {
    // A token of the new key: an unknown kid, so the stage waits for a refetch.
    const token = await mint(rotated);
    const aborted = request(`${gw.url}/api/x`, {
      headers: { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(100),
    }).catch((e: Error) => e);
    expect(await aborted).toBeInstanceOf(Error);
    // The refetch answers at 400 ms; the token verifies and the limit stage runs on for the gone client.
    await new Promise((r) => setTimeout(r, 700));
    for (let i = 0; i < 3; i++) {
      const res = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${token}` } });
      await res.body.dump();
      expect([i, res.statusCode]).toEqual([i, 200]);
    }
  });
});
