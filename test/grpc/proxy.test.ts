import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  echoClient,
  numbered,
  startEchoUpstream,
  startGrpcHarness,
  type EchoClientInstance,
  type EchoUpstream,
  type Harness,
} from './harness.js';

const MiB = 1 << 20;

function unary(
  client: EchoClientInstance,
  body: Buffer,
  md: Record<string, string> = {},
  opts: grpc.CallOptions = {},
): Promise<{ reply: Buffer; initial: grpc.Metadata | null; trailing: grpc.Metadata | null }> {
  return new Promise((resolve, reject) => {
    let initial: grpc.Metadata | null = null;
    let trailing: grpc.Metadata | null = null;
    const call = client.Unary(body, metadataOf(md), opts, (err, reply) =>
      err ? reject(err) : setImmediate(() => resolve({ reply: reply!, initial, trailing })),
    );
    call.on('metadata', (m) => (initial = m));
    call.on('status', (s) => (trailing = s.metadata));
  });
}

export function metadataOf(md: Record<string, string>): grpc.Metadata {
  const m = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) m.set(k, v);
  return m;
}

function collect<T>(stream: NodeJS.ReadableStream & { on(e: 'status', l: (s: grpc.StatusObject) => void): unknown }) {
  return new Promise<{ messages: T[]; status: grpc.StatusObject }>((resolve, reject) => {
    const messages: T[] = [];
    let status: grpc.StatusObject | null = null;
    let ended = false;
    const finish = () => {
      if (status !== null && ended) resolve({ messages, status });
    };
    stream.on('data', (m: T) => messages.push(m));
    stream.on('error', reject);
    stream.on('status', (s) => {
      status = s;
      finish();
    });
    stream.on('end', () => {
      ended = true;
      finish();
    });
  });
}

describe('gRPC proxy: the four call kinds', () => {
  let upstream: EchoUpstream;
  let gw: Harness;
  let client: EchoClientInstance;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    gw = await startGrpcHarness({ upstream: upstream.origin, maxMessageBytes: 16 * MiB });
    client = echoClient(gw.port);
  });
  afterAll(async () => {
    client.close();
    await gw.close();
    await upstream.close();
  });

  it('unary: message, initial and trailing metadata pass through', async () => {
    const { reply, initial, trailing } = await unary(client, Buffer.from('ping'), { 'x-custom': 'yes' });
    expect(reply.toString()).toBe('ping');
    expect(initial!.get('x-initial')).toEqual(['hello']);
    expect(initial!.get('x-request-id')[0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(trailing!.get('x-trailer')).toEqual(['bye']);
    const seen = upstream.calls.at(-1)!;
    expect(seen.metadata['x-custom']).toBe('yes');
    const done = await gw.waitForCalls(1);
    expect(done.at(-1)).toMatchObject({ path: '/test.Echo/Unary', status: 0, code: undefined });
  });

  it('unary: 3 MiB request and 5 MiB response', async () => {
    const body = Buffer.alloc(3 * MiB, 0x5a);
    const { reply } = await unary(client, body, { 'x-reply-bytes': String(5 * MiB) });
    expect(reply.length).toBe(5 * MiB);
    expect(upstream.calls.at(-1)!.bytes).toBe(3 * MiB);
  });

  it('unary: an upstream error status and its message reach the client unchanged', async () => {
    const err = await unary(client, Buffer.from('x'), {
      'x-status': '5',
      'x-message': encodeURIComponent('no such thing ✓ 100%'),
    }).catch((e: grpc.ServiceError) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as grpc.ServiceError).code).toBe(grpc.status.NOT_FOUND);
    expect((err as grpc.ServiceError).details).toBe('no such thing ✓ 100%');
    expect((err as grpc.ServiceError).metadata.get('x-trailer')).toEqual(['bye']);
  });

  it('server streaming: 5000 messages in order, then a 2 MiB one', async () => {
    const small = collect<Buffer>(client.ServerStream(Buffer.from('go'), metadataOf({ 'x-count': '5000', 'x-size': '64' })));
    const { messages, status } = await small;
    expect(status.code).toBe(0);
    expect(status.metadata.get('x-trailer')).toEqual(['bye']);
    expect(messages).toHaveLength(5000);
    messages.forEach((m, i) => expect(m.readUInt32BE(0)).toBe(i));
    const big = await collect<Buffer>(
      client.ServerStream(Buffer.from('go'), metadataOf({ 'x-count': '3', 'x-size': String(2 * MiB) })),
    );
    expect(big.messages.map((m) => m.length)).toEqual([2 * MiB, 2 * MiB, 2 * MiB]);
  });

  it('client streaming: 3000 messages plus 2 MiB ones arrive whole and in order', async () => {
    const result = new Promise<Buffer>((resolve, reject) => {
      const call = client.ClientStream(new grpc.Metadata(), {}, (err, reply) => (err ? reject(err) : resolve(reply!)));
      let i = 0;
      const write = () => {
        while (i < 3000) {
          const ok = call.write(numbered(i, 100));
          i++;
          if (!ok) return void call.once('drain', write);
        }
        call.write(numbered(3000, 2 * MiB));
        call.write(numbered(3001, 2 * MiB));
        call.end();
      };
      write();
    });
    const summary = JSON.parse((await result).toString()) as { count: number; bytes: number; ordered: boolean };
    expect(summary).toEqual({ count: 3002, bytes: 3000 * 100 + 4 * MiB, ordered: true });
  });

  it('bidi: 1000 ping-pongs, then 1 MiB messages both ways', async () => {
    const call = client.Bidi(new grpc.Metadata());
    const replies: Buffer[] = [];
    const done = collect<Buffer>(call);
    for (let i = 0; i < 1000; i++) {
      const next = new Promise<Buffer>((r) => call.once('data', r));
      call.write(numbered(i, 32));
      replies.push(await next);
    }
    for (let i = 0; i < 4; i++) call.write(numbered(1000 + i, MiB));
    call.end();
    const { messages, status } = await done;
    expect(status.code).toBe(0);
    expect(replies.map((m) => m.readUInt32BE(0))).toEqual([...Array(1000).keys()]);
    expect(messages.slice(-4).map((m) => m.length)).toEqual([MiB, MiB, MiB, MiB]);
  });

  it('many concurrent unary calls share the pooled upstream session', async () => {
    const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => unary(client, Buffer.from(`m${i}`))));
    expect(replies.map((r) => r.reply.toString())).toEqual(Array.from({ length: 200 }, (_, i) => `m${i}`));
  });
});
