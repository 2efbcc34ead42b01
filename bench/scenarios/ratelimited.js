// Issue #4: "a limited route's req/s ≥ 0.95× the same route without the limit".
//
// The pass-through route plus one memory `rateLimits` policy: a token bucket (GCRA)
// keyed by client IP, 1,000,000 requests per second (the most a policy can track:
// one per microsecond; burst the same), so it never denies at bench load (one client,
// a few thousand req/s) but takes a decision on every request (key build, bucket
// lookup, update, the decision's metric). Two variants measured in the same rounds:
// the route without the limit (`off`, the pass-through config, as a same-round
// reference) and with it (`1`). The `1` variant is read against `ratelimited:off`
// (run against run, the ratio) and against the `passthrough` scenario
// (through each one's paired baseline). Telemetry stays at Bulwark's defaults in
// both, so the check can read the limiter's decisions from /metrics.
import { passthroughConfig } from './passthrough.js';
import { fmt, metricSum, scrapeMetrics } from '../scenario-checks.js';

const POLICY = 'bench-per-client';
const RATE = 1_000_000; // config.rate_too_high above one request per microsecond

export default {
  name: 'ratelimited',
  description: 'GET / through the pass-through route with a memory token bucket per client IP (never denies at bench load).',
  sameRounds: true,
  variants: [
    { id: 'off', label: '1 worker, no limit', workers: 1, limit: false, compareTo: ['baseline'] },
    { id: '1', label: '1 worker', workers: 1, limit: true },
  ],
  gatewayConfig(ctx) {
    const config = passthroughConfig(ctx);
    if (ctx.variant.limit) {
      config.rateLimits = {
        policies: [{ id: POLICY, store: 'memory', rate: RATE, per: '1s', burst: RATE, key: ['client_ip'], mode: 'enforce' }],
      };
      config.routes[0].rateLimit = [POLICY];
    }
    return config;
  },
  request: { method: 'GET', path: '/', headers: {} },
  compareTo: ['ratelimited:off', 'passthrough'],
  goals: { 'ratelimited:off': 0.95, passthrough: 0.95 },
  // The limiter ran on every request and denied none.
  async beforeStop(ctx, run) {
    if (!ctx.variant.limit) return [];
    const text = await scrapeMetrics(ctx.adminPort);
    const admitted = metricSum(text, 'bulwark_ratelimit_decisions_total', { policy: POLICY, outcome: 'admit' }) ?? 0;
    const rejected = metricSum(text, 'bulwark_ratelimit_decisions_total', { policy: POLICY, outcome: 'reject' }) ?? 0;
    // The load generator stops with requests in flight: the gateway handled between served and servedMax.
    if (admitted < run.served || admitted > run.servedMax)
      run.warn(`the limiter admitted ${fmt(admitted)} requests; the load generator got ${fmt(run.served)} responses`);
    if (rejected > 0) run.warn(`the limiter rejected ${fmt(rejected)} requests: the bench measured denials too`);
    return [`limiter decisions (from /metrics): ${fmt(admitted)} admit, ${fmt(rejected)} reject; ${fmt(run.served)} responses`];
  },
};
