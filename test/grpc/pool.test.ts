import * as grpc from '@grpc/grpc-js';
import type { ClientHttp2Stream, ServerHttp2Stream } from 'node:http2';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeGrpcFrame } from '../../src/grpc/framing.js';
import { GrpcUpstreamPool, grpcPoolFor } from '../../src/grpc/pool.js';
import { echoClient, startEchoUpstream, startGrpcHarness, startRawUpstream, type Harness, type RawUpstream } from './harness.js';

function unary(client: ReturnType<typeof echoClient>): Promise<grpc.ServiceError | null> {
  return new Promise((resolve) => client.Unary(Buffer.from('x'), new grpc.Metadata(), {}, (err) => resolve(err)));
}

/** Holds each stream `holdMs`, counting how many are open at once. */
async function slowUpstream(maxConcurrentStreams: number, holdMs: number) {
  const state = { open: 0, peak: 0 };
  const raw = await startRawUpstream(
    (stream: ServerHttp2Stream) => {
      state.open++;
      state.peak = Math.max(state.peak, state.open);
      stream.once('close', () => state.open--);
      stream.resume();
      setTimeout(() => {
        if (stream.destroyed) return;
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(encodeGrpcFrame(Buffer.from('ok')));
      }, holdMs);
    },
    { maxConcurrentStreams },
  );
  return { raw, state };
}

describe('GrpcUpstreamPool', () => {
  const cleanup: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  it('reconnects after the upstream goes away (GOAWAY) and comes back', async () => {
    const first = await startEchoUpstream();
    const port = first.port;
    const gw = await startGrpcHarness({ upstream: first.origin });
    const client = echoClient(gw.port);
    cleanup.push(
      () => gw.close(),
      () => client.close(),
    );
    expect(await unary(client)).toBeNull();
    await first.close(); // graceful shutdown: GOAWAY, then the connection closes
    const unavailable = await unary(client);
    expect(unavailable!.code).toBe(grpc.status.UNAVAILABLE);
    const second = await startEchoUpstream(port);
    cleanup.push(() => second.close());
    expect(await unary(client)).toBeNull();
    expect(second.calls).toHaveLength(1);
  });

  it('respects the peer’s SETTINGS_MAX_CONCURRENT_STREAMS: extra calls wait for a free stream', async () => {
    const { raw, state } = await slowUpstream(2, 150);
    const gw = await startGrpcHarness({ upstream: raw.origin, pool: { maxSessionsPerOrigin: 1 } });
    const client = echoClient(gw.port);
    cleanup.push(
      () => raw.close(),
      () => gw.close(),
      () => client.close(),
    );
    expect(await unary(client)).toBeNull(); // the session is up and knows the peer's limit
    state.peak = 0;
    const results = await Promise.all(Array.from({ length: 6 }, () => unary(client)));
    expect(results).toEqual([null, null, null, null, null, null]);
    expect(state.peak).toBe(2);
  });

  it('opens more sessions when every one is full, up to maxSessionsPerOrigin', async () => {
    const { raw, state } = await slowUpstream(2, 150);
    const gw: Harness = await startGrpcHarness({ upstream: raw.origin, pool: { maxSessionsPerOrigin: 3 } });
    const client = echoClient(gw.port);
    cleanup.push(
      () => raw.close(),
      () => gw.close(),
      () => client.close(),
    );
    expect(await unary(client)).toBeNull();
    state.peak = 0;
    const pending = Promise.all(Array.from({ length: 6 }, () => unary(client)));
    await new Promise((r) => setTimeout(r, 80));
    const pool = grpcPoolFor(gw.runtime.upstreams.get('echo')!);
    expect(pool.stats()[0]!.sessions).toBe(3);
    expect(await pending).toEqual([null, null, null, null, null, null]);
    expect(state.peak).toBe(6);
  });

  it('a full queue is RESOURCE_EXHAUSTED; a wait past queueTimeoutMs is UNAVAILABLE', async () => {
    const { raw } = await slowUpstream(1, 400);
    const gw = await startGrpcHarness({
      upstream: raw.origin,
      pool: { maxSessionsPerOrigin: 1, maxQueued: 1, queueTimeoutMs: 150 },
    });
    const client = echoClient(gw.port);
    cleanup.push(
      () => raw.close(),
      () => gw.close(),
      () => client.close(),
    );
    expect(await unary(client)).toBeNull();
    const results = await Promise.all(Array.from({ length: 3 }, () => unary(client)));
    const codes = results.map((r) => r?.code ?? 0).sort();
    expect(codes).toEqual([0, grpc.status.RESOURCE_EXHAUSTED, grpc.status.UNAVAILABLE].sort());
  });

  it('closes a session once it has had no open stream for idleTimeoutMs; an open stream keeps it', async () => {
    const held: ServerHttp2Stream[] = [];
    const raw = await startRawUpstream((stream: ServerHttp2Stream) => {
      stream.resume();
      held.push(stream);
    });
    const pool = new GrpcUpstreamPool('x', [raw.origin], { idleTimeoutMs: 100 });
    cleanup.push(
      () => raw.close(),
      () => pool.close(true),
    );
    const open = () =>
      new Promise<ClientHttp2Stream>((resolve, reject) =>
        pool.open({ ':path': '/a.B/C' }, true, (err, stream) => (err ? reject(err) : resolve(stream!))),
      );
    const stream = await open();
    stream.on('error', () => {});
    await new Promise((r) => setTimeout(r, 250)); // quiet, but a stream is open
    expect(pool.stats()[0]).toMatchObject({ sessions: 1, activeStreams: 1 });
    held[0]!.close();
    await new Promise((r) => stream.once('close', r));
    expect(pool.stats()[0]).toMatchObject({ sessions: 1, activeStreams: 0 });
    await new Promise((r) => setTimeout(r, 250));
    expect(pool.stats()[0]).toMatchObject({ sessions: 0, activeStreams: 0 });
    // The next call opens a new session.
    const again = await open();
    again.on('error', () => {});
    expect(pool.stats()[0]).toMatchObject({ sessions: 1, activeStreams: 1 });
    again.close();
  });

  it('rejects bad options up front, and refuses streams once closed', async () => {
    expect(() => new GrpcUpstreamPool('x', ['ftp://a'])).toThrow(TypeError);
    expect(() => new GrpcUpstreamPool('x', ['http://a:1'], { maxQueued: 0 })).toThrow(TypeError);
    const raw: RawUpstream = await startRawUpstream(() => {});
    cleanup.push(() => raw.close());
    const pool = new GrpcUpstreamPool('x', [raw.origin]);
    await pool.close();
    const error = await new Promise((resolve) => pool.open({ ':path': '/a.B/C' }, true, (err) => resolve(err)));
    expect(error).toMatchObject({ code: 'gateway.shutting_down' });
  });
});
