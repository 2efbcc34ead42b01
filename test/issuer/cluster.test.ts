import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import { runCli, spawnBulwark } from '../helpers/process.js';
import { SECRET, secretHashes, tempDir } from './helpers.js';

describe('issuer with workers: 2', () => {
  it(
    'every worker signs with the same key from the shared directory; sessions in the shared SQLite store',
    { timeout: 90_000 },
    async () => {
      const dir = tempDir();
      const [hash] = await secretHashes();
      const config = join(dir, 'issuer.yaml');
      writeFileSync(
        config,
        `version: 1
workers: 2
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
issuer:
  issuer: https://auth.test
  keys: { dir: keys, rotateEverySec: 0, publishAheadSec: 60 }
  store: { sqlite: { path: issuer.db } }
  clients: [{ id: billing, secretHash: '${hash}', audiences: [https://ledger.test] }]
routes: []
`,
      );
      const issuer = await spawnBulwark(config, [], {}, ['issuer', 'serve']);
      try {
        const base = `http://127.0.0.1:${issuer.ports[0]}`;
        const kids = new Set<string>();
        const tokens: string[] = [];
        for (let i = 0; i < 30; i++) {
          // A fresh connection each time, so both workers answer.
          const res = await request(`${base}/oauth/token`, {
            method: 'POST',
            headers: {
              connection: 'close',
              'content-type': 'application/x-www-form-urlencoded',
              authorization: `Basic ${Buffer.from(`billing:${SECRET}`).toString('base64')}`,
            },
            body: 'grant_type=client_credentials',
          });
          expect(res.statusCode).toBe(200);
          const token = ((await res.body.json()) as { access_token: string }).access_token;
          tokens.push(token);
          kids.add(decodeProtectedHeader(token).kid!);
        }
        expect(kids.size).toBe(1);
        const jwks = await request(`${base}/oauth/jwks.json`, { headers: { connection: 'close' } });
        const keys = createLocalJWKSet((await jwks.body.json()) as { keys: [] });
        for (const token of tokens)
          expect((await jwtVerify(token, keys, { issuer: 'https://auth.test' })).payload.sub).toBe('billing');
        // Two ES256/EdDSA keys, not four: the workers agreed on one bootstrap.
        const again = await request(`${base}/oauth/jwks.json`, { headers: { connection: 'close' } });
        expect(((await again.body.json()) as { keys: unknown[] }).keys.length).toBe(2);
      } finally {
        await issuer.stop();
      }
    },
  );
});

describe('issuer events in the audit log', () => {
  it(
    'token.issued and token.refused records, no secret or token in the log, a chain that verifies',
    { timeout: 60_000 },
    async () => {
      const dir = tempDir();
      const [hash] = await secretHashes();
      const config = join(dir, 'issuer.yaml');
      writeFileSync(
        config,
        `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
audit:
  durability: durable
  wal: { dir: '${dir}/wal' }
  sinks: [{ file: { path: '${dir}/audit.jsonl' } }]
issuer:
  issuer: https://auth.test
  keys: { dir: keys, rotateEverySec: 0, publishAheadSec: 60 }
  store: { sqlite: { path: issuer.db } }
  clients: [{ id: billing, secretHash: '${hash}', audiences: [https://ledger.test] }]
routes: []
`,
      );
      const issuer = await spawnBulwark(config, [], {}, ['issuer', 'serve']);
      let token = '';
      try {
        const base = `http://127.0.0.1:${issuer.ports[0]}`;
        const ask = (secret: string) =>
          request(`${base}/oauth/token`, {
            method: 'POST',
            headers: {
              'content-type': 'application/x-www-form-urlencoded',
              authorization: `Basic ${Buffer.from(`billing:${secret}`).toString('base64')}`,
            },
            body: 'grant_type=client_credentials',
          });
        const ok = await ask(SECRET);
        token = ((await ok.body.json()) as { access_token: string }).access_token;
        const bad = await ask('not-the-secret-0123456789');
        expect(bad.statusCode).toBe(401);
        await bad.body.dump();
      } finally {
        expect(await issuer.stop()).toBe(0);
      }
      const text = readFileSync(join(dir, 'audit.jsonl'), 'utf8');
      const records = text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const issued = records.find((r) => r['action'] === 'token.issued')!;
      expect(issued).toMatchObject({ kind: 'event', subject: 'billing', outcome: 'success' });
      expect((issued['details'] as { jti: string }).jti).toBe(decodeJwt(token).jti);
      const refused = records.find((r) => r['action'] === 'token.refused')!;
      expect(refused).toMatchObject({ outcome: 'failure', subject: 'billing' });
      expect((refused['details'] as { code: string }).code).toBe('issuer.invalid_client');
      expect(records.filter((r) => r['kind'] === 'request').map((r) => r['status'])).toEqual([200, 401]);
      expect(text).not.toContain(token);
      expect(text).not.toContain(SECRET);
      expect((await runCli(['audit', 'verify', '--file', join(dir, 'audit.jsonl')])).code).toBe(0);
    },
  );
});
