/**
 * `/metrics` and profiling across real cluster workers: the fixture runs the
 * built code (dist/) as `bulwark serve` would, a primary with two workers.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePrometheus, samplesOf, valueOf } from './helpers.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const fixture = fileURLToPath(new URL('./fixtures/cluster.mjs', import.meta.url));
let child: ChildProcess;
let port: number;
let workers: Record<string, number>;
const unexpected: string[] = [];

function get(path: string, firstBytes = false): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        if (firstBytes && Buffer.concat(chunks).length >= 64) {
          resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() });
          res.destroy();
        }
      });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', () => {});
    });
    req.on('error', reject);
    req.end();
  });
}

const profileDirs = () => readdirSync(tmpdir()).filter((d) => d.startsWith('bulwark-profile-'));

beforeAll(async () => {
  // The fixture runs dist/ (test/setup/build.ts builds it before any file starts).
  if (!existsSync(`${root}dist/telemetry/index.js`)) throw new Error('dist/telemetry was not built');

  child = spawn(process.execPath, [fixture], {
    cwd: root,
    env: { ...process.env, CLUSTER_TIMEOUT_MS: '1500' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    let buffer = '';
    const timer = setTimeout(() => reject(new Error('cluster did not start')), 20_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = JSON.parse(buffer.slice(0, nl)) as { port?: number; workers?: Record<string, number>; unexpected?: string };
        buffer = buffer.slice(nl + 1);
        if (line.unexpected !== undefined) unexpected.push(line.unexpected);
        if (line.port !== undefined) {
          port = line.port;
          workers = line.workers!;
          clearTimeout(timer);
          resolve();
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`cluster exited ${code}`)));
  });
}, 120_000);

afterAll(async () => {
  if (child === undefined || child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
});

describe('cluster aggregation', () => {
  it('the primary /metrics reports the whole instance', async () => {
    const ids = Object.keys(workers).sort();
    expect(ids).toHaveLength(2);
    const res = await get('/metrics');
    expect(res.status).toBe(200);
    const f = parsePrometheus(res.body);
    // Worker N served 3 × N requests: the instance total is their sum.
    const expected = ids.reduce((n, id) => n + 3 * Number(id), 0);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_count', { route: 'r1', method: 'GET', status_class: '2xx' })).toBe(
      expected,
    );
    expect(valueOf(f, 'bulwark_http_response_body_bytes_total', { route: 'r1' })).toBe(expected * 10);
    expect(valueOf(f, 'bulwark_upstream_requests_total', { upstream: 'orders', status_class: '2xx' })).toBe(2);
    // Counted on the primary, present once.
    expect(valueOf(f, 'bulwark_config_reloads_total', { outcome: 'ok' })).toBe(1);
    expect(valueOf(f, 'bulwark_cluster_workers', { state: 'reporting' })).toBe(2);
    expect(valueOf(f, 'bulwark_cluster_workers', { state: 'missing' })).toBe(0);
    // Per-process health keeps a worker label (primary = 0); everything else is summed without one.
    const eluWorkers = samplesOf(f, 'bulwark_event_loop_utilization_ratio')
      .map((s) => s.labels['worker'])
      .sort();
    expect(eluWorkers).toEqual(['0', ...ids].sort());
    expect(
      samplesOf(f, 'bulwark_heap_used_bytes')
        .map((s) => s.labels['worker'])
        .sort(),
    ).toEqual(['0', ...ids].sort());
    expect(samplesOf(f, 'bulwark_event_loop_delay_seconds_count').length).toBe(3);
    expect(samplesOf(f, 'bulwark_http_request_duration_seconds_count').every((s) => s.labels['worker'] === undefined)).toBe(true);
    expect(valueOf(f, 'process_resident_memory_bytes')!).toBeGreaterThan(0);
  });

  it('scrapes stay consistent while the lead traffic shares the channel', async () => {
    const results = await Promise.all([get('/metrics'), get('/metrics'), get('/metrics')]);
    for (const r of results) expect(valueOf(parsePrometheus(r.body), 'bulwark_cluster_workers', { state: 'reporting' })).toBe(2);
    // Neither side ever saw a message it had to misread (prom-client's own protocol is never used).
    expect(unexpected).toEqual([]);
  });

  it('a worker that does not answer is reported missing instead of failing the scrape', async () => {
    const [id, pid] = Object.entries(workers)[1]!;
    process.kill(pid, 'SIGSTOP');
    try {
      const started = Date.now();
      const res = await get('/metrics');
      expect(res.status).toBe(200);
      expect(Date.now() - started).toBeLessThan(5000);
      const f = parsePrometheus(res.body);
      expect(valueOf(f, 'bulwark_cluster_workers', { state: 'missing' })).toBe(1);
      expect(samplesOf(f, 'bulwark_heap_used_bytes').map((s) => s.labels['worker'])).not.toContain(id);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await new Promise((r) => setTimeout(r, 200));
    const again = parsePrometheus((await get('/metrics')).body);
    expect(valueOf(again, 'bulwark_cluster_workers', { state: 'reporting' })).toBe(2);
  });
});

describe('profiling a worker from the primary', () => {
  it('CPU profile of the lowest worker by default, of a named one on request', async () => {
    const ids = Object.keys(workers).sort();
    const first = await get('/debug/pprof/profile?seconds=1');
    expect(first.status).toBe(200);
    expect(first.headers['x-bulwark-worker']).toBe(ids[0]);
    const profile = JSON.parse(first.body) as { nodes: unknown[]; samples: number[] };
    expect(profile.nodes.length).toBeGreaterThan(0);
    expect(profile.samples.length).toBeGreaterThan(0);
    const second = await get(`/debug/pprof/profile?seconds=1&worker=${ids[1]}`);
    expect(second.headers['x-bulwark-worker']).toBe(ids[1]);
    expect(JSON.parse(second.body)).toHaveProperty('samples');
    const primary = await get('/debug/pprof/profile?seconds=1&worker=0');
    expect(primary.headers['x-bulwark-worker']).toBe('0');
    expect((await get('/debug/pprof/profile?seconds=1&worker=99')).status).toBe(404);
  });

  it('heap snapshot of a worker, streamed through the primary; its temp file is removed', async () => {
    const before = profileDirs().length;
    const id = Object.keys(workers).sort()[1]!;
    const res = await get(`/debug/pprof/heap?worker=${id}`);
    expect(res.status).toBe(200);
    expect(res.headers['x-bulwark-worker']).toBe(id);
    expect(res.body.startsWith('{"snapshot"')).toBe(true);
    expect(JSON.parse(res.body)).toHaveProperty('nodes');
    await new Promise((r) => setTimeout(r, 200));
    expect(profileDirs().length).toBe(before);
  });
});

describe('a worker that exits', () => {
  it('what it counted stays in the instance totals (a total that went down would read as a counter reset)', async () => {
    const ids = Object.keys(workers).sort();
    const expected = ids.reduce((n, id) => n + 3 * Number(id), 0);
    const series = { route: 'r1', method: 'GET', status_class: '2xx' };
    const before = parsePrometheus((await get('/metrics')).body);
    expect(valueOf(before, 'bulwark_http_request_duration_seconds_count', series)).toBe(expected);
    const [gone, pid] = Object.entries(workers)[1]!;
    process.kill(pid, 'SIGKILL');
    let after = before;
    // Until the primary has handled the exit: a scrape between the kill and the 'exit' event still
    // expects the dead worker and counts it missing.
    const settled = () =>
      valueOf(after, 'bulwark_cluster_workers', { state: 'reporting' }) === 1 &&
      valueOf(after, 'bulwark_cluster_workers', { state: 'missing' }) === 0;
    for (let i = 0; i < 100 && !settled(); i++) {
      await new Promise((r) => setTimeout(r, 50));
      after = parsePrometheus((await get('/metrics')).body);
    }
    expect(valueOf(after, 'bulwark_cluster_workers', { state: 'reporting' })).toBe(1);
    expect(valueOf(after, 'bulwark_cluster_workers', { state: 'missing' })).toBe(0);
    expect(valueOf(after, 'bulwark_http_request_duration_seconds_count', series)).toBe(expected);
    expect(valueOf(after, 'bulwark_http_response_body_bytes_total', { route: 'r1' })).toBe(expected * 10);
    // Its per-process gauges go with it.
    expect(samplesOf(after, 'bulwark_heap_used_bytes').map((s) => s.labels['worker'])).not.toContain(gone);
    // And stay counted on later scrapes.
    const later = parsePrometheus((await get('/metrics')).body);
    expect(valueOf(later, 'bulwark_http_request_duration_seconds_count', series)).toBe(expected);
  });
});
