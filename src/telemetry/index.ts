// The telemetry module's public names, listed (no `export *`).
export { createTelemetry, Telemetry, UpstreamAttempt } from './telemetry.js';
export type { FinishInfo, TelemetryInput, TelemetryOptions, TelemetryRole } from './telemetry.js';
export {
  ACCESS_LOG_FIELDS,
  DEFAULT_ACCESS_LOG_FIELDS,
  DEFAULT_DURATION_BUCKETS,
  PROPAGATORS,
  resolveTelemetryConfig,
  telemetryChecks,
  TelemetrySchema,
} from './schema.js';
export type {
  AccessLogField,
  LogLevel,
  PropagatorName,
  ResolvedTelemetryConfig,
  TelemetryCheckInput,
  TelemetryConfig,
} from './schema.js';
export { createTracing, hashIdentity, NO_FIELD_MASK, NOOP_SERVER_SPAN, routeTemplate } from './tracing.js';
export type { ClientSpan, EndInfo, FieldMask, IdentityField, RouteLike, ServerSpan, Tracing, TracingOptions } from './tracing.js';
export { BulwarkMetrics, OVERFLOW_LABEL, STAGE_IDS, UNMATCHED_ROUTE } from './metrics.js';
export type { KeySourceEvent, MetricSources, MetricsOptions } from './metrics.js';
export { AccessLogger, applyLogLevel, requestBindings, RequestLogger, requestLogger } from './logging.js';
export type { AccessInfo, RequestBindings } from './logging.js';
export { handleAdminTelemetry, isLoopback } from './admin.js';
export type { AdminTelemetryOptions, ProfileSource } from './admin.js';
export { isTelemetryMessage } from './cluster.js';
export type { TelemetryMessage } from './cluster.js';
export { LocalProfiler } from './profiling.js';
export { createLogger } from './logger.js';
export type { Logger } from './logger.js';
