import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeGrpcFrame } from '../../src/grpc/framing.js';
import { decodeRequest, GrpcHealthService, ServingStatus } from '../../src/grpc/health.js';
import { rawGrpcCall, rawSession, startEchoUpstream, startGrpcHarness, type EchoUpstream, type Harness } from './harness.js';

const definition = protoLoader.loadSync(fileURLToPath(new URL('./fixtures/health.proto', import.meta.url)), { enums: String });
const proto = grpc.loadPackageDefinition(definition) as unknown as {
  grpc: { health: { v1: { Health: new (address: string, creds: grpc.ChannelCredentials) => HealthClient } } };
};
interface HealthClient extends grpc.Client {
  Check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): grpc.ClientUnaryCall;
  Watch(req: { service: string }): grpc.ClientReadableStream<{ status: string }>;
}

describe('grpc.health.v1.Health served by the gateway', () => {
  let upstream: EchoUpstream;
  let gw: Harness;
  let health: GrpcHealthService;
  let client: HealthClient;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    health = new GrpcHealthService();
    gw = await startGrpcHarness({ upstream: upstream.origin, health });
    client = new proto.grpc.health.v1.Health(`127.0.0.1:${gw.port}`, grpc.credentials.createInsecure());
  });
  afterAll(async () => {
    client.close();
    await gw.close();
    await upstream.close();
  });

  const check = (service: string) =>
    new Promise<{ status: string } | grpc.ServiceError>((resolve) =>
      client.Check({ service }, (err, res) => resolve(err ?? res!)),
    );

  it('Check "" is SERVING, decoded by a real protobuf implementation, without touching an upstream', async () => {
    expect(await check('')).toEqual({ status: 'SERVING' });
    expect(upstream.calls).toHaveLength(0);
  });

  it('Check of an unknown service is NOT_FOUND; a registered one reports its status', async () => {
    expect(((await check('demo.v1.Nope')) as grpc.ServiceError).code).toBe(grpc.status.NOT_FOUND);
    health.setStatus('demo.v1.Greeter', ServingStatus.NOT_SERVING);
    expect(await check('demo.v1.Greeter')).toEqual({ status: 'NOT_SERVING' });
  });

  it('Watch sends the current status, then each change; draining turns everything NOT_SERVING', async () => {
    const watch = client.Watch({ service: '' });
    const seen: string[] = [];
    const next = () => new Promise<void>((r) => watch.once('data', (m: { status: string }) => (seen.push(m.status), r())));
    watch.on('error', () => {});
    await next();
    health.setDraining(true);
    await next();
    expect(seen).toEqual(['SERVING', 'NOT_SERVING']);
    expect(await check('')).toEqual({ status: 'NOT_SERVING' });
    health.setDraining(false);
    await next();
    expect(seen.at(-1)).toBe('SERVING');
    const ended = new Promise<grpc.ServiceError>((r) => watch.once('error', r));
    health.close();
    expect((await ended).code).toBe(grpc.status.UNAVAILABLE);
  });

  it('refuses malformed and compressed requests', async () => {
    const session = rawSession(gw.port);
    const path = '/grpc.health.v1.Health/Check';
    const garbage = await rawGrpcCall(session, { ':path': path }, encodeGrpcFrame(Buffer.from([0x0a, 0x7f, 0x41])));
    expect(garbage.grpcStatus).toBe(grpc.status.INTERNAL);
    const compressed = await rawGrpcCall(
      session,
      { ':path': path, 'grpc-encoding': 'gzip' },
      encodeGrpcFrame(Buffer.from([]), true),
    );
    expect(compressed.grpcStatus).toBe(grpc.status.UNIMPLEMENTED);
    expect(compressed.headers['grpc-accept-encoding']).toBe('identity');
    const big = await rawGrpcCall(session, { ':path': path }, encodeGrpcFrame(Buffer.alloc(10_000)));
    expect(big.grpcStatus).toBe(grpc.status.RESOURCE_EXHAUSTED);
    session.close();
  });
});

describe('HealthCheckRequest decoding', () => {
  const frame = (bytes: number[]) => encodeGrpcFrame(Buffer.from(bytes));
  it.each([
    [[], ''],
    [[0x0a, 0x00], ''],
    [[0x0a, 0x03, 0x61, 0x2e, 0x42], 'a.B'],
    // unknown varint, fixed64, fixed32 and length-delimited fields are skipped
    [[0x10, 0x96, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4, 0x1a, 0x01, 0x00, 0x0a, 0x01, 0x78], 'x'],
  ])('%j → %j', (bytes, service) => {
    expect(decodeRequest(frame(bytes))).toBe(service);
  });

  it.each([
    ['truncated length', frame([0x0a, 0x05, 0x61])],
    ['invalid UTF-8', frame([0x0a, 0x01, 0xff])],
    ['field 0', frame([0x02, 0x00])],
    ['wire type 3', frame([0x0b])],
    ['two messages', Buffer.concat([frame([]), frame([])])],
    ['compressed flag', encodeGrpcFrame(Buffer.alloc(0), true)],
    ['no message', Buffer.alloc(0)],
  ])('%s → null', (_name, body) => {
    expect(decodeRequest(body)).toBeNull();
  });
});
