/**
 * The stage: token sources, duplicate Authorization, challenges, route requirements
 * (provider / anyOf / allOf / optional / public), the verified-token cache on the hot
 * path, and decision records.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { compileAuthn, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage, forwardedHeaderNames } from '../../src/authn/stage.js';
import { countHeader } from '../../src/authn/token.js';
import { insufficientScope } from '../../src/authn/failures.js';
import { BulwarkError } from '../../src/core/errors.js';
import { RequestContext } from '../../src/core/context.js';
import type { RouteAuthConfig } from '../../src/authn/schema.js';
import {
  AUDIENCE,
  authnConfig,
  bearer,
  expectDenial,
  ISSUER,
  makeKey,
  mint,
  requestContext,
  runStage,
  type TestKey,
} from './helpers.js';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0)) fn();
});

let userKey: TestKey;
let partnerKey: TestKey;
let workloadKey: TestKey;

beforeAll(async () => {
  userKey = await makeKey('user-k');
  partnerKey = await makeKey('partner-k');
  workloadKey = await makeKey('wl-k', 'ES256');
});

const PARTNER = 'https://partner.test';
const MESH = 'https://mesh.test';

async function compile(extra: Record<string, unknown> = {}, cache?: Record<string, number>): Promise<CompiledAuthn> {
  const authn = compileAuthn(
    authnConfig({
      providers: {
        users: {
          issuer: ISSUER,
          audiences: [AUDIENCE],
          publicKeys: [{ key: userKey.pem, kid: 'user-k' }],
          forward: { claims: { sub: 'x-user' } },
        },
        partners: { issuer: PARTNER, audiences: [AUDIENCE], publicKeys: [{ key: partnerKey.pem, kid: 'partner-k' }] },
        mesh: {
          issuer: MESH,
          audiences: ['mesh'],
          algorithms: ['ES256'],
          publicKeys: [{ key: workloadKey.pem }],
          token: { header: 'x-workload-token' },
          subject: 'spiffe://mesh.test/**',
          forward: { claims: { sub: 'x-workload' } },
        },
        cookies: { issuer: ISSUER, audiences: [AUDIENCE], publicKeys: [{ key: userKey.pem }], token: { cookie: 'session' } },
        query: { issuer: ISSUER, audiences: [AUDIENCE], publicKeys: [{ key: userKey.pem }], token: { query: 'access_token' } },
        custom: {
          issuer: ISSUER,
          audiences: [AUDIENCE],
          publicKeys: [{ key: userKey.pem }],
          token: { header: 'X-Auth', prefix: 'JWT' },
        },
        ...extra,
      },
      ...(cache ? { cache } : {}),
    }),
  );
  cleanup.push(() => authn.close());
  await authn.ready();
  return authn;
}

function stageFor(authn: CompiledAuthn, requirement: RouteAuthConfig) {
  const stage = createAuthnStage(requirement, authn);
  if (stage === null) throw new Error('expected a stage');
  return stage;
}

const workloadToken = (claims: Record<string, unknown> = {}) =>
  mint(workloadKey, { iss: MESH, aud: 'mesh', sub: 'spiffe://mesh.test/ns/a/sa/b', ...claims });

describe('token sources', () => {
  it('Authorization: Bearer, scheme case-insensitive; other schemes are "no token"', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { provider: 'users' });
    const token = await mint(userKey);
    for (const value of [`Bearer ${token}`, `bearer ${token}`, `BEARER ${token}`, `Bearer   ${token}`]) {
      expect(await runStage(stage, requestContext({ authorization: value })), value.slice(0, 10)).toBeNull();
    }
    for (const value of ['Basic dXNlcjpwYXNz', `Bearer${token}`, 'Digest x', `Token ${token}`]) {
      const denial = expectDenial(await runStage(stage, requestContext({ authorization: value })));
      expect(denial.code).toBe('jwt.missing');
      expect(denial.headers?.['www-authenticate']).toBe('Bearer realm="bulwark"');
    }
    for (const value of ['Bearer', 'Bearer    ']) {
      expect(expectDenial(await runStage(stage, requestContext({ authorization: value }))).code).toBe('jwt.malformed');
    }
  });

  it('no token at all: 401 jwt.missing, challenge without error (RFC 6750 §3.1)', async () => {
    const authn = await compile();
    const ctx = requestContext({});
    const denial = expectDenial(await runStage(stageFor(authn, { provider: 'users' }), ctx));
    expect(denial).toMatchObject({ status: 401, code: 'jwt.missing', detail: undefined });
    expect(denial.headers).toEqual({ 'www-authenticate': 'Bearer realm="bulwark"' });
    expect(ctx.decisions).toEqual([
      { stage: 'authn', outcome: 'deny', code: 'jwt.missing', detail: { provider: 'users', kid: undefined, reason: 'no token' } },
    ]);
  });

  it('a custom header with its own prefix', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { provider: 'custom' });
    const token = await mint(userKey);
    expect(await runStage(stage, requestContext({ 'x-auth': `JWT ${token}` }))).toBeNull();
    expect(expectDenial(await runStage(stage, requestContext(bearer(token)))).code).toBe('jwt.missing');
    // A repeated custom header reaches us joined by node:http: never a valid token.
    expect(expectDenial(await runStage(stage, requestContext({ 'x-auth': `JWT ${token}, JWT ${token}` }))).code).toBe(
      'jwt.malformed',
    );
  });

  it('a header without prefix: the whole value', async () => {
    const authn = await compile();
    expect(
      await runStage(stageFor(authn, { provider: 'mesh' }), requestContext({ 'x-workload-token': await workloadToken() })),
    ).toBeNull();
  });

  it('a cookie, among others; a repeated token cookie is refused', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { provider: 'cookies' });
    const token = await mint(userKey);
    expect(await runStage(stage, requestContext({ cookie: `theme=dark; session=${token}; lang=en` }))).toBeNull();
    expect(await runStage(stage, requestContext({ cookie: `session="${token}"` }))).toBeNull();
    expect(expectDenial(await runStage(stage, requestContext({ cookie: 'theme=dark' }))).code).toBe('jwt.missing');
    expect(expectDenial(await runStage(stage, requestContext({ cookie: 'xsession=abc' }))).code).toBe('jwt.missing');
    expect(expectDenial(await runStage(stage, requestContext({ cookie: `session=${token}; session=${token}` }))).code).toBe(
      'jwt.malformed',
    );
    expect(expectDenial(await runStage(stage, requestContext({ cookie: 'session=' }))).code).toBe('jwt.malformed');
  });

  it('a query parameter (opt-in)', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { provider: 'query' });
    const token = await mint(userKey);
    expect(await runStage(stage, requestContext({}, `a=1&access_token=${token}`))).toBeNull();
    expect(await runStage(stage, requestContext({}, `%61ccess_token=${token}`))).toBeNull();
    expect(expectDenial(await runStage(stage, requestContext({}, 'a=1'))).code).toBe('jwt.missing');
    expect(expectDenial(await runStage(stage, requestContext({}, `access_token=${token}&access_token=x`))).code).toBe(
      'jwt.malformed',
    );
    // The Authorization header is not this provider's source.
    expect(expectDenial(await runStage(stage, requestContext(bearer(token)))).code).toBe('jwt.missing');
  });
});

describe('duplicate Authorization', () => {
  it('two values reaching the stage: 400 request.duplicate_authorization with invalid_request', async () => {
    const authn = await compile();
    const token = await mint(userKey);
    const denial = expectDenial(
      await runStage(
        stageFor(authn, { provider: 'users' }),
        requestContext({ authorization: [`Bearer ${token}`, 'Bearer other'] }),
      ),
    );
    expect(denial).toMatchObject({ status: 400, code: 'request.duplicate_authorization' });
    expect(denial.headers?.['www-authenticate']).toBe('Bearer realm="bulwark", error="invalid_request"');
  });

  it('countHeader counts raw headers case-insensitively (node:http keeps only the first)', () => {
    const raw = ['Host', 'a', 'Authorization', 'Bearer x', 'content-type', 'b', 'AUTHORIZATION', 'Bearer y'];
    expect(countHeader(raw, 'authorization')).toBe(2);
    expect(countHeader(raw, 'Authorization')).toBe(2);
    expect(countHeader(raw, 'host')).toBe(1);
    expect(countHeader(raw, 'cookie')).toBe(0);
    // A header *value* equal to the name does not count.
    expect(countHeader(['x', 'authorization'], 'authorization')).toBe(0);
  });
});

describe('requirements', () => {
  it('public: no stage', async () => {
    const authn = await compile();
    expect(createAuthnStage({ public: true }, authn)).toBeNull();
    // The adapter still strips identity headers on public routes.
    expect([...forwardedHeaderNames(authn)].sort()).toEqual(['x-user', 'x-workload']);
  });

  it('unknown provider: TypeError at build time', async () => {
    const authn = await compile();
    expect(() => createAuthnStage({ provider: 'nope' }, authn)).toThrow(TypeError);
    expect(() => createAuthnStage({ anyOf: ['users', 'nope'] }, authn)).toThrow(/nope/);
  });

  it('anyOf: the token iss picks the provider; an unknown iss is refused without trying keys', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { anyOf: ['users', 'partners'] });
    const user = requestContext(bearer(await mint(userKey)));
    expect(await runStage(stage, user)).toBeNull();
    expect(user.identity?.provider).toBe('users');
    const partner = requestContext(bearer(await mint(partnerKey, { iss: PARTNER })));
    expect(await runStage(stage, partner)).toBeNull();
    expect(partner.identity?.provider).toBe('partners');
    expect(partner.decisions.at(-1)).toMatchObject({
      outcome: 'allow',
      code: 'jwt.valid',
      detail: { provider: 'partners', kid: 'partner-k' },
    });

    const stranger = requestContext(bearer(await mint(partnerKey, { iss: 'https://stranger.test' })));
    expect(expectDenial(await runStage(stage, stranger)).code).toBe('jwt.issuer_mismatch');
    // A partner-signed token claiming the users' issuer is checked against the users' keys only.
    const confused = requestContext(bearer(await mint({ ...partnerKey, kid: 'user-k' })));
    expect(expectDenial(await runStage(stage, confused)).code).toBe('jwt.signature_invalid');
    expect(confused.decisions.at(-1)).toMatchObject({ detail: { provider: 'users' } });
    expect(expectDenial(await runStage(stage, requestContext({ authorization: 'Bearer x.y' }))).code).toBe('jwt.malformed');
  });

  it('anyOf across token sources: whichever verifies', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { anyOf: ['users', 'mesh'] });
    const mesh = requestContext({ 'x-workload-token': await workloadToken() });
    expect(await runStage(stage, mesh)).toBeNull();
    expect(mesh.identity?.provider).toBe('mesh');
    // A bad bearer token does not hide a good workload token.
    const both = requestContext({ authorization: 'Bearer bad.token.here', 'x-workload-token': await workloadToken() });
    expect(await runStage(stage, both)).toBeNull();
    // Both bad: the first failure is reported.
    const bad = requestContext({ authorization: 'Bearer bad.token.here', 'x-workload-token': 'x' });
    expect(expectDenial(await runStage(stage, bad)).code).toBe('jwt.malformed');
    expect(expectDenial(await runStage(stage, requestContext({}))).code).toBe('jwt.missing');
  });

  it('allOf: each provider verifies its own token; identity is the first; headers from all', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { allOf: ['users', 'mesh'] });
    const headers = { ...bearer(await mint(userKey)), 'x-workload-token': await workloadToken() };
    for (const round of ['verified', 'cached']) {
      const ctx = requestContext(headers);
      expect(await runStage(stage, ctx)).toBeNull();
      expect(ctx.identity?.provider).toBe('users');
      expect(ctx.upstreamHeaders).toEqual(['x-user', 'alice', 'x-workload', 'spiffe://mesh.test/ns/a/sa/b']);
      expect(
        ctx.decisions.map((d) => [
          d.code,
          (d.detail as { provider: string; cached: boolean }).provider,
          (d.detail as { cached: boolean }).cached,
        ]),
      ).toEqual([
        ['jwt.valid', 'users', round === 'cached'],
        ['jwt.valid', 'mesh', round === 'cached'],
      ]);
    }
    const missing = requestContext(bearer(await mint(userKey)));
    const denial = expectDenial(await runStage(stage, missing));
    expect(denial.code).toBe('jwt.missing');
    expect(missing.decisions.at(-1)).toMatchObject({ detail: { provider: 'mesh' } });
    const wrongSubject = requestContext({
      ...bearer(await mint(userKey)),
      'x-workload-token': await workloadToken({ sub: 'spiffe://evil/x' }),
    });
    expect(expectDenial(await runStage(stage, wrongSubject)).code).toBe('jwt.subject_mismatch');
    expect(wrongSubject.identity).toBeNull();
  });

  it('optional: anonymous without a token, identity with a valid one, 401 with an invalid one', async () => {
    const authn = await compile();
    for (const requirement of [{ optional: 'users' }, { optional: ['users', 'partners'] }] as RouteAuthConfig[]) {
      const stage = stageFor(authn, requirement);
      const anonymous = requestContext({});
      expect(await runStage(stage, anonymous)).toBeNull();
      expect(anonymous.identity).toBeNull();
      expect(anonymous.decisions).toEqual([{ stage: 'authn', outcome: 'allow', code: 'authn.anonymous' }]);
      const user = requestContext(bearer(await mint(userKey)));
      expect(await runStage(stage, user)).toBeNull();
      expect(user.identity?.subject).toBe('alice');
      const expired = requestContext(bearer(await mint(userKey, { exp: 1 })));
      expect(expectDenial(await runStage(stage, expired)).code).toBe('jwt.expired');
    }
  });
});

describe('verified-token cache on the hot path', () => {
  it('a repeated token is answered synchronously, with a cached decision record', async () => {
    const authn = await compile();
    const stage = stageFor(authn, { provider: 'users' });
    const token = await mint(userKey);
    const first = stage.run(requestContext(bearer(token)));
    expect(first).toBeInstanceOf(Promise);
    expect(await first).toBeNull();
    const ctx = requestContext(bearer(token));
    const second = stage.run(ctx);
    expect(second).toBeNull(); // not a Promise: no crypto, no await
    expect(ctx.identity?.subject).toBe('alice');
    expect(ctx.decisions).toEqual([
      { stage: 'authn', outcome: 'allow', code: 'jwt.valid', detail: { provider: 'users', kid: 'user-k', cached: true } },
    ]);
    expect(authn.stats().cache).toMatchObject({ size: 1, hits: 1 });
  });

  it('is bounded (LRU) and keyed per provider', async () => {
    const authn = await compile({}, { maxEntries: 2 });
    const stage = stageFor(authn, { provider: 'users' });
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((sub) => mint(userKey, { sub })));
    await runStage(stage, requestContext(bearer(a!)));
    await runStage(stage, requestContext(bearer(b!)));
    expect(stage.run(requestContext(bearer(a!)))).toBeNull(); // a is now most recent
    await runStage(stage, requestContext(bearer(c!))); // evicts b
    expect(authn.cache.size).toBe(2);
    expect(stage.run(requestContext(bearer(a!)))).toBeNull();
    expect(stage.run(requestContext(bearer(b!)))).toBeInstanceOf(Promise);

    // The users' cached entry does not satisfy another provider reading the same token.
    const cookies = stageFor(authn, { provider: 'cookies' });
    expect(cookies.run(requestContext({ cookie: `session=${a}` }))).toBeInstanceOf(Promise);
  });

  it('never throws, whatever arrives', async () => {
    const authn = await compile();
    const stages = [
      stageFor(authn, { provider: 'users' }),
      stageFor(authn, { anyOf: ['users', 'partners', 'mesh'] }),
      stageFor(authn, { allOf: ['users', 'mesh'] }),
      stageFor(authn, { optional: ['users', 'cookies', 'query'] }),
    ];
    const valid = await mint(userKey);
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ %"\\\u0000\u00e9';
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    for (let i = 0; i < 300; i++) {
      let junk = '';
      const len = random() % 120;
      for (let j = 0; j < len; j++) junk += alphabet[random() % alphabet.length];
      if (i % 3 === 0) {
        const cut = random() % valid.length;
        junk = valid.slice(0, cut) + junk + valid.slice(cut + junk.length);
      }
      const ctx = new RequestContext({
        method: 'GET',
        rawTarget: '/',
        headers: { authorization: `Bearer ${junk}`, cookie: `session=${junk}`, 'x-workload-token': junk },
        peerAddress: '::1',
        peerPort: 1,
        protocol: 'h2',
        secure: true,
        requestId: String(i),
      });
      ctx.query = `access_token=${encodeURIComponent(junk)}`;
      for (const stage of stages) {
        const decision = await stage.run(ctx);
        if (decision !== null) {
          expect(decision).toBeInstanceOf(BulwarkError);
          expect([400, 401]).toContain(decision.status);
        }
      }
    }
  });
});

describe('insufficient scope helper (for the authorization stage)', () => {
  it('403 with error="insufficient_scope" and the scopes needed', () => {
    const denial = insufficientScope(['orders.write', 'bad"scope']);
    expect(denial).toMatchObject({ status: 403, code: 'jwt.insufficient_scope', detail: undefined });
    expect(denial.headers?.['www-authenticate']).toBe('Bearer realm="bulwark", error="insufficient_scope", scope="orders.write"');
  });
});
