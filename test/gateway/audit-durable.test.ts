/**
 * The audit promises a gateway makes to its clients, through a real `bulwark serve`:
 * - `durability: durable`: a request whose response the client has in full has its event,
 *   even if the gateway is killed with SIGKILL right after;
 * - `whenFull: block`: no request is answered without its event; when the queue cannot take
 *   them, requests get 503 `audit.unavailable` instead — also when many arrive at once.
 */
import { createServer, request as httpRequest, Agent, type IncomingMessage, type Server } from 'node:http';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { echoGatewayYaml, tempFile } from '../helpers/net.js';
import { runCli, spawnBulwark } from '../helpers/process.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function get(agent: Agent, port: number, path: string): Promise<{ status: number; requestId: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent }, (res: IncomingMessage) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, requestId: String(res.headers['x-request-id'] ?? '') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

function auditLines(file: string): Record<string, unknown>[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('durable audit through the gateway', () => {
  it(
    'kill -9 under load: every request answered in full has its event after restart, and the chains verify',
    { timeout: 60_000 },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-durable-'));
      const file = tempFile(
        'durable.yaml',
        echoGatewayYaml(`  durability: durable
  wal: { dir: '${dir}/wal', fsyncIntervalMs: 5 }
  chain: { checkpointEvery: 100 }
  sinks: [{ file: { path: '${dir}/audit.jsonl' } }]
`),
      );
      let gw = await spawnBulwark(file);
      const port = gw.ports[0]!;
      const agent = new Agent({ keepAlive: true, maxSockets: 32 });
      const answered = new Set<string>();
      let n = 0;
      let stop = false;
      const workers = Array.from({ length: 32 }, async () => {
        while (!stop) {
          const path = `/echo/r${n++}`;
          try {
            if ((await get(agent, port, path)).status === 200) answered.add(path);
          } catch {
            return; // the gateway is gone
          }
        }
      });
      await sleep(1_000);
      gw.child.kill('SIGKILL');
      stop = true;
      await Promise.allSettled(workers);
      await gw.exited;
      agent.destroy();
      expect(answered.size).toBeGreaterThan(100);
      // The next process replays the WAL into the sink and seals the killed chain.
      gw = await spawnBulwark(file);
      await sleep(500);
      gw.child.kill('SIGTERM');
      expect(await gw.exited).toBe(0);
      const recorded = new Set(auditLines(join(dir, 'audit.jsonl')).map((l) => l['path']));
      const missing = [...answered].filter((p) => !recorded.has(p));
      expect(missing).toEqual([]);
      const verified = await runCli(['audit', 'verify', '--file', join(dir, 'audit.jsonl'), '--sealed']);
      expect(verified.code).toBe(0);
    },
  );

  it(
    'a streamed (chunked) response is not delayed: each chunk goes out as it comes, only the end waits',
    { timeout: 30_000 },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-stream-'));
      const upstream = createServer((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: first\n\n');
        setTimeout(() => res.end('data: last\n\n'), 400);
      });
      await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
      const file = tempFile(
        'stream.yaml',
        `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['http://127.0.0.1:${(upstream.address() as { port: number }).port}'] } }
routes: [{ id: events, match: { path: { prefix: /events } }, upstream: app, auth: { public: true } }]
audit:
  durability: durable
  wal: { dir: '${dir}/wal' }
  sinks: [{ file: { path: '${dir}/audit.jsonl' } }]
`,
      );
      const gw = await spawnBulwark(file);
      try {
        const started = Date.now();
        const { firstAt, body } = await new Promise<{ firstAt: number; body: string }>((resolve, reject) => {
          httpRequest({ host: '127.0.0.1', port: gw.ports[0], path: '/events' }, (res) => {
            let body = '';
            let firstAt = -1;
            res.setEncoding('utf8');
            res.on('data', (chunk: string) => {
              if (firstAt === -1) firstAt = Date.now() - started;
              body += chunk;
            });
            res.on('end', () => resolve({ firstAt, body }));
          })
            .on('error', reject)
            .end();
        });
        expect(body).toBe('data: first\n\ndata: last\n\n');
        // The first event arrived while the upstream was still holding the second.
        expect(firstAt).toBeLessThan(300);
      } finally {
        gw.child.kill('SIGTERM');
        await gw.exited;
        await new Promise((r) => upstream.close(r));
      }
    },
  );

  it('whenFull: block with many requests at once: none is answered without its event', { timeout: 60_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-block-'));
    // A webhook that takes batches but does not answer until released: the WAL fills to its quota,
    // the queue behind it fills, and the gateway must refuse rather than serve unaudited.
    const held: (() => void)[] = [];
    let released = false;
    const received: Record<string, unknown>[] = [];
    const hook: Server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const answer = () => {
          received.push(...(JSON.parse(Buffer.concat(chunks).toString()) as { events: Record<string, unknown>[] }).events);
          res.writeHead(200).end();
        };
        if (released) answer();
        else held.push(answer);
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    const file = tempFile(
      'block.yaml',
      echoGatewayYaml(`  durability: fast
  whenFull: block
  queue: { maxEvents: 16 }
  wal: { dir: '${dir}/wal', segmentBytes: 65536, maxBytes: 1048576 }
  sinks: [{ webhook: { url: 'http://127.0.0.1:${(hook.address() as { port: number }).port}/audit', timeoutMs: 60000 } }]
`),
    );
    const gw = await spawnBulwark(file);
    const port = gw.ports[0]!;
    const agent = new Agent({ keepAlive: true, maxSockets: 100 });
    const served: string[] = [];
    let refused = 0;
    // ~1 MiB of events at a few hundred bytes each: the WAL reaches its quota part way through.
    for (let round = 0; round < 60; round++) {
      const results = await Promise.all(Array.from({ length: 100 }, (_, i) => get(agent, port, `/echo/${round}/${i}`)));
      for (const r of results) {
        if (r.status === 200) served.push(r.requestId);
        else if (r.status === 503) refused++;
        else throw new Error(`unexpected status ${r.status}`);
      }
    }
    agent.destroy();
    expect(refused).toBeGreaterThan(0);
    released = true;
    for (const answer of held.splice(0)) answer();
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    await new Promise((r) => hook.close(r));
    const audited = new Set(received.filter((e) => e['kind'] === 'request').map((e) => e['requestId']));
    expect(served.filter((id) => !audited.has(id))).toEqual([]);
  });
});
