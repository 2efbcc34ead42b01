import type { IncomingMessage, ServerResponse } from 'node:http';
import { constants as h2constants, Http2ServerRequest } from 'node:http2';
import type { Socket } from 'node:net';
import type { BulwarkConfig } from '../config/schema.js';
import type { RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import { PROBLEM_CONTENT_TYPE, renderProblem } from '../core/problem.js';
import type { Logger } from '../telemetry/logger.js';
import { createTelemetry, type ServerSpan, type Telemetry } from '../telemetry/index.js';
import { InFlightGate, overloadedError, releaseLimits } from '../limits/index.js';
import type { AuditLog } from '../audit/index.js';
import {
  forwardGrpc,
  GrpcHealthService,
  grpcPoolFor,
  GrpcStatus,
  grpcStatusFor,
  isGrpcRequest,
  sendGrpcDenial,
} from '../grpc/index.js';
import type { Http2ServerResponse } from 'node:http2';
import { admit, contextFor, problemResponse } from '../engine/admission.js';
import { afterCommit, auditRequest, auditRequestDurable, holdEnd } from '../engine/audit.js';
import { issuerEventSink } from '../engine/issuer-events.js';
import { EXPLANATION_HEADER, explanationHeaderValue } from '../authz/index.js';
import { upstreamRequestHeaders } from './headers.js';
import { respondToAdmitted } from '../issuer/http.js';
import type { IssuerEvent } from '../issuer/issuer.js';
import { BoundListener, type AnyRequest, type AnyResponse, type TlsSwap } from './listener.js';
import type { TlsMaterialError } from './tls.js';
import { BodyLimiter, forward, type ClientResponse } from './proxy.js';
import {
  compileRuntime,
  discardRuntime,
  listenerKey,
  retireRuntime,
  type CompiledRoute,
  type CompileOptions,
  type ListenerSettings,
  type Runtime,
} from './runtime.js';

export interface GatewayOptions {
  logger: Logger;
  /** Every request's decision goes here once it is over; none when absent. */
  audit?: AuditLog | null;
  /** The process's telemetry; a default one (metrics on, traces off) when absent. */
  telemetry?: Telemetry;
  /** How often TLS files are checked besides change events (ms; default 5000). */
  tlsPollMs?: number;
}

type TlsSwaps = [BoundListener, TlsSwap][];

/** What the end of a request reports to telemetry; one small object per request. */
const noop = (): void => {};

class Outcome {
  code: string | null = null;
  upstream: string | null = null;
  bytes = -1;
  /** The gRPC status the client got (gRPC calls only; set when it is decided, before the stream closes). */
  grpcStatus: number | null = null;
  /** Durable audit: commits the request's event (the answer's end waits for it); null otherwise. */
  commit: (() => Promise<void>) | null = null;
}

/**
 * The HTTP gateway: an adapter from node:http / node:http2 onto the core
 * (canonical target → route → route pipeline → forward). It holds no policy.
 */
export class Gateway {
  private runtime: Runtime | null = null;
  private readonly listeners = new Map<string, BoundListener>();
  private readonly logger: Logger;
  readonly telemetry: Telemetry;
  readonly audit: AuditLog | null;
  /** `grpc.health.v1.Health` for the gateway itself. */
  readonly grpcHealth = new GrpcHealthService();
  private draining = false;
  /** HTTP/1.1 connections whose current response says `Connection: close`: later requests on them are ignored. */
  private readonly closing = new WeakSet<Socket>();
  /**
   * Requests (HTTP/1.1) and streams (HTTP/2, gRPC) in flight in this process, every listener
   * and snapshot together; the cap (`rateLimits.global.maxConcurrentStreams`, this worker's
   * share) comes from the current snapshot. The gate outlives snapshots, so requests still
   * running on an old one keep counting after a reload.
   */
  private readonly streams = new InFlightGate();
  /** The denial over the cap, built once per cap value (refusing must stay cheap under overload). */
  private overloaded: BulwarkError | null = null;
  private readonly onIssuerEvent: (event: IssuerEvent) => void;
  private readonly tlsPollMs: number | undefined;
  private readonly compileOptions: CompileOptions = {
    issuer: { onEvent: (event) => this.onIssuerEvent(event) },
    // Decisions then take each policy's failure mode (fail open or closed): operators must hear of it.
    onStoreBreaker: (store, open) => {
      if (open) this.logger.error({ store }, 'rate limit store unavailable: policies apply their failure mode');
      else this.logger.info({ store }, 'rate limit store available again');
    },
  };
  private readonly onRequest = (req: AnyRequest, res: AnyResponse, listener: BoundListener) => this.handle(req, res, listener);
  private readonly onClientError = (error: NodeJS.ErrnoException, socket: Socket) => this.clientError(error, socket);

  constructor(options: GatewayOptions) {
    this.logger = options.logger;
    this.telemetry = options.telemetry ?? createTelemetry({}, { logger: options.logger, role: 'single' });
    this.audit = options.audit ?? null;
    this.tlsPollMs = options.tlsPollMs;
    this.onIssuerEvent = issuerEventSink(this.logger, this.telemetry, this.audit);
    // The `bulwark_active_connections` / `bulwark_active_streams` gauges, read at scrape time.
    // Note: setMetricSources replaces the whole set; a source owned elsewhere must be added here.
    this.telemetry.setMetricSources({
      connections: () => [...this.listeners.values()].map((l) => [l.key, l.connections] as const),
      streams: () => [...this.listeners.values()].map((l) => [l.key, l.inFlight] as const),
      certificates: () =>
        [...this.listeners.values()].flatMap((l) =>
          l.certificateNotAfter === null ? [] : [[l.key, Math.floor(l.certificateNotAfter / 1000)] as const],
        ),
      limitStores: () => {
        const stores = this.runtime?.limits?.stats().stores;
        return stores === undefined ? null : Object.entries(stores);
      },
      audit: () => {
        const stats = this.audit?.stats();
        return stats === undefined || !stats.enabled
          ? null
          : { queueDepth: stats.queueDepth, written: stats.written, dropped: stats.dropped, walBytes: stats.walBytes };
      },
    });
  }

  /** Requests and HTTP/2 streams in flight in this process (what `maxConcurrentStreams` caps). */
  get inFlight(): number {
    return this.streams.inFlight;
  }

  /** Requests refused with `ratelimit.overloaded` since start. */
  get overloadRefusals(): number {
    return this.streams.refused;
  }

  get current(): Runtime | null {
    return this.runtime;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Bound ports by listener key (useful with port 0). */
  ports(): Map<string, number> {
    return new Map([...this.listeners].map(([key, l]) => [key, l.port]));
  }

  async start(config: BulwarkConfig, hash: string): Promise<void> {
    this.runtime = await compileRuntime(config, hash, null, this.compileOptions);
    this.runtime.activate(null);
    try {
      await this.syncListeners(config, this.runtime);
      this.applyGlobalCaps(this.runtime);
    } catch (err) {
      await this.stop(0);
      throw err;
    }
  }

  /**
   * Compiles the new config completely, binds new listeners, then swaps. Any
   * failure leaves the old snapshot serving. In-flight requests finish on the
   * snapshot they started with.
   */
  async reload(config: BulwarkConfig, hash: string): Promise<void> {
    // Stopping has closed listeners and upstream pools: a reload now would bring them back half-alive.
    if (this.draining) throw new Error('the gateway is shutting down: reload refused');
    const previous = this.runtime;
    const next = await compileRuntime(config, hash, previous, this.compileOptions);
    let swaps: TlsSwaps;
    try {
      swaps = await this.syncListeners(config, next);
    } catch (err) {
      // Nothing of `next` was wired into what `previous` shares: give back, close, keep serving.
      await discardRuntime(next, previous);
      throw err;
    }
    next.activate(previous);
    this.runtime = next;
    this.applyTls(swaps, 'reload');
    if (previous !== null)
      for (const setting of restartOnlyChanges(previous.config, config))
        this.logger.warn({ setting }, `a change of ${setting} takes effect on restart`);
    // Listeners outlive snapshots: the running ones take the new caps here.
    this.applyGlobalCaps(next);
    if (previous !== null) void retireRuntime(previous, next, config.shutdownTimeoutMs ?? 30_000);
  }

  /**
   * Binds the config's new listeners and drains the ones it dropped. The running ones' TLS
   * files are read and checked first (renewed in place, or named anew), before anything is
   * bound: their swaps are returned, for the caller to apply once the snapshot is in.
   */
  private async syncListeners(config: BulwarkConfig, runtime: Runtime): Promise<TlsSwaps> {
    const wanted = new Set(config.listeners.map((l) => listenerKey(l)));
    const swaps: TlsSwaps = [];
    for (const listenerConfig of config.listeners) {
      const running = this.listeners.get(listenerKey(listenerConfig));
      if (running === undefined) continue;
      // Files the new config names are part of it: they must serve, or the reload is refused. The
      // same files renewed on disk are the watcher's business: broken, they do not block a reload.
      const swap = running.tlsFilesDiffer(listenerConfig.tls)
        ? running.prepareTls(listenerConfig.tls)
        : this.tryPrepareTls(running, 'reload');
      if (swap !== null) swaps.push([running, swap]);
    }
    const added: BoundListener[] = [];
    const global = runtime.limits?.global;
    try {
      for (const listenerConfig of config.listeners) {
        const key = listenerKey(listenerConfig);
        if (this.listeners.has(key)) continue;
        const listener = new BoundListener(listenerConfig, this.onRequest, this.onClientError);
        // Capped before the first connection can arrive.
        listener.applyCaps(global?.maxConnections ?? null, global?.maxConcurrentStreams ?? null);
        this.watchDrops(listener);
        await listener.listen();
        added.push(listener);
        // Watched once bound: a listener that failed to bind is dropped with nothing left running.
        listener.watchTls(() => this.refreshListenerTls(listener, 'file'), this.tlsPollMs);
      }
    } catch (err) {
      for (const listener of added) {
        listener.forceClose();
        void listener.beginDrain();
      }
      throw err;
    }
    for (const listener of added) this.listeners.set(listener.key, listener);
    for (const [key, listener] of this.listeners) {
      if (wanted.has(key)) continue;
      this.listeners.delete(key);
      void listener.beginDrain();
    }
    return swaps;
  }

  /**
   * Re-reads every TLS listener's certificate files (SIGHUP with an unchanged config) and swaps
   * those that changed. Each listener on its own: one whose files cannot serve keeps its running
   * certificate (logged with the file and returned) and blocks no other. Returns what happened.
   */
  refreshTls(trigger = 'refresh'): { changed: number; failed: { listener: string; error: TlsMaterialError }[] } {
    const result = { changed: 0, failed: [] as { listener: string; error: TlsMaterialError }[] };
    if (this.draining) return result;
    for (const listener of this.listeners.values()) {
      try {
        const swap = listener.prepareTls();
        if (swap === null) continue;
        this.applyTls([[listener, swap]], trigger);
        result.changed++;
      } catch (err) {
        this.logTlsRefusal(listener, err, trigger);
        result.failed.push({ listener: listener.key, error: err as TlsMaterialError });
      }
    }
    return result;
  }

  private refreshListenerTls(listener: BoundListener, trigger: string): void {
    if (this.draining || this.listeners.get(listener.key) !== listener) return;
    const swap = this.tryPrepareTls(listener, trigger);
    if (swap !== null) this.applyTls([[listener, swap]], trigger);
  }

  private tryPrepareTls(listener: BoundListener, trigger: string): TlsSwap | null {
    try {
      return listener.prepareTls();
    } catch (err) {
      this.logTlsRefusal(listener, err, trigger);
      return null;
    }
  }

  // Renewals land file by file (a certificate, then its key): a pair caught half-written is
  // refused here, and the next event, once both are in place, applies it.
  private logTlsRefusal(listener: BoundListener, err: unknown, trigger: string): void {
    const { code, file } = err as TlsMaterialError;
    this.logger.warn(
      { listener: listener.key, trigger, code, file, err },
      'TLS files cannot be used: keeping the running certificate',
    );
  }

  private applyTls(swaps: TlsSwaps, trigger: string): void {
    for (const [listener, swap] of swaps) {
      listener.applyTls(swap);
      this.logger.info(
        { listener: listener.key, trigger, not_after: new Date(swap.material.notAfter).toISOString() },
        'TLS certificate loaded: new connections use it',
      );
    }
  }

  /** The snapshot's global caps onto the process-wide gate and every running listener. */
  private applyGlobalCaps(runtime: Runtime): void {
    const maxConnections = runtime.limits?.global.maxConnections ?? null;
    const maxStreams = runtime.limits?.global.maxConcurrentStreams ?? null;
    if ((maxStreams ?? Infinity) !== this.streams.limit) {
      this.streams.setLimit(maxStreams);
      this.overloaded = maxStreams === null ? null : overloadedError(maxStreams);
    }
    for (const listener of this.listeners.values()) listener.applyCaps(maxConnections, maxStreams);
  }

  /** Connections dropped at `maxConnections` are otherwise invisible: one warning per listener per 10 s at most. */
  private watchDrops(listener: BoundListener): void {
    let loggedAt = -Infinity;
    let logged = 0;
    listener.server.on('drop', () => {
      const now = performance.now();
      if (now - loggedAt < 10_000) return;
      loggedAt = now;
      this.logger.warn(
        {
          listener: listener.key,
          max_connections: listener.server.maxConnections,
          dropped: listener.dropped - logged,
          dropped_total: listener.dropped,
        },
        'connections refused: listener at maxConnections',
      );
      logged = listener.dropped;
    });
  }

  /** Graceful stop: refuse new connections, let in-flight requests finish up to `deadlineMs`. */
  async stop(deadlineMs: number): Promise<boolean> {
    this.draining = true;
    this.grpcHealth.setDraining(true);
    const listeners = [...this.listeners.values()];
    this.listeners.clear();
    const closed = Promise.all(listeners.map((l) => l.beginDrain()));
    const runtime = this.runtime;
    // Once no request is in flight, what is left are idle keep-alive connections (TLS HTTP/1.1
    // ones cannot be swept like plain ones); a short grace lets last responses flush first.
    const idle = (runtime === null ? Promise.resolve() : runtime.drained()).then(() => delay(200));
    let timer: NodeJS.Timeout | undefined;
    const clean = await Promise.race([
      Promise.race([closed, idle]).then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), deadlineMs))),
    ]);
    clearTimeout(timer);
    this.grpcHealth.close();
    for (const l of listeners) l.forceClose();
    // Whatever is still open now is abandoned (deadline passed) or idle: no need to wait for it again.
    if (runtime !== null) await retireRuntime(runtime, null, 0, true);
    return clean;
  }

  private handle(req: AnyRequest, res: AnyResponse, listener: BoundListener): void {
    // Not `httpVersionMajor === 2`: Node's HTTP/1 parser takes `HTTP/2.0` lines too (admit() refuses them).
    const isH2 = req instanceof Http2ServerRequest;
    // A request pipelined behind a response that announced `Connection: close` (RFC 9112 §9.6:
    // no further request on that connection is processed): its answer could never be sent.
    if (!isH2 && this.closing.has((req as IncomingMessage).socket)) return;
    const runtime = this.runtime!;
    runtime.acquire();
    const ctx = contextFor(req, listener.secure);
    const span = this.telemetry.startRequest(ctx);
    const outcome = new Outcome();
    const grpc = isH2 && isGrpcRequest(req);
    const health = grpc && this.grpcHealth.handles(ctx.rawTarget);
    let released = false;
    let closed = false;
    let abandoned = false; // queued behind another response when the client left: nothing reached it
    let slot = false; // holds a slot of the in-flight gate
    // Every end of the exchange comes through here (upstream done, client gone, stream reset,
    // timeout, denial), possibly more than once: `released` makes each count drop exactly once.
    const release = () => {
      if (!released) {
        released = true;
        if (slot) {
          this.streams.release();
          listener.inFlight--;
        }
        releaseLimits(ctx);
        runtime.release();
      }
    };
    let reserved = false; // holds a place in the audit queue (`whenFull: block`)
    let audited = false; // the event is recorded (durable mode: before the response ended)
    let deciding = false; // an asynchronous stage is still deciding
    let finishWhenDecided = false;
    // One listener for the end of the exchange, whatever path it took: finished, failed or abandoned.
    res.once('close', () => {
      closed = true;
      release();
      // Gone while a stage decides (a key fetch, a Redis call): the decision says how it ended —
      // a denial stays a denial in the audit, not an abort.
      if (deciding) finishWhenDecided = true;
      else finish();
    });
    const finish = () => {
      const status = res.headersSent && !abandoned ? res.statusCode : 499;
      // Gone before any answer (an HTTP/2 reset lands here before the forward notices): an abort, not a served request.
      if (status === 499 && outcome.code === null) outcome.code = 'request.aborted';
      // A call whose status was never decided ended with the client's reset: CANCELLED, as the client saw it.
      if (grpc && outcome.grpcStatus === null && !health) outcome.grpcStatus = GrpcStatus.CANCELLED;
      this.telemetry.finishRequest(ctx, span, status, outcome.bytes, outcome);
      if (this.audit !== null && !audited) {
        audited = true;
        auditRequest(this.audit, this.telemetry, ctx, {
          status,
          upstream: outcome.upstream,
          bytesOut: outcome.bytes,
          code: outcome.code,
          grpcStatus: outcome.grpcStatus,
          reserved,
        });
      }
    };
    const audit = this.audit;
    // Durable audit: every answer, denials included, ends only once its event is committed
    // (HTTP: the response's last chunk and end; gRPC: the status).
    const commit =
      audit === null || !audit.durable
        ? null
        : (): Promise<void> => {
            if (audited) return Promise.resolve();
            audited = true;
            // A request refused before it held a queue place (audit.unavailable, overload) is answered
            // whether or not the log can take its event: the refusal must reach the client.
            return auditRequestDurable(
              audit,
              this.telemetry,
              ctx,
              {
                status: res.statusCode,
                upstream: outcome.upstream,
                bytesOut: outcome.bytes,
                code: outcome.code,
                grpcStatus: outcome.grpcStatus,
                reserved,
              },
              !reserved,
            );
          };
    // Held responses count as in flight until they are over (the drain on stop waits for them): the
    // upstream's end no longer frees the request's slots, its 'close' does.
    const releaseOnDone = commit === null ? release : noop;
    if (commit !== null) {
      // A gRPC call's answer leaves as a stream status (afterCommit), never through res.end.
      if (!grpc) holdEnd(res, commit);
      outcome.commit = commit;
    }
    if (!isH2 && (res as ServerResponse).socket === null) {
      // Pipelined behind a response still in progress: Node gives a queued response no 'close' of
      // its own when the connection goes first, so its exchange would run on upstream, unaudited.
      const socket = (req as IncomingMessage).socket;
      const gone = () => {
        if (closed) return;
        abandoned = true;
        res.emit('close');
      };
      socket.once('close', gone);
      res.once('close', () => socket.off('close', gone));
    }
    if (health) {
      this.grpcHealth.serve((req as Http2ServerRequest).stream, req.headers);
      return;
    }
    // The global in-flight cap, before any routing or stage: one compare, nothing allocated.
    // The gateway's own gRPC health service (above) is exempt: answered in-process, and a
    // liveness probe failing because the instance is busy would get it restarted.
    if (!this.streams.tryAcquire()) {
      this.deny(req, res, ctx, this.overloaded ?? overloadedError(this.streams.limit), isH2, grpc, outcome);
      return;
    }
    slot = true;
    listener.inFlight++;
    const settings = runtime.listeners.get(listener.key)!;
    // `whenFull: block`: refuse now rather than serve a request its audit event would miss; the
    // place its event will take is held from here, so requests admitted together cannot overrun it.
    if (audit !== null) {
      if (!audit.reserve()) {
        this.deny(req, res, ctx, new BulwarkError('audit.unavailable'), isH2, grpc, outcome);
        return;
      }
      reserved = true;
    }
    // Before admission: a request refused there (bad path, no route) is explained too.
    if (runtime.explain !== null) ctx.explain = runtime.explain.allows(req.headers);
    const admitted = admit(req, ctx, settings, runtime);
    if (admitted instanceof BulwarkError) {
      this.deny(req, res, ctx, admitted, isH2, grpc, outcome);
      return;
    }
    const route = admitted;
    ctx.stripHeaders = runtime.ownedHeaders;
    const decision = route.pipeline === null ? null : route.pipeline.run(ctx);
    const pass = route.issuer
      ? () => {
          if (!closed) this.serveIssuer(req, res, ctx, runtime, outcome);
        }
      : grpc
        ? () =>
            this.proxyGrpc(req as Http2ServerRequest, res as Http2ServerResponse, ctx, route, settings, releaseOnDone, outcome)
        : () => {
            // The client may have left while an async stage ran: nobody would read the answer, and an
            // exchange paused on a gone client would pin its upstream pool until the idle timeout.
            if (!closed) this.proxy(req, res, ctx, route, settings, isH2, releaseOnDone, span, outcome);
          };
    if (decision === null) {
      pass();
    } else if (decision instanceof BulwarkError) {
      this.deny(req, res, ctx, decision, isH2, grpc, outcome);
    } else {
      deciding = true;
      // The client left while a stage waited (a Redis acquire, a key fetch): its slots were released
      // at close, so slots a stage took since would be held for ever. Free them, record how the
      // request ended; nobody is there to answer.
      const decidedAfterClose = (code: string | null) => {
        releaseLimits(ctx);
        if (code !== null) outcome.code = code;
        if (finishWhenDecided) finish();
      };
      decision.then(
        (d) => {
          deciding = false;
          if (closed) return decidedAfterClose(d === null ? null : d.code);
          return d === null ? pass() : this.deny(req, res, ctx, d, isH2, grpc, outcome);
        },
        (err: unknown) => {
          deciding = false;
          if (closed) return decidedAfterClose('gateway.internal');
          return this.deny(req, res, ctx, new BulwarkError('gateway.internal', undefined, { cause: err }), isH2, grpc, outcome);
        },
      );
    }
  }

  private proxy(
    req: AnyRequest,
    res: AnyResponse,
    ctx: RequestContext,
    route: CompiledRoute,
    settings: ListenerSettings,
    isH2: boolean,
    release: () => void,
    span: ServerSpan,
    outcome: Outcome,
  ): void {
    const peer = ctx.peerAddress;
    const trusted = settings.trustedProxies.has(peer);
    const headers = req.headers;
    const xff = headers['x-forwarded-for'];
    const xfp = headers['x-forwarded-proto'];
    const xfh = headers['x-forwarded-host'];
    const authority = isH2
      ? ((headers[':authority'] as string | undefined) ?? headers.host ?? ctx.host)
      : (headers.host ?? ctx.host);
    const upstreamHeaders = upstreamRequestHeaders(
      req.rawHeaders,
      isH2 ? undefined : headers.connection,
      {
        host: authority,
        requestId: ctx.requestId,
        xForwardedFor: trusted && typeof xff === 'string' && xff !== '' ? `${xff}, ${peer}` : peer,
        xForwardedProto: trusted && typeof xfp === 'string' && xfp !== '' ? xfp : ctx.secure ? 'https' : 'http',
        xForwardedHost: trusted && typeof xfh === 'string' && xfh !== '' ? xfh : authority,
      },
      ctx.stripHeaders,
      ctx.upstreamHeaders,
    );
    let body: AnyRequest | BodyLimiter | null = null;
    if (hasBody(req, isH2)) {
      // Every stage has admitted the request: now the client may send what it held back (the
      // listener takes over `Expect: 100-continue` from Node, which would have invited it at once).
      if (req.headers['expect'] !== undefined) res.writeContinue();
      const limit = route.maxBodyBytes ?? settings.limits.maxBodyBytes;
      if (headers['content-length'] !== undefined) body = req;
      else {
        const limiter = new BodyLimiter(limit);
        req.pipe(limiter);
        body = limiter;
      }
    }
    const upstream = route.upstream;
    if (!isH2 && wantsUpgrade(req)) {
      // Admitted by every stage, but upgrades (WebSocket…) are not proxied: say so, not a silent downgrade.
      this.respondProblem(req, res, ctx, new BulwarkError('request.upgrade_unsupported'), isH2, outcome);
      return;
    }
    if (upstream === null) {
      // Only a programmatic caller can get here: `serve` refuses routes without an upstream.
      this.respondProblem(req, res, ctx, new BulwarkError('upstream.no_healthy_endpoint'), isH2, outcome);
      return;
    }
    outcome.upstream = upstream.name;
    const response = res as unknown as ClientResponse;
    const method = ctx.method;
    forward(
      { ctx, method, headers: upstreamHeaders, body, upstream, timeouts: route.timeouts, telemetry: this.telemetry, span },
      response,
      {
        fail: (error) => this.respondProblem(req, res, ctx, error, isH2, outcome),
        done: (_status, error, bytes) => {
          release();
          if (outcome.bytes === -1) outcome.bytes = bytes;
          if (error !== null) {
            outcome.code = error.code;
            if (error.status >= 500) {
              this.telemetry.requestLogger(ctx).warn(
                {
                  route: route.id,
                  upstream: upstream.name,
                  code: error.code,
                  reason: error.context?.['reason'],
                  err: error.cause,
                },
                'upstream failure',
              );
            }
          }
        },
      },
    );
  }

  /** Routes with `issuer: true`: the built-in token service answers in-process. */
  private serveIssuer(req: AnyRequest, res: AnyResponse, ctx: RequestContext, runtime: Runtime, outcome: Outcome): void {
    // Config checks guarantee an issuer section for such routes; a programmatic caller may not have one.
    const issuer = runtime.issuer;
    outcome.upstream = 'issuer';
    if (issuer === null) {
      this.respondProblem(
        req,
        res,
        ctx,
        new BulwarkError('upstream.no_healthy_endpoint'),
        req instanceof Http2ServerRequest,
        outcome,
      );
      return;
    }
    void respondToAdmitted(issuer, ctx, req, res as unknown as ServerResponse).then((response) => {
      if (response.code !== null) outcome.code = response.code;
      outcome.bytes = ctx.method === 'HEAD' ? 0 : Buffer.byteLength(response.body);
    });
  }

  /** A denial in the client's protocol: a gRPC status for gRPC calls, an RFC 7807 problem otherwise. */
  private deny(
    req: AnyRequest,
    res: AnyResponse,
    ctx: RequestContext,
    error: BulwarkError,
    isH2: boolean,
    grpc: boolean,
    outcome: Outcome,
  ): void {
    if (!grpc) return this.respondProblem(req, res, ctx, error, isH2, outcome);
    outcome.code = error.code;
    if (res.headersSent || res.destroyed) return;
    const status = grpcStatusFor(error);
    // Durable audit: the event, with the status about to be sent, is committed first.
    if (outcome.commit !== null) outcome.grpcStatus = status;
    afterCommit(
      outcome.commit,
      () => {
        if (!res.headersSent && !res.destroyed && sendGrpcDenial(res as Http2ServerResponse, error, ctx.requestId))
          outcome.grpcStatus = status;
      },
      () => {
        if (!res.destroyed) (res as Http2ServerResponse).stream.close(h2constants.NGHTTP2_INTERNAL_ERROR);
      },
    );
  }

  private proxyGrpc(
    req: Http2ServerRequest,
    res: Http2ServerResponse,
    ctx: RequestContext,
    route: CompiledRoute,
    settings: ListenerSettings,
    release: () => void,
    outcome: Outcome,
  ): void {
    const upstream = route.upstream;
    if (upstream === null) return this.deny(req, res, ctx, new BulwarkError('upstream.no_healthy_endpoint'), true, true, outcome);
    outcome.upstream = upstream.name;
    const peer = ctx.peerAddress;
    const xff = req.headers['x-forwarded-for'];
    const trusted = settings.trustedProxies.has(peer) && typeof xff === 'string' && xff !== '';
    forwardGrpc(req, res, ctx, {
      pool: grpcPoolFor(upstream),
      maxMessageBytes: route.maxBodyBytes ?? settings.limits.maxBodyBytes,
      maxTimeoutMs: route.timeouts.totalMs,
      stripMetadata: null,
      extraHeaders: null,
      forwarded: { for: trusted ? `${xff}, ${peer}` : peer, proto: ctx.secure ? 'https' : 'http' },
      onStatus: (status) => (outcome.grpcStatus = status),
      beforeStatus: outcome.commit ?? undefined,
      onDone: (_status, error) => {
        release();
        if (error !== undefined) {
          outcome.code = error.code;
          if (error.status >= 500)
            this.telemetry
              .requestLogger(ctx)
              .warn({ route: route.id, upstream: upstream.name, code: error.code }, 'upstream failure');
        }
      },
    });
  }

  private respondProblem(
    req: AnyRequest,
    res: AnyResponse,
    ctx: RequestContext,
    error: BulwarkError,
    isH2: boolean,
    outcome: Outcome,
  ): void {
    outcome.code = error.code;
    if (error.status >= 500 && error.code === 'gateway.internal') {
      this.telemetry.requestLogger(ctx).error({ err: error.cause, context: error.context }, 'internal error');
    }
    if (res.headersSent || res.destroyed || error.code === 'request.aborted') {
      if (!res.destroyed && !res.writableEnded) res.destroy();
      return;
    }
    const { status, headers, body } = problemResponse(error, ctx);
    if (ctx.explain) headers[EXPLANATION_HEADER] = explanationHeaderValue(ctx, error);
    outcome.bytes = ctx.method === 'HEAD' ? 0 : (headers['content-length'] as number);
    // A body we never read would otherwise be parsed as the next request (or drained for ever).
    // (A bodyless request is not `complete` yet while its 'request' event runs: nothing to skip.)
    if (!isH2 && ((!req.complete && hasBody(req, false)) || this.draining)) {
      headers['connection'] = 'close';
      // (No socket: the client is gone already, nothing can follow on it.)
      const socket = (req as IncomingMessage).socket as Socket | null;
      if (socket !== null) this.closing.add(socket);
    }
    res.writeHead(status, headers);
    if (ctx.method === 'HEAD') res.end();
    else res.end(body);
    if (!isH2 && !req.complete) {
      // Stop reading an unwanted body; the socket closes after the response.
      (req as IncomingMessage).resume();
    }
  }

  private clientError(error: NodeJS.ErrnoException & { code?: string }, socket: Socket): void {
    if (error.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    // A response to an earlier (pipelined) request is already on the wire: a problem written now
    // would land inside its body. Node's own default handler makes the same check on the same field.
    const current = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
    if (current?.headersSent === true) {
      socket.destroy();
      this.logger.debug({ parser: error.code }, 'client error during a response: connection closed');
      return;
    }
    let problem: BulwarkError;
    switch (error.code) {
      case 'HPE_HEADER_OVERFLOW':
        problem = new BulwarkError('request.headers_too_large');
        break;
      case 'ERR_HTTP_REQUEST_TIMEOUT':
        problem = new BulwarkError('request.timeout');
        break;
      case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      default:
        problem = new BulwarkError('request.malformed');
    }
    this.telemetry.metrics.recordParserRejection(problem.code);
    const body = renderProblem(problem, undefined);
    const reason =
      problem.status === 431 ? 'Request Header Fields Too Large' : problem.status === 408 ? 'Request Timeout' : 'Bad Request';
    socket.end(
      `HTTP/1.1 ${problem.status} ${reason}\r\ncontent-type: ${PROBLEM_CONTENT_TYPE}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
    this.logger.debug({ code: problem.code, parser: error.code }, 'client error');
  }
}

/** Server-level listener settings, fixed when its socket server is created. */
const BOUND_LIMITS = ['maxHeaderBytes', 'maxHeaders', 'headersTimeoutMs', 'requestTimeoutMs', 'idleTimeoutMs'] as const;

/**
 * Settings a reload cannot apply to what is already running, so an operator is told rather
 * than left to believe them applied: the audit log (its WAL, chain and sinks are open), and
 * a running listener's socket-level limits (a listener on a new address or port takes them at
 * once). TLS files are not among them: a reload swaps the certificate.
 */
export function restartOnlyChanges(before: BulwarkConfig, after: BulwarkConfig): string[] {
  const changes: string[] = [];
  if (JSON.stringify(before.audit ?? null) !== JSON.stringify(after.audit ?? null)) changes.push('`audit`');
  for (const [i, listener] of after.listeners.entries()) {
    const old = before.listeners.find((l) => listenerKey(l) === listenerKey(listener));
    if (old === undefined) continue;
    for (const limit of BOUND_LIMITS)
      if (old.limits?.[limit] !== listener.limits?.[limit]) changes.push(`\`listeners[${i}].limits.${limit}\``);
  }
  return changes;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * An HTTP/1.1 upgrade request (RFC 9110 §7.8): `Upgrade` named in `Connection`. `h2c` is left
 * out: a server may ignore an upgrade, and that one is served as the HTTP/1.1 request it also is.
 */
function wantsUpgrade(req: AnyRequest): boolean {
  const upgrade = req.headers['upgrade'];
  const connection = req.headers['connection'];
  if (upgrade === undefined || connection === undefined) return false;
  if (!/(?:^|,)\s*upgrade\s*(?:,|$)/i.test(connection)) return false;
  return !/^\s*h2c\s*$/i.test(upgrade);
}

function hasBody(req: AnyRequest, isH2: boolean): boolean {
  if (isH2) return !(req as Http2ServerRequest).stream.endAfterHeaders;
  const length = req.headers['content-length'];
  if (length !== undefined) return length !== '0';
  return req.headers['transfer-encoding'] !== undefined;
}
