/**
 * Durable audit edges, in process: a stop waits for responses held for their commit; a refusal under
 * audit backpressure is answered (503), not cut; a response handler that ends twice, or declares its
 * length as header pairs, behaves as without audit.
 */
import { createServer, request as httpRequest, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createBulwark } from '../../src/adapters/bulwark.js';
import { createAuditLog, type AuditLog, type AuditSink } from '../../src/audit/index.js';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createTelemetry } from '../../src/telemetry/index.js';
import { auditConfig, memorySink } from '../audit/helpers.js';

const logger = createLogger({ level: 'silent' });
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise((r) => server.close(r)));
  return (server.address() as AddressInfo).port;
}

function get(port: number, path: string): Promise<{ status: number; body: string; error?: string }> {
  return new Promise((resolve) => {
    httpRequest({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', (e) => resolve({ status: res.statusCode ?? 0, body, error: e.message }));
    })
      .on('error', (e) => resolve({ status: 0, body: '', error: e.message }))
      .end();
  });
}

async function gatewayWith(audit: AuditLog, upstreamPort: number): Promise<{ gateway: Gateway; port: number }> {
  const loaded = parseConfig(
    `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['http://127.0.0.1:${upstreamPort}'] } }
routes: [{ id: all, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }]
`,
    'gw.yaml',
    { checks: CONFIG_CHECKS },
  );
  const telemetry = createTelemetry(loaded.config, { logger, role: 'single' });
  const gateway = new Gateway({ logger, telemetry, audit });
  await gateway.start(loaded.config, loaded.hash);
  return { gateway, port: [...gateway.ports().values()][0]! };
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-durable-edges-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('durable audit: the gateway', () => {
  it('a stop waits for responses held for their commit, and they complete', async () => {
    const upstreamPort = await listen(createServer((_req, res) => res.writeHead(200, { 'content-length': 5 }).end('hello')));
    const dir = tempDir();
    const config = auditConfig(dir);
    // A wide window: the commit comes long after the upstream has answered.
    const audit = await createAuditLog(
      { ...config, wal: { ...config.wal!, fsyncIntervalMs: 900 } },
      { logger, sinks: [memorySink([])] },
    );
    cleanups.push(() => audit.close());
    const { gateway, port } = await gatewayWith(audit, upstreamPort);
    await audit.flush(); // the start record's commit: the window starts now
    const answer = get(port, '/x');
    await new Promise((r) => setTimeout(r, 60));
    expect(gateway.inFlight).toBe(1);
    const clean = await gateway.stop(5_000);
    expect(await answer).toEqual({ status: 200, body: 'hello' });
    expect(clean).toBe(true);
  });

  it('block, WAL at its quota with the sink down: a new request gets 503 audit.unavailable at once, not a cut connection', async () => {
    const upstreamPort = await listen(createServer((_req, res) => res.end('ok')));
    const dir = tempDir();
    const failing: AuditSink = { ...memorySink([]), write: async () => Promise.reject(new Error('sink down')) };
    const audit = await createAuditLog(
      auditConfig(dir, {
        whenFull: 'block',
        queue: { maxEvents: 16 },
        wal: { dir: join(dir, 'wal'), segmentBytes: 65_536, fsyncIntervalMs: 0, maxBytes: 1_048_576 },
      }),
      { logger, sinks: [failing] },
    );
    cleanups.push(() => audit.close());
    const big = 'x'.repeat(4096);
    for (let i = 0; i < 2000 && !audit.stats().walFull; i++) {
      audit.record({ action: 'fill', details: { big } });
      if (i % 16 === 15) await audit.flush({ timeoutMs: 50 }).catch(() => {});
    }
    expect(audit.stats().walFull).toBe(true);
    const { gateway, port } = await gatewayWith(audit, upstreamPort);
    cleanups.push(() => gateway.stop(1_000));
    const started = Date.now();
    const refused = await get(port, '/y');
    expect(refused.status).toBe(503);
    expect((JSON.parse(refused.body) as { code: string }).code).toBe('audit.unavailable');
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});

describe('durable audit: a node:http handler', () => {
  const handlers: Record<string, (res: ServerResponse) => void> = {
    'ends twice': (res) => {
      res.writeHead(200, { 'content-length': 5 });
      res.write('hello');
      res.end();
      res.end();
    },
    'declares its length as header pairs': (res) => {
      res.writeHead(200, [['content-length', '5']] as unknown as Record<string, string>);
      res.write('hello');
      res.end();
    },
  };
  for (const [name, handler] of Object.entries(handlers)) {
    it(`${name}: answered whole, once its event is committed`, async () => {
      const dir = tempDir();
      const bulwark = await createBulwark({
        config: {
          version: 1,
          audit: {
            durability: 'durable',
            wal: { dir: join(dir, 'wal'), fsyncIntervalMs: 100 },
            sinks: [{ file: { path: join(dir, 'a.jsonl') } }],
          },
          routes: [{ id: 'all', auth: { public: true }, match: { path: { prefix: '/' } } }],
        },
        logger,
      });
      cleanups.push(() => bulwark.close());
      const port = await listen(createServer(bulwark.protect((_req, res) => handler(res))));
      await bulwark.audit!.flush();
      const before = bulwark.audit!.stats().written;
      expect(await get(port, '/z')).toEqual({ status: 200, body: 'hello' });
      expect(bulwark.audit!.stats().written).toBeGreaterThan(before);
    });
  }
});
