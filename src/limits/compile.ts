import cluster from 'node:cluster';
import { randomBytes } from 'node:crypto';
import type { RequestContext } from '../core/context.js';
import { StoreGuard, type BucketBackend } from './backend.js';
import { LocalConcurrencyLimiter, RemoteConcurrencyLimiter } from './concurrency.js';
import { gcraAvailable, gcraResetAfter, gcraWait } from './gcra.js';
import { compileGlobalLimits, type GlobalLimits } from './global.js';
import { IpcBackend, processChannel, type IpcChannel } from './ipc.js';
import { claimText, KeyHasher } from './keys.js';
import { LeasedRateLimiter, type LeaseOptions } from './lease.js';
import { MemoryConcurrencyStore, MemoryGcraStore } from './memory-store.js';
import type { ConcurrencyLimiter, Profile, RateLimiter, RateOutcome } from './profile.js';
import { RedisBackend } from './redis-backend.js';
import {
  BUILTIN_STORE,
  parseDescriptor,
  parseDuration,
  type Descriptor,
  type LeaseConfig,
  type LimitOverrideConfig,
  type MemoryStoreConfig,
  type PolicyConfig,
  type RateLimitsConfig,
  type RedisStoreConfig,
} from './schema.js';

export interface CompileLimitsOptions {
  /**
   * Worker processes of this instance. In a cluster worker with `workers > 1`,
   * the memory store's buckets live in the primary (see `LimitsPrimaryHost`) so
   * the limits hold for the whole instance; the local fallback then gets 1/workers.
   */
  workers?: number;
  /** Channel to the primary; defaults to `process` when this is a cluster worker and `workers > 1`. */
  ipc?: IpcChannel | null;
  /** Monotonic milliseconds (tests freeze or step it). */
  clock?: () => number;
  /** The snapshot being replaced: stores with unchanged settings are carried over (buckets, leases, connections). */
  previous?: CompiledLimits | null;
  /**
   * A shared store (Redis, or the primary's buckets over IPC) became unusable — its breaker
   * opened, so decisions take the failure mode — or usable again. Once per outage, not per probe.
   */
  onStoreBreaker?: (store: string, open: boolean) => void;
}

/** Store defaults, spelled out here as well as in the schema: programmatic callers may skip validation defaults. */
const LEASE_DEFAULTS: Required<LeaseConfig> = { enabled: true, maxBatch: 50, ttlMs: 500, holdMs: 250 };
const IPC_TIMEOUT_MS = 250;
const MAX_LEASE_ENTRIES = 100_000;

/** A store as policies use it. */
class CompiledStore {
  readonly name: string;
  readonly kind: 'memory' | 'redis' | 'primary-ipc';
  /** Settings it was built from, to decide whether a reload can keep it. */
  readonly fingerprint: string;
  readonly rate: RateLimiter;
  readonly concurrency: ConcurrencyLimiter;
  /** Instances (or workers) sharing it: the failure-mode share divides by this. */
  readonly shares: number;
  readonly guard: StoreGuard | null;
  readonly leased: LeasedRateLimiter | null;
  readonly memory: MemoryGcraStore | null;

  constructor(init: {
    name: string;
    kind: CompiledStore['kind'];
    fingerprint: string;
    rate: RateLimiter;
    concurrency: ConcurrencyLimiter;
    shares: number;
    guard?: StoreGuard | null;
    leased?: LeasedRateLimiter | null;
    memory?: MemoryGcraStore | null;
  }) {
    this.name = init.name;
    this.kind = init.kind;
    this.fingerprint = init.fingerprint;
    this.rate = init.rate;
    this.concurrency = init.concurrency;
    this.shares = init.shares;
    this.guard = init.guard ?? null;
    this.leased = init.leased ?? null;
    this.memory = init.memory ?? null;
  }

  async close(): Promise<void> {
    await this.leased?.close();
    await this.guard?.backend.close();
  }
}

/**
 * Direct in-process token buckets: synchronous, one Map lookup and one update
 * per decision. The outcome object is reused: the stage reads it before the next
 * decision (this limiter never goes async), and its refunds do not look at it.
 */
class LocalRateLimiter implements RateLimiter {
  private readonly store: MemoryGcraStore;
  private readonly outcome: RateOutcome;

  constructor(store: MemoryGcraStore) {
    this.store = store;
    this.outcome = { allowed: false, remaining: 0, resetMs: 0, retryAfterMs: 0, via: 0 };
  }

  take(key: string, p: Profile, _failOpen: boolean, now: number): RateOutcome {
    const store = this.store;
    const o = this.outcome;
    o.allowed = store.take(key, now, p.emission, p.capacity);
    const tat = store.tat;
    o.remaining = gcraAvailable(tat, now, p.emission, p.capacity);
    o.resetMs = gcraResetAfter(tat, now);
    o.retryAfterMs = o.remaining > 0 ? 0 : gcraWait(tat, now, p.emission, p.capacity);
    return o;
  }

  refund(key: string, p: Profile, _outcome: RateOutcome, now: number): void {
    this.store.credit(key, now, p.emission);
  }
}

export type PolicyKind = 'rate' | 'concurrency';

/** A policy resolved against its store, with every profile precomputed. */
export class CompiledPolicy {
  readonly id: string;
  readonly kind: PolicyKind;
  readonly shadow: boolean;
  readonly failOpen: boolean;
  readonly storeName: string;
  readonly descriptors: readonly Descriptor[];
  readonly base: Profile;
  private readonly tiers: ReadonlyMap<string, Profile> | null;
  private readonly tierClaim: readonly string[];
  private readonly tierDefault: Profile;
  private readonly tenants: ReadonlyMap<string, Profile> | null;
  readonly rate: RateLimiter | null;
  readonly concurrency: ConcurrencyLimiter | null;
  /** Statistics (Envoy-style, per policy). */
  allowed: number;
  denied: number;
  shadowDenied: number;
  degraded: number;

  constructor(config: PolicyConfig, store: CompiledStore) {
    this.id = config.id;
    this.kind = config.concurrency !== undefined && config.rate === undefined ? 'concurrency' : 'rate';
    this.shadow = config.mode === 'shadow';
    this.failOpen = (config.onStoreFailure ?? 'open') === 'open';
    this.storeName = store.name;
    this.descriptors = (config.key ?? []).map((text) => {
      const d = parseDescriptor(text);
      if (typeof d === 'string') throw new TypeError(`rate limit policy ${config.id}: ${d}`);
      return d;
    });
    const shares = store.shares;
    const base = limitsOf(config, undefined);
    this.base = makeProfile(config.id, 'default', base, shares);
    if (config.tiers !== undefined) {
      const tiers = new Map<string, Profile>();
      for (const [name, limits] of Object.entries(config.tiers.limits)) {
        tiers.set(name, makeProfile(config.id, `tier:${name}`, limitsOf(base, limits), shares));
      }
      this.tiers = tiers;
      this.tierClaim = config.tiers.claim.split('.');
      this.tierDefault = config.tiers.default === undefined ? this.base : (tiers.get(config.tiers.default) ?? this.base);
    } else {
      this.tiers = null;
      this.tierClaim = [];
      this.tierDefault = this.base;
    }
    const tenantConfig = config.overrides?.tenants;
    if (tenantConfig !== undefined && Object.keys(tenantConfig).length > 0) {
      const tenants = new Map<string, Profile>();
      for (const [name, limits] of Object.entries(tenantConfig)) {
        tenants.set(name, makeProfile(config.id, `tenant:${name}`, limitsOf(base, limits), shares));
      }
      this.tenants = tenants;
    } else this.tenants = null;
    this.rate = this.kind === 'rate' ? store.rate : null;
    this.concurrency = this.kind === 'concurrency' ? store.concurrency : null;
    this.allowed = 0;
    this.denied = 0;
    this.shadowDenied = 0;
    this.degraded = 0;
  }

  /** Limits for this request: a tenant override wins over the tier, the tier over the policy's own. */
  profileFor(ctx: RequestContext): Profile {
    const identity = ctx.identity;
    if (identity === null) return this.tierDefault;
    if (this.tenants !== null && identity.tenant !== undefined) {
      const p = this.tenants.get(identity.tenant);
      if (p !== undefined) return p;
    }
    if (this.tiers !== null) return this.tiers.get(claimText(identity.claims, this.tierClaim)) ?? this.tierDefault;
    return this.base;
  }
}

interface Limits {
  rate: number;
  periodMs: number;
  burst: number;
  concurrency: number;
}

function limitsOf(base: Limits | PolicyConfig, override: LimitOverrideConfig | undefined): Limits {
  const b: Limits =
    'id' in base
      ? {
          rate: base.rate ?? 1,
          periodMs: periodOf(base) ?? 1000,
          burst: base.burst ?? base.rate ?? 1,
          concurrency: base.concurrency ?? 1,
        }
      : base;
  if (override === undefined) return b;
  const rate = override.rate ?? b.rate;
  return {
    rate,
    periodMs: periodOf(override) ?? b.periodMs,
    // A new rate without a burst gets burst = rate: keeping the old burst would make "gold: rate 100" burst like bronze.
    burst: override.burst ?? (override.rate !== undefined ? rate : b.burst),
    concurrency: override.concurrency ?? b.concurrency,
  };
}

function periodOf(c: { per?: string; periodMs?: number }): number | undefined {
  if (c.periodMs !== undefined) return c.periodMs;
  if (c.per !== undefined) {
    const ms = parseDuration(c.per);
    if (!(ms > 0)) throw new TypeError(`invalid duration "${c.per}"`);
    return ms;
  }
  return undefined;
}

function makeProfile(policyId: string, name: string, l: Limits, shares: number): Profile {
  const emission = l.periodMs / l.rate;
  const shareBurst = Math.max(1, Math.ceil(l.burst / shares));
  // RateLimit-Policy wants integer seconds: the period when it is whole seconds, else the rate per second.
  const whole = l.periodMs % 1000 === 0;
  const quota = whole ? l.rate : Math.max(1, Math.round((l.rate * 1000) / l.periodMs));
  const window = whole ? l.periodMs / 1000 : 1;
  return Object.freeze({
    name,
    rate: l.rate,
    periodMs: l.periodMs,
    burst: l.burst,
    emission,
    capacity: l.burst * emission,
    concurrency: l.concurrency,
    shareEmission: emission * shares,
    shareCapacity: shareBurst * emission * shares,
    shareConcurrency: Math.max(1, Math.ceil(l.concurrency / shares)),
    quota,
    window,
    policyItem: `"${policyId}";q=${quota};w=${window}`,
  });
}

/** Everything a config snapshot's limit stages share: stores (connected), policies, global caps. */
export class CompiledLimits {
  readonly policies: ReadonlyMap<string, CompiledPolicy>;
  readonly global: GlobalLimits;
  readonly clock: () => number;
  readonly hasher: KeyHasher;
  private readonly stores: Map<string, CompiledStore>;
  private closed: boolean;

  constructor(
    policies: Map<string, CompiledPolicy>,
    stores: Map<string, CompiledStore>,
    global: GlobalLimits,
    clock: () => number,
    hasher: KeyHasher,
  ) {
    this.policies = policies;
    this.stores = stores;
    this.global = global;
    this.clock = clock;
    this.hasher = hasher;
    this.closed = false;
  }

  policy(id: string): CompiledPolicy | undefined {
    return this.policies.get(id);
  }

  storeNamed(name: string): CompiledStore | undefined {
    return this.stores.get(name);
  }

  /**
   * Resolves once every shared store is connected (true), or after `timeoutMs`
   * (false: decisions meanwhile use each policy's failure mode).
   */
  async ready(timeoutMs = 2000): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      let all = true;
      for (const s of this.stores.values()) if (s.guard !== null && !s.guard.backend.ready) all = false;
      if (all) return true;
      if (performance.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Counters for metrics and the admin API. */
  stats(): LimitsStats {
    const stores: LimitsStats['stores'] = {};
    for (const [name, s] of this.stores) {
      stores[name] = {
        kind: s.kind,
        calls: s.guard?.calls ?? 0,
        failures: s.guard?.failuresTotal ?? 0,
        breaker: s.guard?.state ?? 'closed',
        up: s.guard?.usable ?? true,
        breakerOpened: s.guard?.opened ?? 0,
        leaseDecisions: s.leased?.decisions ?? 0,
        keys: s.memory?.size ?? s.leased?.size ?? 0,
      };
    }
    const policies: LimitsStats['policies'] = {};
    for (const [id, p] of this.policies) {
      policies[id] = { allowed: p.allowed, denied: p.denied, shadowDenied: p.shadowDenied, degraded: p.degraded };
    }
    return { stores, policies };
  }

  /** Stores lent to a later snapshot: closing this one leaves them open. */
  private readonly lent = new Set<string>();
  /** Stores this snapshot took from an earlier one, and that one (see `discard`). */
  private borrowed: { from: CompiledLimits; names: Set<string> } | null = null;

  /**
   * Lends the stores `next` can reuse (buckets, held slots, connections carry over). Nothing
   * leaves this snapshot until it closes: a `next` that is discarded gives them back intact.
   */
  handOver(name: string, fingerprint: string): CompiledStore | null {
    const store = this.stores.get(name);
    if (store === undefined || store.fingerprint !== fingerprint || this.closed) return null;
    this.lent.add(name);
    return store;
  }

  /** compileLimits: which of this snapshot's stores came from `from`. */
  borrowedFrom(from: CompiledLimits, names: Set<string>): void {
    if (names.size > 0) this.borrowed = { from, names };
  }

  /** Returns leased tokens and quits Redis connections this snapshot still owns. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.stores].filter(([name]) => !this.lent.has(name)).map(([, s]) => s.close().catch(() => {})));
    this.stores.clear();
  }

  /**
   * A snapshot that never served (its reload failed): borrowed stores go back to their owner,
   * whose buckets, slots and connections are untouched; its own stores are closed.
   */
  async discard(): Promise<void> {
    const borrowed = this.borrowed;
    if (borrowed !== null) for (const name of borrowed.names) borrowed.from.lent.delete(name);
    for (const name of borrowed?.names ?? []) this.stores.delete(name);
    await this.close();
  }
}

export interface LimitsStats {
  stores: Record<
    string,
    {
      kind: string;
      /** Store round trips (lease, acquire, give-back calls). */
      calls: number;
      failures: number;
      breaker: string;
      /** Decisions go to the store (breaker closed, connection ready); false: policies apply their failure mode. */
      up: boolean;
      breakerOpened: number;
      /** Decisions that went through the leasing limiter (calls / leaseDecisions = round trips per request). */
      leaseDecisions: number;
      keys: number;
    }
  >;
  policies: Record<string, { allowed: number; denied: number; shadowDenied: number; degraded: number }>;
}

/**
 * Compiles a validated `rateLimits` section: builds stores (Redis connects in
 * the background; scripts load on connect), resolves policies and profiles.
 * Throws TypeError on what validation would have refused (programmatic callers).
 */
export function compileLimits(config: RateLimitsConfig | undefined, options: CompileLimitsOptions = {}): CompiledLimits {
  const clock = options.clock ?? (() => performance.now());
  const workers = Math.max(1, options.workers ?? 1);
  const ipc = options.ipc !== undefined ? options.ipc : workers > 1 && cluster.isWorker ? processChannel() : null;
  const instanceId = randomBytes(6).toString('base64url');
  const hasher = new KeyHasher(config?.keySecret);
  const previous = options.previous ?? null;
  const storeConfigs = config?.stores ?? {};
  const stores = new Map<string, CompiledStore>();

  const notify = options.onStoreBreaker;
  const build = (name: string): CompiledStore => {
    const declared = storeConfigs[name];
    const onChange = notify === undefined ? undefined : (open: boolean) => notify(name, open);
    if (declared?.redis !== undefined) return redisStore(name, declared.redis, clock, hasher, instanceId, previous, onChange);
    if (declared === undefined && name !== BUILTIN_STORE) throw new TypeError(`unknown rate limit store "${name}"`);
    return memoryStore(name, declared?.memory ?? {}, clock, ipc, workers, instanceId, previous, onChange);
  };

  const policies = new Map<string, CompiledPolicy>();
  for (const policy of config?.policies ?? []) {
    if (policies.has(policy.id)) throw new TypeError(`duplicate rate limit policy "${policy.id}"`);
    const name = policy.store ?? BUILTIN_STORE;
    let store = stores.get(name);
    if (store === undefined) {
      store = build(name);
      stores.set(name, store);
    }
    policies.set(policy.id, new CompiledPolicy(policy, store));
  }
  const limits = new CompiledLimits(policies, stores, compileGlobalLimits(config?.global, workers), clock, hasher);
  if (previous !== null) {
    const names = new Set([...stores].filter(([name, store]) => previous.storeNamed(name) === store).map(([name]) => name));
    limits.borrowedFrom(previous, names);
  }
  return limits;
}

function memoryStore(
  name: string,
  config: MemoryStoreConfig,
  clock: () => number,
  ipc: IpcChannel | null,
  workers: number,
  instanceId: string,
  previous: CompiledLimits | null,
  onChange: ((open: boolean) => void) | undefined,
): CompiledStore {
  const maxKeys = config.maxKeys ?? 100_000;
  const ghostSlots = config.ghostSlots ?? 65_536;
  const fingerprint = JSON.stringify(['memory', ipc === null ? 0 : workers, maxKeys, ghostSlots, config.lease ?? null]);
  const kept = previous?.handOver(name, fingerprint);
  if (kept) return kept;
  if (ipc === null) {
    const buckets = new MemoryGcraStore({ maxKeys, ghostSlots });
    return new CompiledStore({
      name,
      kind: 'memory',
      fingerprint,
      rate: new LocalRateLimiter(buckets),
      concurrency: new LocalConcurrencyLimiter(new MemoryConcurrencyStore(maxKeys)),
      shares: 1,
      memory: buckets,
    });
  }
  // Several workers: the primary owns the buckets; each worker leases from it and falls back to 1/workers.
  const backend = new IpcBackend(ipc);
  const guard = new StoreGuard(backend, {
    failures: 5,
    resetMs: 2000,
    timeoutMs: IPC_TIMEOUT_MS,
    clock,
    ...(onChange ? { onChange } : {}),
  });
  const leased = new LeasedRateLimiter(
    guard,
    new MemoryGcraStore({ maxKeys, ghostSlots }),
    leaseOptions(config.lease, workers),
    (key) => key,
    clock,
  );
  return new CompiledStore({
    name,
    kind: 'primary-ipc',
    fingerprint,
    rate: leased,
    concurrency: new RemoteConcurrencyLimiter(guard, new MemoryConcurrencyStore(maxKeys), (key) => key, instanceId),
    shares: workers,
    guard,
    leased,
  });
}

function redisStore(
  name: string,
  config: RedisStoreConfig,
  clock: () => number,
  hasher: KeyHasher,
  instanceId: string,
  previous: CompiledLimits | null,
  onChange: ((open: boolean) => void) | undefined,
): CompiledStore {
  // The settings plus a probe of the key hashing: a changed keySecret changes every key, so nothing carries over.
  const fingerprint = JSON.stringify(['redis', config, hasher.storeKey('', 'rl', '', 'fingerprint')]);
  const kept = previous?.handOver(name, fingerprint);
  if (kept) return kept;
  const prefix = config.keyPrefix ?? 'bulwark:';
  const instances = config.instances ?? 1;
  let guard: StoreGuard | null = null;
  const backend: BucketBackend = new RedisBackend({
    url: config.url,
    timeoutMs: config.timeoutMs ?? 50,
    connectTimeoutMs: config.connectTimeoutMs ?? 1000,
    concurrencyTtlMs: config.concurrencyTtlMs ?? 300_000,
    onReady: () => guard?.reset(),
  });
  guard = new StoreGuard(backend, {
    failures: config.breaker?.failures ?? 5,
    resetMs: config.breaker?.resetMs ?? 2000,
    timeoutMs: config.timeoutMs ?? 50,
    clock,
    ...(onChange ? { onChange } : {}),
  });
  // Keys are policy-prefixed by the raw key (`id|…`); the Redis key hashes it and keeps the policy id readable.
  const policyOf = (key: string) => key.slice(0, key.indexOf('|'));
  const leased = new LeasedRateLimiter(
    guard,
    new MemoryGcraStore({ maxKeys: MAX_LEASE_ENTRIES }),
    leaseOptions(config.lease, instances),
    (key) => hasher.storeKey(prefix, 'rl', policyOf(key), key),
    clock,
  );
  return new CompiledStore({
    name,
    kind: 'redis',
    fingerprint,
    rate: leased,
    concurrency: new RemoteConcurrencyLimiter(
      guard,
      new MemoryConcurrencyStore(MAX_LEASE_ENTRIES),
      (key) => hasher.storeKey(prefix, 'cc', policyOf(key), key),
      instanceId,
    ),
    shares: instances,
    guard,
    leased,
  });
}

function leaseOptions(config: LeaseConfig | undefined, instances: number): LeaseOptions {
  return {
    enabled: config?.enabled ?? LEASE_DEFAULTS.enabled,
    maxBatch: config?.maxBatch ?? LEASE_DEFAULTS.maxBatch,
    ttlMs: config?.ttlMs ?? LEASE_DEFAULTS.ttlMs,
    holdMs: config?.holdMs ?? LEASE_DEFAULTS.holdMs,
    instances,
    maxEntries: MAX_LEASE_ENTRIES,
  };
}
