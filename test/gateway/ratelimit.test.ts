import * as grpc from '@grpc/grpc-js';
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import { connect as h2connect, constants as h2constants, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { parseConfig } from '../../src/config/load.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { startGateway, startUpstream, type TestGateway, type TestUpstream } from '../helpers/net.js';
import { echoClient, startEchoUpstream, type EchoUpstream } from '../grpc/harness.js';

describe('gateway with rate limits', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await startUpstream();
    gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
rateLimits:
  policies:
    - { id: per-client, rate: 5, per: 1m, burst: 5, key: [route, client_ip] }
    - { id: shadowed, rate: 1, per: 1m, burst: 1, key: [route], mode: shadow }
routes:
  - { id: limited, match: { path: { prefix: /api/limited } }, upstream: app, auth: { public: true }, rateLimit: [per-client, shadowed] }
  - { id: free, match: { path: { prefix: /free } }, upstream: app, auth: { public: true } }
`);
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  it('admits the burst with RateLimit headers, then 429 with Retry-After; spoofed X-Forwarded-For does not help', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await request(`${gw.url}/api/limited`, { headers: { 'x-forwarded-for': `10.0.0.${i}` } });
      expect(res.statusCode).toBe(200);
      expect(res.headers['ratelimit-policy']).toContain('"per-client";q=5');
      expect(String(res.headers['ratelimit'])).toMatch(new RegExp(`"per-client";r=${4 - i}`));
      expect(String(res.headers['ratelimit'])).not.toContain('127.0.0.1');
      await res.body.dump();
    }
    const denied = await request(`${gw.url}/api/limited`, { headers: { 'x-forwarded-for': '10.9.9.9' } });
    expect(denied.statusCode).toBe(429);
    expect(Number(denied.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(denied.headers['content-type']).toBe('application/problem+json');
    expect(((await denied.body.json()) as { code: string }).code).toBe('ratelimit.exceeded');
    // the shadow policy (burst 1) never denies, and other routes are untouched
    const free = await request(`${gw.url}/free`);
    expect(free.statusCode).toBe(200);
    await free.body.dump();
  });
});

/** Waits for a condition the gateway reaches asynchronously (a slot freed on 'close'); the test timeout bounds it. */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((r) => setTimeout(r, 5));
}

/**
 * An upstream that holds `/hold*` requests until `release()`, resets the connection on
 * `/fail*`, and answers anything else at once.
 */
async function holdingUpstream() {
  const held: ServerResponse[] = [];
  let arrived = 0;
  const upstream = await startUpstream((req, res) => {
    if (req.url!.startsWith('/hold')) {
      arrived++;
      held.push(res);
      return;
    }
    if (req.url!.startsWith('/fail')) {
      res.socket?.destroy();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 });
    res.end('ok');
  });
  return {
    upstream,
    /** Held requests that reached the upstream so far (a monotonic count). */
    get arrived() {
      return arrived;
    },
    waitArrived: (n: number) => until(() => arrived >= n),
    release() {
      for (const res of held.splice(0)) {
        if (res.destroyed) continue;
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 4 });
        res.end('done');
      }
    },
  };
}

async function codeOf(body: { json(): Promise<unknown> }): Promise<string> {
  return ((await body.json()) as { code: string }).code;
}

async function reloadWith(gw: TestGateway, yaml: string): Promise<void> {
  const loaded = parseConfig(yaml, 'test.yaml', { checks: CONFIG_CHECKS });
  await gw.gateway.reload(loaded.config, loaded.hash);
}

describe('rateLimits.global.maxConcurrentStreams (HTTP/1.1)', () => {
  let hold: Awaited<ReturnType<typeof holdingUpstream>>;
  let gw: TestGateway;
  const config = (streams: number) => `
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${hold.upstream.origin}'] } }
rateLimits: { global: { maxConcurrentStreams: ${streams} } }
routes:
  - { id: slow, match: { path: { prefix: /hold/slow } }, upstream: app, auth: { public: true }, timeouts: { headersMs: 50 } }
  - { id: app, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }
`;
  beforeAll(async () => {
    hold = await holdingUpstream();
    gw = await startGateway(config(2));
  });
  afterEach(() => hold.release());
  afterAll(async () => {
    await gw.close();
    await hold.upstream.close();
  });

  it('the request over the cap gets 503 ratelimit.overloaded with Retry-After; finished requests free their slots', async () => {
    const base = hold.arrived;
    const held = [request(`${gw.url}/hold/1`), request(`${gw.url}/hold/2`)];
    await hold.waitArrived(base + 2);
    expect(gw.gateway.inFlight).toBe(2);

    const denied = await request(`${gw.url}/quick`);
    expect(denied.statusCode).toBe(503);
    expect(Number(denied.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(denied.headers['content-type']).toBe('application/problem+json');
    expect(await codeOf(denied.body)).toBe('ratelimit.overloaded');

    expect(await gw.gateway.telemetry.metrics.metrics()).toMatch(
      /bulwark_active_streams\{listener="http:\/\/127\.0\.0\.1:0"\} 2/,
    );

    hold.release();
    for (const res of await Promise.all(held)) {
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    await until(() => gw.gateway.inFlight === 0);
    // Refusals are counted like any other denial (recorded when the 503 exchange closed).
    expect(gw.gateway.overloadRefusals).toBe(1);
    expect(await gw.gateway.telemetry.metrics.metrics()).toMatch(
      /bulwark_http_rejections_total\{[^}]*code="ratelimit\.overloaded"[^}]*\} 1/,
    );
    const ok = await request(`${gw.url}/quick`);
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
    // Both slots are free again: two held at once, and only the next one is refused.
    const again = [request(`${gw.url}/hold/3`), request(`${gw.url}/hold/4`)];
    await hold.waitArrived(base + 4);
    const refused = await request(`${gw.url}/quick`);
    expect(refused.statusCode).toBe(503);
    await refused.body.dump();
    hold.release();
    for (const res of await Promise.all(again)) await res.body.dump();
    await until(() => gw.gateway.inFlight === 0);
  });

  it('clients that abort do not leak slots', async () => {
    let base = hold.arrived;
    // Five held requests, aborted by their clients, two (the cap) at a time.
    for (const batch of [2, 2, 1]) {
      const abort = new AbortController();
      const pending = Array.from({ length: batch }, (_, i) =>
        request(`${gw.url}/hold/abort-${i}`, { signal: abort.signal }).catch((err: Error) => err),
      );
      await hold.waitArrived(base + batch);
      base += batch;
      abort.abort();
      for (const r of await Promise.all(pending)) expect(r).toBeInstanceOf(Error);
      await until(() => gw.gateway.inFlight === 0);
    }
    const held = [request(`${gw.url}/hold/a`), request(`${gw.url}/hold/b`)];
    await hold.waitArrived(base + 2);
    hold.release();
    for (const res of await Promise.all(held)) {
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
  });

  it('an upstream failure and an upstream timeout free their slots', async () => {
    const failed = await request(`${gw.url}/fail`);
    expect(failed.statusCode).toBe(502);
    await failed.body.dump();
    const timedOut = await request(`${gw.url}/hold/slow`); // held upstream, headersMs 50
    expect(timedOut.statusCode).toBe(504);
    await timedOut.body.dump();
    await until(() => gw.gateway.inFlight === 0);
    const base = hold.arrived;
    const held = [request(`${gw.url}/hold/x`), request(`${gw.url}/hold/y`)];
    await hold.waitArrived(base + 2);
    hold.release();
    for (const res of await Promise.all(held)) {
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
  });

  it('a reload changes the cap; requests in flight across it keep counting', async () => {
    const base = hold.arrived;
    const held = [request(`${gw.url}/hold/r1`), request(`${gw.url}/hold/r2`)];
    await hold.waitArrived(base + 2);
    await reloadWith(gw, config(3));
    // The two held on the old snapshot still count against the new cap of 3.
    const third = request(`${gw.url}/hold/r3`);
    await hold.waitArrived(base + 3);
    const refused = await request(`${gw.url}/quick`);
    expect(refused.statusCode).toBe(503);
    await refused.body.dump();
    hold.release();
    for (const res of await Promise.all([...held, third])) {
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    await until(() => gw.gateway.inFlight === 0);
    await reloadWith(gw, config(2));
  });
});

function h2get(
  session: ClientHttp2Session,
  path: string,
): { stream: ClientHttp2Stream; response: Promise<{ status: number; headers: Record<string, unknown>; body: string }> } {
  const stream = session.request({ ':path': path });
  const response = new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
    let headers: Record<string, unknown> = {};
    const chunks: Buffer[] = [];
    stream.on('response', (h) => (headers = h));
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve({ status: Number(headers[':status']), headers, body: Buffer.concat(chunks).toString() }));
    stream.on('error', reject);
  });
  stream.end();
  return { stream, response };
}

describe('rateLimits.global.maxConcurrentStreams (HTTP/2 and gRPC)', () => {
  let hold: Awaited<ReturnType<typeof holdingUpstream>>;
  let echo: EchoUpstream;
  let gw: TestGateway;
  const sessions: ClientHttp2Session[] = [];
  const config = (streams: number) => `
version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]
upstreams:
  app: { endpoints: ['${hold.upstream.origin}'] }
  echo: { endpoints: ['${echo.origin}'] }
rateLimits: { global: { maxConcurrentStreams: ${streams} } }
routes:
  - { id: echo, match: { path: { prefix: /test.Echo } }, upstream: echo, auth: { public: true } }
  - { id: app, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }
`;
  const session = () => {
    const s = h2connect(gw.url);
    sessions.push(s);
    return s;
  };
  beforeAll(async () => {
    hold = await holdingUpstream();
    echo = await startEchoUpstream();
    gw = await startGateway(config(2));
  });
  afterEach(() => {
    hold.release();
    for (const s of sessions.splice(0)) s.destroy();
  });
  afterAll(async () => {
    await gw.close();
    await hold.upstream.close();
    await echo.close();
  });

  it('streams count like requests; SETTINGS advertise the cap and follow a reload', async () => {
    const a = session();
    const settings = once(a, 'remoteSettings');
    const base = hold.arrived;
    const held = [h2get(a, '/hold/1'), h2get(a, '/hold/2')];
    expect((await settings)[0]).toMatchObject({ maxConcurrentStreams: 2 });
    await hold.waitArrived(base + 2);

    // Another connection's stream, and an HTTP/1.1 request on the same port, are over the cap.
    const denied = await h2get(session(), '/quick').response;
    expect(denied.status).toBe(503);
    expect(Number(denied.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(JSON.parse(denied.body)).toMatchObject({ code: 'ratelimit.overloaded' });
    const http1 = await request(`${gw.url}/quick`);
    expect(http1.statusCode).toBe(503);
    await http1.body.dump();

    // A reload re-advertises the new cap on the open session.
    const updated = once(a, 'remoteSettings');
    await reloadWith(gw, config(3));
    expect((await updated)[0]).toMatchObject({ maxConcurrentStreams: 3 });
    await reloadWith(gw, config(2));

    hold.release();
    for (const { response } of held) expect((await response).status).toBe(200);
    await until(() => gw.gateway.inFlight === 0);
  });

  it('a stream reset by the client frees its slot', async () => {
    const a = session();
    const base = hold.arrived;
    const held = [h2get(a, '/hold/1'), h2get(a, '/hold/2')];
    for (const { response } of held) response.catch(() => {});
    await hold.waitArrived(base + 2);
    for (const { stream } of held) stream.close(h2constants.NGHTTP2_CANCEL);
    await until(() => gw.gateway.inFlight === 0);
    const again = [h2get(a, '/hold/3'), h2get(a, '/hold/4')];
    await hold.waitArrived(base + 4);
    hold.release();
    for (const { response } of again) expect((await response).status).toBe(200);
  });

  it('a gRPC call over the cap gets UNAVAILABLE; under it, it goes through', async () => {
    const base = hold.arrived;
    const held = [request(`${gw.url}/hold/1`), request(`${gw.url}/hold/2`)];
    await hold.waitArrived(base + 2);
    const client = echoClient(gw.port);
    try {
      const call = () =>
        new Promise<{ err: grpc.ServiceError | null; reply?: Buffer }>((resolve) =>
          client.Unary(Buffer.from('ping'), new grpc.Metadata(), {}, (err, reply) => resolve({ err, reply })),
        );
      const refused = await call();
      expect(refused.err?.code).toBe(grpc.status.UNAVAILABLE);
      hold.release();
      for (const res of await Promise.all(held)) await res.body.dump();
      await until(() => gw.gateway.inFlight === 0);
      const ok = await call();
      expect(ok.err).toBeNull();
      expect(ok.reply!.toString()).toBe('ping');
    } finally {
      client.close();
    }
  });

  it("the gateway's own gRPC health check is answered at the cap", async () => {
    const base = hold.arrived;
    const held = [request(`${gw.url}/hold/1`), request(`${gw.url}/hold/2`)];
    await hold.waitArrived(base + 2);
    const stream = session().request({
      ':method': 'POST',
      ':path': '/grpc.health.v1.Health/Check',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    stream.end(Buffer.alloc(5)); // one empty message: service ""
    const [headers] = (await once(stream, 'response')) as [Record<string, string>];
    stream.resume();
    const status = headers['grpc-status'] ?? ((await once(stream, 'trailers')) as [Record<string, string>])[0]['grpc-status'];
    expect(status).toBe('0');
    hold.release();
    for (const res of await Promise.all(held)) await res.body.dump();
  });
});

/** A raw connection sending one keep-alive request: the first bytes of the answer, or null when closed unanswered. */
function openConnection(port: number, open: Socket[]): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    open.push(socket);
    socket.once('data', (chunk: Buffer) => resolve(chunk.toString('latin1')));
    socket.on('error', () => {});
    socket.once('close', () => resolve(null));
    socket.write('GET /quick HTTP/1.1\r\nhost: gw\r\n\r\n');
  });
}

describe('rateLimits.global.maxConnections', () => {
  let hold: Awaited<ReturnType<typeof holdingUpstream>>;
  let gw: TestGateway;
  const sockets: Socket[] = [];
  const config = (connections: number) => `
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${hold.upstream.origin}'] } }
rateLimits: { global: { maxConnections: ${connections} } }
routes:
  - { id: app, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }
`;
  beforeAll(async () => {
    hold = await holdingUpstream();
    gw = await startGateway(config(2));
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await gw.close();
    await hold.upstream.close();
  });

  it('refuses a connection over the cap while the others are open; a reload that raises the cap admits it', async () => {
    expect(await openConnection(gw.port, sockets)).toMatch(/^HTTP\/1\.1 200/);
    expect(await openConnection(gw.port, sockets)).toMatch(/^HTTP\/1\.1 200/);
    expect(await openConnection(gw.port, sockets)).toBeNull();
    const metrics = await gw.gateway.telemetry.metrics.metrics();
    expect(metrics).toMatch(/bulwark_active_connections\{listener="http:\/\/127\.0\.0\.1:0"\} 2/);

    await reloadWith(gw, config(3));
    expect(await openConnection(gw.port, sockets)).toMatch(/^HTTP\/1\.1 200/);
    expect(await openConnection(gw.port, sockets)).toBeNull();
  });
});

describe('shared store health on /metrics', () => {
  it('a Redis store that cannot be reached is reported down, and its policy applies its failure mode', async () => {
    const upstream = await startUpstream();
    // Port 1: nothing listens there, every connection attempt is refused.
    const gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
rateLimits:
  stores: { shared: { redis: { url: 'redis://127.0.0.1:1', timeoutMs: 50 } } }
  policies:
    - { id: open, store: shared, rate: 100, burst: 10, onStoreFailure: open }
    - { id: closed, store: shared, rate: 100, burst: 10, onStoreFailure: closed }
routes:
  - { id: lenient, match: { path: { prefix: /lenient } }, upstream: app, auth: { public: true }, rateLimit: [open] }
  - { id: strict, match: { path: { prefix: /strict } }, upstream: app, auth: { public: true }, rateLimit: [closed] }
`);
    try {
      const lenient = await request(`${gw.url}/lenient`);
      expect(lenient.statusCode).toBe(200);
      await lenient.body.dump();
      const strict = await request(`${gw.url}/strict`);
      expect(strict.statusCode).toBe(503);
      expect(await codeOf(strict.body)).toBe('ratelimit.store_unavailable');
      const metrics = await gw.gateway.telemetry.metrics.metrics();
      expect(metrics).toMatch(/^bulwark_ratelimit_store_up\{store="shared"\} 0$/m);
      expect(metrics).toMatch(/^bulwark_ratelimit_store_failures_total\{store="shared"\} \d+$/m);
      expect(metrics).toMatch(/^bulwark_ratelimit_store_breaker_openings_total\{store="shared"\} \d+$/m);
    } finally {
      await gw.close();
      await upstream.close();
    }
  });
});
