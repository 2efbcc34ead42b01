import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Identity, DecisionRecord, MatchedRoute, RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import { loadConfigFile, parseConfig, type LoadedConfig } from '../config/load.js';
import type { ListenerConfig, PathPolicyConfig } from '../config/schema.js';
import { admit, contextFor, problemResponse, type RequestLike } from '../engine/admission.js';
import { compileRuntime, ListenerSettings, retireRuntime, type Runtime } from '../gateway/runtime.js';
import { LIBRARY_CHECKS } from '../server/config-source.js';
import { rateLimitHeaders, releaseLimits } from '../limits/index.js';
import { respondToAdmitted } from '../issuer/http.js';
import type { Issuer } from '../issuer/issuer.js';

export interface BulwarkOptions {
  /** A config file path, or the config itself (validated exactly like a file). */
  config: string | Record<string, unknown>;
  /** Peers whose X-Forwarded-* headers are believed (e.g. your load balancer). */
  trustedProxies?: string[];
  /** Canonicalization knobs; strict by default, as on a gateway listener. */
  paths?: Partial<PathPolicyConfig>;
  /** Whether the service is reached over TLS (sets the scheme used for absolute-form targets). */
  secure?: boolean;
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
  private readonly runtime: Runtime;
  private readonly settings: ListenerSettings;
  private readonly secure: boolean;

  // Routes with `issuer: true` are answered by the issuer, not the application.
  private readonly issuerRoutes: ReadonlySet<string>;

  private constructor(runtime: Runtime, settings: ListenerSettings, secure: boolean) {
    this.runtime = runtime;
    this.settings = settings;
    this.secure = secure;
    this.issuerRoutes = new Set(runtime.config.routes.filter((r) => r.issuer === true).map((r) => r.id));
  }

  /** The token issuer of the config's `issuer` section (mint sessions with it), or null. */
  get issuer(): Issuer | null {
    return this.runtime.issuer?.issuer ?? null;
  }

  private issuerServes(ctx: RequestContext, req: IncomingMessage, res: ServerResponse): boolean {
    const issuer = this.runtime.issuer;
    if (issuer === null || ctx.route === null || !this.issuerRoutes.has(ctx.route.id)) return false;
    void respondToAdmitted(issuer, ctx, req, res);
    return true;
  }

  static async create(options: BulwarkOptions): Promise<Bulwark> {
    const loaded: LoadedConfig =
      typeof options.config === 'string'
        ? await loadConfigFile(options.config, { checks: LIBRARY_CHECKS })
        : parseConfig(JSON.stringify(options.config, null, 2), '<inline config>', { checks: LIBRARY_CHECKS });
    const runtime = await compileRuntime(loaded.config, loaded.hash, null);
    const listener: ListenerConfig = {
      port: 0,
      address: '127.0.0.1',
      protocol: 'http',
      trustedProxies: options.trustedProxies ?? [],
      ...(options.paths === undefined ? {} : { paths: options.paths as PathPolicyConfig }),
    };
    return new Bulwark(runtime, new ListenerSettings(listener), options.secure ?? false);
  }

  /** Runs the pipeline for one request. Never throws for a client's mistake. */
  async evaluate(req: RequestLike): Promise<Evaluation> {
    const ctx = contextFor(req, this.secure);
    const admitted = admit(req, ctx, this.settings, this.runtime);
    if (admitted instanceof BulwarkError) return { ctx, error: admitted };
    ctx.stripHeaders = this.runtime.ownedHeaders;
    if (admitted.pipeline === null) return { ctx, error: null };
    try {
      return { ctx, error: await admitted.pipeline.run(ctx) };
    } catch (err) {
      return { ctx, error: new BulwarkError('gateway.internal', undefined, { cause: err }) };
    }
  }

  /** Sends a denial exactly as the gateway would: same status, headers and RFC 7807 body. */
  sendProblem(res: ServerResponse, error: BulwarkError, ctx: RequestContext): void {
    const { status, headers, body } = problemResponse(error, ctx);
    res.writeHead(status, headers);
    res.end(ctx.method === 'HEAD' ? undefined : body);
  }

  /** node:http: wraps a handler; it runs only for allowed requests, with `req.bulwark` set. */
  protect<Req extends IncomingMessage, Res extends ServerResponse>(
    handler: (req: Req & { bulwark: BulwarkRequestState }, res: Res) => void,
  ) {
    return (req: Req, res: Res): void => {
      void this.evaluate(req).then(({ ctx, error }) => {
        res.once('close', () => releaseLimits(ctx));
        if (error !== null) return this.sendProblem(res, error, ctx);
        setLimitHeaders(res, ctx);
        if (this.issuerServes(ctx, req, res)) return;
        handler(attach(req, ctx), res);
      });
    };
  }

  /** Express / Connect middleware. Mount it before your routes. */
  middleware() {
    return (req: IncomingMessage & { originalUrl?: string }, res: ServerResponse, next: (err?: unknown) => void): void => {
      // Express rewrites req.url under a mount path; policy must see what the client sent.
      const view = req.originalUrl === undefined || req.originalUrl === req.url ? req : withUrl(req, req.originalUrl);
      this.evaluate(view).then(({ ctx, error }) => {
        res.once('close', () => releaseLimits(ctx));
        if (error !== null) return this.sendProblem(res, error, ctx);
        setLimitHeaders(res, ctx);
        if (this.issuerServes(ctx, req, res)) return;
        attach(req, ctx);
        next();
      }, next);
    };
  }

  async close(): Promise<void> {
    await retireRuntime(this.runtime, null, 0);
  }
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
