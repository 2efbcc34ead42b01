/**
 * A reload that fails — in the compile (an issuer key directory that cannot be made) or after
 * it (a new listener cannot bind) — must leave the running gateway exactly as it was: revoked tokens stay revoked, rate-limit buckets keep
 * their counts, a replaced token cache is not left on a carried-over revocation list; and a
 * gateway that is stopping refuses reloads.
 */
import { SignJWT } from 'jose';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { restartOnlyChanges } from '../../src/gateway/gateway.js';
import { startGateway, type TestGateway } from '../helpers/net.js';

const SECRET = 'reload-failure-test-secret-0123456789abc';

const config = (extra: { listener?: string; revocation?: string; cacheTtl?: number; issuer?: string } = {}) => `version: 1
listeners:
  - { address: 127.0.0.1, port: 0 }
${extra.listener ?? ''}upstreams: { app: { builtin: echo } }
authn:
  providers:
    hs: { issuer: https://id.test, audiences: [api], algorithms: [HS256], secret: ${SECRET} }
  cache: { maxEntries: 100, ttlMs: ${extra.cacheTtl ?? 60000} }
revocation: ${extra.revocation ?? '{ store: memory }'}
rateLimits:
  policies: [{ id: three, rate: 3, per: 1h, key: [route] }]
${extra.issuer ?? ''}routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: hs } }
  - { id: limited, match: { path: { prefix: /limited } }, upstream: app, auth: { public: true }, rateLimit: [three] }
`;

describe('a reload failing after its compile', () => {
  let gw: TestGateway;
  let blocker: Server;
  let busyPort: number;
  let token: string;
  beforeAll(async () => {
    blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    busyPort = (blocker.address() as AddressInfo).port;
    gw = await startGateway(config());
    token = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('https://id.test')
      .setAudience('api')
      .setSubject('alice')
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(SECRET));
  });
  afterAll(async () => {
    await gw.close();
    await new Promise((r) => blocker.close(r));
  });

  const get = async (path: string, auth = false) => {
    const res = await request(`${gw.url}${path}`, auth ? { headers: { authorization: `Bearer ${token}` } } : {});
    await res.body.dump();
    return res.statusCode;
  };
  const reload = (source: string) => {
    const loaded = parseConfig(source, 'gw.yaml', { checks: CONFIG_CHECKS });
    return gw.gateway.reload(loaded.config, loaded.hash);
  };
  const unbindable = (extra: Parameters<typeof config>[0] = {}) =>
    config({ ...extra, listener: `  - { address: 127.0.0.1, port: ${busyPort} }\n` });

  it('keeps revocations, buckets and the running snapshot', async () => {
    await gw.gateway.current!.revocation!.revoke({ sub: 'alice' });
    expect(await get('/api/x', true)).toBe(401);
    expect([await get('/limited'), await get('/limited'), await get('/limited'), await get('/limited')]).toEqual([
      200, 200, 200, 429,
    ]);
    const running = gw.gateway.current;
    // A new revocation store and a listener that cannot bind.
    await expect(
      reload(
        unbindable({
          // authn unchanged, so carried over: the failed reload must not rewire it to the new (empty) list.
          revocation: `{ store: { redis: { url: 'redis://127.0.0.1:6379', keyPrefix: 'bulwark-test-reload-${process.pid}:' } } }`,
        }),
      ),
    ).rejects.toThrow();
    expect(gw.gateway.current).toBe(running);
    expect(await get('/api/x', true)).toBe(401);
    expect(await get('/limited')).toBe(429);
    // The next good reload carries the same bucket (it was given back, not lost to the failed one).
    await reload(config({ cacheTtl: 2000 }));
    expect(await get('/limited')).toBe(429);
    expect(await get('/api/x', true)).toBe(401);
    // Each authn change replaced the token cache: the carried-over list holds only the live one.
    const caches = (gw.gateway.current!.revocation as unknown as { caches: Set<unknown> }).caches;
    expect(caches.size).toBe(1);
  });

  it('failing inside the compile (after the new revocation list started): the running list stays in force', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-reload-failure-'));
    try {
      expect(await get('/api/x', true)).toBe(401); // revoked by the test above
      const blocker = join(dir, 'not-a-dir');
      writeFileSync(blocker, 'x');
      await expect(
        reload(
          config({
            revocation: `{ store: { redis: { url: 'redis://127.0.0.1:6379', keyPrefix: 'bulwark-test-reload2-${process.pid}:' } } }`,
            cacheTtl: 2000,
            issuer: `issuer:
  issuer: https://auth.test
  keys: { dir: '${join(blocker, 'keys')}' }
  store: { sqlite: { path: '${join(dir, 'issuer.db')}' } }
  clients: []
`,
          }),
        ),
      ).rejects.toThrow();
      expect(await get('/api/x', true)).toBe(401);
      // A config dropping revocation detaches it from the carried-over authn.
      await reload(config({ revocation: 'null', cacheTtl: 2000 }).replace('revocation: null\n', ''));
      expect(gw.gateway.current!.revocation).toBeNull();
      expect(await get('/api/x', true)).toBe(200);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a reload once the gateway is stopping', async () => {
    const other = await startGateway(config());
    const stopping = other.gateway.stop(1000);
    const loaded = parseConfig(config({ cacheTtl: 3000 }), 'gw.yaml', { checks: CONFIG_CHECKS });
    await expect(other.gateway.reload(loaded.config, loaded.hash)).rejects.toThrow();
    await stopping;
  });
});

describe('settings a reload cannot apply', () => {
  it('are named (logged as "takes effect on restart"): audit, a running listener\'s socket limits', () => {
    const parse = (source: string) => parseConfig(source, 'gw.yaml', { checks: [] }).config;
    const base = `version: 1
listeners:
  - { address: 127.0.0.1, port: 18443, limits: { maxHeaderBytes: 16384 } }
upstreams: { app: { builtin: echo } }
audit: { sinks: [{ file: { path: /tmp/a.jsonl } }] }
routes:
  - { id: r, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }
`;
    const before = parse(base);
    expect(restartOnlyChanges(before, parse(base))).toEqual([]);
    const after = parse(
      base.replace('maxHeaderBytes: 16384', 'maxHeaderBytes: 2048, maxBodyBytes: 10').replace('/tmp/a.jsonl', '/tmp/b.jsonl'),
    );
    // maxBodyBytes is checked per request from the snapshot: it applies, so it is not named.
    expect(restartOnlyChanges(before, after)).toEqual(['`audit`', '`listeners[0].limits.maxHeaderBytes`']);
    // A listener on a new port takes its settings at once.
    expect(restartOnlyChanges(before, parse(base.replace('18443', '18444').replace('16384', '2048')))).toEqual([]);
  });
});
