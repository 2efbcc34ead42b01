/**
 * Claim rules with an injected clock: skew, max age, typ, required claims, subject
 * patterns, scopes, roles, tenant, and the identity headers sent upstream.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { compileAuthn, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
import { compileSubjectPattern, headerValueOf, subjectPatternProblem } from '../../src/authn/claims.js';
import type { RequestContext } from '../../src/core/context.js';
import { AUDIENCE, authnConfig, bearer, ISSUER, makeKey, mint, requestContext, runStage, type TestKey } from './helpers.js';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0)) fn();
});

const T0 = 1_900_000_000; // a fixed "now", epoch seconds

interface Harness {
  key: TestKey;
  authn: CompiledAuthn;
  clock: { now: number };
  run(token: string, headers?: Record<string, string>): Promise<{ code: string; ctx: RequestContext }>;
  token(claims?: Record<string, unknown>, header?: Record<string, unknown>): Promise<string>;
}

async function harness(provider: Record<string, unknown> = {}, more: Record<string, unknown> = {}): Promise<Harness> {
  const key = await makeKey('k1');
  const clock = { now: T0 * 1000 };
  const authn = compileAuthn(
    authnConfig({
      providers: {
        main: { issuer: ISSUER, audiences: [AUDIENCE], publicKeys: [{ key: key.pem, kid: 'k1' }], ...provider },
        ...more,
      },
    }),
    { now: () => clock.now },
  );
  cleanup.push(() => authn.close());
  await authn.ready();
  const stage = createAuthnStage({ provider: 'main' }, authn)!;
  return {
    key,
    authn,
    clock,
    async run(token, headers = {}) {
      const ctx = requestContext({ ...bearer(token), ...headers });
      const decision = await runStage(stage, ctx);
      return { code: decision === null ? 'allow' : decision.code, ctx };
    },
    token: (claims = {}, header = {}) => mint(key, { iat: T0, exp: T0 + 600, ...claims }, header),
  };
}

describe('time claims and clock skew', () => {
  it('default skew is 60 s for exp and nbf', async () => {
    const h = await harness();
    expect((await h.run(await h.token({ exp: T0 - 59 }))).code).toBe('allow');
    expect((await h.run(await h.token({ exp: T0 - 60 }))).code).toBe('jwt.expired');
    expect((await h.run(await h.token({ nbf: T0 + 60 }))).code).toBe('allow');
    expect((await h.run(await h.token({ nbf: T0 + 61 }))).code).toBe('jwt.not_yet_valid');
  });

  it('skew 0 is exact', async () => {
    const h = await harness({ clockSkewSec: 0 });
    expect((await h.run(await h.token({ exp: T0 + 1 }))).code).toBe('allow');
    expect((await h.run(await h.token({ exp: T0 }))).code).toBe('jwt.expired');
    expect((await h.run(await h.token({ nbf: T0 + 1 }))).code).toBe('jwt.not_yet_valid');
  });

  it('a cache hit re-checks exp against the clock', async () => {
    const h = await harness({ clockSkewSec: 10 });
    const token = await h.token({ exp: T0 + 100 });
    expect((await h.run(token)).code).toBe('allow');
    h.clock.now = (T0 + 105) * 1000;
    expect((await h.run(token)).code).toBe('allow'); // within skew, from the cache
    expect(h.authn.cache.hits).toBe(1);
    h.clock.now = (T0 + 110) * 1000;
    expect((await h.run(token)).code).toBe('jwt.expired');
    expect(h.authn.cache.size).toBe(0);
  });

  it('requireExp: false accepts tokens without exp; the cache TTL still bounds them', async () => {
    const h = await harness({ requireExp: false }, {});
    const token = await h.token({ exp: undefined });
    expect((await h.run(token)).code).toBe('allow');
    h.clock.now += 299_000;
    expect((await h.run(token)).ctx.decisions.at(-1)?.detail).toMatchObject({ cached: true });
    h.clock.now += 2_000;
    expect((await h.run(token)).ctx.decisions.at(-1)?.detail).toMatchObject({ cached: false });
  });
});

describe('max token age', () => {
  it('iat within maxAge passes; older is jwt.too_old; missing is jwt.claim_missing; future is jwt.not_yet_valid', async () => {
    const h = await harness({ maxAgeSec: 300 });
    expect((await h.run(await h.token({ iat: T0 - 200 }))).code).toBe('allow');
    expect((await h.run(await h.token({ iat: T0 - 400 }))).code).toBe('jwt.too_old');
    expect((await h.run(await h.token({ iat: undefined }))).code).toBe('jwt.claim_missing');
    expect((await h.run(await h.token({ iat: T0 + 120 }))).code).toBe('jwt.not_yet_valid');
  });

  it('a cached token ages out', async () => {
    const h = await harness({ maxAgeSec: 300, clockSkewSec: 0 });
    const token = await h.token({ iat: T0 - 100 });
    expect((await h.run(token)).code).toBe('allow');
    h.clock.now = (T0 + 150) * 1000;
    expect((await h.run(token)).code).toBe('allow');
    h.clock.now = (T0 + 201) * 1000;
    expect((await h.run(token)).code).toBe('jwt.too_old');
  });
});

describe('typ', () => {
  it('compares as a media type', async () => {
    const h = await harness({ typ: 'at+jwt' });
    expect((await h.run(await h.token({}, { typ: 'at+jwt' }))).code).toBe('allow');
    expect((await h.run(await h.token({}, { typ: 'application/at+JWT' }))).code).toBe('allow');
    expect((await h.run(await h.token({}, { typ: 'JWT' }))).code).toBe('jwt.typ_mismatch');
    expect((await h.run(await h.token({}, {}))).code).toBe('jwt.typ_mismatch');
  });
});

describe('required claims', () => {
  it('value, list of values, nested path, array claims', async () => {
    const h = await harness({
      requiredClaims: { tier: ['gold', 'silver'], email_verified: true, 'realm_access.level': 3, groups: 'staff' },
    });
    const ok = { tier: 'gold', email_verified: true, realm_access: { level: 3 }, groups: ['eng', 'staff'] };
    expect((await h.run(await h.token(ok))).code).toBe('allow');
    expect((await h.run(await h.token({ ...ok, tier: 'bronze' }))).code).toBe('jwt.claim_mismatch');
    expect((await h.run(await h.token({ ...ok, email_verified: 'true' }))).code).toBe('jwt.claim_mismatch');
    expect((await h.run(await h.token({ ...ok, realm_access: { level: 2 } }))).code).toBe('jwt.claim_mismatch');
    expect((await h.run(await h.token({ ...ok, groups: ['eng'] }))).code).toBe('jwt.claim_mismatch');
    expect((await h.run(await h.token({ ...ok, tier: undefined }))).code).toBe('jwt.claim_missing');
    expect((await h.run(await h.token({ ...ok, realm_access: {} }))).code).toBe('jwt.claim_missing');
    const decision = (await h.run(await h.token({ ...ok, tier: 'bronze' }))).ctx.decisions.at(-1);
    expect(decision).toMatchObject({ outcome: 'deny', code: 'jwt.claim_mismatch', detail: { provider: 'main', kid: 'k1' } });
  });

  it('a path does not walk into prototypes', async () => {
    const h = await harness({ requiredClaims: { 'constructor.name': 'Object' } });
    expect((await h.run(await h.token({}))).code).toBe('jwt.claim_missing');
  });
});

describe('subject patterns', () => {
  it('SPIFFE ids', async () => {
    const h = await harness({ subject: 'spiffe://prod.example/ns/*/sa/**' });
    const ok = [
      'spiffe://prod.example/ns/web/sa/frontend',
      'spiffe://prod.example/ns/web/sa',
      'spiffe://prod.example/ns/a/sa/b/c',
    ];
    for (const sub of ok) expect((await h.run(await h.token({ sub }))).code, sub).toBe('allow');
    const bad = [
      'spiffe://prod.example/ns/web/x/sa/a',
      'spiffe://evil.example/ns/web/sa/a',
      'spiffe://prod.example.evil/ns/web/sa/a',
      'spiffe://prod.example/ns//sa/a',
      'spiffe://prod.example/ns/web/sa/a/',
      'spiffe://prod.example/ns/web',
      'http://prod.example/ns/web/sa/a',
      'alice',
      // Wildcards stand for names: never a dot segment or a control character.
      'spiffe://prod.example/ns/a/sa/b/../../../../other',
      'spiffe://prod.example/ns/../sa/x',
      'spiffe://prod.example/ns/./sa/x',
      'spiffe://prod.example/ns/web/sa/a\u0000b',
      'spiffe://prod.example/ns/web\nx/sa/a',
    ];
    for (const sub of bad) expect((await h.run(await h.token({ sub }))).code, sub).toBe('jwt.subject_mismatch');
  });

  it('compiles *, ** and partial segments', () => {
    const m = (pattern: string, subject: string) => compileSubjectPattern(pattern).test(subject);
    expect(m('**', 'anything/at/all')).toBe(true);
    expect(m('**', '')).toBe(true);
    expect(m('*', 'alice')).toBe(true);
    expect(m('*', 'a/b')).toBe(false);
    expect(m('*', '')).toBe(false);
    expect(m('svc-*', 'svc-orders')).toBe(true);
    expect(m('svc-*', 'svc-')).toBe(true);
    expect(m('svc-*', 'svc-a/b')).toBe(false);
    expect(m('**/admin', 'a/b/admin')).toBe(true);
    expect(m('**/admin', 'admin')).toBe(true);
    expect(m('a/**/z', 'a/z')).toBe(true);
    expect(m('a/**/z', 'a/b/c/z')).toBe(true);
    expect(m('a/**/z', 'a/b/c/y')).toBe(false);
    expect(m('spiffe://td/a.b', 'spiffe://td/aXb')).toBe(false); // dots are literal
    expect(m('user+(x)', 'user+(x)')).toBe(true);
    expect(subjectPatternProblem('spiffe://td/a**')).toMatch(/whole segment/);
    expect(subjectPatternProblem('a/**/**/b')).toMatch(/redundant/);
    expect(subjectPatternProblem('spiffe://td//x')).toMatch(/empty segment/);
    expect(subjectPatternProblem('spiffe://td/ns/*/sa/**')).toBeNull();
    expect(() => compileSubjectPattern('a**')).toThrow(TypeError);
  });
});

describe('identity', () => {
  it('scopes from scope (space-delimited) and scp (array or string), merged', async () => {
    const h = await harness();
    const scopesOf = async (claims: Record<string, unknown>) => (await h.run(await h.token(claims))).ctx.identity?.scopes;
    expect(await scopesOf({ scope: 'read  write admin' })).toEqual(['read', 'write', 'admin']);
    expect(await scopesOf({ scp: ['orders.read', 'orders.write', 7] })).toEqual(['orders.read', 'orders.write']);
    expect(await scopesOf({ scp: 'a b' })).toEqual(['a', 'b']);
    expect(await scopesOf({ scope: 'a b', scp: ['b', 'c'] })).toEqual(['a', 'b', 'c']);
    expect(await scopesOf({})).toEqual([]);
    expect(await scopesOf({ scope: 42 })).toEqual([]);
  });

  it('roles from a nested path, a namespaced claim, a string; tenant from a claim', async () => {
    const h = await harness({ rolesClaim: 'realm_access.roles', tenantClaim: 'org.id' });
    const { ctx } = await h.run(await h.token({ realm_access: { roles: ['admin', 'dev', 3] }, org: { id: 'acme' } }));
    expect(ctx.identity).toMatchObject({
      subject: 'alice',
      roles: ['admin', 'dev'],
      tenant: 'acme',
      provider: 'main',
      keyId: 'k1',
      expiresAt: T0 + 600,
    });
    expect(Object.isFrozen(ctx.identity)).toBe(true);
    expect(Object.isFrozen(ctx.identity!.claims['realm_access'])).toBe(true);

    const ns = await harness({ rolesClaim: 'https://example.com/roles', tenantClaim: 'tid' });
    const r = await ns.run(await ns.token({ 'https://example.com/roles': 'viewer', tid: 42 }));
    expect(r.ctx.identity).toMatchObject({ roles: ['viewer'], tenant: '42' });
    const none = await ns.run(await ns.token({ 'https://example.com/roles': { admin: true } }));
    expect(none.ctx.identity).toMatchObject({ roles: [], tenant: undefined });
    // Present but naming no tenant: refused, not taken for a tenant-less (platform) identity.
    for (const tid of [['acme'], { id: 'acme' }, true, '']) {
      const bad = await ns.run(await ns.token({ tid }));
      expect([tid, bad.ctx.identity, bad.code]).toEqual([tid, null, 'jwt.malformed']);
    }
    expect((await ns.run(await ns.token({ tid: null }))).ctx.identity).toMatchObject({ tenant: undefined });
  });
});

describe('identity headers upstream', () => {
  it('claims → headers (arrays joined), payload header, client copies stripped', async () => {
    const k = await makeKey('k1');
    const clock = { now: T0 * 1000 };
    const authn = compileAuthn(
      authnConfig({
        providers: {
          main: {
            issuer: ISSUER,
            audiences: [AUDIENCE],
            publicKeys: [{ key: k.pem }],
            rolesClaim: 'roles',
            forward: {
              claims: { sub: 'X-User-Id', roles: 'x-user-roles', 'org.id': 'x-tenant', level: 'x-level', missing: 'x-missing' },
              payloadHeader: 'x-jwt-payload',
            },
          },
          other: {
            issuer: 'https://other.test',
            audiences: ['x'],
            publicKeys: [{ key: k.pem }],
            forward: { claims: { email: 'x-email' } },
          },
        },
      }),
      { now: () => clock.now },
    );
    cleanup.push(() => authn.close());
    await authn.ready();
    const stage = createAuthnStage({ provider: 'main' }, authn)!;
    const claims = { iat: T0, exp: T0 + 600, roles: ['admin', 'dev'], org: { id: 'acme' }, level: 3 };
    const ctx = requestContext({ ...bearer(await mint(k, claims)), 'x-user-id': 'spoofed', 'x-email': 'spoofed@evil' });
    expect(await runStage(stage, ctx)).toBeNull();
    expect([...ctx.stripHeaders!].sort()).toEqual([
      'x-email',
      'x-jwt-payload',
      'x-level',
      'x-missing',
      'x-tenant',
      'x-user-id',
      'x-user-roles',
    ]);
    const headers = ctx.upstreamHeaders!;
    const map = new Map<string, string>();
    for (let i = 0; i < headers.length; i += 2) map.set(headers[i]!, headers[i + 1]!);
    expect(Object.fromEntries(map)).toMatchObject({
      'x-user-id': 'alice',
      'x-user-roles': 'admin,dev',
      'x-tenant': 'acme',
      'x-level': '3',
    });
    expect(map.has('x-missing')).toBe(false);
    const payload = JSON.parse(Buffer.from(map.get('x-jwt-payload')!, 'base64url').toString('utf8'));
    expect(payload).toEqual(ctx.identity!.claims);

    // A second request with the same token (cache hit) gets its own copy of the headers.
    const again = requestContext(bearer(await mint(k, claims)));
    expect(await runStage(stage, again)).toBeNull();
    again.upstreamHeaders!.push('x-added', '1');
    const third = requestContext(bearer(await mint(k, claims)));
    expect(await runStage(stage, third)).toBeNull();
    expect(third.upstreamHeaders).not.toContain('x-added');

    // Denied and anonymous requests are stripped too.
    const denied = requestContext({ 'x-user-id': 'spoofed' });
    await runStage(stage, denied);
    expect(denied.stripHeaders?.has('x-user-id')).toBe(true);
    expect(denied.upstreamHeaders).toBeNull();
  });

  it('header values that cannot travel safely are left out', () => {
    expect(headerValueOf('plain value')).toBe('plain value');
    expect(headerValueOf('a\r\nx-injected: 1')).toBeNull();
    expect(headerValueOf('tab\there')).toBeNull();
    expect(headerValueOf('José')).toBeNull();
    expect(headerValueOf(['a', 'b,c'])).toBeNull();
    expect(headerValueOf(['a', 1, true])).toBe('a,1,true');
    expect(headerValueOf([])).toBeNull();
    expect(headerValueOf({ a: 1 })).toBeNull();
    expect(headerValueOf(Number.NaN)).toBeNull();
    expect(headerValueOf('')).toBeNull();
  });
});
