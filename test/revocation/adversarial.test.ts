/**
 * Adversarial requests on the admin listener's revocation API: every request routed to
 * `/revocations…` gets an answer (never a hang), whatever dot segments its path carries.
 */
import { request } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAdminServer } from '../../src/server/admin.js';
import { RevocationList } from '../../src/revocation/list.js';

const TOKEN = 'admin-token-0123456789abcdef';
let server: Server;
let port: number;

beforeAll(async () => {
  const list = new RevocationList();
  server = createAdminServer({
    ready: () => true,
    config: () => ({ hash: 'h', file: 'f', loadedAt: '', config: { secret: '[redacted]' }, workers: 1 }),
    revocation: () => ({ list, token: TOKEN }),
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
});

/** Raw request target (no client-side normalisation); resolves to the status or 'timeout'. */
function send(method: string, path: string): Promise<number | 'timeout'> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.setTimeout(2000, () => {
      req.destroy();
      resolve('timeout');
    });
    req.on('error', reject);
    req.end();
  });
}

describe('revocation admin: dot segments', () => {
  it.each([
    ['GET', '/revocations/../healthz'],
    ['GET', '/revocations/%2e%2e/config'],
    ['DELETE', '/revocations/../revocations'],
    ['GET', '/revocations/./'],
  ])('%s %s is answered with a 4xx, never left hanging', async (method, path) => {
    const status = await send(method, path);
    expect(status).not.toBe('timeout');
    expect(typeof status === 'number' && status >= 400 && status < 500).toBe(true);
  });

  it('the regular paths still work', async () => {
    expect(await send('GET', '/revocations')).toBe(200);
    expect(await send('DELETE', '/revocations/jti%3Anope')).toBe(404);
    expect(await send('GET', '/healthz')).toBe(200);
  });
});
