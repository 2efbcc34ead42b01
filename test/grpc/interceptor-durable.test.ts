/**
 * Durable audit in the gRPC interceptor: a call's status — the handler's or a denial's — reaches
 * the client only once the call's audit event is committed.
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBulwark, type Bulwark } from '../../src/adapters/bulwark.js';
import { bulwarkGrpcInterceptor } from '../../src/grpc/interceptors.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { echoClient, serveEcho, durableStatusChecks, type EchoClientInstance } from './harness.js';

describe('gRPC interceptor, durable audit', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-grpc-interceptor-durable-'));
  let bulwark: Bulwark;
  let server: grpc.Server;
  let client: EchoClientInstance;

  beforeAll(async () => {
    bulwark = await createBulwark({
      config: {
        version: 1,
        // A wide group-commit window: a status sent before its commit would arrive well ahead of it.
        audit: {
          durability: 'durable',
          wal: { dir: join(dir, 'wal'), fsyncIntervalMs: 100 },
          sinks: [{ file: { path: join(dir, 'audit.jsonl') } }],
        },
        routes: [{ id: 'echo', auth: { public: true }, match: { path: { exact: '/test.Echo/Unary' } } }],
      },
      logger: createLogger({ level: 'silent' }),
    });
    let port: number;
    ({ server, port } = await serveEcho([bulwarkGrpcInterceptor(bulwark)]));
    client = echoClient(port);
  });
  afterAll(async () => {
    client.close();
    server.forceShutdown();
    await bulwark.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const checks = durableStatusChecks(
    () => bulwark.audit!,
    () => client,
  );

  it("the handler's status follows the commit", async () => {
    for (let i = 0; i < 3; i++) expect(await checks.allowed()).toEqual({ status: 0, committed: true });
  });

  it("a denial's status (no route: UNIMPLEMENTED) follows the commit", async () => {
    expect(await checks.denied()).toEqual({ status: grpc.status.UNIMPLEMENTED, committed: true });
  });
});
