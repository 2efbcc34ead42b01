import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { BulwarkMetrics } from '../../src/telemetry/metrics.js';
import { startOtlpMetrics } from '../../src/telemetry/otlp-metrics.js';
import { resolveTelemetryConfig } from '../../src/telemetry/schema.js';
import { createTracing } from '../../src/telemetry/tracing.js';
import { captureLogger, makeContext } from './helpers.js';

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** A stand-in OTLP/HTTP collector: records each POST, answers 200 with an empty protobuf response. */
async function receiver(status = 200): Promise<{ url: string; received: Received[]; server: Server; next(): Promise<Received> }> {
  const received: Received[] = [];
  const waiters: ((r: Received) => void)[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) };
      received.push(r);
      waiters.shift()?.(r);
      res.writeHead(status, { 'content-type': 'application/x-protobuf' });
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  servers.push(server);
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    server,
    next: () => new Promise((resolve) => (received.length > 0 ? resolve(received.shift()!) : waiters.push(resolve))),
  };
}
const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

// --- a protobuf wire-format reader: enough to walk OTLP requests by field number ---------------
type Field = number | bigint | Buffer;
function decode(buf: Buffer): Map<number, Field[]> {
  const fields = new Map<number, Field[]>();
  let i = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[i++]!;
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    let value: Field;
    if (wire === 0) value = varint();
    else if (wire === 1) {
      value = buf.subarray(i, i + 8);
      i += 8;
    } else if (wire === 2) {
      const len = Number(varint());
      value = buf.subarray(i, i + len);
      i += len;
    } else if (wire === 5) {
      value = buf.subarray(i, i + 4);
      i += 4;
    } else throw new Error(`wire type ${wire}`);
    if (!fields.has(field)) fields.set(field, []);
    fields.get(field)!.push(value);
  }
  return fields;
}
const messages = (m: Map<number, Field[]>, field: number) => (m.get(field) ?? []).map((v) => decode(v as Buffer));
const string = (m: Map<number, Field[]>, field: number) => (m.get(field)?.[0] as Buffer | undefined)?.toString('utf8');
/** KeyValue list → record of string values (AnyValue.string_value = 1). */
function attributes(m: Map<number, Field[]>, field: number): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const kv of messages(m, field)) out[string(kv, 1)!] = string(decode(kv.get(2)![0] as Buffer), 1);
  return out;
}

describe('OTLP trace export to a real HTTP receiver', () => {
  for (const compression of ['none', 'gzip'] as const) {
    it(`POSTs protobuf spans to /v1/traces (compression ${compression})`, async () => {
      const collector = await receiver();
      const config = resolveTelemetryConfig({
        serviceName: 'bulwark-otlp-test',
        traces: {
          exporter: 'otlp',
          endpoint: `${collector.url}/v1/traces`,
          headers: { 'x-scope-orgid': 'tenant-1' },
          compression,
          batch: { scheduledDelayMs: 50 },
        },
      });
      const tracing = createTracing(config, { routes: [{ id: 'orders', match: { path: { glob: '/orders/{id}' } } }] });
      const ctx = makeContext({ path: '/orders/7', route: 'orders' });
      const span = tracing.startServerSpan(ctx);
      span.startClientSpan('orders', 'http://10.0.0.1:8080', 'GET').end(200);
      span.end(ctx, 200);
      const arrived = collector.next();
      await tracing.forceFlush();
      const r = await arrived;
      await tracing.shutdown();

      expect(r.path).toBe('/v1/traces');
      expect(r.headers['content-type']).toBe('application/x-protobuf');
      expect(r.headers['x-scope-orgid']).toBe('tenant-1');
      const body = compression === 'gzip' ? (expect(r.headers['content-encoding']).toBe('gzip'), gunzipSync(r.body)) : r.body;
      expect(body.includes(Buffer.from('bulwark-otlp-test'))).toBe(true);

      // ExportTraceServiceRequest.resource_spans(1) → resource(1).attributes(1); scope_spans(2).spans(2)
      const request = decode(body);
      const resourceSpans = messages(request, 1);
      expect(resourceSpans).toHaveLength(1);
      const resource = messages(resourceSpans[0]!, 1)[0]!;
      expect(attributes(resource, 1)['service.name']).toBe('bulwark-otlp-test');
      const spans = messages(resourceSpans[0]!, 2).flatMap((scope) => messages(scope, 2));
      const byName = new Map(spans.map((s) => [string(s, 5), s]));
      expect([...byName.keys()].sort()).toEqual(['GET', 'GET /orders/{id}']);
      const server = byName.get('GET /orders/{id}')!;
      expect((server.get(1)![0] as Buffer).toString('hex')).toBe(ctx.trace!.traceId);
      expect((server.get(2)![0] as Buffer).toString('hex')).toBe(ctx.trace!.spanId);
      expect(attributes(server, 9)['http.route']).toBe('/orders/{id}');
      // The client span's parent_span_id (4) is the server span.
      expect((byName.get('GET')!.get(4)![0] as Buffer).toString('hex')).toBe(ctx.trace!.spanId);
    });
  }

  it('reports failed exports (collector answering 503)', async () => {
    const collector = await receiver(503);
    const outcomes: (Error | null)[] = [];
    const tracing = createTracing(
      resolveTelemetryConfig({ traces: { exporter: 'otlp', endpoint: `${collector.url}/v1/traces`, timeoutMs: 2000 } }),
      { onExport: (_n, err) => outcomes.push(err), simpleProcessor: true },
    );
    const ctx = makeContext();
    tracing.startServerSpan(ctx).end(ctx, 200);
    await tracing.forceFlush();
    await tracing.shutdown();
    expect(collector.received.length).toBeGreaterThan(0);
    expect(outcomes.length).toBeGreaterThan(0);
    expect(outcomes[0]).toBeInstanceOf(Error);
  });

  it('batched (the default processor): a refused export is reported with its span count', async () => {
    const collector = await receiver(400);
    const outcomes: [number, Error | null][] = [];
    const tracing = createTracing(
      resolveTelemetryConfig({
        traces: { exporter: 'otlp', endpoint: `${collector.url}/v1/traces`, batch: { scheduledDelayMs: 20 } },
      }),
      { onExport: (n, err) => outcomes.push([n, err]) },
    );
    for (let i = 0; i < 3; i++) {
      const ctx = makeContext();
      tracing.startServerSpan(ctx).end(ctx, 200);
    }
    await tracing.forceFlush();
    await tracing.shutdown();
    expect(collector.received).toHaveLength(1);
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]![0]).toBe(3);
    expect(outcomes[0]![1]).toBeInstanceOf(Error);
  });

  it('a collector that holds its answer: spans past maxQueueSize are dropped and counted, the rest still leave', async () => {
    const held: (() => void)[] = [];
    const posts: Buffer[] = [];
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        posts.push(Buffer.concat(chunks));
        held.push(() => res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end());
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    servers.push(server);
    let dropped = 0;
    const tracing = createTracing(
      resolveTelemetryConfig({
        traces: {
          exporter: 'otlp',
          endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`,
          batch: { maxQueueSize: 4, maxExportBatchSize: 2, scheduledDelayMs: 10_000 },
        },
      }),
      { onDrop: () => dropped++ },
    );
    // Two batches' worth fill the queue (one export in flight, one batch waiting); three more are dropped.
    for (let i = 0; i < 7; i++) {
      const ctx = makeContext();
      tracing.startServerSpan(ctx).end(ctx, 200);
    }
    expect(dropped).toBe(3);
    await expect.poll(() => posts.length).toBe(1);
    held.shift()!();
    await expect.poll(() => posts.length).toBe(2);
    held.shift()!();
    const spansIn = (body: Buffer) => messages(messages(decode(body), 1)[0]!, 2).flatMap((scope) => messages(scope, 2)).length;
    expect(posts.map(spansIn)).toEqual([2, 2]);
    await tracing.shutdown();
  });
});

describe('OTLP metrics push', () => {
  it('POSTs the registry as OTLP metrics to /v1/metrics', async () => {
    const collector = await receiver();
    const config = resolveTelemetryConfig({
      metrics: { defaultMetrics: false, otlp: { endpoint: `${collector.url}/v1/metrics`, intervalMs: 60_000 } },
    });
    const metrics = new BulwarkMetrics(config.metrics);
    metrics.recordRequest(makeContext({ route: 'orders' }), 200, 0.02, 10);
    metrics.recordRequest(makeContext({ route: 'orders' }), 200, 0.3, 10);
    metrics.recordRequest(makeContext({ route: 'orders' }), 404, 0.001, 10, 'route.not_found');
    const { logger } = captureLogger();
    const pusher = startOtlpMetrics(config.metrics.otlp!, {
      serviceName: 'bulwark-metrics-test',
      resourceAttributes: {},
      collect: () => metrics.registry.getMetricsAsJSON(),
      logger,
    });
    const arrived = collector.next();
    await pusher.push();
    const r = await arrived;
    await pusher.stop();
    metrics.close();

    expect(r.path).toBe('/v1/metrics');
    expect(r.headers['content-type']).toBe('application/x-protobuf');
    // ExportMetricsServiceRequest.resource_metrics(1) → resource(1); scope_metrics(2).metrics(2)
    const rm = messages(decode(r.body), 1)[0]!;
    expect(attributes(messages(rm, 1)[0]!, 1)['service.name']).toBe('bulwark-metrics-test');
    const all = messages(rm, 2).flatMap((scope) => messages(scope, 2));
    const byName = new Map(all.map((m) => [string(m, 1), m]));
    // Counters lose `_total` (OTLP sums; a Prometheus exporter adds it back); histograms keep the unit suffix.
    expect(byName.has('bulwark_http_rejections')).toBe(true);
    expect(byName.has('bulwark_http_rejections_total')).toBe(false);
    const duration = byName.get('bulwark_http_request_duration_seconds')!;
    expect(string(duration, 3)).toBe('s');
    // histogram(9).data_points(1): count is field 4 (fixed64).
    const points = messages(messages(duration, 9)[0]!, 1);
    const counts = points.map((p) => (p.get(4)![0] as Buffer).readBigUInt64LE());
    expect(counts.reduce((a, b) => a + b, 0n)).toBe(3n);
    const twoHundreds = points.find((p) => attributes(p, 9)['status_class'] === '2xx')!;
    expect((twoHundreds.get(4)![0] as Buffer).readBigUInt64LE()).toBe(2n);
  });

  it('logs a failing collector once, without throwing', async () => {
    const collector = await receiver(500);
    const config = resolveTelemetryConfig({
      metrics: { defaultMetrics: false, otlp: { endpoint: `${collector.url}/v1/metrics` } },
    });
    const metrics = new BulwarkMetrics(config.metrics);
    const capture = captureLogger();
    const pusher = startOtlpMetrics(config.metrics.otlp!, {
      serviceName: 's',
      resourceAttributes: {},
      collect: () => metrics.registry.getMetricsAsJSON(),
      logger: capture.logger,
    });
    await pusher.push();
    await pusher.push();
    await pusher.stop();
    metrics.close();
    const warnings = capture.lines().filter((l) => l['msg'] === 'metrics export failed');
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0]!['error'])).toContain('500');
  });
});
