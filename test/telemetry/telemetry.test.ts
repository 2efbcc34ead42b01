/**
 * The facade driven the way the gateway will drive it: a node:http front that
 * builds a RequestContext, runs "stages", forwards to a real upstream with the
 * injected headers, and finishes the request. Asserts the span tree, the
 * metrics and the access log for allowed, denied, limited and upstream-failed
 * requests.
 */
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { contextFor } from '../../src/engine/admission.js';
import type { DecisionRecord } from '../../src/core/context.js';
import type { BulwarkConfig } from '../../src/config/schema.js';
import { createTelemetry, type Telemetry, type TelemetryInput } from '../../src/telemetry/telemetry.js';
import type { TelemetryCheckInput } from '../../src/telemetry/schema.js';

// Compile-time: the loaded config is what createTelemetry/reload and telemetryChecks take.
export const configFits: [(c: BulwarkConfig) => TelemetryInput, (c: BulwarkConfig) => TelemetryCheckInput] = [(c) => c, (c) => c];
import { captureLogger, parsePrometheus, valueOf } from './helpers.js';

const ROUTES = [{ id: 'orders', match: { path: { glob: '/orders/{id}' } } }];
const exporter = new InMemorySpanExporter();
const capture = captureLogger();
let telemetry: Telemetry;
let front: Server;
let upstream: Server;
let frontUrl: string;
let upstreamOrigin: string;
let deadOrigin: string;
const upstreamSaw: IncomingHttpHeaders[] = [];

/** What the gateway's stages would record, chosen by a test header. */
function runStages(scenario: string): { status: number; code: string } | null {
  return scenario === 'deny'
    ? { status: 401, code: 'jwt.expired' }
    : scenario === 'limit'
      ? { status: 429, code: 'ratelimit.exceeded' }
      : null;
}
const DECISIONS: Record<string, DecisionRecord[]> = {
  allow: [
    { stage: 'authn', outcome: 'allow', code: 'authn.valid', detail: { provider: 'corp', kid: 'k1' } },
    { stage: 'authz', outcome: 'allow', code: 'rbac.allowed', detail: { policy: 'orders', rule: 'readers' } },
  ],
  deny: [{ stage: 'authn', outcome: 'deny', code: 'jwt.expired', detail: { provider: 'corp' } }],
  limit: [
    { stage: 'authn', outcome: 'allow', code: 'authn.valid', detail: { provider: 'corp' } },
    { stage: 'ratelimit', outcome: 'deny', code: 'ratelimit.exceeded', detail: { policy: 'per-client' } },
  ],
};

beforeAll(async () => {
  telemetry = createTelemetry(
    {
      telemetry: { traces: { exporter: 'otlp', propagators: ['tracecontext'] }, logs: { accessLog: { enabled: true } } },
      routes: ROUTES,
    },
    { logger: capture.logger, role: 'single', spanExporter: exporter, simpleSpanProcessor: true },
  );
  upstream = createServer((req, res) => {
    upstreamSaw.push(req.headers);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('hello from upstream');
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  upstreamOrigin = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  // A port nobody listens on: connection refused.
  const dead = createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
  deadOrigin = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
  await new Promise((r) => dead.close(r));

  front = createServer((req, res) => {
    const ctx = contextFor(req, false);
    const span = telemetry.startRequest(ctx);
    ctx.path = req.url!.split('?')[0]!;
    ctx.host = 'api.test';
    ctx.route = { id: 'orders', params: {} };
    const scenario = String(req.headers['x-scenario']);
    for (const d of DECISIONS[scenario === 'fail' ? 'allow' : scenario]!) ctx.decisions.push(d);
    const denial = runStages(scenario);
    if (denial !== null) {
      const body = JSON.stringify({ code: denial.code });
      res.writeHead(denial.status, { 'content-type': 'application/problem+json' });
      res.end(body);
      telemetry.finishRequest(ctx, span, denial.status, Buffer.byteLength(body), { code: denial.code });
      return;
    }
    const origin = scenario === 'fail' ? deadOrigin : upstreamOrigin;
    const attempt = telemetry.startUpstream(span, 'orders', origin, ctx.method);
    const headers: string[] = ['accept', '*/*', 'x-request-id', ctx.requestId];
    attempt.inject(headers);
    // The gateway hands the flat list to undici; node:http here wants an object.
    const object: Record<string, string> = {};
    for (let i = 0; i < headers.length; i += 2) object[headers[i]!] = headers[i + 1]!;
    const out = request(`${origin}${ctx.path}`, { method: ctx.method, headers: object }, (up) => {
      res.writeHead(up.statusCode!, { 'content-type': up.headers['content-type']! });
      let bytes = 0;
      up.on('data', (c: Buffer) => {
        bytes += c.length;
        res.write(c);
      });
      up.on('end', () => {
        res.end();
        attempt.end(up.statusCode!);
        telemetry.finishRequest(ctx, span, up.statusCode!, bytes, { upstream: 'orders' });
      });
    });
    out.on('error', () => {
      attempt.end(0, 'upstream.unreachable');
      res.writeHead(502);
      res.end();
      telemetry.finishRequest(ctx, span, 502, 0, { code: 'upstream.unreachable', upstream: 'orders' });
    });
    out.end();
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
  frontUrl = `http://127.0.0.1:${(front.address() as AddressInfo).port}`;
});

afterAll(async () => {
  front.closeAllConnections();
  upstream.closeAllConnections();
  await Promise.all([new Promise((r) => front.close(r)), new Promise((r) => upstream.close(r))]);
  await telemetry.shutdown();
});

beforeEach(() => {
  exporter.reset();
  upstreamSaw.length = 0;
});

async function call(scenario: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${frontUrl}/orders/17`, { headers: { 'x-scenario': scenario, ...headers } });
  await res.text();
  // finishRequest runs right after the last byte; give the event loop a turn.
  await new Promise((r) => setTimeout(r, 20));
  return res;
}

async function scrape() {
  const { body } = await telemetry.admin.metrics!();
  return parsePrometheus(body);
}

const accessLines = () => capture.lines().filter((l) => l['msg'] === 'access');

describe('request flows through the facade', () => {
  it('allowed: server span → client span, trace continued upstream, metrics and access line', async () => {
    const caller = '4bf92f3577b34da6a3ce929d0e0e4736';
    const res = await call('allow', { traceparent: `00-${caller}-00f067aa0ba902b7-01` });
    expect(res.status).toBe(200);
    const spans = exporter.getFinishedSpans();
    const server = spans.find((s) => s.kind === SpanKind.SERVER)!;
    const client = spans.find((s) => s.kind === SpanKind.CLIENT)!;
    expect(server.name).toBe('GET /orders/{id}');
    expect(server.spanContext().traceId).toBe(caller);
    expect(client.parentSpanContext?.spanId).toBe(server.spanContext().spanId);
    expect(server.events.map((e) => e.attributes?.['bulwark.decision.code'])).toEqual(['authn.valid', 'rbac.allowed']);
    // The upstream continues the trace from the client span, and never saw a client-forged header.
    expect(upstreamSaw[0]!['traceparent']).toBe(`00-${caller}-${client.spanContext().spanId}-01`);

    const f = await scrape();
    expect(
      valueOf(f, 'bulwark_http_request_duration_seconds_count', { route: 'orders', method: 'GET', status_class: '2xx' }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      valueOf(f, 'bulwark_upstream_requests_total', { upstream: 'orders', endpoint: upstreamOrigin, status_class: '2xx' }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      valueOf(f, 'bulwark_authz_decisions_total', { policy: 'orders', rule: 'readers', outcome: 'allow' }),
    ).toBeGreaterThanOrEqual(1);
    expect(valueOf(f, 'bulwark_trace_spans_exported_total', { outcome: 'ok' })).toBeGreaterThanOrEqual(2);

    const line = accessLines().at(-1)!;
    expect(line).toMatchObject({
      status: 200,
      route: 'orders',
      trace_id: caller,
      span_id: server.spanContext().spanId,
      decision: 'allow',
    });
    expect(line['bytes']).toBe('hello from upstream'.length);
  });

  it('denied: no upstream call, the code everywhere', async () => {
    expect((await call('deny')).status).toBe(401);
    const spans = exporter.getFinishedSpans();
    expect(spans.map((s) => s.kind)).toEqual([SpanKind.SERVER]);
    expect(spans[0]!.attributes['bulwark.decision.code']).toBe('jwt.expired');
    expect(upstreamSaw).toHaveLength(0);
    const f = await scrape();
    expect(valueOf(f, 'bulwark_authn_outcomes_total', { provider: 'corp', outcome: 'deny', reason: 'jwt.expired' })).toBe(1);
    expect(valueOf(f, 'bulwark_http_rejections_total', { route: 'orders', code: 'jwt.expired' })).toBe(1);
    expect(accessLines().at(-1)).toMatchObject({ status: 401, decision: 'jwt.expired' });
  });

  it('limited: 429 counted per policy', async () => {
    expect((await call('limit')).status).toBe(429);
    const f = await scrape();
    expect(valueOf(f, 'bulwark_ratelimit_decisions_total', { policy: 'per-client', outcome: 'reject' })).toBe(1);
    expect(exporter.getFinishedSpans()[0]!.events.map((e) => e.attributes?.['bulwark.stage'])).toEqual(['authn', 'ratelimit']);
  });

  it('upstream failed: error spans, upstream error counter, 502', async () => {
    expect((await call('fail')).status).toBe(502);
    const spans = exporter.getFinishedSpans();
    const server = spans.find((s) => s.kind === SpanKind.SERVER)!;
    const client = spans.find((s) => s.kind === SpanKind.CLIENT)!;
    expect(client.status.code).toBe(SpanStatusCode.ERROR);
    expect(client.attributes['error.type']).toBe('upstream.unreachable');
    expect(server.status.code).toBe(SpanStatusCode.ERROR);
    const f = await scrape();
    expect(
      valueOf(f, 'bulwark_upstream_errors_total', { upstream: 'orders', endpoint: deadOrigin, reason: 'upstream.unreachable' }),
    ).toBe(1);
    expect(
      valueOf(f, 'bulwark_upstream_requests_total', { upstream: 'orders', endpoint: deadOrigin, status_class: 'none' }),
    ).toBe(1);
  });
});

describe('reload', () => {
  it('swaps tracing when its section changes, routes alone when only routes change', async () => {
    const { logger } = captureLogger();
    const mem1 = new InMemorySpanExporter();
    const t = createTelemetry(
      { telemetry: { traces: { exporter: 'otlp' } }, routes: ROUTES },
      { logger, role: 'single', spanExporter: mem1, simpleSpanProcessor: true },
    );
    const before = t.tracing;
    await t.reload({
      telemetry: { traces: { exporter: 'otlp' } },
      routes: [{ id: 'orders', match: { path: { exact: '/orders/all' } } }],
    });
    expect(t.tracing).toBe(before);
    const { makeContext } = await import('./helpers.js');
    const ctx = makeContext({ route: 'orders' });
    t.finishRequest(ctx, t.startRequest(ctx), 200, 0);
    expect(mem1.getFinishedSpans().at(-1)!.attributes['http.route']).toBe('/orders/all');

    await t.reload({ telemetry: { traces: { exporter: 'none' } }, routes: ROUTES });
    expect(t.tracing).not.toBe(before);
    expect(t.tracing.enabled).toBe(false);
    await t.shutdown();
  });

  it('a primary without workers reports itself and zero workers', async () => {
    const { logger } = captureLogger();
    const t = createTelemetry({ telemetry: { metrics: { defaultMetrics: false } } }, { logger, role: 'primary' });
    t.metrics.configReload('failed');
    const f = parsePrometheus((await t.admin.metrics!()).body);
    expect(valueOf(f, 'bulwark_cluster_workers', { state: 'reporting' })).toBe(0);
    expect(valueOf(f, 'bulwark_config_reloads_total', { outcome: 'failed' })).toBe(1);
    expect(t.tracing.enabled).toBe(false);
    await t.shutdown();
  });
});
