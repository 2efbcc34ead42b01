/**
 * Audit event schema, version 1, and the builders that make events from a
 * request's context or from an application's business action.
 *
 * Two layers:
 * - *inputs* (`RequestEventInput`, `BusinessEventInput`) are what callers hand to
 *   `record()`; they may still hold raw values (a configured header, a claim)
 *   because masking runs later, off the request path;
 * - *records* (`AuditRecord`) are what is written: masked, with id, timestamp,
 *   sequence and chain fields, hashed. Their JSON is the stored form.
 *
 * Every request record has every field (null when unknown), so stores and
 * consumers see one shape; optional extras (`claims`, `headers`, `query`) appear
 * only when configured. A change of meaning or shape is a new `v`.
 */
import type { RequestContext } from '../core/context.js';
import { ERROR_CODES } from '../core/errors.js';
import { toJsonData } from './mask.js';

export const AUDIT_SCHEMA_VERSION = 1;

/**
 * `deny`: a stage or the gateway refused the request (authentication, RBAC, no route, a
 * malformed or bypassing path); `limit`: a rate, concurrency or overload limit refused it;
 * `error`: it was admitted (or could not be judged) and failed: upstream, internal, client gone.
 */
export type AuditDecision = 'allow' | 'deny' | 'limit' | 'error';
export const AUDIT_DECISIONS: readonly AuditDecision[] = ['allow', 'deny', 'limit', 'error'];

/** The verdict of a refusal that no stage recorded (admission, routing, the gateway's own gates), by its code. */
function refusalOf(code: string): AuditDecision {
  if (code.startsWith('ratelimit.')) return 'limit';
  if (code === 'request.aborted') return 'error';
  // A server-side failure (a store down, no signing key) refused nothing on policy.
  const status = (ERROR_CODES as Readonly<Record<string, { status: number }>>)[code]?.status ?? 500;
  if (status >= 500) return 'error';
  // Deny by default is a decision: no route, and every request shape the normalizer refuses.
  if (
    code.startsWith('request.') ||
    code.startsWith('route.') ||
    code.startsWith('jwt.') ||
    code.startsWith('rbac.') ||
    code.startsWith('issuer.')
  )
    return 'deny';
  return 'error';
}

/** One stage's verdict as recorded (a compact copy of the context's DecisionRecord). */
export interface AuditStageDecision {
  stage: string;
  outcome: 'allow' | 'deny' | 'shadow_deny' | 'skip';
  code: string;
  detail?: Record<string, unknown>;
}

/** What the adapter knows once the response is done. */
export interface RequestOutcome {
  /** HTTP status sent (for gRPC the HTTP status, usually 200). */
  status: number;
  /** gRPC status code, when the call was gRPC. */
  grpcStatus?: number | undefined;
  latencyMs: number;
  /** The upstream pool (and endpoint) that served it, when forwarded. */
  upstream?: string | null | undefined;
  bytesIn: number;
  bytesOut: number;
  /** The client address as the gateway believes it (after trusted-proxy handling). */
  clientIp: string;
  /** A failure outside any stage (upstream unreachable, timeout…): its stable code and where it happened. */
  error?: { code: string; stage?: string | undefined } | undefined;
}

export interface RequestEventInput {
  kind: 'request';
  requestId: string;
  traceId: string | null;
  spanId: string | null;
  subject: string | null;
  tenant: string | null;
  roles: readonly string[];
  clientIp: string | null;
  userAgent: string | null;
  protocol: string | null;
  method: string;
  grpcMethod: string | null;
  path: string;
  route: string | null;
  decision: AuditDecision;
  /** The stage that decided (the denying stage; for an allow, the last stage that allowed). */
  stage: string | null;
  /** The stable reason code (`jwt.expired`, `rbac.no_matching_rule`, `ratelimit.exceeded`, `upstream.timeout`…). */
  reason: string | null;
  policy: string | null;
  rule: string | null;
  status: number;
  grpcStatus: number | null;
  latencyMs: number;
  upstream: string | null;
  bytesIn: number;
  bytesOut: number;
  decisions: readonly AuditStageDecision[];
  /** Raw values, masked before writing. */
  claims?: Readonly<Record<string, unknown>> | undefined;
  headers?: Readonly<Record<string, string>> | undefined;
  query?: Readonly<Record<string, string>> | undefined;
}

/** A business event an application reports: `audit.record({ action: 'payment.refund', … })`. */
export interface BusinessEventInput {
  kind?: 'event';
  /** Dotted verb: `payment.refund`, `user.role_granted`. */
  action: string;
  subject?: string | null;
  tenant?: string | null;
  /** What was acted on: `order:1234`, `/accounts/42`. */
  resource?: string | null;
  outcome?: 'success' | 'failure' | null;
  /** Free-form JSON; masked by `masking.fields` paths under `details.`, token-shaped values always redacted. */
  details?: Readonly<Record<string, unknown>> | null;
  requestId?: string | null;
  traceId?: string | null;
  spanId?: string | null;
}

export type AuditInput = RequestEventInput | BusinessEventInput;

/** Fields every written record has. `hash` covers the canonical JSON of everything else. */
export interface RecordBase {
  v: 1;
  id: string;
  /** RFC 3339 UTC with nanoseconds. */
  ts: string;
  /** `<hostname>:<pid>:<start time>:<random>` — one chain per writing process. */
  chain: string;
  /** Position in the chain, from 0. */
  n: number;
  /** `hash` of the previous record of the chain; 64 zeros for n = 0. */
  prev: string;
  hash: string;
}

export interface RequestRecord extends RecordBase, Omit<RequestEventInput, 'kind' | 'roles' | 'decisions'> {
  kind: 'request';
  /** Per-process monotonic sequence of events (recorded or dropped): gaps are explained by gap records. */
  seq: number;
  roles: string[];
  decisions: AuditStageDecision[];
}

export interface BusinessRecord extends RecordBase {
  kind: 'event';
  seq: number;
  action: string;
  subject: string | null;
  tenant: string | null;
  resource: string | null;
  outcome: 'success' | 'failure' | null;
  details: Record<string, unknown> | null;
  requestId: string | null;
  traceId: string | null;
  spanId: string | null;
}

/** Written where events were dropped (`whenFull: drop`): the chain says what is missing. */
export interface GapRecord extends RecordBase {
  kind: 'gap';
  dropped: number;
  fromSeq: number;
  toSeq: number;
  /** Timestamps of the first and last dropped event. */
  firstTs: string;
  lastTs: string;
  reason: 'queue_full';
}

/** Signs "the first `count` records of this chain end in `head`". */
export interface CheckpointRecord extends RecordBase {
  kind: 'checkpoint';
  count: number;
  head: string;
  /** Key fingerprint (base64url SHA-256 of the SPKI, 16 chars); null when unsigned. */
  keyId: string | null;
  /** Ed25519 signature (base64url) over the canonical record without `sig` and `hash`. */
  sig: string | null;
  /** `true`: the chain ends here (clean close, or sealed by the next process after a crash). */
  final: boolean;
  reason: 'periodic' | 'close' | 'recovered';
}

/** The first record of every chain. */
export interface StartRecord extends RecordBase {
  kind: 'start';
  host: string;
  pid: number;
  slot: number;
  software: string;
  /** Public key (SPKI PEM) the chain's checkpoints are signed with; null when unsigned. */
  publicKey: string | null;
  keyId: string | null;
  /** The last record of the previous chain written from the same WAL slot, when known. */
  after: { chain: string; n: number; hash: string } | null;
  /**
   * The writer's checkpoint policy (`chain.checkpointEvery`, `chain.checkpointIntervalMs`): verify then knows
   * how many records may follow a checkpoint before the next one. Absent in records written before it existed.
   */
  checkpoint?: { every: number; intervalMs: number };
  /**
   * A random id of the WAL directory the writer uses (made once, kept in it): verify tells apart the lineages
   * of two gateways on one host, each with its own slot 0. Absent in records written before it existed.
   */
  wal?: string;
}

export type AuditRecord = RequestRecord | BusinessRecord | GapRecord | CheckpointRecord | StartRecord;

/** Which extra request data to capture (compiled from `extraFields`). */
export interface ExtraFieldSelection {
  /** Claim paths, each split on '.'. */
  readonly claims: readonly (readonly string[])[];
  /** Lower-case header names. */
  readonly headers: readonly string[];
  readonly query: readonly string[];
}

export const NO_EXTRAS: ExtraFieldSelection = Object.freeze({ claims: [], headers: [], query: [] });

export function compileExtraFields(
  config: { claims?: string[]; headers?: string[]; query?: string[] } | undefined,
): ExtraFieldSelection {
  if (config === undefined) return NO_EXTRAS;
  return Object.freeze({
    claims: (config.claims ?? []).map((path) => Object.freeze(path.split('.'))),
    headers: (config.headers ?? []).map((name) => name.toLowerCase()),
    query: [...(config.query ?? [])],
  });
}

function headerValue(value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value.join(', ') : value;
}

function pickClaim(claims: Readonly<Record<string, unknown>>, path: readonly string[]): unknown {
  let value: unknown = claims;
  for (const segment of path) {
    if (value === null || typeof value !== 'object' || !Object.prototype.hasOwnProperty.call(value, segment)) return undefined;
    value = (value as Record<string, unknown>)[segment];
  }
  return value;
}

function pickQuery(query: string, names: readonly string[]): Record<string, string> | undefined {
  if (query === '' || names.length === 0) return undefined;
  const params = new URLSearchParams(query);
  let out: Record<string, string> | undefined;
  for (const name of names) {
    const all = params.getAll(name);
    if (all.length === 0) continue;
    (out ??= {})[name] = all.join(',');
  }
  return out;
}

/** Nested like the token (`org.id` → `{ org: { id } }`), so masking paths read the same as claim paths. */
function setPath(target: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let node = target;
  for (let i = 0; i < path.length - 1; i++) {
    const segment = path[i] as string;
    const next = node[segment];
    // A shallow copy, never the claim object itself: claims belong to the identity (and may be frozen).
    node[segment] = next === null || typeof next !== 'object' || Array.isArray(next) ? {} : { ...(next as object) };
    node = node[segment] as Record<string, unknown>;
  }
  node[path[path.length - 1] as string] = value;
}

const RULE_KEYS = ['rule', 'ruleId'] as const;
const POLICY_KEYS = ['policy', 'policyId'] as const;

function detailString(detail: Readonly<Record<string, unknown>> | undefined, keys: readonly string[]): string | null {
  if (detail === undefined) return null;
  for (const key of keys) {
    const value = detail[key];
    if (typeof value === 'string' && value !== '') return value;
  }
  return null;
}

/**
 * A request event from the pipeline's context and the response outcome. The
 * verdict: the first `deny` decision (its stage, code, policy and rule); else an
 * outcome error (`upstream.timeout`…); else `allow`, attributed to the last stage
 * that allowed. Every decision is kept in `decisions` (shadow denies included).
 *
 * Cheap by design (it runs once per request): it copies references and picks
 * the configured extras; masking and serialization happen later, off the request path.
 */
export function eventFromContext(
  ctx: RequestContext,
  outcome: RequestOutcome,
  extras: ExtraFieldSelection = NO_EXTRAS,
): RequestEventInput {
  const decisions: AuditStageDecision[] = [];
  let deciding: AuditStageDecision | null = null;
  let lastAllow: AuditStageDecision | null = null;
  for (const record of ctx.decisions) {
    const copy: AuditStageDecision = { stage: record.stage, outcome: record.outcome, code: record.code };
    if (record.detail !== undefined) copy.detail = record.detail as Record<string, unknown>;
    decisions.push(copy);
    if (record.outcome === 'deny' && deciding === null) deciding = copy;
    else if (record.outcome === 'allow') lastAllow = copy;
  }
  let decision: AuditDecision = 'allow';
  let stage: string | null = null;
  let reason: string | null = null;
  let policy: string | null = null;
  let rule: string | null = null;
  if (deciding !== null) {
    decision = deciding.stage === 'ratelimit' ? 'limit' : 'deny';
    stage = deciding.stage;
    reason = deciding.code;
    policy = detailString(deciding.detail, POLICY_KEYS);
    rule = detailString(deciding.detail, RULE_KEYS);
  } else if (outcome.error !== undefined) {
    decision = refusalOf(outcome.error.code);
    stage = outcome.error.stage ?? null;
    reason = outcome.error.code;
  } else if (lastAllow !== null) {
    stage = lastAllow.stage;
    reason = lastAllow.code;
    policy = detailString(lastAllow.detail, POLICY_KEYS);
    rule = detailString(lastAllow.detail, RULE_KEYS);
  }

  const identity = ctx.identity;
  const contentType = headerValue(ctx.headers['content-type']);
  const grpc = contentType !== undefined && contentType.startsWith('application/grpc');
  const input: RequestEventInput = {
    kind: 'request',
    requestId: ctx.requestId,
    traceId: ctx.trace?.traceId ?? null,
    spanId: ctx.trace?.spanId ?? null,
    subject: identity?.subject ?? null,
    tenant: identity?.tenant ?? null,
    roles: identity?.roles ?? [],
    clientIp: outcome.clientIp,
    userAgent: headerValue(ctx.headers['user-agent']) ?? null,
    protocol: ctx.protocol,
    method: ctx.method,
    grpcMethod: grpc ? ctx.path : null,
    path: ctx.path,
    route: ctx.route?.id ?? null,
    decision,
    stage,
    reason,
    policy,
    rule,
    status: outcome.status,
    grpcStatus: outcome.grpcStatus ?? null,
    latencyMs: outcome.latencyMs,
    upstream: outcome.upstream ?? null,
    bytesIn: outcome.bytesIn,
    bytesOut: outcome.bytesOut,
    decisions,
  };
  if (extras.claims.length > 0 && identity !== null) {
    let claims: Record<string, unknown> | undefined;
    for (const path of extras.claims) {
      const value = pickClaim(identity.claims, path);
      if (value !== undefined) setPath((claims ??= {}), path, value);
    }
    input.claims = claims;
  }
  if (extras.headers.length > 0) {
    let headers: Record<string, string> | undefined;
    for (const name of extras.headers) {
      const value = headerValue(ctx.headers[name]);
      if (value !== undefined) (headers ??= {})[name] = value;
    }
    input.headers = headers;
  }
  if (extras.query.length > 0) input.query = pickQuery(ctx.query, extras.query);
  return input;
}

const ACTION = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

/**
 * The business event as it is at `record()` time, as plain JSON data: read once, then the
 * caller may change or reuse its objects, and nothing of theirs (a getter, a `toJSON`, a
 * Proxy) runs later on the log's own path. Caller mistakes are TypeErrors, thrown here.
 */
export function snapshotBusinessEvent(input: BusinessEventInput): BusinessEventInput {
  try {
    assertBusinessEvent(input);
    const details = input.details;
    return {
      kind: 'event',
      action: input.action,
      subject: textField('subject', input.subject),
      tenant: textField('tenant', input.tenant),
      resource: textField('resource', input.resource),
      outcome: input.outcome ?? null,
      details: details === undefined || details === null ? null : (toJsonData(details) as Record<string, unknown>),
      requestId: textField('requestId', input.requestId),
      traceId: textField('traceId', input.traceId),
      spanId: textField('spanId', input.spanId),
    };
  } catch (error) {
    if (error instanceof TypeError && error.message.startsWith('audit event')) throw error;
    throw new TypeError(`audit event could not be read: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function textField(name: string, value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string') throw new TypeError(`audit event ${name} must be a string or null`);
  return value;
}

/** Caller mistakes are TypeErrors (as in jose): a bad business event is a bug in the application, not data. */
export function assertBusinessEvent(input: BusinessEventInput): void {
  if (typeof input !== 'object' || input === null) throw new TypeError('audit event must be an object');
  if (typeof input.action !== 'string' || !ACTION.test(input.action))
    throw new TypeError(`audit event action must match ${ACTION} (got ${JSON.stringify(input.action)})`);
  if (input.outcome !== undefined && input.outcome !== null && input.outcome !== 'success' && input.outcome !== 'failure')
    throw new TypeError('audit event outcome must be "success", "failure" or null');
  if (
    input.details !== undefined &&
    input.details !== null &&
    (typeof input.details !== 'object' || Array.isArray(input.details))
  )
    throw new TypeError('audit event details must be an object');
}
