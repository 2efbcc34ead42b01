/**
 * Admin API (`POST/GET/DELETE /revocations`, bearer token in constant time,
 * loopback-only without one) and `bulwark revoke` (exit 0 ok, 1 failure, 2 usage).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleRevocationAdmin, isRevocationAdminPath } from '../../src/revocation/admin.js';
import { revokeCli } from '../../src/revocation/cli.js';
import { RevocationList } from '../../src/revocation/list.js';

const TOKEN = 'admin-token-0123456789abcdef';
const list = new RevocationList();
const open = new RevocationList();
let server: Server;
let openServer: Server;
let base: string;
let openBase: string;

function serve(l: RevocationList, token?: string): Promise<[Server, string]> {
  const s = createServer((req, res) => {
    void handleRevocationAdmin(req, res, l, token === undefined ? {} : { token }).then((handled) => {
      if (!handled) {
        res.writeHead(404);
        res.end();
      }
    });
  });
  return new Promise((resolve) =>
    s.listen(0, '127.0.0.1', () => resolve([s, `http://127.0.0.1:${(s.address() as AddressInfo).port}`])),
  );
}

beforeAll(async () => {
  [server, base] = await serve(list, TOKEN);
  [openServer, openBase] = await serve(open);
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
  await new Promise((r) => openServer.close(r));
});

const auth = (token = TOKEN) => ({ authorization: `Bearer ${token}`, 'content-type': 'application/json' });
const post = (body: unknown, headers: Record<string, string> = auth(), at = base) =>
  fetch(`${at}/revocations`, { method: 'POST', headers, body: JSON.stringify(body) });

describe('admin API', () => {
  it('no token → 401, wrong token → 401, right token → 201', async () => {
    const none = await post({ jti: 'x' }, { 'content-type': 'application/json' });
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toContain('Bearer');
    expect(((await none.json()) as { code: string }).code).toBe('admin.unauthorized');
    expect((await post({ jti: 'x' }, auth('wrong'))).status).toBe(401);
    expect((await post({ jti: 'x' }, auth(`${TOKEN}x`))).status).toBe(401);
    expect((await fetch(`${base}/revocations`)).status).toBe(401);
    expect(list.size).toBe(0);
    const ok = await post({ jti: 'x' });
    expect(ok.status).toBe(201);
    expect(await ok.json()).toMatchObject({ revocation: { id: 'jti:x', kind: 'jti', value: 'x' }, propagated: true });
    expect(list.isRevokedClaims({ sub: 'a', jti: 'x' }).revoked).toBe(true);
  });

  it('POST each kind, GET lists, DELETE lifts; bad input is 400', async () => {
    const before = new Date(Date.now() - 60_000).toISOString();
    expect((await post({ sub: 'bob', before })).status).toBe(201);
    expect((await post({ sid: 's-1', expiresAt: Math.floor(Date.now() / 1000) + 600 })).status).toBe(201);
    expect((await post({ sub: 'eve' })).status).toBe(201);
    const listed = (await (await fetch(`${base}/revocations`, { headers: auth() })).json()) as {
      revocations: { id: string; before?: number }[];
      store: { kind: string; available: boolean };
    };
    expect(listed.revocations.map((r) => r.id)).toEqual(
      expect.arrayContaining(['jti:x', 'sub_before:bob', 'sid:s-1', 'sub:eve']),
    );
    expect(listed.revocations.find((r) => r.id === 'sub_before:bob')!.before).toBeCloseTo((Date.now() - 60_000) / 1000, -1);
    expect(listed.store).toMatchObject({ kind: 'memory', available: true });

    const del = await fetch(`${base}/revocations/${encodeURIComponent('sub:eve')}`, { method: 'DELETE', headers: auth() });
    expect(del.status).toBe(204);
    expect(list.isRevokedClaims({ sub: 'eve' }).revoked).toBe(false);
    expect((await fetch(`${base}/revocations/sub%3Aeve`, { method: 'DELETE', headers: auth() })).status).toBe(404);

    for (const bad of [
      {},
      { jti: 'a', sub: 'b' },
      { jti: 'a', before: 5 },
      { jti: 1 },
      { jti: 'a', extra: 1 },
      { jti: 'a', before: 'soon' },
    ]) {
      expect((await post(bad)).status, JSON.stringify(bad)).toBe(400);
    }
    expect((await fetch(`${base}/revocations`, { method: 'POST', headers: auth(), body: '{' })).status).toBe(400);
    expect((await fetch(`${base}/revocations`, { method: 'PUT', headers: auth() })).status).toBe(405);
    expect((await fetch(`${base}/other`, { headers: auth() })).status).toBe(404); // not ours: left to the caller
  });

  it('path predicate for the listener', () => {
    expect(isRevocationAdminPath('/revocations')).toBe(true);
    expect(isRevocationAdminPath('/revocations/jti%3Ax?y=1')).toBe(true);
    expect(isRevocationAdminPath('/revocationsX')).toBe(false);
    expect(isRevocationAdminPath('/metrics')).toBe(false);
  });

  it('without a configured token: loopback only', async () => {
    expect((await post({ jti: 'loop' }, { 'content-type': 'application/json' }, openBase)).status).toBe(201);
    // A non-loopback peer, driven through the handler directly.
    const req = Object.assign(Readable.from([]), {
      url: '/revocations',
      method: 'GET',
      headers: {},
      socket: { remoteAddress: '10.1.2.3' },
    }) as unknown as IncomingMessage;
    let status = 0;
    const res = {
      headersSent: false,
      destroyed: false,
      writeHead(s: number) {
        status = s;
        return this;
      },
      end() {},
    } as unknown as ServerResponse;
    expect(await handleRevocationAdmin(req, res, open)).toBe(true);
    expect(status).toBe(403);
  });
});

describe('bulwark revoke', () => {
  const quiet = () => {
    const out: string[] = [];
    const err: string[] = [];
    return { io: { stdout: (t: string) => void out.push(t), stderr: (t: string) => void err.push(t), env: {} }, out, err };
  };

  it('exit 0: revokes through the API (token from flag or env)', async () => {
    const q = quiet();
    expect(await revokeCli(['--jti', 'cli-1', '--admin', base, '--token', TOKEN], q.io)).toBe(0);
    expect(list.isRevokedClaims({ sub: 'z', jti: 'cli-1' }).revoked).toBe(true);
    expect(q.out.join('')).toContain('jti:cli-1');
    const env = quiet();
    expect(
      await revokeCli(['--sub', 'cli-user', '--before', 'now', '--admin', base], {
        ...env.io,
        env: { BULWARK_REVOCATION_TOKEN: TOKEN },
      }),
    ).toBe(0);
    expect(list.get('sub_before:cli-user')).toBeDefined();
    expect(await revokeCli(['--sid', 'cli-sess', '--admin', base, '--token', TOKEN], quiet().io)).toBe(0);
    expect(list.get('sid:cli-sess')).toBeDefined();
  });

  it('exit 1: refused (no / wrong token) or unreachable', async () => {
    const q = quiet();
    expect(await revokeCli(['--jti', 'cli-2', '--admin', base], q.io)).toBe(1);
    expect(q.err.join('')).toContain('401');
    expect(await revokeCli(['--jti', 'cli-2', '--admin', base, '--token', 'nope'], quiet().io)).toBe(1);
    expect(await revokeCli(['--jti', 'cli-2', '--admin', 'http://127.0.0.1:1', '--token', TOKEN], quiet().io)).toBe(1);
    expect(list.get('jti:cli-2')).toBeUndefined();
  });

  it('exit 2: usage', async () => {
    for (const argv of [
      [],
      ['--jti', 'a'],
      ['--jti', 'a', '--sub', 'b', '--admin', base],
      ['--jti', 'a', '--before', 'now', '--admin', base],
      ['--sub', 'a', '--before', 'tomorrow', '--admin', base],
      ['--jti', 'a', '--admin', 'ftp://x'],
      ['--jti', 'a', '--admin', base, '--bogus'],
      ['--jti', 'a', '--admin', base, 'extra'],
    ]) {
      const q = quiet();
      expect(await revokeCli(argv, q.io), argv.join(' ')).toBe(2);
      expect(q.err.join('')).toContain('usage: bulwark revoke');
    }
  });
});
