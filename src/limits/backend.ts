import { MemoryConcurrencyStore, MemoryGcraStore } from './memory-store.js';

/** One lease call: give back `ret` unused tokens, then take up to `want` (at least `min`, else none). */
export interface LeaseRequest {
  /** Backend key (already hashed / tagged for Redis). */
  readonly key: string;
  /** Emission interval and capacity, milliseconds. */
  readonly emission: number;
  readonly capacity: number;
  readonly want: number;
  readonly min: number;
  readonly ret: number;
}

export interface LeaseGrant {
  granted: number;
  /** Tokens left in the shared bucket after this debit. */
  remaining: number;
  /** Until `min` more tokens are available (0: already are), ms. */
  waitMs: number;
  /** Until the shared bucket is full again, ms. */
  resetMs: number;
}

export interface SlotGrant {
  acquired: boolean;
  /** In flight for the key after the call. */
  inFlight: number;
}

/**
 * Where shared buckets live: the token-leasing limiter talks to this, whether
 * the tokens sit in this process (`memory`), in the cluster primary
 * (`primary-ipc`) or in Redis (`redis`).
 */
export interface BucketBackend {
  readonly kind: 'memory' | 'redis' | 'primary-ipc';
  /** Whether a call can be attempted at all (connection up). When false, callers fail fast without a call. */
  readonly ready: boolean;
  lease(request: LeaseRequest): Promise<LeaseGrant>;
  acquire(key: string, limit: number, member: string): Promise<SlotGrant>;
  /** Fire and forget: a lost release is reclaimed by the slot's TTL (Redis) or the worker's exit (IPC). */
  release(key: string, member: string): void;
  /** Liveness probe for the breaker. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** The in-process backend: what the cluster primary serves to its workers, and a reference for tests. */
export class MemoryBackend implements BucketBackend {
  readonly kind = 'memory';
  readonly ready = true;
  readonly buckets: MemoryGcraStore;
  readonly slots: MemoryConcurrencyStore;
  private readonly clock: () => number;

  constructor(options: { maxKeys?: number; ghostSlots?: number; clock?: () => number } = {}) {
    this.buckets = new MemoryGcraStore(options);
    this.slots = new MemoryConcurrencyStore(options.maxKeys);
    this.clock = options.clock ?? (() => performance.now());
  }

  leaseNow(r: LeaseRequest): LeaseGrant {
    const now = this.clock();
    const store = this.buckets;
    const granted = store.lease(r.key, now, r.emission, r.capacity, r.want, r.min, r.ret);
    const tat = store.tat;
    const debt = tat - now;
    const available = Math.max(0, Math.floor((r.capacity - debt) / r.emission + 1e-9));
    const wait = tat + r.min * r.emission - r.capacity - now;
    return { granted, remaining: available, waitMs: wait > 0 ? wait : 0, resetMs: debt > 0 ? debt : 0 };
  }

  lease(r: LeaseRequest): Promise<LeaseGrant> {
    return Promise.resolve(this.leaseNow(r));
  }

  acquireNow(key: string, limit: number): SlotGrant {
    const n = this.slots.acquire(key, limit);
    return n > 0 ? { acquired: true, inFlight: n } : { acquired: false, inFlight: this.slots.count(key) };
  }

  acquire(key: string, limit: number): Promise<SlotGrant> {
    return Promise.resolve(this.acquireNow(key, limit));
  }

  release(key: string): void {
    this.slots.release(key);
  }

  ping(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
  readonly code = 'ERR_RATELIMIT_STORE_UNAVAILABLE';
}

export type BreakerState = 'closed' | 'open' | 'probing';

/**
 * Consecutive-failure circuit breaker around a backend, plus a hard timeout per
 * call. While open, `available` is false and decisions take the failure mode at
 * once; after `resetMs` a background ping (never a request) probes the store, so
 * a dead store costs no request any latency beyond the first few failures.
 */
export class StoreGuard {
  readonly backend: BucketBackend;
  state: BreakerState;
  /** Calls that reached the backend (round trips), failures among them, and breaker openings. */
  calls: number;
  failuresTotal: number;
  opened: number;
  private failures: number;
  private openedAt: number;
  private readonly threshold: number;
  private readonly resetMs: number;
  private readonly timeoutMs: number;
  private readonly clock: () => number;
  /** Told when the store stops being used (`true`: breaker open, or the connection is down) and when it is used again. */
  private readonly onChange: ((open: boolean) => void) | null;
  /** What `onChange` was last told, inverted: whether decisions go to the store. */
  private up = true;

  constructor(
    backend: BucketBackend,
    options: { failures: number; resetMs: number; timeoutMs: number; clock?: () => number; onChange?: (open: boolean) => void },
  ) {
    this.backend = backend;
    this.onChange = options.onChange ?? null;
    this.state = 'closed';
    this.calls = 0;
    this.failuresTotal = 0;
    this.opened = 0;
    this.failures = 0;
    this.openedAt = 0;
    this.threshold = options.failures;
    this.resetMs = options.resetMs;
    this.timeoutMs = options.timeoutMs;
    this.clock = options.clock ?? (() => performance.now());
  }

  /** Whether a call should be attempted now. Kicks off the background probe when the open period is over. */
  get available(): boolean {
    if (this.state === 'closed') {
      const ready = this.backend.ready;
      if (ready !== this.up) this.observe();
      return ready;
    }
    if (this.state === 'open' && this.clock() - this.openedAt >= this.resetMs) this.probe();
    return false;
  }

  /** Whether decisions go to the store now: breaker closed and connection ready. */
  get usable(): boolean {
    return this.state === 'closed' && this.backend.ready;
  }

  private observe(): void {
    const up = this.usable;
    if (up === this.up) return;
    this.up = up;
    this.onChange?.(!up);
  }

  /** Runs one backend call with the timeout; outcomes feed the breaker. */
  run<T>(call: () => Promise<T>): Promise<T> {
    this.calls++;
    return withTimeout(call(), this.timeoutMs, 'store call').then(
      (value) => {
        this.succeeded();
        return value;
      },
      (err: unknown) => {
        this.failed();
        throw err;
      },
    );
  }

  /** The connection came back (e.g. Redis `ready`): trust it again at once. */
  reset(): void {
    this.failures = 0;
    this.close();
  }

  private succeeded(): void {
    this.failures = 0;
    this.close();
  }

  private close(): void {
    this.state = 'closed';
    this.observe();
  }

  private failed(): void {
    this.failuresTotal++;
    if (++this.failures >= this.threshold && this.state === 'closed') this.open();
  }

  private open(): void {
    const was = this.state;
    this.state = 'open';
    this.openedAt = this.clock();
    if (was === 'closed') this.opened++; // not a failed probe: that is still the same outage
    this.observe();
  }

  private probe(): void {
    this.state = 'probing';
    const done = (ok: boolean) => {
      if (ok && this.backend.ready) this.reset();
      else this.open();
    };
    if (!this.backend.ready) return done(false);
    withTimeout(this.backend.ping(), this.timeoutMs, 'probe').then(
      () => done(true),
      () => done(false),
    );
  }
}

/**
 * Rejects when `promise` has not settled `ms` after the call. The verdict waits
 * for one more turn of the event loop (setImmediate runs after the poll phase):
 * when the process itself was stalled, the reply is usually sitting in the
 * socket already, and a timer that fires late must not blame the store for our
 * own lag (a false timeout would needlessly take the failure mode).
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      setImmediate(() => {
        if (settled) return;
        settled = true;
        reject(new StoreUnavailableError(`${what} timed out after ${ms} ms`));
      });
    }, ms);
    promise.then(
      (value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
