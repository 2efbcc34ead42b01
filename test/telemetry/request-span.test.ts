import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace, type Attributes, type SpanContext } from '@opentelemetry/api';
import { TraceState } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOnSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ProtoWriter, requestOf, writeSpan } from '../../src/telemetry/otlp-spans.js';
import { RequestSpan, type SpanHome } from '../../src/telemetry/request-span.js';
import { MAX_ATTRIBUTE_LENGTH } from '../../src/telemetry/tracing.js';

const resource = resourceFromAttributes({ 'service.name': 'bulwark-test', 'service.version': '1.2.3' });
const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT: SpanContext = { traceId: TRACE_ID, spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.SAMPLED, isRemote: true };

afterEach(() => {
  vi.useRealTimers();
});

/** The SDK's span and ours, each ending into its own in-memory exporter. */
function pair(kind: SpanKind, parent: SpanContext | undefined) {
  const sdkSpans = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource,
    sampler: new AlwaysOnSampler(),
    spanLimits: { attributeValueLengthLimit: MAX_ATTRIBUTE_LENGTH },
    spanProcessors: [new SimpleSpanProcessor(sdkSpans)],
  });
  const tracer = provider.getTracer('bulwark', '9.9.9');
  const sdk = tracer.startSpan('GET', { kind }, parent === undefined ? ROOT_CONTEXT : trace.setSpanContext(ROOT_CONTEXT, parent));
  const ourSpans = new InMemorySpanExporter();
  const home: SpanHome = {
    resource,
    scope: (tracer as unknown as { instrumentationScope: SpanHome['scope'] }).instrumentationScope,
    processor: new SimpleSpanProcessor(ourSpans),
    valueLimit: MAX_ATTRIBUTE_LENGTH,
  };
  // The same ids as the SDK gave its span, so whole spans compare.
  const ours = new RequestSpan(home, 'GET', kind, sdk.spanContext(), parent);
  return { sdk, ours, exported: () => [sdkSpans.getFinishedSpans()[0]!, ourSpans.getFinishedSpans()[0]!] as const };
}

/** Everything a processor or exporter reads, times aside. */
function view(span: ReadableSpan) {
  return {
    name: span.name,
    kind: span.kind,
    spanContext: span.spanContext(),
    parentSpanContext: span.parentSpanContext,
    status: span.status,
    attributes: span.attributes,
    links: span.links,
    events: span.events.map((e) => ({ name: e.name, attributes: e.attributes, dropped: e.droppedAttributesCount })),
    ended: span.ended,
    resource: span.resource.attributes,
    scope: span.instrumentationScope,
    droppedAttributesCount: span.droppedAttributesCount,
    droppedEventsCount: span.droppedEventsCount,
    droppedLinksCount: span.droppedLinksCount,
  };
}

function toNanos(t: readonly [number, number]): bigint {
  return BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
}

function ourBytes(span: ReadableSpan): Buffer {
  const w = new ProtoWriter(64);
  writeSpan(w, span);
  return requestOf(span.resource, span.instrumentationScope, w.buf.subarray(0, w.pos));
}

describe('RequestSpan: what the SDK span would have exported for the same calls', () => {
  it('attributes: every value type, overwrites, cut to the length limit, empty names and null values ignored', () => {
    const { sdk, ours, exported } = pair(SpanKind.SERVER, PARENT);
    for (const span of [sdk, ours]) {
      span.setAttribute('http.request.method', 'GET');
      span.setAttribute('server.port', 8443);
      span.setAttribute('ratio', 0.25);
      span.setAttribute('flag', true);
      span.setAttribute('list', ['a', 'b'.repeat(MAX_ATTRIBUTE_LENGTH + 5)]);
      span.setAttribute('numbers', [1, 2, 3]);
      span.setAttribute('url.path', '/p'.repeat(MAX_ATTRIBUTE_LENGTH));
      span.setAttribute('http.request.method', 'POST'); // overwrites, keeps its place
      span.setAttribute('', 'nameless');
      span.setAttribute('nothing', undefined as unknown as string);
      span.setAttribute('null', null as unknown as string);
      span.setAttributes({ 'a.b': 'c', 'server.port': 9443 });
      span.updateName('POST /orders/{id}');
      span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
      span.setAttribute('after.end', 1); // ignored
      span.updateName('late');
      span.end(); // twice: ignored (the SDK logs it)
    }
    const [a, b] = exported();
    expect(view(b)).toEqual(view(a));
    expect(b.attributes['url.path']).toHaveLength(MAX_ATTRIBUTE_LENGTH);
    expect(Object.keys(b.attributes)[0]).toBe('http.request.method');
  });

  it('past 128 attributes: the rest dropped and counted', () => {
    const { sdk, ours, exported } = pair(SpanKind.CLIENT, undefined);
    for (const span of [sdk, ours]) {
      for (let i = 0; i < 131; i++) span.setAttribute(`k${i}`, i);
      span.setAttribute('k5', 'overwrite still works at the limit');
      span.end();
    }
    const [a, b] = exported();
    expect(view(b)).toEqual(view(a));
    expect(b.droppedAttributesCount).toBe(3);
    expect(b.attributes['k5']).toBe('overwrite still works at the limit');
  });

  it('events: attributes cut to the limit; past 128 the oldest go and are counted', () => {
    const { sdk, ours, exported } = pair(SpanKind.SERVER, undefined);
    for (const span of [sdk, ours]) {
      for (let i = 0; i < 130; i++)
        span.addEvent('bulwark.decision', {
          'bulwark.stage': 'authn',
          n: i,
          reason: i === 129 ? 'x'.repeat(MAX_ATTRIBUTE_LENGTH + 1) : 'r',
        });
      span.addEvent('bare');
      span.end();
    }
    const [a, b] = exported();
    expect(view(b)).toEqual(view(a));
    expect(b.droppedEventsCount).toBe(3);
    expect(b.events[0]!.attributes!['n']).toBe(3);
    expect(b.events.at(-2)!.attributes!['reason']).toHaveLength(MAX_ATTRIBUTE_LENGTH);
  });

  it('status: UNSET changes nothing, OK is final, only an ERROR keeps its message', () => {
    const sequences = [
      [{ code: SpanStatusCode.ERROR, message: 'upstream.timeout' }],
      [{ code: SpanStatusCode.ERROR, message: 'x' }, { code: SpanStatusCode.UNSET }],
      [
        { code: SpanStatusCode.OK, message: 'dropped' },
        { code: SpanStatusCode.ERROR, message: 'too late' },
      ],
      [{ code: SpanStatusCode.ERROR, message: 'first' }, { code: SpanStatusCode.OK }],
      [{ code: SpanStatusCode.ERROR, message: 42 as unknown as string }],
    ];
    for (const statuses of sequences) {
      const { sdk, ours, exported } = pair(SpanKind.SERVER, undefined);
      for (const span of [sdk, ours]) {
        for (const status of statuses) span.setStatus(status);
        span.end();
      }
      const [a, b] = exported();
      expect(b.status).toStrictEqual(a.status);
    }
  });

  it('ids, parent, kind and trace state carry through; not recording once ended', () => {
    const { sdk, ours, exported } = pair(SpanKind.CLIENT, { ...PARENT, isRemote: false, traceState: new TraceState('v=1') });
    expect(ours.isRecording()).toBe(true);
    sdk.end();
    ours.end();
    expect(ours.isRecording()).toBe(false);
    const [a, b] = exported();
    expect(view(b)).toEqual(view(a));
    expect(b.spanContext().traceId).toBe(TRACE_ID);
    expect(b.parentSpanContext!.traceState!.serialize()).toBe('v=1');
  });

  it('times: start on the wall clock, events and end timed from it, duration their difference', () => {
    const before = BigInt(Date.now()) * 1_000_000n;
    const { ours, exported } = pair(SpanKind.SERVER, undefined);
    expect(ours.endTime).toEqual([0, 0]); // as the SDK's span while running
    ours.addEvent('e');
    ours.end();
    const after = BigInt(Date.now() + 1) * 1_000_000n;
    const [, span] = exported();
    const start = toNanos(span.startTime);
    const end = toNanos(span.endTime);
    expect(start >= before && start <= after).toBe(true);
    expect(toNanos(span.events[0]!.time) >= start).toBe(true);
    expect(end >= toNanos(span.events[0]!.time)).toBe(true);
    expect(toNanos(span.duration)).toBe(end - start);
  });

  it('a span across a second boundary: the end carries into the seconds', () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(1795551708999);
    const { ours, exported } = pair(SpanKind.SERVER, undefined);
    vi.advanceTimersByTime(1003);
    ours.addEvent('late');
    vi.advanceTimersByTime(2);
    ours.end();
    const [, span] = exported();
    expect(span.startTime).toEqual([1795551708, 999_000_000]);
    expect(span.events[0]!.time).toEqual([1795551710, 2_000_000]);
    expect(span.endTime).toEqual([1795551710, 4_000_000]);
    expect(span.duration).toEqual([1, 5_000_000]);
  });
});

describe('RequestSpan in OTLP: the fast path writes what the OTel serializer writes for it', () => {
  const cases: Record<string, (span: RequestSpan) => void> = {
    'a server span with events and an error status': (span) => {
      span.setAttribute('http.request.method', 'GET');
      span.setAttribute('http.response.status_code', 503);
      span.setAttribute('url.path', '/ü/\ud800/' + 'z'.repeat(300));
      span.setAttribute('list', ['a', 'b']);
      span.setAttribute('ok', false);
      span.setAttribute('ratio', 0.5);
      span.addEvent('bulwark.decision', { 'bulwark.stage': 'authz', 'bulwark.decision.code': 'authz.denied' });
      span.setStatus({ code: SpanStatusCode.ERROR, message: 'upstream.timeout' });
    },
    'nothing set at all': () => {},
    'past the attribute limit': (span) => {
      for (let i = 0; i < 140; i++) span.setAttribute(`k${i}`, `v${i}`);
    },
  };
  for (const [name, fill] of Object.entries(cases)) {
    for (const parent of [undefined, PARENT]) {
      it(`${name}${parent ? ', under a remote parent' : ''}`, () => {
        const { ours, exported } = pair(SpanKind.SERVER, parent);
        fill(ours);
        ours.end();
        const [, span] = exported();
        expect(span).toBe(ours);
        expect(ourBytes(span)).toEqual(Buffer.from(ProtobufTraceSerializer.serializeRequest([span])!));
      });
    }
  }

  it('across a second boundary', () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(1795551708999.5);
    const { ours } = pair(SpanKind.CLIENT, PARENT);
    vi.advanceTimersByTime(7);
    ours.end();
    expect(ourBytes(ours)).toEqual(Buffer.from(ProtobufTraceSerializer.serializeRequest([ours])!));
  });

  it('events keep their own attribute object, as given', () => {
    const { ours } = pair(SpanKind.SERVER, undefined);
    const attributes: Attributes = { a: 1 };
    ours.addEvent('e', attributes);
    expect(ours.events[0]!.attributes).toBe(attributes);
  });
});
