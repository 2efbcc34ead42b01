import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { MemoryConcurrencyStore, MemoryGcraStore } from '../../src/limits/memory-store.js';

const T = 100; // 10/s
const CAP = 10 * T; // burst 10

describe('MemoryGcraStore', () => {
  it('admits burst + rate × window over a window of constant overload (exact)', () => {
    const store = new MemoryGcraStore();
    let admitted = 0;
    // 1000 requests/s offered for 10 s against 10/s burst 10.
    for (let now = 0; now < 10_000; now += 1) if (store.take('k', now, T, CAP)) admitted++;
    expect(admitted).toBe(10 + 99); // burst, then one every 100 ms: at 1000, 1100, …, 9900 ms → 99 (the last one at 10 000 is outside)
  });

  it('keeps keys independent', () => {
    const store = new MemoryGcraStore();
    for (let i = 0; i < 10; i++) expect(store.take('a', 0, T, CAP)).toBe(true);
    expect(store.take('a', 0, T, CAP)).toBe(false);
    expect(store.take('b', 0, T, CAP)).toBe(true);
  });

  it('stays within maxKeys for a million distinct keys, quickly', () => {
    // A real GC before each heap reading: the million key strings are garbage, not growth.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    gc();
    const heapBefore = process.memoryUsage().heapUsed;
    const store = new MemoryGcraStore({ maxKeys: 50_000, ghostSlots: 65_536 });
    const started = performance.now();
    for (let i = 0; i < 1_000_000; i++) {
      store.take(`client|${i}`, i * 0.001, T, CAP);
      if (store.size > 50_000) throw new Error(`bound exceeded at ${i}: ${store.size}`);
    }
    const elapsed = performance.now() - started;
    expect(store.size).toBe(50_000);
    expect(store.evictions).toBe(1_000_000 - 50_000);
    // 50k entries of short keys plus a 512 KB ghost table; the heap must not have grown with the million.
    gc();
    const grown = process.memoryUsage().heapUsed - heapBefore;
    expect(grown).toBeLessThan(16 * 1024 * 1024);
    expect(elapsed).toBeLessThan(30_000); // ≈ 2 s on an idle 2-core VM; generous for a busy one
  }, 60_000);

  it('eviction does not refill: an evicted drained key comes back drained', () => {
    const store = new MemoryGcraStore({ maxKeys: 16, ghostSlots: 1024 });
    // Drain the victim.
    for (let i = 0; i < 10; i++) expect(store.take('victim', 0, T, CAP)).toBe(true);
    expect(store.take('victim', 0, T, CAP)).toBe(false);
    // Flood the table with fresh, hot keys until the victim is gone.
    for (let i = 0; i < 200; i++) store.take(`flood-${i}`, 1, T, CAP);
    expect(store.size).toBe(16);
    expect(store.ghosted).toBeGreaterThan(0);
    // Still drained: the ghost table kept its debt.
    expect(store.take('victim', 2, T, CAP)).toBe(false);
    // …and it refills at the normal rate, not sooner.
    expect(store.take('victim', 99, T, CAP)).toBe(false);
    expect(store.take('victim', 100, T, CAP)).toBe(true);
  });

  it('evicts full buckets before ones carrying debt', () => {
    const store = new MemoryGcraStore({ maxKeys: 16, ghostSlots: 1024 });
    for (let i = 0; i < 10; i++) store.take('hot', 0, T, CAP); // drained at t=0: debt until 1000
    for (let i = 0; i < 15; i++) store.take(`idle-${i}`, 0, 1, 1); // full again at t=1
    // At t=500 the idle keys are full; new keys must push them out, not the hot one.
    for (let i = 0; i < 15; i++) store.take(`new-${i}`, 500, 1, 1);
    expect(store.ghosted).toBe(0);
    expect(store.peek('hot', 500)).toBeCloseTo(1000);
    expect(store.take('hot', 500, T, CAP)).toBe(true); // 5 tokens back by t=500, not 10
    let more = 0;
    while (store.take('hot', 500, T, CAP)) more++;
    expect(more).toBe(4);
  });

  it('a ghost collision only ever makes a new key start with less', () => {
    const store = new MemoryGcraStore({ maxKeys: 16, ghostSlots: 1024 });
    for (let i = 0; i < 5000; i++) for (let j = 0; j < 10; j++) store.take(`k${i}`, 0, T, CAP);
    // Any key now either starts full or partly drained; never more than the burst.
    let total = 0;
    for (let i = 0; i < 30; i++) total += store.take('fresh', 0, T, CAP) ? 1 : 0;
    expect(total).toBeLessThanOrEqual(10);
  });

  it('credit (refund) gives a token back, never beyond full', () => {
    const store = new MemoryGcraStore();
    for (let i = 0; i < 10; i++) store.take('k', 0, T, CAP);
    expect(store.take('k', 0, T, CAP)).toBe(false);
    store.credit('k', 0, T);
    expect(store.take('k', 0, T, CAP)).toBe(true);
    store.credit('k', 5000, T, 100);
    expect(store.peek('k', 5000)).toBe(5000);
  });
});

describe('MemoryConcurrencyStore', () => {
  it('counts in-flight per key and forgets keys at zero', () => {
    const store = new MemoryConcurrencyStore(4);
    expect(store.acquire('a', 2)).toBe(1);
    expect(store.acquire('a', 2)).toBe(2);
    expect(store.acquire('a', 2)).toBe(-1);
    store.release('a');
    expect(store.acquire('a', 2)).toBe(2);
    store.release('a');
    store.release('a');
    expect(store.size).toBe(0);
    store.release('a'); // extra releases never go negative
    expect(store.count('a')).toBe(0);
  });

  it('refuses new keys rather than forget in-flight counts when full', () => {
    const store = new MemoryConcurrencyStore(2);
    store.acquire('a', 5);
    store.acquire('b', 5);
    expect(store.acquire('c', 5)).toBe(-2);
    expect(store.acquire('a', 5)).toBe(2);
  });
});
