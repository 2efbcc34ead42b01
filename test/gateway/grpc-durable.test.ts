/**
 * Durable audit for gRPC through the gateway: a call's status (trailers, a trailers-only upstream
 * answer, or a denial) reaches the client only once the call's audit event is committed.
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuditLog, type AuditLog } from '../../src/audit/index.js';
import type { Gateway } from '../../src/gateway/gateway.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createTelemetry, type Telemetry } from '../../src/telemetry/index.js';
import { auditConfig, memorySink } from '../audit/helpers.js';
import {
  echoClient,
  startEchoUpstream,
  durableStatusChecks,
  type EchoClientInstance,
  type EchoUpstream,
  startGrpcGateway,
} from '../grpc/harness.js';

describe('gRPC through the gateway, durable audit', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-grpc-durable-'));
  let upstream: EchoUpstream;
  let gateway: Gateway;
  let telemetry: Telemetry;
  let audit: AuditLog;
  let client: EchoClientInstance;

  beforeAll(async () => {
    upstream = await startEchoUpstream();
    const logger = createLogger({ level: 'silent' });
    // A wide group-commit window: a status sent before its commit would arrive well ahead of it.
    const config = auditConfig(dir);
    audit = await createAuditLog(
      { ...config, wal: { ...config.wal!, fsyncIntervalMs: 100 } },
      { logger, sinks: [memorySink([])] },
    );
    let port: number;
    ({ gateway, port } = await startGrpcGateway(
      upstream.origin,
      `telemetry: { logs: { level: error } }
routes:
  - { id: unary, match: { path: { exact: /test.Echo/Unary } }, upstream: echo, auth: { public: true } }
`,
      { audit, telemetry: (c) => (telemetry = createTelemetry(c, { logger, role: 'single' })) },
    ));
    client = echoClient(port);
  });
  afterAll(async () => {
    client.close();
    await gateway.stop(1000);
    await audit.close();
    await telemetry.shutdown();
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const checks = durableStatusChecks(
    () => audit,
    () => client,
  );

  it('an allowed call: its status follows the commit', async () => {
    for (let i = 0; i < 3; i++) expect(await checks.allowed()).toEqual({ status: 0, committed: true });
  });

  it('a denied call (no route: UNIMPLEMENTED): its trailers-only status follows the commit', async () => {
    expect(await checks.denied()).toEqual({ status: grpc.status.UNIMPLEMENTED, committed: true });
  });
});
