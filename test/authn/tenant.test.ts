/**
 * Multi-tenant authentication: each tenant its own identity provider. The request's tenant
 * (a path parameter, the host or a header) picks the one provider that may authenticate it,
 * so another tenant's identity provider cannot mint its way in, whatever its tokens claim.
 * Through a real gateway (statuses, challenges) and the library engine (decisions).
 */
import { SignJWT } from 'jose';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBulwark, type Bulwark } from '../../src/adapters/bulwark.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { startGateway, type TestGateway } from '../helpers/net.js';
import YAML from 'yaml';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { explain } from '../../src/cli/explain.js';
import { createLogger } from '../../src/telemetry/logger.js';

const SECRETS = {
  acme: 'acme-identity-provider-secret-0123456789',
  globex: 'globex-identity-provider-secret-012345678',
};
const ISSUERS = { acme: 'https://id.acme.test', globex: 'https://id.globex.test' };

function mint(idp: keyof typeof SECRETS, claims: Record<string, unknown> = {}, subject = 'alice'): Promise<string> {
  return new SignJWT({ roles: ['member'], ...claims })
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer(ISSUERS[idp])
    .setAudience('orders')
    .setSubject(subject)
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(new TextEncoder().encode(SECRETS[idp]));
}

const providers = `
authn:
  providers:
    acme-idp: { issuer: ${ISSUERS.acme}, audiences: [orders], algorithms: [HS256], secret: ${SECRETS.acme}, rolesClaim: roles, tenantClaim: tenant }
    globex-idp: { issuer: ${ISSUERS.globex}, audiences: [orders], algorithms: [HS256], secret: ${SECRETS.globex}, rolesClaim: roles, tenantClaim: tenant }
authz:
  roles: { member: { permissions: [orders] } }
  permissions: { orders: { resources: ['/tenants/{tenant}/**', '/orders/**', '/by-header/**'], actions: ['*'] } }
  policies:
    - id: orders
      tenantIsolation: { param: tenant, requireTenant: true }
      rules: [{ id: members, effect: allow, permissions: [orders] }]`;
const tenants = '{ acme: acme-idp, globex: globex-idp }';

const gatewayYaml = `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { builtin: echo } }
${providers}
routes:
  - id: by-path
    match: { path: { glob: '/tenants/{tenant}/**' } }
    upstream: app
    auth: { tenant: { from: { param: tenant }, providers: ${tenants} } }
    authz: orders
  - id: by-header
    match: { path: { prefix: /by-header } }
    upstream: app
    auth: { tenant: { from: { header: x-tenant-id }, providers: ${tenants} } }
    authz: orders
  - id: by-host
    match: { path: { prefix: /orders } }
    upstream: app
    auth: { tenant: { from: { host: '{tenant}.api.test' }, providers: ${tenants} } }
    authz: orders
`;

describe('tenant routes: each tenant its own provider', () => {
  let gw: TestGateway;
  let bulwark: Bulwark;
  beforeAll(async () => {
    gw = await startGateway(gatewayYaml);
    // The path route as a library (no listeners, no upstreams): its evaluations show the decisions.
    bulwark = await createBulwark({
      config: YAML.parse(`version: 1
${providers}
routes:
  - id: by-path
    match: { path: { glob: '/tenants/{tenant}/**' } }
    auth: { tenant: { from: { param: tenant }, providers: ${tenants} } }
    authz: orders
`) as Record<string, unknown>,
      logger: createLogger({ level: 'silent' }),
    });
  });
  afterAll(async () => {
    await gw.close();
    await bulwark.close();
  });

  const call = async (path: string, token: string | null, headers: Record<string, string> = {}) => {
    const res = await request(`${gw.url}${path}`, {
      headers: { ...headers, ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
    });
    const text = await res.body.text();
    return {
      status: res.statusCode,
      challenge: res.headers['www-authenticate'],
      body: JSON.parse(text) as Record<string, unknown>,
    };
  };

  /** The engine's verdict for a path and token: the denial's code and every authn decision code. */
  const decide = async (path: string, token: string | null) => {
    const { ctx, error } = await bulwark.evaluate({
      method: 'GET',
      url: path,
      headers: { host: 'api.test', ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
      rawHeaders: ['host', 'api.test', ...(token === null ? [] : ['authorization', `Bearer ${token}`])],
      httpVersionMajor: 1,
      httpVersionMinor: 1,
    });
    return {
      error: error?.code ?? null,
      authn: ctx.decisions.filter((d) => d.stage === 'authn').map((d) => `${d.outcome}:${d.code}`),
      tenant: ctx.identity?.tenant ?? null,
    };
  };

  it("a tenant's own provider: allowed, and the identity acts for that tenant", async () => {
    expect((await call('/tenants/acme/orders/1', await mint('acme', { tenant: 'acme' }))).status).toBe(200);
    expect((await call('/tenants/globex/orders/1', await mint('globex', { tenant: 'globex' }))).status).toBe(200);
    // A tenant's own provider need not put the tenant in its tokens: the request's tenant is the identity's.
    const untagged = await mint('acme');
    expect((await call('/tenants/acme/orders/1', untagged)).status).toBe(200);
    expect(await decide('/tenants/acme/orders/1', untagged)).toMatchObject({ error: null, tenant: 'acme' });
  });

  it("another tenant's identity provider cannot get in, whatever its token claims", async () => {
    // globex's IdP mints a token claiming tenant acme: only acme's provider may authenticate acme.
    const forged = await mint('globex', { tenant: 'acme' });
    const res = await call('/tenants/acme/orders/1', forged);
    expect(res.status).toBe(401);
    expect(res.challenge).toContain('error="invalid_token"');
    expect(res.body['code']).toBe('jwt.invalid');
    expect(await decide('/tenants/acme/orders/1', forged)).toMatchObject({ error: 'jwt.signature_invalid' });
    // A genuine acme token on globex's resources: globex's provider refuses it.
    expect((await call('/tenants/globex/orders/1', await mint('acme', { tenant: 'acme' }))).status).toBe(401);
  });

  it("a tenant's provider whose token names another tenant: 401 jwt.tenant_mismatch", async () => {
    const token = await mint('acme', { tenant: 'globex' });
    const res = await call('/tenants/acme/orders/1', token);
    expect(res.status).toBe(401);
    expect(res.challenge).toContain('error="invalid_token"');
    expect(await decide('/tenants/acme/orders/1', token)).toEqual({
      error: 'jwt.tenant_mismatch',
      authn: ['allow:jwt.valid', 'deny:jwt.tenant_mismatch'],
      tenant: null,
    });
  });

  it('an unknown tenant is a 404, token or not; prototype names are just unknown tenants', async () => {
    const token = await mint('acme', { tenant: 'acme' });
    for (const tenant of ['initech', '__proto__', 'constructor', 'hasOwnProperty', 'ACME']) {
      const res = await call(`/tenants/${tenant}/orders/1`, token);
      expect([tenant, res.status, res.body['code']]).toEqual([tenant, 404, 'route.not_found']);
    }
    expect(await decide('/tenants/initech/orders/1', null)).toMatchObject({
      error: 'route.not_found',
      authn: ['deny:authn.unknown_tenant'],
    });
  });

  it('no token on a known tenant: 401 jwt.missing with the bare challenge', async () => {
    const res = await call('/tenants/acme/orders/1', null);
    expect(res.status).toBe(401);
    expect(res.challenge).toBe('Bearer realm="bulwark"');
  });

  it('from a header, and from the host (one DNS label only)', async () => {
    const acme = await mint('acme', { tenant: 'acme' });
    expect((await call('/by-header/1', acme, { 'x-tenant-id': 'acme' })).status).toBe(200);
    expect((await call('/by-header/1', acme, { 'x-tenant-id': 'globex' })).status).toBe(401);
    expect((await call('/by-header/1', acme, { 'x-tenant-id': 'nope' })).status).toBe(404);
    expect((await call('/by-header/1', acme)).status).toBe(404);
    expect((await call('/orders/1', acme, { host: 'acme.api.test' })).status).toBe(200);
    expect((await call('/orders/1', acme, { host: 'globex.api.test' })).status).toBe(401);
    expect((await call('/orders/1', acme, { host: 'evil.acme.api.test' })).status).toBe(404);
    expect((await call('/orders/1', acme, { host: 'api.test' })).status).toBe(404);
    expect((await call('/orders/1', acme, { host: 'acme.api.test.evil' })).status).toBe(404);
  });
});

describe('a provider several tenants share', () => {
  it("its tokens must name their tenant: one without a tenant claim is nobody's", async () => {
    const shared = `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { builtin: echo } }
${providers}
routes:
  - id: shared
    match: { path: { glob: '/tenants/{tenant}/**' } }
    upstream: app
    auth: { tenant: { from: { param: tenant }, providers: { acme: acme-idp, initech: acme-idp, globex: globex-idp } } }
    authz: orders
`;
    const gw = await startGateway(shared);
    try {
      const call = async (path: string, token: string) => {
        const res = await request(`${gw.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
        await res.body.dump();
        return res.statusCode;
      };
      expect(await call('/tenants/acme/orders/1', await mint('acme', { tenant: 'acme' }))).toBe(200);
      expect(await call('/tenants/initech/orders/1', await mint('acme', { tenant: 'initech' }))).toBe(200);
      expect(await call('/tenants/initech/orders/1', await mint('acme', { tenant: 'acme' }))).toBe(401);
      const untagged = await mint('acme');
      expect(await call('/tenants/acme/orders/1', untagged)).toBe(401);
      expect(await call('/tenants/initech/orders/1', untagged)).toBe(401);
      // A provider of its own still vouches for its single tenant.
      expect(await call('/tenants/globex/orders/1', await mint('globex'))).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

describe('bulwark explain on a tenant route', () => {
  it('--claims: the request tenant is still checked against the trusted identity', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-tenant-'));
    const file = join(dir, 'gateway.yaml');
    writeFileSync(file, gatewayYaml);
    const run = async (path: string, claims: Record<string, unknown>) => {
      let text = '';
      const code = await explain(
        { configFile: file, method: 'GET', path, claims: { sub: 'alice', roles: ['member'], ...claims }, json: true },
        (t) => (text += t),
      );
      const steps = (JSON.parse(text) as { steps: { stage: string; code: string }[] }).steps;
      return [code, steps.map((s) => `${s.stage}:${s.code}`)];
    };
    try {
      expect(await run('/tenants/acme/orders/1', {})).toEqual([0, ['authz:rbac.allowed']]);
      expect((await run('/tenants/acme/orders/1', { tenant: 'globex' }))[1]).toContain('authn:jwt.tenant_mismatch');
      expect((await run('/tenants/initech/orders/1', {}))[1]).toContain('authn:authn.unknown_tenant');
      expect((await run('/tenants/initech/orders/1', {}))[0]).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('tenant requirement config', () => {
  const route = (auth: string, path = "{ glob: '/tenants/{tenant}/**' }") =>
    `version: 1
${providers}
routes:
  - { id: r, match: { path: ${path} }, auth: ${auth}, authz: orders }
`;
  const issues = (yaml: string) => {
    try {
      parseConfig(yaml, 't.yaml', { checks: CONFIG_CHECKS.slice(0, -1) });
      return [];
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      return error.issues.map((i) => [i.path, i.code]);
    }
  };

  it('refuses a parameter the route does not capture, an unknown provider, a host template without {tenant}', () => {
    expect(issues(route(`{ tenant: { from: { param: org }, providers: { acme: acme-idp } } }`))).toEqual([
      ['routes[0].auth.tenant.from.param', 'config.authn_tenant_param'],
    ]);
    expect(
      issues(route(`{ tenant: { from: { param: tenant }, providers: { acme: acme-idp } } }`, '{ prefix: /tenants }')),
    ).toEqual([['routes[0].auth.tenant.from.param', 'config.authn_tenant_param']]);
    expect(issues(route(`{ tenant: { from: { param: tenant }, providers: { acme: nobody } } }`))).toEqual([
      ['routes[0].auth.tenant.providers.acme', 'config.authn_unknown_provider'],
    ]);
    expect(issues(route(`{ tenant: { from: { host: 'api.test' }, providers: { acme: acme-idp } } }`)).length).toBeGreaterThan(0);
    expect(issues(route(`{ tenant: { from: { param: tenant }, providers: {} } }`)).length).toBeGreaterThan(0);
    expect(issues(route(`{ tenant: { from: { param: tenant }, providers: { acme: acme-idp } } }`))).toEqual([]);
    // A host is matched lower-case, one label: these tenants could never be reached.
    expect(
      issues(
        route(
          `{ tenant: { from: { host: '{tenant}.api.test' }, providers: { Initech: acme-idp, a.b: acme-idp, ok: acme-idp } } }`,
        ),
      ),
    ).toEqual([
      ['routes[0].auth.tenant.providers.Initech', 'config.authn_tenant_host'],
      ['routes[0].auth.tenant.providers["a.b"]', 'config.authn_tenant_host'],
    ]);
  });
});
