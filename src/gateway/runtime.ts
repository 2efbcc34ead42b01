import { compileAuthn, createAuthnStage, forwardedHeaderNames, type CompiledAuthn } from '../authn/index.js';
import { compileAuthz, createAuthzStage, type CompiledAuthz } from '../authz/index.js';
import type {
  BulwarkConfig,
  ListenerConfig,
  ListenerLimitsConfig,
  RouteConfig,
  UpstreamTimeoutsConfig,
} from '../config/schema.js';
import type { RequestContext } from '../core/context.js';
import { Pipeline } from '../core/pipeline.js';
import { withDashSpellings } from '../core/header-names.js';
import type { Stage } from '../core/stage.js';
import { compilePathPolicy, type PathPolicy } from '../core/target.js';
import { closeGrpcPool } from '../grpc/index.js';
import { createRevocationList, type RevocationList } from '../revocation/index.js';
import { compileLimits, createLimitStage, type CompiledLimits } from '../limits/index.js';
import { Issuer, IssuerHttp, type IssuerOptions } from '../issuer/index.js';
import { timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { availableParallelism } from 'node:os';
import { echoOrigin } from './echo.js';
import { Router } from './router.js';
import { TrustedProxies } from './trusted-proxies.js';
import { DEFAULT_UPSTREAM_TIMEOUTS, Upstream } from './upstream.js';

export const DEFAULT_LISTENER_LIMITS: Readonly<ListenerLimitsConfig> = Object.freeze({
  maxHeaderBytes: 16_384,
  maxHeaders: 100,
  maxBodyBytes: 10_485_760,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  idleTimeoutMs: 60_000,
});

/** A route with everything the request path needs already resolved. */
export class CompiledRoute {
  readonly id: string;
  readonly match: RouteConfig['match'];
  /** Null in library mode, where the application handles the request. */
  readonly upstream: Upstream | null;
  /** Null when the route has no stages, so the hot path skips a call. */
  readonly pipeline: Pipeline | null;
  readonly maxBodyBytes: number | null;
  readonly timeouts: Readonly<UpstreamTimeoutsConfig>;
  /** Served by the built-in token issuer instead of an upstream. */
  readonly issuer: boolean;

  constructor(config: RouteConfig, upstream: Upstream | null, stages: readonly Stage[]) {
    this.id = config.id;
    this.issuer = config.issuer === true;
    this.match = config.match;
    this.upstream = upstream;
    this.pipeline = stages.length === 0 ? null : new Pipeline(stages);
    this.maxBodyBytes = config.maxBodyBytes ?? null;
    const base = upstream?.timeouts ?? DEFAULT_UPSTREAM_TIMEOUTS;
    this.timeouts = config.timeouts === undefined ? base : Object.freeze({ ...base, ...config.timeouts });
  }
}

/** Per-listener settings that may change on reload without rebinding the socket. */
export class ListenerSettings {
  readonly key: string;
  readonly pathPolicy: PathPolicy;
  readonly trustedProxies: TrustedProxies;
  readonly limits: Readonly<ListenerLimitsConfig>;

  constructor(config: ListenerConfig) {
    this.key = listenerKey(config);
    this.pathPolicy = compilePathPolicy(config.paths);
    this.trustedProxies = new TrustedProxies(config.trustedProxies ?? []);
    this.limits = Object.freeze({ ...DEFAULT_LISTENER_LIMITS, ...config.limits });
  }
}

export function listenerKey(config: Pick<ListenerConfig, 'address' | 'port' | 'protocol'>): string {
  return `${config.protocol ?? 'http'}://${config.address ?? '0.0.0.0'}:${config.port}`;
}

/**
 * One immutable compiled config snapshot. Requests pin the snapshot they
 * started on (acquire/release), so a reload never changes a request midway and
 * an old snapshot's pools close only once its last request is done.
 */
/** `admin.explainHeader`: the request header and token that unlock a request's explanation. */
export class ExplainGate {
  readonly header: string;
  private readonly token: Buffer;

  constructor(header: string, token: string) {
    this.header = header.toLowerCase();
    this.token = Buffer.from(token, 'utf8');
  }

  /** Whether the request carries the token (compared in constant time; any other value is ignored). */
  allows(headers: IncomingHttpHeaders): boolean {
    const value = headers[this.header];
    if (typeof value !== 'string') return false;
    const given = Buffer.from(value, 'latin1');
    return given.length === this.token.length && timingSafeEqual(given, this.token);
  }
}

export class Runtime {
  readonly config: BulwarkConfig;
  readonly hash: string;
  readonly router: Router<CompiledRoute>;
  readonly upstreams: ReadonlyMap<string, Upstream>;
  readonly listeners: ReadonlyMap<string, ListenerSettings>;
  readonly authn: CompiledAuthn | null;
  readonly authz: CompiledAuthz | null;
  readonly limits: CompiledLimits | null;
  /** Revoked credentials, consulted by authn; one list per process, carried across reloads. */
  readonly revocation: RevocationList | null;
  /** The token issuer (routes with `issuer: true`); carried across reloads while its config is unchanged. */
  readonly issuer: IssuerHttp | null;
  /** Identity headers the gateway owns: the client's copies are removed on every route, public ones too. */
  readonly ownedHeaders: ReadonlySet<string> | null;
  /** `admin.explainHeader`: who may see their request's explanation; null when off. */
  readonly explain: ExplainGate | null;
  private active: number;
  private idle: Promise<void> | null;
  private onIdle: (() => void) | null;

  constructor(
    config: BulwarkConfig,
    hash: string,
    upstreams: Map<string, Upstream>,
    routes: CompiledRoute[],
    security: {
      authn: CompiledAuthn | null;
      authz: CompiledAuthz | null;
      limits?: CompiledLimits | null;
      revocation?: RevocationList | null;
      issuer?: IssuerHttp | null;
    } = {
      authn: null,
      authz: null,
    },
  ) {
    this.config = config;
    this.hash = hash;
    this.upstreams = upstreams;
    this.authn = security.authn;
    this.authz = security.authz;
    this.limits = security.limits ?? null;
    this.revocation = security.revocation ?? null;
    this.issuer = security.issuer ?? null;
    const explain = config.admin?.explainHeader;
    this.explain = explain === undefined ? null : new ExplainGate(explain.name ?? 'x-bulwark-explain', explain.token);
    const forwarded = security.authn === null ? null : forwardedHeaderNames(security.authn);
    // The explain token is a secret: no upstream ever sees it. Without it, the authn stage's own set
    // (the same object: the stage then adds nothing per request).
    this.ownedHeaders =
      this.explain !== null
        ? withDashSpellings([...(forwarded ?? []), this.explain.header])
        : forwarded !== null && forwarded.size > 0
          ? forwarded
          : null;
    this.router = new Router(routes);
    this.listeners = new Map(config.listeners.map((l) => [listenerKey(l), new ListenerSettings(l)]));
    this.active = 0;
    this.idle = null;
    this.onIdle = null;
  }

  /** Detaches this snapshot's token cache from the revocation list (set by `activate`). */
  private detachCache: (() => void) | null = null;

  /**
   * Commits to this snapshot (after everything that could fail did not): wires its revocation
   * list into its authn and issuer, which may be carried over from `previous` and still serving
   * it until the swap. A config that drops `revocation` leaves no authn on the old list; a
   * replaced token cache is detached from a list that carries over.
   */
  activate(previous: Runtime | null): void {
    const { authn, revocation } = this;
    if (authn !== null) {
      authn.revocation = revocation;
      if (revocation === null) this.detachCache = null;
      else if (authn === previous?.authn && revocation === previous.revocation) this.detachCache = previous.detachCache;
      else this.detachCache = revocation.attachCache(authn.cache);
    }
    if (previous !== null && previous.authn !== authn) previous.detachCache?.();
    this.issuer?.issuer.attachRevocation(revocation);
  }

  acquire(): void {
    this.active++;
  }

  release(): void {
    if (--this.active === 0 && this.onIdle !== null) {
      this.onIdle();
      this.idle = null;
      this.onIdle = null;
    }
  }

  get inFlight(): number {
    return this.active;
  }

  /** Resolves when the last request pinned to this snapshot has finished. */
  drained(): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    this.idle ??= new Promise((resolve) => {
      this.onIdle = resolve;
    });
    return this.idle;
  }
}

/**
 * Compiles a validated config into a snapshot. Upstreams whose settings did not
 * change are carried over from `previous`, so a reload keeps warm connections.
 */
export interface CompileOptions {
  /** `false`: leave the issuer out (explain, dry runs: no key files or store touched). */
  readonly issuer?: false | Pick<IssuerOptions, 'onEvent'>;
  /** See `CompileLimitsOptions.onStoreBreaker`. */
  readonly onStoreBreaker?: (store: string, open: boolean) => void;
}

export async function compileRuntime(
  config: BulwarkConfig,
  hash: string,
  previous: Runtime | null,
  options: CompileOptions = {},
): Promise<Runtime> {
  // What this compile created (not carried over): closed again if anything after it fails. Until
  // the very end nothing shared with `previous` is touched, so a failed reload changes nothing
  // the running snapshot relies on (its authn's revocation list, its issuer's).
  let authn: CompiledAuthn | null = null;
  let revocation: RevocationList | null = null;
  let issuer: IssuerHttp | null = null;
  let limits: CompiledLimits | null = null;
  try {
    // Security state is carried over when its config did not change: JWKS caches stay warm, no refetch storm on reload.
    authn =
      config.authn === undefined
        ? null
        : previous?.authn != null && sameJson(previous.config.authn, config.authn)
          ? previous.authn
          : compileAuthn(config.authn);
    if (authn !== null && authn !== previous?.authn) await authn.ready();
    // The revocation list outlives snapshots while its store is unchanged: a reload must never forget one.
    if (config.revocation !== undefined) {
      if (previous?.revocation != null && sameJson(previous.config.revocation?.store, config.revocation.store))
        revocation = previous.revocation;
      else {
        revocation = createRevocationList(config.revocation);
        await revocation.start();
      }
    }
    if (config.issuer !== undefined && options.issuer !== false) {
      if (previous?.issuer != null && sameJson(previous.config.issuer, config.issuer)) issuer = previous.issuer;
      else issuer = new IssuerHttp(await Issuer.create(config.issuer, { revocation, ...options.issuer }));
    }
    const authz = config.authz === undefined ? null : compileAuthz(config.authz);
    const usesLimits = config.rateLimits !== undefined || config.routes.some((r) => r.rateLimit !== undefined);
    // Unchanged stores (buckets, leases, Redis connections) carry over: a reload never refills a bucket.
    limits = usesLimits
      ? compileLimits(config.rateLimits, {
          workers: config.workers === 'auto' ? availableParallelism() : (config.workers ?? 1),
          ...(previous?.limits != null ? { previous: previous.limits } : {}),
          ...(options.onStoreBreaker !== undefined ? { onStoreBreaker: options.onStoreBreaker } : {}),
        })
      : null;
    const routeAuthn = authn;
    const routeLimits = limits;
    const stagesFor = (route: RouteConfig): Stage[] => {
      const stages: Stage[] = [];
      if (!('public' in route.auth)) {
        if (routeAuthn === null)
          throw new TypeError(`route ${route.id}: authentication required but no authn providers are configured`);
        const stage = createAuthnStage(route.auth, routeAuthn);
        if (stage !== null) stages.push(stage);
      }
      if (route.authz !== undefined) {
        if (authz === null) throw new TypeError(`route ${route.id}: authz policies referenced but no authz section`);
        const stage = createAuthzStage(route.authz, authz);
        if (stage !== null) stages.push(stage);
      }
      if (route.rateLimit !== undefined) {
        if (routeLimits === null) throw new TypeError(`route ${route.id}: rate limits referenced but no rateLimits section`);
        const stage = createLimitStage(route.rateLimit, routeLimits, clientAddressOf);
        if (stage !== null) stages.push(stage);
      }
      return stages;
    };
    const upstreams = new Map<string, Upstream>();
    for (const [name, upstreamConfig] of Object.entries(config.upstreams)) {
      const old = previous?.upstreams.get(name);
      if (old !== undefined && JSON.stringify(previous!.config.upstreams[name]) === JSON.stringify(upstreamConfig)) {
        upstreams.set(name, old);
        continue;
      }
      const origins = upstreamConfig.builtin === 'echo' ? [await echoOrigin()] : (upstreamConfig.endpoints ?? []);
      upstreams.set(name, new Upstream(name, upstreamConfig, origins));
    }
    const routes = config.routes.map((route) => {
      const upstream = route.upstream === undefined ? null : upstreams.get(route.upstream);
      // Validation guarantees the reference; this guards programmatic callers.
      if (upstream === undefined) throw new TypeError(`route ${route.id}: unknown upstream ${route.upstream}`);
      return new CompiledRoute(route, upstream, stagesFor(route));
    });
    // Nothing shared is wired yet: `activate` does it once the caller commits to this snapshot.
    return new Runtime(config, hash, upstreams, routes, { authn, authz, limits, revocation, issuer });
  } catch (err) {
    if (issuer !== null && issuer !== previous?.issuer) await issuer.issuer.close().catch(() => {});
    if (revocation !== null && revocation !== previous?.revocation) await revocation.close().catch(() => {});
    if (authn !== null && authn !== previous?.authn) authn.close();
    if (limits !== null && limits !== previous?.limits) await limits.discard();
    throw err;
  }
}

/**
 * Undoes a compiled snapshot that will never serve (its reload failed after the compile, e.g.
 * a new listener could not bind): what it created is closed, what it borrowed from `previous`
 * goes back untouched. `activate` must not have run.
 */
export async function discardRuntime(next: Runtime, previous: Runtime | null): Promise<void> {
  const shared = new Set(previous === null ? [] : previous.upstreams.values());
  for (const upstream of next.upstreams.values()) if (!shared.has(upstream)) upstream.destroy();
  if (next.issuer !== null && next.issuer !== previous?.issuer) await next.issuer.issuer.close().catch(() => {});
  if (next.revocation !== null && next.revocation !== previous?.revocation) await next.revocation.close().catch(() => {});
  if (next.authn !== null && next.authn !== previous?.authn) next.authn.close();
  if (next.limits !== null && next.limits !== previous?.limits) await next.limits.discard();
}

/** Closes what `previous` owned and `next` does not share, once `previous` drained. */
export async function retireRuntime(previous: Runtime, next: Runtime | null, graceMs: number, force = false): Promise<void> {
  const shared = new Set(next === null ? [] : next.upstreams.values());
  const owned = [...previous.upstreams.values()].filter((u) => !shared.has(u));
  const authn = previous.authn !== null && previous.authn !== next?.authn ? previous.authn : null;
  const limits = previous.limits !== null && previous.limits !== next?.limits ? previous.limits : null;
  if (previous.revocation !== null && previous.revocation !== next?.revocation) await previous.revocation.close();
  if (previous.issuer !== null && previous.issuer !== next?.issuer) await previous.issuer.issuer.close();
  if (owned.length === 0 && authn === null && limits === null) return;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), graceMs);
    timer.unref();
  });
  const late = force || (await Promise.race([previous.drained().then(() => false), timedOut]));
  clearTimeout(timer);
  for (const upstream of owned) {
    await closeGrpcPool(upstream, late);
    if (late) upstream.destroy();
    else await upstream.close();
  }
  authn?.close();
  await limits?.close();
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

const clientAddressOf = (ctx: RequestContext): string => ctx.clientAddress;
