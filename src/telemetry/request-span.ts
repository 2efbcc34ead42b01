/**
 * The gateway's two span kinds (a request's server span, an upstream attempt's client span),
 * recorded without the SDK's general-purpose `Span`.
 *
 * The SDK's tracer does, for every span, work none of our spans need: it sanitizes the start
 * attributes twice for a sampler that never reads them, feeds its own `otel.sdk.span.*` metrics
 * (two attribute objects and a closure per span, even with no meter), builds an OTel `Context`
 * (a `Map` copy) per parent, keeps every time as an `[s, ns]` tuple and checks each attribute
 * for shapes only user code produces. At full sampling that was a third of tracing's cost per
 * request. A `RequestSpan` keeps what the span is (names, ids, attributes as a flat list, events,
 * start and end as numbers) and is, once ended, a complete `ReadableSpan`: any SDK span processor
 * or exporter (the batch processor, the in-memory exporter of the tests, our OTLP encoder) takes
 * it as it takes an SDK span. test/telemetry/request-span.test.ts drives both with the same calls
 * and compares what they export.
 *
 * What the SDK's span limits do is kept: string values past `MAX_ATTRIBUTE_LENGTH` are cut, at
 * most 128 attributes per span and per event and 128 events (the oldest go), each drop counted.
 */
import {
  SpanStatusCode,
  type SpanKind,
  type Attributes,
  type AttributeValue,
  type Exception,
  type HrTime,
  type Link,
  type Span,
  type SpanContext,
  type SpanStatus,
  type TimeInput,
} from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, SpanProcessor, TimedEvent } from '@opentelemetry/sdk-trace-base';

/** The SDK's default count limits (attributes per span and per event, events per span). */
const COUNT_LIMIT = 128;

const UNSET: SpanStatus = Object.freeze({ code: SpanStatusCode.UNSET });
const NO_LINKS: Link[] = Object.freeze([]) as unknown as Link[];

/** What every span of one tracing setup shares. */
export interface SpanHome {
  readonly resource: Resource;
  readonly scope: InstrumentationScope;
  readonly processor: SpanProcessor;
  /** Longest string value kept. */
  readonly valueLimit: number;
}

/** `nanos` after `start`, carried into the seconds. */
function hrAfter(start: HrTime, nanos: number): HrTime {
  const total = start[1] + nanos;
  const carry = Math.floor(total / 1e9);
  return [start[0] + carry, total - carry * 1e9];
}

export class RequestSpan implements Span, ReadableSpan {
  name: string;
  readonly kind: SpanKind;
  readonly parentSpanContext: SpanContext | undefined;
  readonly resource: Resource;
  readonly instrumentationScope: InstrumentationScope;
  status: SpanStatus = UNSET;
  readonly links: Link[] = NO_LINKS;
  readonly events: TimedEvent[] = [];
  droppedAttributesCount = 0;
  droppedEventsCount = 0;
  readonly droppedLinksCount = 0;
  ended = false;
  /** Attributes as set: name, value, name, value… (names unique). */
  readonly pairs: (string | AttributeValue)[] = [];
  /** The SDK's start (`Date.now()`); `perfStart` times events and the end from it. */
  readonly startTime: HrTime;
  /** [0, 0] while running, as the SDK's span. */
  endTime: HrTime = [0, 0];
  /** Nanoseconds from start to end; -1 while running. */
  private durationNanos = -1;
  private readonly perfStart: number;
  private readonly context: SpanContext;
  private readonly home: SpanHome;
  private attributeObject: Attributes | null = null;

  constructor(home: SpanHome, name: string, kind: SpanKind, context: SpanContext, parent: SpanContext | undefined) {
    this.home = home;
    this.resource = home.resource;
    this.instrumentationScope = home.scope;
    this.name = name;
    this.kind = kind;
    this.context = context;
    this.parentSpanContext = parent;
    const now = Date.now();
    this.perfStart = performance.now();
    const seconds = Math.floor(now / 1000);
    this.startTime = [seconds, (now - seconds * 1000) * 1e6];
  }

  spanContext(): SpanContext {
    return this.context;
  }

  isRecording(): boolean {
    return !this.ended;
  }

  /** Values are the gateway's own (strings, numbers, booleans, arrays of them): no per-value shape check as the SDK's. */
  setAttribute(key: string, value: AttributeValue): this {
    if (this.ended || value == null || key.length === 0) return this;
    const limit = this.home.valueLimit;
    if (typeof value === 'string') {
      if (value.length > limit) value = value.slice(0, limit);
    } else if (Array.isArray(value)) {
      value = (value as unknown[]).map((v) =>
        typeof v === 'string' && v.length > limit ? v.slice(0, limit) : v,
      ) as AttributeValue;
    }
    const pairs = this.pairs;
    for (let i = 0; i < pairs.length; i += 2) {
      if (pairs[i] === key) {
        pairs[i + 1] = value;
        return this;
      }
    }
    if (pairs.length >= 2 * COUNT_LIMIT) {
      this.droppedAttributesCount++;
      return this;
    }
    pairs.push(key, value);
    return this;
  }

  setAttributes(attributes: Attributes): this {
    for (const key in attributes) {
      if (Object.prototype.hasOwnProperty.call(attributes, key)) this.setAttribute(key, attributes[key] as AttributeValue);
    }
    return this;
  }

  /**
   * An event timed now. `attributes` must be the caller's own fresh object: it is kept as the
   * event's (values cut to the limit in place), not copied. An explicit time is not taken: every
   * event of ours happens as it is recorded.
   */
  addEvent(name: string, attributes?: Attributes | TimeInput): this {
    if (this.ended) return this;
    let kept: Attributes = {};
    let dropped = 0;
    if (
      attributes !== undefined &&
      typeof attributes === 'object' &&
      !Array.isArray(attributes) &&
      !(attributes instanceof Date)
    ) {
      kept = attributes;
      const limit = this.home.valueLimit;
      let count = 0;
      for (const key in kept) {
        if (!Object.prototype.hasOwnProperty.call(kept, key)) continue;
        const value = kept[key];
        if (++count > COUNT_LIMIT || value == null) {
          delete kept[key];
          if (value != null) dropped++;
        } else if (typeof value === 'string' && value.length > limit) kept[key] = value.slice(0, limit);
      }
    }
    const events = this.events;
    if (events.length >= COUNT_LIMIT) {
      events.shift();
      this.droppedEventsCount++;
    }
    events.push({ name, attributes: kept, time: hrAfter(this.startTime, this.elapsedNanos()), droppedAttributesCount: dropped });
    return this;
  }

  /** Our spans have no links (the API's methods, for the `Span` type; they record nothing). */
  addLink(): this {
    return this;
  }

  addLinks(): this {
    return this;
  }

  /** As the SDK's: UNSET is no change, OK is final, only an ERROR keeps a (string) message. */
  setStatus(status: SpanStatus): this {
    if (this.ended || status.code === SpanStatusCode.UNSET || this.status.code === SpanStatusCode.OK) return this;
    this.status =
      status.code === SpanStatusCode.ERROR && typeof status.message === 'string'
        ? { code: status.code, message: status.message }
        : { code: status.code };
    return this;
  }

  updateName(name: string): this {
    if (!this.ended) this.name = name;
    return this;
  }

  /** Failures are recorded as `error.type` and the status, per the HTTP conventions; nothing else calls this. */
  recordException(_exception: Exception): void {}

  end(): void {
    if (this.ended) return;
    this.durationNanos = this.elapsedNanos();
    this.endTime = hrAfter(this.startTime, this.durationNanos);
    this.ended = true;
    this.home.processor.onEnd(this);
  }

  private elapsedNanos(): number {
    return Math.max(0, Math.round((performance.now() - this.perfStart) * 1e6));
  }

  get duration(): HrTime {
    return hrAfter([0, 0], Math.max(this.durationNanos, 0));
  }

  get attributes(): Attributes {
    let object = this.attributeObject;
    if (object === null || !this.ended) {
      object = {};
      const pairs = this.pairs;
      for (let i = 0; i < pairs.length; i += 2) object[pairs[i] as string] = pairs[i + 1] as AttributeValue;
      if (this.ended) this.attributeObject = object;
    }
    return object;
  }
}
