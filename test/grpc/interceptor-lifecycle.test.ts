/**
 * The grpc-js interceptor completes every call it evaluated, whoever ended it: the
 * handler's status, a denial, grpc-js's own deadline, the client's cancel. Each frees
 * the call's concurrency slot, ends its span with `rpc.grpc.status_code`, and is audited
 * with the gRPC status the client got.
 */
import * as grpc from '@grpc/grpc-js';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createBulwark, type Bulwark } from '../../src/adapters/bulwark.js';
import { bulwarkGrpcInterceptor } from '../../src/grpc/interceptors.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createTelemetry } from '../../src/telemetry/index.js';
import { ECHO_SERVICE, echoClient, unaryStatus, type EchoClientInstance } from './harness.js';

describe('gRPC interceptor: the call lifecycle', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-grpc-lifecycle-'));
  const exporter = new InMemorySpanExporter();
  let bulwark: Bulwark;
  let server: grpc.Server;
  let client: EchoClientInstance;
  let handled = 0;

  beforeAll(async () => {
    const routes = [
      { id: 'echo', auth: { public: true }, match: { path: { exact: '/test.Echo/Unary' } }, rateLimit: ['one-at-a-time'] },
    ];
    const telemetry = createTelemetry(
      { telemetry: { traces: { exporter: 'otlp' }, logs: { level: 'error' } }, routes },
      { logger: createLogger({ level: 'silent' }), role: 'single', spanExporter: exporter, simpleSpanProcessor: true },
    );
    bulwark = await createBulwark({
      config: {
        version: 1,
        rateLimits: { policies: [{ id: 'one-at-a-time', concurrency: 1, key: ['route'] }] },
        audit: { durability: 'fast', wal: { dir: join(dir, 'wal') }, sinks: [{ file: { path: join(dir, 'audit.jsonl') } }] },
        routes,
      },
      logger: createLogger({ level: 'silent' }),
      telemetry,
    });
    server = new grpc.Server({ interceptors: [bulwarkGrpcInterceptor(bulwark)] });
    const unimplemented = (_call: unknown, cb: grpc.sendUnaryData<Buffer>) => cb({ code: grpc.status.UNIMPLEMENTED }, null);
    server.addService(ECHO_SERVICE, {
      Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
        handled++;
        const status = call.metadata.get('x-status')[0];
        if (status !== undefined) return cb({ code: Number(status), details: 'as asked' }, null);
        if (call.metadata.get('x-hang').length > 0) return; // until the deadline or the client's cancel
        cb(null, call.request);
      },
      ServerStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        handled++;
        call.end();
      },
      ClientStream: unimplemented,
      Bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => call.end(),
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    client = echoClient(port);
  });
  afterAll(async () => {
    client.close();
    server.forceShutdown();
    await bulwark.close();
    await bulwark.telemetry.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => exporter.reset());

  const unary = (metadata: Record<string, string>, options: grpc.CallOptions = {}, cancelAfterMs?: number) =>
    unaryStatus(client, metadata, options, cancelAfterMs);

  async function lastRequestRecord(): Promise<Record<string, unknown>> {
    await bulwark.audit!.flush();
    const records = readFileSync(join(dir, 'audit.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r['kind'] === 'request');
    return records.at(-1)!;
  }

  async function serverSpan() {
    const deadline = Date.now() + 5000;
    for (;;) {
      const span = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER);
      if (span !== undefined) return span;
      if (Date.now() > deadline) throw new Error('no server span');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it.each([
    ['OK', {}, grpc.status.OK],
    ['a handler error', { 'x-status': String(grpc.status.FAILED_PRECONDITION) }, grpc.status.FAILED_PRECONDITION],
  ])('%s: completed with the status sent, slot freed', async (_name, metadata, expected) => {
    // One slot for the route: a call that was never completed would refuse every later one.
    for (let i = 0; i < 3; i++) expect(await unary(metadata)).toBe(expected);
    const span = await serverSpan();
    expect(span.attributes['rpc.grpc.status_code']).toBe(expected);
    expect(await lastRequestRecord()).toMatchObject({ grpcStatus: expected, decision: 'allow', route: 'echo' });
  });

  it('a denial: the status the client got', async () => {
    // A method the server has (grpc-js answers unknown ones before any interceptor) and no route allows.
    const before = handled;
    const code = await new Promise<number>((resolve) => {
      const call = client.ServerStream(Buffer.from('x'), new grpc.Metadata());
      call.on('data', () => {});
      call.on('error', (err: grpc.ServiceError) => resolve(err.code));
      call.on('end', () => resolve(0));
    });
    expect(code).toBe(grpc.status.UNIMPLEMENTED);
    expect(handled).toBe(before);
    expect((await serverSpan()).attributes['rpc.grpc.status_code']).toBe(code);
    expect(await lastRequestRecord()).toMatchObject({ grpcStatus: code, decision: 'deny', reason: 'route.not_found' });
  });

  it("grpc-js's deadline: DEADLINE_EXCEEDED, and the slot is freed", async () => {
    expect(await unary({ 'x-hang': '1' }, { deadline: Date.now() + 150 })).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect((await serverSpan()).attributes['rpc.grpc.status_code']).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(await lastRequestRecord()).toMatchObject({ grpcStatus: grpc.status.DEADLINE_EXCEEDED });
    expect(await unary({})).toBe(grpc.status.OK);
  });

  it("the client's cancel: CANCELLED, and the slot is freed", async () => {
    const before = handled;
    expect(await unary({ 'x-hang': '1' }, {}, 100)).toBe(grpc.status.CANCELLED);
    expect(handled).toBe(before + 1);
    expect((await serverSpan()).attributes['rpc.grpc.status_code']).toBe(grpc.status.CANCELLED);
    expect(await lastRequestRecord()).toMatchObject({
      grpcStatus: grpc.status.CANCELLED,
      decision: 'error',
      reason: 'request.aborted',
    });
    // The slot was freed: were it held, this call would get RESOURCE_EXHAUSTED.
    let status = -1;
    for (let i = 0; i < 50 && status !== grpc.status.OK; i++) {
      status = await unary({});
      if (status !== grpc.status.OK) await new Promise((r) => setTimeout(r, 20));
    }
    expect(status).toBe(grpc.status.OK);
  });
});
