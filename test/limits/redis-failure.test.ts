import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RequestContext } from '../../src/core/context.js';
import { compileLimits, type CompiledLimits } from '../../src/limits/compile.js';
import type { RateLimitsConfig } from '../../src/limits/schema.js';
import { createLimitStage } from '../../src/limits/stage.js';
import { drive, freePort, makeCtx, OwnRedis, sleep } from './helpers.js';

// A redis-server of our own, so we can kill, restart and freeze it without disturbing anyone.
const direct = (ctx: RequestContext) => ctx.peerAddress;
let server: OwnRedis;
let open: CompiledLimits[] = [];
const TIMEOUT_MS = 50;
// A decision may wait for one store call at most (≈ 50 ms measured on an idle machine); the budget adds
// room for scheduling stalls of a busy 2-core machine, which delay every callback alike. Without the
// guard, the ioredis backstop timeout would show up here as ≥ 1000 ms.
const LATENCY_BUDGET_MS = TIMEOUT_MS + 250;

beforeAll(async () => {
  server = new OwnRedis(await freePort());
  await server.start();
});
afterEach(async () => {
  await Promise.all(open.map((l) => l.close()));
  open = [];
  await server.stop();
  await server.start();
});
afterAll(async () => {
  await server.stop();
});

function config(onStoreFailure: 'open' | 'closed', extra: object = {}): RateLimitsConfig {
  return {
    stores: {
      shared: {
        redis: { url: server.url, timeoutMs: TIMEOUT_MS, instances: 2, breaker: { failures: 3, resetMs: 300 }, ...extra },
      },
    },
    policies: [{ id: 'p', store: 'shared', rate: 200, burst: 50, onStoreFailure }],
  };
}

async function setup(c: RateLimitsConfig) {
  const limits = compileLimits(c);
  open.push(limits);
  expect(await limits.ready()).toBe(true);
  const stage = createLimitStage(['p'], limits, direct)!;
  return { limits, run: () => stage.run(makeCtx()) };
}

async function waitFor(what: string, predicate: () => boolean, ms = 5000): Promise<number> {
  const t0 = performance.now();
  while (!predicate()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
  return performance.now() - t0;
}

describe('Redis failure modes (own redis-server)', () => {
  it('open: Redis killed mid-run → local share limit, no added latency; recovers when it returns', async () => {
    const { limits, run } = await setup(config('open'));
    const healthy = await drive(run, 1000, 1000);
    expect(healthy.admitted).toBeGreaterThan(200);
    expect(healthy.admitted).toBeLessThanOrEqual(260);

    await server.stop();
    const down = await drive(run, 1000, 1000);
    // This instance's share: 200/2 = 100/s, burst 25 (plus whatever its lease still held).
    expect(down.denied['ratelimit.store_unavailable']).toBeUndefined();
    expect(down.admitted).toBeGreaterThan(60);
    expect(down.admitted).toBeLessThan(180);
    expect(down.maxLatencyMs).toBeLessThan(LATENCY_BUDGET_MS);
    expect(limits.stats().policies['p']!.degraded).toBeGreaterThan(0);

    await server.start();
    const t0 = performance.now();
    expect(await limits.ready(5000)).toBe(true); // ioredis reconnects in the background
    const recoveredIn = performance.now() - t0;
    const degradedBefore = limits.stats().policies['p']!.degraded;
    const callsBefore = limits.stats().stores['shared']!.calls;
    const back = await drive(run, 1000, 1000);
    console.log(
      `[limits] open mode: healthy ${healthy.admitted}/s, Redis down ${down.admitted}/s (max decision ${down.maxLatencyMs.toFixed(1)} ms), ` +
        `recovered in ${recoveredIn.toFixed(0)} ms, back ${back.admitted}/s`,
    );
    // The store decides again (a stray timeout on a busy machine may still send a few to the fallback).
    expect(limits.stats().stores['shared']!.calls).toBeGreaterThan(callsBefore);
    expect(limits.stats().policies['p']!.degraded - degradedBefore).toBeLessThan(back.offered / 10);
    expect(back.admitted).toBeGreaterThan(200);
    expect(back.admitted).toBeLessThanOrEqual(260);
  });

  it('tells its owner once when a shared store goes down and once when it is back (the gateway logs both)', async () => {
    const events: string[] = [];
    const limits = compileLimits(config('closed', { lease: { enabled: false } }), {
      onStoreBreaker: (store, down) => events.push(`${store}:${down ? 'down' : 'up'}`),
    });
    open.push(limits);
    expect(await limits.ready()).toBe(true);
    const stage = createLimitStage(['p'], limits, direct)!;
    const run = () => stage.run(makeCtx());
    expect(await run()).toBeNull();
    expect(limits.stats().stores['shared']!.up).toBe(true);
    await server.stop();
    await drive(run, 300, 300);
    expect(limits.stats().stores['shared']!.up).toBe(false);
    expect(events).toEqual(['shared:down']);
    await server.start();
    expect(await limits.ready(5000)).toBe(true);
    await run();
    expect(limits.stats().stores['shared']!.up).toBe(true);
    expect(events).toEqual(['shared:down', 'shared:up']);
  });

  it('closed: Redis killed → 503 ratelimit.store_unavailable at once; admitted again when it returns', async () => {
    const { run } = await setup(config('closed', { lease: { enabled: false } }));
    expect(await run()).toBeNull();
    await server.stop();
    const down = await drive(run, 500, 500);
    expect(down.admitted).toBe(0);
    expect(down.denied['ratelimit.store_unavailable']).toBe(down.offered);
    expect(down.maxLatencyMs).toBeLessThan(LATENCY_BUDGET_MS);
    const denial = (await run()) as { status: number; headers: Record<string, string> };
    expect(denial.status).toBe(503);
    expect(denial.headers['retry-after']).toBe('1');
    await server.start();
    let admitted = false;
    const t0 = performance.now();
    while (!admitted && performance.now() - t0 < 5000) {
      admitted = (await run()) === null;
      if (!admitted) await sleep(20);
    }
    expect(admitted).toBe(true);
  });

  it('a hung Redis (SIGSTOP) costs at most the timeout, then the breaker opens; recovery by probe', async () => {
    const { limits, run } = await setup(config('open', { lease: { enabled: false } }));
    expect(await run()).toBeNull();
    server.pause();
    try {
      const hung = await drive(run, 500, 1000);
      const stats = limits.stats().stores['shared']!;
      console.log(
        `[limits] hung Redis: ${hung.offered} decisions, max ${hung.maxLatencyMs.toFixed(1)} ms, ${stats.failures} timed-out calls, breaker opened ${stats.breakerOpened}×`,
      );
      expect(hung.maxLatencyMs).toBeLessThan(LATENCY_BUDGET_MS);
      expect(stats.breakerOpened).toBeGreaterThanOrEqual(1);
      // Only a handful of requests ever waited: the breaker's threshold, plus one per probe.
      expect(stats.failures).toBeLessThan(20);
      expect(hung.admitted).toBeGreaterThan(0); // the local share kept serving
    } finally {
      server.resume();
    }
    // Probes are started by traffic (no timers while idle): keep a trickle going.
    await waitFor('breaker closed', () => {
      void run();
      return limits.stats().stores['shared']!.breaker === 'closed';
    });
    const degraded = limits.stats().policies['p']!.degraded;
    const after = await drive(run, 100, 300);
    expect(limits.stats().policies['p']!.degraded - degraded).toBeLessThan(after.offered / 10);
  });

  it('closed mode concurrency: 503 while Redis is down', async () => {
    const c: RateLimitsConfig = {
      stores: { shared: { redis: { url: server.url, timeoutMs: TIMEOUT_MS } } },
      policies: [{ id: 'p', store: 'shared', concurrency: 5, onStoreFailure: 'closed' }],
    };
    const { run } = await setup(c);
    expect(await run()).toBeNull();
    await server.stop();
    const t0 = performance.now();
    const denial = (await run()) as { code: string };
    expect(performance.now() - t0).toBeLessThan(LATENCY_BUDGET_MS);
    expect(denial.code).toBe('ratelimit.store_unavailable');
  });

  it('NOSCRIPT (script cache flushed) reloads the script and retries, invisibly', async () => {
    const { limits, run } = await setup(config('closed', { lease: { enabled: false } }));
    expect(await run()).toBeNull();
    const admin = new Redis(server.url);
    await admin.script('FLUSH');
    admin.disconnect();
    expect(await run()).toBeNull();
    expect(limits.stats().stores['shared']!.failures).toBe(0);
  });
});
