// The audit module's public names (no `export *`): the lead re-exports what the package exposes.
export { auditCli, AUDIT_EXIT, AUDIT_HELP, formatVerifyReport } from './cli.js';
export type { CliIo } from './cli.js';
export { canonicalize, CanonicalizationError } from './canonical.js';
export { GENESIS_HASH, hashInput, signatureInput } from './chain.js';
export { AuditClock, formatTimestamp, parseTimestamp, UuidV7, UUID_V7 } from './clock.js';
export { AUDIT_DECISIONS, AUDIT_SCHEMA_VERSION, compileExtraFields, eventFromContext, NO_EXTRAS } from './event.js';
export type {
  AuditDecision,
  AuditInput,
  AuditRecord,
  AuditStageDecision,
  BusinessEventInput,
  BusinessRecord,
  CheckpointRecord,
  ExtraFieldSelection,
  GapRecord,
  RecordBase,
  RequestEventInput,
  RequestOutcome,
  RequestRecord,
  StartRecord,
} from './event.js';
export { keyFingerprint, loadPublicKey, loadSigningKey } from './keys.js';
export type { SigningKey } from './keys.js';
export { createAuditLog } from './log.js';
export type { AuditLog, AuditLogOptions, AuditStats, DurableResult, EnqueueResult, SinkStats } from './log.js';
export { compileMasking, isSensitiveKey, Masker, REDACTED, REDACTED_JWT, scrubTokens } from './mask.js';
export { queryAudit, parseSince } from './query.js';
export type { AuditQuery } from './query.js';
export { AUDIT_DEFAULTS, auditChecks, AuditSchema, NEVER_RAW_HEADERS, resolveAuditPaths, sinkIdentity } from './schema.js';
export type {
  AuditConfig,
  ChainConfig,
  ExtraFieldsConfig,
  FieldMaskConfig,
  FileSinkConfig,
  MaskAction,
  MaskingConfig,
  MaskRuleConfig,
  PostgresSinkConfig,
  RetryConfig,
  SinkConfig,
  SqliteSinkConfig,
  WalConfig,
  WebhookSinkConfig,
} from './schema.js';
export type { AuditSink } from './sinks/sink.js';
export { signWebhookBody } from './sinks/webhook.js';
export { describeSource, readSource } from './sources.js';
export type { AuditSource, SourceRow } from './sources.js';
export { verifyAudit, verifyLines } from './verify.js';
export type { ChainReport, GapReport, VerifyIssue, VerifyOptions, VerifyReport } from './verify.js';
export type { WalEntry } from './wal.js';
