/**
 * Revocation through a spawned `bulwark serve`: one process, then `workers: 2` (the
 * primary serves the admin API and relays to both workers), with the memory store and
 * with Redis (an own redis-server, stopped mid-run).
 */
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { Redis } from 'ioredis';
import { generateKeys, mintToken, writeKeys } from '../../src/cli/dev-tokens.js';
import { startUpstream } from '../helpers/net.js';
import { runCli, spawnBulwark, type RunningBulwark } from '../helpers/process.js';
import { freePort, OwnRedis, sleep } from '../limits/helpers.js';

describe('revocation through the gateway', () => {
  it('bulwark revoke takes a token back at once; the admin API needs its token', { timeout: 60_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-revoke-'));
    const keys = writeKeys(dir, await generateKeys('ES256', 'r1'));
    const upstream = await startUpstream();
    const config = join(dir, 'gw.yaml');
    writeFileSync(
      config,
      `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
authn: { providers: { idp: { issuer: https://i, audiences: [a], algorithms: [ES256], jwksFile: '${keys.jwks}' } } }
revocation: { store: memory, adminToken: 'a-long-admin-token-0123456789' }
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: idp } }
`,
    );
    const gw = await spawnBulwark(config);
    try {
      const base = `http://127.0.0.1:${gw.ports[0]}`;
      const admin = `http://127.0.0.1:${gw.adminPort}`;
      const token = await mintToken({ keyFile: keys.privateKey, issuer: 'https://i', audience: ['a'], subject: 'alice' });
      const other = await mintToken({ keyFile: keys.privateKey, issuer: 'https://i', audience: ['a'], subject: 'bob' });
      const call = async (t: string) => {
        const res = await request(`${base}/api/x`, { headers: { authorization: `Bearer ${t}` } });
        await res.body.dump();
        return res.statusCode;
      };
      expect(await call(token)).toBe(200);
      expect(await call(token)).toBe(200); // now in the verified-token cache
      const unauthenticated = await request(`${admin}/revocations`, {
        method: 'POST',
        body: JSON.stringify({ jti: 'x' }),
        headers: { 'content-type': 'application/json' },
      });
      expect(unauthenticated.statusCode).toBe(401);
      await unauthenticated.body.dump();
      const jti = decodeJwt(token).jti!;
      const revoked = await runCli(['revoke', '--jti', jti, '--admin', admin, '--token', 'a-long-admin-token-0123456789']);
      expect(revoked.code).toBe(0);
      expect(await call(token)).toBe(401);
      expect(await call(other)).toBe(200);
      expect((await runCli(['revoke', '--sub', 'bob', '--admin', admin, '--token', 'a-long-admin-token-0123456789'])).code).toBe(
        0,
      );
      expect(await call(other)).toBe(401);
      expect((await runCli(['revoke', '--admin', admin])).code).toBe(2);
    } finally {
      gw.child.kill('SIGTERM');
      await gw.exited;
      await upstream.close();
    }
  });
});

const ADMIN_TOKEN = 'a-long-admin-token-0123456789';

/** One request on a connection of its own (no agent, `connection: close`): the cluster hands each to a worker in turn. */
function fresh(port: number, token: string): Promise<{ status: number; code: unknown }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path: '/api/x',
        agent: false,
        headers: { authorization: `Bearer ${token}`, connection: 'close' },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          let code: unknown;
          try {
            code = (JSON.parse(text) as { code?: unknown }).code;
          } catch {
            code = undefined;
          }
          resolve({ status: res.statusCode ?? 0, code });
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** `n` consecutive requests, each on a new connection: their statuses and public error codes. */
async function burst(port: number, token: string, n = 20): Promise<{ statuses: number[]; codes: unknown[] }> {
  const statuses: number[] = [];
  const codes: unknown[] = [];
  for (let i = 0; i < n; i++) {
    const r = await fresh(port, token);
    statuses.push(r.status);
    if (r.status !== 200) codes.push(r.code);
  }
  return { statuses, codes };
}

const all = (n: number, status: number) => Array<number>(n).fill(status);

/** Worker pids that logged an access line with this decision (the access log carries pino's `pid`). */
async function pidsWith(gw: RunningBulwark, decision: string, atLeast: number): Promise<Set<number>> {
  const collect = () =>
    new Set(gw.logs.filter((l) => l['log'] === 'access' && l['decision'] === decision).map((l) => l['pid'] as number));
  const t0 = Date.now();
  while (collect().size < atLeast && Date.now() - t0 < 5_000) await sleep(20);
  return collect();
}

function adminCall(adminPort: number | null, method: string, path: string, body?: unknown) {
  return request(`http://127.0.0.1:${adminPort}${path}`, {
    method: method as 'GET',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
}

async function clusterFixture(revocation: string) {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-revoke-cluster-'));
  const keys = writeKeys(dir, await generateKeys('ES256', 'c1'));
  const upstream = await startUpstream();
  const config = join(dir, 'gw.yaml');
  writeFileSync(
    config,
    `version: 1
workers: 2
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
telemetry: { traces: { exporter: none }, logs: { accessLog: { enabled: true, fields: [status, decision] } } }
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
authn: { providers: { idp: { issuer: https://i, audiences: [a], algorithms: [ES256], jwksFile: '${keys.jwks}' } } }
revocation: ${revocation}
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: idp } }
`,
  );
  const mint = (subject: string) => mintToken({ keyFile: keys.privateKey, issuer: 'https://i', audience: ['a'], subject });
  return { config, upstream, mint };
}

async function readyAgain(adminPort: number | null): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const res = await request(`http://127.0.0.1:${adminPort}/readyz`);
    await res.body.dump();
    if (res.statusCode === 200) return;
    if (Date.now() - t0 > 30_000) throw new Error('not ready again');
    await sleep(50);
  }
}

describe('revocation in cluster mode (workers: 2)', () => {
  it(
    'memory store: admin API and bulwark revoke reach both workers, DELETE lifts it everywhere, a restarted worker gets the set',
    { timeout: 90_000 },
    async () => {
      const { config, upstream, mint } = await clusterFixture(`{ store: memory, adminToken: '${ADMIN_TOKEN}' }`);
      const gw = await spawnBulwark(config);
      try {
        const port = gw.ports[0]!;
        const alice = await mint('alice');
        const bob = await mint('bob');
        // Both workers serve (and cache) the token first: the spread the later assertions rely on.
        expect((await burst(port, alice, 10)).statuses).toEqual(all(10, 200));
        expect((await pidsWith(gw, 'allow', 2)).size).toBe(2);

        const posted = await adminCall(gw.adminPort, 'POST', '/revocations', { jti: decodeJwt(alice).jti });
        expect(posted.statusCode).toBe(201);
        expect(await posted.body.json()).toMatchObject({ propagated: true });
        // The 201 came after both workers acknowledged: refused on every connection from the first one on.
        const refused = await burst(port, alice);
        expect(refused.statuses).toEqual(all(20, 401));
        expect(new Set(refused.codes)).toEqual(new Set(['jwt.invalid']));
        const workers = await pidsWith(gw, 'jwt.revoked', 2);
        expect(workers.size).toBe(2);

        const cli = await runCli([
          'revoke',
          '--sub',
          'bob',
          '--admin',
          `http://127.0.0.1:${gw.adminPort}`,
          '--token',
          ADMIN_TOKEN,
        ]);
        expect(cli.code).toBe(0);
        expect((await burst(port, bob)).statuses).toEqual(all(20, 401));

        const listed = await adminCall(gw.adminPort, 'GET', '/revocations');
        expect(listed.statusCode).toBe(200);
        const body = (await listed.body.json()) as { revocations: { id: string }[]; store: { kind: string } };
        expect(body.revocations.map((r) => r.id).sort()).toEqual([`jti:${decodeJwt(alice).jti}`, 'sub:bob']);
        expect(body.store.kind).toBe('memory');

        const deleted = await adminCall(
          gw.adminPort,
          'DELETE',
          `/revocations/${encodeURIComponent(`jti:${decodeJwt(alice).jti}`)}`,
        );
        expect(deleted.statusCode).toBe(204);
        await deleted.body.dump();
        expect((await burst(port, alice)).statuses).toEqual(all(20, 200));
        const missing = await adminCall(gw.adminPort, 'DELETE', `/revocations/${encodeURIComponent('jti:nope')}`);
        expect(missing.statusCode).toBe(404);
        expect(await missing.body.json()).toMatchObject({ code: 'revocation.not_found' });

        // A worker killed and restarted by the primary enforces the set from its first request.
        const victim = [...workers][0]!;
        process.kill(victim, 'SIGKILL');
        await gw.waitForLog((l) => l['msg'] === 'worker exited, restarting', 10_000);
        await readyAgain(gw.adminPort);
        expect((await burst(port, bob)).statuses).toEqual(all(20, 401));
        const after = await pidsWith(gw, 'jwt.revoked', 3);
        expect([...after].filter((pid) => !workers.has(pid))).toHaveLength(1);
      } finally {
        await gw.stop();
        await upstream.close();
      }
    },
  );

  it(
    'Redis store: the primary writes to Redis and relays; with Redis down a 202 is still enforced by both workers and pushed on reconnect',
    { timeout: 90_000 },
    async () => {
      const redis = new OwnRedis(await freePort());
      await redis.start();
      const prefix = `bulwark-test:revocation-cluster:${randomUUID()}:`;
      const { config, upstream, mint } = await clusterFixture(
        `{ store: { redis: { url: '${redis.url}', keyPrefix: '${prefix}', channel: '${prefix}changes' } }, adminToken: '${ADMIN_TOKEN}' }`,
      );
      const gw = await spawnBulwark(config);
      try {
        const port = gw.ports[0]!;
        const first = await mint('alice');
        const second = await mint('alice');
        expect((await burst(port, first, 10)).statuses).toEqual(all(10, 200));

        const posted = await adminCall(gw.adminPort, 'POST', '/revocations', { jti: decodeJwt(first).jti });
        expect(posted.statusCode).toBe(201);
        await posted.body.dump();
        expect((await burst(port, first)).statuses).toEqual(all(20, 401));
        const deleted = await adminCall(
          gw.adminPort,
          'DELETE',
          `/revocations/${encodeURIComponent(`jti:${decodeJwt(first).jti}`)}`,
        );
        expect(deleted.statusCode).toBe(204);
        await deleted.body.dump();
        expect((await burst(port, first)).statuses).toEqual(all(20, 200));

        await redis.stop();
        const storeState = async () => {
          const res = await adminCall(gw.adminPort, 'GET', '/revocations');
          return ((await res.body.json()) as { store: { available: boolean } }).store.available;
        };
        for (let t0 = Date.now(); await storeState();) {
          if (Date.now() - t0 > 10_000) throw new Error('the primary did not notice Redis going away');
          await sleep(50);
        }
        const queued = await adminCall(gw.adminPort, 'POST', '/revocations', { jti: decodeJwt(second).jti });
        expect(queued.statusCode).toBe(202);
        expect(await queued.body.json()).toMatchObject({ propagated: false });
        // Not just the primary: both workers enforce it while Redis is down.
        expect((await burst(port, second)).statuses).toEqual(all(20, 401));

        await redis.start(); // empty: no persistence
        const client = new Redis(redis.url);
        try {
          for (let t0 = Date.now(); !(await client.hexists(`${prefix}entries`, `jti:${decodeJwt(second).jti}`));) {
            if (Date.now() - t0 > 15_000) throw new Error('the queued revocation was not pushed to Redis');
            await sleep(50);
          }
        } finally {
          client.disconnect();
        }
        for (let t0 = Date.now(); !(await storeState());) {
          if (Date.now() - t0 > 15_000) throw new Error('the primary did not resync');
          await sleep(50);
        }
        expect((await burst(port, second)).statuses).toEqual(all(20, 401));
        expect((await burst(port, first, 4)).statuses).toEqual(all(4, 200));
      } finally {
        await gw.stop();
        await upstream.close();
        await redis.stop();
      }
    },
  );
});
