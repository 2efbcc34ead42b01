#!/usr/bin/env node
// Micro-benchmark of the per-request telemetry calls (issue #6), on the compiled code:
//
//   npm run build && node bench/tracing-micro.js
//   TRACING_BENCH_OPS=20000 TRACING_BENCH_ROUNDS=9 node bench/tracing-micro.js --json
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/tracing-micro.js --only 1
//   TRACING_BENCH_DIST=/path/to/other/dist node bench/tracing-micro.js
//   TRACING_BENCH_BATCH=512 node bench/tracing-micro.js          # spans per export (queue 4x), default the config's
//
// Settings, the same telemetry config as bench/scenarios/tracing.js (metrics and access log off):
//   bare        no telemetry calls at all: a RequestContext and the upstream header list only
//               (the ambient cost every setting below includes)
//   off         traces `exporter: none`
//   1           OTLP/HTTP (protobuf, batch processor) to bench/otlp-sink.js, ratio 0.01, parent-based
//   100         the same at 1.0
//   1-parent    ratio 0.01, every request carrying a sampled=0 W3C traceparent (parent-based: never sampled)
// Each request: new RequestContext → startRequest → one decision record → startUpstream →
// inject into a fresh flat header list → attempt.end(200) → finishRequest(200). Requests run in
// batches of 500 with a setImmediate between them, so the batch processor's timer and export
// requests get to run (their CPU counts: process.cpuUsage, user + system). Each round runs every
// setting in turn after a warm-up; the table shows the best and median CPU ns per request.
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const benchDir = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.TRACING_BENCH_DIST ?? path.join(benchDir, '..', 'dist');
const { Telemetry } = await import(pathToFileURL(path.join(dist, 'telemetry', 'telemetry.js')).href);
const { createLogger } = await import(pathToFileURL(path.join(dist, 'telemetry', 'logger.js')).href);
const { RequestContext } = await import(pathToFileURL(path.join(dist, 'core', 'context.js')).href);

const OPS = Number(process.env.TRACING_BENCH_OPS ?? 20000);
const ROUNDS = Number(process.env.TRACING_BENCH_ROUNDS ?? 7);
const BATCH = 500;
const args = process.argv.slice(2);
const json = args.includes('--json');
const onlyAt = args.indexOf('--only');
const only = onlyAt === -1 ? null : args[onlyAt + 1].split(',');

// The sink, as the harness starts it.
const sink = spawn('node', [path.join(benchDir, 'otlp-sink.js'), '--exit-with-stdin'], { stdio: ['pipe', 'pipe', 'inherit'] });
const port = await new Promise((resolve, reject) => {
  let out = '';
  sink.stdout.on('data', (d) => {
    out += d;
    const nl = out.indexOf('\n');
    if (nl !== -1) resolve(JSON.parse(out.slice(0, nl)).port);
  });
  sink.on('exit', (code) => reject(new Error(`otlp sink exited (${code})`)));
});

const off = () => ({ logs: { accessLog: { enabled: false } }, metrics: { enabled: false }, traces: { exporter: 'none' } });
const traced = (ratio) => ({
  ...off(),
  traces: {
    exporter: 'otlp',
    endpoint: `http://127.0.0.1:${port}/${ratio}/v1/traces`,
    sampler: { ratio, parentBased: true },
    ...(process.env.TRACING_BENCH_BATCH
      ? {
          batch: {
            maxExportBatchSize: Number(process.env.TRACING_BENCH_BATCH),
            maxQueueSize: 4 * Number(process.env.TRACING_BENCH_BATCH),
          },
        }
      : {}),
  },
});
const routes = [{ id: 'root', match: { path: { prefix: '/' } } }];
const logger = createLogger({ level: 'warn' });
const HEADERS = { host: 'localhost:8080', 'user-agent': 'bench', accept: '*/*' };
const UNSAMPLED_PARENT = { ...HEADERS, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00' };

const settings = [
  { id: 'bare', telemetry: null, headers: HEADERS },
  { id: 'off', telemetry: new Telemetry({ telemetry: off(), routes }, { logger, role: 'single' }), headers: HEADERS },
  { id: '1', telemetry: new Telemetry({ telemetry: traced(0.01), routes }, { logger, role: 'single' }), headers: HEADERS },
  { id: '100', telemetry: new Telemetry({ telemetry: traced(1), routes }, { logger, role: 'single' }), headers: HEADERS },
  {
    id: '1-parent',
    telemetry: new Telemetry({ telemetry: traced(0.01), routes }, { logger, role: 'single' }),
    headers: UNSAMPLED_PARENT,
  },
].filter((s) => only === null || only.includes(s.id));

const DECISION = { stage: 'authn', outcome: 'skip', code: 'authn.none' };
let sink0 = 0;

function one(telemetry, headers) {
  const ctx = new RequestContext({
    method: 'GET',
    rawTarget: '/',
    headers,
    peerAddress: '127.0.0.1',
    peerPort: 40000,
    protocol: 'http/1.1',
    secure: false,
    requestId: 'req-1',
  });
  ctx.path = '/';
  ctx.host = 'localhost';
  const upstream = ['host', 'localhost:8080', 'user-agent', 'bench', 'accept', '*/*', 'x-request-id', 'req-1'];
  if (telemetry === null) {
    sink0 += upstream.length;
    return;
  }
  const span = telemetry.startRequest(ctx);
  ctx.route = { id: 'root', params: {} };
  ctx.decisions.push(DECISION);
  const attempt = telemetry.startUpstream(span, 'backend', 'http://127.0.0.1:9000', 'GET');
  attempt.inject(upstream);
  attempt.end(200);
  telemetry.finishRequest(ctx, span, 200, 2, { code: null, upstream: 'backend' });
  sink0 += upstream.length;
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

async function run(setting, ops) {
  const t = setting.telemetry;
  const h = setting.headers;
  const cpu0 = process.cpuUsage();
  const wall0 = process.hrtime.bigint();
  for (let done = 0; done < ops; done += BATCH) {
    for (let i = 0; i < BATCH; i++) one(t, h);
    await tick();
  }
  const cpu = process.cpuUsage(cpu0);
  const wall = Number(process.hrtime.bigint() - wall0);
  return { cpuNs: ((cpu.user + cpu.system) * 1000) / ops, wallNs: wall / ops };
}

for (const s of settings) await run(s, Math.min(OPS, 5000) * 2); // warm-up
const results = new Map(settings.map((s) => [s.id, []]));
for (let r = 0; r < ROUNDS; r++) for (const s of settings) results.get(s.id).push(await run(s, OPS));

await Promise.all(settings.map((s) => s.telemetry?.shutdown()));
sink.stdin.end();

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = settings.map((s) => {
  const rs = results.get(s.id);
  return {
    setting: s.id,
    cpuBestNs: Math.min(...rs.map((x) => x.cpuNs)),
    cpuMedianNs: median(rs.map((x) => x.cpuNs)),
    wallBestNs: Math.min(...rs.map((x) => x.wallNs)),
  };
});
if (json) {
  console.log(JSON.stringify({ ops: OPS, rounds: ROUNDS, load: loadavg(), rows }, null, 2));
} else {
  console.log(
    `node ${process.version}, ${OPS} requests × ${ROUNDS} rounds, load ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  console.log('setting     cpu best ns/req  cpu median ns/req  wall best ns/req');
  for (const r of rows)
    console.log(
      `${r.setting.padEnd(10)} ${r.cpuBestNs.toFixed(0).padStart(16)} ${r.cpuMedianNs.toFixed(0).padStart(18)} ${r.wallBestNs.toFixed(0).padStart(17)}`,
    );
}
if (sink0 < 0) console.log(sink0);
