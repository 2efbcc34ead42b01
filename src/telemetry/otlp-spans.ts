/**
 * OTLP/HTTP span export that encodes each span when it ends.
 *
 * The SDK's BatchSpanProcessor holds every ended span object until its batch is exported
 * (up to `scheduledDelayMs`, 2,048 spans deep), so at full sampling each span, its attribute
 * maps, events and time tuples outlive a few scavenges, get promoted, and are then walked a
 * second time, cold, by the serializer. Here a span is written into the open batch's byte
 * buffer as it ends (its objects die young) and the batch leaves as bytes, through the OTLP
 * exporter's own HTTP transport (headers, compression, timeout, retries with backoff,
 * concurrency limit: `createOtlpHttpExportDelegate`, exactly as OTLPTraceExporter uses it).
 *
 * The encoding is byte-for-byte what @opentelemetry/otlp-transformer's ProtobufTraceSerializer
 * writes for the same spans (same fields, order and presence rules); test/telemetry/otlp-spans.test.ts
 * compares the two over every attribute type, events, links, trace state, status and flags.
 * The batching mirrors BatchSpanProcessor: sampled spans only, `maxQueueSize` spans waiting at most
 * (more are dropped and counted), a batch leaves at `maxExportBatchSize` spans or `scheduledDelayMs`
 * after its first, one export in flight at a time, each given `exportTimeoutMs`.
 */
import { TraceFlags, type Attributes, type AttributeValue, type HrTime, type Link } from '@opentelemetry/api';
import { ExportResultCode, globalErrorHandler, type ExportResult } from '@opentelemetry/core';
import type { InstrumentationScope } from '@opentelemetry/core';
import { OTLPExporterBase, type OTLPExporterNodeConfigBase } from '@opentelemetry/otlp-exporter-base';
import { convertLegacyHttpOptions, createOtlpHttpExportDelegate } from '@opentelemetry/otlp-exporter-base/node-http';
import {
  ProtobufTraceSerializer,
  type IExporterMetricsHelper,
  type IExportTraceServiceResponse,
  type ISerializer,
} from '@opentelemetry/otlp-transformer';
import type { Resource } from '@opentelemetry/resources';
import { RequestSpan } from './request-span.js';
import type { ReadableSpan, Span, SpanProcessor, TimedEvent } from '@opentelemetry/sdk-trace-base';

/** A growable protobuf writer. A nested message reserves one length byte and moves its bytes when it needs more. */
export class ProtoWriter {
  buf: Buffer;
  pos = 0;

  constructor(size = 1 << 16) {
    this.buf = Buffer.allocUnsafe(size);
  }

  private grow(extra: number): void {
    let size = this.buf.length * 2;
    while (size < this.pos + extra) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  tag(field: number, wire: number): void {
    this.varint32((field << 3) | wire);
  }

  varint32(value: number): void {
    if (this.pos + 5 > this.buf.length) this.grow(5);
    const buf = this.buf;
    let v = value >>> 0;
    while (v > 0x7f) {
      buf[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[this.pos++] = v;
  }

  /** An int64 varint: negative numbers as ten bytes of two's complement. */
  varint64(value: number): void {
    if (value >= 0 && value <= 0xffffffff) return this.varint32(value);
    if (this.pos + 10 > this.buf.length) this.grow(10);
    let low: number;
    let high: number;
    if (value >= 0) {
      low = value >>> 0;
      high = (value / 0x100000000) >>> 0;
    } else {
      const abs = Math.abs(value);
      low = ~(abs >>> 0) >>> 0;
      high = ~((abs / 0x100000000) >>> 0) >>> 0;
      low = (low + 1) >>> 0;
      if (low === 0) high = (high + 1) >>> 0;
    }
    const buf = this.buf;
    while (high > 0 || low > 0x7f) {
      buf[this.pos++] = (low & 0x7f) | 0x80;
      low = ((low >>> 7) | (high << 25)) >>> 0;
      high >>>= 7;
    }
    buf[this.pos++] = low & 0x7f;
  }

  fixed32(value: number): void {
    if (this.pos + 4 > this.buf.length) this.grow(4);
    this.buf.writeUInt32LE(value >>> 0, this.pos);
    this.pos += 4;
  }

  /** An HrTime as fixed64 nanoseconds since the epoch, exact past 2^53 (seconds split as the OTel writer does). */
  time(t: HrTime): void {
    if (this.pos + 8 > this.buf.length) this.grow(8);
    const seconds = t[0];
    const nanos = t[1];
    const lowerNanos = (seconds & 0xffff) * 1e9;
    const upperNanos = ((seconds / 0x10000) >>> 0) * 1e9;
    const low = (lowerNanos >>> 0) + ((((upperNanos & 0xffff) * 0x10000) >>> 0) + nanos);
    const high = Math.floor(lowerNanos / 0x100000000) + ((upperNanos / 0x10000) >>> 0) + Math.floor(low / 0x100000000);
    this.buf.writeUInt32LE(low >>> 0, this.pos);
    this.buf.writeUInt32LE(high >>> 0, this.pos + 4);
    this.pos += 8;
  }

  double(value: number): void {
    if (this.pos + 8 > this.buf.length) this.grow(8);
    this.buf.writeDoubleLE(value, this.pos);
    this.pos += 8;
  }

  string(value: string): void {
    const n = value.length;
    if (n <= 127) {
      // One pass for the common short ASCII string: length byte, then the characters, until one is not ASCII.
      if (this.pos + n + 1 > this.buf.length) this.grow(n + 1);
      const buf = this.buf;
      const at = this.pos + 1;
      let i = 0;
      for (; i < n; i++) {
        const c = value.charCodeAt(i);
        if (c > 127) break;
        buf[at + i] = c;
      }
      if (i === n) {
        buf[this.pos] = n;
        this.pos = at + n;
        return;
      }
    }
    // Lone surrogates become U+FFFD, as TextEncoder writes them.
    const bytes = Buffer.byteLength(value, 'utf8');
    this.varint32(bytes);
    if (this.pos + bytes > this.buf.length) this.grow(bytes);
    this.buf.write(value, this.pos, bytes, 'utf8');
    this.pos += bytes;
  }

  bytes(value: Uint8Array): void {
    this.varint32(value.length);
    if (this.pos + value.length > this.buf.length) this.grow(value.length);
    this.buf.set(value, this.pos);
    this.pos += value.length;
  }

  /** A span or trace id: its hex as bytes (any other character decoded as the OTel writer does). */
  hexId(hex: string): void {
    const n = hex.length >> 1;
    this.varint32(n);
    if (this.pos + n > this.buf.length) this.grow(n);
    const buf = this.buf;
    for (let i = 0, at = this.pos; i < n; i++) {
      const hi = hex.charCodeAt(2 * i);
      const lo = hex.charCodeAt(2 * i + 1);
      // ASCII (every id the SDK makes) through the table; anything else as the OTel writer does.
      buf[at + i] = hi < 128 && lo < 128 ? (HEX_VALUES[hi]! << 4) | HEX_VALUES[lo]! : (hexValue(hi) << 4) | hexValue(lo);
    }
    this.pos += n;
  }

  raw(bytes: Uint8Array): void {
    const n = bytes.length;
    if (this.pos + n > this.buf.length) this.grow(n);
    if (n <= 64) {
      // A short copy (an attribute key's prefix): a loop beats TypedArray#set's call for a few dozen bytes.
      const buf = this.buf;
      for (let i = 0, at = this.pos; i < n; i++) buf[at + i] = bytes[i]!;
    } else this.buf.set(bytes, this.pos);
    this.pos += n;
  }

  /** Opens a length-delimited field's body; `end(start)` closes it. */
  begin(): number {
    if (this.pos + 1 > this.buf.length) this.grow(1);
    return this.pos++;
  }

  end(start: number): void {
    const length = this.pos - start - 1;
    let size = 1;
    for (let v = length >>> 7; v > 0; v >>>= 7) size++;
    if (size > 1) {
      if (this.pos + size - 1 > this.buf.length) this.grow(size - 1);
      this.buf.copyWithin(start + size, start + 1, this.pos);
      this.pos += size - 1;
    }
    let v = length;
    let at = start;
    while (v > 0x7f) {
      this.buf[at++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[at] = v;
  }
}

/** What the OTel writer makes of any character: 0-9, a-f, and `c - 55` for the rest (A-F among them). */
function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  return c - 55;
}

/** `hexValue` of every ASCII character, low 8 bits (what a byte store keeps): one load instead of two compares. */
const HEX_VALUES = Uint8Array.from({ length: 128 }, (_, c) => hexValue(c) & 0xff);

const MIN_INT64 = -(2 ** 63);
const MAX_INT64 = 2 ** 63;

function writeAnyValue(w: ProtoWriter, value: unknown): void {
  const t = typeof value;
  if (t === 'string') {
    w.tag(1, 2);
    w.string(value as string);
  } else if (t === 'boolean') {
    w.tag(2, 0);
    w.varint32(value ? 1 : 0);
  } else if (t === 'number') {
    const n = value as number;
    if (Number.isInteger(n) && n >= MIN_INT64 && n < MAX_INT64) {
      w.tag(3, 0);
      w.varint64(n);
    } else {
      w.tag(4, 1);
      w.double(n);
    }
  } else if (value instanceof Uint8Array) {
    w.tag(7, 2);
    w.bytes(value);
  } else if (Array.isArray(value)) {
    w.tag(5, 2);
    const array = w.begin();
    for (const item of value as unknown[]) {
      w.tag(1, 2);
      const at = w.begin();
      writeAnyValue(w, item);
      w.end(at);
    }
    w.end(array);
  } else if (t === 'object' && value !== null) {
    w.tag(6, 2);
    const list = w.begin();
    const object = value as Record<string, unknown>;
    for (const key in object) {
      if (!Object.prototype.hasOwnProperty.call(object, key)) continue;
      w.tag(1, 2);
      writeKeyValueBody(w, key, object[key]);
    }
    w.end(list);
  }
  // Anything else (undefined, null, functions) is written as an empty AnyValue, as the OTel writer does.
}

/**
 * A KeyValue's bytes up to its value's length: `key` (field 1) and the `value` tag (field 2), per
 * attribute name. Names repeat in every span (semconv keys, `bulwark.*`): encoded once each, boundedly.
 */
const keyPrefixes = new Map<string, Uint8Array>();

function keyPrefix(key: string): Uint8Array {
  let prefix = keyPrefixes.get(key);
  if (prefix === undefined) {
    const w = new ProtoWriter(key.length * 3 + 8);
    w.tag(1, 2);
    w.string(key);
    w.tag(2, 2);
    prefix = w.buf.subarray(0, w.pos);
    if (keyPrefixes.size < 1024) keyPrefixes.set(key, prefix);
  }
  return prefix;
}

function writeKeyValueBody(w: ProtoWriter, key: string, value: unknown): void {
  const kv = w.begin();
  w.raw(keyPrefix(key));
  const at = w.begin();
  writeAnyValue(w, value);
  w.end(at);
  w.end(kv);
}

function writeAttributes(w: ProtoWriter, attributes: Attributes | undefined, field: number): void {
  if (attributes === undefined) return;
  for (const key in attributes) {
    if (!Object.prototype.hasOwnProperty.call(attributes, key)) continue;
    w.tag(field, 2);
    writeKeyValueBody(w, key, attributes[key] as AttributeValue | undefined);
  }
}

/** A RequestSpan's attributes: its name, value, name, value… list, no object in between. */
function writePairs(w: ProtoWriter, pairs: readonly unknown[]): void {
  for (let i = 0; i < pairs.length; i += 2) {
    w.tag(9, 2);
    writeKeyValueBody(w, pairs[i] as string, pairs[i + 1]);
  }
}

const HAS_IS_REMOTE = 0x100;
const IS_REMOTE = 0x200;

function spanFlags(traceFlags: number, isRemote: boolean | undefined): number {
  return (traceFlags & 0xff) | HAS_IS_REMOTE | (isRemote ? IS_REMOTE : 0);
}

function writeEvent(w: ProtoWriter, event: TimedEvent): void {
  const at = w.begin();
  w.tag(1, 1);
  w.time(event.time);
  w.tag(2, 2);
  w.string(event.name);
  writeAttributes(w, event.attributes, 3);
  w.tag(4, 0);
  w.varint32(event.droppedAttributesCount || 0);
  w.end(at);
}

function writeLink(w: ProtoWriter, link: Link): void {
  const at = w.begin();
  const context = link.context;
  w.tag(1, 2);
  w.hexId(context.traceId);
  w.tag(2, 2);
  w.hexId(context.spanId);
  const state = context.traceState?.serialize();
  if (state) {
    w.tag(3, 2);
    w.string(state);
  }
  writeAttributes(w, link.attributes, 4);
  w.tag(5, 0);
  w.varint32(link.droppedAttributesCount || 0);
  w.tag(6, 5);
  w.fixed32(spanFlags(context.traceFlags, context.isRemote));
  w.end(at);
}

/** One `Span` message, tag included (ScopeSpans.spans, field 2). */
export function writeSpan(w: ProtoWriter, span: ReadableSpan): void {
  w.tag(2, 2);
  const at = w.begin();
  const ctx = span.spanContext();
  w.tag(1, 2);
  w.hexId(ctx.traceId);
  w.tag(2, 2);
  w.hexId(ctx.spanId);
  const state = ctx.traceState?.serialize();
  if (state) {
    w.tag(3, 2);
    w.string(state);
  }
  const parent = span.parentSpanContext;
  if (parent?.spanId) {
    w.tag(4, 2);
    w.hexId(parent.spanId);
  }
  w.tag(5, 2);
  w.string(span.name);
  // SpanKind is offset by one in OTLP (0 is "unspecified").
  const kind = span.kind == null ? 0 : span.kind + 1;
  if (kind !== 0) {
    w.tag(6, 0);
    w.varint32(kind);
  }
  w.tag(7, 1);
  w.time(span.startTime);
  w.tag(8, 1);
  w.time(span.endTime);
  // A RequestSpan's attributes are read where it keeps them, with no object built in between.
  if (span instanceof RequestSpan) writePairs(w, span.pairs);
  else writeAttributes(w, span.attributes, 9);
  w.tag(10, 0);
  w.varint32(span.droppedAttributesCount);
  for (const event of span.events) {
    w.tag(11, 2);
    writeEvent(w, event);
  }
  w.tag(12, 0);
  w.varint32(span.droppedEventsCount);
  for (const link of span.links) {
    w.tag(13, 2);
    writeLink(w, link);
  }
  w.tag(14, 0);
  w.varint32(span.droppedLinksCount);
  w.tag(15, 2);
  const status = w.begin();
  if (span.status.message) {
    w.tag(2, 2);
    w.string(span.status.message);
  }
  w.tag(3, 0);
  w.varint32(span.status.code);
  w.end(status);
  w.tag(16, 5);
  w.fixed32(spanFlags(ctx.traceFlags, parent?.isRemote));
  w.end(at);
}

/** `Resource` (ResourceSpans field 1), tag included. */
function writeResource(w: ProtoWriter, resource: Resource): void {
  w.tag(1, 2);
  const at = w.begin();
  writeAttributes(w, resource.attributes, 1);
  w.tag(2, 0);
  w.varint32(0); // dropped_attributes_count
  w.end(at);
}

/** `InstrumentationScope` (ScopeSpans field 1), tag included. */
function writeScope(
  w: ProtoWriter,
  scope: InstrumentationScope & { attributes?: Attributes; droppedAttributesCount?: number },
): void {
  w.tag(1, 2);
  const at = w.begin();
  w.tag(1, 2);
  w.string(scope.name);
  if (scope.version) {
    w.tag(2, 2);
    w.string(scope.version);
  }
  writeAttributes(w, scope.attributes, 3);
  if (scope.droppedAttributesCount) {
    w.tag(4, 0);
    w.varint32(scope.droppedAttributesCount);
  }
  w.end(at);
}

/** An ExportTraceServiceRequest of one (resource, scope) group: `spans` are its encoded Span fields. */
export function requestOf(resource: Resource, scope: InstrumentationScope, spans: Uint8Array): Buffer {
  const w = new ProtoWriter(spans.length + 1024);
  w.tag(1, 2); // ExportTraceServiceRequest.resource_spans
  const resourceSpans = w.begin();
  writeResource(w, resource);
  w.tag(2, 2); // ResourceSpans.scope_spans
  const scopeSpans = w.begin();
  writeScope(w, scope);
  w.raw(spans);
  if (scope.schemaUrl) {
    w.tag(3, 2);
    w.string(scope.schemaUrl);
  }
  w.end(scopeSpans);
  if (resource.schemaUrl) {
    w.tag(3, 2);
    w.string(resource.schemaUrl);
  }
  w.end(resourceSpans);
  return w.buf.subarray(0, w.pos);
}

/** A sealed batch: one ExportTraceServiceRequest, and how many spans it holds. */
export interface EncodedBatch {
  readonly payload: Uint8Array;
  readonly length: number;
}

export interface BatchExporter {
  export(batch: EncodedBatch, done: (result: ExportResult) => void): void;
  forceFlush?(): Promise<void>;
  shutdown(): Promise<void>;
}

export interface EncodingProcessorOptions {
  maxQueueSize: number;
  maxExportBatchSize: number;
  scheduledDelayMs: number;
  exportTimeoutMs: number;
  /** Each sampled span dropped because `maxQueueSize` spans are waiting. */
  onDrop?: () => void;
}

export class EncodingSpanProcessor implements SpanProcessor {
  private readonly exporter: BatchExporter;
  private readonly maxQueueSize: number;
  private readonly maxBatch: number;
  private readonly delayMs: number;
  private readonly timeoutMs: number;
  private readonly onDrop: (() => void) | undefined;
  /** The open batch's Span fields, one shared buffer (copied out when the batch is sealed). */
  private readonly writer = new ProtoWriter();
  private open = 0;
  private resource: Resource | null = null;
  private scope: InstrumentationScope | null = null;
  private readonly sealed: EncodedBatch[] = [];
  /** Spans encoded and not yet handed to the exporter (open and sealed batches). */
  private queued = 0;
  private exporting = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private droppedSinceWarn = 0;
  /** Resolvers waiting for the exports in flight to settle. */
  private idle: (() => void)[] = [];
  /** Spans dropped because the queue was full, in this processor's life. */
  dropped = 0;

  constructor(exporter: BatchExporter, options: EncodingProcessorOptions) {
    this.exporter = exporter;
    this.maxQueueSize = options.maxQueueSize;
    this.maxBatch = Math.min(options.maxExportBatchSize, options.maxQueueSize);
    this.delayMs = options.scheduledDelayMs;
    this.timeoutMs = options.exportTimeoutMs;
    this.onDrop = options.onDrop;
  }

  onStart(_span: Span): void {}

  onEnd(span: ReadableSpan): void {
    if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    // Stopping or stopped (a request still running when its tracer was retired): counted, not lost unseen.
    if (this.stopped || this.queued >= this.maxQueueSize) {
      this.dropped++;
      this.droppedSinceWarn++;
      this.onDrop?.();
      return;
    }
    if (this.droppedSinceWarn > 0) {
      globalErrorHandler(new Error(`Dropped ${this.droppedSinceWarn} spans because maxQueueSize reached`));
      this.droppedSinceWarn = 0;
    }
    // One request carries one (resource, scope) group: a span of another group starts a new batch.
    if (this.open > 0 && (span.resource !== this.resource || span.instrumentationScope !== this.scope)) this.seal();
    if (this.open === 0) {
      this.resource = span.resource;
      this.scope = span.instrumentationScope;
    }
    writeSpan(this.writer, span);
    this.open++;
    this.queued++;
    if (this.open >= this.maxBatch) {
      this.seal();
      this.pump();
    } else if (this.timer === undefined && this.exporting === 0) {
      this.timer = setTimeout(this.onTimer, this.delayMs);
      this.timer.unref();
    }
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.seal();
    this.pump();
  };

  private seal(): void {
    if (this.open === 0) return;
    // requestOf copies the spans into the request: the writer's buffer is free for the next batch at once.
    const writer = this.writer;
    this.sealed.push({ payload: requestOf(this.resource!, this.scope!, writer.buf.subarray(0, writer.pos)), length: this.open });
    writer.pos = 0;
    this.open = 0;
    this.resource = null;
    this.scope = null;
  }

  /** Starts the next export unless one is in flight (as BatchSpanProcessor, one at a time while serving). */
  private pump(): void {
    if (this.exporting > 0) return;
    const batch = this.sealed.shift();
    if (batch !== undefined) this.send(batch);
  }

  private send(batch: EncodedBatch): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.exporting++;
    let settled = false;
    const settle = (error: Error | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      this.exporting--;
      this.queued -= batch.length;
      if (error !== undefined) globalErrorHandler(error);
      if (this.exporting === 0) {
        const waiting = this.idle;
        this.idle = [];
        for (const resolve of waiting) resolve();
      }
      if (this.sealed.length > 0) this.pump();
      else if (this.open > 0 && this.timer === undefined && !this.stopped) {
        this.timer = setTimeout(this.onTimer, this.delayMs);
        this.timer.unref();
      }
    };
    const deadline = setTimeout(() => settle(new Error('Timeout')), this.timeoutMs);
    try {
      this.exporter.export(batch, (result) =>
        settle(result.code === ExportResultCode.SUCCESS ? undefined : (result.error ?? new Error('span export failed'))),
      );
    } catch (error) {
      settle(error instanceof Error ? error : new Error(String(error)));
    }
  }

  /** Exports everything encoded so far, every batch at once (as BatchSpanProcessor's flush). */
  forceFlush(): Promise<void> {
    this.seal();
    while (this.sealed.length > 0) this.send(this.sealed.shift()!);
    if (this.exporting === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  async shutdown(): Promise<void> {
    if (this.stopped) return;
    // Spans ending from here on are dropped (and counted): the flush below sends everything before them.
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    await this.forceFlush();
    await this.exporter.shutdown();
  }
}

const SERIALIZER: ISerializer<EncodedBatch, IExportTraceServiceResponse> = {
  serializeRequest: (batch) => batch.payload,
  deserializeResponse: (data) => ProtobufTraceSerializer.deserializeResponse(data),
};

const METRICS_HELPER: IExporterMetricsHelper<EncodedBatch> = { name: 'span', countItems: (batch) => batch.length };

export type OtlpHttpOptions = OTLPExporterNodeConfigBase;

/** The OTLP/HTTP protobuf trace exporter's transport, given requests already encoded. */
export function createOtlpBatchExporter(options: OtlpHttpOptions): BatchExporter {
  return new OTLPExporterBase<EncodedBatch>(
    createOtlpHttpExportDelegate(
      convertLegacyHttpOptions(options, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' }),
      SERIALIZER,
      'otlp_http_span_exporter',
      METRICS_HELPER,
      undefined,
    ),
  );
}
