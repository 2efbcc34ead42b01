/** What a client may not send: malformed frames, oversized prefixes, bad grpc-timeout, duplicate authorization… */
import * as grpc from '@grpc/grpc-js';
import { connect, type Socket } from 'node:net';
import type { ClientHttp2Session, ServerHttp2Stream } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeGrpcFrame } from '../../src/grpc/framing.js';
import { h2Frame, hpackLiterals } from '../helpers/net.js';
import {
  echoClient,
  rawGrpcCall,
  rawSession,
  startEchoUpstream,
  startGrpcHarness,
  startRawUpstream,
  type EchoUpstream,
  type Harness,
  type RawUpstream,
} from './harness.js';

const KiB = 1024;
const PATH = '/test.Echo/ClientStream';

describe('gRPC request checks', () => {
  let raw: RawUpstream;
  let gw: Harness;
  let session: ClientHttp2Session;
  let received = 0;
  let opened = 0;
  beforeAll(async () => {
    // Reads everything, counts it, answers OK: anything that reaches it got through the gateway.
    raw = await startRawUpstream((stream: ServerHttp2Stream) => {
      opened++;
      stream.on('data', (c: Buffer) => (received += c.length));
      stream.on('end', () => {
        if (stream.destroyed) return;
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(encodeGrpcFrame(Buffer.from('ok')));
      });
    });
    gw = await startGrpcHarness({ upstream: raw.origin, maxMessageBytes: 64 * KiB });
    session = rawSession(gw.port);
  });
  afterAll(async () => {
    session.close();
    await gw.close();
    await raw.close();
  });

  async function refused(headers: Record<string, string>, body: Buffer | Buffer[] | null) {
    const before = { received, opened };
    const res = await rawGrpcCall(session, { ':path': PATH, ...headers }, body);
    return { res, upstreamBytes: received - before.received, upstreamOpened: opened - before.opened };
  }

  it('a well-formed call passes (the baseline for the refusals below)', async () => {
    const { res, upstreamBytes } = await refused({}, [encodeGrpcFrame(Buffer.alloc(10)), encodeGrpcFrame(Buffer.alloc(20))]);
    expect(res.grpcStatus).toBe(0);
    expect(upstreamBytes).toBe(40);
  });

  it('a prefix announcing more than the limit: RESOURCE_EXHAUSTED before a byte of it is relayed', async () => {
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(1 << 30, 1); // 1 GiB announced; the limit is 64 KiB
    const { res, upstreamBytes } = await refused({}, prefix);
    expect(res.grpcStatus).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(res.headers[':status']).toBe(200);
    expect(res.trailers).toBeNull(); // trailers-only
    expect(upstreamBytes).toBe(0);
    expect(gw.calls.at(-1)).toMatchObject({ status: grpc.status.RESOURCE_EXHAUSTED, code: 'grpc.message_too_large' });
  });

  it('an oversized prefix split across DATA frames is caught as well, after the good messages before it', async () => {
    const good = encodeGrpcFrame(Buffer.alloc(100));
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(64 * KiB + 1, 1);
    const { res, upstreamBytes } = await refused({}, [good, prefix.subarray(0, 2), prefix.subarray(2)]);
    expect(res.grpcStatus).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(upstreamBytes).toBeLessThanOrEqual(good.length);
  });

  it('a message exactly at the limit passes', async () => {
    const { res } = await refused({}, encodeGrpcFrame(Buffer.alloc(64 * KiB)));
    expect(res.grpcStatus).toBe(0);
  });

  it('a compressed flag without grpc-encoding: INTERNAL', async () => {
    const frame = encodeGrpcFrame(Buffer.from('zz'), true);
    const { res, upstreamBytes } = await refused({}, frame);
    expect(res.grpcStatus).toBe(grpc.status.INTERNAL);
    expect(upstreamBytes).toBe(0);
    expect(gw.calls.at(-1)!.code).toBe('grpc.malformed_frame');
  });

  it('a flag other than 0/1: INTERNAL', async () => {
    const frame = encodeGrpcFrame(Buffer.from('zz'));
    frame[0] = 2;
    const { res } = await refused({}, frame);
    expect(res.grpcStatus).toBe(grpc.status.INTERNAL);
  });

  it('a stream that ends inside a message: INTERNAL', async () => {
    const frame = encodeGrpcFrame(Buffer.alloc(100));
    const { res } = await refused({}, frame.subarray(0, 50));
    expect(res.grpcStatus).toBe(grpc.status.INTERNAL);
  });

  it('an unknown grpc-encoding: UNIMPLEMENTED, with the encodings accepted', async () => {
    const { res, upstreamOpened } = await refused({ 'grpc-encoding': 'br' }, encodeGrpcFrame(Buffer.from('x'), true));
    expect(res.grpcStatus).toBe(grpc.status.UNIMPLEMENTED);
    expect(res.headers['grpc-accept-encoding']).toBe('identity,gzip,deflate');
    expect(upstreamOpened).toBe(0);
  });

  it('a known grpc-encoding with the compressed flag passes', async () => {
    const { res } = await refused({ 'grpc-encoding': 'gzip' }, encodeGrpcFrame(Buffer.from('pretend-gzip'), true));
    expect(res.grpcStatus).toBe(0);
  });

  const badTimeouts = ['1', '123456789S', '10x', '-1S', '1.5S', '', 'S', '1SS', '١S', '1s', '+1S', '0x1S'];
  it.each(badTimeouts)('grpc-timeout %j: INVALID_ARGUMENT, and the upstream never sees the call', async (value) => {
    const { res, upstreamOpened } = await refused({ 'grpc-timeout': value }, encodeGrpcFrame(Buffer.from('x')));
    expect(res.grpcStatus).toBe(grpc.status.INVALID_ARGUMENT);
    expect(upstreamOpened).toBe(0);
    expect(gw.calls.at(-1)!.code).toBe('grpc.bad_timeout');
  });

  it.each([' 1S', '1S '])('grpc-timeout %j: never honoured, never relayed', async (value) => {
    // RFC 9113 §8.2.1 makes a value with surrounding whitespace malformed; nghttp2 drops such a field
    // before Node (or this gateway) sees it, so the call is one without a client deadline. What matters
    // here: the upstream gets the gateway's own grpc-timeout (none on this route), never the client's text.
    const before = raw.seen.length;
    const { res } = await refused({ 'grpc-timeout': value }, encodeGrpcFrame(Buffer.from('x')));
    expect(res.grpcStatus).toBe(0);
    expect(raw.seen.length).toBe(before + 1);
    expect(raw.seen.at(-1)!['grpc-timeout']).toBeUndefined();
  });

  it.each(['8S', '99999999n', '1H', '100m'])('grpc-timeout %j is valid', async (value) => {
    const { res } = await refused({ 'grpc-timeout': value }, encodeGrpcFrame(Buffer.from('x')));
    expect(res.grpcStatus).toBe(0);
  });

  it('a non-POST gRPC request: UNIMPLEMENTED', async () => {
    const { res, upstreamOpened } = await refused({ ':method': 'PUT' }, encodeGrpcFrame(Buffer.from('x')));
    expect(res.grpcStatus).toBe(grpc.status.UNIMPLEMENTED);
    expect(upstreamOpened).toBe(0);
  });

  it('a method path canonicalization would change is not another method: UNIMPLEMENTED', async () => {
    for (const path of [
      '/test.Echo//ClientStream',
      '/test.Echo/./ClientStream',
      '/test.Echo/Client%53tream',
      '/test.Echo/ClientStream?x=1',
    ]) {
      const res = await rawGrpcCall(session, { ':path': path }, encodeGrpcFrame(Buffer.from('x')));
      expect(res.grpcStatus, path).toBe(grpc.status.UNIMPLEMENTED);
    }
  });

  it('a non-gRPC content type on a gRPC route: 415 problem', async () => {
    const res = await rawGrpcCall(session, { ':path': PATH, 'content-type': 'application/json' }, Buffer.from('{}'));
    expect(res.headers[':status']).toBe(415);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(JSON.parse(res.data.toString())).toMatchObject({ code: 'grpc.not_grpc' });
  });

  it('gRPC-Web is not gRPC', async () => {
    const res = await rawGrpcCall(session, { ':path': PATH, 'content-type': 'application/grpc-web' }, Buffer.from(''));
    expect(res.headers[':status']).toBe(415);
  });

  it('duplicate authorization: INVALID_ARGUMENT, nothing forwarded', async () => {
    const before = opened;
    const frames = await rawH2Exchange(gw.port, [
      [':method', 'POST'],
      [':scheme', 'http'],
      [':path', PATH],
      [':authority', `127.0.0.1:${gw.port}`],
      ['content-type', 'application/grpc'],
      ['authorization', 'Bearer a'],
      ['authorization', 'Bearer b'],
    ]);
    // One HEADERS frame with END_STREAM: a trailers-only answer.
    expect(frames.some((f) => f.type === 1 && f.stream === 1 && (f.flags & 1) === 1)).toBe(true);
    expect(opened).toBe(before);
    expect(gw.calls.at(-1)).toMatchObject({ status: grpc.status.INVALID_ARGUMENT, code: 'request.duplicate_authorization' });
  });
});

describe('gRPC compression passes through untouched', () => {
  let upstream: EchoUpstream;
  let gw: Harness;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    gw = await startGrpcHarness({ upstream: upstream.origin, maxMessageBytes: 64 * KiB });
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  it('a gzip-compressed 1 MiB message is within a 64 KiB wire limit, and arrives whole', async () => {
    const client = echoClient(gw.port, { 'grpc.default_compression_algorithm': 2 });
    const small = new grpc.Metadata();
    small.set('x-reply-bytes', '10');
    const reply = await new Promise<Buffer>((resolve, reject) =>
      client.Unary(Buffer.alloc(1 << 20), small, {}, (err, r) => (err ? reject(err) : resolve(r!))),
    );
    client.close();
    expect(reply.length).toBe(10);
    expect(upstream.calls.at(-1)!.bytes).toBe(1 << 20);
  });
});

/** Writes a client preface, SETTINGS and one HEADERS(+END_STREAM) with literal fields, and collects frames. */
function rawH2Exchange(
  port: number,
  fields: [string, string][],
  waitMs = 1000,
): Promise<{ type: number; flags: number; stream: number }[]> {
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(port, '127.0.0.1');
    const frames: { type: number; flags: number; stream: number }[] = [];
    let buf = Buffer.alloc(0);
    const block = hpackLiterals(fields);
    const timer = setTimeout(() => socket.destroy(), waitMs);
    socket.on('error', reject);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(frames);
    });
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) break;
        frames.push({ type: buf[3]!, flags: buf[4]!, stream: buf.readUInt32BE(5) & 0x7fffffff });
        buf = buf.subarray(9 + len);
      }
      if (frames.some((f) => f.stream === 1 && ((f.type === 1 && (f.flags & 1) === 1) || f.type === 3))) socket.end();
    });
    socket.write(
      Buffer.concat([
        Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
        h2Frame(4, 0, 0, Buffer.alloc(0)),
        h2Frame(1, 0x4 | 0x1, 1, block), // END_HEADERS | END_STREAM
      ]),
    );
  });
}
