/**
 * Remote JWKS lifecycle against a real, counting HTTP server: rotation, single-flight,
 * cooldown, removal (and the verified-token cache following it), stale-while-revalidate
 * and max-stale, timeouts, size caps, redirects. Short real durations, no fake timers
 * (the fetch goes through real sockets).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { compileAuthn, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
import type { AuthnEvent } from '../../src/authn/key-source.js';
import type { Stage } from '../../src/core/stage.js';
import {
  AUDIENCE,
  authnConfig,
  bearer,
  expectDenial,
  ISSUER,
  jwks,
  makeKey,
  mint,
  requestContext,
  runStage,
  sleep,
  startJwksServer,
  until,
  type JwksServer,
} from './helpers.js';

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

interface Setup {
  server: JwksServer;
  authn: CompiledAuthn;
  stage: Stage;
  events: AuthnEvent[];
  generation(): number;
}

async function setup(initial: unknown, jwksOptions: Record<string, number>): Promise<Setup> {
  const server = await startJwksServer(initial);
  cleanup.push(() => server.close());
  const events: AuthnEvent[] = [];
  const authn = compileAuthn(
    authnConfig({
      providers: { main: { issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: server.url, jwks: jwksOptions } },
    }),
    { onEvent: (e) => events.push(e) },
  );
  cleanup.push(() => authn.close());
  await authn.ready();
  const stage = createAuthnStage({ provider: 'main' }, authn)!;
  return { server, authn, stage, events, generation: () => authn.stats().jwks['main']!.generation };
}

async function check(s: Setup, token: string): Promise<string> {
  const decision = await runStage(s.stage, requestContext(bearer(token)));
  return decision === null ? 'allow' : decision.code;
}

describe('rotation: a new key', () => {
  it('is accepted after exactly one refetch, then without any', async () => {
    const k1 = await makeKey('k1');
    const k2 = await makeKey('k2');
    const s = await setup(jwks(k1), { cooldownMs: 50, cacheTtlMs: 60_000, maxStaleMs: 120_000 });
    expect(s.server.hits).toBe(1);
    expect(await check(s, await mint(k1))).toBe('allow');
    expect(s.server.hits).toBe(1);

    await sleep(60); // past the cooldown of the initial fetch
    s.server.body = jwks(k1, k2);
    expect(await check(s, await mint(k2))).toBe('allow');
    expect(s.server.hits).toBe(2);
    expect(await check(s, await mint(k2, { sub: 'bob' }))).toBe('allow');
    expect(await check(s, await mint(k1))).toBe('allow');
    expect(s.server.hits).toBe(2);
  });

  it('100 concurrent requests with an unknown kid cause exactly one fetch', async () => {
    const k1 = await makeKey('k1');
    const k2 = await makeKey('k2');
    const s = await setup(jwks(k1), { cooldownMs: 50, cacheTtlMs: 60_000, maxStaleMs: 120_000 });
    await sleep(60);
    s.server.body = jwks(k1, k2);
    s.server.delayMs = 150; // keep the refetch in flight while everyone piles up
    const tokens = await Promise.all(Array.from({ length: 100 }, (_, i) => mint(k2, { sub: `user-${i}` })));
    const results = await Promise.all(tokens.map((t) => check(s, t)));
    expect(results.every((r) => r === 'allow')).toBe(true);
    expect(s.server.hits).toBe(2);
  });

  it('100 concurrent requests with a kid that stays unknown: one fetch, all jwt.unknown_kid', async () => {
    const k1 = await makeKey('k1');
    const ghost = await makeKey('ghost');
    const s = await setup(jwks(k1), { cooldownMs: 50, cacheTtlMs: 60_000, maxStaleMs: 120_000 });
    await sleep(60);
    s.server.delayMs = 100;
    const tokens = await Promise.all(Array.from({ length: 100 }, (_, i) => mint(ghost, { sub: `u${i}` })));
    const results = await Promise.all(tokens.map((t) => check(s, t)));
    expect(new Set(results)).toEqual(new Set(['jwt.unknown_kid']));
    expect(s.server.hits).toBe(2);
  });

  it('a flood of random kids within the cooldown causes no further fetch', async () => {
    const k1 = await makeKey('k1');
    const s = await setup(jwks(k1), { cooldownMs: 60_000, cacheTtlMs: 60_000, maxStaleMs: 120_000 });
    const forger = await makeKey('x');
    for (let i = 0; i < 200; i++) {
      const kid = `random-${Math.random().toString(36).slice(2)}`;
      expect(await check(s, await mint({ ...forger, kid }))).toBe('jwt.unknown_kid');
    }
    expect(s.server.hits).toBe(1);
  });

  it('after the cooldown, a flood costs one more fetch, not one per kid', async () => {
    const k1 = await makeKey('k1');
    const s = await setup(jwks(k1), { cooldownMs: 100, cacheTtlMs: 60_000, maxStaleMs: 120_000 });
    const forger = await makeKey('x');
    await sleep(120);
    const tokens = await Promise.all(Array.from({ length: 50 }, (_, i) => mint({ ...forger, kid: `r${i}` })));
    for (const t of tokens) expect(await check(s, t)).toBe('jwt.unknown_kid');
    expect(s.server.hits).toBe(2);
  });
});

describe('rotation: an old key removed', () => {
  it('tokens of both keys work during the overlap; the old one is refused after the refresh, and its cache entries dropped', async () => {
    const k1 = await makeKey('k1');
    const k2 = await makeKey('k2');
    const s = await setup(jwks(k1, k2), { cooldownMs: 20, cacheTtlMs: 200, maxStaleMs: 60_000 });
    const old = await mint(k1);
    const fresh = await mint(k2);
    expect(await check(s, old)).toBe('allow');
    expect(await check(s, fresh)).toBe('allow');
    expect(s.authn.cache.size).toBe(2);
    // A repeat is a cache hit (no verification).
    const hitsBefore = s.authn.cache.hits;
    expect(await check(s, old)).toBe('allow');
    expect(s.authn.cache.hits).toBe(hitsBefore + 1);

    const generation = s.generation();
    s.server.body = jwks(k2); // k1 retired
    await until(() => s.generation() > generation, 2000);
    // The sweep ran with the new generation: k1's entry is gone, k2's stays.
    expect(s.authn.cache.size).toBe(1);
    expect(await check(s, old)).toBe('jwt.unknown_kid');
    expect(await check(s, fresh)).toBe('allow');
    expect(s.events.some((e) => e.type === 'keys_loaded' && e.changed && e.keys === 1)).toBe(true);
  });

  it('a refresh that finds the same keys keeps the generation (and the cache)', async () => {
    const k1 = await makeKey('k1');
    const s = await setup(jwks(k1), { cooldownMs: 20, cacheTtlMs: 50, maxStaleMs: 60_000 });
    expect(await check(s, await mint(k1))).toBe('allow');
    const generation = s.generation();
    await until(() => s.server.hits >= 3, 2000);
    expect(s.generation()).toBe(generation);
    expect(s.authn.cache.size).toBe(1);
    expect(s.events.filter((e) => e.type === 'keys_loaded' && !e.changed).length).toBeGreaterThan(0);
  });
});

describe('endpoint failures', () => {
  it('keeps serving cached keys until maxStale, then jwt.jwks_unavailable; recovers when the endpoint does', async () => {
    const k1 = await makeKey('k1');
    const s = await setup(jwks(k1), { cooldownMs: 50, cacheTtlMs: 100, maxStaleMs: 600 });
    const cached = await mint(k1, { sub: 'cached' });
    expect(await check(s, cached)).toBe('allow');
    s.server.status = 503;
    await until(() => s.events.some((e) => e.type === 'keys_error'), 2000);
    // Stale but within maxStale: new tokens still verify against the cached keys.
    expect(await check(s, await mint(k1, { sub: 'during-outage' }))).toBe('allow');
    expect(await check(s, cached)).toBe('allow');

    await until(() => s.events.some((e) => e.type === 'keys_expired'), 2000);
    expect(await check(s, await mint(k1, { sub: 'after-max-stale' }))).toBe('jwt.jwks_unavailable');
    // The verified-token cache followed the keys out.
    expect(await check(s, cached)).toBe('jwt.jwks_unavailable');
    expect(s.authn.cache.size).toBe(0);

    s.server.status = 200;
    await until(async () => (await check(s, await mint(k1))) === 'allow', 2000);
  });

  it('an endpoint that never answered in time: jwt.jwks_unavailable, with the timeout reported', async () => {
    const k1 = await makeKey('k1');
    const server = await startJwksServer(jwks(k1));
    cleanup.push(() => server.close());
    server.delayMs = 1000;
    const events: AuthnEvent[] = [];
    const authn = compileAuthn(
      authnConfig({
        providers: {
          main: { issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: server.url, jwks: { timeoutMs: 100, cooldownMs: 5000 } },
        },
      }),
      { onEvent: (e) => events.push(e) },
    );
    cleanup.push(() => authn.close());
    const started = Date.now();
    await authn.ready();
    expect(Date.now() - started).toBeLessThan(900);
    const stage = createAuthnStage({ provider: 'main' }, authn)!;
    const denial = expectDenial(await runStage(stage, requestContext(bearer(await mint(k1)))));
    expect(denial.code).toBe('jwt.jwks_unavailable');
    expect(denial.status).toBe(401);
    expect(events).toContainEqual(expect.objectContaining({ type: 'keys_error', error: expect.stringContaining('100 ms') }));
  });

  it('invalid answers (not JSON, not a JWKS, no usable key, HTTP error) keep the previous keys', async () => {
    const k1 = await makeKey('k1');
    const s = await setup(jwks(k1), { cooldownMs: 20, cacheTtlMs: 40, maxStaleMs: 60_000 });
    const generation = s.generation();
    const bad: [string | null, unknown, number][] = [
      ['{not json', null, 200],
      [null, { notKeys: [] }, 200],
      [null, { keys: [] }, 200],
      [null, { keys: [{ kty: 'oct', k: 'c2VjcmV0' }] }, 200],
      [null, jwks(k1), 404],
    ];
    for (const [raw, body, status] of bad) {
      const errors = s.events.filter((e) => e.type === 'keys_error').length;
      s.server.raw = raw;
      s.server.body = body;
      s.server.status = status;
      await until(() => s.events.filter((e) => e.type === 'keys_error').length > errors, 2000);
      expect(await check(s, await mint(k1))).toBe('allow');
    }
    expect(s.generation()).toBe(generation);
  });

  it('a JWKS larger than maxBytes is refused, streamed or declared', async () => {
    const keys = await Promise.all([1, 2, 3, 4].map((i) => makeKey(`k${i}`)));
    const server = await startJwksServer(jwks(...keys));
    cleanup.push(() => server.close());
    let streamed = 0;
    server.routes.set('/endless', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(16 * 1024, 0x20);
      const pump = () => {
        while (!res.destroyed && streamed < 50 * 1024 * 1024 && res.write(chunk)) streamed += chunk.length;
        if (!res.destroyed && streamed < 50 * 1024 * 1024) res.once('drain', pump);
      };
      pump();
    });
    const events: AuthnEvent[] = [];
    const authn = compileAuthn(
      authnConfig({
        providers: {
          small: { issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: server.url, jwks: { maxBytes: 1024 } },
          endless: { issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: `${server.origin}/endless`, jwks: { maxBytes: 4096 } },
        },
      }),
      { onEvent: (e) => events.push(e) },
    );
    cleanup.push(() => authn.close());
    await authn.ready();
    const errors = events.filter((e) => e.type === 'keys_error').map((e) => (e as { error: string }).error);
    expect(errors).toHaveLength(2);
    expect(errors.every((e) => /bytes/.test(e))).toBe(true);
    // Reading stopped near the cap, not at 50 MiB.
    expect(streamed).toBeLessThan(10 * 1024 * 1024);
    const stage = createAuthnStage({ provider: 'small' }, authn)!;
    expect(expectDenial(await runStage(stage, requestContext(bearer(await mint(keys[0]!))))).code).toBe('jwt.jwks_unavailable');
  });

  it('redirects are not followed', async () => {
    const k1 = await makeKey('k1');
    const trap = await startJwksServer(jwks(k1));
    cleanup.push(() => trap.close());
    const server = await startJwksServer(jwks(k1));
    cleanup.push(() => server.close());
    server.routes.set('/moved', (_req, res) => {
      res.writeHead(302, { location: trap.url });
      res.end();
    });
    const authn = compileAuthn(
      authnConfig({ providers: { main: { issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: `${server.origin}/moved` } } }),
    );
    cleanup.push(() => authn.close());
    await authn.ready();
    const stage = createAuthnStage({ provider: 'main' }, authn)!;
    expect(expectDenial(await runStage(stage, requestContext(bearer(await mint(k1))))).code).toBe('jwt.jwks_unavailable');
    expect(trap.hits).toBe(0);
  });

  it('skips unusable JWKS members and uses the rest', async () => {
    const good = await makeKey('good');
    const ec = await makeKey('ec', 'ES256');
    const priv = await makeKey('priv');
    const { exportJWK } = await import('jose');
    const privateJwk = { ...(await exportJWK(priv.privateKey)), kid: 'priv' };
    const body = {
      keys: [
        { kty: 'oct', k: 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA', kid: 'hmac' },
        { ...good.jwk, kid: 'enc', use: 'enc' },
        privateJwk,
        { kty: 'RSA', kid: 'broken', n: '!!!', e: 'AQAB' },
        { kty: 'WAT', kid: 'wat' },
        'not an object',
        good.jwk,
        ec.jwk,
      ],
    };
    const s = await setup(body, { cooldownMs: 60_000 });
    expect(s.events).toContainEqual(expect.objectContaining({ type: 'keys_loaded', keys: 2, skipped: 6 }));
    expect(await check(s, await mint(good))).toBe('allow');
    // ES256 is not in this provider's algorithms (default RS256): refused even though the key exists.
    expect(await check(s, await mint(ec))).toBe('jwt.alg_not_allowed');
    expect(await check(s, await mint({ ...priv, kid: 'priv' }))).toBe('jwt.unknown_kid');
  });

  it('close() stops refreshing', async () => {
    const k1 = await makeKey('k1');
    const s = await setup(jwks(k1), { cooldownMs: 10, cacheTtlMs: 30, maxStaleMs: 60_000 });
    s.authn.close();
    const hits = s.server.hits;
    await sleep(150);
    expect(s.server.hits).toBe(hits);
  });
});
