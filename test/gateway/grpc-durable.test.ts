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
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createTelemetry, type Telemetry } from '../../src/telemetry/index.js';
import { auditConfig, memorySink } from '../audit/helpers.js';
import {
  echoClient,
  startEchoUpstream,
  durableStatusChecks,
  type EchoClientInstance,
  type EchoUpstream,
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
    const loaded = parseConfig(
      `version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]
upstreams: { echo: { endpoints: ['${upstream.origin}'] } }
telemetry: { logs: { level: error } }
routes:
  - { id: unary, match: { path: { exact: /test.Echo/Unary } }, upstream: echo, auth: { public: true } }
`,
      'grpc.yaml',
      { checks: CONFIG_CHECKS },
    );
    const logger = createLogger({ level: 'silent' });
    telemetry = createTelemetry(loaded.config, { logger, role: 'single' });
    // A wide group-commit window: a status sent before its commit would arrive well ahead of it.
    const config = auditConfig(dir);
    audit = await createAuditLog(
      { ...config, wal: { ...config.wal!, fsyncIntervalMs: 100 } },
      { logger, sinks: [memorySink([])] },
    );
    gateway = new Gateway({ logger, telemetry, audit });
    await gateway.start(loaded.config, loaded.hash);
    client = echoClient([...gateway.ports().values()][0]!);
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
