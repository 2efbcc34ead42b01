// Issue #6: "Tracing at 1% sampling costs ≤ 5% req/s, at 100% ≤ 20%, against the same
// route with telemetry off."
//
// The pass-through route, three variants measured in the same rounds:
// - `off` (the telemetry-off): metrics off, access log off, traces off
//   (`exporter: none`);
// - `1` (tracing-1): the same plus traces exported over OTLP/HTTP (protobuf, the
//   default batch processor), parent-based trace-id ratio sampler at 0.01;
// - `100` (tracing-100): the same at 1.0.
// The requests carry no trace context, so every one is a new root trace and the
// ratio decides. Spans go to bench/otlp-sink.js, a local receiver started by the
// harness for this scenario, which answers 200 and discards them after counting them:
// the exporter does its real work (batching, encoding, one HTTP request per batch)
// without a collector's cost in the way. Each gateway exports to its own path on the
// sink, and after it stops (it flushes its spans on SIGTERM) the check compares the
// server spans received with the responses it gave.
import { passthroughConfig } from './passthrough.js';
import { fmt, getText, pct } from '../scenario-checks.js';

const telemetryOff = () => ({
  logs: { accessLog: { enabled: false } },
  metrics: { enabled: false },
  traces: { exporter: 'none' },
});
const sinkPath = (variant) => `/${variant.id}/v1/traces`;

export default {
  name: 'tracing',
  description: 'GET / through the pass-through route, telemetry off vs OTLP traces sampled at 1% and 100%.',
  sameRounds: true,
  services: [{ name: 'otlp', cmd: (ctx) => ['node', `${ctx.benchDir}/otlp-sink.js`] }],
  variants: [
    { id: 'off', label: '1 worker, telemetry off', workers: 1, ratio: null, compareTo: ['baseline'] },
    { id: '1', label: '1 worker, traces 1%', workers: 1, ratio: 0.01, goals: { 'tracing:off': 0.95 } },
    { id: '100', label: '1 worker, traces 100%', workers: 1, ratio: 1, goals: { 'tracing:off': 0.8 } },
  ],
  gatewayConfig(ctx) {
    const config = passthroughConfig(ctx);
    config.telemetry = telemetryOff();
    if (ctx.variant.ratio !== null) {
      config.telemetry.traces = {
        exporter: 'otlp',
        endpoint: `${ctx.services.otlp.url}${sinkPath(ctx.variant)}`,
        sampler: { ratio: ctx.variant.ratio, parentBased: true },
      };
    }
    return config;
  },
  request: { method: 'GET', path: '/', headers: {} },
  compareTo: ['tracing:off'],
  // The spans that reached the sink: one server span (and one client span, the upstream attempt) per sampled request.
  async afterStop(ctx, run) {
    const { status, body } = await getText(ctx.services.otlp.port, '/stats');
    if (status !== 200) throw new Error(`otlp sink: GET /stats answered ${status}`);
    const c = JSON.parse(body).paths[sinkPath(ctx.variant)] ?? { posts: 0, bytes: 0, spans: 0, server: 0, client: 0, errors: 0 };
    if (ctx.variant.ratio === null) {
      if (c.spans > 0) run.warn(`telemetry off, yet the sink received ${fmt(c.spans)} spans`);
      return [];
    }
    // The gateway handled between served and servedMax requests (the load generator stops with some in flight);
    // the sampled share of them spreads binomially around the ratio.
    const expected = ctx.variant.ratio;
    const share = run.served ? c.server / run.served : 0;
    const spread = (n) => 5 * Math.sqrt(n * expected * (1 - expected));
    if (c.server < run.served * expected - spread(run.served) || c.server > run.servedMax * expected + spread(run.servedMax))
      run.warn(`the sink received server spans for ${pct(share)} of ${fmt(run.served)} responses, expected ~${pct(expected, 0)}`);
    if (c.errors > 0) run.warn(`the sink could not parse ${fmt(c.errors)} of ${fmt(c.posts)} exports`);
    return [
      `OTLP sink: ${fmt(c.spans)} spans (${fmt(c.server)} server, ${fmt(c.client)} client) in ${fmt(c.posts)} exports, ` +
        `${(c.bytes / 1048576).toFixed(1)} MiB; server spans for ${pct(share)} of ${fmt(run.served)} responses (sampler ${pct(expected, 0)})`,
    ];
  },
};
