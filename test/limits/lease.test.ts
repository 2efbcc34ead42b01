import { afterEach, describe, expect, it } from 'vitest';
import { MemoryBackend, StoreGuard, type BucketBackend } from '../../src/limits/backend.js';
import { gcraAvailable } from '../../src/limits/gcra.js';
import { LeasedRateLimiter, type LeaseOptions } from '../../src/limits/lease.js';
import { MemoryGcraStore } from '../../src/limits/memory-store.js';
import type { Profile, RateOutcome } from '../../src/limits/profile.js';
import { fakeClock, sleep } from './helpers.js';

// 10/s (T = 100 ms), burst 20; the share fields as compileLimits would set them for 2 instances.
const profile: Profile = {
  name: 'default',
  rate: 10,
  periodMs: 1000,
  burst: 20,
  emission: 100,
  capacity: 2000,
  concurrency: 1,
  shareEmission: 200,
  shareCapacity: 2000,
  shareConcurrency: 1,
  quota: 10,
  window: 1,
  policyItem: '"p";q=10;w=1',
};
const options: LeaseOptions = { enabled: true, maxBatch: 10, ttlMs: 20, holdMs: 250, instances: 2, maxEntries: 100 };

let limiters: LeasedRateLimiter[] = [];
afterEach(async () => {
  await Promise.all(limiters.map((l) => l.close()));
  limiters = [];
});

function setup(backend?: BucketBackend) {
  const clock = fakeClock();
  const memory = new MemoryBackend({ clock: clock.clock });
  const guard = new StoreGuard(backend ?? memory, { failures: 3, resetMs: 100, timeoutMs: 50, clock: clock.clock });
  const limiter = new LeasedRateLimiter(guard, new MemoryGcraStore(), options, (k) => k, clock.clock);
  limiters.push(limiter);
  const take = async () => (await limiter.take('k', profile, true, clock.now)) as RateOutcome;
  const shared = () => gcraAvailable(memory.buckets.peek('k', clock.now), clock.now, profile.emission, profile.capacity);
  return { clock, memory, guard, limiter, take, shared };
}

describe('LeasedRateLimiter', () => {
  it('takes a fair first slice, serves from it locally, and refills in batches', async () => {
    const { take, shared, guard, limiter, clock } = setup();
    expect((await take()).allowed).toBe(true);
    // First batch: burst / (2 × instances) = 5 tokens; 4 left locally.
    expect(shared()).toBe(15);
    for (let i = 0; i < 4; i++) {
      const o = limiter.take('k', profile, true, clock.now);
      expect(o).not.toBeInstanceOf(Promise); // served from the lease, synchronously
      expect((o as RateOutcome).allowed).toBe(true);
    }
    // One call for the first slice, one background refill when the lease ran low (1 of 5 left).
    expect(guard.calls).toBe(2);
    await sleep(1);
    expect(shared()).toBeLessThan(15);
  });

  it('gives unused leased tokens back when the lease expires', async () => {
    const { take, shared, clock, guard } = setup();
    await take();
    expect(shared()).toBe(15);
    clock.advance(options.ttlMs + 1);
    await sleep(options.ttlMs * 3); // the sweep runs on a real timer
    expect(shared()).toBe(19); // 4 unused tokens returned, the spent one still counts
    expect(guard.calls).toBe(2);
  });

  it('the token that empties lease and shared bucket says when the next one comes (RateLimit `t`), as the refusal after it', async () => {
    const { take } = setup();
    const outcomes: RateOutcome[] = [];
    for (let i = 0; i < 22; i++) outcomes.push(await take());
    const admitted = outcomes.filter((o) => o.allowed);
    expect(admitted).toHaveLength(20);
    const last = admitted.at(-1)!;
    expect(last.remaining).toBe(0);
    // No time passed (fake clock): the next token is one emission interval away.
    expect(last.retryAfterMs).toBe(profile.emission);
    expect(outcomes[20]!.allowed).toBe(false);
    expect(outcomes[20]!.retryAfterMs).toBeGreaterThanOrEqual(profile.emission);
    expect(outcomes[20]!.retryAfterMs).toBeLessThanOrEqual(2 * profile.emission);
  });

  it('a refund goes back to the local lease, free', async () => {
    const { take, limiter, clock, guard } = setup();
    const first = await take();
    limiter.refund('k', profile, first, clock.now);
    // 4 left + the refunded one: 5 more from the lease (the refill fetch on the way is a prefetch).
    for (let i = 0; i < 5; i++) expect((limiter.take('k', profile, true, clock.now) as RateOutcome).allowed).toBe(true);
    expect(guard.calls).toBeLessThanOrEqual(2);
  });

  it('when the store fails: the local share decides, and the breaker stops calling after `failures`', async () => {
    let calls = 0;
    const broken: BucketBackend = {
      kind: 'redis',
      ready: true,
      lease: () => {
        calls++;
        return Promise.reject(new Error('boom'));
      },
      acquire: () => Promise.reject(new Error('boom')),
      release: () => {},
      ping: () => Promise.reject(new Error('boom')),
      close: () => Promise.resolve(),
    };
    const { take, guard, clock } = setup(broken);
    const outcomes: RateOutcome[] = [];
    for (let i = 0; i < 30; i++) outcomes.push(await take());
    expect(calls).toBe(3);
    expect(guard.state).toBe('open');
    expect(outcomes.every((o) => o.via === 1)).toBe(true);
    // Share for 2 instances: burst ceil(20 / 2) = 10.
    expect(outcomes.filter((o) => o.allowed)).toHaveLength(10);
    // The last admitted token says how long until the next one (RateLimit `t`), as the refusals after it do.
    const last = outcomes.filter((o) => o.allowed).at(-1)!;
    expect(last.remaining).toBe(0);
    expect(last.retryAfterMs).toBeGreaterThan(0);
    expect(last.retryAfterMs).toBe(outcomes[10]!.retryAfterMs);
    // After resetMs a background probe (not a request) tries again; it fails, the breaker stays open.
    clock.advance(150);
    await take();
    await sleep(5);
    expect(guard.state).toBe('open');
    expect(calls).toBe(3);
  });

  it('fails closed when told to', async () => {
    const broken: BucketBackend = {
      kind: 'redis',
      ready: false, // disconnected: not even tried
      lease: () => Promise.reject(new Error('unreachable')),
      acquire: () => Promise.reject(new Error('unreachable')),
      release: () => {},
      ping: () => Promise.reject(new Error('unreachable')),
      close: () => Promise.resolve(),
    };
    const { limiter, clock } = setup(broken);
    const o = limiter.take('k', profile, false, clock.now) as RateOutcome;
    expect(o).toMatchObject({ allowed: false, via: 2 });
  });
});
