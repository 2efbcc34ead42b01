import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Identity, DecisionRecord, MatchedRoute, RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import { ConfigError, loadConfigFile, parseConfig, type LoadedConfig } from '../config/load.js';
import type { ListenerConfig, PathPolicyConfig } from '../config/schema.js';
import { admit, contextFor, problemResponse, type RequestLike } from '../engine/admission.js';
import { auditRequest, auditRequestDurable, contentLength, holdEnd, type RequestEnd } from '../engine/audit.js';
import { compileRuntime, ListenerSettings, retireRuntime, type CompileOptions, type Runtime } from '../gateway/runtime.js';
import { LIBRARY_CHECKS, watchConfig } from '../server/config-source.js';
import { rateLimitHeaders, releaseLimits } from '../limits/index.js';
import { respondToAdmitted } from '../issuer/http.js';
import { issuerEventSink } from '../engine/issuer-events.js';
import type { Issuer } from '../issuer/issuer.js';
import { createAuditLog, type AuditLog } from '../audit/index.js';
import { createLogger, createTelemetry, type Logger, type ServerSpan, type Telemetry } from '../telemetry/index.js';

export interface BulwarkOptions {
  /** A config file path, or the config itself (validated exactly like a file). */
  config: string | Record<string, unknown>;
  /** Peers whose X-Forwarded-* headers are believed (e.g. your load balancer). */
  trustedProxies?: string[];
  /** Canonicalization knobs; strict by default, as on a gateway listener. */
  paths?: Partial<PathPolicyConfig>;
  /** Whether the service is reached over TLS (sets the scheme used for absolute-form targets). */
  secure?: boolean;
  /**
   * Where the engine logs (pino; a child is used, so the config's `telemetry.logs.level` does not
   * change yours). Default: JSON lines on stdout.
   */
  logger?: Logger;
  /**
   * The audit log to record every decision into. Default: one opened from the config's `audit`
   * section (closed by `close()`), none without it. Pass your own to share it (yours to close).
   */
  audit?: AuditLog | null;
  /** Traces, metrics and access log. Default: one built from the config's `telemetry` section (shut down by `close()`). */
  telemetry?: Telemetry;
  /**
   * With `config` a file: apply its changes as it is saved (as `bulwark serve` does). A change
   * that does not load or compile is logged with file, line and field, and the running config stays.
   */
  watch?: boolean;
}

/** How a response ended, for `complete`. */
interface InFlight {
  span: ServerSpan;
  runtime: Runtime;
  /** Holds a place in the audit queue (`whenFull: block`). */
  reserved: boolean;
  /** Its audit event is recorded (durable mode: before the response ended). */
  audited: boolean;
}

export interface CompletionInfo {
  /** Response body bytes sent; -1 (default) when unknown. */
  bytes?: number;
  /** gRPC calls: the status the client got. */
  grpcStatus?: number | null;
  /** The reason code when the request failed after it was allowed (default: the denial's, if any). */
  code?: string | null;
}

/** What handlers see on `req.bulwark` once a request is allowed. */
export interface BulwarkRequestState {
  readonly requestId: string;
  readonly identity: Identity | null;
  readonly route: MatchedRoute | null;
  readonly decisions: readonly DecisionRecord[];
}

export interface Evaluation {
  ctx: RequestContext;
  error: BulwarkError | null;
}

/**
 * The engine as a library: the same canonicalization, routing and stages as
 * the gateway, for Node services that protect themselves. Adapters only map
 * their framework's request onto `evaluate` and a denial onto `sendProblem`.
 */
export class Bulwark {
  private runtime: Runtime;
  private readonly settings: ListenerSettings;
  private readonly secure: boolean;
  private readonly logger: Logger;
  /** The application's log level, kept when the config names none (null: our own logger). */
  private readonly appLevel: string | null;
  /** close() has begun: no reload may start a new snapshot. */
  private closing = false;
  /** The config file (reloads reread it); null for a config given as an object. */
  private readonly source: string | null;
  /** Every decision, once its response is over; business events with `audit.record(…)`. Null without an `audit` section. */
  readonly audit: AuditLog | null;
  readonly telemetry: Telemetry;
  private readonly owned: { audit: boolean; telemetry: boolean };
  /** Requests evaluated and not yet completed: their span and the snapshot they run on (dropped by `complete`). */
  private readonly inFlight = new WeakMap<RequestContext, InFlight>();
  private readonly unavailable = new BulwarkError('audit.unavailable');
  /** Issuer endpoints' refusal codes, by request, until the request completes. */
  private readonly issuerCodes = new WeakMap<RequestContext, string>();
  /** Reloads run one at a time, in order. */
  private reloading: Promise<unknown> = Promise.resolve();
  private unwatch: (() => void) | null = null;

  // Routes with `issuer: true` are answered by the issuer, not the application.
  private issuerRoutes: ReadonlySet<string>;

  private constructor(parts: {
    runtime: Runtime;
    settings: ListenerSettings;
    secure: boolean;
    logger: Logger;
    appLevel: string | null;
    source: string | null;
    audit: AuditLog | null;
    telemetry: Telemetry;
    owned: { audit: boolean; telemetry: boolean };
  }) {
    this.runtime = parts.runtime;
    this.settings = parts.settings;
    this.secure = parts.secure;
    this.logger = parts.logger;
    this.appLevel = parts.appLevel;
    this.source = parts.source;
    this.audit = parts.audit;
    this.telemetry = parts.telemetry;
    this.owned = parts.owned;
    this.issuerRoutes = issuerRoutesOf(parts.runtime);
  }

  /** The token issuer of the config's `issuer` section (mint sessions with it), or null. */
  get issuer(): Issuer | null {
    return this.runtime.issuer?.issuer ?? null;
  }

  /** Adapters: answers an allowed request of an `issuer: true` route (true), or leaves it to the application. */
  issuerServes(ctx: RequestContext, req: IncomingMessage, res: ServerResponse): boolean {
    const issuer = this.runtime.issuer;
    if (issuer === null || ctx.route === null || !this.issuerRoutes.has(ctx.route.id)) return false;
    void respondToAdmitted(issuer, ctx, req, res).then((response) => {
      // Known before the response's end completes the request: a refused grant is audited as the denial it is.
      if (response.code !== null) this.issuerCodes.set(ctx, response.code);
    });
    return true;
  }

  static async create(options: BulwarkOptions): Promise<Bulwark> {
    const loaded = await loadLibraryConfig(options.config);
    const listener: ListenerConfig = {
      port: 0,
      address: '127.0.0.1',
      protocol: 'http',
      trustedProxies: options.trustedProxies ?? [],
      ...(options.paths === undefined ? {} : { paths: options.paths as PathPolicyConfig }),
    };
    const settings = new ListenerSettings(listener);
    const logger = (options.logger ?? createLogger()).child({ component: 'bulwark' });
    const config = loaded.config;
    const owned = { audit: options.audit === undefined, telemetry: options.telemetry === undefined };
    const telemetry = options.telemetry ?? createTelemetry(config, { logger, role: 'single' });
    const appLevel = options.logger?.level ?? null;
    keepAppLevel(logger, appLevel, config);
    let audit: AuditLog | null = null;
    try {
      audit =
        options.audit !== undefined
          ? options.audit
          : config.audit === undefined
            ? null
            : await createAuditLog(config.audit, { logger });
      const runtime = await compileRuntime(config, loaded.hash, null, compileOptions(logger, telemetry, audit));
      runtime.activate(null);
      const source = typeof options.config === 'string' ? options.config : null;
      const bulwark = new Bulwark({
        runtime,
        settings,
        secure: options.secure ?? false,
        logger,
        appLevel,
        source,
        audit,
        telemetry,
        owned,
      });
      if (options.watch === true) {
        if (source === null) throw new TypeError('watch needs the config as a file path');
        bulwark.unwatch = watchConfig(source, () => void bulwark.reload().catch(() => {}));
      }
      return bulwark;
    } catch (err) {
      if (owned.audit) await audit?.close();
      if (owned.telemetry) await telemetry.shutdown();
      throw err;
    }
  }

  /**
   * Applies a new config: the file again (no argument), another file, or an object, validated
   * exactly like one. Resolves true when applied, false when unchanged; a config that does not
   * load or compile rejects (a ConfigError names file, line and field) and the running one stays.
   * Requests already evaluated finish on the config they started with. `audit` and `telemetry`
   * metric settings take effect on restart, as with `bulwark serve`.
   */
  reload(config?: string | Record<string, unknown>): Promise<boolean> {
    const run = async (): Promise<boolean> => {
      if (this.closing) throw new Error('this Bulwark is closed: nothing to reload');
      const from = config ?? this.source;
      if (from === null) throw new TypeError('reload() needs a config: this one was given as an object');
      try {
        const loaded = await loadLibraryConfig(from);
        if (loaded.hash === this.runtime.hash) return false;
        const previous = this.runtime;
        const next = await compileRuntime(
          loaded.config,
          loaded.hash,
          previous,
          compileOptions(this.logger, this.telemetry, this.audit),
        );
        next.activate(previous);
        this.runtime = next;
        this.issuerRoutes = issuerRoutesOf(next);
        if (this.owned.telemetry) {
          await this.telemetry.reload(loaded.config);
          keepAppLevel(this.logger, this.appLevel, loaded.config);
        }
        void retireRuntime(previous, next, loaded.config.shutdownTimeoutMs ?? 30_000);
        this.telemetry.metrics.configReload('ok');
        this.logger.info({ hash: next.hash }, 'configuration reloaded');
        return true;
      } catch (err) {
        this.telemetry.metrics.configReload('failed');
        this.logger.error(
          { err, ...(err instanceof ConfigError ? { issues: err.issues } : {}) },
          'reload failed, keeping the running configuration',
        );
        throw err;
      }
    };
    const result = this.reloading.then(run, run);
    this.reloading = result.catch(() => {});
    return result;
  }

  /**
   * Runs the pipeline for one request. Never throws for a client's mistake. Once the
   * response is over (sent, failed or abandoned), call `complete(evaluation, status)`: it frees
   * the request's concurrency slots, ends its span and records its audit event.
   */
  async evaluate(req: RequestLike): Promise<Evaluation> {
    const ctx = contextFor(req, this.secure);
    // The snapshot of this request, start to end: a reload meanwhile retires it only once it is done.
    const runtime = this.runtime;
    runtime.acquire();
    const entry: InFlight = { span: this.telemetry.startRequest(ctx), runtime, reserved: false, audited: false };
    this.inFlight.set(ctx, entry);
    // `whenFull: block`: refuse now rather than serve a request its audit event would miss; the
    // place its event will take is held from here, so requests admitted together cannot overrun it.
    if (this.audit !== null) {
      if (!this.audit.reserve()) return { ctx, error: this.unavailable };
      entry.reserved = true;
    }
    const admitted = admit(req, ctx, this.settings, runtime);
    if (admitted instanceof BulwarkError) return { ctx, error: admitted };
    ctx.stripHeaders = runtime.ownedHeaders;
    if (admitted.pipeline === null) return { ctx, error: null };
    try {
      return { ctx, error: await admitted.pipeline.run(ctx) };
    } catch (err) {
      this.telemetry.requestLogger(ctx).error({ err }, 'internal error');
      return { ctx, error: new BulwarkError('gateway.internal', undefined, { cause: err }) };
    }
  }

  /**
   * The end of an evaluated request: `status` the HTTP status sent (499 when the client
   * left first). Frees its concurrency slots, finishes its span, metrics and access line,
   * and records its audit event. Only the first call per request counts.
   */
  complete(evaluation: Evaluation, status: number, info: CompletionInfo = {}): void {
    const { ctx } = evaluation;
    const entry = this.inFlight.get(ctx);
    if (entry === undefined) return;
    this.inFlight.delete(ctx);
    const span = entry.span;
    releaseLimits(ctx);
    entry.runtime.release();
    const end = this.endOf(evaluation, status, info, entry.reserved);
    this.telemetry.finishRequest(ctx, span, status, end.bytesOut, end);
    if (this.audit !== null && !entry.audited) {
      entry.audited = true;
      auditRequest(this.audit, this.telemetry, ctx, end);
    }
  }

  /**
   * `durability: durable`: records the request's event now, as `complete` would, and settles once
   * it is committed. The adapters end the response only then (a later `complete` records nothing again).
   */
  commitAudit(evaluation: Evaluation, status: number, info: CompletionInfo = {}): Promise<void> {
    const entry = this.inFlight.get(evaluation.ctx);
    if (entry === undefined || entry.audited || this.audit === null) return Promise.resolve();
    entry.audited = true;
    // A request refused before it held a queue place is answered whatever the log makes of its event.
    return auditRequestDurable(
      this.audit,
      this.telemetry,
      evaluation.ctx,
      this.endOf(evaluation, status, info, entry.reserved),
      !entry.reserved,
    );
  }

  private endOf(evaluation: Evaluation, status: number, info: CompletionInfo, reserved: boolean): RequestEnd {
    let code = info.code !== undefined ? info.code : (evaluation.error?.code ?? this.issuerCodes.get(evaluation.ctx) ?? null);
    // Gone before any answer: an abort, as the gateway records it, not a served request.
    if (code === null && status === 499) code = 'request.aborted';
    return { status, upstream: null, bytesOut: info.bytes ?? -1, code, grpcStatus: info.grpcStatus ?? null, reserved };
  }

  /** Whether responses wait for their audit event's commit (`durability: durable`). */
  get holdsResponses(): boolean {
    return this.audit !== null && this.audit.durable;
  }

  /** Prometheus text of the engine's metrics (mount it where your service exposes metrics); null when disabled. */
  async metrics(): Promise<{ contentType: string; body: string } | null> {
    const metrics = this.telemetry.admin.metrics;
    return metrics === null ? null : metrics();
  }

  /** Sends a denial exactly as the gateway would: same status, headers and RFC 7807 body. Returns the body bytes sent. */
  sendProblem(res: ServerResponse, error: BulwarkError, ctx: RequestContext): number {
    const { status, headers, body } = problemResponse(error, ctx);
    res.writeHead(status, headers);
    if (ctx.method === 'HEAD') {
      res.end();
      return 0;
    }
    res.end(body);
    return headers['content-length'] as number;
  }

  /** node:http: wraps a handler; it runs only for allowed requests, with `req.bulwark` set. */
  protect<Req extends IncomingMessage, Res extends ServerResponse>(
    handler: (req: Req & { bulwark: BulwarkRequestState }, res: Res) => void,
  ) {
    return (req: Req, res: Res): void => this.serve(req, req, res, (ctx) => handler(attach(req, ctx), res));
  }

  /** Express / Connect middleware. Mount it before your routes. */
  middleware() {
    return (req: IncomingMessage & { originalUrl?: string }, res: ServerResponse, next: (err?: unknown) => void): void => {
      // Express rewrites req.url under a mount path; policy must see what the client sent.
      const view = req.originalUrl === undefined || req.originalUrl === req.url ? req : withUrl(req, req.originalUrl);
      this.serve(req, view, res, (ctx) => {
        attach(req, ctx);
        next();
      });
    };
  }

  /**
   * One node:http exchange: evaluate, then deny, answer an issuer route, or hand the request
   * to `allowed`; `complete` when the response is over, however it ends.
   */
  private serve(req: IncomingMessage, view: RequestLike, res: ServerResponse, allowed: (ctx: RequestContext) => void): void {
    const exchange = this.track(req, res);
    void this.evaluate(view).then((e) => {
      if (!exchange.evaluated(e)) return;
      if (e.error !== null) return exchange.denied(this.sendProblem(res, e.error, e.ctx));
      setLimitHeaders(res, e.ctx);
      if (this.issuerServes(e.ctx, req, res)) return;
      allowed(e.ctx);
    });
  }

  /**
   * Adapters: call before `evaluate`. The request is completed when its response is over,
   * also when the client leaves while the stages still run (its slots are freed then, and it
   * is audited as 499). `bytes` reads the body size the application announced.
   */
  track(req: IncomingMessage, res: ServerResponse, bytes: () => number = () => bytesOf(res)): Exchange {
    return new Exchange(this, req, res, bytes);
  }

  async close(): Promise<void> {
    this.closing = true;
    this.unwatch?.();
    await this.reloading;
    await retireRuntime(this.runtime, null, 0);
    if (this.owned.audit) await this.audit?.close();
    if (this.owned.telemetry) await this.telemetry.shutdown();
  }
}

/** One request's end, whenever it comes: before its evaluation is done or after. */
export class Exchange {
  private readonly bulwark: Bulwark;
  private readonly res: ServerResponse;
  private readonly bytes: () => number;
  private evaluation: Evaluation | null = null;
  private gone = false;
  private problemBytes = -1;

  constructor(bulwark: Bulwark, req: IncomingMessage, res: ServerResponse, bytes: () => number) {
    this.bulwark = bulwark;
    this.res = res;
    // A HEAD response announces a length and sends no body.
    this.bytes = req.method === 'HEAD' ? () => 0 : bytes;
    onResponseOver(req, res, () => this.finish());
    if (bulwark.holdsResponses) holdEnd(res, () => this.commit());
  }

  /** Durable mode: the event, committed before the response's end goes out. */
  private commit(): Promise<void> {
    const evaluation = this.evaluation;
    if (evaluation === null) return Promise.resolve();
    return this.bulwark.commitAudit(evaluation, this.res.statusCode, { bytes: this.sentBytes() });
  }

  private sentBytes(): number {
    return this.problemBytes >= 0 ? this.problemBytes : this.bytes();
  }

  /** Records the evaluation; false when the client has left already (nothing more to send). */
  evaluated(evaluation: Evaluation): boolean {
    this.evaluation = evaluation;
    if (!this.gone) return true;
    this.finish();
    return false;
  }

  /** The denial's problem body was sent: its size (the application's own header says nothing here). */
  denied(bytes: number): void {
    this.problemBytes = bytes;
  }

  private finish(): void {
    this.gone = true;
    const evaluation = this.evaluation;
    if (evaluation === null) return;
    const res = this.res;
    this.bulwark.complete(evaluation, res.headersSent ? res.statusCode : 499, { bytes: this.sentBytes() });
  }
}

/**
 * Calls `over` once when the response ends (finished, failed or the client gone). A response
 * queued behind a pipelined one has no socket yet, and Node gives it no 'close' of its own
 * when the connection goes first: the socket's 'close' stands in.
 */
function onResponseOver(req: IncomingMessage, res: ServerResponse, over: () => void): void {
  let called = false;
  const once = () => {
    if (called) return;
    called = true;
    over();
  };
  res.once('close', once);
  if (res.socket === null && req.socket !== null) {
    const socket = req.socket;
    socket.once('close', once);
    res.once('close', () => socket.off('close', once));
  }
}

/** The body bytes a response announced, -1 when it did not (chunked). */
export function bytesOf(res: { getHeader(name: string): unknown }): number {
  return contentLength(res.getHeader('content-length')) ?? -1;
}

/**
 * Telemetry applies the config's log level (default info) to our child; without one in the
 * config, the application's logger decides how chatty the engine is.
 */
function keepAppLevel(logger: Logger, appLevel: string | null, config: { telemetry?: { logs?: { level?: string } } }): void {
  if (appLevel !== null && config.telemetry?.logs?.level === undefined) logger.level = appLevel;
}

function loadLibraryConfig(config: string | Record<string, unknown>): Promise<LoadedConfig> {
  return typeof config === 'string'
    ? loadConfigFile(config, { checks: LIBRARY_CHECKS })
    : Promise.resolve(parseConfig(JSON.stringify(config, null, 2), '<inline config>', { checks: LIBRARY_CHECKS }));
}

function compileOptions(logger: Logger, telemetry: Telemetry, audit: AuditLog | null): CompileOptions {
  return { issuer: { onEvent: issuerEventSink(logger, telemetry, audit) } };
}

function issuerRoutesOf(runtime: Runtime): ReadonlySet<string> {
  return new Set(runtime.config.routes.filter((r) => r.issuer === true).map((r) => r.id));
}

function withUrl(req: IncomingMessage, url: string): RequestLike {
  return {
    method: req.method,
    url,
    headers: req.headers,
    rawHeaders: req.rawHeaders,
    httpVersionMajor: req.httpVersionMajor,
    httpVersionMinor: req.httpVersionMinor,
    http1: true,
    socket: req.socket,
  };
}

function attach<Req extends object>(req: Req, ctx: RequestContext): Req & { bulwark: BulwarkRequestState } {
  const state: BulwarkRequestState = {
    requestId: ctx.requestId,
    identity: ctx.identity,
    route: ctx.route,
    decisions: ctx.decisions,
  };
  return Object.assign(req, { bulwark: state });
}

export function createBulwark(options: BulwarkOptions): Promise<Bulwark> {
  return Bulwark.create(options);
}

function setLimitHeaders(res: ServerResponse, ctx: RequestContext): void {
  const headers = rateLimitHeaders(ctx);
  if (headers !== null) for (const name in headers) res.setHeader(name, headers[name]!);
}
