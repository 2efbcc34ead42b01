// Issue #7: "Unary calls through the proxy ≥ 0.5× direct grpc-js client→server calls/s
// in the same run; streaming throughput (messages/s and MB/s) through the proxy vs direct."
//
// A standalone bench (bench/run.js drives HTTP/1 with autocannon): starts the example
// Greeter (bench/grpc-server.js, a grpc-js server in its own process) and the gateway
// (`node bin/bulwark.js serve`, one h2c listener, one public route for the Greeter
// service, 1 worker, telemetry defaults), then for each workload measures the Greeter
// directly and through the gateway in alternating rounds (direct first in odd rounds,
// proxy first in even ones), each run a fresh bench/grpc-load.js process (its own warm-up,
// then the measured window), so the client never shares an event loop with a server.
// Each round's proxied rate is divided by the direct rate measured next to it; the
// median of those is the ratio. Writes everything to bench/results/grpc-<timestamp>.json.
//
//   npm run build && node bench/grpc.js
//   BENCH_ROUNDS=5 BENCH_DURATION=5 node bench/grpc.js
//   BENCH_GRPC_MODES=unary node bench/grpc.js
//
// See bench/README.md (gRPC) for the knobs.
import { spawn, execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH_DIR, '..');
const GOAL_UNARY = 0.5;

class BenchError extends Error {}

function envNumber(name, def, min = 1) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new BenchError(`${name}=${raw}: expected an integer >= ${min}`);
  return n;
}

function readSettings() {
  const modes = (process.env.BENCH_GRPC_MODES ?? 'unary,stream,bidi')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const unknown = modes.filter((m) => !['unary', 'stream', 'bidi'].includes(m));
  if (unknown.length || modes.length === 0)
    throw new BenchError(`BENCH_GRPC_MODES: expected a comma list of unary, stream, bidi; got ${process.env.BENCH_GRPC_MODES}`);
  return {
    duration: envNumber('BENCH_DURATION', 10),
    warmup: envNumber('BENCH_WARMUP', 2, 0),
    rounds: envNumber('BENCH_ROUNDS', 3),
    modes,
    concurrency: envNumber('BENCH_GRPC_CONCURRENCY', 50),
    streams: envNumber('BENCH_GRPC_STREAMS', 10),
    size: envNumber('BENCH_GRPC_SIZE', 1024),
    count: Math.min(10_000, envNumber('BENCH_GRPC_COUNT', 1000)),
    channels: envNumber('BENCH_GRPC_CHANNELS', 1),
  };
}

// ---------------------------------------------------------------- child processes

const children = new Set();
let stopping = false;
/** The gateway config and logs; removed after a completed or interrupted run, kept after a failed one. */
let tmpDir = null;

function startChild(name, command, args, { stdio = ['ignore', 'pipe', 'pipe'] } = {}) {
  if (stopping) throw new BenchError('interrupted');
  const child = spawn(command, args, { cwd: ROOT, stdio, detached: true });
  const entry = { name, child, pid: child.pid, exit: null, stderr: '' };
  entry.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve((entry.exit = { code, signal })));
    child.once('error', (error) => resolve((entry.exit = { code: null, signal: null, error: error.message })));
  });
  child.stderr?.on('data', (chunk) => (entry.stderr = (entry.stderr + chunk).slice(-16_384)));
  children.add(entry);
  return entry;
}

function signalGroup(entry, signal) {
  try {
    process.kill(-entry.pid, signal);
    return true;
  } catch {
    return false;
  }
}

async function stopChild(entry, timeoutMs = 10_000) {
  if (!children.has(entry)) return entry.exit;
  if (!entry.exit) {
    signalGroup(entry, 'SIGTERM');
    if (!(await Promise.race([entry.exited, sleep(timeoutMs, null)]))) {
      signalGroup(entry, 'SIGKILL');
      await entry.exited;
    }
  }
  for (let i = 0; i < 40 && signalGroup(entry, 0); i++) await sleep(50);
  signalGroup(entry, 'SIGKILL');
  children.delete(entry);
  return entry.exit;
}

const describeExit = (exit) =>
  !exit ? 'running' : (exit.error ?? (exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`));

/** JSON lines of a child's stdout, one callback per line. */
function onJsonLines(entry, fn) {
  readline.createInterface({ input: entry.child.stdout }).on('line', (line) => {
    try {
      fn(JSON.parse(line));
    } catch {
      /* not ours */
    }
  });
}

async function startHelper(name, script, args = []) {
  const entry = startChild(name, process.execPath, [path.join(BENCH_DIR, script), ...args, '--exit-with-stdin'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new BenchError(`${name}: no port within 10 s\n${entry.stderr}`)), 10_000);
    onJsonLines(entry, (msg) => {
      if (Number.isInteger(msg.port)) {
        clearTimeout(timer);
        resolve(msg.port);
      }
    });
    entry.exited.then((exit) => reject(new BenchError(`${name} exited (${describeExit(exit)})\n${entry.stderr}`)));
  });
  entry.port = port;
  return entry;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function get(port, reqPath) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: reqPath, agent: false, timeout: 1_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

// CPU time (user + system) of every process in a group, from /proc (Linux; null elsewhere).
let clockTicks;
function groupCpuSeconds(pgid) {
  if (!pgid || process.platform !== 'linux') return null;
  clockTicks ??= (() => {
    try {
      return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      return 100;
    }
  })();
  let ticks = 0;
  let found = false;
  for (const name of readdirSync('/proc')) {
    if (name.charCodeAt(0) < 48 || name.charCodeAt(0) > 57) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) !== pgid) continue;
    found = true;
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return found ? ticks / clockTicks : null;
}

// ---------------------------------------------------------------- measuring

/** One bench/grpc-load.js run; CPU of the gateway and server groups sampled at its window's start and stop. */
async function loadRun(settings, mode, port, groups) {
  const concurrency = mode === 'unary' ? settings.concurrency : settings.streams;
  const args = [
    path.join(BENCH_DIR, 'grpc-load.js'),
    '--target',
    `127.0.0.1:${port}`,
    '--mode',
    mode,
    '--concurrency',
    String(concurrency),
    '--duration',
    String(settings.duration),
    '--warmup',
    String(settings.warmup),
    '--channels',
    String(settings.channels),
    ...(mode === 'unary' ? [] : ['--size', String(settings.size), '--count', String(settings.count)]),
  ];
  const entry = startChild(`grpc-load ${mode}`, process.execPath, args);
  const cpu = {};
  let result = null;
  onJsonLines(entry, (msg) => {
    if (msg.event === 'start' || msg.event === 'stop') {
      for (const [name, pgid] of Object.entries(groups)) (cpu[name] ??= {})[msg.event] = groupCpuSeconds(pgid);
    } else if (msg.mode) result = msg;
  });
  const exit = await entry.exited;
  await stopChild(entry);
  if (stopping) throw new BenchError('interrupted');
  if (!result) throw new BenchError(`grpc-load ${mode} failed (${describeExit(exit)}): ${entry.stderr || 'no output'}`);
  const unit = mode === 'unary' ? result.calls : result.messages;
  result.cpuUsPer = Object.fromEntries(
    Object.entries(cpu).map(([name, c]) => [
      name,
      c.start === null || c.stop === null || c.start === undefined || !unit ? null : ((c.stop - c.start) * 1e6) / unit,
    ]),
  );
  return result;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const fmtInt = (n) => (n === null || n === undefined ? '-' : Math.round(n).toLocaleString('en-US'));
const fmt1 = (n) => (n === null || n === undefined ? '-' : n.toFixed(1));
const fmtMs = (n) => (n === null || n === undefined ? '-' : n.toFixed(2));

const WORKLOAD = {
  unary: (s) => `unary SayHello, ${s.concurrency} calls in flight`,
  stream: (s) => `server streaming StreamGreetings, ${s.streams} streams × ${s.count} replies of ~${s.size} B`,
  bidi: (s) => `bidi Chat, ${s.streams} streams × ${s.count} messages of ~${s.size} B each way`,
};

// ---------------------------------------------------------------- main

async function main() {
  const settings = readSettings();
  if (!existsSync(path.join(ROOT, 'dist', 'cli', 'main.js')) && !existsSync(path.join(ROOT, 'dist', 'index.js')))
    throw new BenchError('dist/ not found: npm run build first');
  const startedAt = new Date();
  const loadavgAtStart = os.loadavg();
  const cpus = os.cpus();
  tmpDir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-grpc-bench-'));
  console.log(
    `bulwark gRPC bench: ${settings.duration} s per run (+${settings.warmup} s warm-up in the client), ${settings.rounds} rounds, ` +
      `${settings.channels} channel(s); node ${process.version}, ${cpus.length} CPU(s) (${cpus[0]?.model.trim() ?? '?'}); ` +
      `load average ${loadavgAtStart.map((x) => x.toFixed(2)).join(' ')}`,
  );

  const server = await startHelper('grpc server', 'grpc-server.js');
  const listenPort = await freePort();
  const adminPort = await freePort();
  const config = {
    version: 1,
    workers: 1,
    listeners: [{ name: 'grpc', address: '127.0.0.1', port: listenPort, protocol: 'h2c' }],
    admin: { address: '127.0.0.1', port: adminPort },
    upstreams: { greeter: { endpoints: [`http://127.0.0.1:${server.port}`] } },
    routes: [{ id: 'greeter', match: { path: { prefix: '/demo.v1.Greeter' } }, upstream: 'greeter', auth: { public: true } }],
  };
  const configPath = path.join(tmpDir, 'grpc.yaml');
  await writeFile(configPath, YAML.stringify(config));
  const logBase = path.join(tmpDir, 'gateway');
  const out = openSync(`${logBase}.stdout.log`, 'w');
  const err = openSync(`${logBase}.stderr.log`, 'w');
  let gateway;
  try {
    gateway = startChild('gateway', process.execPath, [path.join(ROOT, 'bin', 'bulwark.js'), 'serve', '--config', configPath], {
      stdio: ['ignore', out, err],
    });
  } finally {
    closeSync(out);
    closeSync(err);
  }
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (gateway.exit || Date.now() > deadline) {
      const why = gateway.exit ? `exited (${describeExit(gateway.exit)})` : 'not ready after 20 s';
      throw new BenchError(`gateway ${why}\n${readFileSync(`${logBase}.stderr.log`, 'utf8').slice(-4_000)}`);
    }
    if ((await get(adminPort, '/readyz').catch(() => 0)) === 200) break;
    await sleep(100);
  }
  console.log(`grpc server (direct): 127.0.0.1:${server.port}; gateway: 127.0.0.1:${listenPort} (config ${configPath})\n`);

  const groups = { gateway: gateway.pid, server: server.pid };
  const results = [];
  const summary = [];
  const warnings = [];
  for (const mode of settings.modes) {
    console.log(`${mode}: ${WORKLOAD[mode](settings)}`);
    const rounds = [];
    for (let i = 0; i < settings.rounds; i++) {
      const order = i % 2 === 0 ? ['direct', 'proxy'] : ['proxy', 'direct'];
      const runs = {};
      for (const via of order) runs[via] = await loadRun(settings, mode, via === 'direct' ? server.port : listenPort, groups);
      const rate = (r) => (mode === 'unary' ? r.callsPerSec : r.messagesPerSec);
      const ratio = rate(runs.proxy) / rate(runs.direct);
      rounds.push({ ...runs, ratio });
      for (const via of ['direct', 'proxy']) {
        if (runs[via].errors > 0) {
          const msg = `${mode} ${via} round ${i + 1}: ${runs[via].errors} failed calls ${JSON.stringify(runs[via].errorCodes)}`;
          warnings.push(msg);
          console.log(`  WARNING: ${msg}`);
        }
      }
      const show = (r) =>
        mode === 'unary' ? `${fmtInt(r.callsPerSec)} calls/s` : `${fmtInt(r.messagesPerSec)} msg/s, ${fmt1(r.mbPerSec)} MB/s`;
      console.log(
        `  round ${i + 1}/${settings.rounds}: direct ${show(runs.direct)}; proxy ${show(runs.proxy)}; ${ratio.toFixed(2)}x`,
      );
    }
    const ratios = rounds.map((r) => r.ratio).sort((a, b) => a - b);
    const entry = {
      mode,
      workload: WORKLOAD[mode](settings),
      ratio: median(ratios),
      range: [ratios[0], ratios[ratios.length - 1]],
      ...(mode === 'unary' ? { goal: GOAL_UNARY, goalMet: median(ratios) >= GOAL_UNARY } : {}),
      rounds,
    };
    results.push(entry);
    summary.push(entry);
    console.log('');
  }

  // Table: per workload and path, the median round's numbers.
  const header = ['workload', 'path', 'calls/s', 'msg/s', 'MB/s', 'p50 ms', 'p99 ms', 'errors', 'gw cpu µs', 'srv cpu µs'];
  const body = [];
  for (const r of results) {
    for (const via of ['direct', 'proxy']) {
      const runs = r.rounds.map((x) => x[via]);
      const key = r.mode === 'unary' ? 'callsPerSec' : 'messagesPerSec';
      const mid = [...runs].sort((a, b) => a[key] - b[key])[Math.floor((runs.length - 1) / 2)];
      body.push([
        r.mode,
        via,
        fmtInt(mid.callsPerSec),
        fmtInt(mid.messagesPerSec),
        fmt1(mid.mbPerSec),
        fmtMs(mid.latencyMs?.p50),
        fmtMs(mid.latencyMs?.p99),
        String(runs.reduce((n, x) => n + x.errors, 0)),
        via === 'proxy' ? fmt1(mid.cpuUsPer.gateway) : '-',
        fmt1(mid.cpuUsPer.server),
      ]);
    }
  }
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of body) console.log(line(row));
  console.log('median run of each; cpu: µs of the gateway / the server process per call (unary) or per message (streams)\n');
  for (const s of summary) {
    const what = s.mode === 'unary' ? 'calls/s' : 'messages/s and MB/s';
    const goal = s.goal === undefined ? '' : `; goal ≥ ${s.goal.toFixed(2)}x: ${s.goalMet ? 'met' : 'NOT met'}`;
    console.log(
      `gRPC ${s.mode}: proxy ${s.ratio.toFixed(2)}x direct ${what} (median of ${settings.rounds} paired rounds, per round ` +
        `${s.range.map((x) => x.toFixed(2)).join('-')}x${goal})`,
    );
  }
  const loadavgAtEnd = os.loadavg();
  console.log(`load average at start ${loadavgAtStart[0].toFixed(2)}, at end ${loadavgAtEnd[0].toFixed(2)}`);
  if (warnings.length) console.log(`\n${warnings.length} WARNING(S): failed calls; see above.`);

  const gatewayExit = gateway.exit;
  await stopChild(gateway);
  await stopChild(server);
  if (gatewayExit) warnings.push(`the gateway exited during the run (${describeExit(gatewayExit)})`);

  const resultsDir = path.join(BENCH_DIR, 'results');
  await mkdir(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `grpc-${startedAt.toISOString().replace(/:/g, '-')}.json`);
  await writeFile(
    file,
    JSON.stringify(
      {
        startedAt: startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
        settings,
        machine: {
          node: process.version,
          platform: `${os.platform()} ${os.release()} ${os.arch()}`,
          cpus: cpus.length,
          cpuModel: cpus[0]?.model.trim() ?? null,
          loadavgAtStart,
          loadavgAtEnd,
        },
        gatewayConfig: config,
        results,
        warnings,
      },
      null,
      2,
    ) + '\n',
  );
  console.log(`\nresults: ${path.relative(process.cwd(), file)}`);
  await rm(tmpDir, { recursive: true, force: true });
  tmpDir = null;
}

async function shutdown(code, message) {
  if (stopping) return;
  stopping = true;
  if (message) console.error(message);
  await Promise.all([...children].map((c) => stopChild(c, 5_000))).catch(() => {});
  if (tmpDir && code === 1) console.error(`grpc bench: gateway config and logs kept in ${tmpDir}`);
  else if (tmpDir) await rm(tmpDir, { recursive: true, force: true }).catch(() => {});
  process.exit(code);
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => void shutdown(130, `\n${signal}: stopping…`));
process.on('exit', () => {
  for (const c of children) signalGroup(c, 'SIGKILL');
});

main().then(
  () => process.exit(0),
  (error) => void shutdown(1, error instanceof BenchError ? `grpc bench: ${error.message}` : (error?.stack ?? String(error))),
);
