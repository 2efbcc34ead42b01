import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { RequestContext, type Identity } from '../../src/core/context.js';

export const REDIS_URL = process.env['BULWARK_TEST_REDIS'] ?? 'redis://127.0.0.1:6379';

/** A request context as the gateway would hand it to the limit stage. */
export function makeCtx(
  init: {
    peer?: string;
    headers?: IncomingHttpHeaders;
    route?: string;
    method?: string;
    path?: string;
    identity?: Partial<Identity> | null;
    protocol?: 'http/1.1' | 'h2';
  } = {},
): RequestContext {
  const ctx = new RequestContext({
    method: init.method ?? 'GET',
    rawTarget: init.path ?? '/api/limited',
    headers: init.headers ?? { host: 'example.test' },
    peerAddress: init.peer ?? '203.0.113.7',
    peerPort: 40000,
    protocol: init.protocol ?? 'http/1.1',
    secure: false,
    requestId: randomBytes(4).toString('hex'),
  });
  ctx.path = init.path ?? '/api/limited';
  ctx.route = { id: init.route ?? 'limited', params: {} };
  if (init.identity) {
    ctx.identity = {
      subject: 'user-1',
      roles: [],
      scopes: [],
      claims: {},
      provider: 'test',
      ...init.identity,
    };
  }
  return ctx;
}

/** A clock tests move by hand (milliseconds). */
export function fakeClock(start = 1_000_000): { now: number; clock: () => number; advance(ms: number): void } {
  const c = {
    now: start,
    clock: () => c.now,
    advance(ms: number) {
      c.now += ms;
    },
  };
  return c;
}

/** A key prefix of its own per test, so runs never see each other's buckets. */
export function uniquePrefix(name: string): string {
  return `bulwark-test:${name}:${randomBytes(4).toString('hex')}:`;
}

export async function deleteKeys(url: string, prefix: string): Promise<void> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await client.connect();
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await client.del(...keys);
    } while (cursor !== '0');
  } finally {
    client.disconnect();
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

/** A redis-server of the test's own, to stop and restart at will. */
export class OwnRedis {
  readonly port: number;
  private child: ChildProcess | null;

  constructor(port: number) {
    this.port = port;
    this.child = null;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'],
      { stdio: 'ignore' },
    );
    this.child = child;
    const client = new Redis(this.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {});
    for (let i = 0; i < 100; i++) {
      try {
        await client.connect();
        await client.ping();
        client.disconnect();
        return;
      } catch {
        client.disconnect();
        await sleep(50);
      }
    }
    throw new Error(`redis-server on ${this.port} did not start`);
  }

  /** SIGSTOP: the process is alive and the socket open, but nothing answers (a hung Redis). */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child === null) return;
    this.child = null;
    if (child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await exited;
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Yields to the event loop (I/O included) without a timer's 1 ms floor. */
export const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

export interface DriveResult {
  offered: number;
  admitted: number;
  /** Denials by code. */
  denied: Record<string, number>;
  /** Decisions that needed the event loop (a store call) and the slowest decision, ms. */
  async: number;
  maxLatencyMs: number;
}

/**
 * Offers `perSecond` requests per second to `run` for `ms`, paced against the
 * clock (so a slow store cannot slow the offered load down), and counts what
 * was admitted among the requests issued in the window.
 */
export async function drive(
  run: () => unknown,
  perSecond: number,
  ms: number,
  onTick?: (elapsed: number) => void,
): Promise<DriveResult> {
  const result: DriveResult = { offered: 0, admitted: 0, denied: {}, async: 0, maxLatencyMs: 0 };
  const pending: Promise<void>[] = [];
  const count = (d: unknown, started: number) => {
    const latency = performance.now() - started;
    if (latency > result.maxLatencyMs) result.maxLatencyMs = latency;
    if (d === null) result.admitted++;
    else {
      const code = (d as { code?: string }).code ?? 'unknown';
      result.denied[code] = (result.denied[code] ?? 0) + 1;
    }
  };
  const t0 = performance.now();
  for (;;) {
    const elapsed = performance.now() - t0;
    if (elapsed >= ms) break;
    onTick?.(elapsed);
    const due = Math.min(Math.floor((elapsed * perSecond) / 1000) - result.offered, 500);
    for (let i = 0; i < due; i++) {
      result.offered++;
      const started = performance.now();
      const d = run();
      if (d instanceof Promise) {
        result.async++;
        pending.push(d.then((v: unknown) => count(v, started)));
      } else count(d, started);
    }
    await tick();
  }
  // A stall of this process right at the end must not shorten the offer (an exact limiter would then
  // look inaccurate too): issue what was due by the end of the window.
  const due = Math.floor((ms * perSecond) / 1000) - result.offered;
  for (let i = 0; i < due; i++) {
    result.offered++;
    const started = performance.now();
    const d = run();
    if (d instanceof Promise) {
      pending.push(d.then((v: unknown) => count(v, started)));
    } else count(d, started);
  }
  await Promise.all(pending);
  return result;
}
