/**
 * The `telemetry` section: traces, metrics, logs and on-demand profiling.
 * TypeBox objects are the source of truth (types via `Static<>`, JSON Schema for
 * the reference); `telemetryChecks` adds what a schema cannot say.
 *
 * Every object is closed (`additionalProperties: false`), as in
 * src/config/schema.ts. Defaulted fields are optional in the static types so a
 * library user can build a config in code; `resolveTelemetryConfig` applies the
 * same defaults the loader fills in, so code never reads an `undefined` field.
 *
 * ```yaml
 * telemetry:
 *   serviceName: bulwark
 *   resourceAttributes: { deployment.environment.name: prod }
 *   traces:
 *     exporter: otlp                # otlp | console | none
 *     endpoint: http://otel-collector:4318/v1/traces
 *     headers: { x-scope-orgid: acme }
 *     compression: none             # none | gzip
 *     timeoutMs: 10000
 *     sampler: { ratio: 0.1, parentBased: true }
 *     propagators: [tracecontext, baggage]      # + b3 (single header), b3multi
 *     identityAttributes: false     # enduser.id / bulwark.tenant, masked per audit.masking (else hashed)
 *     batch: { maxQueueSize: 8192, maxExportBatchSize: 2048, scheduledDelayMs: 5000 }
 *   metrics:
 *     enabled: true
 *     defaultMetrics: true          # process_* and nodejs_* from prom-client
 *     requestDurationBuckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
 *   logs:
 *     level: info
 *     accessLog: { enabled: false, fields: [request_id, trace_id, span_id, method, path, route, status, duration_ms, bytes] }
 *   profiling:
 *     enabled: true
 *     allow: loopback               # loopback | token
 *     token: ${BULWARK_PROFILING_TOKEN}
 *     maxSeconds: 60
 * ```
 */
import { Type, type Static, type TObject, type TProperties, type ObjectOptions, type TSchema } from '@sinclair/typebox';

function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

export type Report = (path: (string | number)[], code: string, message: string, severity?: 'error' | 'warning') => void;

// RFC 9110 token: what a header name may be. Lower-case only, since HTTP/2 requires it.
const HEADER_NAME = "^[a-z0-9!#$%&'*+.^_`|~-]+$";
const HttpUrl = (description: string, def: string) => Type.String({ pattern: '^https?://[^\\s]+$', default: def, description });
const ExportHeaders = Type.Record(Type.String({ pattern: HEADER_NAME }), Type.String({ pattern: '^[^\\r\\n]*$' }), {
  additionalProperties: false,
  default: {},
  description:
    'Extra HTTP headers sent with each export (tenant ids, API keys). Values may hold secrets: use `${ENV}` references. Lower-case names.',
});
const Compression = Type.Union([Type.Literal('none'), Type.Literal('gzip')], {
  default: 'none',
  description: 'Compression of export requests.',
});
const TimeoutMs = Type.Integer({
  minimum: 100,
  maximum: 120_000,
  default: 10_000,
  description: 'Longest an export request may take (milliseconds).',
});

export const PROPAGATORS = ['tracecontext', 'baggage', 'b3', 'b3multi'] as const;
export type PropagatorName = (typeof PROPAGATORS)[number];

export const SamplerSchema = Closed(
  {
    ratio: Type.Optional(
      Type.Number({
        minimum: 0,
        maximum: 1,
        default: 1,
        description: 'Share of new (root) traces recorded, 0 to 1. Decided from the trace id, so every hop agrees.',
      }),
    ),
    parentBased: Type.Optional(
      Type.Boolean({
        default: true,
        description:
          "Follow the caller's sampled flag when the request carries a trace context; `ratio` then only applies to new traces.",
      }),
    ),
  },
  { description: 'Which requests are traced: parent-based trace-id ratio.' },
);

/** The span batching defaults: the schema shows them, resolveTelemetryConfig applies them. */
const BATCH_DEFAULTS = { maxQueueSize: 8192, maxExportBatchSize: 2048, scheduledDelayMs: 5000 } as const;

export const BatchSchema = Closed(
  {
    maxQueueSize: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 1_000_000,
        default: BATCH_DEFAULTS.maxQueueSize,
        description:
          'Spans waiting for export; beyond, new spans are dropped (counted: `bulwark_trace_spans_exported_total{outcome="dropped"}`).',
      }),
    ),
    maxExportBatchSize: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 100_000,
        default: BATCH_DEFAULTS.maxExportBatchSize,
        description:
          "Spans per export request. Four times the OTel SDK's 512: a gateway makes two spans per request, and an export costs about the same CPU whatever its size (at full sampling, 2048 served ~6% more requests per second than 512); ~600 KB per request, far below collectors' limits.",
      }),
    ),
    scheduledDelayMs: Type.Optional(
      Type.Integer({
        minimum: 10,
        maximum: 600_000,
        default: BATCH_DEFAULTS.scheduledDelayMs,
        description: 'Longest a span waits before export (milliseconds).',
      }),
    ),
  },
  { description: 'Batching of span exports (OTLP only).' },
);

/**
 * Exporter-only fields carry no schema `default` (resolveTelemetryConfig fills them): a filled-in
 * default would be indistinguishable from a written value, and `telemetryChecks` would warn that a
 * console exporter ignores settings nobody wrote.
 */
function unfilled<T extends TSchema>(schema: T, def: unknown): T {
  const { default: _ignored, ...rest } = schema as T & { default?: unknown };
  return { ...rest, description: `${String(rest.description ?? '')} Default: \`${JSON.stringify(def)}\`.` } as T;
}

export const TracesSchema = Closed(
  {
    exporter: Type.Optional(
      Type.Union([Type.Literal('otlp'), Type.Literal('console'), Type.Literal('none')], {
        default: 'none',
        description:
          '`otlp`: OTLP HTTP/protobuf to `endpoint`. `console`: span dumps on stdout (development). `none`: no spans; incoming trace ids still reach the logs and pass upstream untouched.',
      }),
    ),
    endpoint: Type.Optional(
      unfilled(
        HttpUrl('OTLP/HTTP traces URL, path included (a collector listens on `/v1/traces`, port 4318).', ''),
        'http://127.0.0.1:4318/v1/traces',
      ),
    ),
    headers: Type.Optional(unfilled(ExportHeaders, {})),
    compression: Type.Optional(unfilled(Compression, 'none')),
    timeoutMs: Type.Optional(unfilled(TimeoutMs, 10_000)),
    sampler: Type.Optional(SamplerSchema),
    propagators: Type.Optional(
      Type.Array(Type.Union(PROPAGATORS.map((p) => Type.Literal(p))), {
        uniqueItems: true,
        default: ['tracecontext', 'baggage'],
        description:
          'Formats injected into upstream requests: `tracecontext` (W3C traceparent/tracestate), `baggage`, `b3` (single header), `b3multi` (X-B3-*). Incoming requests are read in all of them.',
      }),
    ),
    identityAttributes: Type.Optional(
      Type.Boolean({
        default: false,
        description:
          'Add the caller identity (subject as `enduser.id`, tenant) to server spans, never in clear: as the `audit.masking` rule for the `subject` / `tenant` field writes it (an `hmac:` pseudonym joins the audit record), else hashed.',
      }),
    ),
    batch: Type.Optional(BatchSchema),
  },
  { description: 'Distributed tracing (OpenTelemetry): a server span per request, a client span per upstream attempt.' },
);

export const MetricsOtlpSchema = Closed(
  {
    endpoint: HttpUrl(
      'OTLP/HTTP metrics URL, path included (a collector listens on `/v1/metrics`).',
      'http://127.0.0.1:4318/v1/metrics',
    ),
    headers: Type.Optional(ExportHeaders),
    compression: Type.Optional(Compression),
    timeoutMs: Type.Optional(TimeoutMs),
    intervalMs: Type.Optional(
      Type.Integer({ minimum: 1000, maximum: 3_600_000, default: 60_000, description: 'Push interval (milliseconds).' }),
    ),
  },
  { description: 'Also push the same metrics over OTLP HTTP/protobuf (cumulative), besides `/metrics`.' },
);

export const MetricsSchema = Closed(
  {
    enabled: Type.Optional(
      Type.Boolean({
        default: true,
        description: 'Collect metrics and serve Prometheus text at `/metrics` on the admin listener.',
      }),
    ),
    defaultMetrics: Type.Optional(
      Type.Boolean({
        default: true,
        description: 'Include the standard process_* and nodejs_* metrics (CPU, memory, handles, GC durations by kind).',
      }),
    ),
    requestDurationBuckets: Type.Optional(
      Type.Array(Type.Number({ exclusiveMinimum: 0, maximum: 3600 }), {
        minItems: 1,
        maxItems: 40,
        uniqueItems: true,
        description:
          'Upper bounds (seconds, ascending) of the request and upstream duration histograms. Takes effect on restart.',
      }),
    ),
    otlp: Type.Optional(MetricsOtlpSchema),
  },
  { description: 'Prometheus metrics; names `bulwark_*`, bounded labels (route ids, never raw paths, subjects or addresses).' },
);

export const ACCESS_LOG_FIELDS = [
  'request_id',
  'trace_id',
  'span_id',
  'method',
  'path',
  'route',
  'status',
  'duration_ms',
  'bytes',
  'protocol',
  'host',
  'client_address',
  'user_agent',
  'decision',
  'subject_hash',
  'tenant',
  'upstream',
] as const;
export type AccessLogField = (typeof ACCESS_LOG_FIELDS)[number];
export const DEFAULT_ACCESS_LOG_FIELDS: readonly AccessLogField[] = Object.freeze([
  'request_id',
  'trace_id',
  'span_id',
  'method',
  'path',
  'route',
  'status',
  'duration_ms',
  'bytes',
  'protocol',
  'decision',
]);

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const LogsSchema = Closed(
  {
    level: Type.Optional(
      Type.Union(
        LOG_LEVELS.map((l) => Type.Literal(l)),
        { default: 'info', description: 'Least severe level written. The BULWARK_LOG_LEVEL environment variable wins over it.' },
      ),
    ),
    accessLog: Type.Optional(
      Closed(
        {
          enabled: Type.Optional(
            Type.Boolean({
              default: false,
              description:
                'One JSON line per request. Off by default (as in Envoy): at tens of thousands of requests per second it is the largest per-request cost; metrics and the audit log cover every request anyway.',
            }),
          ),
          fields: Type.Optional(
            Type.Array(Type.Union(ACCESS_LOG_FIELDS.map((f) => Type.Literal(f))), {
              uniqueItems: true,
              default: [...DEFAULT_ACCESS_LOG_FIELDS],
              description:
                'Fields of an access line. There is no field for headers, query strings or credentials. `subject_hash`, `tenant` and `client_address` follow the `audit.masking` rules for `subject`, `tenant` and `clientIp` when there are some; without one, `subject_hash` is a hash and `client_address` is personal data.',
            }),
          ),
        },
        { description: 'The access log.' },
      ),
    ),
  },
  { description: 'pino JSON lines on stdout; every line made for a request carries trace_id, span_id and request_id.' },
);

export const ProfilingSchema = Closed(
  {
    enabled: Type.Optional(
      Type.Boolean({
        default: true,
        description:
          'Serve `/debug/pprof/profile?seconds=N` (CPU profile) and `/debug/pprof/heap` (heap snapshot) on the admin listener.',
      }),
    ),
    allow: Type.Optional(
      Type.Union([Type.Literal('loopback'), Type.Literal('token')], {
        default: 'loopback',
        description:
          '`loopback`: only callers on 127.0.0.0/8 or ::1. `token`: callers presenting `Authorization: Bearer <token>`.',
      }),
    ),
    token: Type.Optional(
      Type.String({
        minLength: 16,
        maxLength: 512,
        pattern: '^[\\x21-\\x7e]+$',
        description: 'Bearer token for `allow: token` (at least 16 characters; use a `${ENV}` reference).',
      }),
    ),
    maxSeconds: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 600, default: 60, description: 'Longest CPU profile a caller may ask for.' }),
    ),
  },
  { description: 'On-demand CPU profiles and heap snapshots (node:inspector), for Chrome DevTools or speedscope.' },
);

export const TelemetrySchema = Closed(
  {
    serviceName: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 128,
        default: 'bulwark',
        description: 'OpenTelemetry `service.name` of this gateway.',
      }),
    ),
    resourceAttributes: Type.Optional(
      Type.Record(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,128}$' }), Type.String({ maxLength: 1024 }), {
        additionalProperties: false,
        description: 'Extra resource attributes on every span (`deployment.environment.name`, `service.namespace`).',
      }),
    ),
    traces: Type.Optional(TracesSchema),
    metrics: Type.Optional(MetricsSchema),
    logs: Type.Optional(LogsSchema),
    profiling: Type.Optional(ProfilingSchema),
  },
  { description: 'Traces, metrics, logs and profiling.' },
);

export type SamplerConfig = Static<typeof SamplerSchema>;
export type TracesConfig = Static<typeof TracesSchema>;
export type MetricsOtlpConfig = Static<typeof MetricsOtlpSchema>;
export type MetricsConfig = Static<typeof MetricsSchema>;
export type LogsConfig = Static<typeof LogsSchema>;
export type ProfilingConfig = Static<typeof ProfilingSchema>;
export type TelemetryConfig = Static<typeof TelemetrySchema>;

/** Every field present: what the telemetry modules read. */
export interface ResolvedTelemetryConfig {
  serviceName: string;
  resourceAttributes: Readonly<Record<string, string>>;
  traces: {
    exporter: 'otlp' | 'console' | 'none';
    endpoint: string;
    headers: Readonly<Record<string, string>>;
    compression: 'none' | 'gzip';
    timeoutMs: number;
    sampler: { ratio: number; parentBased: boolean };
    propagators: readonly PropagatorName[];
    identityAttributes: boolean;
    batch: { maxQueueSize: number; maxExportBatchSize: number; scheduledDelayMs: number };
  };
  metrics: {
    enabled: boolean;
    defaultMetrics: boolean;
    requestDurationBuckets: readonly number[];
    otlp: {
      endpoint: string;
      headers: Readonly<Record<string, string>>;
      compression: 'none' | 'gzip';
      timeoutMs: number;
      intervalMs: number;
    } | null;
  };
  logs: { level: LogLevel; accessLog: { enabled: boolean; fields: readonly AccessLogField[] } };
  profiling: { enabled: boolean; allow: 'loopback' | 'token'; token: string | null; maxSeconds: number };
}

/** Request and upstream latency buckets: a gateway adds milliseconds, upstreams take up to seconds. */
export const DEFAULT_DURATION_BUCKETS: readonly number[] = Object.freeze([
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
]);

/** The loader's defaults, for configs that skipped it (code, tests) or left the section out. */
export function resolveTelemetryConfig(config: TelemetryConfig | undefined): ResolvedTelemetryConfig {
  const c = config ?? {};
  const t = c.traces ?? {};
  const m = c.metrics ?? {};
  const l = c.logs ?? {};
  const p = c.profiling ?? {};
  const buckets =
    m.requestDurationBuckets === undefined ? DEFAULT_DURATION_BUCKETS : [...m.requestDurationBuckets].sort((a, b) => a - b);
  return {
    serviceName: c.serviceName ?? 'bulwark',
    resourceAttributes: c.resourceAttributes ?? {},
    traces: {
      exporter: t.exporter ?? 'none',
      endpoint: t.endpoint ?? 'http://127.0.0.1:4318/v1/traces',
      headers: t.headers ?? {},
      compression: t.compression ?? 'none',
      timeoutMs: t.timeoutMs ?? 10_000,
      sampler: { ratio: t.sampler?.ratio ?? 1, parentBased: t.sampler?.parentBased ?? true },
      propagators: t.propagators ?? ['tracecontext', 'baggage'],
      identityAttributes: t.identityAttributes ?? false,
      batch: {
        maxQueueSize: t.batch?.maxQueueSize ?? BATCH_DEFAULTS.maxQueueSize,
        maxExportBatchSize: Math.min(
          t.batch?.maxExportBatchSize ?? BATCH_DEFAULTS.maxExportBatchSize,
          t.batch?.maxQueueSize ?? BATCH_DEFAULTS.maxQueueSize,
        ),
        scheduledDelayMs: t.batch?.scheduledDelayMs ?? BATCH_DEFAULTS.scheduledDelayMs,
      },
    },
    metrics: {
      enabled: m.enabled ?? true,
      defaultMetrics: m.defaultMetrics ?? true,
      requestDurationBuckets: buckets,
      otlp:
        m.otlp === undefined
          ? null
          : {
              endpoint: m.otlp.endpoint,
              headers: m.otlp.headers ?? {},
              compression: m.otlp.compression ?? 'none',
              timeoutMs: m.otlp.timeoutMs ?? 10_000,
              intervalMs: m.otlp.intervalMs ?? 60_000,
            },
    },
    logs: {
      level: l.level ?? 'info',
      accessLog: { enabled: l.accessLog?.enabled ?? false, fields: l.accessLog?.fields ?? DEFAULT_ACCESS_LOG_FIELDS },
    },
    profiling: {
      enabled: p.enabled ?? true,
      allow: p.allow ?? 'loopback',
      token: p.token ?? null,
      maxSeconds: p.maxSeconds ?? 60,
    },
  };
}

/** The slice of the whole config the checks read; `BulwarkConfig` fits once it has `telemetry`. */
export interface TelemetryCheckInput {
  telemetry?: TelemetryConfig | undefined;
  admin?: { enabled?: boolean | undefined } | undefined;
}

/**
 * Semantic checks of the `telemetry` section, with paths from the document root
 * so the loader can point at file:line. Errors are settings that would silently
 * do something else than they say (an open profiler, an unreachable URL);
 * warnings are settings that do nothing.
 */
export function telemetryChecks(config: TelemetryCheckInput, report: Report): void {
  const telemetry = config.telemetry;
  if (telemetry === undefined) return;
  const base = 'telemetry';
  const traces = telemetry.traces;
  if (traces !== undefined) {
    if (traces.endpoint !== undefined) checkUrl([base, 'traces', 'endpoint'], traces.endpoint, report);
    if (traces.exporter !== 'otlp') {
      for (const field of ['endpoint', 'headers', 'compression', 'timeoutMs', 'batch'] as const) {
        if (traces[field] !== undefined)
          report([base, 'traces', field], 'telemetry.unused', `traces.${field} is only used by the otlp exporter`, 'warning');
      }
    }
    const propagators = traces.propagators ?? [];
    if (propagators.includes('b3') && propagators.includes('b3multi'))
      report(
        [base, 'traces', 'propagators'],
        'telemetry.propagators',
        'b3 and b3multi both inject the same context twice; upstreams read either one',
        'warning',
      );
    if ((traces.exporter ?? 'none') !== 'none' && traces.sampler?.ratio === 0 && traces.sampler.parentBased === false)
      report(
        [base, 'traces', 'sampler'],
        'telemetry.never_sampled',
        'ratio 0 without parentBased records no trace at all; set exporter: none to say so',
        'warning',
      );
  }
  const metrics = telemetry.metrics;
  if (metrics !== undefined) {
    if (metrics.otlp !== undefined) checkUrl([base, 'metrics', 'otlp', 'endpoint'], metrics.otlp.endpoint, report);
    if (metrics.enabled === false && metrics.otlp !== undefined)
      report([base, 'metrics', 'otlp'], 'telemetry.unused', 'metrics are disabled, so nothing is pushed over OTLP', 'warning');
  }
  if (config.admin?.enabled === false && (metrics?.enabled ?? true) && metrics?.otlp === undefined)
    report(
      [base, 'metrics'],
      'telemetry.unserved',
      'metrics are collected but the admin listener that serves /metrics is disabled',
      'warning',
    );
  const profiling = telemetry.profiling;
  if (profiling !== undefined) {
    const allow = profiling.allow ?? 'loopback';
    if (allow === 'token' && profiling.token === undefined && (profiling.enabled ?? true))
      report(
        [base, 'profiling', 'token'],
        'telemetry.token_required',
        'profiling.allow is token but no token is set: nobody could profile, or a typo would open it',
      );
    if (allow === 'loopback' && profiling.token !== undefined)
      report(
        [base, 'profiling', 'token'],
        'telemetry.unused',
        'profiling.token is ignored while allow is loopback; set allow: token to use it',
        'warning',
      );
  }
}

function checkUrl(path: (string | number)[], value: string, report: Report): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    report(path, 'telemetry.bad_url', `"${value}" is not a valid URL`);
    return;
  }
  if (url.username !== '' || url.password !== '')
    report(path, 'telemetry.url_credentials', 'put credentials in `headers` (with a ${ENV} reference), not in the URL');
  if (url.search !== '' || url.hash !== '') report(path, 'telemetry.bad_url', 'an export URL takes no query or fragment');
}
