/**
 * Tracing with OpenTelemetry: a server span per request, a client span per upstream
 * attempt, pipeline decisions as span events. The SDK's propagators read and write trace
 * context, its samplers decide under a remote parent, its span processors and exporters
 * (or our encoder, otlp-spans.ts) take the spans; the spans themselves are RequestSpans
 * (request-span.ts), which end as complete ReadableSpans at a fraction of the SDK
 * span's cost.
 *
 * Hot path: nothing here uses the OTel context manager (no AsyncLocalStorage):
 * the parent of every span is passed explicitly, and an OTel Context is built only for a
 * propagator that needs one. A new root trace the ratio turns down, or a W3C caller that
 * did not sample (parent-based), records nothing: ids from a pool of random bytes, the
 * ratio checked on the trace id the way TraceIdRatioBasedSampler does, `traceparent`
 * written directly (~0.4 µs over traces off, bench/tracing-micro.js). With `exporter: none`
 * there is no SDK at all: `startServerSpan` returns a shared no-op handle and only
 * reads an incoming trace context when the request carries one, so the logs of a
 * traced caller still show its trace id (the `span_id` is then the caller's
 * span) while the headers pass upstream untouched.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  propagation,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type SpanContext,
  type TextMapGetter,
  type TextMapPropagator,
  type TextMapSetter,
  TraceFlags,
  type TraceState,
} from '@opentelemetry/api';
import {
  CompositePropagator,
  ExportResultCode,
  type InstrumentationScope,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
  type ExportResult,
} from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { B3InjectEncoding, B3Propagator } from '@opentelemetry/propagator-b3';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
  type ReadableSpan,
  SamplingDecision,
  type Sampler,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_METHOD_ORIGINAL,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_NETWORK_PROTOCOL_VERSION,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
  ATTR_URL_PATH,
  ATTR_URL_SCHEME,
} from '@opentelemetry/semantic-conventions';
import type { DecisionRecord, RequestContext } from '../core/context.js';
import { createOtlpBatchExporter, EncodingSpanProcessor, type OtlpHttpOptions } from './otlp-spans.js';
import { RequestSpan, type SpanHome } from './request-span.js';
import type { PropagatorName, ResolvedTelemetryConfig } from './schema.js';

// The gRPC attributes the issue names (rpc.system, rpc.service, rpc.grpc.status_code) are
// "incubating"/deprecated in semconv 1.45 in favour of rpc.system.name; Jaeger, Tempo and
// Grafana still key on these, so they are what we emit.
const ATTR_RPC_SYSTEM = 'rpc.system';
const ATTR_RPC_SERVICE = 'rpc.service';
const ATTR_RPC_METHOD = 'rpc.method';
const ATTR_RPC_GRPC_STATUS_CODE = 'rpc.grpc.status_code';
const ATTR_ENDUSER_ID = 'enduser.id';

/** Detail keys of a DecisionRecord copied onto span events: ids and reasons only. `key`, `roles`, subjects never. */
const EVENT_DETAIL_KEYS = [
  'provider',
  'kid',
  'policy',
  'rule',
  'mode',
  'reason',
  'profile',
  'store',
  'limit',
  'remaining',
] as const;

export const VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
})();

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']);

/** Semconv: a method outside the known set is reported as `_OTHER` (the original goes in its own attribute). */
export function normalizeMethod(method: string): string {
  return KNOWN_METHODS.has(method) ? method : '_OTHER';
}

/** gRPC statuses a server reports as span errors (semconv rpc spans). */
const GRPC_SERVER_ERRORS = new Set([2, 4, 12, 13, 14, 15]);

const headerGetter: TextMapGetter<IncomingHttpHeaders> = {
  get(carrier, key) {
    return carrier[key];
  },
  keys(carrier) {
    return Object.keys(carrier);
  },
};

/** Appends to the gateway's flat [name, value, …] upstream header list. */
const flatSetter: TextMapSetter<string[]> = {
  set(carrier, key, value) {
    // W3CTraceContextPropagator writes `tracestate` whenever the context has a TraceState, even
    // one that parsed to nothing (a client's over-long or all-invalid header): an empty header is
    // no list at all (W3C: omit it), so nothing is sent rather than `tracestate: `.
    if (value === '') return;
    carrier.push(key, value);
  },
};

/** Every trace-context header we understand; replaced, never forwarded next to ours. */
const TRACE_HEADERS = [
  'traceparent',
  'tracestate',
  'b3',
  'x-b3-traceid',
  'x-b3-spanid',
  'x-b3-parentspanid',
  'x-b3-sampled',
  'x-b3-flags',
];

function hasIncomingContext(headers: IncomingHttpHeaders, baggage: boolean): boolean {
  return (
    headers['traceparent'] !== undefined ||
    headers['b3'] !== undefined ||
    headers['x-b3-traceid'] !== undefined ||
    (baggage && headers['baggage'] !== undefined)
  );
}

/** Incoming propagation: all formats are read; W3C wins over B3 when a request carries both. */
export function createExtractor(withBaggage: boolean): TextMapPropagator {
  const propagators: TextMapPropagator[] = [new B3Propagator(), new W3CTraceContextPropagator()];
  if (withBaggage) propagators.push(new W3CBaggagePropagator());
  return new CompositePropagator({ propagators });
}

/** Outgoing propagation: the configured formats only. */
export function createInjector(names: readonly PropagatorName[]): TextMapPropagator {
  const propagators: TextMapPropagator[] = names.map((name) => {
    switch (name) {
      case 'tracecontext':
        return new W3CTraceContextPropagator();
      case 'baggage':
        return new W3CBaggagePropagator();
      case 'b3':
        return new B3Propagator({ injectEncoding: B3InjectEncoding.SINGLE_HEADER });
      case 'b3multi':
        return new B3Propagator({ injectEncoding: B3InjectEncoding.MULTI_HEADER });
    }
  });
  return new CompositePropagator({ propagators });
}

/** The default masking of identity attributes: a truncated SHA-256, joinable with audit records, not reversible by eye. */
export function hashIdentity(value: string): string {
  return 'sha256:' + createHash('sha256').update(value).digest('hex').slice(0, 16);
}

/** The audit record field an identity value is: its masking rule applies wherever the value leaves. */
export type IdentityField = 'subject' | 'tenant' | 'clientIp';
/** A value as the audit masking rules write its field (`hmac:…`, `[redacted]`, `****1234`); null when no rule covers it. */
export type FieldMask = (field: IdentityField, value: string) => string | null;
export const NO_FIELD_MASK: FieldMask = () => null;

/**
 * A route's template for `http.route`: the configured path pattern (globs are
 * already templates, `{id}`), never the request's path.
 */
export function routeTemplate(match: { exact: string } | { prefix: string } | { glob: string } | undefined): string {
  if (match === undefined) return '/**';
  if ('exact' in match) return match.exact;
  if ('glob' in match) return match.glob;
  return match.prefix === '/' ? '/**' : match.prefix.replace(/\/$/, '') + '/**';
}

export interface RouteLike {
  readonly id: string;
  readonly match: { readonly path?: { exact: string } | { prefix: string } | { glob: string } | undefined };
}

export interface TracingOptions {
  /** The audit masking rules for identity fields; a field without a rule is hashed (`hashIdentity`). */
  mask?: FieldMask;
  /** Routes of the config snapshot, for `http.route` templates. */
  routes?: readonly RouteLike[];
  /** Replaces the configured `otlp`/`console` exporter (tests: an InMemorySpanExporter); `none` stays none. */
  exporter?: SpanExporter;
  /** Export a span as soon as it ends (tests, console). Default: batched for OTLP. */
  simpleProcessor?: boolean;
  /** Called with the outcome of every export batch (metrics, rate-limited logs). */
  onExport?: (spans: number, error: Error | null) => void;
  /** Called for each sampled span dropped because the export queue was full (OTLP exporter). */
  onDrop?: () => void;
}

export interface EndInfo {
  /** The denial or failure code (`jwt.expired`, `upstream.timeout`), null when allowed and served. */
  code?: string | null;
  /** gRPC status from `grpc-status`, when the request was gRPC. */
  grpcStatus?: number | null;
}

/** Per-request tracing handle. The no-op one (traces off) is shared and allocation-free. */
export interface ServerSpan {
  readonly recording: boolean;
  /**
   * Records one stage's decision as a span event, timed when it happened. Optional: `end`
   * records every `ctx.decisions` entry after the ones passed here, so call it for each record
   * in the order they are pushed, or not at all.
   */
  stageEvent(record: DecisionRecord): void;
  /** A client span for one upstream attempt. */
  startClientSpan(upstream: string, endpoint: string, method: string): ClientSpan;
  /** Ends the span: status, route, decision code; `ctx` is read for path, host, protocol, identity. */
  end(ctx: RequestContext, status: number, info?: EndInfo): void;
}

export interface ClientSpan {
  /** Replaces any client-sent trace headers in the flat upstream list with this attempt's context. */
  inject(headers: string[]): void;
  /** `status` 0 when no response arrived; `code` the upstream failure code. */
  end(status: number, code?: string | null): void;
}

const NOOP_CLIENT_SPAN: ClientSpan = Object.freeze({
  inject(): void {},
  end(): void {},
});

const NOOP_SERVER_SPAN: ServerSpan = Object.freeze({
  recording: false,
  stageEvent(): void {},
  startClientSpan(): ClientSpan {
    return NOOP_CLIENT_SPAN;
  },
  end(): void {},
});

export interface Tracing {
  /** False with `exporter: none`: no SDK, no spans. */
  readonly enabled: boolean;
  /** Starts the request's server span and fills `ctx.trace`. Call right after the context exists. */
  startServerSpan(ctx: RequestContext): ServerSpan;
  /** The routes of a new config snapshot (for `http.route`), when nothing else in tracing changed. */
  setRoutes(routes: readonly RouteLike[]): void;
  /** Exports what is buffered. */
  forceFlush(): Promise<void>;
  /** Flushes and stops the exporter; spans ending afterwards are dropped. */
  shutdown(): Promise<void>;
}

/** Shared by every span handle of one tracing setup; only the route templates are swapped (on reload). */
class TracingRuntime {
  readonly home: SpanHome;
  /** The configured sampler: consulted for a span under a remote parent only (the rest is decided here). */
  readonly sampler: Sampler;
  readonly extractor: TextMapPropagator;
  readonly injector: TextMapPropagator;
  readonly extractBaggage: boolean;
  readonly stripHeaders: ReadonlySet<string>;
  readonly identity: boolean;
  readonly mask: FieldMask;
  templates: ReadonlyMap<string, string>;
  readonly ids: FastIds;
  /** The root sampler's threshold on a trace id's folded 32 bits (TraceIdRatioBasedSampler's). */
  readonly upperBound: number;
  /**
   * Outgoing formats are W3C only (`tracecontext`, `baggage`): a span context without baggage
   * is then injected by writing `traceparent` (and `tracestate`) directly. `injectW3C`: whether
   * `traceparent` is among them.
   */
  readonly w3cOnly: boolean;
  readonly injectW3C: boolean;
  readonly parentBased: boolean;
  /** `server.address`/`server.port` of upstream endpoints (a handful, from the config), parsed once each. */
  private readonly origins = new Map<string, { host: string; port: number }>();

  origin(endpoint: string): { host: string; port: number } {
    let address = this.origins.get(endpoint);
    if (address === undefined) {
      address = splitOrigin(endpoint);
      if (this.origins.size >= 1024) this.origins.clear();
      this.origins.set(endpoint, address);
    }
    return address;
  }

  constructor(home: SpanHome, config: ResolvedTelemetryConfig['traces'], options: TracingOptions) {
    this.home = home;
    this.sampler = createSampler(config.sampler);
    this.ids = new FastIds();
    this.upperBound = ratioUpperBound(config.sampler.ratio);
    this.w3cOnly = config.propagators.every((p) => p === 'tracecontext' || p === 'baggage');
    this.injectW3C = config.propagators.includes('tracecontext');
    this.parentBased = config.sampler.parentBased;
    this.extractBaggage = config.propagators.includes('baggage');
    this.extractor = createExtractor(this.extractBaggage);
    this.injector = createInjector(config.propagators);
    // Client-sent baggage is only replaced when we re-inject it; otherwise it passes as it came.
    this.stripHeaders = new Set(this.extractBaggage ? [...TRACE_HEADERS, 'baggage'] : TRACE_HEADERS);
    this.identity = config.identityAttributes;
    this.mask = options.mask ?? NO_FIELD_MASK;
    this.templates = templatesOf(options.routes ?? []);
  }
}

/** TraceIdRatioBasedSampler's threshold: a trace is sampled when its folded id is below it. */
export function ratioUpperBound(ratio: number): number {
  const r = typeof ratio !== 'number' || Number.isNaN(ratio) ? 0 : ratio >= 1 ? 1 : ratio <= 0 ? 0 : ratio;
  return r === 1 ? 0x100000000 : Math.floor(r * 0xffffffff);
}

/** Longest string attribute a span keeps (the SDK truncates past it); a path's worth, not a body's. */
export const MAX_ATTRIBUTE_LENGTH = 2048;

const POOL_BYTES = 8192;

/**
 * Trace and span ids from a pool of crypto-random bytes refilled in bulk (one `randomFillSync`
 * per 8 KiB, not one `Math.random` per 4 bytes).
 */
export class FastIds {
  private readonly pool = Buffer.allocUnsafe(POOL_BYTES);
  private offset = POOL_BYTES;
  /** The 32-bit XOR fold of the last `rootTraceId` (what TraceIdRatioBasedSampler compares). */
  fold = 0;

  /** The pool in hex, encoded once per refill: an id is then a substring (no copy, no native call). */
  private hex = '';

  private take(bytes: number): number {
    let o = this.offset;
    if (o + bytes > POOL_BYTES) {
      randomFillSync(this.pool);
      o = 0;
    }
    this.offset = o + bytes;
    return o;
  }

  /** The hex of pool bytes [o, o + bytes), after any fix-up of those bytes. */
  private hexOf(o: number, bytes: number): string {
    if (o === 0) this.hex = this.pool.toString('hex');
    return this.hex.substring(2 * o, 2 * (o + bytes));
  }

  /** A new trace id; its fold is left in `fold`. */
  rootTraceId(): string {
    const pool = this.pool;
    const o = this.take(16);
    const a = pool.readUInt32BE(o);
    const b = pool.readUInt32BE(o + 4);
    const c = pool.readUInt32BE(o + 8);
    let d = pool.readUInt32BE(o + 12);
    // All zero is invalid (W3C): the SDK's generator sets the last byte then; so do we.
    if ((a | b | c | d) === 0) {
      pool[o + 15] = 1;
      d = 1;
      this.fold = 1;
      // The hex of the pool was encoded before the fix-up (unless this is the pool's first id).
      if (o !== 0) return pool.toString('hex', o, o + 16);
    }
    this.fold = (a ^ b ^ c ^ d) >>> 0;
    return this.hexOf(o, 16);
  }

  generateSpanId(): string {
    const pool = this.pool;
    const o = this.take(8);
    if ((pool.readUInt32BE(o) | pool.readUInt32BE(o + 4)) === 0) {
      pool[o + 7] = 1;
      if (o !== 0) return pool.toString('hex', o, o + 8);
    }
    return this.hexOf(o, 8);
  }
}

const UPPER_HEX = /[A-F]/;

/**
 * B3 multi-header ids pass the propagator in upper case (the OTel API's id check ignores case), but
 * a W3C `traceparent` and our logs need lower case: the next hop would start a new trace, and log
 * lines would not join. The ids, lowered; anything else as it came.
 */
function lowerCaseIds(context: Context): Context {
  const sc = trace.getSpanContext(context);
  if (sc === undefined || (!UPPER_HEX.test(sc.traceId) && !UPPER_HEX.test(sc.spanId))) return context;
  return trace.setSpanContext(context, { ...sc, traceId: sc.traceId.toLowerCase(), spanId: sc.spanId.toLowerCase() });
}

/** Lower-case hex of `length` chars from `start`, not all zeros (a valid W3C id). */
function validHexId(value: string, start: number, length: number): boolean {
  let nonZero = false;
  for (let i = start; i < start + length; i++) {
    const c = value.charCodeAt(i);
    if (c === 48) continue;
    if ((c < 49 || c > 57) && (c < 97 || c > 102)) return false;
    nonZero = true;
  }
  return nonZero;
}

/**
 * The trace id of an incoming context that is exactly one version-00 W3C `traceparent` with
 * flags 00 (no `tracestate`, no B3, no baggage we would read); null for anything else, which
 * then goes through the SDK propagators (they accept what this accepts, and more).
 */
function unsampledW3CParent(headers: IncomingHttpHeaders, baggage: boolean): string | null {
  const tp = headers['traceparent'];
  if (
    typeof tp !== 'string' ||
    tp.length !== 55 ||
    headers['tracestate'] !== undefined ||
    headers['b3'] !== undefined ||
    headers['x-b3-traceid'] !== undefined ||
    (baggage && headers['baggage'] !== undefined) ||
    !tp.startsWith('00-') ||
    tp.charCodeAt(35) !== 45 ||
    tp.charCodeAt(52) !== 45 ||
    !tp.endsWith('00') ||
    !validHexId(tp, 3, 32) ||
    !validHexId(tp, 36, 16)
  )
    return null;
  return tp.substring(3, 35);
}

/** `traceparent` (and `tracestate`) for a span context, as W3CTraceContextPropagator writes them. */
function pushW3C(headers: string[], traceId: string, spanId: string, flags: number, traceState: TraceState | undefined): void {
  headers.push('traceparent', `00-${traceId}-${spanId}-${flags === 0 ? '00' : flags === 1 ? '01' : '0' + flags.toString(16)}`);
  if (traceState !== undefined) {
    const state = traceState.serialize();
    if (state !== '') headers.push('tracestate', state);
  }
}

/** B3's sampling "deny" with no W3C context and no debug flag (which wins, as in B3). */
function b3Denies(headers: IncomingHttpHeaders): boolean {
  if (headers['traceparent'] !== undefined || headers['x-b3-flags'] === '1') return false;
  const single = headers['b3'];
  if (single !== undefined) return single === '0';
  const sampled = headers['x-b3-sampled'];
  return sampled === '0' || sampled === 'false';
}

/** A new trace, not sampled: ids for the logs and the upstream, which is told sampled=0. */
function unsampledRoot(runtime: TracingRuntime, ctx: RequestContext): ServerSpan {
  const traceId = runtime.ids.rootTraceId();
  ctx.trace = { traceId, spanId: runtime.ids.generateSpanId(), sampled: false };
  return new UnsampledServerSpan(runtime, traceId);
}

/**
 * A root request the sampler turned down: no span, no OTel context. It still has ids (for
 * the logs and the upstream) and propagates them with sampled=0.
 */
class UnsampledServerSpan implements ServerSpan {
  readonly recording = false;
  private readonly runtime: TracingRuntime;
  private readonly traceId: string;

  constructor(runtime: TracingRuntime, traceId: string) {
    this.runtime = runtime;
    this.traceId = traceId;
  }

  stageEvent(): void {}

  startClientSpan(): ClientSpan {
    return new UnsampledClientSpan(this.runtime, this.traceId, this.runtime.ids.generateSpanId());
  }

  end(): void {}
}

class UnsampledClientSpan implements ClientSpan {
  private readonly runtime: TracingRuntime;
  private readonly traceId: string;
  private readonly spanId: string;

  constructor(runtime: TracingRuntime, traceId: string, spanId: string) {
    this.runtime = runtime;
    this.traceId = traceId;
    this.spanId = spanId;
  }

  inject(headers: string[]): void {
    const runtime = this.runtime;
    removeHeaders(headers, runtime.stripHeaders);
    if (runtime.w3cOnly) {
      // A root context carries no baggage: `traceparent` is all the configured formats write.
      if (runtime.injectW3C) pushW3C(headers, this.traceId, this.spanId, TraceFlags.NONE, undefined);
      return;
    }
    const span = trace.wrapSpanContext({ traceId: this.traceId, spanId: this.spanId, traceFlags: TraceFlags.NONE });
    runtime.injector.inject(trace.setSpan(ROOT_CONTEXT, span), headers, flatSetter);
  }

  end(): void {}
}

function templatesOf(routes: readonly RouteLike[]): ReadonlyMap<string, string> {
  return new Map(routes.map((r) => [r.id, routeTemplate(r.match.path)]));
}

/** A span's name before (or without) a route: the method, `HTTP` for one outside the known set. */
function methodSpanName(method: string): string {
  return method === '_OTHER' ? 'HTTP' : method;
}

/** What the sampler is given for a span that has no start attributes and no links (it only reads them). */
const NO_ATTRIBUTES: Attributes = Object.freeze({});
const NO_LINKS: Link[] = Object.freeze([]) as unknown as Link[];

/** A recording server span: its name until the route is known, the method attributes, `ctx.trace`. */
function serverSpan(
  runtime: TracingRuntime,
  ctx: RequestContext,
  sc: SpanContext,
  parent: SpanContext | undefined,
  method = normalizeMethod(ctx.method),
): RequestSpan {
  const span = new RequestSpan(runtime.home, methodSpanName(method), SpanKind.SERVER, sc, parent);
  span.setAttribute(ATTR_HTTP_REQUEST_METHOD, method);
  if (method === '_OTHER') span.setAttribute(ATTR_HTTP_REQUEST_METHOD_ORIGINAL, ctx.method);
  ctx.trace = toTraceContext(sc);
  return span;
}

/**
 * The server span under an extracted context (a remote parent, or only baggage or a B3 deny):
 * the configured sampler decides, as the SDK's tracer would ask it; a span it drops is a
 * non-recording one that still carries the ids upstream.
 */
function continuedSpan(runtime: TracingRuntime, ctx: RequestContext, parent: Context): Span {
  const remote = trace.getSpanContext(parent);
  const valid = remote !== undefined && trace.isSpanContextValid(remote);
  const traceId = valid ? remote.traceId : runtime.ids.rootTraceId();
  const method = normalizeMethod(ctx.method);
  const result = runtime.sampler.shouldSample(parent, traceId, methodSpanName(method), SpanKind.SERVER, NO_ATTRIBUTES, NO_LINKS);
  const sc: SpanContext = {
    traceId,
    spanId: runtime.ids.generateSpanId(),
    traceFlags: result.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE,
    traceState: result.traceState ?? (valid ? remote.traceState : undefined),
  };
  if (result.decision === SamplingDecision.NOT_RECORD) {
    ctx.trace = toTraceContext(sc);
    return trace.wrapSpanContext(sc);
  }
  const span = serverSpan(runtime, ctx, sc, valid ? remote : undefined, method);
  if (result.attributes !== undefined) span.setAttributes(result.attributes);
  return span;
}

class OtelServerSpan implements ServerSpan {
  readonly recording: boolean;
  private readonly runtime: TracingRuntime;
  private readonly span: Span;
  /** The extracted context the span continues (ROOT_CONTEXT for a new trace): its baggage goes upstream. */
  private readonly parent: Context;
  private emitted: number;
  private readonly grpc: boolean;
  /** The context carries no baggage and the formats are W3C only: inject writes the headers itself. */
  private readonly direct: boolean;

  constructor(runtime: TracingRuntime, span: Span, parent: Context, grpc: boolean, direct: boolean) {
    this.runtime = runtime;
    this.span = span;
    this.parent = parent;
    this.recording = span.isRecording();
    this.emitted = 0;
    this.grpc = grpc;
    this.direct = direct;
  }

  stageEvent(record: DecisionRecord): void {
    // Counted whether recording or not: end() emits only the records after the last one seen here.
    this.emitted++;
    if (this.recording) this.span.addEvent('bulwark.decision', decisionAttributes(record));
  }

  startClientSpan(upstream: string, endpoint: string, method: string): ClientSpan {
    const runtime = this.runtime;
    const parent = this.span.spanContext();
    const sc: SpanContext = {
      traceId: parent.traceId,
      spanId: runtime.ids.generateSpanId(),
      traceFlags: parent.traceFlags,
      traceState: parent.traceState,
    };
    // A child of a sampled local span is sampled under every sampler we build (parent-based, or the
    // ratio on the same trace id); of an unsampled one, not: a fresh span id on the parent's context
    // then is all it takes, and it still propagates (sampled=0).
    if (!this.recording || (parent.traceFlags & TraceFlags.SAMPLED) === 0)
      return new OtelClientSpan(runtime, trace.wrapSpanContext(sc), this.parent, this.direct);
    const normalized = normalizeMethod(method);
    const span = new RequestSpan(runtime.home, methodSpanName(normalized), SpanKind.CLIENT, sc, parent);
    const address = runtime.origin(endpoint);
    span.setAttribute(ATTR_HTTP_REQUEST_METHOD, normalized);
    span.setAttribute(ATTR_SERVER_ADDRESS, address.host);
    span.setAttribute(ATTR_SERVER_PORT, address.port);
    span.setAttribute('bulwark.upstream', upstream);
    return new OtelClientSpan(runtime, span, this.parent, this.direct);
  }

  end(ctx: RequestContext, status: number, info?: EndInfo): void {
    const span = this.span;
    if (!this.recording) {
      span.end();
      return;
    }
    const decisions = ctx.decisions;
    for (let i = this.emitted; i < decisions.length; i++) span.addEvent('bulwark.decision', decisionAttributes(decisions[i]!));
    this.emitted = decisions.length;
    const runtime = this.runtime;
    const route = ctx.route;
    const template = route === null ? undefined : runtime.templates.get(route.id);
    const method = normalizeMethod(ctx.method);
    if (status > 0) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
    if (ctx.path !== '') span.setAttribute(ATTR_URL_PATH, ctx.path);
    if (ctx.host !== '') span.setAttribute(ATTR_SERVER_ADDRESS, ctx.host);
    span.setAttribute(ATTR_URL_SCHEME, ctx.secure ? 'https' : 'http');
    span.setAttribute(ATTR_NETWORK_PROTOCOL_VERSION, protocolVersion(ctx.protocol));
    if (route !== null) {
      span.setAttribute('bulwark.route.id', route.id);
      if (template !== undefined) span.setAttribute(ATTR_HTTP_ROUTE, template);
    }
    const code = info?.code ?? null;
    if (code !== null) span.setAttribute('bulwark.decision.code', code);
    if (runtime.identity && ctx.identity !== null) {
      // Never in clear: the audit rule for the field when there is one (the same pseudonym joins the two), else a hash.
      const { subject, tenant } = ctx.identity;
      span.setAttribute(ATTR_ENDUSER_ID, runtime.mask('subject', subject) ?? hashIdentity(subject));
      if (tenant !== undefined) span.setAttribute('bulwark.tenant', runtime.mask('tenant', tenant) ?? hashIdentity(tenant));
    }
    let failed = status >= 500;
    if (this.grpc) {
      const rpc = parseGrpcPath(ctx.path);
      span.setAttribute(ATTR_RPC_SYSTEM, 'grpc');
      if (rpc !== null) {
        span.setAttribute(ATTR_RPC_SERVICE, rpc.service);
        span.setAttribute(ATTR_RPC_METHOD, rpc.method);
        // The name is not covered by the SDK's attribute limit: a kilobytes-long path keeps the generic one.
        if (rpc.service.length + rpc.method.length < MAX_ATTRIBUTE_LENGTH) span.updateName(`${rpc.service}/${rpc.method}`);
      }
      const grpcStatus = info?.grpcStatus ?? null;
      if (grpcStatus !== null) {
        span.setAttribute(ATTR_RPC_GRPC_STATUS_CODE, grpcStatus);
        failed = GRPC_SERVER_ERRORS.has(grpcStatus);
      }
    } else if (template !== undefined) {
      span.updateName(method === '_OTHER' ? `HTTP ${template}` : `${method} ${template}`);
    }
    if (failed) {
      // Semconv: 4xx is the client's problem, not a server span error.
      span.setAttribute(ATTR_ERROR_TYPE, code ?? String(status));
      span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end();
  }
}

class OtelClientSpan implements ClientSpan {
  private readonly runtime: TracingRuntime;
  private readonly span: Span;
  /** The context the server span continues: the OTel context a propagator reads is built from it only when one needs it. */
  private readonly parent: Context;
  private readonly direct: boolean;

  constructor(runtime: TracingRuntime, span: Span, parent: Context, direct: boolean) {
    this.runtime = runtime;
    this.span = span;
    this.parent = parent;
    this.direct = direct;
  }

  inject(headers: string[]): void {
    const runtime = this.runtime;
    removeHeaders(headers, runtime.stripHeaders);
    if (this.direct) {
      if (runtime.injectW3C) {
        const sc = this.span.spanContext();
        pushW3C(headers, sc.traceId, sc.spanId, sc.traceFlags, sc.traceState);
      }
      return;
    }
    runtime.injector.inject(trace.setSpan(this.parent, this.span), headers, flatSetter);
  }

  end(status: number, code: string | null = null): void {
    const span = this.span;
    if (span.isRecording()) {
      if (status > 0) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
      if (code !== null || status >= 400) {
        // Semconv client spans: any 4xx/5xx or transport failure is an error.
        span.setAttribute(ATTR_ERROR_TYPE, code ?? String(status));
        span.setStatus({ code: SpanStatusCode.ERROR });
      }
    }
    span.end();
  }
}

/** Drops every pair whose (lower-case) name is in `names`, in place. */
export function removeHeaders(headers: string[], names: ReadonlySet<string>): void {
  let w = 0;
  for (let r = 0; r < headers.length; r += 2) {
    const name = headers[r]!;
    // The gateway's list is lower-case already; the second lookup covers other callers.
    if (names.has(name) || names.has(name.toLowerCase())) continue;
    if (w !== r) {
      headers[w] = name;
      headers[w + 1] = headers[r + 1]!;
    }
    w += 2;
  }
  if (w !== headers.length) headers.length = w;
}

function decisionAttributes(record: DecisionRecord): Attributes {
  const attributes: Attributes = {
    'bulwark.stage': record.stage,
    'bulwark.decision.outcome': record.outcome,
    'bulwark.decision.code': record.code,
  };
  const detail = record.detail;
  if (detail !== undefined) {
    for (const key of EVENT_DETAIL_KEYS) {
      const value = detail[key];
      if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean')
        attributes[`bulwark.decision.${key}`] = value;
    }
  }
  return attributes;
}

function protocolVersion(protocol: RequestContext['protocol']): string {
  return protocol === 'http/1.1' ? '1.1' : protocol === 'http/1.0' ? '1.0' : '2';
}

export function isGrpcRequest(headers: IncomingHttpHeaders): boolean {
  const type = headers['content-type'];
  return type !== undefined && type.startsWith('application/grpc');
}

/** `/pkg.Service/Method` → its parts; null for anything else. */
export function parseGrpcPath(path: string): { service: string; method: string } | null {
  const slash = path.indexOf('/', 1);
  if (path.charCodeAt(0) !== 47 || slash < 2 || slash === path.length - 1 || path.indexOf('/', slash + 1) !== -1) return null;
  return { service: path.slice(1, slash), method: path.slice(slash + 1) };
}

function splitOrigin(origin: string): { host: string; port: number } {
  try {
    const url = new URL(origin);
    return { host: url.hostname, port: url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port) };
  } catch {
    return { host: origin, port: 0 };
  }
}

function toTraceContext(sc: SpanContext): NonNullable<RequestContext['trace']> {
  const state = sc.traceState?.serialize();
  return state === undefined || state === ''
    ? { traceId: sc.traceId, spanId: sc.spanId, sampled: (sc.traceFlags & 1) === 1 }
    : { traceId: sc.traceId, spanId: sc.spanId, sampled: (sc.traceFlags & 1) === 1, traceState: state };
}

/** How long past the export timeout a batch's outcome may still arrive before it is reported as failed. */
const EXPORT_GRACE_MS = 1000;

/** The error reported for a batch whose export never answered; `code` is stable, the message is not. */
export class ExportTimeoutError extends Error {
  readonly code = 'telemetry.export_timeout';
  constructor() {
    super('trace export got no outcome within the export timeout');
  }
}

/** What both exporters share: span arrays (SDK exporters) or encoded batches (otlp-spans.ts). */
interface Exporting<T extends { length: number }> {
  export(items: T, resultCallback: (result: ExportResult) => void): void;
  shutdown(): Promise<void>;
  forceFlush?(): Promise<void>;
}

/** Reports every export batch's outcome before passing it on. */
class ObservedExporter<T extends { length: number }> implements Exporting<T> {
  private readonly inner: Exporting<T>;
  private readonly onExport: (spans: number, error: Error | null) => void;
  private readonly deadlineMs: number;
  constructor(inner: Exporting<T>, onExport: (spans: number, error: Error | null) => void, timeoutMs: number) {
    this.inner = inner;
    this.onExport = onExport;
    this.deadlineMs = timeoutMs + EXPORT_GRACE_MS;
  }
  export(spans: T, resultCallback: (result: ExportResult) => void): void {
    // A collector that accepts the request and then trickles its answer never lets the socket
    // idle out, so the OTLP exporter never calls back (the batch processor just gives up waiting):
    // without this deadline such an outage would be neither counted nor logged. One timer per batch.
    let reported = false;
    const count = spans.length; // the timer keeps the count, not the spans
    const timer = setTimeout(() => {
      reported = true;
      this.onExport(count, new ExportTimeoutError());
    }, this.deadlineMs);
    timer.unref();
    this.inner.export(spans, (result) => {
      clearTimeout(timer);
      if (!reported) {
        reported = true;
        this.onExport(count, result.code === ExportResultCode.SUCCESS ? null : (result.error ?? new Error('span export failed')));
      }
      resultCallback(result);
    });
  }
  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }
  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

export function createSampler(config: { ratio: number; parentBased: boolean }): Sampler {
  const root = new TraceIdRatioBasedSampler(config.ratio);
  return config.parentBased ? new ParentBasedSampler({ root }) : root;
}

/** Builds the tracing half of telemetry from the resolved `telemetry` config. */
export function createTracing(config: ResolvedTelemetryConfig, options: TracingOptions = {}): Tracing {
  const traces = config.traces;
  if (traces.exporter === 'none') return new PassiveTracing();
  // Our own agent, destroyed on shutdown: a send in flight to a collector that never finishes its
  // answer would otherwise keep the process alive after it has stopped (bin/ waits for the loop).
  let agent: HttpAgent | undefined;
  const otlp: OtlpHttpOptions = {
    httpAgentOptions: (protocol: string) =>
      (agent = protocol === 'https:' ? new HttpsAgent({ keepAlive: true }) : new HttpAgent({ keepAlive: true })),
    url: traces.endpoint,
    headers: { ...traces.headers },
    timeoutMillis: traces.timeoutMs,
    // The exporter types this as an enum whose values are these very strings.
    compression: traces.compression as OtlpHttpOptions['compression'],
  };
  const observe = <T extends { length: number }>(inner: Exporting<T>): Exporting<T> =>
    options.onExport === undefined ? inner : new ObservedExporter(inner, options.onExport, traces.timeoutMs);
  let processor: SpanProcessor;
  if (options.exporter === undefined && traces.exporter === 'otlp' && options.simpleProcessor !== true) {
    // The gateway's own path: spans encoded as they end (src/telemetry/otlp-spans.ts).
    processor = new EncodingSpanProcessor(observe(createOtlpBatchExporter(otlp)), {
      maxQueueSize: traces.batch.maxQueueSize,
      maxExportBatchSize: traces.batch.maxExportBatchSize,
      scheduledDelayMs: traces.batch.scheduledDelayMs,
      exportTimeoutMs: traces.timeoutMs,
      onDrop: options.onDrop,
    });
  } else {
    const exporter = observe<ReadableSpan[]>(
      options.exporter ?? (traces.exporter === 'console' ? new ConsoleSpanExporter() : new OTLPTraceExporter(otlp)),
    ) as SpanExporter;
    // Console output is for a developer watching: show each span as it ends.
    processor =
      options.simpleProcessor === true || traces.exporter === 'console'
        ? new SimpleSpanProcessor(exporter)
        : new BatchSpanProcessor(exporter, {
            maxQueueSize: traces.batch.maxQueueSize,
            maxExportBatchSize: traces.batch.maxExportBatchSize,
            scheduledDelayMillis: traces.batch.scheduledDelayMs,
            exportTimeoutMillis: traces.timeoutMs,
          });
  }
  const home: SpanHome = {
    resource: resourceFromAttributes({
      ...config.resourceAttributes,
      [ATTR_SERVICE_NAME]: config.serviceName,
      [ATTR_SERVICE_VERSION]: VERSION,
    }),
    scope: SCOPE,
    processor,
    // url.path, server.address, http.request.method_original come from the client (an HTTP/2
    // :method or a path can be kilobytes): cap every span's strings so the queue's memory is too.
    valueLimit: MAX_ATTRIBUTE_LENGTH,
  };
  return new SdkTracing(
    processor,
    new TracingRuntime(home, traces, options),
    // A flush (each batch times out after timeoutMs) then the exporter's stop (waits for its sends).
    2 * traces.timeoutMs + EXPORT_GRACE_MS,
    () => agent?.destroy(),
  );
}

/** The instrumentation scope of every span: this package. */
const SCOPE: InstrumentationScope = Object.freeze({ name: 'bulwark', version: VERSION });

class SdkTracing implements Tracing {
  readonly enabled = true;
  private readonly processor: SpanProcessor;
  private readonly runtime: TracingRuntime;

  /** The longest a flush or shutdown may take; past it the caller goes on and the spans are lost. */
  private readonly stopMs: number;

  /** Releases what the exporter holds open (its sockets), once stopped. */
  private readonly release: () => void;

  constructor(processor: SpanProcessor, runtime: TracingRuntime, stopMs: number, release: () => void) {
    this.processor = processor;
    this.runtime = runtime;
    this.stopMs = stopMs;
    this.release = release;
  }

  startServerSpan(ctx: RequestContext): ServerSpan {
    const runtime = this.runtime;
    const headers = ctx.headers;
    if (hasIncomingContext(headers, runtime.extractBaggage)) {
      // The common traced caller that did not sample (a W3C `traceparent` with flags 00 and
      // nothing else): a parent-based sampler follows it, so no span either.
      const traceId = runtime.parentBased ? unsampledW3CParent(headers, runtime.extractBaggage) : null;
      if (traceId !== null) {
        ctx.trace = { traceId, spanId: runtime.ids.generateSpanId(), sampled: false };
        return new UnsampledServerSpan(runtime, traceId);
      }
      let parent = lowerCaseIds(runtime.extractor.extract(ROOT_CONTEXT, headers, headerGetter));
      // B3's "deny" without ids (`b3: 0`; `X-B3-Sampled: 0` next to baggage): no trace to continue, but
      // a decision the parent-based sampler follows. A new trace, as an unsampled parent in the
      // extracted context, so its baggage still goes upstream.
      if (runtime.parentBased && b3Denies(headers) && trace.getSpanContext(parent) === undefined)
        parent = trace.setSpanContext(parent, {
          traceId: runtime.ids.rootTraceId(),
          spanId: runtime.ids.generateSpanId(),
          traceFlags: TraceFlags.NONE,
          isRemote: true,
        });
      const direct = runtime.w3cOnly && propagation.getBaggage(parent) === undefined;
      return new OtelServerSpan(runtime, continuedSpan(runtime, ctx, parent), parent, isGrpcRequest(headers), direct);
    }
    // A lone `X-B3-Sampled: 0`: the same decision, nothing else to carry.
    if (runtime.parentBased && headers['x-b3-sampled'] !== undefined && b3Denies(headers)) return unsampledRoot(runtime, ctx);
    // A new root trace: the ratio decides on the trace id, as the SDK sampler would (parent-based
    // or not, a root goes to the ratio). Turned down, the request records nothing.
    const ids = runtime.ids;
    const traceId = ids.rootTraceId();
    if (ids.fold >= runtime.upperBound) {
      ctx.trace = { traceId, spanId: ids.generateSpanId(), sampled: false };
      return new UnsampledServerSpan(runtime, traceId);
    }
    const span = serverSpan(runtime, ctx, { traceId, spanId: ids.generateSpanId(), traceFlags: TraceFlags.SAMPLED }, undefined);
    return new OtelServerSpan(runtime, span, ROOT_CONTEXT, isGrpcRequest(headers), runtime.w3cOnly);
  }

  setRoutes(routes: readonly RouteLike[]): void {
    // Spans in flight keep reading the runtime; swapping the map is atomic for them.
    this.runtime.templates = templatesOf(routes);
  }

  // Export failures are reported through `onExport`; flushing and stopping never throw at the caller.
  // Bounded too: the OTLP exporter's stop waits for every send in flight, and a collector that
  // trickles its answer keeps a send open for ever (the socket never idles out); `release` then
  // closes those sockets, which otherwise kept a SIGTERM'd gateway from ever exiting.
  forceFlush(): Promise<void> {
    return within(this.processor.forceFlush(), this.stopMs);
  }

  shutdown(): Promise<void> {
    return within(this.processor.shutdown(), this.stopMs).then(this.release);
  }
}

/** Settles when `work` does or after `ms`, whichever is first; never rejects. */
function within(work: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return Promise.race([work.catch(() => {}), deadline]).finally(() => clearTimeout(timer));
}

/** `exporter: none`: no spans; the caller's trace id is still read for the logs. */
class PassiveTracing implements Tracing {
  readonly enabled = false;
  private readonly extractor: TextMapPropagator = createExtractor(false);

  startServerSpan(ctx: RequestContext): ServerSpan {
    const headers = ctx.headers;
    if (hasIncomingContext(headers, false)) {
      const sc = trace.getSpanContext(lowerCaseIds(this.extractor.extract(ROOT_CONTEXT, headers, headerGetter)));
      if (sc !== undefined) ctx.trace = toTraceContext(sc);
    }
    return NOOP_SERVER_SPAN;
  }

  setRoutes(): void {}

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

export { NOOP_SERVER_SPAN, NOOP_CLIENT_SPAN };
