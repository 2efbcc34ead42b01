/** Deadlines, cancellation and backpressure, both ways, and how upstream failures reach the client. */
import * as grpc from '@grpc/grpc-js';
import { constants as h2, type ServerHttp2Stream } from 'node:http2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { encodeGrpcFrame } from '../../src/grpc/framing.js';
import {
  echoClient,
  numbered,
  startEchoUpstream,
  startGrpcHarness,
  startRawUpstream,
  type EchoClientInstance,
  type EchoUpstream,
  type Harness,
  type RawUpstream,
} from './harness.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(10);
  }
}

function md(values: Record<string, string>): grpc.Metadata {
  const m = new grpc.Metadata();
  for (const [k, v] of Object.entries(values)) m.set(k, k.endsWith('-bin') ? Buffer.from(v) : v);
  return m;
}

function unaryError(client: EchoClientInstance, values: Record<string, string>, opts: grpc.CallOptions = {}) {
  return new Promise<grpc.ServiceError | null>((resolve) =>
    client.Unary(Buffer.from('x'), md(values), opts, (err) => resolve(err)),
  );
}

function streamOutcome(stream: grpc.ClientReadableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>) {
  return new Promise<{ messages: Buffer[]; error: grpc.ServiceError | null }>((resolve) => {
    const messages: Buffer[] = [];
    stream.on('data', (m: Buffer) => messages.push(m));
    stream.on('error', (error: grpc.ServiceError) => resolve({ messages, error }));
    stream.on('status', (s: grpc.StatusObject) => {
      if (s.code === 0) setImmediate(() => resolve({ messages, error: null }));
    });
  });
}

describe('gRPC proxy lifecycle with a grpc-js upstream', () => {
  let upstream: EchoUpstream;
  let gw: Harness;
  let clamped: Harness;
  let client: EchoClientInstance;
  let clampedClient: EchoClientInstance;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    gw = await startGrpcHarness({ upstream: upstream.origin });
    clamped = await startGrpcHarness({ upstream: upstream.origin, maxTimeoutMs: 400 });
    client = echoClient(gw.port);
    clampedClient = echoClient(clamped.port);
  });
  afterAll(async () => {
    client.close();
    clampedClient.close();
    await gw.close();
    await clamped.close();
    await upstream.close();
  });

  it('client deadline: the upstream gets the remaining time and is cancelled when it runs out', async () => {
    const started = Date.now();
    const err = await unaryError(client, { 'x-delay-ms': '3000' }, { deadline: Date.now() + 300 });
    expect(err!.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeLessThan(1500);
    const seen = upstream.calls.at(-1)!;
    expect(seen.deadlineMs).toBeGreaterThan(100);
    expect(seen.deadlineMs).toBeLessThanOrEqual(300);
    await until(() => seen.cancelled);
  });

  it('route maximum: a call without a deadline gets it, and the client sees DEADLINE_EXCEEDED', async () => {
    const err = await unaryError(clampedClient, { 'x-delay-ms': '3000' });
    expect(err!.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    const seen = upstream.calls.at(-1)!;
    expect(seen.deadlineMs).toBeLessThanOrEqual(400);
    const done = await clamped.waitForCalls(1);
    expect(done.at(-1)!.status).toBe(grpc.status.DEADLINE_EXCEEDED);
  });

  it('route maximum: a longer client deadline is clamped to it', async () => {
    const err = await unaryError(clampedClient, { 'x-delay-ms': '3000' }, { deadline: Date.now() + 60_000 });
    expect(err!.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(upstream.calls.at(-1)!.deadlineMs).toBeLessThanOrEqual(400);
  });

  it('client cancel of a server stream: the upstream call is cancelled, onDone says CANCELLED', async () => {
    const before = gw.calls.length;
    const call = client.ServerStream(Buffer.from('go'), md({ 'x-count': '1000000', 'x-size': '1024' }));
    call.on('error', () => {});
    await new Promise<void>((r) => call.once('data', () => r()));
    call.cancel();
    const seen = upstream.calls.at(-1)!;
    await until(() => seen.cancelled);
    const done = await gw.waitForCalls(before + 1);
    expect(done.at(-1)).toMatchObject({ status: grpc.status.CANCELLED, code: 'request.aborted' });
  });

  it('client cancel while the upstream is still thinking (unary)', async () => {
    const call = client.Unary(Buffer.from('x'), md({ 'x-delay-ms': '2000' }), {}, () => {});
    await until(() => upstream.calls.at(-1)?.path === 'Unary' && !upstream.calls.at(-1)!.cancelled);
    const seen = upstream.calls.at(-1)!;
    call.cancel();
    await until(() => seen.cancelled);
  });

  it('response backpressure: a client that stops reading stops the upstream', async () => {
    const call = client.ServerStream(Buffer.from('go'), md({ 'x-count': '1500', 'x-size': String(32 * 1024) }));
    const first = await new Promise<Buffer>((r) => call.once('data', r));
    call.pause();
    await sleep(600);
    const seen = upstream.calls.at(-1)!;
    // 1500 × 32 KiB = 47 MiB would be written without backpressure; flow-control windows hold a few MiB.
    expect(seen.written).toBeLessThan(300);
    expect(seen.blocked).toBeGreaterThan(0);
    const rest = streamOutcome(call);
    call.resume();
    const { messages, error } = await rest;
    expect(error).toBeNull();
    expect(first.readUInt32BE(0)).toBe(0);
    expect(messages.length).toBe(1499);
  });
});

describe('gRPC proxy lifecycle with a misbehaving upstream', () => {
  let raw: RawUpstream;
  let gw: Harness;
  let client: EchoClientInstance;
  let behaviour: (stream: ServerHttp2Stream) => void = () => {};
  let upstreamStreams: ServerHttp2Stream[] = [];
  beforeAll(async () => {
    raw = await startRawUpstream((stream) => {
      upstreamStreams.push(stream);
      behaviour(stream);
    });
    gw = await startGrpcHarness({ upstream: raw.origin, maxTimeoutMs: 500, maxMessageBytes: 1024 });
    client = echoClient(gw.port);
  });
  afterEach(() => {
    upstreamStreams = [];
  });
  afterAll(async () => {
    client.close();
    await gw.close();
    await raw.close();
  });

  const respond = (stream: ServerHttp2Stream) =>
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });

  it('upstream headers carry te: trailers, the remaining grpc-timeout, and only client metadata it may send', async () => {
    behaviour = (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '0' }, { endStream: true });
    };
    const err = await unaryError(client, {
      'x-custom': 'kept',
      'grpc-foo': 'reserved',
      'grpc-trace-bin': 'abc',
      'x-forwarded-for': '6.6.6.6',
      x_forwarded_for: '6.6.6.6',
      grpc_foo: 'reserved',
      x_custom: 'kept',
      'x-request-id': 'client-chosen-id',
    });
    // The raw upstream answers OK without a message: grpc-js calls that a protocol error, which is fine here.
    void err;
    const h = raw.seen.at(-1)!;
    expect(h['te']).toBe('trailers');
    expect(h['grpc-timeout']).toMatch(/^[0-9]{1,8}[num]$/);
    expect(h['x-custom']).toBe('kept');
    expect(h['grpc-foo']).toBeUndefined();
    // Tracing metadata, like traceparent: the client's to send.
    expect(h['grpc-trace-bin']).toBeDefined();
    expect(h['x-forwarded-for']).toBe('127.0.0.1');
    // Underscore spellings of what the client may not send are dropped too; others pass.
    expect(h['x_forwarded_for']).toBeUndefined();
    expect(h['grpc_foo']).toBeUndefined();
    expect(h['x_custom']).toBe('kept');
    // As on HTTP: a well-formed client request id is kept (ctx.requestId), and sent once, by the gateway.
    expect(h['x-request-id']).toBe('client-chosen-id');
    expect(h[':path']).toBe('/test.Echo/Unary');
  });

  it('gateway-side deadline on an upstream that ignores grpc-timeout: DEADLINE_EXCEEDED, upstream stream cancelled', async () => {
    behaviour = () => {}; // never answers
    const before = gw.calls.length;
    const err = await unaryError(client, {});
    expect(err!.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    const stream = upstreamStreams.at(-1)!;
    await until(() => stream.closed);
    expect(stream.rstCode).toBe(h2.NGHTTP2_CANCEL);
    const done = await gw.waitForCalls(before + 1);
    expect(done.at(-1)).toMatchObject({ status: grpc.status.DEADLINE_EXCEEDED, code: 'upstream.timeout' });
  });

  it('deadline mid-stream: the messages relayed so far, then DEADLINE_EXCEEDED in the trailers', async () => {
    behaviour = (stream) => {
      respond(stream);
      stream.write(encodeGrpcFrame(numbered(0, 8)));
    };
    const { messages, error } = await streamOutcome(client.ServerStream(Buffer.from('go'), new grpc.Metadata()));
    expect(messages).toHaveLength(1);
    expect(error!.code).toBe(grpc.status.DEADLINE_EXCEEDED);
  });

  const resets: [string, number, boolean, number][] = [
    ['CANCEL after headers', h2.NGHTTP2_CANCEL, true, grpc.status.CANCELLED],
    ['REFUSED_STREAM before headers', h2.NGHTTP2_REFUSED_STREAM, false, grpc.status.UNAVAILABLE],
    ['INTERNAL_ERROR after headers', h2.NGHTTP2_INTERNAL_ERROR, true, grpc.status.INTERNAL],
    ['ENHANCE_YOUR_CALM before headers', h2.NGHTTP2_ENHANCE_YOUR_CALM, false, grpc.status.RESOURCE_EXHAUSTED],
  ];
  it.each(resets)('upstream RST_STREAM %s → client status', async (_name, code, afterHeaders, expected) => {
    behaviour = (stream) => {
      if (afterHeaders) {
        respond(stream);
        stream.write(encodeGrpcFrame(numbered(0, 8)));
      }
      setTimeout(() => stream.close(code), 20);
    };
    const { error } = await streamOutcome(client.ServerStream(Buffer.from('go'), new grpc.Metadata()));
    expect(error!.code).toBe(expected);
  });

  it('upstream connection dies mid-stream: UNAVAILABLE', async () => {
    behaviour = (stream) => {
      respond(stream);
      stream.write(encodeGrpcFrame(numbered(0, 8)));
      setTimeout(() => stream.session?.destroy(), 20);
    };
    const { messages, error } = await streamOutcome(client.ServerStream(Buffer.from('go'), new grpc.Metadata()));
    expect(messages).toHaveLength(1);
    expect([grpc.status.UNAVAILABLE, grpc.status.INTERNAL]).toContain(error!.code);
  });

  const httpAnswers: [string, Record<string, string | number>, number][] = [
    ['503 without grpc-status', { ':status': 503 }, grpc.status.UNAVAILABLE],
    ['401 without grpc-status', { ':status': 401 }, grpc.status.UNAUTHENTICATED],
    ['200 text/html', { ':status': 200, 'content-type': 'text/html' }, grpc.status.UNKNOWN],
  ];
  it.each(httpAnswers)('upstream answers %s → the status a gRPC client would infer', async (_name, headers, expected) => {
    behaviour = (stream) => {
      stream.respond(headers, { endStream: false });
      stream.end('<html>');
    };
    const err = await unaryError(client, {});
    expect(err!.code).toBe(expected);
  });

  it('upstream trailers-only status with metadata is relayed as is', async () => {
    behaviour = (stream) =>
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '9', 'grpc-message': 'not%20now', 'x-why': 'busy' },
        { endStream: true },
      );
    const err = await unaryError(client, {});
    expect(err!.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err!.details).toBe('not now');
    expect(err!.metadata.get('x-why')).toEqual(['busy']);
  });

  it('upstream ends without trailers: INTERNAL', async () => {
    behaviour = (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.end(encodeGrpcFrame(Buffer.from('x')));
    };
    const err = await unaryError(client, {});
    expect(err!.code).toBe(grpc.status.INTERNAL);
  });

  it('a malformed response frame: the client gets INTERNAL, never the bad bytes', async () => {
    behaviour = (stream) => {
      respond(stream);
      stream.write(encodeGrpcFrame(numbered(0, 8)));
      const bad = encodeGrpcFrame(Buffer.from('zz'));
      bad[0] = 7;
      stream.write(bad);
    };
    const { messages, error } = await streamOutcome(client.ServerStream(Buffer.from('go'), new grpc.Metadata()));
    expect(messages).toHaveLength(1);
    expect(error!.code).toBe(grpc.status.INTERNAL);
    await until(() => upstreamStreams.at(-1)!.closed);
    expect(upstreamStreams.at(-1)!.rstCode).toBe(h2.NGHTTP2_CANCEL);
  });

  it('an oversized response message is refused from its prefix: RESOURCE_EXHAUSTED', async () => {
    behaviour = (stream) => {
      respond(stream);
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(4096, 1); // limit is 1024
      stream.write(prefix);
    };
    const { messages, error } = await streamOutcome(client.ServerStream(Buffer.from('go'), new grpc.Metadata()));
    expect(messages).toHaveLength(0);
    expect(error!.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
  });

  it('request backpressure: an upstream that does not read stops the client', async () => {
    let received = 0;
    behaviour = (stream) => {
      respond(stream);
      stream.pause();
      stream.on('data', (c: Buffer) => (received += c.length));
    };
    const call = client.ClientStream(new grpc.Metadata(), { deadline: Date.now() + 5000 }, () => {});
    let accepted = 0;
    let blocked = false;
    const chunk = Buffer.alloc(1000);
    for (let i = 0; i < 20_000 && !blocked; i++) {
      accepted++;
      if (!call.write(chunk)) {
        const drained = await Promise.race([new Promise((r) => call.once('drain', () => r(true))), sleep(400).then(() => false)]);
        if (!drained) blocked = true;
      }
    }
    expect(blocked).toBe(true);
    expect(received).toBe(0);
    // Windows on both hops bound what is in flight: far less than the 20 MB the loop would write.
    expect(accepted).toBeLessThan(10_000);
    call.cancel();
  });
});

describe('gRPC proxy: unreachable upstream', () => {
  it('refused connection: UNAVAILABLE', async () => {
    const gw = await startGrpcHarness({ upstream: 'http://127.0.0.1:1' });
    const client = echoClient(gw.port);
    const err = await unaryError(client, {});
    expect(err!.code).toBe(grpc.status.UNAVAILABLE);
    const done = await gw.waitForCalls(1);
    expect(done[0]).toMatchObject({ status: grpc.status.UNAVAILABLE, code: 'upstream.unreachable' });
    client.close();
    await gw.close();
  });
});
