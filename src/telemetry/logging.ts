/**
 * Request-correlated logs and the access log.
 *
 * Correlation is explicit, not ambient: a request's lines go through a
 * `RequestLogger`, a pino child bound to `trace_id`, `span_id` and
 * `request_id`. We deliberately do not use AsyncLocalStorage + a pino mixin:
 * on Node 20 ALS rides on async hooks, a cost paid by every request whether it
 * logs or not; a child logger costs only when something is logged, and the
 * child is built lazily, on the first line that passes the level check.
 *
 * Nothing in this file reads headers, query strings or credentials: the access
 * log has no field for them, so no configuration can put a token in a log.
 */
import type { Logger } from 'pino';
import type { RequestContext } from '../core/context.js';
import type { AccessLogField, LogLevel, ResolvedTelemetryConfig } from './schema.js';
import { hashIdentity, NO_FIELD_MASK, type FieldMask } from './tracing.js';

export interface RequestBindings {
  request_id: string;
  trace_id?: string;
  span_id?: string;
}

/** The correlation fields of a request, for callers building their own log objects. */
export function requestBindings(ctx: RequestContext): RequestBindings {
  const t = ctx.trace;
  return t === null ? { request_id: ctx.requestId } : { request_id: ctx.requestId, trace_id: t.traceId, span_id: t.spanId };
}

/**
 * A request's logger. Bindings are read when the first line is written, so
 * create it any time; log through it after the span started (`ctx.trace` set).
 */
export class RequestLogger {
  private readonly base: Logger;
  private readonly ctx: RequestContext;
  private child: Logger | null;

  constructor(base: Logger, ctx: RequestContext) {
    this.base = base;
    this.ctx = ctx;
    this.child = null;
  }

  /** The bound pino child, for code that wants a `Logger` (created on first access). */
  get logger(): Logger {
    return (this.child ??= this.base.child(requestBindings(this.ctx)));
  }

  isLevelEnabled(level: LogLevel): boolean {
    return this.base.isLevelEnabled(level);
  }

  fatal(obj: object | string, msg?: string): void {
    this.write('fatal', obj, msg);
  }
  error(obj: object | string, msg?: string): void {
    this.write('error', obj, msg);
  }
  warn(obj: object | string, msg?: string): void {
    this.write('warn', obj, msg);
  }
  info(obj: object | string, msg?: string): void {
    this.write('info', obj, msg);
  }
  debug(obj: object | string, msg?: string): void {
    this.write('debug', obj, msg);
  }
  trace(obj: object | string, msg?: string): void {
    this.write('trace', obj, msg);
  }

  private write(level: Exclude<LogLevel, 'silent'>, obj: object | string, msg: string | undefined): void {
    // The level check first: a debug line under `info` allocates nothing.
    if (!this.base.isLevelEnabled(level)) return;
    if (typeof obj === 'string') this.logger[level](obj);
    else this.logger[level](obj, msg);
  }
}

export function requestLogger(base: Logger, ctx: RequestContext): RequestLogger {
  return new RequestLogger(base, ctx);
}

/** What the gateway knows at the end of a request besides `ctx`. */
export interface AccessInfo {
  /** The reason code when the request was refused or failed. */
  code?: string | null;
  /** The upstream pool that served it. */
  upstream?: string | null;
}

const enum F {
  request_id,
  trace_id,
  span_id,
  method,
  path,
  route,
  status,
  duration_ms,
  bytes,
  protocol,
  host,
  client_address,
  user_agent,
  decision,
  subject_hash,
  tenant,
  upstream,
}

const FIELD_IDS: Readonly<Record<AccessLogField, F>> = {
  request_id: F.request_id,
  trace_id: F.trace_id,
  span_id: F.span_id,
  method: F.method,
  path: F.path,
  route: F.route,
  status: F.status,
  duration_ms: F.duration_ms,
  bytes: F.bytes,
  protocol: F.protocol,
  host: F.host,
  client_address: F.client_address,
  user_agent: F.user_agent,
  decision: F.decision,
  subject_hash: F.subject_hash,
  tenant: F.tenant,
  upstream: F.upstream,
};

const MAX_USER_AGENT = 256;
/** Client-chosen values (an HTTP/2 `:method`, a path, a token's tenant) are capped so a line stays small. */
const MAX_METHOD = 32;
const MAX_PATH = 2048;
const MAX_HOST = 256;
const MAX_TENANT = 256;

/** `value`, cut to `max` UTF-16 units (no copy when it fits, the usual case). */
function bounded(value: string, max: number): string {
  return value.length > max ? value.slice(0, max) : value;
}

/**
 * One JSON line per request with the configured fields. The field list is
 * compiled to small integers once per config, so a line is a loop and a switch.
 */
export class AccessLogger {
  readonly enabled: boolean;
  private readonly logger: Logger;
  private readonly fields: readonly F[];
  private readonly mask: FieldMask;

  /** `mask`: the audit masking rules; a masked field never reaches the log in clear. */
  constructor(base: Logger, config: ResolvedTelemetryConfig['logs']['accessLog'], mask: FieldMask = NO_FIELD_MASK) {
    this.enabled = config.enabled;
    // Its own level: an operator who quiets the rest to `warn` still asked for an access log;
    // `silent` still means no output at all.
    this.logger = base.child({ log: 'access' }, { level: base.level === 'silent' ? 'silent' : 'info' });
    this.fields = config.fields.map((f) => FIELD_IDS[f]);
    this.mask = mask;
  }

  log(ctx: RequestContext, status: number, durationMs: number, bytes: number, info?: AccessInfo): void {
    if (!this.enabled) return;
    const line: Record<string, string | number | null> = {};
    const fields = this.fields;
    for (let i = 0; i < fields.length; i++) {
      switch (fields[i]) {
        case F.request_id:
          line['request_id'] = ctx.requestId;
          break;
        case F.trace_id:
          if (ctx.trace !== null) line['trace_id'] = ctx.trace.traceId;
          break;
        case F.span_id:
          if (ctx.trace !== null) line['span_id'] = ctx.trace.spanId;
          break;
        case F.method:
          line['method'] = bounded(ctx.method, MAX_METHOD);
          break;
        case F.path:
          // The canonical path, never the raw target: no query string, nothing a client smuggled.
          if (ctx.path !== '') line['path'] = bounded(ctx.path, MAX_PATH);
          break;
        case F.route:
          line['route'] = ctx.route === null ? null : ctx.route.id;
          break;
        case F.status:
          line['status'] = status;
          break;
        case F.duration_ms:
          line['duration_ms'] = Math.round(durationMs * 1000) / 1000;
          break;
        case F.bytes:
          if (bytes >= 0) line['bytes'] = bytes;
          break;
        case F.protocol:
          line['protocol'] = ctx.protocol;
          break;
        case F.host:
          if (ctx.host !== '') line['host'] = bounded(ctx.host, MAX_HOST);
          break;
        case F.client_address:
          // The client as the audit record names it (after trusted proxies), so the two join.
          line['client_address'] = this.mask('clientIp', ctx.clientAddress) ?? ctx.clientAddress;
          break;
        case F.user_agent: {
          const ua = ctx.headers['user-agent'];
          if (typeof ua === 'string') line['user_agent'] = bounded(ua, MAX_USER_AGENT);
          break;
        }
        case F.decision:
          line['decision'] = info?.code ?? 'allow';
          break;
        case F.subject_hash:
          if (ctx.identity !== null)
            line['subject_hash'] = this.mask('subject', ctx.identity.subject) ?? hashIdentity(ctx.identity.subject);
          break;
        case F.tenant:
          if (ctx.identity?.tenant !== undefined)
            line['tenant'] = this.mask('tenant', ctx.identity.tenant) ?? bounded(ctx.identity.tenant, MAX_TENANT);
          break;
        case F.upstream:
          if (info?.upstream != null) line['upstream'] = info.upstream;
          break;
      }
    }
    this.logger.info(line, 'access');
  }
}

/** Sets the configured level unless BULWARK_LOG_LEVEL pins it (an operator debugging wins over the file). */
export function applyLogLevel(logger: Logger, level: LogLevel, env: NodeJS.ProcessEnv = process.env): void {
  if (env['BULWARK_LOG_LEVEL'] !== undefined && env['BULWARK_LOG_LEVEL'] !== '') return;
  logger.level = level;
}
