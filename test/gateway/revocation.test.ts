import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { generateKeys, mintToken, writeKeys } from '../../src/cli/dev-tokens.js';
import { startUpstream } from '../helpers/net.js';
import { runCli, spawnBulwark } from '../helpers/process.js';

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
