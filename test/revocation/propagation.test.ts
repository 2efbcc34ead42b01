/**
 * Three `bulwark serve` processes sharing one Redis revocation store, in front of one
 * upstream. 100 distinct tokens (each its own `jti`, minted here with jose) are used on
 * B and C first (so they sit in each process's verified-token cache), then revoked one
 * by one through A's admin API while B and C are polled with the revoked token until
 * they answer 401. Asserted: every revocation is enforced on every instance. The
 * propagation times are printed, not asserted (timing belongs to `bench/revocation.js`).
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { Client } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { startUpstream } from '../helpers/net.js';
import { spawnBulwark, type RunningBulwark } from '../helpers/process.js';
import { deleteKeys, REDIS_URL } from '../limits/helpers.js';

const ADMIN_TOKEN = 'propagation-admin-token-0123456789';
const REVOCATIONS = 100;
const prefix = `bulwark-test:revocation-propagation:${randomUUID()}:`;

afterAll(async () => {
  await deleteKeys(REDIS_URL, prefix);
});

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

async function status(client: Client, token: string): Promise<{ status: number; code: unknown }> {
  const res = await client.request({ method: 'GET', path: '/api/x', headers: { authorization: `Bearer ${token}` } });
  const text = await res.body.text();
  let code: unknown;
  if (res.statusCode !== 200) code = (JSON.parse(text) as { code?: unknown }).code;
  return { status: res.statusCode, code };
}

describe('revocation propagation across three gateway processes (real Redis)', () => {
  it('a revocation made through A is enforced by B and C, every time', { timeout: 90_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-propagation-'));
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const jwks = join(dir, 'jwks.json');
    writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'p1', alg: 'ES256', use: 'sig' }] }));
    const upstream = await startUpstream();
    const configFor = (name: string) => {
      const file = join(dir, `${name}.yaml`);
      writeFileSync(
        file,
        `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
telemetry: { traces: { exporter: none } }
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
authn: { providers: { idp: { issuer: https://issuer.test, audiences: [api], algorithms: [ES256], jwksFile: '${jwks}' } } }
revocation:
  store: { redis: { url: '${REDIS_URL}', keyPrefix: '${prefix}', channel: '${prefix}changes' } }
  adminToken: '${ADMIN_TOKEN}'
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: idp } }
`,
      );
      return file;
    };
    const processes: RunningBulwark[] = [];
    const clients: Client[] = [];
    try {
      processes.push(...(await Promise.all(['a', 'b', 'c'].map((name) => spawnBulwark(configFor(name))))));
      const [a, b, c] = processes as [RunningBulwark, RunningBulwark, RunningBulwark];
      const [viaA, viaB, viaC] = [a, b, c].map((p) => new Client(`http://127.0.0.1:${p.ports[0]}`));
      clients.push(viaA!, viaB!, viaC!);
      const admin = new Client(`http://127.0.0.1:${a.adminPort}`);
      clients.push(admin);

      const now = Math.floor(Date.now() / 1000);
      const jtis = Array.from({ length: REVOCATIONS }, (_, i) => `propagation-${i}-${randomUUID()}`);
      const tokens = await Promise.all(
        jtis.map((jti, i) =>
          new SignJWT({})
            .setProtectedHeader({ alg: 'ES256', kid: 'p1' })
            .setIssuer('https://issuer.test')
            .setAudience('api')
            .setSubject(`user-${i}`)
            .setJti(jti)
            .setIssuedAt(now)
            .setExpirationTime(now + 600)
            .sign(privateKey),
        ),
      );
      // Valid everywhere first (and now cached by B and C: revoking must evict it there too).
      for (const token of tokens) {
        for (const client of [viaA!, viaB!, viaC!]) expect((await status(client, token)).status).toBe(200);
      }

      const samples: number[] = [];
      const unenforced: string[] = [];
      for (let i = 0; i < REVOCATIONS; i++) {
        const token = tokens[i]!;
        const t0 = performance.now();
        const posted = admin
          .request({
            method: 'POST',
            path: '/revocations',
            headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
            body: JSON.stringify({ jti: jtis[i] }),
          })
          .then(async (res) => ({ status: res.statusCode, body: (await res.body.json()) as { propagated?: boolean } }));
        const poll = async (client: Client, name: string): Promise<void> => {
          for (;;) {
            const r = await status(client, token);
            if (r.status === 401) {
              expect(r.code).toBe('jwt.invalid');
              samples.push(performance.now() - t0);
              return;
            }
            expect(r.status).toBe(200);
            if (performance.now() - t0 > 5_000) {
              unenforced.push(`${name}: revocation ${i}`);
              return;
            }
          }
        };
        await Promise.all([poll(viaB!, 'B'), poll(viaC!, 'C')]);
        const answer = await posted;
        expect(answer.status).toBe(201);
        expect(answer.body.propagated).toBe(true);
        expect((await status(viaA!, token)).status).toBe(401);
      }
      expect(unenforced).toEqual([]);
      expect(samples).toHaveLength(2 * REVOCATIONS);

      // Every instance's admin view holds the whole shared set.
      for (const p of [a, b, c]) {
        const res = await fetch(`http://127.0.0.1:${p.adminPort}/revocations`, {
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        });
        const listed = (await res.json()) as { revocations: unknown[]; store: { kind: string; available: boolean } };
        expect(listed.revocations).toHaveLength(REVOCATIONS);
        expect(listed.store).toMatchObject({ kind: 'redis', available: true });
      }

      samples.sort((x, y) => x - y);
      console.log(
        `revocation propagation, admin POST on A → 401 on B and C, ${REVOCATIONS} revocations (${samples.length} samples, ` +
          `3 processes on this machine): p50 ${percentile(samples, 50).toFixed(1)} ms, p99 ${percentile(samples, 99).toFixed(1)} ms, ` +
          `max ${samples.at(-1)!.toFixed(1)} ms (not asserted; see bench/revocation.js)`,
      );
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await Promise.all(processes.map((p) => p.stop()));
      await upstream.close();
    }
  });
});
