/**
 * `admin.explainHeader`: a client holding the token gets its request's decision path back
 * (`x-bulwark-explanation`), with the precise reason codes the problem body never shows;
 * nobody else does, and the token never reaches an upstream.
 */
import { SignJWT } from 'jose';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { startGateway, startUpstream, type TestGateway } from '../helpers/net.js';

const SECRET = 'explain-header-test-secret-0123456789abc';
const TOKEN = 'debug-token-0123456789abcdefghijklmnop';

const yaml = (explain = `explainHeader: { token: ${TOKEN} }`) => `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0, ${explain} }
upstreams: { app: { builtin: echo } }
authn:
  providers:
    corp: { issuer: https://id.test, audiences: [api], algorithms: [HS256], secret: ${SECRET}, rolesClaim: roles }
authz:
  roles: { reader: { permissions: [read] } }
  permissions: { read: { resources: ['/docs/**'], actions: [GET] } }
  policies: [{ id: docs, rules: [{ id: readers, effect: allow, permissions: [read] }] }]
routes:
  - { id: docs, match: { path: { prefix: /docs } }, upstream: app, auth: { provider: corp }, authz: docs }
`;

const mint = (roles: string[], subject = 'alice') =>
  new SignJWT({ roles })
    .setProtectedHeader({ alg: 'HS256', kid: 'k1' })
    .setIssuer('https://id.test')
    .setAudience('api')
    .setSubject(subject)
    .setExpirationTime('5m')
    .sign(new TextEncoder().encode(SECRET));

interface Explained {
  outcome: string;
  code: string | null;
  identity: { subject: string; kid: string | null } | null;
  steps: { stage: string; outcome: string; code: string; rule?: string }[];
}

describe('admin.explainHeader', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway(yaml());
  });
  afterAll(() => gw.close());

  const call = async (path: string, headers: Record<string, string>) => {
    const res = await request(`${gw.url}${path}`, { headers });
    const body = await res.body.text();
    const header = res.headers['x-bulwark-explanation'];
    return {
      status: res.statusCode,
      body,
      explained: typeof header === 'string' ? (JSON.parse(header) as Explained) : null,
      raw: header,
    };
  };

  it('a denial: the precise reason and every step, while the body stays generic', async () => {
    const token = await mint(['nobody']);
    const res = await call('/docs/1', { authorization: `Bearer ${token}`, 'x-bulwark-explain': TOKEN });
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body)).toMatchObject({ code: 'rbac.denied' });
    expect(res.explained).toMatchObject({
      outcome: 'deny',
      code: 'rbac.no_matching_rule',
      identity: { subject: 'alice', kid: 'k1' },
    });
    expect(res.explained!.steps.map((s) => `${s.stage}:${s.outcome}:${s.code}`)).toEqual([
      'authn:allow:jwt.valid',
      'authz:deny:rbac.no_matching_rule',
    ]);
    // An invalid token's precise reason too (the client is told only jwt.invalid).
    const expired = await call('/docs/1', { authorization: `Bearer ${token.slice(0, -3)}abc`, 'x-bulwark-explain': TOKEN });
    expect(JSON.parse(expired.body)).toMatchObject({ code: 'jwt.invalid' });
    expect(expired.explained).toMatchObject({ outcome: 'deny', code: 'jwt.signature_invalid' });
    // Refused before any stage: no route.
    expect((await call('/elsewhere', { 'x-bulwark-explain': TOKEN })).explained).toMatchObject({ code: 'route.not_found' });
  });

  it('an allowed request: the rule that allowed it; the token never reaches the upstream', async () => {
    const res = await call('/docs/1', { authorization: `Bearer ${await mint(['reader'])}`, 'x-bulwark-explain': TOKEN });
    expect(res.status).toBe(200);
    expect(res.explained).toMatchObject({ outcome: 'allow', code: null });
    expect(res.explained!.steps.find((s) => s.stage === 'authz')).toMatchObject({ outcome: 'allow', rule: 'readers' });
    // The echo upstream reflects what it received.
    expect(res.body).not.toContain(TOKEN);
    expect(res.body).not.toContain('x-bulwark-explain');
  });

  it('nothing without the token, or with a wrong one (which is not forwarded either)', async () => {
    const auth = { authorization: `Bearer ${await mint(['nobody'])}` };
    expect((await call('/docs/1', auth)).raw).toBeUndefined();
    for (const wrong of ['', 'x', TOKEN.slice(0, -1), `${TOKEN}x`, TOKEN.toUpperCase()]) {
      expect([wrong, (await call('/docs/1', { ...auth, 'x-bulwark-explain': wrong })).raw]).toEqual([wrong, undefined]);
    }
    const allowed = await call('/docs/1', { authorization: `Bearer ${await mint(['reader'])}`, 'x-bulwark-explain': 'guess' });
    expect(allowed.raw).toBeUndefined();
    expect(allowed.body).not.toContain('guess');
  });

  it('a value any client can send is escaped into a valid header (non-ASCII subject)', async () => {
    const res = await call('/docs/1', {
      authorization: `Bearer ${await mint(['nobody'], 'zoë 日本')}`,
      'x-bulwark-explain': TOKEN,
    });
    expect(res.raw).toMatch(/^[\x20-\x7e]+$/);
    expect(res.explained!.identity!.subject).toBe('zoë 日本');
  });

  it("an upstream's own x-bulwark-explanation never reaches a client, asked for or not", async () => {
    const forger = await startUpstream((_req, res) => {
      res.writeHead(200, { 'x-bulwark-explanation': '{"outcome":"allow","forged":true}', 'content-length': 2 });
      res.end('ok');
    });
    const forged = await startGateway(
      yaml().replace('upstreams: { app: { builtin: echo } }', `upstreams: { app: { endpoints: ['${forger.origin}'] } }`),
    );
    const plain = await startGateway(
      yaml('enabled: true').replace(
        'upstreams: { app: { builtin: echo } }',
        `upstreams: { app: { endpoints: ['${forger.origin}'] } }`,
      ),
    );
    try {
      const token = await mint(['reader']);
      for (const [gateway, headers] of [
        [forged, { authorization: `Bearer ${token}` }],
        [forged, { authorization: `Bearer ${token}`, 'x-bulwark-explain': TOKEN }],
        [plain, { authorization: `Bearer ${token}` }],
      ] as const) {
        const res = await request(`${gateway.url}/docs/1`, { headers });
        expect(res.statusCode).toBe(200);
        await res.body.dump();
        const header = res.headers['x-bulwark-explanation'];
        expect(header === undefined || !String(header).includes('forged')).toBe(true);
      }
    } finally {
      await forged.close();
      await plain.close();
      await forger.close();
    }
  });

  it('a token shorter than 32 characters, or one no header could carry, is refused at load', () => {
    for (const token of ['short', `"${'é'.repeat(40)}"`, `"${'a b'.repeat(20)}"`]) {
      try {
        parseConfig(yaml(`explainHeader: { token: ${token} }`), 'gw.yaml', { checks: CONFIG_CHECKS });
        expect.unreachable();
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        expect((error as ConfigError).issues.map((i) => i.path)).toContain('admin.explainHeader.token');
      }
    }
  });
});
