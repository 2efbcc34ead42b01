import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { connect as h2connect } from 'node:http2';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { mintToken } from '../../src/cli/dev-tokens.js';
import { ROOT, spawnBulwark, type RunningBulwark } from '../helpers/process.js';

const QUICKSTART = fileURLToPath(new URL('../../examples/quickstart/gateway.yaml', import.meta.url));

describe('quickstart (examples/quickstart/gateway.yaml, built-in echo upstream)', () => {
  let gw: RunningBulwark;
  let base: string;
  beforeAll(async () => {
    // what `npm start` runs first (prestart): the demo key and ready-made curls
    execFileSync(process.execPath, ['examples/quickstart/prepare-demo.js'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, BULWARK_PORT: '8080' },
    }).toString();
    gw = await spawnBulwark(QUICKSTART, [], { BULWARK_PORT: '0', BULWARK_ADMIN_PORT: '0' });
    base = `http://127.0.0.1:${gw.ports[0]}`;
  });
  afterAll(async () => {
    expect(await gw.stop('SIGINT')).toBe(0);
  });

  it('prints what to call', async () => {
    // stderr and stdout are separate pipes: the banner may arrive just after the log line.
    for (let i = 0; i < 50 && !gw.stderr().includes('curl'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(gw.stderr()).toMatch(/curl -i http:\/\/127\.0\.0\.1:\d+\/echo/);
  });

  it('echoes through the gateway with the canonical path and the gateway headers', async () => {
    const res = await request(`${base}/echo//hello/./world?x=1`, { headers: { 'x-demo': 'yes' } });
    expect(res.statusCode).toBe(200);
    const echo = (await res.body.json()) as { service: string; method: string; path: string; headers: Record<string, string> };
    expect(echo.service).toBe('bulwark-echo');
    expect(echo.path).toBe('/echo/hello/world?x=1');
    expect(echo.headers['x-demo']).toBe('yes');
    expect(echo.headers['x-request-id']).toBe(res.headers['x-request-id']);
  });

  it('allows only what a route declares', async () => {
    expect((await request(`${base}/api/items/42`)).statusCode).toBe(200);
    const denied = await request(`${base}/api/items/42`, { method: 'DELETE' });
    expect(denied.statusCode).toBe(404);
    expect(((await denied.body.json()) as { code: string }).code).toBe('route.not_found');
    const other = await request(`${base}/admin`);
    expect(other.statusCode).toBe(404);
    await other.body.dump();
  });

  it('protects /api/orders: 401 without a token, 200 for a viewer, 403 without the role', async () => {
    const keyFile = fileURLToPath(new URL('../../examples/quickstart/.keys/demo.private.jwk.json', import.meta.url));
    const mint = (roles: string[]) =>
      mintToken({ keyFile, issuer: 'https://demo.bulwark.local', audience: ['demo-api'], subject: 'alice', roles });
    const none = await request(`${base}/api/orders/42`);
    expect(none.statusCode).toBe(401);
    await none.body.dump();
    const ok = await request(`${base}/api/orders/42`, { headers: { authorization: `Bearer ${await mint(['viewer'])}` } });
    expect(ok.statusCode).toBe(200);
    expect(((await ok.body.json()) as { headers: Record<string, string> }).headers['x-user-id']).toBe('alice');
    const forbidden = await request(`${base}/api/orders/42`, { headers: { authorization: `Bearer ${await mint([])}` } });
    expect(forbidden.statusCode).toBe(403);
    await forbidden.body.dump();
  });

  it('speaks cleartext HTTP/2 on the same port', async () => {
    const session = h2connect(base);
    const status = await new Promise<number>((resolve, reject) => {
      const stream = session.request({ ':path': '/echo/h2' });
      stream.on('response', (h) => resolve(Number(h[':status'])));
      stream.on('error', reject);
      stream.resume();
    });
    session.close();
    expect(status).toBe(200);
  });
});
