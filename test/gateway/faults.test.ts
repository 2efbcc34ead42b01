import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { connect as h2connect } from 'node:http2';
import { startGateway, type TestGateway } from '../helpers/net.js';
import { StoreGuard, type BucketBackend, type SlotGrant } from '../../src/limits/backend.js';
import { RemoteConcurrencyLimiter } from '../../src/limits/concurrency.js';
import { MemoryConcurrencyStore } from '../../src/limits/memory-store.js';
import type { Profile, SlotOutcome } from '../../src/limits/profile.js';

/**
 * A raw HTTP/1.1 upstream. `stale`: answers the first request of each connection (keeping it
 * alive) and closes the connection when the next one arrives, as an upstream whose keep-alive
 * timer fires just as the gateway reuses the pooled socket. `reset-on-request`: resets every
 * connection on its first request. `ok`: answers every request. Counts the requests it saw by method.
 */
interface FaultUpstream {
  origin: string;
  seen: Map<string, number>;
  close(): Promise<void>;
}

async function faultUpstream(mode: 'ok' | 'stale' | 'reset-on-request'): Promise<FaultUpstream> {
  const seen = new Map<string, number>();
  const sockets = new Set<Socket>();
  const server: TcpServer = createTcpServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buffer = '';
    let served = 0;
    socket.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('latin1');
      for (let end = buffer.indexOf('\r\n\r\n'); end >= 0; end = buffer.indexOf('\r\n\r\n')) {
        const head = buffer.slice(0, end);
        const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
        if (buffer.length < end + 4 + length) return;
        buffer = buffer.slice(end + 4 + length);
        const method = head.slice(0, head.indexOf(' '));
        seen.set(method, (seen.get(method) ?? 0) + 1);
        if (mode === 'reset-on-request') {
          socket.resetAndDestroy();
          return;
        }
        if (mode === 'stale' && served > 0) {
          socket.end();
          return;
        }
        served++;
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

async function deadOrigin(): Promise<string> {
  const server = createTcpServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}

function gatewayConfig(upstreams: Record<string, string[]>): string {
  const names = Object.keys(upstreams);
  return `
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams:
${names.map((n) => `  ${n}: { endpoints: [${upstreams[n]!.map((o) => `'${o}'`).join(', ')}], timeouts: { connectMs: 500, headersMs: 1000, totalMs: 3000 } }`).join('\n')}
routes:
${names.map((n) => `  - { id: ${n}, auth: { public: true }, match: { path: { prefix: /${n} } }, upstream: ${n} }`).join('\n')}
`;
}

/** Sends `total` requests over `concurrency` keep-alive connections; counts statuses and problem codes. */
async function load(url: string, total: number, concurrency: number, method = 'GET', body?: string) {
  const dispatcher = new Agent({ connections: concurrency });
  const outcomes = new Map<string, number>();
  let started = 0;
  const worker = async () => {
    while (started < total) {
      started++;
      const res = await request(url, { method: method as 'GET', dispatcher, ...(body === undefined ? {} : { body }) });
      const text = await res.body.text();
      const key =
        res.statusCode === 200 || text === ''
          ? String(res.statusCode)
          : `${res.statusCode}:${(JSON.parse(text) as { code: string }).code}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  await dispatcher.close();
  return Object.fromEntries(outcomes);
}

describe('stale pooled upstream connections', () => {
  let upstream: FaultUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await faultUpstream('stale');
    gw = await startGateway(gatewayConfig({ app: [upstream.origin] }));
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  it('retries an idempotent request that met a socket the upstream had just closed', async () => {
    // One at a time, so the pool holds one connection: every request after the first on it is
    // refused by the upstream closing it, and the gateway sends it again on a fresh connection.
    expect(await load(`${gw.url}/app/x`, 100, 1)).toEqual({ '200': 100 });
    expect(await load(`${gw.url}/app/x`, 10, 1, 'HEAD')).toEqual({ '200': 10 });
  });

  it('never replays a request with a body (the upstream may have acted on it)', async () => {
    upstream.seen.clear();
    const outcomes = await load(`${gw.url}/app/x`, 100, 1, 'POST', 'payload');
    // A POST that met a stale socket fails (502) rather than being written a second time.
    expect(outcomes['502:upstream.reset']).toBeGreaterThan(0);
    expect((outcomes['200'] ?? 0) + outcomes['502:upstream.reset']!).toBe(100);
    expect(upstream.seen.get('POST')).toBe(100);
  });
});

describe('upstream failures before any response', () => {
  let reset: FaultUpstream;
  let healthy: FaultUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    reset = await faultUpstream('reset-on-request');
    healthy = await faultUpstream('ok');
    const dead = await deadOrigin();
    gw = await startGateway(gatewayConfig({ reset: [reset.origin], failover: [dead, healthy.origin] }));
  });
  afterAll(async () => {
    await gw.close();
    await reset.close();
    await healthy.close();
  });

  it('sends a reset GET once more, then answers 502 upstream.reset', async () => {
    reset.seen.clear();
    const res = await request(`${gw.url}/reset/x`);
    expect(res.statusCode).toBe(502);
    expect(((await res.body.json()) as { code: string }).code).toBe('upstream.reset');
    expect(reset.seen.get('GET')).toBe(2);
  });

  it('does not resend a non-idempotent request that reached the upstream', async () => {
    reset.seen.clear();
    for (const body of [undefined, 'payload']) {
      const res = await request(`${gw.url}/reset/x`, { method: 'POST', ...(body === undefined ? {} : { body }) });
      expect(res.statusCode).toBe(502);
      expect(((await res.body.json()) as { code: string }).code).toBe('upstream.reset');
    }
    expect(reset.seen.get('POST')).toBe(2);
  });

  it('fails over from a refused endpoint to the next one', async () => {
    expect(await load(`${gw.url}/failover/x`, 40, 4)).toEqual({ '200': 40 });
  });
});

describe('concurrency slots in a slow shared store', () => {
  it('gives back a slot the store granted after the decision had timed out', async () => {
    // A frozen Redis (SIGSTOP, a long stall) runs the queued commands, in order, once it resumes:
    // the acquire the guard gave up on still takes a slot there, which no request would release.
    const held = new Set<string>();
    const queued: (() => void)[] = [];
    const backend: BucketBackend = {
      kind: 'redis',
      ready: true,
      lease: () => Promise.reject(new Error('unused')),
      acquire: (_key, _limit, member) =>
        new Promise<SlotGrant>((resolve) =>
          queued.push(() => {
            held.add(member);
            resolve({ acquired: true, inFlight: held.size });
          }),
        ),
      release: (_key, member) => void queued.push(() => held.delete(member)),
      ping: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
    const guard = new StoreGuard(backend, { failures: 5, resetMs: 1000, timeoutMs: 10 });
    const limiter = new RemoteConcurrencyLimiter(guard, new MemoryConcurrencyStore(), (k) => k, 'i1');
    const profile = { concurrency: 1, shareConcurrency: 1 } as Profile;
    const outcome = (await limiter.acquire('k', profile, false)) as SlotOutcome;
    expect(outcome.allowed).toBe(false); // closed mode: the store did not answer in time
    for (const command of queued.splice(0)) command(); // the store resumes
    expect(held.size).toBe(0);
  });
});

/**
 * A raw upstream answering each path with a scripted misbehaviour: `/head-reset` sends a head
 * and resets the connection before any body byte; `/204-body` a 204 with a content-length and
 * a body; `/status-999` a status outside 1xx–5xx; `/slow-body` a head, then its body 300 ms later.
 */
async function scriptedUpstream(): Promise<{ origin: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: TcpServer = createTcpServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buffer = '';
    socket.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('latin1');
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const path = buffer.slice(buffer.indexOf(' ') + 1, buffer.indexOf(' ', buffer.indexOf(' ') + 1));
      buffer = '';
      switch (path.replace(/^\/app/, '')) {
        case '/head-reset':
          socket.write('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n', () => setTimeout(() => socket.resetAndDestroy(), 50));
          break;
        case '/204-body':
          socket.write('HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello');
          break;
        case '/status-999':
          socket.write('HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\nok');
          break;
        case '/slow-body':
          socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n');
          setTimeout(() => socket.write('ok'), 300);
          break;
        default:
          socket.write('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('upstream misbehaving after its response head', () => {
  let upstream: Awaited<ReturnType<typeof scriptedUpstream>>;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await scriptedUpstream();
    gw = await startGateway(
      gatewayConfig({ app: [upstream.origin] }).replace(
        'listeners: [{ address: 127.0.0.1, port: 0 }]',
        'listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]',
      ),
    );
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  /** One HTTP/2 request: the status and problem code, or the stream error when it was reset. */
  async function h2(path: string): Promise<{ status: number; code?: string; error?: string; headAt?: number; endAt?: number }> {
    const session = h2connect(gw.url);
    session.on('error', () => {});
    const started = Date.now();
    try {
      return await new Promise((resolve) => {
        const stream = session.request({ ':path': path });
        let status = 0;
        let headAt: number | undefined;
        let body = '';
        stream.on('response', (h) => {
          status = Number(h[':status']);
          headAt = Date.now() - started;
        });
        stream.setEncoding('utf8');
        stream.on('data', (c: string) => (body += c));
        stream.on('end', () => {
          const code = body.startsWith('{') ? (JSON.parse(body) as { code?: string }).code : undefined;
          resolve({
            status,
            ...(code === undefined ? {} : { code }),
            ...(headAt === undefined ? {} : { headAt }),
            endAt: Date.now() - started,
          });
        });
        stream.on('error', (err: Error) => resolve({ status, error: (err as { code?: string }).code ?? err.message }));
      });
    } finally {
      session.close();
    }
  }

  async function h1(path: string): Promise<{ status: number; code?: string }> {
    const res = await request(`${gw.url}/app${path}`);
    const text = await res.body.text();
    return { status: res.statusCode, ...(text.startsWith('{') ? { code: (JSON.parse(text) as { code: string }).code } : {}) };
  }

  it('HTTP/1.1: a head then a reset before any body byte is a 502 problem, not an empty reply', async () => {
    expect(await h1('/head-reset')).toEqual({ status: 502, code: 'upstream.reset' });
    expect(await h1('/204-body')).toEqual({ status: 502, code: 'upstream.bad_response' });
  });

  it('a status outside 1xx-5xx is 502 upstream.bad_response over HTTP/1.1 and HTTP/2 alike', async () => {
    expect(await h1('/status-999')).toEqual({ status: 502, code: 'upstream.bad_response' });
    expect(await h2('/app/status-999')).toMatchObject({ status: 502, code: 'upstream.bad_response' });
  });

  it('a slow body still arrives whole; over HTTP/2 the head is not held back for it', async () => {
    expect(await h1('/slow-body')).toEqual({ status: 200 });
    const r = await h2('/app/slow-body');
    expect(r.status).toBe(200);
    expect(r.headAt!).toBeLessThan(r.endAt! - 150);
  });
});
