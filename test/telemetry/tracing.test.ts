import { afterEach, describe, expect, it, vi } from 'vitest';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace } from '@opentelemetry/api';
import {
  InMemorySpanExporter,
  SamplingDecision,
  TraceIdRatioBasedSampler,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { resolveTelemetryConfig, type TelemetryConfig } from '../../src/telemetry/schema.js';
import {
  createSampler,
  createTracing,
  FastIds,
  hashIdentity,
  NOOP_SERVER_SPAN,
  parseGrpcPath,
  ratioUpperBound,
  routeTemplate,
  type Tracing,
} from '../../src/telemetry/tracing.js';
import { makeContext } from './helpers.js';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_ID = '00f067aa0ba902b7';
const ROUTES = [
  { id: 'orders', match: { path: { glob: '/orders/{id}' } } },
  { id: 'api', match: { path: { prefix: '/api' } } },
];

const open: Tracing[] = [];
afterEach(async () => {
  for (const t of open.splice(0)) await t.shutdown();
});

function tracer(traces: TelemetryConfig['traces'] = {}, extra: Partial<TelemetryConfig> = {}) {
  const exporter = new InMemorySpanExporter();
  const tracing = createTracing(resolveTelemetryConfig({ ...extra, traces: { exporter: 'otlp', ...traces } }), {
    exporter,
    simpleProcessor: true,
    routes: ROUTES,
  });
  open.push(tracing);
  return { tracing, spans: () => exporter.getFinishedSpans() };
}

function one(spans: ReadableSpan[], kind: SpanKind): ReadableSpan {
  const found = spans.filter((s) => s.kind === kind);
  expect(found).toHaveLength(1);
  return found[0]!;
}

describe('propagation: extraction', () => {
  const cases: {
    name: string;
    headers: Record<string, string>;
    traceId: string | null;
    parent: string | null;
    sampled?: boolean;
  }[] = [
    { name: 'W3C traceparent', headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01` }, traceId: TRACE_ID, parent: PARENT_ID },
    {
      name: 'W3C unsampled parent',
      headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-00` },
      traceId: TRACE_ID,
      parent: PARENT_ID,
      sampled: false,
    },
    {
      name: 'B3 single header',
      headers: { b3: '80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1' },
      traceId: '80f198ee56343ba864fe8b2a57d3eff7',
      parent: 'e457b5a2e4d86bd1',
    },
    {
      name: 'B3 single header, 64-bit trace id',
      headers: { b3: '64fe8b2a57d3eff7-e457b5a2e4d86bd1-1' },
      traceId: '000000000000000064fe8b2a57d3eff7',
      parent: 'e457b5a2e4d86bd1',
    },
    {
      name: 'B3 multi header',
      headers: { 'x-b3-traceid': '463ac35c9f6413ad48485a3953bb6124', 'x-b3-spanid': 'a2fb4a1d1a96d312', 'x-b3-sampled': '1' },
      traceId: '463ac35c9f6413ad48485a3953bb6124',
      parent: 'a2fb4a1d1a96d312',
    },
    {
      // W3C ids are lower case: an upper-case B3 id would go upstream as an invalid traceparent.
      name: 'B3 multi header in upper case: lowered',
      headers: { 'x-b3-traceid': '463AC35C9F6413AD48485A3953BB6124', 'x-b3-spanid': 'A2FB4A1D1A96D312', 'x-b3-sampled': '1' },
      traceId: '463ac35c9f6413ad48485a3953bb6124',
      parent: 'a2fb4a1d1a96d312',
    },
    {
      name: 'W3C wins over B3',
      headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`, b3: '80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1' },
      traceId: TRACE_ID,
      parent: PARENT_ID,
    },
    {
      name: 'malformed traceparent, valid B3: B3 is used',
      headers: { traceparent: 'garbage', b3: '80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1' },
      traceId: '80f198ee56343ba864fe8b2a57d3eff7',
      parent: 'e457b5a2e4d86bd1',
    },
    { name: 'garbage traceparent', headers: { traceparent: 'garbage' }, traceId: null, parent: null },
    { name: 'all-zero trace id', headers: { traceparent: `00-${'0'.repeat(32)}-${PARENT_ID}-01` }, traceId: null, parent: null },
    { name: 'all-zero span id', headers: { traceparent: `00-${TRACE_ID}-${'0'.repeat(16)}-01` }, traceId: null, parent: null },
    { name: 'version ff', headers: { traceparent: `ff-${TRACE_ID}-${PARENT_ID}-01` }, traceId: null, parent: null },
    { name: 'short trace id', headers: { traceparent: `00-${TRACE_ID.slice(2)}-${PARENT_ID}-01` }, traceId: null, parent: null },
    {
      name: 'upper-case hex',
      headers: { traceparent: `00-${TRACE_ID.toUpperCase()}-${PARENT_ID}-01` },
      traceId: null,
      parent: null,
    },
    { name: 'B3 nonsense', headers: { b3: 'not-a-b3-header' }, traceId: null, parent: null },
    {
      name: 'B3 multi without span id',
      headers: { 'x-b3-traceid': '463ac35c9f6413ad48485a3953bb6124' },
      traceId: null,
      parent: null,
    },
    // B3's lone "deny" carries no trace to continue, but a decision: a new root, not sampled (parent-based).
    { name: 'B3 single deny-sampling only', headers: { b3: '0' }, traceId: null, parent: null, sampled: false },
    { name: 'B3 multi deny-sampling only', headers: { 'x-b3-sampled': '0' }, traceId: null, parent: null, sampled: false },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const { tracing, spans } = tracer();
      const ctx = makeContext({ headers: c.headers });
      const span = tracing.startServerSpan(ctx);
      span.end(ctx, 200);
      expect(ctx.trace).not.toBeNull();
      expect(ctx.trace!.traceId).toMatch(/^[0-9a-f]{32}$/);
      expect(ctx.trace!.spanId).toMatch(/^[0-9a-f]{16}$/);
      if (c.traceId === null) {
        // A new root trace: not the caller's ids, no parent.
        expect(ctx.trace!.traceId).not.toBe(TRACE_ID);
        if (c.sampled !== false) expect(one(spans(), SpanKind.SERVER).parentSpanContext).toBeUndefined();
      } else {
        expect(ctx.trace!.traceId).toBe(c.traceId);
        expect(ctx.trace!.spanId).not.toBe(c.parent);
        if (c.sampled !== false) expect(one(spans(), SpanKind.SERVER).parentSpanContext?.spanId).toBe(c.parent);
      }
      if (c.sampled === false) {
        expect(ctx.trace!.sampled).toBe(false);
        expect(spans()).toHaveLength(0);
      } else expect(ctx.trace!.sampled).toBe(true);
    });
  }

  it('keeps the tracestate', () => {
    const { tracing } = tracer();
    const ctx = makeContext({ headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`, tracestate: 'vendor=abc,other=1' } });
    tracing.startServerSpan(ctx).end(ctx, 200);
    expect(ctx.trace!.traceState).toBe('vendor=abc,other=1');
  });
});

describe("propagation: B3's deny without ids, under a parent-based sampler", () => {
  function run(propagators: ('tracecontext' | 'baggage' | 'b3' | 'b3multi')[], headers: Record<string, string>) {
    const { tracing, spans } = tracer({ propagators, sampler: { ratio: 1, parentBased: true } });
    const ctx = makeContext({ headers });
    const server = tracing.startServerSpan(ctx);
    const client = server.startClientSpan('r', 'http://10.0.0.1:8080', 'GET');
    const flat: string[] = [];
    for (const [k, v] of Object.entries(headers)) flat.push(k, v);
    client.inject(flat);
    client.end(200);
    server.end(ctx, 200);
    const up: Record<string, string> = {};
    for (let i = 0; i < flat.length; i += 2) up[flat[i]!.toLowerCase()] = flat[i + 1]!;
    return { sampled: ctx.trace!.sampled, traceId: ctx.trace!.traceId, up, spans: spans().length };
  }
  const cases: [string, ('tracecontext' | 'baggage' | 'b3' | 'b3multi')[], Record<string, string>, boolean][] = [
    ['b3: 0', ['tracecontext', 'baggage'], { b3: '0' }, false],
    ['b3: 0 with baggage', ['tracecontext', 'baggage'], { b3: '0', baggage: 'tenant=acme' }, false],
    ['X-B3-Sampled: 0', ['tracecontext', 'baggage'], { 'x-b3-sampled': '0' }, false],
    ['X-B3-Sampled: 0 with baggage', ['tracecontext', 'baggage'], { 'x-b3-sampled': '0', baggage: 'tenant=acme' }, false],
    ['X-B3-Sampled: false', ['tracecontext', 'baggage'], { 'x-b3-sampled': 'false' }, false],
    [
      'X-B3-Sampled: 0 with X-B3-Flags: 1 (debug wins)',
      ['tracecontext', 'baggage'],
      { 'x-b3-sampled': '0', 'x-b3-flags': '1' },
      true,
    ],
    [
      'a sampled traceparent wins',
      ['tracecontext'],
      { 'x-b3-sampled': '0', traceparent: `00-${TRACE_ID}-${PARENT_ID}-01` },
      true,
    ],
    ['b3: 0, injected as B3', ['b3'], { b3: '0' }, false],
    ['X-B3-Sampled: 0, injected as B3 multi', ['b3multi'], { 'x-b3-sampled': '0' }, false],
  ];
  for (const [name, propagators, headers, sampled] of cases) {
    it(name, () => {
      const r = run(propagators, headers);
      expect(r.sampled).toBe(sampled);
      expect(r.spans).toBe(sampled ? 2 : 0);
      expect(r.traceId).toMatch(/^[0-9a-f]{32}$/);
      if (propagators.includes('tracecontext')) expect(r.up['traceparent']).toMatch(sampled ? /-01$/ : /-00$/);
      if (propagators.includes('b3')) expect(r.up['b3']).toMatch(new RegExp(`^${r.traceId}-[0-9a-f]{16}-0$`));
      if (propagators.includes('b3multi')) expect(r.up['x-b3-sampled']).toBe('0');
      // The caller's baggage goes on upstream, decision or not.
      if (headers['baggage'] !== undefined) expect(r.up['baggage']).toBe('tenant=acme');
    });
  }
});

describe('propagation: injection', () => {
  const incoming = {
    traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`,
    tracestate: 'vendor=abc',
    baggage: 'tenant=acme',
  };
  // What a client sent, as the gateway's flat list has it: these must not reach the upstream next to ours.
  const clientCopies = () => [
    'traceparent',
    'client-value',
    'b3',
    'client-value',
    'x-b3-traceid',
    'client-value',
    'X-B3-SpanId',
    'client-value',
    'accept',
    '*/*',
  ];

  function inject(propagators: ('tracecontext' | 'baggage' | 'b3' | 'b3multi')[]) {
    const { tracing, spans } = tracer({ propagators });
    const ctx = makeContext({ headers: incoming });
    const server = tracing.startServerSpan(ctx);
    const client = server.startClientSpan('orders', 'http://10.0.0.1:8080', 'GET');
    const headers = clientCopies();
    client.inject(headers);
    client.end(200);
    server.end(ctx, 200);
    const map = new Map<string, string>();
    for (let i = 0; i < headers.length; i += 2) map.set(headers[i]!.toLowerCase(), headers[i + 1]!);
    const clientSpan = one(spans(), SpanKind.CLIENT);
    expect(headers).not.toContain('client-value');
    expect(map.get('accept')).toBe('*/*');
    return { map, clientSpanId: clientSpan.spanContext().spanId, names: headers.filter((_, i) => i % 2 === 0) };
  }

  it('W3C tracecontext + baggage (default): the trace continues through the client span', () => {
    const { map, clientSpanId, names } = inject(['tracecontext', 'baggage']);
    expect(map.get('traceparent')).toBe(`00-${TRACE_ID}-${clientSpanId}-01`);
    expect(map.get('tracestate')).toBe('vendor=abc');
    expect(map.get('baggage')).toBe('tenant=acme');
    expect(names).not.toContain('b3');
  });

  it('B3 single header', () => {
    const { map, clientSpanId, names } = inject(['b3']);
    expect(map.get('b3')).toBe(`${TRACE_ID}-${clientSpanId}-1`);
    expect(names).not.toContain('traceparent');
  });

  it('B3 multi header', () => {
    const { map, clientSpanId } = inject(['b3multi']);
    expect(map.get('x-b3-traceid')).toBe(TRACE_ID);
    expect(map.get('x-b3-spanid')).toBe(clientSpanId);
    expect(map.get('x-b3-sampled')).toBe('1');
  });

  it('client-sent baggage passes untouched when baggage is not a configured format', () => {
    const { map } = inject(['tracecontext']);
    // Not extracted, not stripped: the gateway neither reads nor rewrites it.
    expect(map.has('baggage')).toBe(false); // it was never in the flat list of this test
  });
});

describe('sampling', () => {
  const sampledParent = { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01` };
  const unsampledParent = { traceparent: `00-${TRACE_ID}-${PARENT_ID}-00` };
  const run = (sampler: { ratio: number; parentBased: boolean }, headers: Record<string, string>) => {
    const { tracing, spans } = tracer({ sampler });
    const results: boolean[] = [];
    for (let i = 0; i < 20; i++) {
      const ctx = makeContext({ headers });
      tracing.startServerSpan(ctx).end(ctx, 200);
      results.push(ctx.trace!.sampled);
    }
    return { results, exported: spans().length };
  };

  it('ratio 1 records every new trace', () => {
    expect(run({ ratio: 1, parentBased: true }, {})).toEqual({ results: Array(20).fill(true), exported: 20 });
  });

  it('ratio 0 records no new trace but still gives each request ids', () => {
    const { tracing, spans } = tracer({ sampler: { ratio: 0, parentBased: true } });
    const ctx = makeContext();
    const span = tracing.startServerSpan(ctx);
    expect(span.recording).toBe(false);
    span.end(ctx, 200);
    expect(ctx.trace).toMatchObject({ sampled: false });
    expect(ctx.trace!.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(spans()).toHaveLength(0);
  });

  it('parent-based: a sampled caller is followed even at ratio 0', () => {
    expect(run({ ratio: 0, parentBased: true }, sampledParent)).toEqual({ results: Array(20).fill(true), exported: 20 });
  });

  it('parent-based: an unsampled caller is followed even at ratio 1', () => {
    expect(run({ ratio: 1, parentBased: true }, unsampledParent)).toEqual({ results: Array(20).fill(false), exported: 0 });
  });

  it('not parent-based: the ratio decides whatever the caller says', () => {
    expect(run({ ratio: 0, parentBased: false }, sampledParent).exported).toBe(0);
    expect(run({ ratio: 1, parentBased: false }, unsampledParent).exported).toBe(20);
  });

  it('a fractional ratio samples about that share, decided by trace id', () => {
    const { tracing, spans } = tracer({ sampler: { ratio: 0.25, parentBased: true } });
    for (let i = 0; i < 2000; i++) {
      const ctx = makeContext();
      tracing.startServerSpan(ctx).end(ctx, 200);
    }
    expect(spans().length).toBeGreaterThan(350);
    expect(spans().length).toBeLessThan(650);
  });

  it('unsampled requests inject sampled=0 so the upstream does not record either', () => {
    const { tracing } = tracer({ sampler: { ratio: 0, parentBased: true } });
    const ctx = makeContext();
    const client = tracing.startServerSpan(ctx).startClientSpan('u', 'http://h:1', 'GET');
    const headers: string[] = [];
    client.inject(headers);
    expect(headers[0]).toBe('traceparent');
    expect(headers[1]).toMatch(new RegExp(`^00-${ctx.trace!.traceId}-[0-9a-f]{16}-00$`));
  });

  it('root decisions match the SDK ratio sampler on the same trace id, and sampled spans keep that id', () => {
    const ids = new FastIds();
    for (const ratio of [0, 0.01, 0.25, 0.5, 1]) {
      const sdk = new TraceIdRatioBasedSampler(ratio);
      const bound = ratioUpperBound(ratio);
      for (let i = 0; i < 3000; i++) {
        const traceId = ids.rootTraceId();
        expect(traceId).toMatch(/^[0-9a-f]{32}$/);
        const sampled = sdk.shouldSample(ROOT_CONTEXT, traceId).decision === SamplingDecision.RECORD_AND_SAMPLED;
        expect(ids.fold < bound).toBe(sampled);
      }
    }
    const { tracing, spans } = tracer({ sampler: { ratio: 0.5, parentBased: true } });
    const sampledIds: string[] = [];
    for (let i = 0; i < 200; i++) {
      const ctx = makeContext();
      tracing.startServerSpan(ctx).end(ctx, 200);
      if (ctx.trace!.sampled) sampledIds.push(`${ctx.trace!.traceId}/${ctx.trace!.spanId}`);
      expect(ctx.trace!.spanId).toMatch(/^[0-9a-f]{16}$/);
    }
    expect(spans().map((s) => `${s.spanContext().traceId}/${s.spanContext().spanId}`)).toEqual(sampledIds);
  });

  it('an unsampled W3C caller (parent-based) continues its trace with sampled=0, tracestate and oddities via the SDK', () => {
    const { tracing, spans } = tracer({ sampler: { ratio: 1, parentBased: true } });
    const variants: Record<string, string>[] = [
      { traceparent: `00-${TRACE_ID}-${PARENT_ID}-00` },
      { traceparent: `00-${TRACE_ID}-${PARENT_ID}-00`, tracestate: 'vendor=x' },
      { traceparent: ` 00-${TRACE_ID}-${PARENT_ID}-00` },
      { traceparent: `00-${TRACE_ID}-${PARENT_ID}-00`, b3: `${TRACE_ID}-${PARENT_ID}-1` },
    ];
    for (const headers of variants) {
      const ctx = makeContext({ headers });
      const server = tracing.startServerSpan(ctx);
      expect(server.recording).toBe(false);
      expect(ctx.trace).toMatchObject({ traceId: TRACE_ID, sampled: false });
      expect(ctx.trace!.spanId).toMatch(/^[0-9a-f]{16}$/);
      expect(ctx.trace!.spanId).not.toBe(PARENT_ID);
      const client = server.startClientSpan('u', 'http://h:1', 'GET');
      const out = ['traceparent', 'stale'];
      client.inject(out);
      expect(out[0]).toBe('traceparent');
      expect(out[1]).toMatch(new RegExp(`^00-${TRACE_ID}-[0-9a-f]{16}-00$`));
      if (headers['tracestate'] !== undefined) expect(out.slice(2)).toEqual(['tracestate', 'vendor=x']);
      else expect(out).toHaveLength(2);
      client.end(200);
      server.end(ctx, 200);
    }
    // An invalid traceparent (all-zero trace id) is no context: a new root, sampled at ratio 1.
    const ctx = makeContext({ headers: { traceparent: `00-${'0'.repeat(32)}-${PARENT_ID}-00` } });
    tracing.startServerSpan(ctx).end(ctx, 200);
    expect(ctx.trace!.sampled).toBe(true);
    expect(ctx.trace!.traceId).not.toBe('0'.repeat(32));
    expect(spans()).toHaveLength(1);
  });

  it('under a remote parent the configured sampler decides, for server and client span alike', () => {
    // B3 multi headers (parsed by the SDK propagator; the W3C fast path only takes sampled=0).
    const headers = (traceId: string, sampled: boolean) => ({
      'x-b3-traceid': traceId,
      'x-b3-spanid': PARENT_ID,
      'x-b3-sampled': sampled ? '1' : '0',
    });
    const ids = new FastIds();
    for (const parentBased of [true, false]) {
      for (const ratio of [0, 0.5, 1]) {
        const configured = createSampler({ ratio, parentBased });
        const { tracing, spans } = tracer({ sampler: { ratio, parentBased } });
        let expected = 0;
        for (let i = 0; i < 100; i++) {
          const traceId = ids.rootTraceId();
          for (const sampled of [true, false]) {
            const remote = trace.setSpanContext(ROOT_CONTEXT, {
              traceId,
              spanId: PARENT_ID,
              traceFlags: sampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
              isRemote: true,
            });
            const verdict = configured.shouldSample(remote, traceId, 'GET', SpanKind.SERVER, {}, []).decision;
            const ctx = makeContext({ headers: headers(traceId, sampled) });
            const server = tracing.startServerSpan(ctx);
            expect(ctx.trace!.sampled).toBe(verdict === SamplingDecision.RECORD_AND_SAMPLED);
            expect(server.recording).toBe(verdict !== SamplingDecision.NOT_RECORD);
            server.startClientSpan('u', 'http://h:1', 'GET').end(200);
            server.end(ctx, 200);
            if (ctx.trace!.sampled) expected += 2;
          }
        }
        expect(spans()).toHaveLength(expected);
        for (const s of spans()) expect(s.parentSpanContext?.spanId).toMatch(/^[0-9a-f]{16}$/);
      }
    }
  });

  it('ids are unique across pool refills', () => {
    const ids = new FastIds();
    const seen = new Set<string>();
    for (let i = 0; i < 5000; i++) {
      seen.add(ids.rootTraceId());
      seen.add(ids.generateSpanId());
    }
    expect(seen.size).toBe(10000);
  });

  it('unsampled roots propagate with the configured formats (B3 through the SDK propagators)', () => {
    const { tracing } = tracer({ sampler: { ratio: 0, parentBased: true }, propagators: ['b3multi'] });
    const ctx = makeContext({ headers: {} });
    const client = tracing.startServerSpan(ctx).startClientSpan('u', 'http://h:1', 'GET');
    const headers = ['traceparent', 'stale', 'x-b3-sampled', '1'];
    client.inject(headers);
    const map = Object.fromEntries(Array.from({ length: headers.length / 2 }, (_, i) => [headers[2 * i], headers[2 * i + 1]]));
    expect(map).toMatchObject({ 'x-b3-traceid': ctx.trace!.traceId, 'x-b3-sampled': '0' });
    expect(map['traceparent']).toBeUndefined();
  });
});

describe('span tree and attributes', () => {
  const allowDecisions = [
    { stage: 'authn', outcome: 'allow' as const, code: 'authn.valid', detail: { provider: 'corp', kid: 'k1', cached: false } },
    {
      stage: 'authz',
      outcome: 'allow' as const,
      code: 'rbac.allowed',
      detail: { policy: 'orders', rule: 'readers', roles: ['r'] },
    },
    {
      stage: 'ratelimit',
      outcome: 'allow' as const,
      code: 'ratelimit.ok',
      detail: { policy: 'pc', key: 'h:secret-key', remaining: 9 },
    },
  ];

  it('allowed: server span with HTTP semantic conventions, decisions as events, a client span per attempt', () => {
    const { tracing, spans } = tracer();
    const ctx = makeContext({ method: 'GET', path: '/orders/42', route: 'orders', host: 'api.example.com' });
    const server = tracing.startServerSpan(ctx);
    server.stageEvent(allowDecisions[0]!);
    for (const d of allowDecisions) ctx.decisions.push(d);
    const first = server.startClientSpan('orders', 'http://10.0.0.1:8080', 'GET');
    first.end(0, 'upstream.reset');
    const second = server.startClientSpan('orders', 'http://10.0.0.2:8080', 'GET');
    second.end(200);
    server.end(ctx, 200);

    const all = spans();
    const s = one(all, SpanKind.SERVER);
    expect(s.name).toBe('GET /orders/{id}');
    expect(s.attributes).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/orders/42',
      'url.scheme': 'http',
      'http.route': '/orders/{id}',
      'http.response.status_code': 200,
      'server.address': 'api.example.com',
      'network.protocol.version': '1.1',
      'bulwark.route.id': 'orders',
    });
    expect(s.status.code).toBe(SpanStatusCode.UNSET);
    // stageEvent for the first, end() for the rest: each decision exactly once, in order.
    expect(s.events.map((e) => e.attributes?.['bulwark.stage'])).toEqual(['authn', 'authz', 'ratelimit']);
    expect(s.events[0]!.attributes).toMatchObject({
      'bulwark.decision.code': 'authn.valid',
      'bulwark.decision.provider': 'corp',
      'bulwark.decision.kid': 'k1',
    });
    expect(s.events[1]!.attributes).toMatchObject({ 'bulwark.decision.policy': 'orders', 'bulwark.decision.rule': 'readers' });
    // The limiter key and the roles are not copied onto spans.
    expect(JSON.stringify(s.events)).not.toContain('secret-key');
    expect(s.events[1]!.attributes?.['bulwark.decision.roles']).toBeUndefined();

    const clients = all.filter((x) => x.kind === SpanKind.CLIENT);
    expect(clients).toHaveLength(2);
    for (const c of clients) {
      expect(c.parentSpanContext?.spanId).toBe(s.spanContext().spanId);
      expect(c.spanContext().traceId).toBe(s.spanContext().traceId);
      expect(c.attributes['bulwark.upstream']).toBe('orders');
    }
    expect(clients[0]!.attributes).toMatchObject({
      'server.address': '10.0.0.1',
      'server.port': 8080,
      'error.type': 'upstream.reset',
    });
    expect(clients[0]!.status.code).toBe(SpanStatusCode.ERROR);
    expect(clients[1]!.attributes).toMatchObject({ 'server.address': '10.0.0.2', 'http.response.status_code': 200 });
    expect(clients[1]!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it('denied: no client span, the denial code on the span, a 4xx is not a server error', () => {
    const { tracing, spans } = tracer();
    const ctx = makeContext({ path: '/api/x', route: 'api' });
    const server = tracing.startServerSpan(ctx);
    ctx.decisions.push({ stage: 'authn', outcome: 'deny', code: 'jwt.expired', detail: { provider: 'corp', reason: 'exp' } });
    server.end(ctx, 401, { code: 'jwt.expired' });
    const s = one(spans(), SpanKind.SERVER);
    expect(spans().filter((x) => x.kind === SpanKind.CLIENT)).toHaveLength(0);
    expect(s.name).toBe('GET /api/**');
    expect(s.attributes).toMatchObject({
      'http.response.status_code': 401,
      'bulwark.decision.code': 'jwt.expired',
      'http.route': '/api/**',
    });
    expect(s.attributes['error.type']).toBeUndefined();
    expect(s.status.code).toBe(SpanStatusCode.UNSET);
    expect(s.events[0]!.attributes).toMatchObject({ 'bulwark.stage': 'authn', 'bulwark.decision.outcome': 'deny' });
  });

  it('limited: 429 with the limiter decision', () => {
    const { tracing, spans } = tracer();
    const ctx = makeContext();
    const server = tracing.startServerSpan(ctx);
    ctx.decisions.push({
      stage: 'ratelimit',
      outcome: 'deny',
      code: 'ratelimit.exceeded',
      detail: { policy: 'pc', limit: 10, remaining: 0 },
    });
    server.end(ctx, 429, { code: 'ratelimit.exceeded' });
    const s = one(spans(), SpanKind.SERVER);
    expect(s.attributes['bulwark.decision.code']).toBe('ratelimit.exceeded');
    expect(s.events[0]!.attributes).toMatchObject({
      'bulwark.decision.policy': 'pc',
      'bulwark.decision.limit': 10,
      'bulwark.decision.remaining': 0,
    });
  });

  it('upstream failed: both spans are errors with the reason code', () => {
    const { tracing, spans } = tracer();
    const ctx = makeContext();
    const server = tracing.startServerSpan(ctx);
    server.startClientSpan('orders', 'http://10.0.0.1:8080', 'GET').end(0, 'upstream.timeout');
    server.end(ctx, 504, { code: 'upstream.timeout' });
    const s = one(spans(), SpanKind.SERVER);
    const c = one(spans(), SpanKind.CLIENT);
    expect(s.status.code).toBe(SpanStatusCode.ERROR);
    expect(s.attributes['error.type']).toBe('upstream.timeout');
    expect(c.status.code).toBe(SpanStatusCode.ERROR);
    expect(c.attributes['error.type']).toBe('upstream.timeout');
  });

  it('unmatched requests: named by method only, no route, no path of a malformed target', () => {
    const { tracing, spans } = tracer();
    const ctx = makeContext({ route: null, path: '' });
    tracing.startServerSpan(ctx).end(ctx, 400, { code: 'request.malformed' });
    const s = one(spans(), SpanKind.SERVER);
    expect(s.name).toBe('GET');
    expect(s.attributes['http.route']).toBeUndefined();
    expect(s.attributes['url.path']).toBeUndefined();
  });

  it('unknown methods are _OTHER with the original kept', () => {
    const { tracing, spans } = tracer();
    const ctx = makeContext({ method: 'PURGE' });
    tracing.startServerSpan(ctx).end(ctx, 200);
    const s = one(spans(), SpanKind.SERVER);
    expect(s.attributes).toMatchObject({ 'http.request.method': '_OTHER', 'http.request.method_original': 'PURGE' });
    // Semconv: `HTTP` stands for a method outside the known set (route r1 has no template here).
    expect(s.name).toBe('HTTP');
  });

  it('gRPC: rpc.* attributes, service/method name, error statuses per the gRPC conventions', () => {
    const { tracing, spans } = tracer();
    const ctx = makeContext({
      method: 'POST',
      path: '/acme.orders.v1.Orders/Get',
      headers: { 'content-type': 'application/grpc+proto' },
      protocol: 'h2',
    });
    tracing.startServerSpan(ctx).end(ctx, 200, { grpcStatus: 14 });
    const ok = makeContext({
      method: 'POST',
      path: '/acme.orders.v1.Orders/Get',
      headers: { 'content-type': 'application/grpc' },
      protocol: 'h2',
    });
    tracing.startServerSpan(ok).end(ok, 200, { grpcStatus: 5 });
    const [failed, notFound] = spans();
    expect(failed!.name).toBe('acme.orders.v1.Orders/Get');
    expect(failed!.attributes).toMatchObject({
      'rpc.system': 'grpc',
      'rpc.service': 'acme.orders.v1.Orders',
      'rpc.method': 'Get',
      'rpc.grpc.status_code': 14,
      'network.protocol.version': '2',
    });
    expect(failed!.status.code).toBe(SpanStatusCode.ERROR);
    expect(notFound!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it('identity attributes only when enabled, and hashed', () => {
    const identity = { subject: 'alice@example.com', tenant: 'acme', roles: [], scopes: [], claims: {}, provider: 'corp' };
    const on = tracer({ identityAttributes: true });
    const ctx = makeContext({ identity });
    on.tracing.startServerSpan(ctx).end(ctx, 200);
    const s = one(on.spans(), SpanKind.SERVER);
    expect(s.attributes['enduser.id']).toBe(hashIdentity('alice@example.com'));
    expect(s.attributes['bulwark.tenant']).toBe(hashIdentity('acme'));
    expect(JSON.stringify(s.attributes)).not.toContain('alice');

    const off = tracer();
    const ctx2 = makeContext({ identity });
    off.tracing.startServerSpan(ctx2).end(ctx2, 200);
    expect(one(off.spans(), SpanKind.SERVER).attributes['enduser.id']).toBeUndefined();
  });

  it('resource: service name and extra attributes', () => {
    const { tracing, spans } = tracer(
      {},
      { serviceName: 'edge-gw', resourceAttributes: { 'deployment.environment.name': 'test' } },
    );
    const ctx = makeContext();
    tracing.startServerSpan(ctx).end(ctx, 200);
    expect(spans()[0]!.resource.attributes).toMatchObject({ 'service.name': 'edge-gw', 'deployment.environment.name': 'test' });
  });
});

describe('exporter none', () => {
  it('creates no spans but reads the caller trace id for the logs; headers pass untouched', () => {
    const tracing = createTracing(resolveTelemetryConfig({ traces: { exporter: 'none' } }));
    expect(tracing.enabled).toBe(false);
    const ctx = makeContext({ headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01` } });
    const span = tracing.startServerSpan(ctx);
    expect(span).toBe(NOOP_SERVER_SPAN);
    expect(ctx.trace).toEqual({ traceId: TRACE_ID, spanId: PARENT_ID, sampled: true });
    const headers = ['traceparent', `00-${TRACE_ID}-${PARENT_ID}-01`];
    const client = span.startClientSpan('u', 'http://h:1', 'GET');
    client.inject(headers);
    client.end(200);
    span.end(ctx, 200);
    expect(headers).toEqual(['traceparent', `00-${TRACE_ID}-${PARENT_ID}-01`]);

    const plain = makeContext();
    tracing.startServerSpan(plain);
    expect(plain.trace).toBeNull();
  });
});

describe('console exporter', () => {
  it('prints each finished span', async () => {
    const dir = vi.spyOn(console, 'dir').mockImplementation(() => {});
    try {
      const tracing = createTracing(resolveTelemetryConfig({ traces: { exporter: 'console' } }), { routes: ROUTES });
      const ctx = makeContext({ path: '/orders/1', route: 'orders' });
      tracing.startServerSpan(ctx).end(ctx, 200);
      await tracing.forceFlush();
      await tracing.shutdown();
      expect(dir).toHaveBeenCalled();
      const printed = dir.mock.calls.map((c) => c[0] as { traceId: string; name: string; attributes: Record<string, unknown> });
      const span = printed.find((p) => p.traceId === ctx.trace!.traceId)!;
      expect(span.name).toBe('GET /orders/{id}');
      expect(span.attributes['http.route']).toBe('/orders/{id}');
    } finally {
      dir.mockRestore();
    }
  });
});

describe('helpers', () => {
  it('route templates from route matches', () => {
    expect(routeTemplate({ exact: '/health' })).toBe('/health');
    expect(routeTemplate({ glob: '/users/{id}/**' })).toBe('/users/{id}/**');
    expect(routeTemplate({ prefix: '/api/' })).toBe('/api/**');
    expect(routeTemplate({ prefix: '/' })).toBe('/**');
    expect(routeTemplate(undefined)).toBe('/**');
  });

  it('gRPC paths', () => {
    expect(parseGrpcPath('/pkg.Svc/Method')).toEqual({ service: 'pkg.Svc', method: 'Method' });
    expect(parseGrpcPath('/pkg.Svc/Method/extra')).toBeNull();
    expect(parseGrpcPath('/pkg.Svc/')).toBeNull();
    expect(parseGrpcPath('//Method')).toBeNull();
  });
});
