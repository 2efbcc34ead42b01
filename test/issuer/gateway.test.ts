import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { request } from 'undici';
import { decodeProtectedHeader } from 'jose';
import { parseConfig } from '../../src/config/load.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import type { Issuer } from '../../src/issuer/issuer.js';
import { issuerHandler } from '../../src/issuer/http.js';
import { startGateway, startUpstream, type TestGateway, type TestUpstream } from '../helpers/net.js';
import { OTHER_SECRET, SECRET, openIssuer, secretHashes, tempDir } from './helpers.js';

const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

async function gatewayYaml(dir: string, upstream: TestUpstream, jwksUrl?: string, extraIssuer = ''): Promise<string> {
  const [billing, reports] = await secretHashes();
  const authn =
    jwksUrl === undefined
      ? ''
      : `authn:
  providers:
    own:
      issuer: https://auth.test
      audiences: [https://ledger.test]
      algorithms: [ES256, EdDSA]
      typ: at+jwt
      jwksUrl: ${jwksUrl}
      jwks: { cacheTtlMs: 300, cooldownMs: 100 }
`;
  return `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
${authn}issuer:
  issuer: https://auth.test
  keys: { dir: '${join(dir, 'keys')}', rotateEverySec: 0, publishAheadSec: 2 }
  store: { sqlite: { path: '${join(dir, 'issuer.db')}' } }
  sessionAudiences: [https://ledger.test]
  browser: { allowedOrigins: ['https://app.test'] }
  clients:
    - { id: billing, secretHash: '${billing}', audiences: [https://ledger.test], scopes: [ledger:read, ledger:write] }
    - { id: reports, secretHash: '${reports}', audiences: [https://ledger.test], grants: [refresh_token] }
${extraIssuer}routes:
  - { id: issuer, match: { path: { prefix: /oauth } }, auth: { public: true }, issuer: true }
  - { id: discovery, match: { path: { prefix: /.well-known } }, auth: { public: true }, issuer: true }
${jwksUrl === undefined ? '' : '  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: own } }\n'}`;
}

async function post(url: string, body: string, headers: Record<string, string> = {}) {
  const res = await request(url, { method: 'POST', body, headers: { ...FORM, ...headers } });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    json: text === '' ? null : (JSON.parse(text) as Record<string, unknown>),
  };
}

describe('issuer served by the gateway', () => {
  let dir: string;
  let upstream: TestUpstream;
  let gw: TestGateway;
  let issuer: Issuer;

  beforeAll(async () => {
    dir = tempDir();
    upstream = await startUpstream();
    gw = await startGateway(await gatewayYaml(dir, upstream));
    // The provider needs the gateway's own port: a reload adds it, and the issuer carries over.
    const before = gw.gateway.current!.issuer;
    const loaded = parseConfig(await gatewayYaml(dir, upstream, `${gw.url}/oauth/jwks.json`), 'gw.yaml', {
      checks: CONFIG_CHECKS,
    });
    await gw.gateway.reload(loaded.config, loaded.hash);
    expect(gw.gateway.current!.issuer).toBe(before);
    issuer = gw.gateway.current!.issuer!.issuer;
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  it('serves discovery and the JWKS (with ETag revalidation)', async () => {
    for (const path of ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server']) {
      const res = await request(`${gw.url}${path}`);
      const doc = (await res.body.json()) as Record<string, unknown>;
      expect(res.statusCode).toBe(200);
      expect(doc['issuer']).toBe('https://auth.test');
      expect(doc['token_endpoint']).toBe('https://auth.test/oauth/token');
      expect(doc['jwks_uri']).toBe('https://auth.test/oauth/jwks.json');
      expect(doc['grant_types_supported']).toEqual(['client_credentials', 'refresh_token']);
    }
    const jwks = await request(`${gw.url}/oauth/jwks.json`);
    const body = (await jwks.body.json()) as { keys: { kid: string; d?: string }[] };
    expect(jwks.statusCode).toBe(200);
    expect(body.keys.length).toBe(2);
    expect(body.keys.every((k) => k.d === undefined)).toBe(true);
    const etag = jwks.headers['etag'] as string;
    const again = await request(`${gw.url}/oauth/jwks.json`, { headers: { 'if-none-match': etag } });
    await again.body.dump();
    expect(again.statusCode).toBe(304);
    const wrongMethod = await request(`${gw.url}/oauth/jwks.json`, { method: 'POST' });
    expect(wrongMethod.statusCode).toBe(405);
    expect(wrongMethod.headers['allow']).toBe('GET, HEAD');
    await wrongMethod.body.dump();
  });

  it('client_credentials over HTTP (Basic and client_secret_post), and the token opens a protected route', async () => {
    const viaBasic = await post(`${gw.url}/oauth/token`, 'grant_type=client_credentials&scope=ledger%3Aread', {
      authorization: basic('billing', SECRET),
    });
    expect(viaBasic.status).toBe(200);
    expect(viaBasic.headers['cache-control']).toBe('no-store');
    expect(viaBasic.json!['token_type']).toBe('Bearer');
    expect(viaBasic.json!['scope']).toBe('ledger:read');
    expect(viaBasic.json!['expires_in']).toBe(600);
    const viaPost = await post(
      `${gw.url}/oauth/token`,
      `grant_type=client_credentials&client_id=billing&client_secret=${encodeURIComponent(SECRET)}`,
    );
    expect(viaPost.status).toBe(200);
    const api = await request(`${gw.url}/api/balance`, { headers: { authorization: `Bearer ${viaPost.json!['access_token']}` } });
    await api.body.dump();
    expect(api.statusCode).toBe(200);
    const anonymous = await request(`${gw.url}/api/balance`);
    await anonymous.body.dump();
    expect(anonymous.statusCode).toBe(401);
  });

  it('every malformed or refused token request gets its code, the OAuth error, and no token', async () => {
    const url = `${gw.url}/oauth/token`;
    const auth = { authorization: basic('billing', SECRET) };
    const cases: [string, Record<string, string>, number, string, string][] = [
      [
        'grant_type=client_credentials',
        { authorization: basic('billing', OTHER_SECRET) },
        401,
        'issuer.invalid_client',
        'invalid_client',
      ],
      [
        'grant_type=client_credentials',
        { authorization: basic('nobody', SECRET) },
        401,
        'issuer.invalid_client',
        'invalid_client',
      ],
      ['grant_type=client_credentials', {}, 401, 'issuer.invalid_client', 'invalid_client'],
      [
        'grant_type=client_credentials',
        { authorization: basic('reports', OTHER_SECRET) },
        400,
        'issuer.unauthorized_client',
        'unauthorized_client',
      ],
      ['grant_type=client_credentials&scope=ledger%3Aadmin', auth, 400, 'issuer.invalid_scope', 'invalid_scope'],
      ['grant_type=client_credentials&audience=https%3A%2F%2Fevil.test', auth, 400, 'issuer.invalid_target', 'invalid_target'],
      ['grant_type=password&username=a&password=b', auth, 400, 'issuer.unsupported_grant_type', 'unsupported_grant_type'],
      ['scope=ledger%3Aread', auth, 400, 'issuer.invalid_request', 'invalid_request'],
      ['grant_type=client_credentials&grant_type=client_credentials', auth, 400, 'issuer.invalid_request', 'invalid_request'],
      [`grant_type=client_credentials&client_secret=${SECRET}`, auth, 400, 'issuer.invalid_request', 'invalid_request'],
      ['grant_type=client_credentials', { authorization: 'Bearer abc' }, 400, 'issuer.invalid_request', 'invalid_request'],
      ['grant_type=refresh_token', {}, 400, 'issuer.invalid_request', 'invalid_request'],
      ['grant_type=refresh_token&refresh_token=brt_nope', {}, 400, 'issuer.invalid_grant', 'invalid_grant'],
    ];
    for (const [body, headers, status, code, error] of cases) {
      const res = await post(url, body, headers);
      expect({ body, status: res.status, code: res.json!['code'], error: res.json!['error'] }).toEqual({
        body,
        status,
        code,
        error,
      });
      expect(res.headers['content-type']).toBe('application/problem+json');
      expect(res.json!['access_token']).toBeUndefined();
      if (status === 401) expect(res.headers['www-authenticate']).toMatch(/^Basic /);
    }
    const json = await request(url, {
      method: 'POST',
      body: '{"grant_type":"client_credentials"}',
      headers: { 'content-type': 'application/json', ...auth },
    });
    expect(json.statusCode).toBe(400);
    expect(((await json.body.json()) as { code: string }).code).toBe('issuer.invalid_request');
    const huge = await post(url, `grant_type=client_credentials&pad=${'x'.repeat(20_000)}`, auth);
    expect(huge.status).toBe(413);
    const get = await request(url);
    expect(get.statusCode).toBe(405);
    expect(get.headers['allow']).toBe('POST');
    await get.body.dump();
  });

  it('browser sessions: cookie attributes, CSRF and origin checks, rotation, reuse and logout', async () => {
    const session = await issuer.mintSession({ subject: 'alice', claims: { roles: ['teller'] } });
    const cookies = issuer.sessionCookies(session);
    const refreshCookie = cookies.find((c) => c.startsWith('bulwark_refresh='))!;
    expect(refreshCookie).toContain('HttpOnly');
    expect(refreshCookie).toContain('Secure');
    expect(refreshCookie).toContain('SameSite=Strict');
    expect(refreshCookie).toContain('Path=/oauth;');
    const csrfCookie = cookies.find((c) => c.startsWith('bulwark_csrf='))!;
    expect(csrfCookie).not.toContain('HttpOnly');
    const csrf = csrfCookie.slice('bulwark_csrf='.length, csrfCookie.indexOf(';'));
    const jar = (refresh: string, token = csrf) => `bulwark_refresh=${refresh}; bulwark_csrf=${token}`;
    const refresh = (cookie: string, headers: Record<string, string> = {}) =>
      post(`${gw.url}/oauth/refresh`, '', { cookie, ...headers });

    expect((await refresh(jar(session.refreshToken))).json!['code']).toBe('issuer.csrf');
    expect((await refresh(jar(session.refreshToken), { 'x-csrf-token': 'wrong-but-long-enough-0000' })).status).toBe(403);
    expect((await refresh(jar(session.refreshToken), { 'x-csrf-token': csrf, origin: 'https://evil.test' })).json!['code']).toBe(
      'issuer.csrf',
    );
    expect((await refresh(jar(session.refreshToken), { 'x-csrf-token': csrf, 'sec-fetch-site': 'cross-site' })).status).toBe(403);

    const ok = await refresh(jar(session.refreshToken), { 'x-csrf-token': csrf, origin: 'https://app.test' });
    expect(ok.status).toBe(200);
    expect(ok.json!['refresh_token']).toBeUndefined();
    const api = await request(`${gw.url}/api/me`, { headers: { authorization: `Bearer ${ok.json!['access_token']}` } });
    await api.body.dump();
    expect(api.statusCode).toBe(200);
    const rotated = (ok.headers['set-cookie'] as string[]).find((c) => c.startsWith('bulwark_refresh='))!;
    const next = rotated.slice('bulwark_refresh='.length, rotated.indexOf(';'));
    expect(next).not.toBe(session.refreshToken);

    // Replaying the spent cookie: invalid_grant, cookies cleared, and the whole session is gone.
    const replay = await refresh(jar(session.refreshToken), { 'x-csrf-token': csrf });
    expect(replay.status).toBe(400);
    expect(replay.json!['code']).toBe('issuer.invalid_grant');
    expect(
      (replay.headers['set-cookie'] as string[]).some((c) => c.startsWith('bulwark_refresh=;') && c.includes('Max-Age=0')),
    ).toBe(true);
    expect((await refresh(jar(next), { 'x-csrf-token': csrf })).json!['code']).toBe('issuer.invalid_grant');

    const second = await issuer.mintSession({ subject: 'alice' });
    const out = await post(`${gw.url}/oauth/logout`, '', { cookie: jar(second.refreshToken), 'x-csrf-token': csrf });
    expect(out.status).toBe(204);
    expect((await refresh(jar(second.refreshToken), { 'x-csrf-token': csrf })).json!['code']).toBe('issuer.invalid_grant');
  });

  it('refresh_token grant over HTTP rotates; RFC 7009 revocation answers 200 and ends the session', async () => {
    const session = await issuer.mintSession({ subject: 'bob' });
    const rotated = await post(`${gw.url}/oauth/token`, `grant_type=refresh_token&refresh_token=${session.refreshToken}`);
    expect(rotated.status).toBe(200);
    const next = rotated.json!['refresh_token'] as string;
    expect(next).toMatch(/^brt_/);
    const unknown = await post(`${gw.url}/oauth/revoke`, `token=brt_${'x'.repeat(43)}`);
    expect(unknown.status).toBe(200);
    const revoked = await post(`${gw.url}/oauth/revoke`, `token=${next}&token_type_hint=refresh_token`);
    expect(revoked.status).toBe(200);
    const after = await post(`${gw.url}/oauth/token`, `grant_type=refresh_token&refresh_token=${next}`);
    expect(after.json!['code']).toBe('issuer.invalid_grant');
  });
});

describe('key rotation', () => {
  it('under load through the gateway: zero failed requests, both keys seen', { timeout: 60_000 }, async () => {
    const dir = tempDir();
    const upstream = await startUpstream();
    const gw = await startGateway(await gatewayYaml(dir, upstream));
    try {
      const loaded = parseConfig(await gatewayYaml(dir, upstream, `${gw.url}/oauth/jwks.json`), 'gw.yaml', {
        checks: CONFIG_CHECKS,
      });
      await gw.gateway.reload(loaded.config, loaded.hash);
      const issuer = gw.gateway.current!.issuer!.issuer;
      const oldKid = issuer.keys.signer('ES256').kid;
      const statuses = new Map<number, number>();
      const kids = new Set<string>();
      let rotatedAt = Infinity;
      let newKid = '';
      const deadline = () => Date.now() > rotatedAt + 3_500;
      const worker = async () => {
        while (!deadline()) {
          const token = await post(`${gw.url}/oauth/token`, 'grant_type=client_credentials', {
            authorization: basic('billing', SECRET),
          });
          const access = token.json!['access_token'] as string;
          if (token.status !== 200) {
            statuses.set(token.status, (statuses.get(token.status) ?? 0) + 1);
            continue;
          }
          kids.add(decodeProtectedHeader(access).kid!);
          const res = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${access}` } });
          await res.body.dump();
          statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        }
      };
      const rotation = (async () => {
        await new Promise((r) => setTimeout(r, 300));
        const created = await issuer.keys.rotate();
        newKid = created.find((k) => k.alg === 'ES256')!.kid;
        rotatedAt = Date.now();
      })();
      await Promise.all([worker(), worker(), worker(), worker(), rotation]);
      expect([...statuses.keys()]).toEqual([200]);
      expect(kids.has(oldKid)).toBe(true);
      expect(kids.has(newKid)).toBe(true);
      expect(issuer.keys.signer('ES256').kid).toBe(newKid);
    } finally {
      await gw.close();
      await upstream.close();
    }
  });

  it('a token signed by a retired key is refused once its key is unpublished', { timeout: 30_000 }, async () => {
    // The issuer runs on its own clock, moved forward past the retired key's last token lifetime.
    let offset = 0;
    const issuer = await openIssuer(tempDir(), { accessTokenTtlSec: 600 }, { now: () => Date.now() + offset });
    const server: Server = createServer(issuerHandler(issuer));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/oauth/jwks.json`;
    const upstream = await startUpstream();
    const gw = await startGateway(`version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
authn:
  providers:
    own: { issuer: https://auth.test, audiences: [https://ledger.test], algorithms: [ES256], jwksUrl: '${jwksUrl}', jwks: { cacheTtlMs: 100, cooldownMs: 50 } }
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: own } }
`);
    const call = async (token: string) => {
      const res = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${token}` } });
      const body = res.statusCode === 200 ? null : ((await res.body.json()) as { code: string });
      if (body === null) await res.body.dump();
      return { status: res.statusCode, code: body?.code };
    };
    try {
      const old = (await issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET })).accessToken;
      expect((await call(old)).status).toBe(200);
      await issuer.keys.rotate();
      offset += 2_500; // past publishAheadSec: the new key signs, the old one is retired but published
      await issuer.keys.tick();
      const fresh = (await issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET })).accessToken;
      expect(decodeProtectedHeader(fresh).kid).not.toBe(decodeProtectedHeader(old).kid);
      await new Promise((r) => setTimeout(r, 250));
      expect((await call(old)).status).toBe(200);
      expect((await call(fresh)).status).toBe(200);
      // Past the longest lifetime of a token the old key signed (600 s) plus the ring's skew (60 s).
      offset += 600_000 + 60_000 + 5_000;
      await issuer.keys.tick();
      expect(issuer.keys.jwks().keys.map((k) => k.kid)).not.toContain(decodeProtectedHeader(old).kid);
      await new Promise((r) => setTimeout(r, 250));
      // Still unexpired by the gateway's clock, but its key is gone: refused.
      expect(await call(old)).toEqual({ status: 401, code: 'jwt.invalid' });
      expect((await call(fresh)).status).toBe(200);
    } finally {
      await gw.close();
      await upstream.close();
      server.close();
      await issuer.close();
    }
  });
});

describe('encrypted tokens', () => {
  it(
    'a client with encrypt: true gets a JWE; the gateway unwraps it with its key and verifies the inner signature',
    { timeout: 30_000 },
    async () => {
      const dir = tempDir();
      const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      writeFileSync(join(dir, 'gateway-enc.pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
      writeFileSync(join(dir, 'gateway-enc.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
      const [hash] = await secretHashes();
      const issuer = await openIssuer(dir, {
        encryption: { key: join(dir, 'gateway-enc.pub.pem') },
        clients: [
          { id: 'secretive', secretHash: hash, audiences: ['https://ledger.test'], encrypt: true },
          { id: 'plain', secretHash: hash, audiences: ['https://ledger.test'] },
        ],
      });
      const server: Server = createServer(issuerHandler(issuer));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      const upstream = await startUpstream();
      const gw = await startGateway(`version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
authn:
  providers:
    own:
      issuer: https://auth.test
      audiences: [https://ledger.test]
      algorithms: [ES256]
      jwksUrl: 'http://127.0.0.1:${(server.address() as AddressInfo).port}/oauth/jwks.json'
      decrypt: { keyFile: '${join(dir, 'gateway-enc.pem')}' }
      forward: { claims: { sub: x-caller } }
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { provider: own } }
`);
      try {
        const sealed = (await issuer.clientCredentials({ clientId: 'secretive', clientSecret: SECRET })).accessToken;
        expect(sealed.split('.').length).toBe(5);
        const header = decodeProtectedHeader(sealed);
        expect(header).toMatchObject({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT' });
        const res = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${sealed}` } });
        expect(res.statusCode).toBe(200);
        expect(((await res.body.json()) as { headers: Record<string, string> }).headers['x-caller']).toBe('secretive');
        const plain = (await issuer.clientCredentials({ clientId: 'plain', clientSecret: SECRET })).accessToken;
        expect(plain.split('.').length).toBe(3);
        const ok = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${plain}` } });
        await ok.body.dump();
        expect(ok.statusCode).toBe(200);
        // One flipped byte of ciphertext: refused.
        const parts = sealed.split('.');
        const ct = Buffer.from(parts[3]!, 'base64url');
        ct[0] = ct[0]! ^ 1;
        parts[3] = ct.toString('base64url');
        const tampered = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${parts.join('.')}` } });
        expect(tampered.statusCode).toBe(401);
        expect(((await tampered.body.json()) as { code: string }).code).toBe('jwt.invalid');
      } finally {
        await gw.close();
        await upstream.close();
        server.close();
        await issuer.close();
      }
    },
  );
});
