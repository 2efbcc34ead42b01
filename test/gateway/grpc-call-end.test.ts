/**
 * A gRPC call through the gateway ends, and gives back every resource it held (its pooled
 * upstream stream, its in-flight slot), however the client behaves once it has its status:
 * a slow reader that cancels or drops its connection, a client still uploading when the
 * upstream answers, a client that never half-closes, a client that stops reading.
 */
import * as grpc from '@grpc/grpc-js';
import { constants as h2, connect, type ClientHttp2Session, type ServerHttp2Stream } from 'node:http2';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeGrpcFrame } from '../../src/grpc/framing.js';
import { grpcPoolFor } from '../../src/grpc/pool.js';
import { startGateway, type TestGateway } from '../helpers/net.js';
import { echoClient, numbered, startRawUpstream, type EchoClientInstance, type RawUpstream } from '../grpc/harness.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function gatewayYaml(origin: string, totalMs?: number): string {
  const timeouts = totalMs === undefined ? '' : `, timeouts: { totalMs: ${totalMs} }`;
  return `
version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]
upstreams: { raw: { endpoints: ['${origin}'] } }
routes:
  - { id: raw, match: { path: { prefix: /test.Echo/ } }, upstream: raw, auth: { public: true }${timeouts} }
`;
}

/** Answers every call with `frames` and grpc-status 0, all at once (DATA, then trailers). */
function answerWith(frames: Buffer): (s: ServerHttp2Stream) => void {
  return (s) => {
    s.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    s.once('wantTrailers', () => s.sendTrailers({ 'grpc-status': '0' }));
    s.end(frames);
    // The request side may still be open: whatever the client sends is read and dropped.
    s.resume();
  };
}

/** Answers every call with a trailers-only INVALID_ARGUMENT after `delayMs`, without reading the request. */
function trailersOnly(delayMs: number): (s: ServerHttp2Stream) => void {
  return (s) => {
    setTimeout(() => {
      if (s.destroyed) return;
      s.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '3', 'grpc-message': 'nope' },
        { endStream: true },
      );
    }, delayMs);
  };
}

const GRPC_REQUEST = { ':method': 'POST', 'content-type': 'application/grpc', te: 'trailers' } as const;

async function until(check: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check() && Date.now() < end) await sleep(25);
}

describe('gRPC call end through the gateway', () => {
  let upstream: RawUpstream | null = null;
  let gw: TestGateway | null = null;
  const sessions: ClientHttp2Session[] = [];
  const clients: EchoClientInstance[] = [];

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const s of sessions.splice(0)) s.destroy();
    await gw?.close();
    await upstream?.close();
    gw = null;
    upstream = null;
  });

  const start = async (
    handler: (s: ServerHttp2Stream) => void,
    options: { maxConcurrentStreams?: number; totalMs?: number } = {},
  ) => {
    const settings = options.maxConcurrentStreams === undefined ? {} : { maxConcurrentStreams: options.maxConcurrentStreams };
    upstream = await startRawUpstream(handler, settings);
    gw = await startGateway(gatewayYaml(upstream.origin, options.totalMs));
    return gw;
  };
  const poolStats = (g: TestGateway) => grpcPoolFor(g.gateway.current!.upstreams.get('raw')!).stats()[0]!;
  const session = (g: TestGateway) => {
    const s = connect(g.url);
    s.on('error', () => {});
    sessions.push(s);
    return s;
  };
  /** A unary call on `s`, its body read and dropped; `status()` is its grpc-status so far (head or trailers). */
  const unaryCall = (s: ClientHttp2Session) => {
    const req = s.request({ ...GRPC_REQUEST, ':path': '/test.Echo/Unary' });
    req.on('error', () => {});
    let status: string | undefined;
    req.on('response', (h) => (status ??= h['grpc-status'] as string | undefined));
    req.on('trailers', (t) => (status = t['grpc-status'] as string | undefined));
    req.resume();
    return { req, status: () => status };
  };
  /** A small unary call on a fresh connection: its gRPC status. */
  const freshCall = async (g: TestGateway): Promise<number | undefined> => {
    const { req, status } = unaryCall(session(g));
    req.end(encodeGrpcFrame(Buffer.from('x')));
    await new Promise((r) => req.once('close', r));
    const code = status();
    return code === undefined ? undefined : Number(code);
  };

  it('a slow reader that cancels after the upstream finished frees its pooled stream', async () => {
    const frames = Buffer.concat(Array.from({ length: 40 }, (_, i) => encodeGrpcFrame(numbered(i, 16 << 10))));
    const g = await start(answerWith(frames));
    const client = echoClient(g.port);
    clients.push(client);
    for (let i = 0; i < 10; i++) {
      const call = client.ServerStream(Buffer.from('go'), new grpc.Metadata());
      call.on('error', () => {});
      call.once('data', () => call.pause());
      await sleep(300);
      call.cancel();
    }
    await until(() => poolStats(g).activeStreams === 0 && g.gateway.inFlight === 0, 2000);
    expect(poolStats(g).activeStreams).toBe(0);
    expect(g.gateway.inFlight).toBe(0);
  });

  it('clients that reset and drop their connection while the gateway holds upstream data leave the pool usable', async () => {
    const g = await start(answerWith(encodeGrpcFrame(Buffer.alloc(500 << 10, 1))), { maxConcurrentStreams: 5 });
    for (let i = 0; i < 20; i++) {
      const s = connect(g.url);
      s.on('error', () => {});
      const req = s.request({ ...GRPC_REQUEST, ':path': '/test.Echo/Unary' });
      req.on('error', () => {});
      req.end(encodeGrpcFrame(Buffer.from('x')));
      req.pause();
      await sleep(100);
      req.close(h2.NGHTTP2_CANCEL);
      await sleep(20);
      s.close();
    }
    await until(() => poolStats(g).activeStreams === 0, 2000);
    expect(poolStats(g).activeStreams).toBe(0);
    expect(await freshCall(g)).toBe(0);
    expect(g.gateway.inFlight).toBe(0);
  });

  it('a client still uploading when the upstream answers trailers-only gets the status and the call ends', async () => {
    const g = await start(trailersOnly(50), { totalMs: 1000 });
    const client = echoClient(g.port);
    clients.push(client);
    const codes = await Promise.all(
      Array.from({ length: 5 }, async () => {
        let code = -1;
        const done = new Promise<void>((resolve) => {
          const call = client.ClientStream(new grpc.Metadata(), {}, (err) => {
            code = err === null ? 0 : err.code;
            resolve();
          });
          let i = 0;
          const pump = () => {
            while (i < 300) if (!call.write(numbered(i++, 16 << 10))) return void call.once('drain', pump);
            call.end();
          };
          pump();
        });
        await done;
        return code;
      }),
    );
    expect(codes).toEqual([3, 3, 3, 3, 3]);
    await until(() => g.gateway.inFlight === 0 && poolStats(g).activeStreams === 0, 1500);
    expect(g.gateway.inFlight).toBe(0);
    expect(poolStats(g).activeStreams).toBe(0);
  });

  for (const [name, handler] of [
    ['data and trailers', answerWith(encodeGrpcFrame(Buffer.from('pong')))],
    ['trailers-only', trailersOnly(0)],
  ] as const) {
    it(`a client that never half-closes is reset with NO_ERROR after its status (${name})`, async () => {
      const g = await start(handler, { totalMs: 60_000 });
      const s = session(g);
      const results = await Promise.all(
        Array.from(
          { length: 20 },
          () =>
            new Promise<{ status: string | undefined; rstCode: number | undefined }>((resolve) => {
              const { req, status } = unaryCall(s);
              // One message, and no END_STREAM.
              req.write(encodeGrpcFrame(Buffer.from('x')));
              req.once('close', () => resolve({ status: status(), rstCode: req.rstCode }));
              // Still open after this long: the gateway is holding it.
              setTimeout(() => resolve({ status: status(), rstCode: -1 }), 3000).unref();
            }),
        ),
      );
      const expected = name === 'trailers-only' ? '3' : '0';
      expect(results).toEqual(Array.from({ length: 20 }, () => ({ status: expected, rstCode: h2.NGHTTP2_NO_ERROR })));
      await until(() => g.gateway.inFlight === 0 && poolStats(g).activeStreams === 0, 1000);
      expect(g.gateway.inFlight).toBe(0);
      expect(poolStats(g).activeStreams).toBe(0);
    });
  }

  it('a client that stops reading after the upstream finished is cut off after a grace, freeing everything', async () => {
    const g = await start(answerWith(encodeGrpcFrame(Buffer.alloc(900 << 10, 1))), { totalMs: 500 });
    const s = session(g);
    const streams = Array.from({ length: 5 }, () => {
      const req = s.request({ ...GRPC_REQUEST, ':path': '/test.Echo/Unary' });
      req.on('error', () => {});
      req.end(encodeGrpcFrame(Buffer.from('x')));
      req.pause();
      return req;
    });
    await sleep(1000);
    // Past the route's deadline, but the upstream finished in time: the call is still being delivered.
    expect(g.gateway.inFlight).toBe(5);
    await until(() => g.gateway.inFlight === 0, 6000);
    expect(g.gateway.inFlight).toBe(0);
    expect(poolStats(g).activeStreams).toBe(0);
    // Every stream closed by the gateway (CANCEL after the grace; on a loaded machine a stream may
    // instead have been closed NO_ERROR once its status went out).
    for (const r of streams) expect([h2.NGHTTP2_CANCEL, h2.NGHTTP2_NO_ERROR]).toContain(r.rstCode);
    expect(streams.filter((r) => r.rstCode === h2.NGHTTP2_CANCEL).length).toBeGreaterThan(0);
  }, 10_000);
});
