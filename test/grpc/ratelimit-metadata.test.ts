/**
 * A gRPC call refused by a rate limit tells the client when to come back, as an HTTP 429 does:
 * `retry-after`, gRFC A6's `grpc-retry-pushback-ms` and the RateLimit fields, as response
 * metadata — through the gateway and through the grpc-js interceptor.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBulwark, type Bulwark } from '../../src/adapters/bulwark.js';
import type { Gateway } from '../../src/gateway/gateway.js';
import { bulwarkGrpcInterceptor } from '../../src/grpc/interceptors.js';
import { createLogger } from '../../src/telemetry/logger.js';
import {
  echoClient,
  serveEcho,
  startEchoUpstream,
  startGrpcGateway,
  type EchoClientInstance,
  type EchoUpstream,
} from './harness.js';

const POLICY = { id: 'per-minute', rate: 2, per: '1m', key: ['route'] };

function unary(client: EchoClientInstance): Promise<grpc.ServiceError | null> {
  return new Promise((resolve) =>
    client.Unary(Buffer.from('hi'), new grpc.Metadata(), {}, (err: grpc.ServiceError | null) => resolve(err)),
  );
}

function expectPushback(err: grpc.ServiceError | null): void {
  expect(err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
  const md = err!.metadata;
  const retryAfter = Number(md.get('retry-after')[0]);
  // 2 per minute, both spent: the next token is ~30 s away.
  expect(retryAfter).toBeGreaterThanOrEqual(29);
  expect(retryAfter).toBeLessThanOrEqual(30);
  expect(md.get('grpc-retry-pushback-ms')[0]).toBe(String(retryAfter * 1000));
  expect(md.get('ratelimit-policy')[0]).toBe('"per-minute";q=2;w=60');
  expect(md.get('ratelimit')[0]).toMatch(/^"per-minute";r=0;t=(29|30)$/);
  expect(md.get('x-request-id')).toHaveLength(1);
}

describe('gRPC rate-limit refusals carry when to retry', () => {
  let upstream: EchoUpstream;
  let gateway: Gateway;
  let gwClient: EchoClientInstance;
  let bulwark: Bulwark;
  let server: grpc.Server;
  let libClient: EchoClientInstance;

  beforeAll(async () => {
    upstream = await startEchoUpstream();
    let gwPort: number;
    ({ gateway, port: gwPort } = await startGrpcGateway(
      upstream.origin,
      `telemetry: { logs: { level: error } }
rateLimits: { policies: [${JSON.stringify(POLICY)}] }
routes:
  - { id: echo, match: { path: { prefix: /test.Echo/ } }, upstream: echo, auth: { public: true }, rateLimit: [per-minute] }
`,
    ));
    gwClient = echoClient(gwPort);

    bulwark = await createBulwark({
      config: {
        version: 1,
        telemetry: { logs: { level: 'error' } },
        rateLimits: { policies: [POLICY] },
        routes: [{ id: 'echo', auth: { public: true }, match: { path: { prefix: '/test.Echo/' } }, rateLimit: ['per-minute'] }],
      },
      logger: createLogger({ level: 'silent' }),
    });
    let port: number;
    ({ server, port } = await serveEcho([bulwarkGrpcInterceptor(bulwark)]));
    libClient = echoClient(port);
  });
  afterAll(async () => {
    gwClient.close();
    libClient.close();
    server.forceShutdown();
    await bulwark.close();
    await bulwark.telemetry.shutdown();
    await gateway.stop(1000);
    await upstream.close();
  });

  it('through the gateway', async () => {
    expect(await unary(gwClient)).toBeNull();
    expect(await unary(gwClient)).toBeNull();
    expectPushback(await unary(gwClient));
  });

  it('through the grpc-js interceptor', async () => {
    expect(await unary(libClient)).toBeNull();
    expect(await unary(libClient)).toBeNull();
    expectPushback(await unary(libClient));
  });

  it('other denials carry no pushback (a client must not retry an UNAUTHENTICATED call on a timer)', async () => {
    const { grpcDenialMetadata } = await import('../../src/grpc/status.js');
    const { BulwarkError } = await import('../../src/core/errors.js');
    const md = grpcDenialMetadata(
      new BulwarkError('jwt.missing', undefined, { headers: { 'www-authenticate': 'Bearer' } }),
      'req-1',
    );
    expect(md).toEqual({ 'x-request-id': 'req-1' });
  });
});
