/**
 * Prometheus metrics: every series Bulwark exports is declared here, in one
 * place (Envoy's habit), with bounded labels only: route ids, upstream and
 * endpoint names from the config, stable reason codes, never raw paths,
 * subjects or addresses.
 *
 * Hot path: `recordRequest` and `recordUpstream` look their label cells up in
 * nested caches keyed by the values themselves (no key string, no label object
 * per request) and update plain fields (fast-metrics.ts explains why not
 * prom-client's children there). prom-client renders everything, keeps the
 * low-rate families (reloads, key sets) and the process metrics. Totals other
 * modules already keep (connections, audit queue) are read by callbacks at
 * scrape time, so they cost nothing per request.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics, type Histogram } from 'prom-client';
import type { DecisionRecord, RequestContext } from '../core/context.js';
import { FastCounter, FastHistogram, type CounterCell, type HistogramCell } from './fast-metrics.js';
import { RuntimeMetrics } from './runtime-metrics.js';
import type { ResolvedTelemetryConfig } from './schema.js';
import { DEFAULT_DURATION_BUCKETS } from './schema.js';

/** Label value for anything past a family's cardinality cap: a guard, not a bucket anyone should see. */
export const OVERFLOW_LABEL = 'other';
/** Route label of requests no route matched (404s, malformed targets): never their path. */
export const UNMATCHED_ROUTE = 'unmatched';

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'] as const;
const METHOD_INDEX: ReadonlyMap<string, number> = new Map(METHODS.map((m, i) => [m, i]));
const OTHER_METHOD = METHODS.length;
const METHOD_LABELS: readonly string[] = [...METHODS, '_OTHER'];
const STATUS_CLASSES = ['none', '1xx', '2xx', '3xx', '4xx', '5xx'] as const;
/** A stable reason code (`jwt.expired`); anything else is not a label value. */
const CODE = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/;

/** gRPC status names by code (the `grpc_code` label, as grpc-go and Envoy name them). */
const GRPC_CODE_NAMES: readonly string[] = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];

export function statusClassIndex(status: number): number {
  return status >= 100 && status < 600 ? Math.floor(status / 100) : 0;
}

export function statusClass(status: number): string {
  return STATUS_CLASSES[statusClassIndex(status)]!;
}

/** Limiter verdicts in the words operators use for them. */
const RATELIMIT_OUTCOMES: Readonly<Record<DecisionRecord['outcome'], string>> = {
  allow: 'admit',
  deny: 'reject',
  shadow_deny: 'shadow_reject',
  skip: 'skip',
};

/** Stage ids whose DecisionRecords feed the per-stage counters (src/authn, src/authz, src/limits). */
export const STAGE_IDS = { authn: 'authn', authz: 'authz', ratelimit: 'ratelimit' } as const;

/** Structural copy of src/authn's AuthnEvent, so this module does not depend on authn internals. */
export interface KeySourceEvent {
  readonly type: 'keys_loaded' | 'keys_error' | 'keys_expired' | (string & {});
  readonly provider: string;
  readonly source?: string;
  readonly changed?: boolean;
}

/** Scrape-time readings other modules own; each callback may return null when it has nothing to say. */
export interface MetricSources {
  /** Open client connections per listener key. */
  connections?: () => Iterable<readonly [listener: string, count: number]> | null;
  /** In-flight requests (HTTP/1.1 requests, HTTP/2 streams) per listener key. */
  streams?: () => Iterable<readonly [listener: string, count: number]> | null;
  /**
   * Shared rate-limit stores (Redis, the primary's buckets over IPC) by name: round trips,
   * failures among them, whether the breaker is open, breaker openings. Totals since the store
   * was built (a store carries over reloads while its settings do not change).
   */
  limitStores?: () => Iterable<
    readonly [store: string, stats: { kind: string; calls: number; failures: number; up: boolean; breakerOpened: number }]
  > | null;
  /** When each TLS listener's certificate expires (epoch seconds), by listener key. */
  certificates?: () => Iterable<readonly [listener: string, notAfterSeconds: number]> | null;
  /** The audit pipeline's totals. `written`/`dropped` are monotonic totals since start. */
  audit?: () => { queueDepth: number; written: number; dropped: number; walBytes: number } | null;
}

export interface MetricsOptions {
  /** The `worker` label of per-process runtime metrics: cluster worker id, '0' for the primary or a single process. */
  worker?: string;
  /** Most distinct values one label may take in a family before it folds into `other`. */
  maxLabelValues?: number;
}

/** Per upstream endpoint: request cells by status class (created on first use), latency, errors by reason. */
class UpstreamSeries {
  readonly requests: (CounterCell | undefined)[];
  readonly requestCell: (statusClass: string) => CounterCell;
  readonly duration: HistogramCell;
  readonly errors: Children<CounterCell>;
  constructor(requestCell: (statusClass: string) => CounterCell, duration: HistogramCell, errors: Children<CounterCell>) {
    this.requests = new Array<CounterCell | undefined>(STATUS_CLASSES.length);
    this.requestCell = requestCell;
    this.duration = duration;
    this.errors = errors;
  }
}

/** Per route: histogram children by [method][status class], created on first use. */
class RouteSeries {
  readonly label: string;
  readonly duration: (HistogramCell | undefined)[][];
  readonly bytes: CounterCell;
  constructor(label: string, bytes: CounterCell) {
    this.label = label;
    this.duration = METHOD_LABELS.map(() => new Array<HistogramCell | undefined>(STATUS_CLASSES.length));
    this.bytes = bytes;
  }
}

/**
 * Label children by one label value, with a cap on distinct values: past the
 * cap, new values share the `other` child, so a bug upstream of us (an
 * unbounded value) can never grow the registry without bound.
 */
class Children<C> {
  private readonly map = new Map<string, C>();
  private readonly cap: number;
  private readonly create: (value: string) => C;
  constructor(cap: number, create: (value: string) => C) {
    this.cap = cap;
    this.create = create;
  }
  get(value: string): C {
    let child = this.map.get(value);
    if (child === undefined) {
      if (this.map.size >= this.cap && value !== OVERFLOW_LABEL) return this.get(OVERFLOW_LABEL);
      child = this.create(value);
      this.map.set(value, child);
    }
    return child;
  }
}

/** Two label values deep: `get(a, b)` without building a key string. */
class Children2<C> {
  private readonly outer: Children<Children<C>>;
  constructor(cap: number, create: (a: string, b: string) => C) {
    this.outer = new Children(cap, (a) => new Children(cap, (b) => create(a, b)));
  }
  get(a: string, b: string): C {
    return this.outer.get(a).get(b);
  }
}

export class BulwarkMetrics {
  readonly registry: Registry;
  readonly enabled: boolean;
  private readonly cap: number;
  private readonly routes = new Map<string, RouteSeries>();
  private readonly requestDuration: FastHistogram;
  private readonly responseBytes: FastCounter;
  private readonly rejections: Children2<CounterCell>;
  private readonly grpcCalls: Children2<CounterCell>;
  private readonly authn: Children2<Children<CounterCell>>;
  private readonly authz: Children2<Children<CounterCell>>;
  private readonly ratelimit: Children2<CounterCell>;
  private readonly upstreams: Children2<UpstreamSeries>;
  private readonly jwksFetches: Counter<string>;
  private readonly jwksRotations: Counter<string>;
  private readonly jwksExpired: Counter<string>;
  private readonly configReloads: Counter<string>;
  private readonly configReloadTime: Gauge<string>;
  private readonly spans: Counter<string>;
  private sources: MetricSources = {};
  private readonly runtime: RuntimeMetrics | null;

  constructor(config: ResolvedTelemetryConfig['metrics'], options: MetricsOptions = {}) {
    const registry = new Registry();
    this.registry = registry;
    this.enabled = config.enabled;
    this.cap = options.maxLabelValues ?? 1000;
    const registers = [registry];
    const buckets = [...(config.requestDurationBuckets.length > 0 ? config.requestDurationBuckets : DEFAULT_DURATION_BUCKETS)];
    const cap = this.cap;

    // --- HTTP server --------------------------------------------------------
    const register = <M extends FastCounter | FastHistogram>(metric: M): M => {
      // prom-client renders any object with its metric shape (name, help, type, get()).
      registry.registerMetric(metric as unknown as Histogram<string>);
      return metric;
    };
    this.requestDuration = register(
      new FastHistogram(
        'bulwark_http_request_duration_seconds',
        'Requests served, from arrival to the last response byte, by route id, method and status class.',
        ['route', 'method', 'status_class'],
        buckets,
      ),
    );
    this.responseBytes = register(
      new FastCounter('bulwark_http_response_body_bytes_total', 'Response body bytes sent to clients, by route id.', ['route']),
    );
    const rejections = register(
      new FastCounter(
        'bulwark_http_rejections_total',
        'Requests that ended with a Bulwark reason code (denials, malformed requests, upstream failures), by route id and code.',
        ['route', 'code'],
      ),
    );
    this.rejections = new Children2(cap, (route, code) => rejections.child(route, CODE.test(code) ? code : OVERFLOW_LABEL));
    // Every gRPC call is an HTTP 200 whatever its outcome: the status class cannot tell a failing call.
    const grpcCalls = register(
      new FastCounter(
        'bulwark_grpc_requests_total',
        'gRPC calls by route id and the gRPC status the client got (OK, NOT_FOUND, UNAVAILABLE, …).',
        ['route', 'grpc_code'],
      ),
    );
    this.grpcCalls = new Children2(cap, (route, code) => grpcCalls.child(route, code));

    // --- pipeline stages (from each request's DecisionRecords) ---------------
    const authn = register(
      new FastCounter(
        'bulwark_authn_outcomes_total',
        'Authentication verdicts by provider, outcome (allow, deny, skip, shadow_deny) and reason code.',
        ['provider', 'outcome', 'reason'],
      ),
    );
    this.authn = new Children2(
      cap,
      (provider, outcome) =>
        new Children(cap, (reason) => authn.child(provider, outcome, CODE.test(reason) ? reason : OVERFLOW_LABEL)),
    );
    const authz = register(
      new FastCounter(
        'bulwark_authz_decisions_total',
        'Authorization verdicts by policy, rule (`none` for deny by default) and outcome (allow, deny, shadow_deny).',
        ['policy', 'rule', 'outcome'],
      ),
    );
    this.authz = new Children2(cap, (policy, rule) => new Children(cap, (outcome) => authz.child(policy, rule, outcome)));
    const ratelimit = register(
      new FastCounter(
        'bulwark_ratelimit_decisions_total',
        'Rate and concurrency limit verdicts by policy and outcome (admit, reject, shadow_reject).',
        ['policy', 'outcome'],
      ),
    );
    this.ratelimit = new Children2(cap, (policy, outcome) => ratelimit.child(policy, outcome));

    // --- upstreams -----------------------------------------------------------
    const upstreamRequests = register(
      new FastCounter(
        'bulwark_upstream_requests_total',
        'Upstream attempts by upstream, endpoint (configured origin) and response status class (`none`: no response).',
        ['upstream', 'endpoint', 'status_class'],
      ),
    );
    const upstreamErrors = register(
      new FastCounter(
        'bulwark_upstream_errors_total',
        'Upstream attempts that failed without a complete response, by upstream, endpoint and reason code.',
        ['upstream', 'endpoint', 'reason'],
      ),
    );
    const upstreamDuration = register(
      new FastHistogram(
        'bulwark_upstream_request_duration_seconds',
        'Upstream attempts, from dispatch to the end of the response, by upstream and endpoint.',
        ['upstream', 'endpoint'],
        buckets,
      ),
    );
    this.upstreams = new Children2(
      cap,
      (upstream, endpoint) =>
        new UpstreamSeries(
          (statusClass) => upstreamRequests.child(upstream, endpoint, statusClass),
          upstreamDuration.child(upstream, endpoint),
          new Children(cap, (reason) => upstreamErrors.child(upstream, endpoint, CODE.test(reason) ? reason : OVERFLOW_LABEL)),
        ),
    );

    // --- connections, streams, audit: read from their owners at scrape time --
    new Gauge({
      name: 'bulwark_active_connections',
      help: 'Open client connections, by listener.',
      labelNames: ['listener'],
      registers,
      collect: this.readPairs(() => this.sources.connections),
    });
    new Gauge({
      name: 'bulwark_active_streams',
      help: 'Requests in flight (HTTP/1.1 requests and HTTP/2 streams), by listener.',
      labelNames: ['listener'],
      registers,
      collect: this.readPairs(() => this.sources.streams),
    });
    new Gauge({
      name: 'bulwark_tls_certificate_expiry_timestamp_seconds',
      help: 'When the certificate a TLS listener serves expires (Unix seconds), by listener; alert on it minus time().',
      labelNames: ['listener'],
      registers,
      // Across workers: the earliest (a worker still serving an old certificate is the one that matters).
      aggregator: 'min',
      collect: this.readPairs(() => this.sources.certificates),
    });
    // --- shared rate-limit stores: read from the limits snapshot at scrape time ---
    const stores = () => {
      const list = this.sources.limitStores?.() ?? null;
      // Only stores with a round trip to something that can fail (the in-process memory store cannot).
      return list === null ? null : [...list].filter(([, s]) => s.kind !== 'memory');
    };
    const storeCounter = (
      name: string,
      help: string,
      pick: (s: { calls: number; failures: number; breakerOpened: number }) => number,
    ) =>
      new Counter({
        name,
        help,
        labelNames: ['store'],
        registers,
        collect(this: Counter<string>) {
          const list = stores();
          if (list === null) return;
          this.reset();
          for (const [store, s] of list) this.labels(store).inc(pick(s));
        },
      });
    storeCounter(
      'bulwark_ratelimit_store_calls_total',
      'Round trips to a shared rate-limit store (Redis, or the primary over IPC).',
      (s) => s.calls,
    );
    storeCounter(
      'bulwark_ratelimit_store_failures_total',
      'Round trips to a shared rate-limit store that failed or timed out.',
      (s) => s.failures,
    );
    storeCounter(
      'bulwark_ratelimit_store_breaker_openings_total',
      'Times the breaker of a shared rate-limit store opened (an outage: policies apply their failure mode).',
      (s) => s.breakerOpened,
    );
    new Gauge({
      name: 'bulwark_ratelimit_store_up',
      help: 'Whether decisions go to a shared rate-limit store (1), or it is down or its breaker open and policies apply their failure mode (0).',
      labelNames: ['store'],
      registers,
      // Across workers: down when any worker cannot use it.
      aggregator: 'min',
      collect(this: Gauge<string>) {
        const list = stores();
        if (list === null) return;
        this.reset();
        for (const [store, s] of list) this.labels(store).set(s.up ? 1 : 0);
      },
    });

    const audit = () => this.sources.audit?.() ?? null;
    new Gauge({
      name: 'bulwark_audit_queue_depth',
      help: 'Audit events accepted and waiting to be written.',
      registers,
      collect(this: Gauge<string>) {
        const a = audit();
        if (a !== null) this.set(a.queueDepth);
      },
    });
    new Gauge({
      name: 'bulwark_audit_wal_bytes',
      help: 'Size of the audit write-ahead log on disk.',
      registers,
      collect(this: Gauge<string>) {
        const a = audit();
        if (a !== null) this.set(a.walBytes);
      },
    });
    new Counter({
      name: 'bulwark_audit_events_written_total',
      help: 'Audit events written to their sink.',
      registers,
      collect(this: Counter<string>) {
        const a = audit();
        if (a !== null) setCounter(this, a.written);
      },
    });
    new Counter({
      name: 'bulwark_audit_events_dropped_total',
      help: 'Audit events dropped (queue full under a drop policy).',
      registers,
      collect(this: Counter<string>) {
        const a = audit();
        if (a !== null) setCounter(this, a.dropped);
      },
    });

    // --- key sources, config, trace export ------------------------------------
    this.jwksFetches = new Counter({
      name: 'bulwark_jwks_fetches_total',
      help: 'Key set loads by provider, source kind (jwks_url, discovery, jwks_file, …) and outcome (ok, error).',
      labelNames: ['provider', 'source', 'outcome'],
      registers,
    });
    this.jwksRotations = new Counter({
      name: 'bulwark_jwks_key_set_changes_total',
      help: 'Loads that changed the set of usable keys (first load and rotations), by provider.',
      labelNames: ['provider'],
      registers,
    });
    this.jwksExpired = new Counter({
      name: 'bulwark_jwks_keys_expired_total',
      help: 'Times a provider dropped its keys because they could not be refreshed in time.',
      labelNames: ['provider'],
      registers,
    });
    this.configReloads = new Counter({
      name: 'bulwark_config_reloads_total',
      help: 'Configuration reloads by outcome (ok, failed). A failed reload keeps the running configuration.',
      labelNames: ['outcome'],
      registers,
    });
    this.configReloads.labels('ok').inc(0);
    this.configReloads.labels('failed').inc(0);
    this.configReloadTime = new Gauge({
      name: 'bulwark_config_last_reload_success_timestamp_seconds',
      help: 'When the running configuration was loaded (Unix seconds).',
      registers,
      aggregator: 'max',
    });
    this.configReloadTime.set(Date.now() / 1000);
    this.spans = new Counter({
      name: 'bulwark_trace_spans_exported_total',
      help: 'Sampled spans by export outcome: ok, failed (the exporter gave up on them), dropped (the export queue was full).',
      labelNames: ['outcome'],
      registers,
    });

    // --- process and runtime health -------------------------------------------
    const worker = options.worker ?? '0';
    if (config.enabled && config.defaultMetrics) {
      collectDefaultMetrics({
        register: registry,
        gcDurationBuckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      });
    }
    this.runtime = config.enabled ? new RuntimeMetrics(registry, worker) : null;
  }

  /** Callbacks other modules own (connections, streams, audit); replaces the previous set. */
  setSources(sources: MetricSources): void {
    this.sources = sources;
  }

  /**
   * The per-request fast path: duration by route/method/status class, response
   * bytes, and the stage counters from `ctx.decisions`. `bytes` < 0: unknown.
   */
  recordRequest(ctx: RequestContext, status: number, durationSeconds: number, bytes = -1, code: string | null = null): void {
    if (!this.enabled) return;
    const routeId = ctx.route === null ? UNMATCHED_ROUTE : ctx.route.id;
    const series = this.routeSeries(routeId);
    const m = METHOD_INDEX.get(ctx.method) ?? OTHER_METHOD;
    const c = statusClassIndex(status);
    const row = series.duration[m]!;
    let child = row[c];
    if (child === undefined) {
      child = this.requestDuration.child(series.label, METHOD_LABELS[m]!, STATUS_CLASSES[c]!);
      row[c] = child;
    }
    child.observe(durationSeconds);
    if (bytes > 0) series.bytes.inc(bytes);
    if (code !== null) this.rejections.get(series.label, code).inc();
    const decisions = ctx.decisions;
    for (let i = 0; i < decisions.length; i++) {
      const d = decisions[i]!;
      const detail = d.detail;
      switch (d.stage) {
        case STAGE_IDS.authn:
          this.authn.get(label(detail?.['provider']), d.outcome).get(d.code).inc();
          break;
        case STAGE_IDS.authz:
          this.authz.get(label(detail?.['policy']), label(detail?.['rule'])).get(d.outcome).inc();
          break;
        case STAGE_IDS.ratelimit:
          this.ratelimit.get(label(detail?.['policy']), RATELIMIT_OUTCOMES[d.outcome]).inc();
          break;
      }
    }
  }

  /** One upstream attempt: `status` 0 when no response came, `code` the failure's reason code. */
  recordUpstream(upstream: string, endpoint: string, status: number, durationSeconds: number, code: string | null): void {
    if (!this.enabled) return;
    const series = this.upstreams.get(upstream, endpoint);
    const c = statusClassIndex(status);
    let cell = series.requests[c];
    if (cell === undefined) series.requests[c] = cell = series.requestCell(STATUS_CLASSES[c]!);
    cell.inc();
    series.duration.observe(durationSeconds);
    if (code !== null) series.errors.get(code).inc();
  }

  /** Key source notices (src/authn `SourceHooks.emit`). */
  keySourceEvent(event: KeySourceEvent): void {
    if (!this.enabled) return;
    const provider = boundedName(event.provider);
    switch (event.type) {
      case 'keys_loaded':
        this.jwksFetches.labels(provider, boundedName(event.source ?? 'unknown'), 'ok').inc();
        if (event.changed === true) this.jwksRotations.labels(provider).inc();
        break;
      case 'keys_error':
        this.jwksFetches.labels(provider, boundedName(event.source ?? 'unknown'), 'error').inc();
        break;
      case 'keys_expired':
        this.jwksExpired.labels(provider).inc();
        break;
    }
  }

  /** A reload attempt's outcome; count it where the reload is decided (the primary in a cluster). */
  configReload(outcome: 'ok' | 'failed'): void {
    this.configReloads.labels(outcome).inc();
    if (outcome === 'ok') this.configReloadTime.set(Date.now() / 1000);
  }

  /** Trace exporter feedback (wired by createTelemetry). */
  spansExported(count: number, failed: boolean): void {
    this.spans.labels(failed ? 'failed' : 'ok').inc(count);
  }

  spanDropped(): void {
    this.spans.labels('dropped').inc();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** This process's metrics in the Prometheus text format. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /** Stops the runtime observers (event-loop histogram, GC observer). */
  close(): void {
    this.runtime?.close();
  }

  /**
   * A request Node's HTTP parser refused before any RequestContext existed (malformed, headers
   * too large, too slow): counted with the unmatched route, so floods and slow clients show.
   */
  recordParserRejection(code: string): void {
    if (!this.enabled) return;
    this.rejections.get(this.routeSeries(UNMATCHED_ROUTE).label, code).inc();
  }

  /** A gRPC call's final status (after `recordRequest` for the same request). */
  recordGrpc(ctx: RequestContext, grpcStatus: number): void {
    if (!this.enabled) return;
    const series = this.routeSeries(ctx.route === null ? UNMATCHED_ROUTE : ctx.route.id);
    this.grpcCalls.get(series.label, GRPC_CODE_NAMES[grpcStatus] ?? OVERFLOW_LABEL).inc();
  }

  private routeSeries(routeId: string): RouteSeries {
    let series = this.routes.get(routeId);
    if (series === undefined) {
      if (this.routes.size >= this.cap) {
        series = this.routes.get(OVERFLOW_LABEL);
        if (series !== undefined) return series;
        routeId = OVERFLOW_LABEL;
      }
      series = new RouteSeries(routeId, this.responseBytes.child(routeId));
      this.routes.set(routeId, series);
    }
    return series;
  }

  private readPairs(source: () => (() => Iterable<readonly [string, number]> | null) | undefined) {
    return function (this: Gauge<string>) {
      const pairs = source()?.() ?? null;
      if (pairs === null) return;
      // Listeners come and go on reload: forget the old ones rather than report stale counts.
      this.reset();
      for (const [listener, count] of pairs) this.labels(listener).set(count);
    };
  }
}

function setCounter(counter: Counter<string>, total: number): void {
  counter.reset();
  if (total > 0) counter.inc(total);
}

/** A label value from a decision's detail: names from the config, `none` when absent. */
function label(value: unknown): string {
  if (value === null || value === undefined) return 'none';
  return typeof value === 'string' ? boundedName(value) : OVERFLOW_LABEL;
}

function boundedName(value: string): string {
  return value.length <= 128 ? value : OVERFLOW_LABEL;
}
