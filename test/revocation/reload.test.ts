/**
 * A reload that fails must change nothing the running snapshot relies on: before, a config
 * switching the revocation store and then failing later in the compile (an issuer whose key
 * directory cannot be made) had already pointed the running authn at the new, empty list —
 * and a revoked token worked again. Also: a config dropping `revocation` leaves no carried-over
 * authn on the old list.
 */
import { SignJWT } from 'jose';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { startGateway, type TestGateway } from '../helpers/net.js';

const SECRET = 'revocation-reload-test-secret-0123456789';

const config = (revocation: string, extra = '') => `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { builtin: echo } }
authn:
  providers:
    hs: { issuer: https://id.test, audiences: [api], algorithms: [HS256], secret: ${SECRET} }
${revocation}${extra}routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: hs } }
`;

describe('revocation across a failed reload', () => {
  let gw: TestGateway;
  let dir: string;
  let token: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulwark-revocation-reload-'));
    gw = await startGateway(config('revocation: { store: memory }\n'));
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
    rmSync(dir, { recursive: true, force: true });
  });

  const status = async () => {
    const res = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.dump();
    return res.statusCode;
  };
  const reload = (source: string) => {
    const loaded = parseConfig(source, 'gw.yaml', { checks: CONFIG_CHECKS });
    return gw.gateway.reload(loaded.config, loaded.hash);
  };

  it('a reload failing after the revocation store changed keeps the running list in force', async () => {
    expect(await status()).toBe(200);
    await gw.gateway.current!.revocation!.revoke({ sub: 'alice' });
    expect(await status()).toBe(401);

    // A file where the issuer's key directory must go: its creation fails after the new list started.
    const blocker = join(dir, 'not-a-dir');
    writeFileSync(blocker, 'x');
    const failing = config(
      `revocation: { store: { redis: { url: 'redis://127.0.0.1:6379', keyPrefix: 'bulwark-test-reload-${process.pid}:' } } }\n`,
      `issuer:
  issuer: https://auth.test
  keys: { dir: '${join(blocker, 'keys')}' }
  store: { sqlite: { path: '${join(dir, 'issuer.db')}' } }
  clients: []
`,
    );
    await expect(reload(failing)).rejects.toThrow();
    expect(gw.gateway.current!.config.revocation).toMatchObject({ store: 'memory' });
    expect(await status()).toBe(401);
  });

  it('a reload dropping revocation detaches it', async () => {
    await reload(config(''));
    expect(gw.gateway.current!.revocation).toBeNull();
    expect(await status()).toBe(200);
  });
});
