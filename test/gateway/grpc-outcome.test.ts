/**
 * The gRPC status a client gets is what the gateway's span (`rpc.grpc.status_code`) and
 * audit record (`grpcStatus`) say, whoever decided it: the upstream, a denial, the
 * gateway's deadline or the client's own cancel.
 */
import * as grpc from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createAuditLog, type AuditLog, type AuditSink, type WalEntry } from '../../src/audit/index.js';
import type { Gateway } from '../../src/gateway/gateway.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createTelemetry, type Telemetry } from '../../src/telemetry/index.js';
import { auditConfig } from '../audit/helpers.js';
import { parsePrometheus, valueOf } from '../telemetry/helpers.js';
import {
  unaryStatus,
  echoClient,
  startEchoUpstream,
  startGrpcGateway,
  type EchoClientInstance,
  type EchoUpstream,
} from '../grpc/harness.js';

const lines: string[] = [];
const sink: AuditSink = {
  name: 'memory',
  batchSize: 1000,
  exactCursor: false,
  open: async () => {},
  write: async (batch: readonly WalEntry[]) => void lines.push(...batch.map((e) => e.line)),
  close: async () => {},
};

describe('gRPC outcome in spans and audit', () => {
  const exporter = new InMemorySpanExporter();
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-grpc-outcome-'));
  let upstream: EchoUpstream;
  let gateway: Gateway;
  let telemetry: Telemetry;
  let audit: AuditLog;
  let client: EchoClientInstance;

  beforeAll(async () => {
    upstream = await startEchoUpstream();
    const logger = createLogger({ level: 'silent' });
    audit = await createAuditLog(auditConfig(dir), { logger, sinks: [sink] });
    let port: number;
    ({ gateway, port } = await startGrpcGateway(
      upstream.origin,
      `telemetry: { traces: { exporter: otlp }, logs: { level: error } }
routes:
  # The gateway's own deadline for calls: shorter than the client's, so it is the gateway that ends them.
  - { id: short, match: { path: { exact: /test.Echo/ClientStream } }, upstream: echo, auth: { public: true }, timeouts: { totalMs: 150 } }
  - { id: echo, match: { path: { prefix: /test.Echo/ } }, upstream: echo, auth: { public: true } }
`,
      {
        audit,
        telemetry: (c) =>
          (telemetry = createTelemetry(c, { logger, role: 'single', spanExporter: exporter, simpleSpanProcessor: true })),
      },
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
  beforeEach(() => {
    exporter.reset();
    lines.length = 0;
  });

  const unary = (metadata: Record<string, string>, options: grpc.CallOptions = {}, cancelAfterMs?: number) =>
    unaryStatus(client, metadata, options, cancelAfterMs);

  /** The server span and the request audit record of the single call just made. */
  async function observed(
    path: string,
  ): Promise<{ span: ReturnType<InMemorySpanExporter['getFinishedSpans']>[number]; record: Record<string, unknown> }> {
    let record: Record<string, unknown> | undefined;
    const deadline = Date.now() + 5000;
    for (;;) {
      await audit.flush();
      record = lines
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((r) => r['kind'] === 'request' && r['path'] === path);
      const span = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER);
      if (record !== undefined && span !== undefined) return { span, record };
      if (Date.now() > deadline) throw new Error(`no span or audit record for ${path}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it('OK from the upstream', async () => {
    expect(await unary({})).toBe(grpc.status.OK);
    const { span, record } = await observed('/test.Echo/Unary');
    expect(span.attributes['rpc.grpc.status_code']).toBe(0);
    expect(span.status.code).not.toBe(SpanStatusCode.ERROR);
    expect(record).toMatchObject({ grpcStatus: 0, grpcMethod: '/test.Echo/Unary', status: 200, decision: 'allow' });
  });

  it.each([
    ['NOT_FOUND, a client error', grpc.status.NOT_FOUND, false],
    ['PERMISSION_DENIED, a client error', grpc.status.PERMISSION_DENIED, false],
    ['UNAVAILABLE, a server error', grpc.status.UNAVAILABLE, true],
    ['INTERNAL, a server error', grpc.status.INTERNAL, true],
  ])('the upstream answers %s', async (_name, code, serverError) => {
    expect(await unary({ 'x-status': String(code) })).toBe(code);
    const { span, record } = await observed('/test.Echo/Unary');
    expect(span.attributes['rpc.grpc.status_code']).toBe(code);
    expect(span.status.code === SpanStatusCode.ERROR).toBe(serverError);
    expect(record['grpcStatus']).toBe(code);
  });

  it('a denial: the status the gateway sent', async () => {
    const md = new grpc.Metadata();
    const code = await new Promise<number>((resolve) =>
      client.makeUnaryRequest(
        '/other.Service/Call',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from('x'),
        md,
        {},
        (err) => resolve(err === null ? 0 : err.code),
      ),
    );
    expect(code).not.toBe(grpc.status.OK);
    const { span, record } = await observed('/other.Service/Call');
    expect(span.attributes['rpc.grpc.status_code']).toBe(code);
    expect(record).toMatchObject({ grpcStatus: code, decision: 'deny', reason: 'route.not_found' });
  });

  it("the gateway's deadline: DEADLINE_EXCEEDED", async () => {
    // A client stream the client never ends: only the route's 150 ms deadline can end it.
    const code = await new Promise<number>((resolve) => {
      const call = client.ClientStream(new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err) =>
        resolve(err === null ? 0 : err.code),
      );
      call.write(Buffer.from('first'));
    });
    expect(code).toBe(grpc.status.DEADLINE_EXCEEDED);
    const { span, record } = await observed('/test.Echo/ClientStream');
    expect(span.attributes['rpc.grpc.status_code']).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(record).toMatchObject({ grpcStatus: grpc.status.DEADLINE_EXCEEDED, route: 'short' });
  });

  it('counts calls by the gRPC status the client got (bulwark_grpc_requests_total)', async () => {
    const families = parsePrometheus(await telemetry.metrics.metrics());
    const count = (route: string, code: string) =>
      valueOf(families, 'bulwark_grpc_requests_total', { route, grpc_code: code }) ?? 0;
    // The tests above, in order: OK, NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE, INTERNAL, a denial, the deadline.
    expect(count('echo', 'OK')).toBe(1);
    for (const code of ['NOT_FOUND', 'PERMISSION_DENIED', 'UNAVAILABLE', 'INTERNAL'])
      expect([code, count('echo', code)]).toEqual([code, 1]);
    expect(count('short', 'DEADLINE_EXCEEDED')).toBe(1);
    expect(count('unmatched', 'UNIMPLEMENTED')).toBe(1);
    // Every one of them an HTTP 200: the status class alone would count them all as successes.
    expect(valueOf(families, 'bulwark_http_request_duration_seconds_count', { route: 'echo', status_class: '2xx' })).toBe(5);
  });

  it("the client's cancel: CANCELLED", async () => {
    expect(await unary({ 'x-delay-ms': '2000' }, {}, 100)).toBe(grpc.status.CANCELLED);
    const { span, record } = await observed('/test.Echo/Unary');
    expect(span.attributes['rpc.grpc.status_code']).toBe(grpc.status.CANCELLED);
    expect(record['grpcStatus']).toBe(grpc.status.CANCELLED);
    // Cancelled before the upstream answered: an abort, not a served call.
    expect(record).toMatchObject({ decision: 'error', reason: 'request.aborted' });
  });
});
