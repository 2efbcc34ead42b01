import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { AccessLogger } from '../../src/telemetry/logging.js';
import { resolveTelemetryConfig, type PropagatorName } from '../../src/telemetry/schema.js';
import { createTracing, ExportTimeoutError, MAX_ATTRIBUTE_LENGTH, type Tracing } from '../../src/telemetry/tracing.js';
import { captureLogger, makeContext } from './helpers.js';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_ID = '00f067aa0ba902b7';

const open: Tracing[] = [];
afterEach(async () => {
  for (const t of open.splice(0)) await t.shutdown();
});

function tracer(propagators: PropagatorName[]) {
  const exporter = new InMemorySpanExporter();
  const tracing = createTracing(resolveTelemetryConfig({ traces: { exporter: 'otlp', propagators } }), {
    exporter,
    simpleProcessor: true,
  });
  open.push(tracing);
  return { tracing, spans: () => exporter.getFinishedSpans() };
}

/** The upstream headers one request gets, as a name → values map. */
function injected(propagators: PropagatorName[], headers: Record<string, string>): Map<string, string[]> {
  const { tracing } = tracer(propagators);
  const ctx = makeContext({ headers });
  const server = tracing.startServerSpan(ctx);
  const client = server.startClientSpan('u', 'http://10.0.0.1:8080', 'GET');
  const out: string[] = [];
  client.inject(out);
  client.end(200);
  server.end(ctx, 200);
  const map = new Map<string, string[]>();
  for (let i = 0; i < out.length; i += 2) map.set(out[i]!, [...(map.get(out[i]!) ?? []), out[i + 1]!]);
  return map;
}

describe('hostile tracestate', () => {
  const traceparent = `00-${TRACE_ID}-${PARENT_ID}-01`;
  // Over 512 characters: the SDK's TraceState drops the whole list (W3C allows it).
  const cases: [string, string][] = [
    ['over-long', `a=${'x'.repeat(600)}`],
    ['only invalid members', 'A B=1,=2,Bad Key=3'],
  ];
  for (const propagators of [['tracecontext', 'b3'], ['tracecontext', 'baggage'], ['tracecontext']] as PropagatorName[][]) {
    for (const [name, tracestate] of cases) {
      it(`${name}: no empty tracestate header upstream (${propagators.join('+')})`, () => {
        const map = injected(propagators, { traceparent, tracestate, baggage: 'k=v' });
        expect(map.get('traceparent')?.[0]).toMatch(new RegExp(`^00-${TRACE_ID}-[0-9a-f]{16}-01$`));
        for (const value of map.get('tracestate') ?? []) expect(value).not.toBe('');
      });
    }
  }

  it('a valid list still passes, capped at 32 members', () => {
    const tracestate = Array.from({ length: 40 }, (_, i) => `k${i}=v${i}`).join(',');
    const map = injected(['tracecontext', 'b3'], { traceparent, tracestate });
    expect(map.get('tracestate')![0]!.split(',')).toHaveLength(32);
  });
});

describe('client-sized values are bounded', () => {
  it('spans cap client-controlled string attributes', () => {
    const { tracing, spans } = tracer(['tracecontext']);
    const method = 'X'.repeat(10_000);
    const ctx = makeContext({ method, path: '/' + 'p'.repeat(20_000), host: 'h'.repeat(5_000) });
    tracing.startServerSpan(ctx).end(ctx, 200);
    const server = spans().find((s) => s.kind === SpanKind.SERVER)!;
    for (const value of Object.values(server.attributes))
      if (typeof value === 'string') expect(value.length).toBeLessThanOrEqual(MAX_ATTRIBUTE_LENGTH);
    expect(server.attributes['http.request.method']).toBe('_OTHER');
  });

  it('the access line caps method, path, host and tenant', () => {
    const { logger, lines } = captureLogger();
    const access = new AccessLogger(logger, {
      enabled: true,
      fields: ['method', 'path', 'host', 'tenant', 'user_agent'],
    });
    const ctx = makeContext({
      method: 'M'.repeat(10_000),
      path: '/' + 'p'.repeat(20_000),
      host: 'h'.repeat(5_000),
      headers: { 'user-agent': 'u'.repeat(5_000) },
    });
    ctx.identity = { subject: 's', tenant: 't'.repeat(10_000), roles: [], scopes: [], claims: {}, provider: 'p' };
    access.log(ctx, 200, 1, 1);
    const line = lines()[0]!;
    expect((line['method'] as string).length).toBeLessThanOrEqual(64);
    expect((line['path'] as string).length).toBeLessThanOrEqual(4096);
    expect((line['host'] as string).length).toBeLessThanOrEqual(512);
    expect((line['tenant'] as string).length).toBeLessThanOrEqual(512);
    expect((line['user_agent'] as string).length).toBeLessThanOrEqual(512);
    expect((line['path'] as string).startsWith('/ppp')).toBe(true);
  });
});

describe('gRPC span names', () => {
  it('a kilobytes-long gRPC path does not become the span name', () => {
    const { tracing, spans } = tracer(['tracecontext']);
    const path = `/${'s'.repeat(8_000)}/${'m'.repeat(8_000)}`;
    const ctx = makeContext({ method: 'POST', path, protocol: 'h2c', headers: { 'content-type': 'application/grpc' } });
    tracing.startServerSpan(ctx).end(ctx, 200, { grpcStatus: 0 });
    const server = spans().find((s) => s.kind === SpanKind.SERVER)!;
    expect(server.name.length).toBeLessThanOrEqual(MAX_ATTRIBUTE_LENGTH);
    expect(server.attributes['rpc.system']).toBe('grpc');
  });

  it('an ordinary gRPC path names the span service/method', () => {
    const { tracing, spans } = tracer(['tracecontext']);
    const ctx = makeContext({
      method: 'POST',
      path: '/pkg.Svc/Do',
      protocol: 'h2c',
      headers: { 'content-type': 'application/grpc' },
    });
    tracing.startServerSpan(ctx).end(ctx, 200, { grpcStatus: 0 });
    expect(spans().find((s) => s.kind === SpanKind.SERVER)!.name).toBe('pkg.Svc/Do');
  });
});

describe('a collector that never finishes answering', () => {
  /** An exporter whose outcome never comes (what a trickling collector does to the OTLP exporter). */
  class SilentExporter implements SpanExporter {
    late: ((result: ExportResult) => void)[] = [];
    export(_spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
      this.late.push(resultCallback);
    }
    shutdown(): Promise<void> {
      return Promise.resolve();
    }
  }

  /** A tracer (export timeout 100 ms) that has handed one span to a silent exporter. */
  function oneSpanExported(): { exporter: SilentExporter; outcomes: [number, Error | null][] } {
    const exporter = new SilentExporter();
    const outcomes: [number, Error | null][] = [];
    const tracing = createTracing(resolveTelemetryConfig({ traces: { exporter: 'otlp', timeoutMs: 100 } }), {
      exporter,
      simpleProcessor: true,
      onExport: (spans, error) => outcomes.push([spans, error]),
    });
    open.push(tracing);
    const ctx = makeContext();
    tracing.startServerSpan(ctx).end(ctx, 200);
    return { exporter, outcomes };
  }

  it('is reported as a failed export once the timeout has passed, and only once', async () => {
    const { exporter, outcomes } = oneSpanExported();
    expect(exporter.late).toHaveLength(1);
    expect(outcomes).toHaveLength(0);
    await new Promise((resolve) => setTimeout(resolve, 1300));
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]![0]).toBe(1);
    expect(outcomes[0]![1]).toBeInstanceOf(ExportTimeoutError);
    expect((outcomes[0]![1] as ExportTimeoutError).code).toBe('telemetry.export_timeout');
    // The answer arriving after all is not counted a second time.
    exporter.late[0]!({ code: ExportResultCode.SUCCESS });
    expect(outcomes).toHaveLength(1);
  });

  it('an export that answers in time is reported once, with its own outcome', async () => {
    const { exporter, outcomes } = oneSpanExported();
    exporter.late[0]!({ code: ExportResultCode.SUCCESS });
    await new Promise((resolve) => setTimeout(resolve, 1300));
    expect(outcomes).toEqual([[1, null]]);
  });

  it('a real OTLP exporter: shutdown returns and closes the trickling connection', async () => {
    const answers: ServerResponse[] = [];
    let closed = 0;
    const collector = createServer((req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': 'application/x-protobuf' });
      // A byte now and then, never the end: the socket never idles out.
      const drip = setInterval(() => res.write('\n'), 30);
      res.on('close', () => {
        clearInterval(drip);
        closed++;
      });
      answers.push(res);
    });
    await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
    try {
      const port = (collector.address() as AddressInfo).port;
      const tracing = createTracing(
        resolveTelemetryConfig({ traces: { exporter: 'otlp', endpoint: `http://127.0.0.1:${port}/v1/traces`, timeoutMs: 100 } }),
        { onExport: () => {} },
      );
      const ctx = makeContext();
      tracing.startServerSpan(ctx).end(ctx, 200);
      const outcome = await Promise.race([
        tracing.shutdown().then(() => 'stopped'),
        new Promise((resolve) => setTimeout(() => resolve('hung'), 5000)),
      ]);
      expect(outcome).toBe('stopped');
      expect(answers.length).toBeGreaterThan(0);
      await new Promise((resolve) => setTimeout(resolve, 200));
      // Nothing of the exporter is left to keep the process alive.
      expect(closed).toBe(answers.length);
    } finally {
      for (const res of answers) res.destroy();
      collector.close();
    }
  }, 15_000);
});
