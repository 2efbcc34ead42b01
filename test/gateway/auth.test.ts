import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportPKCS8, generateKeyPair, type CryptoKey } from 'jose';
import { generateKeys, mintToken, writeKeys } from '../../src/cli/dev-tokens.js';
import { encryptToken } from '../../src/authn/jwe.js';
import {
  rawRequest,
  startGateway,
  startUpstream,
  statusOf,
  bodyOf,
  type TestGateway,
  type TestUpstream,
} from '../helpers/net.js';

/** Authentication and authorization through the real gateway, over real sockets. */
describe('gateway with JWT authn + RBAC', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let keyFile: string;
  const token = (opts: Parameters<typeof mintToken>[0] extends infer T ? Partial<T> : never) =>
    mintToken({ keyFile, issuer: 'https://id.test', audience: ['orders-api'], ...opts } as Parameters<typeof mintToken>[0]);

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-auth-'));
    const written = writeKeys(dir, await generateKeys('ES256', 'k1'));
    keyFile = written.privateKey;
    upstream = await startUpstream();
    gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
authn:
  providers:
    idp:
      issuer: https://id.test
      audiences: [orders-api]
      algorithms: [ES256]
      jwksFile: '${written.jwks}'
      rolesClaim: roles
      tenantClaim: tenant
      forward: { claims: { sub: x-user-id, roles: x-user-roles } }
authz:
  roles:
    viewer: { permissions: [read-orders] }
    admin: { inherits: [viewer], permissions: [write-orders] }
  permissions:
    read-orders: { resources: ['/t/{tenant}/orders/**'], actions: [GET] }
    write-orders: { resources: ['/t/{tenant}/orders/**'], actions: [POST, DELETE] }
  policies:
    - id: orders
      rules:
        - { id: allow-read, effect: allow, permissions: [read-orders] }
        - { id: allow-write, effect: allow, permissions: [write-orders] }
        - { id: deny-admin-area, effect: deny, roles: ['*'], resources: ['/t/{tenant}/orders/admin/**'], actions: ['*'] }
routes:
  - id: orders
    match: { path: { glob: '/t/{tenant}/orders/**' } }
    upstream: app
    auth: { provider: idp }
    authz: orders
  - id: public
    match: { path: { prefix: /public } }
    upstream: app
    auth: { public: true }
`);
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  const call = async (path: string, init: { method?: string; headers?: Record<string, string> } = {}) => {
    const res = await request(gw.url + path, { method: (init.method ?? 'GET') as 'GET', headers: init.headers });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  };

  it('401 without a token, with an RFC 6750 challenge and a problem body', async () => {
    const res = await call('/t/acme/orders/1');
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer realm="bulwark"$/);
    expect(res.body['code']).toBe('jwt.missing');
    expect(upstream.requests.length).toBe(0);
  });

  it('401 invalid_token for a bad token, never telling the client why', async () => {
    for (const bad of [
      'garbage',
      (await token({ subject: 'a', ttlSeconds: 1 })).slice(0, -4) + 'AAAA',
      await token({ subject: 'a', issuer: 'https://evil' }),
    ]) {
      const res = await call('/t/acme/orders/1', { headers: { authorization: `Bearer ${bad}` } });
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
      expect(res.body['code']).toBe('jwt.invalid');
      expect(JSON.stringify(res.body)).not.toMatch(/issuer|signature|expired|malformed/i);
    }
  });

  it('allows a viewer to read its own tenant, forwards identity headers and strips client copies', async () => {
    const t = await token({ subject: 'alice', roles: ['viewer'], tenant: 'acme' });
    const res = await call('/t/acme/orders/7', {
      headers: { authorization: `Bearer ${t}`, 'x-user-id': 'mallory', 'X-User-Roles': 'admin' },
    });
    expect(res.status).toBe(200);
    const seen = res.body['headers'] as Record<string, string>;
    expect(seen['x-user-id']).toBe('alice');
    expect(seen['x-user-roles']).toBe('viewer');
  });

  it('strips underscore spellings of identity and forwarding headers (one variable to a CGI-style upstream)', async () => {
    const t = await token({ subject: 'alice', roles: ['viewer'], tenant: 'acme' });
    const res = await call('/t/acme/orders/7', {
      headers: {
        authorization: `Bearer ${t}`,
        x_user_id: 'mallory',
        'X_User-Roles': 'admin',
        x_forwarded_for: '6.6.6.6',
        x_real_ip: '6.6.6.6',
        x_custom: 'kept',
      },
    });
    expect(res.status).toBe(200);
    const seen = res.body['headers'] as Record<string, string>;
    expect(seen['x-user-id']).toBe('alice');
    expect(seen['x-user-roles']).toBe('viewer');
    for (const name of ['x_user_id', 'x_user-roles', 'x_forwarded_for', 'x_real_ip']) expect(seen[name], name).toBeUndefined();
    // Underscore names the gateway does not own pass.
    expect(seen['x_custom']).toBe('kept');
    const pub = await call('/public/x', { headers: { x_user_id: 'mallory' } });
    expect((pub.body['headers'] as Record<string, string>)['x_user_id']).toBeUndefined();
  });

  it('strips client-sent identity headers on public routes too', async () => {
    const res = await call('/public/x', { headers: { 'x-user-id': 'mallory' } });
    expect(res.status).toBe(200);
    expect((res.body['headers'] as Record<string, string>)['x-user-id']).toBeUndefined();
  });

  it('403 for a missing permission, another tenant, and an explicit deny', async () => {
    const viewer = await token({ subject: 'alice', roles: ['viewer'], tenant: 'acme' });
    const admin = await token({ subject: 'root', roles: ['admin'], tenant: 'acme' });
    const write = await call('/t/acme/orders/7', { method: 'DELETE', headers: { authorization: `Bearer ${viewer}` } });
    expect(write.status).toBe(403);
    expect(write.body['code']).toBe('rbac.denied');
    const other = await call('/t/globex/orders/7', { headers: { authorization: `Bearer ${viewer}` } });
    expect(other.status).toBe(403);
    const denied = await call('/t/acme/orders/admin/x', { headers: { authorization: `Bearer ${admin}` } });
    expect(denied.status).toBe(403);
    expect((await call('/t/acme/orders/7', { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } })).status).toBe(
      200,
    );
  });

  it('path tricks cannot reach the denied area: canonicalized first, then matched', async () => {
    const admin = await token({ subject: 'root', roles: ['admin'], tenant: 'acme' });
    const auth = `Bearer ${admin}`;
    for (const path of [
      '/t/acme/orders/x/../admin/y',
      '/t/acme/orders/%61dmin/y',
      '/t/acme/orders//admin/y',
      '/t/acme/orders/./admin/y',
    ]) {
      expect((await call(path, { headers: { authorization: auth } })).status, path).toBe(403);
    }
    for (const path of ['/t/acme/orders/admin%2Fy', '/t/acme/orders/admin%5Cy', '/t/acme/orders/admin;x/y']) {
      expect((await call(path, { headers: { authorization: auth } })).status, path).toBe(400);
    }
  });

  it('400 for two Authorization headers', async () => {
    const t = await token({ subject: 'alice', roles: ['viewer'], tenant: 'acme' });
    const raw = await rawRequest(
      gw.port,
      `GET /t/acme/orders/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${t}\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n`,
    );
    expect(statusOf(raw)).toBe(400);
    expect(JSON.parse(bodyOf(raw)).code).toBe('request.duplicate_authorization');
  });
});

/** Encrypted tokens and query-string tokens through the real gateway. */
describe('gateway with encrypted tokens and query tokens', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let keyFile: string;
  let encryptTo: CryptoKey;
  const signed = (subject: string) =>
    mintToken({ keyFile, issuer: 'https://id.test', audience: ['orders-api'], subject } as Parameters<typeof mintToken>[0]);
  const sealed = async (subject: string) =>
    encryptToken(await signed(subject), encryptTo, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-jwe-'));
    const written = writeKeys(dir, await generateKeys('ES256', 'k1'));
    keyFile = written.privateKey;
    const gatewayKey = await generateKeyPair('ECDH-ES+A256KW', { extractable: true });
    encryptTo = gatewayKey.publicKey;
    writeFileSync(join(dir, 'gateway-enc.pem'), await exportPKCS8(gatewayKey.privateKey));
    upstream = await startUpstream();
    const provider = `
      issuer: https://id.test
      audiences: [orders-api]
      algorithms: [ES256]
      jwksFile: '${written.jwks}'
      forward: { claims: { sub: x-user-id } }`;
    gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
authn:
  providers:
    enc:${provider}
      decrypt: { keyFile: '${join(dir, 'gateway-enc.pem')}' }
    qs:${provider}
      token: { query: access_token }
routes:
  - { id: enc, match: { path: { prefix: /enc } }, upstream: app, auth: { provider: enc } }
  - { id: qs, match: { path: { prefix: /qs } }, upstream: app, auth: { provider: qs } }
`);
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  const call = async (path: string, headers: Record<string, string> = {}) => {
    const res = await request(gw.url + path, { headers });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, body: JSON.parse(text) as Record<string, unknown> };
  };

  it('a JWE token is unwrapped and verified; the upstream gets the identity headers', async () => {
    const res = await call('/enc/1', { authorization: `Bearer ${await sealed('alice')}`, 'x-user-id': 'mallory' });
    expect(res.status).toBe(200);
    expect((res.body['headers'] as Record<string, string>)['x-user-id']).toBe('alice');
  });

  it('a tampered JWE gets a 401 problem with an RFC 6750 challenge, and never reaches the upstream', async () => {
    const parts = (await sealed('alice')).split('.');
    const ciphertext = Buffer.from(parts[3]!, 'base64url');
    ciphertext[0] = ciphertext[0]! ^ 0x01;
    parts[3] = ciphertext.toString('base64url');
    const before = upstream.requests.length;
    const res = await call('/enc/1', { authorization: `Bearer ${parts.join('.')}` });
    expect(res.status).toBe(401);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="bulwark", error="invalid_token"');
    expect(res.body['code']).toBe('jwt.invalid');
    expect(upstream.requests.length).toBe(before);
  });

  it('a query token is removed from the forwarded target, other parameters kept in order', async () => {
    const token = await signed('alice');
    const res = await call(`/qs/x?a=1&access_token=${token}&b=2`);
    expect(res.status).toBe(200);
    expect(res.body['url']).toBe('/qs/x?a=1&b=2');
    expect((res.body['headers'] as Record<string, string>)['x-user-id']).toBe('alice');
  });

  it('percent-encoded spellings of the parameter name are removed too', async () => {
    const token = await signed('alice');
    for (const name of ['access%5Ftoken', '%61ccess_token', '%61%63%63%65%73%73%5F%74%6F%6B%65%6E']) {
      const res = await call(`/qs/x?a=%2F1&${name}=${token}&b=x+y`);
      expect(res.status, name).toBe(200);
      expect(res.body['url'], name).toBe('/qs/x?a=%2F1&b=x+y');
    }
    const only = await call(`/qs/x?access_token=${token}`);
    expect(only.body['url']).toBe('/qs/x');
  });

  it('a route whose provider reads a header forwards the query untouched', async () => {
    const res = await call('/enc/x?a=1&access_token=XYZ&b=2', { authorization: `Bearer ${await sealed('alice')}` });
    expect(res.status).toBe(200);
    expect(res.body['url']).toBe('/enc/x?a=1&access_token=XYZ&b=2');
  });
});
