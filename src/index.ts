// Public API: every exported name is listed here (no `export *`).
export { RequestContext } from './core/context.js';
export type { Identity, MatchedRoute, Protocol, TraceContext } from './core/context.js';
export { BulwarkError, ERROR_CODES, isBulwarkError } from './core/errors.js';
export type { ErrorCode, ErrorCodeSpec } from './core/errors.js';
export { PROBLEM_CONTENT_TYPE, renderProblem, toProblem } from './core/problem.js';
export type { Problem } from './core/problem.js';
export { Pipeline } from './core/pipeline.js';
export { CONTINUE } from './core/stage.js';
export type { Continue, Decision, Stage, StageFactory } from './core/stage.js';
export { canonicalizeTarget, compilePathPolicy, STRICT_PATH_POLICY } from './core/target.js';
export type { CanonicalTarget, PathPolicy } from './core/target.js';
export { ConfigError, formatIssues, loadConfigFile, parseConfig } from './config/load.js';
export type { ConfigCheck, ConfigIssue, LoadedConfig } from './config/load.js';
export type { BulwarkConfig } from './config/schema.js';
export { Gateway } from './gateway/gateway.js';
export { Bulwark, createBulwark } from './adapters/bulwark.js';
export type { BulwarkOptions, BulwarkRequestState, CompletionInfo, Evaluation } from './adapters/bulwark.js';
export { bulwarkFastify } from './adapters/fastify.js';
// Response classes whose durable hold (audit `durability: durable`) is a flag, not per-response properties:
// `http.createServer({ ServerResponse: HoldableServerResponse }, …)`, `Http2ServerResponse: HoldableHttp2ServerResponse`.
export { HoldableHttp2ServerResponse, HoldableServerResponse } from './engine/audit.js';
// Audit (src/audit): the tamper-evident log on its own (createBulwark opens one from `audit`), and its verifier.
export { createAuditLog, verifyAudit } from './audit/index.js';
export type { AuditInput, AuditLog, AuditLogOptions, AuditSink, AuditSource, VerifyReport } from './audit/index.js';
// Telemetry (src/telemetry): the engine's traces, metrics and logs (createBulwark builds one from `telemetry`).
export { createLogger, createTelemetry, Telemetry } from './telemetry/index.js';
export type { Logger, TelemetryOptions } from './telemetry/index.js';
// gRPC (src/grpc): grpc-js interceptors for services, statuses and health for any adapter.
export {
  bearerTokenInterceptor,
  bulwarkGrpcInterceptor,
  getBulwarkState,
  getIdentity,
  GrpcHealthService,
  GrpcStatus,
  grpcStatusFor,
  ServingStatus,
} from './grpc/index.js';
export type {
  BearerTokenInterceptorOptions,
  BulwarkGrpcInterceptorOptions,
  GrpcEngine,
  GrpcStatusCode,
  ServingStatusCode,
  TokenSource,
} from './grpc/index.js';
// Token issuer (src/issuer): client_credentials, sessions with rotating refresh tokens, rotating keys.
export { Issuer, issuerHandler, hashSecret, generateSecret, KeyRing } from './issuer/index.js';
export { createIssuer } from './issuer/create.js';
export type { CreateIssuerOptions } from './issuer/create.js';
export type { ClientAttributes, IssuerConfig, IssuerEvent, IssuerOptions, SessionInput, TokenSet } from './issuer/index.js';
