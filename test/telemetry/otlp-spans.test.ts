import { SpanKind, SpanStatusCode, TraceFlags, type Attributes, type HrTime } from '@opentelemetry/api';
import { ExportResultCode, TraceState, type ExportResult } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  EncodingSpanProcessor,
  ProtoWriter,
  requestOf,
  writeSpan,
  type BatchExporter,
  type EncodedBatch,
} from '../../src/telemetry/otlp-spans.js';

const resource = resourceFromAttributes({ 'service.name': 'bulwark-test', 'service.version': '1.2.3', 'host.arch': 'x64', n: 3 });
const scope = { name: 'bulwark', version: '0.9.0' };

let seq = 0;
function hex(bytes: number, seed: number): string {
  let out = '';
  for (let i = 0; i < bytes; i++) out += ((seed * 31 + i * 17) & 0xff).toString(16).padStart(2, '0');
  return out;
}

/** A ReadableSpan as the SDK hands it to a processor; fields overridable. */
function span(
  overrides: Partial<Record<keyof ReadableSpan, unknown>> & { traceFlags?: number; traceState?: TraceState } = {},
): ReadableSpan {
  const n = ++seq;
  const traceFlags = overrides.traceFlags ?? TraceFlags.SAMPLED;
  const base = {
    name: 'GET /things/{id}',
    kind: SpanKind.SERVER,
    spanContext: () => ({ traceId: hex(16, n), spanId: hex(8, n + 1), traceFlags, traceState: overrides.traceState }),
    parentSpanContext: undefined,
    startTime: [1795551708, 123456789] as HrTime,
    endTime: [1795551708, 987654321] as HrTime,
    status: { code: SpanStatusCode.UNSET },
    attributes: { 'http.request.method': 'GET', 'http.response.status_code': 200 } as Attributes,
    links: [],
    events: [],
    duration: [0, 864197532] as HrTime,
    ended: true,
    resource,
    instrumentationScope: scope,
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
  return { ...base, ...overrides } as unknown as ReadableSpan;
}

/** Our bytes for one request of `spans` (one resource and scope). */
function ours(spans: ReadableSpan[]): Buffer {
  const w = new ProtoWriter(64); // small on purpose: every grow path runs
  for (const s of spans) writeSpan(w, s);
  return requestOf(spans[0]!.resource, spans[0]!.instrumentationScope, w.buf.subarray(0, w.pos));
}

function official(spans: ReadableSpan[]): Buffer {
  return Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);
}

const long = (n: number, unit = 'a') => unit.repeat(n);

describe('OTLP span encoding: byte for byte the OTel protobuf serializer', () => {
  const cases: Record<string, () => ReadableSpan[]> = {
    'a plain server span': () => [span()],
    'every span kind and none': () =>
      [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER, undefined].map((kind) =>
        span({ kind }),
      ),
    'a child of a remote parent, with trace state': () => [
      span({
        parentSpanContext: { traceId: hex(16, 9), spanId: hex(8, 10), traceFlags: 1, isRemote: true },
        traceState: new TraceState('vendor=abc,other=1'),
      }),
    ],
    'a child of a local parent': () => [
      span({ parentSpanContext: { traceId: hex(16, 9), spanId: hex(8, 10), traceFlags: 1, isRemote: false } }),
    ],
    'error status with and without message': () => [
      span({ status: { code: SpanStatusCode.ERROR, message: 'upstream reset: ünïcödé' } }),
      span({ status: { code: SpanStatusCode.ERROR } }),
      span({ status: { code: SpanStatusCode.OK, message: '' } }),
    ],
    'strings: empty, ascii at the copy threshold, unicode, emoji, lone surrogates, lengths needing 2 and 3 length bytes': () => [
      span({
        attributes: {
          empty: '',
          a24: long(24),
          a25: long(25),
          a127: long(127),
          a128: long(128),
          a16383: long(16383),
          a16384: long(16384),
          latin: 'café crème',
          cjk: '認証ゲートウェイ',
          emoji: '🔐 token',
          lone: 'x\uD800y',
          loneLow: '\uDC00',
          del: '\u007f\u0080',
          nul: 'a\u0000b',
          // Keys are encoded once and reused: non-ASCII, lone surrogate, and one past a one-byte length.
          'clé.ünï': 'k',
          'k\uD800': 1,
          [long(200)]: 'long key',
        },
      }),
    ],
    'numbers: ints, negatives, beyond 2^32, 2^53, int64 edges, doubles, NaN, infinities, -0': () => [
      span({
        attributes: {
          zero: 0,
          one: 1,
          b127: 127,
          b128: 128,
          neg: -1,
          neg2: -300,
          u32: 0xffffffff,
          u32p1: 0x100000000,
          big: 2 ** 53,
          bigger: 2 ** 62,
          maxI64: 2 ** 63,
          minI64: -(2 ** 63),
          belowMin: -(2 ** 64),
          half: 0.5,
          pi: Math.PI,
          negd: -1e-300,
          nan: Number.NaN,
          inf: Number.POSITIVE_INFINITY,
          ninf: Number.NEGATIVE_INFINITY,
          negzero: -0,
        },
      }),
    ],
    'booleans and arrays (with holes and nulls), bytes, nested maps, undefined': () => [
      span({
        attributes: {
          t: true,
          f: false,
          strs: ['a', '', 'ü'],
          nums: [1, -2, 2.5, 2 ** 40],
          bools: [true, false],
          mixed: ['a', null, undefined, 3] as unknown as string[],
          empty: [],
          bytes: new Uint8Array([0, 1, 255]) as unknown as string,
          map: { a: 1, b: { c: ['x'] }, d: null } as unknown as string,
          undef: undefined,
        } as Attributes,
      }),
    ],
    'events with and without attributes, dropped counts': () => [
      span({
        events: [
          {
            name: 'bulwark.decision',
            time: [1795551708, 200000000],
            attributes: { 'bulwark.decision.stage': 'authn', code: 'authn.expired' },
          },
          { name: 'bare', time: [1795551708, 1], droppedAttributesCount: 3 },
          { name: 'no attrs', time: [0, 0], attributes: {} },
        ],
        droppedAttributesCount: 2,
        droppedEventsCount: 5,
        droppedLinksCount: 1,
      }),
    ],
    'links: remote, local, with state and attributes, odd ids': () => [
      span({
        links: [
          { context: { traceId: hex(16, 1), spanId: hex(8, 2), traceFlags: 1, isRemote: true } },
          {
            context: { traceId: hex(16, 3), spanId: hex(8, 4), traceFlags: 0, traceState: new TraceState('k=v') },
            attributes: { why: 'retry' },
            droppedAttributesCount: 1,
          },
          { context: { traceId: 'ABCDEF0123456789ABCDEF0123456789', spanId: 'ABCDEF0123456789', traceFlags: 0 } },
          { context: { traceId: 'abc', spanId: '', traceFlags: 0 } },
          // Not hex at all: below '0', past 'f', and beyond ASCII, as the OTel writer decodes them.
          { context: { traceId: ' !/:@Gz~\u00e9\u4e2d', spanId: 'zzzz\uffff', traceFlags: 0 } },
        ],
      }),
    ],
    'times: zero, year 2038 and far beyond, large nanos': () => [
      span({ startTime: [0, 0], endTime: [2 ** 31, 999999999] }),
      span({ startTime: [4102444800, 500], endTime: [18446744073, 709551615] }),
    ],
    'a batch of 600 spans (a multi-byte request length)': () => Array.from({ length: 600 }, () => span()),
  };

  for (const [name, make] of Object.entries(cases)) {
    it(name, () => {
      const spans = make();
      expect(ours(spans).equals(official(spans))).toBe(true);
    });
  }

  it('resource and scope: schema urls, scope attributes, no version', () => {
    const withSchema = resourceFromAttributes({ a: 'b' }, { schemaUrl: 'https://opentelemetry.io/schemas/1.26.0' });
    const scopes = [
      { name: 'x' },
      { name: 'x', version: '', schemaUrl: 'https://example.com/s' },
      { name: 'y', version: '1', attributes: { 'scope.attr': 1 }, droppedAttributesCount: 2 } as never,
    ];
    for (const s of scopes) {
      for (const r of [resource, withSchema, resourceFromAttributes({})]) {
        const spans = [span({ resource: r, instrumentationScope: s }), span({ resource: r, instrumentationScope: s })];
        expect(ours(spans).equals(official(spans))).toBe(true);
      }
    }
  });

  it('random spans (seeded): equal bytes', () => {
    let state = 42;
    const rand = () => {
      state = (state * 1103515245 + 12345) & 0x7fffffff;
      return state / 0x7fffffff;
    };
    const value = (depth = 0): unknown => {
      const r = rand();
      if (r < 0.25)
        return String.fromCharCode(
          ...Array.from({ length: Math.floor(rand() * 40) }, () => Math.floor(rand() * (rand() < 0.8 ? 128 : 0xffff))),
        );
      if (r < 0.45) return Math.floor((rand() - 0.5) * 2 ** (rand() * 70));
      if (r < 0.55) return (rand() - 0.5) * 1e6;
      if (r < 0.65) return rand() < 0.5;
      if (r < 0.8 && depth < 2) return Array.from({ length: Math.floor(rand() * 4) }, () => value(depth + 1));
      if (depth < 2)
        return Object.fromEntries(Array.from({ length: Math.floor(rand() * 3) }, (_, i) => [`k${i}`, value(depth + 1)]));
      return 'leaf';
    };
    const attrs = () =>
      Object.fromEntries(
        Array.from({ length: Math.floor(rand() * 8) }, (_, i) => [`attr.${i}.${Math.floor(rand() * 1000)}`, value()]),
      );
    for (let round = 0; round < 50; round++) {
      const spans = Array.from({ length: 1 + Math.floor(rand() * 20) }, () =>
        span({
          attributes: attrs() as Attributes,
          events: Array.from({ length: Math.floor(rand() * 3) }, (_, i) => ({
            name: `e${i}`,
            time: [Math.floor(rand() * 2 ** 33), Math.floor(rand() * 1e9)] as HrTime,
            attributes: attrs() as Attributes,
          })),
          startTime: [Math.floor(rand() * 2 ** 34), Math.floor(rand() * 1e9)],
          endTime: [Math.floor(rand() * 2 ** 34), Math.floor(rand() * 1e9)],
          droppedAttributesCount: Math.floor(rand() * 300),
        }),
      );
      expect(ours(spans).equals(official(spans))).toBe(true);
    }
  });
});

/** An exporter that keeps what it is given and answers when told. */
function heldExporter() {
  const batches: { batch: EncodedBatch; done: (r: ExportResult) => void }[] = [];
  const exporter: BatchExporter & { shutdowns: number } = {
    shutdowns: 0,
    export(batch, done) {
      batches.push({ batch, done });
    },
    forceFlush: () => Promise.resolve(),
    shutdown() {
      this.shutdowns++;
      return Promise.resolve();
    },
  };
  return { exporter, batches, ok: (i: number) => batches[i]!.done({ code: ExportResultCode.SUCCESS }) };
}

const opts = { maxQueueSize: 10, maxExportBatchSize: 4, scheduledDelayMs: 1000, exportTimeoutMs: 5000 };

describe('EncodingSpanProcessor: batching as BatchSpanProcessor', () => {
  afterEach(() => vi.useRealTimers());

  it('exports a batch at maxExportBatchSize, bytes equal to the serializer over the same spans, and skips unsampled spans', () => {
    const { exporter, batches } = heldExporter();
    const p = new EncodingSpanProcessor(exporter, opts);
    const spans = [span(), span(), span({ traceFlags: TraceFlags.NONE }), span(), span()];
    for (const s of spans) p.onEnd(s);
    expect(batches).toHaveLength(1);
    expect(batches[0]!.batch.length).toBe(4);
    const sampled = spans.filter((s) => s.spanContext().traceFlags === TraceFlags.SAMPLED);
    expect(Buffer.from(batches[0]!.batch.payload).equals(official(sampled))).toBe(true);
  });

  it('sends a partial batch after scheduledDelayMs', () => {
    vi.useFakeTimers();
    const { exporter, batches } = heldExporter();
    const p = new EncodingSpanProcessor(exporter, opts);
    p.onEnd(span());
    vi.advanceTimersByTime(999);
    expect(batches).toHaveLength(0);
    vi.advanceTimersByTime(1);
    expect(batches).toHaveLength(1);
    expect(batches[0]!.batch.length).toBe(1);
  });

  it('one export at a time; the next batch leaves when the first settles; past maxQueueSize spans are dropped and counted', () => {
    const { exporter, batches, ok } = heldExporter();
    const errors: Error[] = [];
    const p = new EncodingSpanProcessor(exporter, opts);
    for (let i = 0; i < 13; i++) p.onEnd(span());
    // 4 in flight, 4 sealed, 2 open = 10 queued; 3 dropped.
    expect(batches).toHaveLength(1);
    expect(p.dropped).toBe(3);
    ok(0);
    expect(batches).toHaveLength(2);
    expect(batches[1]!.batch.length).toBe(4);
    ok(1);
    // Room again: new spans are taken.
    for (let i = 0; i < 2; i++) p.onEnd(span());
    expect(batches).toHaveLength(3);
    expect(batches[2]!.batch.length).toBe(4);
    expect(p.dropped).toBe(3);
    expect(errors).toHaveLength(0);
  });

  it('an export that never answers times out and the queue moves on', () => {
    vi.useFakeTimers();
    const { exporter, batches } = heldExporter();
    const p = new EncodingSpanProcessor(exporter, { ...opts, exportTimeoutMs: 50 });
    for (let i = 0; i < 8; i++) p.onEnd(span());
    expect(batches).toHaveLength(1);
    vi.advanceTimersByTime(50);
    expect(batches).toHaveLength(2);
  });

  it('a span of another scope starts a new request', () => {
    const { exporter, batches } = heldExporter();
    const p = new EncodingSpanProcessor(exporter, opts);
    const other = { name: 'other' };
    const spans = [span(), span({ instrumentationScope: other }), span({ instrumentationScope: other })];
    for (const s of spans) p.onEnd(s);
    void p.forceFlush();
    expect(batches.map((b) => b.batch.length)).toEqual([1, 2]);
    expect(Buffer.from(batches[1]!.batch.payload).equals(official(spans.slice(1)))).toBe(true);
  });

  it('forceFlush sends everything and settles when the exports do; shutdown stops taking spans and shuts the exporter', async () => {
    const { exporter, batches, ok } = heldExporter();
    const p = new EncodingSpanProcessor(exporter, opts);
    for (let i = 0; i < 10; i++) p.onEnd(span());
    let flushed = false;
    const flush = p.forceFlush().then(() => (flushed = true));
    expect(batches.map((b) => b.batch.length)).toEqual([4, 4, 2]);
    ok(0);
    ok(1);
    await Promise.resolve();
    expect(flushed).toBe(false);
    ok(2);
    await flush;
    const stop = p.shutdown();
    await stop;
    expect(exporter.shutdowns).toBe(1);
    p.onEnd(span());
    await p.forceFlush();
    expect(batches).toHaveLength(3);
    expect(p.dropped).toBe(1);
  });

  it('spans ending while shutdown flushes are counted as dropped, never lost unseen', async () => {
    const { exporter, batches, ok } = heldExporter();
    let drops = 0;
    const p = new EncodingSpanProcessor(exporter, { ...opts, maxExportBatchSize: 10, onDrop: () => drops++ });
    for (let i = 0; i < 5; i++) p.onEnd(span());
    const stopping = p.shutdown();
    for (let i = 0; i < 5; i++) p.onEnd(span());
    expect(batches.map((b) => b.batch.length)).toEqual([5]);
    ok(0);
    await stopping;
    expect([p.dropped, drops]).toEqual([5, 5]);
  });
});
