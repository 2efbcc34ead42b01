import { once } from 'node:events';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { RequestContext } from '../../src/core/context.js';
import { BulwarkError, ERROR_CODES } from '../../src/core/errors.js';
import { TrustedProxies } from '../../src/gateway/trusted-proxies.js';
import { compileLimits, type CompiledLimits } from '../../src/limits/compile.js';
import { clientAddressFrom } from '../../src/limits/keys.js';
import type { RateLimitsConfig } from '../../src/limits/schema.js';
import { createLimitStage, rateLimitHeaders, releaseLimits, type LimitDecision } from '../../src/limits/stage.js';
import { fakeClock, makeCtx, sleep } from './helpers.js';

const direct = (ctx: RequestContext) => ctx.peerAddress;
let open: CompiledLimits[] = [];
afterEach(async () => {
  await Promise.all(open.map((l) => l.close()));
  open = [];
});

function setup(config: RateLimitsConfig, ids: string[], clientAddress = direct) {
  const clock = fakeClock();
  const limits = compileLimits(config, { clock: clock.clock });
  open.push(limits);
  const stage = createLimitStage(ids, limits, clientAddress)!;
  /** Runs the stage synchronously (memory store) and returns the denial or null. */
  const run = (ctx: RequestContext) => {
    const d = stage.run(ctx);
    if (d instanceof Promise) throw new Error('memory stage went async');
    return d;
  };
  return { clock, limits, stage, run };
}

function admitted(run: (ctx: RequestContext) => BulwarkError | null, n: number, make: () => RequestContext): number {
  let ok = 0;
  for (let i = 0; i < n; i++) if (run(make()) === null) ok++;
  return ok;
}

const READ: RateLimitsConfig = {
  policies: [{ id: 'per-client-read', rate: 10, per: '1s', burst: 10, key: ['route', 'client_ip'] }],
};

describe('limit stage (memory store)', () => {
  it('registers its error codes', () => {
    expect(ERROR_CODES['ratelimit.exceeded'].status).toBe(429);
    expect(ERROR_CODES['ratelimit.concurrency'].status).toBe(429);
    expect(ERROR_CODES['ratelimit.store_unavailable'].status).toBe(503);
    expect(ERROR_CODES['ratelimit.overloaded'].status).toBe(503);
  });

  it('is null for an empty policy list and refuses unknown ids', () => {
    const limits = compileLimits(READ);
    open.push(limits);
    expect(createLimitStage([], limits, direct)).toBeNull();
    expect(() => createLimitStage(['nope'], limits, direct)).toThrow(TypeError);
  });

  it('admits the burst, then 429 with Retry-After and IETF RateLimit headers, no key material', () => {
    const { run, clock } = setup(READ, ['per-client-read']);
    const first = makeCtx();
    expect(run(first)).toBeNull();
    expect(rateLimitHeaders(first)).toEqual({
      'ratelimit-policy': '"per-client-read";q=10;w=1',
      ratelimit: '"per-client-read";r=9;t=1',
    });
    const record = first.decisions[0]!;
    expect(record.stage).toBe('ratelimit');
    expect(record.outcome).toBe('allow');
    const detail = record.detail as LimitDecision;
    expect(detail).toMatchObject({ policy: 'per-client-read', remaining: 9, limit: 10, window: 1, profile: 'default' });
    expect(detail.key).toMatch(/^[A-Za-z0-9_-]{16}$/);
    expect(JSON.stringify(first.decisions)).not.toContain('203.0.113.7');

    expect(admitted(run, 9, () => makeCtx())).toBe(9);
    const denied = makeCtx();
    const error = run(denied);
    expect(error).toBeInstanceOf(BulwarkError);
    expect(error!.code).toBe('ratelimit.exceeded');
    expect(error!.status).toBe(429);
    expect(error!.headers).toEqual({
      'retry-after': '1',
      'ratelimit-policy': '"per-client-read";q=10;w=1',
      ratelimit: '"per-client-read";r=0;t=1',
    });
    expect(JSON.stringify(error!.headers)).not.toContain('203.0.113');
    expect(denied.decisions[0]).toMatchObject({ stage: 'ratelimit', outcome: 'deny', code: 'ratelimit.exceeded' });
    expect((denied.decisions[0]!.detail as LimitDecision).key).toBe(detail.key);

    // One token back after 100 ms.
    clock.advance(100);
    expect(run(makeCtx())).toBeNull();
    expect(run(makeCtx())).not.toBeNull();
  });

  it('Retry-After is whole seconds, at least 1, and covers the wait', () => {
    const { run } = setup({ policies: [{ id: 'slow', rate: 1, per: '1m', burst: 1 }] }, ['slow']);
    expect(run(makeCtx())).toBeNull();
    const error = run(makeCtx())!;
    expect(error.headers!['retry-after']).toBe('60');
    expect(error.headers!['ratelimit-policy']).toBe('"slow";q=1;w=60');
    expect(error.headers!['ratelimit']).toBe('"slow";r=0;t=60');
  });

  it('keeps accuracy over time windows: burst + rate × window under constant overload', () => {
    const { run, clock } = setup({ policies: [{ id: 'p', rate: 50, per: '1s', burst: 20 }] }, ['p']);
    let ok = 0;
    for (let ms = 0; ms < 10_000; ms++) {
      // 2000 requests/s offered
      if (run(makeCtx()) === null) ok++;
      if (run(makeCtx()) === null) ok++;
      clock.advance(1);
    }
    expect(ok).toBe(20 + 499); // burst, then every 20 ms after the first 20 ms: 500 in 10 s minus the one at exactly 10 000
  });

  it('spoofed X-Forwarded-For from an untrusted peer does not change the bucket', () => {
    const clientAddress = clientAddressFrom(new TrustedProxies(['10.0.0.0/8']));
    const { run } = setup(READ, ['per-client-read'], clientAddress);
    let n = 0;
    const spoofed = () => makeCtx({ peer: '203.0.113.7', headers: { 'x-forwarded-for': `198.51.100.${n++ % 250}` } });
    expect(admitted(run, 30, spoofed)).toBe(10);
    // Through a trusted proxy, the forwarded address is the client: separate buckets.
    let m = 0;
    const proxied = () => makeCtx({ peer: '10.1.2.3', headers: { 'x-forwarded-for': `198.51.100.${m++ % 3}` } });
    expect(admitted(run, 30, proxied)).toBe(30);
    // A client behind the trusted proxy cannot prepend a fake hop either.
    const prepended = () => makeCtx({ peer: '10.1.2.3', headers: { 'x-forwarded-for': `1.2.3.${m++ % 250}, 198.51.100.200` } });
    expect(admitted(run, 30, prepended)).toBe(10);
  });

  it('QoS tiers: a verified claim selects the limits; unknown tiers get the default', () => {
    const config: RateLimitsConfig = {
      policies: [
        {
          id: 'api',
          rate: 5,
          burst: 5,
          key: ['subject'],
          tiers: { claim: 'plan.tier', limits: { gold: { rate: 100, burst: 50 }, silver: { rate: 20 } }, default: 'silver' },
        },
      ],
    };
    const { run } = setup(config, ['api']);
    const as = (subject: string, tier?: unknown) => () =>
      makeCtx({ identity: { subject, claims: tier === undefined ? {} : { plan: { tier } } } });
    expect(admitted(run, 100, as('g', 'gold'))).toBe(50);
    expect(admitted(run, 100, as('s', 'silver'))).toBe(20); // burst = rate when only rate is overridden
    expect(admitted(run, 100, as('x', 'platinum'))).toBe(20); // unlisted → default tier
    expect(admitted(run, 100, as('n'))).toBe(20);
    const anonymous = () => makeCtx({ identity: null });
    expect(admitted(run, 100, anonymous)).toBe(20); // no identity: one shared bucket ('' subject) at the default tier
    const ctx = as('g2', 'gold')();
    run(ctx);
    expect(ctx.decisions[0]!.detail).toMatchObject({ profile: 'tier:gold', limit: 100 });
    expect(rateLimitHeaders(ctx)!['ratelimit-policy']).toBe('"api";q=100;w=1');
  });

  it('tenant overrides win over tiers', () => {
    const config: RateLimitsConfig = {
      policies: [
        {
          id: 'api',
          rate: 5,
          key: ['tenant'],
          tiers: { claim: 'tier', limits: { gold: { rate: 10 } } },
          overrides: { tenants: { acme: { rate: 500, burst: 40 } } },
        },
      ],
    };
    const { run } = setup(config, ['api']);
    const ctxFor = (tenant: string) => () => makeCtx({ identity: { tenant, claims: { tier: 'gold' } } });
    expect(admitted(run, 100, ctxFor('acme'))).toBe(40);
    expect(admitted(run, 100, ctxFor('globex'))).toBe(10);
  });

  it('shadow mode counts and records shadow_deny but never denies, and stays out of client headers', () => {
    const config: RateLimitsConfig = {
      policies: [
        { id: 'enforced', rate: 100, burst: 100 },
        { id: 'trial', rate: 2, burst: 2, mode: 'shadow' },
      ],
    };
    const { run, limits } = setup(config, ['enforced', 'trial']);
    expect(admitted(run, 5, () => makeCtx())).toBe(5);
    const ctx = makeCtx();
    expect(run(ctx)).toBeNull();
    expect(ctx.decisions.map((d) => `${(d.detail as LimitDecision).policy}:${d.outcome}:${d.code}`)).toEqual([
      'enforced:allow:ratelimit.ok',
      'trial:shadow_deny:ratelimit.exceeded',
    ]);
    expect(rateLimitHeaders(ctx)).toEqual({
      'ratelimit-policy': '"enforced";q=100;w=1',
      ratelimit: '"enforced";r=94;t=1',
    });
    expect(limits.stats().policies['trial']).toMatchObject({ allowed: 2, shadowDenied: 4, denied: 0 });
  });

  it('several policies: all must admit; a denial refunds what earlier ones took', () => {
    const config: RateLimitsConfig = {
      policies: [
        { id: 'per-client', rate: 5, burst: 5, key: ['client_ip'] },
        { id: 'route-total', rate: 3, burst: 3, key: ['route'] },
      ],
    };
    const { run } = setup(config, ['per-client', 'route-total']);
    expect(admitted(run, 10, () => makeCtx({ peer: '192.0.2.1' }))).toBe(3);
    const ctx = makeCtx({ peer: '192.0.2.1' });
    const error = run(ctx)!;
    expect(error.code).toBe('ratelimit.exceeded');
    // per-client took its token (1 left at that moment) before route-total denied…
    expect(ctx.decisions.map((d) => (d.detail as LimitDecision).remaining)).toEqual([1, 0]);
    // …and the headers list both policies.
    expect(error.headers!['ratelimit-policy']).toBe('"per-client";q=5;w=1, "route-total";q=3;w=1');
    expect(error.headers!['ratelimit']).toBe('"per-client";r=1;t=1, "route-total";r=0;t=1');
    // The 8 denied requests gave their per-client tokens back: on another route (fresh route-total
    // bucket) this client still has the 2 tokens it did not spend on admitted requests.
    expect(admitted(run, 10, () => makeCtx({ peer: '192.0.2.1', route: 'other' }))).toBe(2);
  });

  it('later policies are not consulted after a denial', () => {
    const config: RateLimitsConfig = {
      policies: [
        { id: 'tiny', rate: 1, burst: 1 },
        { id: 'other', rate: 100, burst: 100 },
      ],
    };
    const { run } = setup(config, ['tiny', 'other']);
    run(makeCtx());
    const ctx = makeCtx();
    expect(run(ctx)!.code).toBe('ratelimit.exceeded');
    expect(ctx.decisions).toHaveLength(1);
  });

  it('concurrency: slots are held until releaseLimits, released once, and freed when a rate limit denies', () => {
    const config: RateLimitsConfig = {
      policies: [
        { id: 'rate', rate: 3, burst: 3 },
        { id: 'inflight', concurrency: 2, key: ['tenant'] },
      ],
    };
    const { run, clock } = setup(config, ['inflight', 'rate']); // concurrency runs after rate whatever the order
    const a = makeCtx({ identity: { tenant: 't' } });
    const b = makeCtx({ identity: { tenant: 't' } });
    expect(run(a)).toBeNull();
    expect(a.decisions.map((d) => (d.detail as LimitDecision).policy)).toEqual(['rate', 'inflight']);
    expect(run(b)).toBeNull();
    const c = makeCtx({ identity: { tenant: 't' } });
    const denied = run(c)!;
    expect(denied.code).toBe('ratelimit.concurrency');
    expect(denied.status).toBe(429);
    expect(denied.headers!['retry-after']).toBe('1');
    // The concurrency denial refunded c's rate token: one left.
    expect((c.decisions[0]!.detail as LimitDecision).remaining).toBe(0);
    releaseLimits(a);
    releaseLimits(a); // completion + abort both firing: counts once
    clock.advance(1000);
    const d = makeCtx({ identity: { tenant: 't' } });
    expect(run(d)).toBeNull();
    expect(run(makeCtx({ identity: { tenant: 't' } }))!.code).toBe('ratelimit.concurrency');
    releaseLimits(b);
    releaseLimits(d);
    expect(run(makeCtx({ identity: { tenant: 't' } }))).toBeNull();
    // The detail carries the release too, hidden from serialization.
    const held = makeCtx({ identity: { tenant: 'u' } });
    expect(run(held)).toBeNull();
    const detail = held.decisions[1]!.detail as LimitDecision;
    expect(typeof detail.release).toBe('function');
    expect(JSON.stringify(detail)).not.toContain('release');
    expect(() => structuredClone(detail)).not.toThrow();
  });

  it('method descriptor uses the gRPC method for gRPC requests', () => {
    const { run } = setup({ policies: [{ id: 'per-method', rate: 2, burst: 2, key: ['method'] }] }, ['per-method']);
    const grpc = (path: string) => () =>
      makeCtx({ method: 'POST', path, protocol: 'h2', headers: { 'content-type': 'application/grpc+proto' } });
    expect(admitted(run, 5, grpc('/user.Users/GetProfile'))).toBe(2);
    expect(admitted(run, 5, grpc('/order.Orders/Create'))).toBe(2);
    expect(admitted(run, 5, () => makeCtx({ method: 'POST' }))).toBe(2);
  });

  it('header and claim descriptors; a missing value shares one bucket instead of skipping the limit', () => {
    const config: RateLimitsConfig = { policies: [{ id: 'k', rate: 2, burst: 2, key: ['header:X-Api-Key', 'claim:org.id'] }] };
    const { run } = setup(config, ['k']);
    expect(admitted(run, 5, () => makeCtx({ headers: { 'x-api-key': 'a' }, identity: { claims: { org: { id: 1 } } } }))).toBe(2);
    expect(admitted(run, 5, () => makeCtx({ headers: { 'x-api-key': 'a' }, identity: { claims: { org: { id: 2 } } } }))).toBe(2);
    expect(admitted(run, 5, () => makeCtx())).toBe(2);
    expect(admitted(run, 5, () => makeCtx({ headers: { 'x-api-key': '' } }))).toBe(0);
  });

  it('a reload keeps the buckets (no refill on config change)', () => {
    const clock = fakeClock();
    const first = compileLimits(READ, { clock: clock.clock });
    const stage1 = createLimitStage(['per-client-read'], first, direct)!;
    for (let i = 0; i < 10; i++) stage1.run(makeCtx());
    const changed: RateLimitsConfig = { policies: [{ ...READ.policies![0]!, rate: 20, burst: 20 }] };
    const second = compileLimits(changed, { clock: clock.clock, previous: first });
    open.push(first, second);
    const stage2 = createLimitStage(['per-client-read'], second, direct)!;
    const run = () => {
      let ok = 0;
      for (let i = 0; i < 30; i++) if (stage2.run(makeCtx()) === null) ok++;
      return ok;
    };
    // The state is debt in time (TAT): 10 requests at 100 ms each = 1 s of debt, which is the whole
    // capacity of the new 20/s burst 20 bucket. Nothing is handed out fresh by the reload…
    expect(run()).toBe(0);
    // …and refill continues at the new rate.
    clock.advance(500);
    expect(run()).toBe(10);
  });
});

describe('global caps', () => {
  it('splits caps between workers', () => {
    const limits = compileLimits({ global: { maxConnections: 10_000, maxConcurrentStreams: 5 } }, { workers: 2 });
    open.push(limits);
    expect(limits.global).toEqual({ maxConnections: 5000, maxConcurrentStreams: 3 });
    const none = compileLimits({}, { workers: 2 });
    open.push(none);
    expect(none.global).toEqual({ maxConnections: null, maxConcurrentStreams: null });
  });
});

describe('concurrency slots over real sockets', () => {
  let server: Server | null = null;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = null;
  });

  it('a client abort and an upstream error both free the slot', async () => {
    const limits = compileLimits({ policies: [{ id: 'one-at-a-time', concurrency: 1 }] });
    open.push(limits);
    const stage = createLimitStage(['one-at-a-time'], limits, direct)!;
    const parked: { fail: () => void }[] = [];
    server = createServer((req, res) => {
      const ctx = makeCtx({ peer: req.socket.remoteAddress ?? '' });
      const denial = stage.run(ctx) as BulwarkError | null;
      if (denial !== null) {
        res.writeHead(denial.status, denial.headers).end(denial.code);
        return;
      }
      // The gateway's completion hook: whatever ends the exchange (finish, abort, error) releases.
      res.once('close', () => releaseLimits(ctx));
      if (req.url === '/ok') res.end('ok');
      // else: an upstream that hangs, then fails
      else parked.push({ fail: () => res.destroy(new Error('upstream reset')) });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const get = (path: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const r = request({ port, path, host: '127.0.0.1', agent: false }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode!, body }));
        });
        r.on('error', reject);
        r.end();
      });

    expect((await get('/ok')).status).toBe(200);
    // A request holds the slot; a second is refused.
    const aborted = request({ port, path: '/hang', host: '127.0.0.1', agent: false });
    aborted.on('error', () => {});
    aborted.end();
    while (parked.length === 0) await sleep(5);
    expect(await get('/ok')).toEqual({ status: 429, body: 'ratelimit.concurrency' });
    // Client abort frees it.
    aborted.destroy();
    await sleep(50);
    expect((await get('/ok')).status).toBe(200);
    // Upstream error frees it too.
    const failing = request({ port, path: '/hang', host: '127.0.0.1', agent: false });
    failing.on('error', () => {});
    failing.end();
    while (parked.length < 2) await sleep(5);
    expect((await get('/ok')).status).toBe(429);
    parked[1]!.fail();
    await sleep(50);
    expect((await get('/ok')).status).toBe(200);
  });
});

describe('what clients see and what keys them', () => {
  it('a shadow policy never appears in RateLimit headers, admitted or not', () => {
    const { run } = setup(
      {
        policies: [
          { id: 'tryout', rate: 2, per: '1s', key: ['route'], mode: 'shadow' },
          { id: 'enforced', rate: 3, per: '1s', key: ['client_ip'] },
        ],
      } as RateLimitsConfig,
      ['tryout', 'enforced'],
    );
    for (let i = 0; i < 3; i++) {
      const ctx = makeCtx();
      expect(run(ctx)).toBeNull();
      const headers = rateLimitHeaders(ctx)!;
      expect([i, headers['ratelimit-policy']]).toEqual([i, '"enforced";q=3;w=1']);
    }
  });

  it('`method` is the gRPC method only for a real gRPC call: a plain request claiming application/grpc keys by its verb', () => {
    const { run } = setup({ policies: [{ id: 'm', rate: 2, per: '1s', key: ['method'] }] } as RateLimitsConfig, ['m']);
    const statuses = Array.from({ length: 5 }, (_, i) =>
      run(makeCtx({ path: `/invented/${i}`, headers: { host: 'example.test', 'content-type': 'application/grpc' } })),
    ).map((d) => (d === null ? 'ok' : d.code));
    expect(statuses).toEqual(['ok', 'ok', 'ratelimit.exceeded', 'ratelimit.exceeded', 'ratelimit.exceeded']);
  });
});
