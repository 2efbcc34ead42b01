/**
 * One object that holds a process's telemetry (tracing, metrics, access log,
 * profiler, cluster plumbing) and the three per-request calls the gateway makes:
 *
 *   const span = telemetry.startRequest(ctx);                  // after contextFor(); fills ctx.trace
 *   const attempt = telemetry.startUpstream(span, name, origin, method);
 *   attempt.inject(headers); … attempt.end(status, code);      // per upstream attempt
 *   telemetry.finishRequest(ctx, span, status, bytes, info);   // once, when the response is over
 *
 * Roles: `single` (one process serves and administers), `worker` (serves; answers
 * the primary over IPC), `primary` (no traffic; owns the admin listener, so its
 * `/metrics` merges the workers' and its profiles run in a worker).
 */
import cluster from 'node:cluster';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import type { RequestContext } from '../core/context.js';
import type { Logger } from './logger.js';
import { ClusterProfileSource, LocalProfileSource, type AdminTelemetryOptions, type ProfileSource } from './admin.js';
import { answerPrimary, clusterMetrics, clusterRegistry, WorkerRequests } from './cluster.js';
import { AccessLogger, applyLogLevel, RequestLogger } from './logging.js';
import { BulwarkMetrics, type MetricSources } from './metrics.js';
import { startOtlpMetrics, type OtlpMetricsPusher } from './otlp-metrics.js';
import { LocalProfiler } from './profiling.js';
import { resolveTelemetryConfig, type ResolvedTelemetryConfig, type TelemetryConfig } from './schema.js';
import {
  createTracing,
  hashIdentity,
  NO_FIELD_MASK,
  type ClientSpan,
  type FieldMask,
  type RouteLike,
  type ServerSpan,
  type Tracing,
} from './tracing.js';
import { compileMasking, Masker } from '../audit/mask.js';
import type { MaskingConfig } from '../audit/schema.js';

export type TelemetryRole = 'single' | 'primary' | 'worker';

/** The slice of the whole config telemetry reads; `BulwarkConfig` fits once it has `telemetry`. */
export interface TelemetryInput {
  telemetry?: TelemetryConfig | undefined;
  routes?: readonly RouteLike[] | undefined;
  /** Its masking rules for `subject`, `tenant` and `clientIp` also apply to spans and the access log. */
  audit?: { masking?: MaskingConfig | undefined } | undefined;
}

export interface TelemetryOptions {
  logger: Logger;
  /** Default: `worker` in a cluster worker, else `single`. A cluster primary must say `primary`. */
  role?: TelemetryRole;
  /** Masks identity values in spans and the access log. Default: the input's audit masking rules (hashed where none). */
  mask?: FieldMask;
  /** Tests: export spans here instead of the configured exporter. */
  spanExporter?: SpanExporter;
  /** Tests: export each span when it ends instead of batching. */
  simpleSpanProcessor?: boolean;
  /** How long the primary waits for each worker's metrics per scrape. Default 2000 ms. */
  clusterTimeoutMs?: number;
}

export interface FinishInfo {
  /** The reason code when Bulwark refused or failed the request (`jwt.expired`, `upstream.timeout`); null when served. */
  code?: string | null;
  /** The upstream pool, when forwarded. */
  upstream?: string | null;
  /** gRPC status (from `grpc-status`), for gRPC requests. */
  grpcStatus?: number | null;
}

/** One upstream attempt: a client span plus the upstream metrics. */
export class UpstreamAttempt {
  private readonly metrics: BulwarkMetrics;
  private readonly span: ClientSpan;
  private readonly upstream: string;
  private readonly endpoint: string;
  private readonly startedAt: bigint;
  private ended: boolean;

  constructor(metrics: BulwarkMetrics, span: ClientSpan, upstream: string, endpoint: string) {
    this.metrics = metrics;
    this.span = span;
    this.upstream = upstream;
    this.endpoint = endpoint;
    this.startedAt = process.hrtime.bigint();
    this.ended = false;
  }

  /** Puts this attempt's trace context into the flat upstream header list (no-op with traces off). */
  inject(headers: string[]): void {
    this.span.inject(headers);
  }

  /** `status` 0 when no response arrived; `code` the failure's reason code. Idempotent. */
  end(status: number, code: string | null = null): void {
    if (this.ended) return;
    this.ended = true;
    const seconds = Number(process.hrtime.bigint() - this.startedAt) / 1e9;
    this.metrics.recordUpstream(this.upstream, this.endpoint, status, seconds, code);
    this.span.end(status, code);
  }
}

export class Telemetry {
  readonly role: TelemetryRole;
  readonly metrics: BulwarkMetrics;
  private readonly logger: Logger;
  private readonly options: TelemetryOptions;
  private mask: FieldMask;
  private masking: string;
  private readonly profiler = new LocalProfiler();
  private readonly requests: WorkerRequests | null;
  private readonly profiles: ProfileSource;
  private readonly unsubscribe: (() => void) | null;
  private config: ResolvedTelemetryConfig;
  private tracingImpl: Tracing;
  private access: AccessLogger;
  private adminOptions: AdminTelemetryOptions;
  private otlp: OtlpMetricsPusher | null;
  private readonly retiring = new Set<Tracing>();
  private lastExportWarning = 0;

  constructor(input: TelemetryInput, options: TelemetryOptions) {
    this.options = options;
    this.logger = options.logger;
    this.role = options.role ?? (cluster.isWorker ? 'worker' : 'single');
    this.masking = JSON.stringify(input.audit?.masking ?? null);
    this.mask = options.mask ?? fieldMaskOf(input.audit?.masking);
    this.config = resolveTelemetryConfig(input.telemetry);
    applyLogLevel(this.logger, this.config.logs.level);
    const worker = this.role === 'worker' && cluster.worker !== undefined ? String(cluster.worker.id) : '0';
    this.metrics = new BulwarkMetrics(this.config.metrics, { worker });
    this.tracingImpl = this.buildTracing(input);
    this.access = new AccessLogger(this.logger, this.config.logs.accessLog, this.mask);
    this.requests = this.role === 'primary' ? new WorkerRequests() : null;
    // Kept across reloads: it holds the "one capture at a time" lock of the instance.
    this.profiles =
      this.requests === null ? new LocalProfileSource(this.profiler) : new ClusterProfileSource(this.profiler, this.requests);
    this.unsubscribe =
      this.role === 'worker'
        ? answerPrimary({
            metrics: () => this.metrics.registry.getMetricsAsJSON(),
            cpuProfileFile: (seconds) => this.profiler.cpuProfileFile(seconds),
            heapSnapshotFile: () => this.profiler.heapSnapshotFile(),
          })
        : null;
    this.adminOptions = this.buildAdmin();
    this.otlp = this.startOtlp();
  }

  get tracing(): Tracing {
    return this.tracingImpl;
  }

  /** What `handleAdminTelemetry(req, res, telemetry.admin)` needs. */
  get admin(): AdminTelemetryOptions {
    return this.adminOptions;
  }

  /** Scrape-time sources (connections, streams, audit) owned by other modules. */
  setMetricSources(sources: MetricSources): void {
    this.metrics.setSources(sources);
  }

  /** Call once the RequestContext exists, before any stage: starts the server span and fills `ctx.trace`. */
  startRequest(ctx: RequestContext): ServerSpan {
    return this.tracingImpl.startServerSpan(ctx);
  }

  /** Call per upstream attempt once the endpoint is picked; then `inject` the headers and `end` it. */
  startUpstream(span: ServerSpan, upstream: string, endpoint: string, method: string): UpstreamAttempt {
    return new UpstreamAttempt(this.metrics, span.startClientSpan(upstream, endpoint, method), upstream, endpoint);
  }

  /**
   * Call once per request when the response is over (sent, failed or abandoned):
   * metrics, access line, span end. `bytes` is the response body size sent, -1 when unknown.
   */
  finishRequest(ctx: RequestContext, span: ServerSpan, status: number, bytes: number, info?: FinishInfo): void {
    const ms = Number(process.hrtime.bigint() - ctx.startedAt) / 1e6;
    const code = info?.code ?? null;
    this.metrics.recordRequest(ctx, status, ms / 1000, bytes, code);
    const grpcStatus = info?.grpcStatus ?? null;
    if (grpcStatus !== null) this.metrics.recordGrpc(ctx, grpcStatus);
    this.access.log(ctx, status, ms, bytes, info);
    span.end(ctx, status, info);
  }

  /** A logger whose lines carry trace_id, span_id and request_id; the child is built on first use. */
  requestLogger(ctx: RequestContext): RequestLogger {
    return new RequestLogger(this.logger, ctx);
  }

  /** A subject as a log line may show it: as the audit masking rules write it, else hashed (the access log's `subject_hash`). */
  subjectForLog(subject: string): string {
    return this.mask('subject', subject) ?? hashIdentity(subject);
  }

  /**
   * Applies a new config snapshot. Tracing is rebuilt when its section changed
   * (the old provider flushes after a grace period, so spans in flight still
   * export); metric buckets and the default-metrics switch need a restart.
   */
  async reload(input: TelemetryInput): Promise<void> {
    const next = resolveTelemetryConfig(input.telemetry);
    const previous = this.config;
    const masking = JSON.stringify(input.audit?.masking ?? null);
    const maskChanged = this.options.mask === undefined && masking !== this.masking;
    if (maskChanged) {
      this.masking = masking;
      this.mask = fieldMaskOf(input.audit?.masking);
    }
    this.config = next;
    applyLogLevel(this.logger, next.logs.level);
    if (
      JSON.stringify(next.metrics.requestDurationBuckets) !== JSON.stringify(previous.metrics.requestDurationBuckets) ||
      next.metrics.enabled !== previous.metrics.enabled ||
      next.metrics.defaultMetrics !== previous.metrics.defaultMetrics
    )
      this.logger.warn(
        {},
        'a change of telemetry.metrics.enabled, defaultMetrics or requestDurationBuckets takes effect on restart',
      );
    if (
      maskChanged ||
      JSON.stringify(next.traces) !== JSON.stringify(previous.traces) ||
      next.serviceName !== previous.serviceName ||
      JSON.stringify(next.resourceAttributes) !== JSON.stringify(previous.resourceAttributes)
    ) {
      const old = this.tracingImpl;
      this.tracingImpl = this.buildTracing(input);
      this.retire(old);
    } else {
      this.tracingImpl.setRoutes(input.routes ?? []);
    }
    this.access = new AccessLogger(this.logger, next.logs.accessLog, this.mask);
    this.adminOptions = this.buildAdmin();
    if (JSON.stringify(next.metrics.otlp) !== JSON.stringify(previous.metrics.otlp)) {
      await this.otlp?.stop();
      this.otlp = this.startOtlp();
    }
  }

  /** Flushes spans and the last metrics push, stops observers and IPC handlers. */
  async shutdown(): Promise<void> {
    this.unsubscribe?.();
    this.requests?.close();
    await Promise.allSettled([this.tracingImpl.shutdown(), ...[...this.retiring].map((t) => t.shutdown()), this.otlp?.stop()]);
    this.metrics.close();
  }

  private buildTracing(input: TelemetryInput): Tracing {
    // The primary serves no requests: no SDK there.
    const config =
      this.role === 'primary' ? { ...this.config, traces: { ...this.config.traces, exporter: 'none' as const } } : this.config;
    return createTracing(config, {
      mask: this.mask,
      routes: input.routes ?? [],
      ...(this.role === 'primary' ? {} : { exporter: this.options.spanExporter }),
      simpleProcessor: this.options.simpleSpanProcessor,
      onDrop: () => this.metrics.spanDropped(),
      onExport: (spans, error) => {
        this.metrics.spansExported(spans, error !== null);
        // An unreachable collector fails every few seconds: one line a minute says it.
        const now = Date.now();
        if (error !== null && now - this.lastExportWarning > 60_000) {
          this.lastExportWarning = now;
          this.logger.warn({ spans, error: error.message }, 'trace export failed');
        }
      },
    });
  }

  private retire(old: Tracing): void {
    this.retiring.add(old);
    // Requests already in flight end their spans on the old provider; give them time before it stops.
    setTimeout(() => {
      this.retiring.delete(old);
      void old.shutdown();
    }, 30_000).unref();
  }

  private buildAdmin(): AdminTelemetryOptions {
    const metrics = this.metrics;
    const requests = this.requests;
    const timeout = this.options.clusterTimeoutMs ?? 2000;
    return {
      // `metrics.enabled` is fixed at start (see reload), so read it from the metrics themselves.
      metrics: !metrics.enabled
        ? null
        : requests === null
          ? async () => ({ contentType: metrics.contentType, body: await metrics.metrics() })
          : async () => ({ contentType: metrics.contentType, body: await clusterMetrics(metrics.registry, requests, timeout) }),
      profiling: this.config.profiling,
      profiles: this.profiles,
    };
  }

  private startOtlp(): OtlpMetricsPusher | null {
    const otlp = this.config.metrics.otlp;
    // Workers do not push: the primary (or single process) pushes the instance's merged view, once.
    if (otlp === null || !this.metrics.enabled || this.role === 'worker') return null;
    const requests = this.requests;
    const timeout = this.options.clusterTimeoutMs ?? 2000;
    return startOtlpMetrics(otlp, {
      serviceName: this.config.serviceName,
      resourceAttributes: this.config.resourceAttributes,
      collect:
        requests === null
          ? () => this.metrics.registry.getMetricsAsJSON()
          : () => clusterMetricsJson(this.metrics, requests, timeout),
      logger: this.logger,
    });
  }
}

async function clusterMetricsJson(metrics: BulwarkMetrics, requests: WorkerRequests, timeoutMs: number): Promise<unknown[]> {
  return (await clusterRegistry(metrics.registry, requests, timeoutMs)).getMetricsAsJSON();
}

// `*`: a rule for every top-level field covers these too.
const IDENTITY_FIELDS: ReadonlySet<string> = new Set(['subject', 'tenant', 'clientIp', '*']);

/** The audit masking rules for the identity fields, as a FieldMask; no work per value when none covers them. */
function fieldMaskOf(masking: MaskingConfig | undefined): FieldMask {
  if (masking?.fields?.some((f) => IDENTITY_FIELDS.has(f.path)) !== true) return NO_FIELD_MASK;
  const masker = new Masker(compileMasking(masking));
  return (field, value) => masker.field(field, value);
}

export function createTelemetry(input: TelemetryInput, options: TelemetryOptions): Telemetry {
  return new Telemetry(input, options);
}
