// Audit pipeline micro-benchmarks (from the build: `npx tsc -p tsconfig.build.json` first).
//
//   node bench/audit.js                      # all scenarios, 200,000 events each
//   AUDIT_BENCH_EVENTS=50000 node bench/audit.js
//   AUDIT_BENCH_ONLY=sqlite-durable node bench/audit.js
//
// Each scenario opens a fresh audit log in a temp dir, records request events
// as fast as the log takes them (in chunks, yielding to the event loop between
// them, as a server would; paced so no more than a few chunks wait in the queue —
// a sustained rate, not a backlog built in memory and drained afterwards;
// AUDIT_BENCH_PACED=0 for the unpaced burst), then flushes (everything in the WAL and taken by
// the sink) and reports sustained events/s over the whole run, and the CPU
// time the process spent per event (all threads: the SQLite worker counts) —
// on a shared machine the better guide to what one core sustains. Separately,
// `enqueue` measures what `record()` costs the request path: each call timed
// with hrtime, percentiles over all calls. The load average is printed before
// and after: on a busy machine, read the CPU figures rather than the rates.
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { generateKeyPairSync } from 'node:crypto';
import { createAuditLog } from '../dist/audit/index.js';
import { createLogger } from '../dist/telemetry/logger.js';

const EVENTS = Number(process.env.AUDIT_BENCH_EVENTS ?? 200_000);
const ONLY = process.env.AUDIT_BENCH_ONLY?.split(',');
const CHUNK = 2000;
const PACED = process.env.AUDIT_BENCH_PACED !== '0';
const PACE_DEPTH = 4 * CHUNK;
const signingKey = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

function requestEvent(i) {
  // A realistic request event (what eventFromContext produces for an allowed request).
  return {
    kind: 'request',
    requestId: `01J${i.toString(36).padStart(10, '0')}`,
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: '00f067aa0ba902b7',
    subject: `user-${i % 1000}`,
    tenant: 'acme',
    roles: ['buyer'],
    clientIp: '203.0.113.7',
    userAgent: 'Mozilla/5.0 (X11; Linux x86_64) bench',
    protocol: 'http/1.1',
    method: 'GET',
    grpcMethod: null,
    path: `/api/orders/${i % 5000}`,
    route: 'orders',
    decision: 'allow',
    stage: 'authz',
    reason: 'rbac.allowed',
    policy: 'orders',
    rule: 'read',
    status: 200,
    grpcStatus: null,
    latencyMs: 1.234,
    upstream: 'orders-pool',
    bytesIn: 0,
    bytesOut: 512,
    decisions: [
      { stage: 'authn', outcome: 'allow', code: 'jwt.valid', detail: { provider: 'main', kid: 'k1' } },
      {
        stage: 'authz',
        outcome: 'allow',
        code: 'rbac.allowed',
        detail: { policy: 'orders', rule: 'read', roles: ['buyer'], mode: 'enforce' },
      },
    ],
  };
}

function config(dir, durability, sink) {
  return {
    enabled: true,
    durability,
    whenFull: 'block',
    queue: { maxEvents: 1_000_000 },
    wal: { dir: join(dir, 'wal'), segmentBytes: 64 * 1024 * 1024, fsyncIntervalMs: 5, maxBytes: 4 * 1024 * 1024 * 1024 },
    chain: { checkpointEvery: 1000, checkpointIntervalMs: 60_000, signingKey },
    masking: { hmacKey: 'bench-hmac-key-0123456789abcdef', fields: [{ path: 'clientIp', action: 'hash' }] },
    closeTimeoutMs: 60_000,
    sinks: [sink(dir)],
  };
}

const SCENARIOS = [
  { name: 'jsonl-fast', durability: 'fast', sink: (dir) => ({ file: { path: join(dir, 'audit.jsonl'), rotateBytes: 0 } }) },
  { name: 'jsonl-durable', durability: 'durable', sink: (dir) => ({ file: { path: join(dir, 'audit.jsonl'), rotateBytes: 0 } }) },
  { name: 'sqlite-fast', durability: 'fast', sink: (dir) => ({ sqlite: { path: join(dir, 'audit.db') } }) },
  { name: 'sqlite-durable', durability: 'durable', sink: (dir) => ({ sqlite: { path: join(dir, 'audit.db') } }) },
];

const logger = createLogger({ level: 'silent' });

async function throughput(scenario) {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-audit-bench-'));
  try {
    const log = await createAuditLog(config(dir, scenario.durability, scenario.sink), { logger });
    const started = process.hrtime.bigint();
    const cpu = process.cpuUsage();
    let refused = 0;
    for (let i = 0; i < EVENTS; i += CHUNK) {
      for (let k = i; k < Math.min(i + CHUNK, EVENTS); k++) if (log.record(requestEvent(k)).status !== 'accepted') refused++;
      await yieldToLoop();
      if (PACED) while (log.stats().queueDepth > PACE_DEPTH) await yieldToLoop();
    }
    const enqueued = process.hrtime.bigint();
    await log.flush();
    const done = process.hrtime.bigint();
    const used = process.cpuUsage(cpu);
    const stats = log.stats();
    await log.close();
    const seconds = Number(done - started) / 1e9;
    return {
      scenario: scenario.name,
      events: EVENTS,
      refused,
      seconds: Number(seconds.toFixed(2)),
      eventsPerSecond: Math.round(EVENTS / seconds),
      enqueueSeconds: Number((Number(enqueued - started) / 1e9).toFixed(2)),
      // CPU time of this process (all threads) per event: what a core can sustain, whatever else the machine runs.
      cpuMicrosPerEvent: Number(((used.user + used.system) / EVENTS).toFixed(1)),
      userMicrosPerEvent: Number((used.user / EVENTS).toFixed(1)),
      systemMicrosPerEvent: Number((used.system / EVENTS).toFixed(1)),
      checkpoints: stats.checkpoints,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function enqueueCost() {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-audit-bench-'));
  try {
    const log = await createAuditLog(
      config(dir, 'durable', (d) => ({ file: { path: join(d, 'audit.jsonl'), rotateBytes: 0 } })),
      { logger },
    );
    const samples = new Float64Array(EVENTS);
    const events = Array.from({ length: CHUNK }, (_, i) => requestEvent(i));
    // Warm-up (JIT) before measuring.
    for (let i = 0; i < 20_000; i++) log.record(events[i % CHUNK]);
    await log.flush();
    for (let i = 0; i < EVENTS; i += CHUNK) {
      for (let k = i; k < Math.min(i + CHUNK, EVENTS); k++) {
        const t0 = process.hrtime.bigint();
        log.record(events[k % CHUNK]);
        samples[k] = Number(process.hrtime.bigint() - t0) / 1000;
      }
      await yieldToLoop();
    }
    await log.flush();
    await log.close();
    samples.sort();
    const pct = (p) => Number(samples[Math.min(samples.length - 1, Math.floor(samples.length * p))].toFixed(2));
    return {
      scenario: 'enqueue (record() on the request path)',
      p50us: pct(0.5),
      p99us: pct(0.99),
      p999us: pct(0.999),
      maxus: pct(1),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
console.log(`load average ${load()} (${EVENTS} events per scenario)`);
const results = [];
for (const scenario of SCENARIOS) {
  if (ONLY && !ONLY.includes(scenario.name)) continue;
  const result = await throughput(scenario);
  results.push(result);
  console.log(
    `${result.scenario.padEnd(16)} ${String(result.eventsPerSecond).padStart(8)} events/s  ${String(result.cpuMicrosPerEvent).padStart(5)} µs CPU/event (user ${result.userMicrosPerEvent} + sys ${result.systemMicrosPerEvent})  (${result.events} events in ${result.seconds}s, ${result.checkpoints} checkpoints, ${result.refused} refused)`,
  );
}
if (!ONLY || ONLY.includes('enqueue')) {
  const cost = await enqueueCost();
  results.push(cost);
  console.log(`enqueue          p50 ${cost.p50us} µs  p99 ${cost.p99us} µs  p99.9 ${cost.p999us} µs  max ${cost.maxus} µs`);
}
console.log(`load average ${load()}`);
if (process.env.AUDIT_BENCH_JSON) console.log(JSON.stringify(results));
