// Issue #5: "a route with audit on keeps ≥ 0.95× the req/s of the same route without it".
//
// The pass-through route with an `audit` section: every request becomes an audit
// event (masked, hash-chained, signed checkpoints every 1,000 records with an
// Ed25519 key made at setup), written to the process's WAL and from there to a JSONL
// file sink, all in a scratch directory per variant. Three variants measured in the
// same rounds:
// - `off`: the route without audit (the pass-through config), the same-round reference;
// - `fast`: `durability: fast` (an event counts as accepted once written to the WAL);
// - `durable`: `durability: durable`, the default (WAL group commit; each response waits for its event's fsync).
// Both audit variants are read against `audited:off` (run against run, the issue's
// ratio) and against the `passthrough` scenario (through each one's paired baseline).
// Telemetry stays at Bulwark's defaults, so the checks can read the audit counters
// from /metrics; after each gateway stops, the JSONL it wrote is counted.
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { passthroughConfig } from './passthrough.js';
import { fmt, metricSum, scanLines, scrapeMetrics } from '../scenario-checks.js';

const dirOf = (ctx) => path.join(ctx.tmpDir, `audit-${ctx.variant.id}`);
/** /metrics audit counters per gateway, scraped before it stops. */
const scraped = new Map();

export default {
  name: 'audited',
  description: 'GET / through the pass-through route with the audit log on (WAL + JSONL file sink, signed chain).',
  sameRounds: true,
  async setup(ctx) {
    const keyDir = path.join(ctx.tmpDir, 'audit-keys');
    await mkdir(keyDir, { recursive: true });
    const { privateKey } = generateKeyPairSync('ed25519');
    const signingKeyFile = path.join(keyDir, 'audit-ed25519.pem');
    await writeFile(signingKeyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    return { signingKeyFile };
  },
  variants: [
    { id: 'off', label: '1 worker, no audit', workers: 1, durability: null, compareTo: ['baseline'] },
    { id: 'fast', label: '1 worker, durability fast', workers: 1, durability: 'fast' },
    { id: 'durable', label: '1 worker, durability durable', workers: 1, durability: 'durable' },
  ],
  async gatewayConfig(ctx) {
    const config = passthroughConfig(ctx);
    if (ctx.variant.durability) {
      const dir = dirOf(ctx);
      await mkdir(dir, { recursive: true });
      config.audit = {
        enabled: true,
        durability: ctx.variant.durability,
        whenFull: 'block',
        wal: { dir: path.join(dir, 'wal') },
        chain: { signingKey: ctx.signingKeyFile },
        sinks: [{ file: { path: path.join(dir, 'audit.jsonl') } }],
      };
    }
    return config;
  },
  request: { method: 'GET', path: '/', headers: {} },
  compareTo: ['audited:off', 'passthrough'],
  goals: { 'audited:off': 0.95, passthrough: 0.95 },
  // What the audit log says it did, while the gateway still runs (reported with the file count, after the stop).
  async beforeStop(ctx, run) {
    if (!ctx.variant.durability) return [];
    const text = await scrapeMetrics(ctx.adminPort);
    scraped.set(run.label, {
      written: metricSum(text, 'bulwark_audit_events_written_total'),
      dropped: metricSum(text, 'bulwark_audit_events_dropped_total'),
    });
    return [];
  },
  // What reached the JSONL file (the gateway flushes its sinks on SIGTERM): one request event per response.
  async afterStop(ctx, run) {
    if (!ctx.variant.durability) return [];
    const kinds = new Map();
    const { files, lines, bytes } = await scanLines(
      dirOf(ctx),
      (name) => name.startsWith('audit') && name.endsWith('.jsonl'),
      (line) => {
        const kind = /"kind":"([^"]+)"/.exec(line)?.[1] ?? '?';
        kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      },
    );
    const requests = kinds.get('request') ?? 0;
    // The load generator stops with requests in flight: the gateway handled between served and servedMax.
    if (requests < run.served || requests > run.servedMax)
      run.warn(`${fmt(requests)} request events in the audit file for ${fmt(run.served)} responses`);
    const byKind = [...kinds].map(([k, n]) => `${fmt(n)} ${k}`).join(', ');
    const m = scraped.get(run.label);
    if (m?.dropped) run.warn(`/metrics: ${fmt(m.dropped)} audit events dropped`);
    // A counter left at 0 while the file filled means /metrics is not fed by the audit log, not that nothing was written.
    const metrics = !m
      ? ''
      : m.written
        ? `; /metrics: ${fmt(m.written)} written, ${fmt(m.dropped)} dropped`
        : `; /metrics: bulwark_audit_events_written_total ${fmt(m.written)} (the counters are not fed in this build)`;
    return [
      `audit file: ${fmt(lines)} records in ${files} file(s), ${(bytes / 1048576).toFixed(1)} MiB (${byKind}); ` +
        `${fmt(run.served)} responses${metrics}`,
    ];
  },
};
