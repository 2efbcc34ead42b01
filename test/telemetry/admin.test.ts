import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { handleAdminTelemetry, isLoopback } from '../../src/telemetry/admin.js';
import type { TelemetryConfig } from '../../src/telemetry/schema.js';
import { createTelemetry, type Telemetry } from '../../src/telemetry/telemetry.js';
import { captureLogger, makeContext, parsePrometheus, valueOf } from './helpers.js';

const TOKEN = 'profiling-token-0123456789abcdef';

interface Admin {
  telemetry: Telemetry;
  server: Server;
  port: number;
}
const admins: Admin[] = [];
afterEach(async () => {
  for (const a of admins.splice(0)) {
    a.server.closeAllConnections();
    await new Promise((r) => a.server.close(r));
    await a.telemetry.shutdown();
  }
});

/** An admin listener as the lead's admin server will be: telemetry first, then its own routes (here: 404). */
async function startAdmin(telemetry: TelemetryConfig = {}, host = '127.0.0.1'): Promise<Admin> {
  const t = createTelemetry(
    { telemetry: { ...telemetry, metrics: { defaultMetrics: false, ...telemetry.metrics } } },
    {
      logger: captureLogger().logger,
      role: 'single',
    },
  );
  const server = createServer((req, res) => {
    if (handleAdminTelemetry(req, res, t.admin)) return;
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"status":404,"code":"admin.not_found"}');
  });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  const admin = { telemetry: t, server, port: (server.address() as AddressInfo).port };
  admins.push(admin);
  return admin;
}

function get(
  port: number,
  path: string,
  options: { method?: string; headers?: Record<string, string>; host?: string; firstChunkOnly?: boolean } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: options.host ?? '127.0.0.1', port, path, method: options.method ?? 'GET', headers: options.headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => {
          chunks.push(c);
          if (options.firstChunkOnly === true && Buffer.concat(chunks).length >= 64) {
            res.destroy();
            resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() });
          }
        });
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
        res.on('error', () => {});
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('/metrics', () => {
  it('serves the Prometheus text format with the recorded traffic', async () => {
    const admin = await startAdmin();
    admin.telemetry.metrics.recordRequest(makeContext({ route: 'orders' }), 200, 0.01, 5);
    const res = await get(admin.port, '/metrics');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    const families = parsePrometheus(res.body);
    expect(valueOf(families, 'bulwark_http_request_duration_seconds_count', { route: 'orders' })).toBe(1);
    const head = await get(admin.port, '/metrics', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect((await get(admin.port, '/metrics', { method: 'POST' })).status).toBe(405);
  });

  it('is absent when metrics are disabled, and other paths are left to the admin server', async () => {
    const admin = await startAdmin({ metrics: { enabled: false } });
    expect((await get(admin.port, '/metrics')).status).toBe(404);
    expect((await get(admin.port, '/healthz')).status).toBe(404);
  });
});

describe('/debug/pprof', () => {
  it('CPU profile for seconds=1: a .cpuprofile Chrome DevTools and speedscope open', async () => {
    const admin = await startAdmin();
    const started = Date.now();
    const res = await get(admin.port, '/debug/pprof/profile?seconds=1');
    expect(res.status).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.headers['content-disposition']).toMatch(/^attachment; filename="bulwark-0-.+\.cpuprofile"$/);
    const profile = JSON.parse(res.body) as {
      nodes: { id: number; callFrame: { functionName: string; url: string }; children?: number[] }[];
      startTime: number;
      endTime: number;
      samples: number[];
      timeDeltas: number[];
    };
    expect(profile.nodes.length).toBeGreaterThan(0);
    expect(profile.nodes[0]!.callFrame.functionName).toBe('(root)');
    expect(profile.samples.length).toBeGreaterThan(100);
    expect(profile.timeDeltas).toHaveLength(profile.samples.length);
    const ids = new Set(profile.nodes.map((n) => n.id));
    for (const s of profile.samples) expect(ids.has(s)).toBe(true);
    expect(profile.endTime - profile.startTime).toBeGreaterThanOrEqual(900_000);
  });

  it('one capture at a time: a second is 409 while the first runs', async () => {
    const admin = await startAdmin();
    const first = get(admin.port, '/debug/pprof/profile?seconds=1');
    await new Promise((r) => setTimeout(r, 100));
    const second = await get(admin.port, '/debug/pprof/profile?seconds=1');
    expect(second.status).toBe(409);
    expect(JSON.parse(second.body)).toMatchObject({ code: 'admin.profiler_busy' });
    expect((await get(admin.port, '/debug/pprof/heap')).status).toBe(409);
    expect((await first).status).toBe(200);
  });

  it('bounds seconds', async () => {
    const admin = await startAdmin({ profiling: { maxSeconds: 5 } });
    for (const bad of ['0', '6', 'abc', '-1', '1.5', '']) {
      const res = await get(admin.port, `/debug/pprof/profile?seconds=${bad}`);
      expect(res.status, bad).toBe(400);
      expect(JSON.parse(res.body)).toMatchObject({ code: 'admin.bad_request' });
    }
    expect((await get(admin.port, '/debug/pprof/profile?seconds=1&worker=3')).status).toBe(404);
  });

  it('heap snapshot streams a .heapsnapshot starting with {"snapshot"', async () => {
    const admin = await startAdmin();
    const res = await get(admin.port, '/debug/pprof/heap', { firstChunkOnly: true });
    expect(res.status).toBe(200);
    expect(res.headers['content-disposition']).toMatch(/\.heapsnapshot"$/);
    expect(res.body.startsWith('{"snapshot"')).toBe(true);
    // Leaving early frees the profiler.
    await new Promise((r) => setTimeout(r, 200));
    expect((await get(admin.port, '/debug/pprof/profile?seconds=1')).status).toBe(200);
  }, 60_000);

  it('captures are GET only', async () => {
    const admin = await startAdmin();
    expect((await get(admin.port, '/debug/pprof/heap', { method: 'HEAD' })).status).toBe(405);
    expect((await get(admin.port, '/debug/pprof/profile', { method: 'POST' })).status).toBe(405);
  });

  it('absent when profiling is disabled', async () => {
    const admin = await startAdmin({ profiling: { enabled: false } });
    expect((await get(admin.port, '/debug/pprof/profile?seconds=1')).status).toBe(404);
  });

  it('token mode: 401 without or with a wrong bearer token, 200 with the right one', async () => {
    const admin = await startAdmin({ profiling: { allow: 'token', token: TOKEN } });
    const none = await get(admin.port, '/debug/pprof/profile?seconds=1');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Bearer realm="bulwark-admin"');
    expect(
      (await get(admin.port, '/debug/pprof/profile?seconds=1', { headers: { authorization: `Bearer ${TOKEN}x` } })).status,
    ).toBe(401);
    expect(
      (await get(admin.port, '/debug/pprof/profile?seconds=1', { headers: { authorization: `Basic ${TOKEN}` } })).status,
    ).toBe(401);
    const ok = await get(admin.port, '/debug/pprof/profile?seconds=1', { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toHaveProperty('samples');
  });

  // A real non-loopback peer: connect through this machine's own external address.
  const external = Object.values(networkInterfaces())
    .flat()
    .find((i) => i !== undefined && i.family === 'IPv4' && !i.internal)?.address;
  it.skipIf(external === undefined)('loopback mode: 403 for a caller on another address, 200 on loopback', async () => {
    const admin = await startAdmin({ profiling: { allow: 'loopback' } }, '0.0.0.0');
    const remote = await get(admin.port, '/debug/pprof/profile?seconds=1', { host: external });
    expect(remote.status).toBe(403);
    expect(JSON.parse(remote.body)).toMatchObject({ code: 'admin.forbidden' });
    // /metrics stays open like /healthz.
    expect((await get(admin.port, '/metrics', { host: external })).status).toBe(200);
    expect((await get(admin.port, '/debug/pprof/profile?seconds=1')).status).toBe(200);
  });

  it('recognizes loopback addresses', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) expect(isLoopback(a), a).toBe(true);
    for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '1.127.0.0', '127.0.0.1.evil', '::2', '', undefined])
      expect(isLoopback(a), String(a)).toBe(false);
  });
});
