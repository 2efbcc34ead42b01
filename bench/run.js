// `npm run bench`: measure Bulwark against a bare node:http proxy, in one run.
//
// Starts the benchmark upstream and the baseline proxy as child processes, then,
// for every scenario in bench/scenarios/ (and every variant of it, e.g. workers
// 1 and auto), starts the gateway with the scenario's config, waits for
// /readyz, drives load with autocannon (and wrk when installed), and stops it.
// Prints a table and a ratio per scenario; writes everything to
// bench/results/<timestamp>.json. See bench/README.md.
import autocannon from 'autocannon';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, openSync, closeSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import YAML from 'yaml';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH_DIR, '..');
const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 15_000;

class BenchError extends Error {}

// ---------------------------------------------------------------- settings

function envNumber(name, def, { min = 0, integer = false } = {}) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
    throw new BenchError(`${name}=${raw}: expected ${integer ? 'an integer' : 'a number'} >= ${min}`);
  }
  return n;
}

function readSettings() {
  return {
    duration: envNumber('BENCH_DURATION', 10, { min: 1, integer: true }),
    warmup: envNumber('BENCH_WARMUP', 2, { min: 0, integer: true }),
    connections: envNumber('BENCH_CONNECTIONS', 50, { min: 1, integer: true }),
    pipelining: envNumber('BENCH_PIPELINING', 1, { min: 1, integer: true }),
    rounds: envNumber('BENCH_ROUNDS', 1, { min: 1, integer: true }),
    scenarios: (process.env.BENCH_SCENARIOS ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    gatewayCmd: process.env.BENCH_GATEWAY_CMD?.trim() || null,
    wrk: process.env.BENCH_WRK === '0' ? null : findWrk(),
    pin: readPinning(),
  };
}

/**
 * BENCH_PIN=1: the load side (this runner with autocannon, wrk, the upstream, sinks) on the
 * first CPU, the proxy under test (baseline, 1-worker gateways, competitors) on the others, so
 * the two stop taking turns on the same cores. `workers: auto` variants keep every CPU.
 */
function readPinning() {
  const raw = process.env.BENCH_PIN;
  if (raw === undefined || raw === '' || raw === '0') return null;
  if (raw !== '1') throw new BenchError(`BENCH_PIN=${raw}: expected 0 or 1`);
  const count = os.cpus().length;
  if (count < 2) throw new BenchError('BENCH_PIN=1 needs at least 2 CPUs');
  let taskset;
  try {
    taskset = execFileSync('/bin/sh', ['-c', 'command -v taskset'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    taskset = '';
  }
  if (taskset === '') throw new BenchError('BENCH_PIN=1 needs taskset (util-linux)');
  return { taskset, load: '0', proxy: count === 2 ? '1' : `1-${count - 1}` };
}

/** Set once settings are read; startChild consults it. */
let pinning = null;

function findWrk() {
  try {
    return (
      execFileSync('/bin/sh', ['-c', 'command -v wrk'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || null
    );
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- child processes

/** Every child we started and have not yet seen stopped; each leads its own process group. */
const children = new Set();
let stopping = false;
/** Configs, gateway logs, wrk scripts; removed after a completed run, kept after a failed one. */
let tmpDir = null;

/**
 * Spawn `command args` as the leader of a new process group (so a gateway's
 * cluster workers can be signalled together with it).
 */
function startChild(name, command, args, { stdio = ['ignore', 'pipe', 'pipe'], env = process.env, cpus = null } = {}) {
  if (stopping) throw new BenchError('interrupted');
  if (pinning !== null && cpus !== null) {
    args = ['-c', pinning[cpus], command, ...args];
    command = pinning.taskset;
  }
  const child = spawn(command, args, { cwd: ROOT, env, stdio, detached: true });
  const entry = { name, child, pid: child.pid, exit: null, stderr: '' };
  entry.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve((entry.exit = { code, signal })));
    child.once('error', (error) => resolve((entry.exit = { code: null, signal: null, error: error.message })));
  });
  child.stderr?.on('data', (chunk) => {
    entry.stderr = (entry.stderr + chunk).slice(-16_384);
  });
  children.add(entry);
  return entry;
}

function signalGroup(entry, signal) {
  if (!entry.pid) return false;
  try {
    process.kill(-entry.pid, signal);
    return true;
  } catch {
    return false; // ESRCH: the whole group is gone
  }
}

const groupAlive = (entry) => signalGroup(entry, 0);

/** SIGTERM the child's group, wait for the leader (then stragglers) to exit; SIGKILL after a timeout. */
async function stopChild(entry, timeoutMs = STOP_TIMEOUT_MS) {
  if (!children.has(entry)) return entry.exit;
  if (!entry.exit) {
    signalGroup(entry, 'SIGTERM');
    const exited = await Promise.race([entry.exited, sleep(timeoutMs, null)]);
    if (!exited) {
      console.error(`  ${entry.name} did not exit within ${timeoutMs / 1000} s of SIGTERM; killing it`);
      signalGroup(entry, 'SIGKILL');
      await entry.exited;
    }
  }
  // The leader is gone; give any of its group (e.g. cluster workers) a moment, then kill them.
  for (let i = 0; i < 40 && groupAlive(entry); i++) await sleep(50);
  if (groupAlive(entry)) signalGroup(entry, 'SIGKILL');
  children.delete(entry);
  return entry.exit;
}

async function stopAll() {
  await Promise.all([...children].map((entry) => stopChild(entry, 5_000)));
}

/** Last resort on process exit: nothing async is possible any more. */
function killAllSync() {
  for (const entry of children) {
    signalGroup(entry, 'SIGKILL');
  }
  children.clear();
}

/** Read the first line of a child's stdout as JSON (our helpers print `{"port":N}`). */
function readPortLine(entry, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const fail = (why) => {
      cleanup();
      reject(new BenchError(`${entry.name}: ${why}${entry.stderr ? `\n--- stderr ---\n${entry.stderr}` : ''}`));
    };
    const onData = (chunk) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      cleanup();
      entry.child.stdout.resume(); // keep draining, ignore anything else
      try {
        const msg = JSON.parse(buf.slice(0, nl));
        if (!Number.isInteger(msg.port)) throw new Error('no port');
        resolve(msg);
      } catch {
        reject(new BenchError(`${entry.name}: expected {"port":N} on stdout, got ${JSON.stringify(buf.slice(0, nl))}`));
      }
    };
    const onExit = () => setImmediate(() => fail(`exited (${describeExit(entry.exit)}) before reporting its port`));
    const timer = setTimeout(() => fail(`no port reported within ${timeoutMs / 1000} s`), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      entry.child.stdout.off('data', onData);
      entry.child.off('exit', onExit);
    };
    entry.child.stdout.setEncoding('utf8');
    entry.child.stdout.on('data', onData);
    entry.child.once('exit', onExit);
  });
}

function describeExit(exit) {
  if (!exit) return 'running';
  if (exit.error) return exit.error;
  return exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
}

/** Start one of our helper scripts (upstream.js, baseline-proxy.js) and wait for its port. */
async function startHelper(name, script, args = [], cpus = null) {
  const entry = startChild(name, process.execPath, [path.join(BENCH_DIR, script), ...args, '--exit-with-stdin'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    cpus,
  });
  const { port } = await readPortLine(entry);
  entry.port = port;
  return entry;
}

// ---------------------------------------------------------------- gateway

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

function expandTemplate(cmd, vars) {
  return cmd.replace(/\{(\w+)\}/g, (whole, key) => (key in vars ? String(vars[key]) : whole));
}

/** Start the gateway for one scenario variant, wait for /readyz; returns the child entry. */
async function startGateway({ label, configPath, ctx, settings, logBase }) {
  const outFd = openSync(`${logBase}.stdout.log`, 'w');
  const errFd = openSync(`${logBase}.stderr.log`, 'w');
  const vars = {
    config: configPath,
    port: ctx.listenPort,
    adminPort: ctx.adminPort,
    upstreamPort: ctx.upstreamPort,
    workers: ctx.workers,
  };
  const env = {
    ...process.env,
    BENCH_CONFIG: configPath,
    BENCH_LISTEN_PORT: String(ctx.listenPort),
    BENCH_ADMIN_PORT: String(ctx.adminPort),
    BENCH_UPSTREAM_PORT: String(ctx.upstreamPort),
    BENCH_WORKERS: String(ctx.workers),
  };
  // Logs go straight to files: piping them through this process would spend the load generator's CPU.
  const stdio = ['ignore', outFd, errFd];
  const cpus = ctx.workers === 1 ? 'proxy' : null;
  let entry;
  try {
    entry = settings.gatewayCmd
      ? startChild(label, '/bin/sh', ['-c', expandTemplate(settings.gatewayCmd, vars)], { stdio, env, cpus })
      : startChild(label, process.execPath, [path.join(ROOT, 'bin', 'bulwark.js'), 'serve', '--config', configPath], {
          stdio,
          env,
          cpus,
        });
  } finally {
    closeSync(outFd);
    closeSync(errFd);
  }
  entry.logBase = logBase;

  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    if (stopping) throw new BenchError('interrupted');
    if (entry.exit) break;
    try {
      const { status } = await httpRequest({ port: ctx.adminPort, path: '/readyz', timeoutMs: 1_000 });
      if (status === 200) return entry;
      last = `GET /readyz answered ${status}`;
    } catch (error) {
      last = error.code ?? error.message;
    }
    await sleep(100);
  }
  const why = entry.exit ? `exited (${describeExit(entry.exit)})` : `not ready after ${READY_TIMEOUT_MS / 1000} s (${last})`;
  await stopChild(entry, 5_000);
  throw new BenchError(`${label} did not start: ${why}\n${gatewayLogs(entry)}`);
}

function gatewayLogs(entry, max = 8_192) {
  const read = (suffix) => {
    try {
      return readFileSync(`${entry.logBase}.${suffix}.log`, 'utf8').slice(-max);
    } catch {
      return '';
    }
  };
  const stderr = read('stderr');
  const stdout = read('stdout');
  let out = `--- stderr (${entry.logBase}.stderr.log) ---\n${stderr || '(empty)\n'}`;
  if (!stderr && stdout) out += `--- stdout (last ${max} bytes) ---\n${stdout}`;
  return out;
}

// ---------------------------------------------------------------- requests and load

function httpRequest({ port, path: reqPath = '/', method = 'GET', headers = {}, body, timeoutMs = 2_000 }) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: reqPath, method, headers, agent: false, timeout: timeoutMs },
      (res) => {
        let data = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => {
          if (data.length < 2_048) data += chunk;
        });
        res.on('end', () => resolve({ status: res.statusCode, body: data }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    req.on('error', reject);
    req.end(body);
  });
}

function normalizeRequest(request, scenarioName) {
  const method = (request?.method ?? 'GET').toUpperCase();
  const headers = { ...(request?.headers ?? {}) };
  let body = request?.body;
  if (body !== undefined && typeof body !== 'string' && !Buffer.isBuffer(body)) {
    body = JSON.stringify(body);
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['content-type'] = 'application/json';
  }
  if (Buffer.isBuffer(body)) body = body.toString('utf8');
  const out = { method, path: request?.path ?? '/', headers, ...(body !== undefined ? { body } : {}) };
  if (typeof request?.perRequestHeaders === 'function') {
    // Headers that change on every request (e.g. a new token each time): `dynamic`
    // keeps such a request apart from a static one in requestKey (JSON drops the function).
    out.dynamic = scenarioName;
    out.perRequestHeaders = request.perRequestHeaders;
  }
  return out;
}

const requestKey = (request) => JSON.stringify(request);
const describeRequest = (request) => `${request.method} ${request.path}`;

let currentLoad = null;

/**
 * Responses each target got from the load generators (probe, warm-ups, measured runs, wrk) and how many load runs
 * it saw, by target name: what a scenario's checks compare with what the gateway says it did (`served` and
 * `servedMax` in beforeStop/afterStop). A load generator stops with requests in flight (up to connections ×
 * pipelining per run); the gateway may still serve those, so it handled between `served` and `servedMax` requests.
 */
const served = new Map();
const countServed = (target, n, { run = true } = {}) => {
  if (!target?.name || !Number.isFinite(n)) return;
  const c = served.get(target.name) ?? { responses: 0, runs: 0 };
  c.responses += n;
  if (run) c.runs++;
  served.set(target.name, c);
};

/**
 * One autocannon run; resolves with the result plus exact latency percentiles of the 2xx responses.
 * `target` ({ kind, name }) tells a request with per-request headers who is being measured.
 */
function autocannonRun(url, request, seconds, settings, target) {
  if (stopping) return Promise.reject(new BenchError('interrupted'));
  return new Promise((resolve, reject) => {
    const latencies = [];
    let requests;
    if (request.perRequestHeaders) {
      // autocannon rebuilds the request from setupRequest each time (a copy of the defaults).
      const next = request.perRequestHeaders(target);
      requests = [
        {
          setupRequest: (req) => {
            Object.assign(req.headers, next());
            return req;
          },
        },
      ];
    }
    const instance = autocannon(
      {
        url,
        connections: settings.connections,
        pipelining: settings.pipelining,
        duration: seconds,
        method: request.method,
        headers: request.headers,
        ...(request.body !== undefined ? { body: request.body } : {}),
        ...(requests ? { requests } : {}),
      },
      (error, result) => {
        currentLoad = null;
        if (error) reject(error);
        else {
          countServed(target, result.requests.total);
          resolve({ result, latencies });
        }
      },
    );
    // autocannon's own histogram has 1 ms resolution; keep the exact times too.
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
    });
    currentLoad = instance;
  });
}

function median(sorted) {
  const n = sorted.length;
  return n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** Warm-up (not recorded), then one measured run. */
async function measureAutocannon(url, request, settings, target) {
  await warmUp(url, request, settings, target);
  return measureOnce(url, request, settings, target);
}

async function warmUp(url, request, settings, target) {
  if (settings.warmup > 0) await autocannonRun(url, request, settings.warmup, settings, target);
}

async function measureOnce(url, request, settings, target) {
  const cpuBefore = groupCpuSeconds(target?.pgid);
  const { result, latencies } = await autocannonRun(url, request, settings.duration, settings, target);
  const cpuAfter = groupCpuSeconds(target?.pgid);
  const sorted = Float64Array.from(latencies).sort();
  const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
  const cpuUsPerReq =
    cpuBefore === null || cpuAfter === null || result.requests.total === 0
      ? null
      : Math.round(((cpuAfter - cpuBefore) * 1e6) / result.requests.total);
  return {
    tool: 'autocannon',
    reqPerSec: result.requests.average,
    reqPerSecStddev: result.requests.stddev,
    totalRequests: result.requests.total,
    cpuUsPerReq,
    latencyMs: {
      mean: round(sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : null),
      p50: round(percentile(sorted, 50)),
      p90: round(percentile(sorted, 90)),
      p99: round(percentile(sorted, 99)),
      p999: round(percentile(sorted, 99.9)),
      max: round(sorted.length ? sorted[sorted.length - 1] : null),
    },
    errors: result.errors,
    timeouts: result.timeouts,
    non2xx: result.non2xx,
    statusCodes: Object.fromEntries(Object.entries(result.statusCodeStats).map(([code, { count }]) => [code, count])),
    throughputBytesPerSec: result.throughput.average,
    autocannon: {
      latency: result.latency,
      requests: result.requests,
      throughput: result.throughput,
      duration: result.duration,
      start: result.start,
      finish: result.finish,
      resets: result.resets,
      mismatches: result.mismatches,
    },
  };
}

// CPU time of the measured process group (a gateway with its workers, a competitor,
// the baseline): user + system, from /proc (Linux; null elsewhere). Divided by the
// responses of a run, it is a per-request cost that machine noise moves far less
// than req/s: other load makes requests wait, it barely makes them cost more.
let clockTicks;
function groupCpuSeconds(pgid) {
  if (!pgid || process.platform !== 'linux') return null;
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  let ticks = 0;
  let found = false;
  let entries;
  try {
    entries = readdirSync('/proc');
  } catch {
    return null;
  }
  for (const name of entries) {
    if (name.charCodeAt(0) < 48 || name.charCodeAt(0) > 57) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) !== pgid) continue;
    found = true;
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return found ? ticks / clockTicks : null;
}

function luaString(s) {
  let out = '"';
  for (const byte of Buffer.from(String(s), 'utf8')) {
    if (byte === 0x22) out += '\\"';
    else if (byte === 0x5c) out += '\\\\';
    else if (byte >= 0x20 && byte < 0x7f) out += String.fromCharCode(byte);
    else out += `\\${String(byte).padStart(3, '0')}`;
  }
  return out + '"';
}

function toMs(value, unit) {
  const n = Number(value);
  return { us: n / 1000, ms: n, s: n * 1000, m: n * 60_000, h: n * 3_600_000 }[unit] ?? null;
}

/** Parse `wrk --latency` output. */
export function parseWrk(text) {
  const num = (re) => {
    const m = text.match(re);
    return m ? Number(m[1]) : 0;
  };
  const pct = (p) => {
    const m = text.match(new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m|h)\\s*$`, 'm'));
    return m ? toMs(m[1], m[2]) : null;
  };
  const sock = text.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/);
  const socketErrors = sock ? { connect: +sock[1], read: +sock[2], write: +sock[3], timeout: +sock[4] } : null;
  return {
    reqPerSec: num(/Requests\/sec:\s+([\d.]+)/),
    totalRequests: num(/(\d+) requests in/),
    latencyMs: { p50: pct(50), p90: pct(90), p99: pct(99) },
    errors: socketErrors ? socketErrors.connect + socketErrors.read + socketErrors.write + socketErrors.timeout : 0,
    timeouts: socketErrors?.timeout ?? 0,
    socketErrors,
    non2xx: num(/Non-2xx or 3xx responses:\s+(\d+)/), // wrk counts status >= 400 here
  };
}

async function measureWrk(url, request, settings) {
  const args = ['-t1', `-c${settings.connections}`, `-d${settings.duration}s`, '--latency'];
  const plain = request.method === 'GET' && Object.keys(request.headers).length === 0 && request.body === undefined;
  if (!plain) {
    const lines = [`wrk.method = ${luaString(request.method)}`];
    for (const [name, value] of Object.entries(request.headers))
      lines.push(`wrk.headers[${luaString(name)}] = ${luaString(value)}`);
    if (request.body !== undefined) lines.push(`wrk.body = ${luaString(request.body)}`);
    const script = path.join(tmpDir, `wrk-${Date.now()}.lua`);
    await writeFile(script, lines.join('\n') + '\n');
    args.push('-s', script);
  }
  args.push(url);
  const entry = startChild('wrk', settings.wrk, args, { cpus: 'load' });
  let stdout = '';
  entry.child.stdout.setEncoding('utf8');
  entry.child.stdout.on('data', (chunk) => (stdout += chunk));
  const exit = await entry.exited;
  await stopChild(entry);
  if (stopping) throw new BenchError('interrupted');
  if (exit.code !== 0) throw new BenchError(`wrk failed (${describeExit(exit)}): ${entry.stderr || stdout}`);
  return { tool: 'wrk', ...parseWrk(stdout), raw: stdout };
}

// ---------------------------------------------------------------- scenarios

const DEFAULT_VARIANTS = [{ id: '1', label: '1 worker', workers: 1 }];

async function loadScenarios(filter) {
  const dir = path.join(BENCH_DIR, 'scenarios');
  // By name without the extension (so `auth` comes before `auth-unique`).
  const stem = (f) => f.slice(0, -3);
  const files = (await readdir(dir))
    .filter((f) => f.endsWith('.js'))
    .sort((a, b) => (stem(a) < stem(b) ? -1 : stem(a) > stem(b) ? 1 : 0));
  const scenarios = [];
  for (const file of files) {
    const mod = await import(pathToFileURL(path.join(dir, file)).href);
    const s = mod.default;
    if (!s || typeof s.name !== 'string' || typeof s.gatewayConfig !== 'function') {
      throw new BenchError(`bench/scenarios/${file}: default export needs at least { name, gatewayConfig(ctx) }`);
    }
    const variants = (s.variants?.length ? s.variants : DEFAULT_VARIANTS).map((v, i) => ({
      ...v, // anything else is the scenario's own (its gatewayConfig reads ctx.variant)
      id: String(v.id ?? i + 1),
      label: v.label ?? `workers: ${v.workers ?? 1}`,
      workers: v.workers ?? 1,
      wrk: v.wrk ?? (v.workers ?? 1) === 1,
      ...(v.compareTo === undefined ? {} : { compareTo: [v.compareTo].flat() }),
    }));
    const competitors = (s.competitors ?? []).map((c, i) => {
      if (!c || typeof c.name !== 'string' || !(typeof c.cmd === 'function' || Array.isArray(c.cmd))) {
        throw new BenchError(`bench/scenarios/${file}: competitors[${i}] needs { name, cmd: [argv] | (ctx) => [argv] }`);
      }
      const kind = c.kind ?? 'http';
      if (kind !== 'http' && kind !== 'loop')
        throw new BenchError(`bench/scenarios/${file}: competitors[${i}].kind must be 'http' or 'loop'`);
      return { ...c, kind, label: c.label ?? c.name };
    });
    const services = (s.services ?? []).map((c, i) => {
      if (!c || typeof c.name !== 'string' || !(typeof c.cmd === 'function' || Array.isArray(c.cmd))) {
        throw new BenchError(`bench/scenarios/${file}: services[${i}] needs { name, cmd: [argv] | (ctx) => [argv] }`);
      }
      return c;
    });
    const compareTo = [s.compareTo ?? 'baseline'].flat();
    if (compareTo.length === 0) throw new BenchError(`bench/scenarios/${file}: compareTo is an empty list`);
    scenarios.push({ ...s, file, variants, competitors, services, compareTo, sameRounds: s.sameRounds === true });
  }
  // passthrough first: it is the reference the others are read against.
  scenarios.sort((a, b) => (a.name === 'passthrough' ? -1 : b.name === 'passthrough' ? 1 : 0));
  const names = new Set(['baseline', 'upstream']);
  for (const s of scenarios) {
    if (names.has(s.name)) throw new BenchError(`two scenarios (or a scenario and a reference) are named ${s.name}`);
    names.add(s.name);
  }
  // `name:variant` names one variant of a scenario (its own or another's) as a compareTo target.
  for (const s of scenarios) for (const v of s.variants) names.add(`${s.name}:${v.id}`);
  for (const s of scenarios) {
    const own = new Set();
    for (const c of s.competitors) {
      if (names.has(c.name) || own.has(c.name)) throw new BenchError(`${s.file}: competitor name ${c.name} is taken`);
      own.add(c.name);
    }
    const unknown = [...s.compareTo, ...s.variants.flatMap((v) => v.compareTo ?? [])].filter((t) => !names.has(t) && !own.has(t));
    if (unknown.length)
      throw new BenchError(
        `${s.file}: compareTo ${unknown.join(', ')}: not a scenario, scenario:variant, competitor, 'baseline' or 'upstream'`,
      );
  }
  if (filter.length === 0) return scenarios;

  // A scenario named alone runs whole; `name:variant` and `name:competitor` pick parts of it.
  const picked = [];
  for (const s of scenarios) {
    if (filter.includes(s.name)) picked.push(s);
    else {
      const variants = s.variants.filter((v) => filter.includes(`${s.name}:${v.id}`));
      const competitors = s.competitors.filter((c) => filter.includes(`${s.name}:${c.name}`));
      if (variants.length || competitors.length) picked.push({ ...s, variants, competitors });
    }
  }
  const known = scenarios.flatMap((s) => [
    s.name,
    ...s.variants.map((v) => `${s.name}:${v.id}`),
    ...s.competitors.map((c) => `${s.name}:${c.name}`),
  ]);
  const unknown = filter.filter((f) => !known.includes(f));
  if (unknown.length) throw new BenchError(`BENCH_SCENARIOS: unknown ${unknown.join(', ')}; known: ${known.join(', ')}`);
  return picked;
}

// ---------------------------------------------------------------- reporting

const fmtInt = (n) => (n === null || n === undefined ? '-' : Math.round(n).toLocaleString('en-US'));
const fmtMs = (n) => (n === null || n === undefined ? '-' : n.toFixed(2));
const fmtRatio = (n) => (n === null || n === undefined || !Number.isFinite(n) ? '-' : `${n.toFixed(2)}x`);

function printTable(rows) {
  const header = ['target', 'tool', 'req/s', 'p50 ms', 'p99 ms', 'err/non-2xx', 'vs baseline', 'cpu µs/req'];
  const body = rows.map((r) => [
    r.target,
    r.tool,
    fmtInt(r.reqPerSec),
    fmtMs(r.latencyMs.p50),
    fmtMs(r.latencyMs.p99),
    `${r.errors}/${r.non2xx}`,
    fmtRatio(r.vsBaseline) + (r.rounds ? '*' : ''),
    fmtInt(r.cpuUsPerReq),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 || i === 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of body) console.log(line(row));
  if (rows.some((r) => r.rounds)) {
    console.log(
      '* median of the paired rounds (each gateway run over the baseline run next to it); req/s and latency: the median run',
    );
  }
}

function gitInfo() {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    const dirty =
      execFileSync('git', ['status', '--porcelain'], {
        cwd: ROOT,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim() !== '';
    return { commit, dirty };
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- main

async function main() {
  const settings = readSettings();
  pinning = settings.pin;
  if (pinning !== null) execFileSync(pinning.taskset, ['-a', '-pc', pinning.load, String(process.pid)], { stdio: 'ignore' });
  const scenarios = await loadScenarios(settings.scenarios);
  const gatewayBin = path.join(ROOT, 'bin', 'bulwark.js');
  if (!settings.gatewayCmd && !existsSync(gatewayBin)) {
    throw new BenchError(
      `${path.relative(ROOT, gatewayBin)} not found: build the gateway, or set BENCH_GATEWAY_CMD (see bench/README.md)`,
    );
  }
  const startedAt = new Date();
  const loadavgAtStart = os.loadavg();
  tmpDir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-bench-'));

  const cpus = os.cpus();
  console.log(
    `bulwark bench: ${settings.duration} s per target (+${settings.warmup} s warm-up), ${settings.connections} connections, ` +
      `pipelining ${settings.pipelining}${settings.rounds > 1 ? `, ${settings.rounds} paired rounds per gateway` : ''}; node ${process.version}, ${cpus.length} CPU(s)` +
      (cpus[0] ? ` (${cpus[0].model.trim()})` : ''),
  );
  console.log(
    `gateway: ${settings.gatewayCmd ? `BENCH_GATEWAY_CMD=${settings.gatewayCmd}` : 'node bin/bulwark.js serve'}; ` +
      `wrk: ${settings.wrk ?? (process.env.BENCH_WRK === '0' ? 'disabled (BENCH_WRK=0)' : 'not installed')}`,
  );
  console.log(`scenarios: ${scenarios.map((s) => `${s.name} [${s.variants.map((v) => v.label).join(', ')}]`).join('; ')}`);
  if (pinning !== null) {
    console.log(
      `pinned (BENCH_PIN=1): load generator and upstream on CPU ${pinning.load}, proxy under test on CPU ${pinning.proxy}`,
    );
  } else if (cpus.length <= 2) {
    console.log(
      `note: ${cpus.length} CPU(s): load generator, upstream and proxy share them; compare ratios, not absolute numbers.`,
    );
  }
  if (loadavgAtStart[0] > cpus.length) {
    console.log(
      `note: load average ${loadavgAtStart[0].toFixed(2)} before the run: something else is using the CPU; expect noisy numbers.`,
    );
  }
  console.log('');

  const rows = [];
  const warnings = [];
  const warn = (msg) => {
    warnings.push(msg);
    console.log(`  WARNING: ${msg}`);
  };
  const checkRow = (row) => {
    if (row.errors > 0 || row.non2xx > 0) {
      const codes = row.statusCodes
        ? ` (status ${Object.entries(row.statusCodes)
            .map(([c, n]) => `${c}: ${n}`)
            .join(', ')})`
        : '';
      warn(
        `${row.target} [${row.tool}]: ${row.errors} errors, ${row.non2xx} non-2xx${codes}; these numbers do not measure the happy path`,
      );
    }
  };
  const report = (row) => {
    if (row.tool === 'loop') return console.log(`  loop: ${fmtInt(row.reqPerSec)} ops/s, ${row.cpuUsPerReq} µs/op`);
    const lat = `p50 ${fmtMs(row.latencyMs.p50)} ms, p99 ${fmtMs(row.latencyMs.p99)} ms`;
    const cpu = row.cpuUsPerReq === null || row.cpuUsPerReq === undefined ? '' : `, cpu ${fmtInt(row.cpuUsPerReq)} µs/req`;
    console.log(`  ${row.tool}: ${fmtInt(row.reqPerSec)} req/s, ${lat}, ${row.errors} errors, ${row.non2xx} non-2xx${cpu}`);
    checkRow(row);
  };

  const upstream = await startHelper('upstream', 'upstream.js', [], 'load');
  const baseline = await startHelper('baseline proxy', 'baseline-proxy.js', ['--upstream-port', String(upstream.port)], 'proxy');
  const upstreamUrl = `http://127.0.0.1:${upstream.port}`;

  // Reference targets are measured once per distinct request shape.
  const references = new Map();
  const isDefaultRequest = (r) =>
    r.method === 'GET' && r.path === '/' && Object.keys(r.headers).length === 0 && r.body === undefined && !r.dynamic;
  const tagFor = (request) => {
    if (isDefaultRequest(request)) return '';
    const names = Object.keys(request.headers);
    return ` [${describeRequest(request)}${names.length ? ` +${names.join(',')}` : ''}${request.dynamic ? ' (new per request)' : ''}]`;
  };
  // wrk sends one fixed request: not for requests whose headers change per request.
  const wrkFor = (request) => Boolean(settings.wrk) && !request.perRequestHeaders;
  const BASELINE_TARGET = { kind: 'baseline', name: 'baseline', pgid: baseline.pid };

  async function measureReferences(request) {
    const key = requestKey(request);
    if (references.has(key)) return references.get(key);
    const ref = {};
    for (const [kind, target, port, useWrk, pgid] of [
      ['upstream', `upstream (direct)${tagFor(request)}`, upstream.port, false, upstream.pid],
      ['baseline', `baseline proxy${tagFor(request)}`, baseline.port, true, baseline.pid],
    ]) {
      console.log(`${target}: http://127.0.0.1:${port}${request.path}`);
      const probe = await httpRequest({ port, ...request });
      if (probe.status < 200 || probe.status > 299)
        warn(`${target}: probe ${describeRequest(request)} answered ${probe.status}: ${probe.body.slice(0, 200)}`);
      const url = `http://127.0.0.1:${port}${request.path}`;
      const ac = { target, kind, request: key, ...(await measureAutocannon(url, request, settings, { kind, name: kind, pgid })) };
      rows.push(ac);
      report(ac);
      ref[kind] = ac;
      if (useWrk && wrkFor(request)) {
        const wrk = { target, kind, request: key, ...(await measureWrk(url, request, settings)) };
        rows.push(wrk);
        report(wrk);
        ref[`${kind}Wrk`] = wrk;
      }
    }
    references.set(key, ref);
    return ref;
  }

  /** N rounds of one target → its table row: the median run, errors summed, the median paired ratio. */
  function aggregateRounds(pairs) {
    const byRate = [...pairs].sort((x, y) => x.gateway.reqPerSec - y.gateway.reqPerSec);
    const ratios = pairs.map((r) => r.ratio).sort((x, y) => x - y);
    const mid = byRate[Math.floor((byRate.length - 1) / 2)].gateway;
    return {
      ...mid,
      errors: pairs.reduce((n, r) => n + r.gateway.errors, 0),
      timeouts: pairs.reduce((n, r) => n + r.gateway.timeouts, 0),
      non2xx: pairs.reduce((n, r) => n + r.gateway.non2xx, 0),
      statusCodes: undefined,
      vsBaseline: median(ratios),
      ratioRange: [ratios[0], ratios[ratios.length - 1]],
      rounds: pairs.map((r) => ({
        baseline: r.baseline.reqPerSec,
        gateway: r.gateway.reqPerSec,
        ratio: r.ratio,
        gatewayRun: r.gateway,
        baselineRun: r.baseline,
      })),
    };
  }

  /**
   * BENCH_ROUNDS > 1: every round measures the baseline and each target once, in an
   * order rotated from round to round (ABBA… with one target), so they all see the
   * same machine noise; each target run is divided by the baseline run of its round.
   * Targets measured in the same rounds (`roundGroup`) are also compared with each
   * other round by round, without going through the baseline.
   */
  let roundGroups = 0;
  async function measureRounds(targets, baselineUrl, request) {
    const pairs = targets.map(() => []);
    const roundGroup = ++roundGroups;
    for (let i = 0; i < settings.rounds; i++) {
      const order = [-1, ...targets.keys()];
      const shift = i % order.length;
      const runs = new Map();
      for (const j of [...order.slice(shift), ...order.slice(0, shift)]) {
        runs.set(j, j < 0 ? await measureOnce(baselineUrl, request, settings, BASELINE_TARGET) : await targets[j].measure());
      }
      const b = runs.get(-1);
      const parts = targets.map((t, j) => {
        const g = runs.get(j);
        return `${t.who} ${fmtInt(g.reqPerSec)} ${t.unit}, ${fmtRatio(g.reqPerSec / b.reqPerSec)}`;
      });
      console.log(`  round ${i + 1}/${settings.rounds}: baseline ${fmtInt(b.reqPerSec)} req/s, ${parts.join('; ')}`);
      if (b.errors > 0 || b.non2xx > 0)
        warn(`${targets[0].label}: paired baseline run ${i + 1}: ${b.errors} errors, ${b.non2xx} non-2xx`);
      targets.forEach((_t, j) =>
        pairs[j].push({ baseline: b, gateway: runs.get(j), ratio: runs.get(j).reqPerSec / b.reqPerSec }),
      );
    }
    return pairs.map((p) => ({ ...aggregateRounds(p), roundGroup }));
  }

  /**
   * Targets serving (or, for loops, running) the same request — a gateway variant and
   * the scenario's competitors: probe, warm-up, autocannon (in shared rounds with
   * BENCH_ROUNDS > 1), then wrk for each that asks for it.
   */
  async function measureTargets(targets, request, ref) {
    for (const t of targets) {
      if (!t.url) continue;
      const probe = await httpRequest({ port: t.port, ...request });
      countServed(t.target, 1, { run: false });
      if (probe.status < 200 || probe.status > 299)
        warn(`${t.label}: probe ${describeRequest(request)} answered ${probe.status}: ${probe.body.slice(0, 200)}`);
    }
    let runs;
    if (settings.rounds === 1) {
      runs = [];
      for (const t of targets) {
        if (t.url) await warmUp(t.url, request, settings, t.target);
        const run = await t.measure();
        runs.push({ ...run, vsBaseline: run.reqPerSec / ref.baseline.reqPerSec });
      }
    } else {
      for (const t of targets) if (t.url) await warmUp(t.url, request, settings, t.target);
      runs = await measureRounds(targets, `http://127.0.0.1:${baseline.port}${request.path}`, request);
    }
    const out = [];
    for (const [j, t] of targets.entries()) {
      if (targets.length > 1) console.log(`${t.label}:`);
      const meta = { target: t.label, kind: t.kind, request: t.url ? requestKey(request) : null };
      const row = { ...meta, ...runs[j] };
      rows.push(row);
      report(row);
      const measured = { [row.tool === 'loop' ? 'loop' : 'autocannon']: row };
      if (t.useWrk && wrkFor(request)) {
        const wrk = { ...meta, ...(await measureWrk(t.url, request, settings)) };
        countServed(t.target, wrk.totalRequests);
        wrk.vsBaseline = ref.baselineWrk ? wrk.reqPerSec / ref.baselineWrk.reqPerSec : null;
        rows.push(wrk);
        report(wrk);
        measured.wrk = wrk;
      }
      out.push(measured);
    }
    return out;
  }

  /** One run of a `kind: 'loop'` competitor: it runs for BENCH_DURATION and prints {"opsPerSec":N,…} last. */
  async function runLoop(competitor, argv) {
    const [command, ...args] = argv;
    const entry = startChild(competitor.name, command, [...args, '--duration', String(settings.duration)], { cpus: 'proxy' });
    let stdout = '';
    entry.child.stdout.setEncoding('utf8');
    entry.child.stdout.on('data', (chunk) => (stdout += chunk));
    const exit = await entry.exited;
    await stopChild(entry);
    if (stopping) throw new BenchError('interrupted');
    let parsed = null;
    try {
      parsed = JSON.parse(stdout.trim().split('\n').pop() ?? '');
    } catch {
      /* reported below */
    }
    if (exit.code !== 0 || !Number.isFinite(parsed?.opsPerSec)) {
      throw new BenchError(`${competitor.label} failed (${describeExit(exit)}): ${entry.stderr || stdout || 'no output'}`);
    }
    return {
      tool: 'loop',
      reqPerSec: parsed.opsPerSec,
      totalRequests: parsed.ops ?? null,
      latencyMs: { p50: null, p90: null, p99: null },
      errors: 0,
      timeouts: 0,
      non2xx: 0,
      // One busy thread: its CPU per operation is its wall time per operation.
      cpuUsPerReq: Math.round((1e6 / parsed.opsPerSec) * 10) / 10,
      loop: parsed,
    };
  }

  /** Starts an HTTP competitor (or prepares a loop one); returns its measurement target and result record. */
  async function startCompetitor(scenario, competitor, ctx, request) {
    const argv = (typeof competitor.cmd === 'function' ? await competitor.cmd(ctx) : competitor.cmd).map(String);
    if (argv[0] === 'node') argv[0] = process.execPath;
    const label = competitor.label;
    const result = { scenario: scenario.name, competitor: competitor.name, kind: competitor.kind, label, argv };
    const shown = argv.map((a) => (a === process.execPath ? 'node' : a.startsWith(ROOT + path.sep) ? path.relative(ROOT, a) : a));
    const base = { label, kind: 'competitor', who: competitor.name, result };
    if (competitor.kind === 'loop') {
      console.log(`${label}: ${shown.join(' ')} --duration ${settings.duration}`);
      return { ...base, unit: 'ops/s', measure: () => runLoop(competitor, argv) };
    }
    console.log(`${label}: ${shown.join(' ')}`);
    const entry = startChild(label, argv[0], [...argv.slice(1), '--exit-with-stdin'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      cpus: 'proxy',
    });
    try {
      const { port } = await readPortLine(entry);
      const url = `http://127.0.0.1:${port}${request.path}`;
      console.log(`  ${url}`);
      const target = { kind: 'competitor', name: competitor.name, pgid: entry.pid };
      return {
        ...base,
        unit: 'req/s',
        port,
        url,
        target,
        entry,
        useWrk: true,
        measure: () => measureOnce(url, request, settings, target),
      };
    } catch (error) {
      await stopChild(entry);
      throw error;
    }
  }

  const publicSettings = {
    duration: settings.duration,
    warmup: settings.warmup,
    rounds: settings.rounds,
    connections: settings.connections,
    pipelining: settings.pipelining,
  };
  const scenarioResults = [];
  const competitorResults = [];
  const scenarioCtx = new Map();
  const serviceEntries = [];
  for (const scenario of scenarios) {
    const baseCtx = {
      upstreamPort: upstream.port,
      upstreamUrl,
      tmpDir,
      benchDir: BENCH_DIR,
      rootDir: ROOT,
      settings: publicSettings,
      services: {},
    };
    // The scenario's own helper processes (e.g. an OTLP sink), up before its setup and its gateways, until the end.
    for (const service of scenario.services) {
      const argv = (typeof service.cmd === 'function' ? await service.cmd({ ...baseCtx }) : service.cmd).map(String);
      if (argv[0] === 'node') argv[0] = process.execPath;
      const name = `${scenario.name}: ${service.name}`;
      const entry = startChild(name, argv[0], [...argv.slice(1), '--exit-with-stdin'], {
        stdio: ['pipe', 'pipe', 'pipe'],
        cpus: 'load',
      });
      serviceEntries.push(entry);
      const { port } = await readPortLine(entry);
      baseCtx.services[service.name] = { port, url: `http://127.0.0.1:${port}` };
      console.log(`${name}: http://127.0.0.1:${port}`);
    }
    const extra = typeof scenario.setup === 'function' ? ((await scenario.setup({ ...baseCtx })) ?? {}) : {};
    const request = normalizeRequest(
      typeof scenario.request === 'function' ? scenario.request({ ...baseCtx, ...extra }) : scenario.request,
      scenario.name,
    );
    scenarioCtx.set(scenario.name, { ...baseCtx, ...extra, request });
    const ref = await measureReferences(request);

    // A scenario with competitors (or `sameRounds: true`) measures all its gateway variants and
    // its competitors in the same rounds (every process started first, idle while another is
    // measured), so each comparison inside the scenario is run against run. Otherwise, one
    // variant at a time.
    const startVariant = async (variant) => {
      const label = `${scenario.name} (${variant.label})`;
      const ctx = {
        ...baseCtx,
        ...extra,
        listenPort: await freePort(),
        adminPort: await freePort(),
        workers: variant.workers,
        variant,
        request,
      };
      const config = await scenario.gatewayConfig(ctx);
      const configText = typeof config === 'string' ? config : YAML.stringify(config);
      const slug = `${scenario.name}-${variant.id}`.replace(/[^A-Za-z0-9_.-]/g, '_');
      const configPath = path.join(tmpDir, `${slug}.yaml`);
      await writeFile(configPath, configText);

      console.log(`${label}: http://127.0.0.1:${ctx.listenPort}${request.path} (config ${configPath})`);
      const gateway = await startGateway({ label, configPath, ctx, settings, logBase: path.join(tmpDir, slug) });
      const compareTo = variant.compareTo ?? scenario.compareTo;
      const result = {
        scenario: scenario.name,
        variant: variant.id,
        label,
        workers: variant.workers,
        compareTo: compareTo.length === 1 ? compareTo[0] : compareTo,
        config: configText,
      };
      const url = `http://127.0.0.1:${ctx.listenPort}${request.path}`;
      const target = { kind: 'gateway', name: label, variant: variant.id, pgid: gateway.pid };
      return {
        label,
        kind: 'gateway',
        who: 'gateway',
        unit: 'req/s',
        port: ctx.listenPort,
        url,
        target,
        useWrk: variant.wrk,
        measure: () => measureOnce(url, request, settings, target),
        gateway,
        result,
        ctx,
      };
    };
    // beforeStop (gateway still up: e.g. scrape its /metrics) and afterStop (e.g. count what it wrote):
    // lines for the notes; `run.warn` raises a WARNING.
    const runHook = async (name, t, info) => {
      if (typeof scenario[name] !== 'function' || stopping) return;
      const count = served.get(t.target.name) ?? { responses: 0, runs: 0 };
      const run = {
        label: t.label,
        served: count.responses,
        servedMax: count.responses + count.runs * settings.connections * settings.pipelining,
        warn: (msg) => warn(`${t.label}: ${msg}`),
        ...info,
      };
      try {
        for (const line of (await scenario[name](t.ctx, run)) ?? []) {
          (t.result.checks ??= []).push(line);
          console.log(`  ${t.label}: ${line}`);
        }
      } catch (error) {
        warn(`${t.label}: ${name} failed: ${error?.message ?? error}`);
      }
    };
    const stopVariant = async (t, measured) => {
      const { gateway, result, label } = t;
      if (measured) {
        result.autocannon = measured.autocannon;
        if (measured.wrk) result.wrk = measured.wrk;
      }
      if (gateway.exit && !stopping)
        warn(`${label}: the gateway exited during the run (${describeExit(gateway.exit)})\n${gatewayLogs(gateway, 2_000)}`);
      if (!gateway.exit) await runHook('beforeStop', t, {});
      const exit = await stopChild(gateway);
      result.exit = exit;
      if (!stopping && exit && exit.code !== 0 && exit.signal !== 'SIGTERM') {
        warn(`${label}: exited with ${describeExit(exit)} after SIGTERM (expected code 0)`);
      }
      await runHook('afterStop', t, { exit });
      result.references = {
        upstream: ref.upstream.reqPerSec,
        baseline: ref.baseline.reqPerSec,
        baselineWrk: ref.baselineWrk?.reqPerSec ?? null,
      };
      scenarioResults.push(result);
    };
    const stopCompetitorTarget = async (t, measured) => {
      if (t.entry) {
        if (t.entry.exit && !stopping)
          warn(`${t.label}: exited during the run (${describeExit(t.entry.exit)})\n${t.entry.stderr.slice(-2_000)}`);
        t.result.exit = await stopChild(t.entry);
      }
      Object.assign(t.result, measured ?? {});
      competitorResults.push(t.result);
    };
    const measureGroup = async (variants, competitors) => {
      const targets = [];
      let measured = null;
      try {
        for (const variant of variants) targets.push(await startVariant(variant));
        for (const competitor of competitors) {
          targets.push(await startCompetitor(scenario, competitor, { ...baseCtx, ...extra, request }, request));
        }
        const gateways = targets.filter((t) => t.kind === 'gateway');
        if (gateways.length > 1) for (const t of gateways) t.who = `gateway (${t.label.slice(scenario.name.length + 2, -1)})`;
        measured = await measureTargets(targets, request, ref);
      } finally {
        for (const [j, t] of targets.entries()) {
          if (t.kind === 'gateway') await stopVariant(t, measured?.[j]);
          else await stopCompetitorTarget(t, measured?.[j]);
        }
      }
    };

    if (scenario.competitors.length > 0 || scenario.sameRounds) await measureGroup(scenario.variants, scenario.competitors);
    else for (const variant of scenario.variants) await measureGroup([variant], []);
  }

  await stopChild(baseline);
  await stopChild(upstream);

  // Ratios for the reference rows.
  for (const row of rows) {
    if (row.vsBaseline !== undefined) continue;
    const ref = [...references.values()].find((r) => r[row.kind] === row || r[`${row.kind}Wrk`] === row);
    const base = row.tool === 'wrk' ? ref?.baselineWrk : ref?.baseline;
    row.vsBaseline = base ? row.reqPerSec / base.reqPerSec : null;
  }

  // compareTo (one target or a list): 'baseline' | 'upstream' | the name of another
  // scenario (same variant id, else its first) | 'scenario:variant' (that variant; of this
  // scenario too) | one of this scenario's competitors. Ratios go through vsBaseline, which
  // BENCH_ROUNDS > 1 computes from paired runs; targets measured in the same rounds (a
  // variant and its competitors, or the variants of a `sameRounds` scenario) are compared
  // run by run instead.
  const summary = [];
  for (const r of scenarioResults) {
    const scenario = scenarios.find((s) => s.name === r.scenario);
    const variant = scenario.variants.find((v) => v.id === r.variant);
    for (const target of variant?.compareTo ?? scenario.compareTo) {
      const competitor = competitorResults.find((c) => c.scenario === r.scenario && c.competitor === target);
      const other = (tool) => {
        if (competitor) return competitor.kind === 'loop' ? (tool === 'autocannon' ? competitor.loop : null) : competitor[tool];
        const colon = target.indexOf(':');
        if (colon > 0) {
          // 'scenario:variant': that very variant (of this scenario, or of another).
          const [name, id] = [target.slice(0, colon), target.slice(colon + 1)];
          return scenarioResults.find((p) => p.scenario === name && p.variant === id)?.[tool] ?? null;
        }
        const peers = scenarioResults.filter((p) => p.scenario === target);
        return (peers.find((p) => p.variant === r.variant) ?? peers[0])?.[tool] ?? null;
      };
      const pick = (tool) => {
        const mine = r[tool];
        if (!mine || mine.vsBaseline === null || mine.vsBaseline === undefined) return null;
        if (target === 'baseline') return mine.vsBaseline;
        if (target === 'upstream') {
          const up = tool === 'autocannon' ? references.get(mine.request)?.upstream : null;
          return up ? mine.vsBaseline / up.vsBaseline : null;
        }
        const theirs = other(tool);
        return theirs?.vsBaseline ? mine.vsBaseline / theirs.vsBaseline : null;
      };
      const entry = {
        scenario: r.scenario,
        variant: r.variant,
        label: r.label,
        compareTo: target,
        ratio: pick('autocannon'),
        wrkRatio: pick('wrk'),
        ...(r.autocannon?.ratioRange ? { rounds: settings.rounds, pairedRatioRange: r.autocannon.ratioRange } : {}),
      };
      if (!['baseline', 'upstream'].includes(target)) {
        const mine = r.autocannon;
        const theirs = other('autocannon');
        if (mine?.rounds && theirs?.rounds && mine.rounds.length === theirs.rounds.length) {
          const sameRounds = mine.roundGroup !== undefined && mine.roundGroup === theirs.roundGroup;
          // Measured in the same rounds: compare run i with run i directly (seconds apart, same
          // machine state). Otherwise round i of each over its own paired baseline run.
          const q = mine.rounds
            .map((x, i) => (sameRounds ? x.gateway / theirs.rounds[i].gateway : x.ratio / theirs.rounds[i].ratio))
            .sort((a, b) => a - b);
          if (sameRounds) {
            entry.sameRounds = true;
            entry.ratio = median(q);
          }
          entry.perRoundRange = [q[0], q[q.length - 1]];
        }
        if (mine?.cpuUsPerReq && theirs?.cpuUsPerReq) entry.cpuUsPerReq = { mine: mine.cpuUsPerReq, theirs: theirs.cpuUsPerReq };
        if (competitor?.kind === 'loop' && mine && theirs && !entry.sameRounds) {
          entry.direct = { reqPerSec: mine.reqPerSec, opsPerSec: theirs.reqPerSec, ratio: mine.reqPerSec / theirs.reqPerSec };
        }
      }
      const goal = (variant?.goals ?? scenario.goals)?.[target];
      if (typeof goal === 'number') Object.assign(entry, { goal, goalMet: entry.ratio === null ? null : entry.ratio >= goal });
      summary.push(entry);
    }
  }

  console.log('');
  printTable(rows);
  console.log('');
  for (const s of summary) {
    const ratio = s.ratio === null ? `n/a (${s.compareTo} not measured)` : `${s.ratio.toFixed(2)}x ${s.compareTo}`;
    const notes = [];
    const range = s.perRoundRange?.map((x) => x.toFixed(2)).join('-');
    if (s.rounds && s.sameRounds) notes.push(`median of ${s.rounds} rounds, measured in the same rounds; per round ${range}x`);
    else if (s.rounds && s.perRoundRange) notes.push(`median of ${s.rounds} paired rounds vs baseline each; per round ${range}x`);
    else if (s.rounds)
      notes.push(
        `median of ${s.rounds} paired rounds vs baseline, range ${s.pairedRatioRange.map((x) => x.toFixed(2)).join('-')}x`,
      );
    if (s.wrkRatio !== null) notes.push(`wrk: ${s.wrkRatio.toFixed(2)}x`);
    if (s.direct)
      notes.push(
        `direct: ${fmtInt(s.direct.reqPerSec)} req/s over ${fmtInt(s.direct.opsPerSec)} ops/s = ${s.direct.ratio.toFixed(2)}x`,
      );
    if (s.cpuUsPerReq) notes.push(`cpu ${fmtInt(s.cpuUsPerReq.mine)} vs ${fmtInt(s.cpuUsPerReq.theirs)} µs/req`);
    if (s.goal !== undefined)
      notes.push(`goal ≥ ${s.goal.toFixed(2)}x: ${s.goalMet === null ? 'not measured' : s.goalMet ? 'met' : 'NOT met'}`);
    console.log(`${s.label}: ${ratio}${notes.length ? ` (${notes.join('; ')})` : ''}`);
  }
  // Scenario notes: whatever a scenario wants said about its run (e.g. how many unique tokens it used).
  const notes = [];
  for (const scenario of scenarios) {
    if (typeof scenario.notes !== 'function') continue;
    for (const line of (await scenario.notes(scenarioCtx.get(scenario.name))) ?? []) {
      notes.push({ scenario: scenario.name, note: line });
      console.log(`${scenario.name}: ${line}`);
    }
  }
  // What each variant's beforeStop/afterStop checks found (already printed as they ran; repeated here, by the summary).
  for (const r of scenarioResults) {
    for (const line of r.checks ?? []) {
      notes.push({ scenario: r.scenario, variant: r.variant, note: line });
      console.log(`${r.label}: ${line}`);
    }
  }
  for (const entry of serviceEntries) await stopChild(entry);
  if (settings.rounds === 1 && summary.length) {
    console.log(
      '(one run per target: on a shared or small machine the ratio can swing by tens of percent; BENCH_ROUNDS=5 pairs runs)',
    );
  }
  if (warnings.length) {
    console.log('');
    console.log(`${warnings.length} WARNING(S): runs that saw errors or non-2xx responses, or failed checks; see above.`);
  }

  const resultsDir = path.join(BENCH_DIR, 'results');
  await mkdir(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `${startedAt.toISOString().replace(/:/g, '-')}.json`);
  const json = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    settings: { ...settings, wrk: settings.wrk !== null },
    machine: {
      node: process.version,
      platform: `${os.platform()} ${os.release()} ${os.arch()}`,
      cpus: cpus.length,
      cpuModel: cpus[0]?.model.trim() ?? null,
      availableParallelism: os.availableParallelism?.() ?? cpus.length,
      totalMemBytes: os.totalmem(),
      loadavgAtStart,
      loadavgAtEnd: os.loadavg(),
    },
    git: gitInfo(),
    gateway: settings.gatewayCmd ? { cmd: settings.gatewayCmd } : { cmd: 'node bin/bulwark.js serve --config <tmp.yaml>' },
    summary,
    rows,
    scenarios: scenarioResults,
    competitors: competitorResults,
    notes,
    warnings,
  };
  await writeFile(file, JSON.stringify(json, null, 2) + '\n');
  console.log(`\nresults: ${path.relative(process.cwd(), file)}`);
  await rm(tmpDir, { recursive: true, force: true });
  tmpDir = null;
}

// Cleanup on every way out.
async function shutdown(code, message) {
  if (stopping) return;
  stopping = true;
  if (message) console.error(message);
  currentLoad?.stop();
  await stopAll().catch(() => {});
  if (tmpDir && code === 1) console.error(`bench: configs and gateway logs kept in ${tmpDir}`);
  else if (tmpDir) await rm(tmpDir, { recursive: true, force: true }).catch(() => {});
  process.exit(code);
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    if (stopping) {
      killAllSync();
      process.exit(130);
    }
    void shutdown(130, `\n${signal}: stopping child processes…`);
  });
}
process.on('exit', killAllSync);

main().then(
  () => process.exit(0),
  (error) => {
    if (stopping) return;
    void shutdown(1, error instanceof BenchError ? `bench: ${error.message}` : (error?.stack ?? String(error)));
  },
);
