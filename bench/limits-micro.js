#!/usr/bin/env node
// Micro-benchmark of the in-memory limiter's hot path, on the compiled code:
//
//   npx tsc -p tsconfig.build.json && node bench/limits-micro.js
//   LIMITS_BENCH_ITERATIONS=5000000 node bench/limits-micro.js --json
//
// Four measurements, each after a warm-up, as the best of 5 rounds (the least disturbed by
// the machine's other work):
//   store.take       MemoryGcraStore.take on 10 000 hot keys: the decision itself (target ≤ 1 µs)
//   store.take (1M)  the same over 1 000 000 distinct keys with maxKeys 100 000: eviction + ghost path
//   stage (1 policy) the whole limit stage for `key: [route, client_ip]`: key build, profile, decision,
//                    hashed key label, DecisionRecord
//   stage (2 + conc) two token buckets and one concurrency limit, plus releaseLimits
import { performance } from 'node:perf_hooks';
import { RequestContext } from '../dist/core/context.js';
import { compileLimits, createLimitStage, MemoryGcraStore, releaseLimits } from '../dist/limits/index.js';

const N = Number(process.env.LIMITS_BENCH_ITERATIONS ?? 2_000_000);
const ROUNDS = 5;
const json = process.argv.includes('--json');

function best(name, iterations, fn) {
  fn(Math.min(iterations, 200_000)); // warm-up: let the JIT settle
  let bestNs = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now();
    fn(iterations);
    const ns = ((performance.now() - t0) * 1e6) / iterations;
    if (ns < bestNs) bestNs = ns;
  }
  return { name, iterations, nsPerOp: Math.round(bestNs * 10) / 10 };
}

const results = [];

{
  const store = new MemoryGcraStore({ maxKeys: 100_000 });
  const keys = Array.from({ length: 10_000 }, (_, i) => `per-client-read|12:/api/limited|10:10.0.${i >> 8}.${i & 255}`);
  // 1000 rps per key, burst 1000: mostly admitted, as on a healthy route.
  const emission = 1;
  const capacity = 1000;
  results.push(
    best('store.take', N, (n) => {
      let now = performance.now();
      for (let i = 0; i < n; i++) store.take(keys[i % 10_000], (now += 0.0001), emission, capacity);
    }),
  );
}

{
  const store = new MemoryGcraStore({ maxKeys: 100_000 });
  const keys = Array.from({ length: 1_000_000 }, (_, i) => `k|${i}`);
  results.push(
    best('store.take (1M keys)', 1_000_000, (n) => {
      let now = performance.now();
      for (let i = 0; i < n; i++) store.take(keys[i], (now += 0.0001), 100, 1000);
    }),
  );
  if (store.size > store.maxKeys) throw new Error(`bound exceeded: ${store.size}`);
}

function contexts(count) {
  return Array.from({ length: count }, (_, i) => {
    const ctx = new RequestContext({
      method: 'GET',
      rawTarget: '/api/limited',
      headers: { host: 'x' },
      peerAddress: `10.1.${(i >> 8) & 255}.${i & 255}`,
      peerPort: 1,
      protocol: 'http/1.1',
      secure: false,
      requestId: String(i),
    });
    ctx.route = { id: 'limited', params: {} };
    return ctx;
  });
}

{
  const limits = compileLimits({
    policies: [{ id: 'per-client-read', rate: 1_000_000, per: '1s', burst: 1_000_000, key: ['route', 'client_ip'] }],
  });
  const stage = createLimitStage(['per-client-read'], limits, (ctx) => ctx.peerAddress);
  const ctxs = contexts(1000);
  results.push(
    best('stage (1 policy)', N / 2, (n) => {
      for (let i = 0; i < n; i++) {
        const ctx = ctxs[i % 1000];
        ctx.decisions.length = 0;
        if (stage.run(ctx) !== null) throw new Error('denied');
      }
    }),
  );
  await limits.close();
}

{
  const limits = compileLimits({
    policies: [
      { id: 'a', rate: 1_000_000, burst: 1_000_000, key: ['route', 'client_ip'] },
      { id: 'b', rate: 1_000_000, burst: 1_000_000, key: ['route'] },
      { id: 'c', concurrency: 1000, key: ['client_ip'] },
    ],
  });
  const stage = createLimitStage(['a', 'b', 'c'], limits, (ctx) => ctx.peerAddress);
  const ctxs = contexts(1000);
  results.push(
    best('stage (2 + concurrency)', N / 4, (n) => {
      for (let i = 0; i < n; i++) {
        const ctx = ctxs[i % 1000];
        ctx.decisions.length = 0;
        if (stage.run(ctx) !== null) throw new Error('denied');
        releaseLimits(ctx);
      }
    }),
  );
  await limits.close();
}

if (json) process.stdout.write(JSON.stringify({ node: process.version, results }, null, 2) + '\n');
else {
  for (const r of results) {
    process.stdout.write(
      `${r.name.padEnd(26)} ${(r.nsPerOp / 1000).toFixed(3).padStart(7)} µs/decision   (${r.iterations} iterations, best of ${ROUNDS})\n`,
    );
  }
}
