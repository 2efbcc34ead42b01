import type { LeaseGrant, StoreGuard } from './backend.js';
import { gcraAvailable, gcraResetAfter, gcraWait } from './gcra.js';
import type { MemoryGcraStore } from './memory-store.js';
import type { Profile, RateLimiter, RateOutcome } from './profile.js';

export interface LeaseOptions {
  /** When false every decision is one store call (exact, but one round trip a request). */
  enabled: boolean;
  maxBatch: number;
  ttlMs: number;
  holdMs: number;
  /** Instances sharing the store: sizes first batches before demand is known. */
  instances: number;
  /** Most lease entries kept; the oldest idle ones are returned and dropped beyond it. */
  maxEntries: number;
}

/** One key's local lease: tokens this instance took from the shared bucket and may spend without asking. */
class LeaseEntry {
  backendKey: string;
  tokens: number;
  /** Unused tokens to give back with the next call. */
  ret: number;
  expiresAt: number;
  /** The shared bucket had fewer than `min` tokens: deny locally until then instead of asking again. */
  nextAt: number;
  /** Shared bucket's remaining tokens and full-at time as of the last call (estimates for headers). */
  remaining: number;
  fullAt: number;
  /** Requests seen since the last fetch and the demand estimate (requests per ms). */
  seen: number;
  demand: number;
  lastFetch: number;
  lastUse: number;
  lastGrant: number;
  pending: Promise<boolean> | null;
  /** Requests waiting on `pending`: the next batch covers at least them. */
  waiting: number;
  /** The limits of the last fetch, to give unused tokens back at the same price. */
  emission: number;
  capacity: number;

  constructor(backendKey: string, now: number) {
    this.backendKey = backendKey;
    this.tokens = 0;
    this.ret = 0;
    this.expiresAt = 0;
    this.nextAt = 0;
    this.remaining = 0;
    this.fullAt = 0;
    this.seen = 0;
    this.demand = 0;
    this.lastFetch = now;
    this.lastUse = now;
    this.lastGrant = 0;
    this.pending = null;
    this.waiting = 0;
    this.emission = 1;
    this.capacity = 1;
  }
}

/**
 * Token leasing over a shared backend (Redis, or the cluster primary).
 *
 * An instance takes a batch of tokens from the shared GCRA bucket in one atomic
 * call and spends them locally, so the hot path is synchronous and the store
 * sees one call per batch. Accuracy is kept by construction: every admitted
 * request spent a token the shared bucket debited, so the instances together
 * never admit more than the bucket allows, give or take what a lease may carry
 * across a window (bounded by `ttlMs`: unused tokens go back when it runs out).
 *
 * - Batch size follows this instance's recent demand for the key (`holdMs` of
 *   it), capped by `maxBatch` and the burst, so a quiet key takes one token and
 *   a hot one takes many; a small bucket is not hoarded by one instance.
 * - A call takes tokens only if at least `min` (half the batch) are available;
 *   otherwise none, plus the time until they will be. Until then the instance
 *   denies locally without calling: under overload the store sees a call per
 *   half-batch of refill, not per request.
 * - When the lease runs low a refill is fetched in the background.
 * - Store failures go through the guard (timeout, breaker): the failure mode
 *   applies at once — a local bucket sized to this instance's share (open) or a
 *   denial (closed).
 */
export class LeasedRateLimiter implements RateLimiter {
  private readonly guard: StoreGuard;
  private readonly fallback: MemoryGcraStore;
  private readonly options: LeaseOptions;
  private readonly entries: Map<string, LeaseEntry>;
  private readonly backendKey: (key: string) => string;
  private readonly clock: () => number;
  private timer: NodeJS.Timeout | null;
  /** Live iterator in creation order (see MemoryGcraStore: no rescans of deleted holes). */
  private cursor: MapIterator<[string, LeaseEntry]>;
  /** Decisions taken (store calls are counted by the guard: calls / decisions = round trips per request). */
  decisions: number;

  constructor(
    guard: StoreGuard,
    fallback: MemoryGcraStore,
    options: LeaseOptions,
    backendKey: (key: string) => string,
    clock: () => number,
  ) {
    this.guard = guard;
    this.fallback = fallback;
    this.options = options;
    this.entries = new Map();
    this.backendKey = backendKey;
    this.clock = clock;
    this.decisions = 0;
    this.cursor = this.entries.entries();
    this.timer = setInterval(() => this.sweep(), Math.max(10, options.ttlMs));
    this.timer.unref();
  }

  take(key: string, profile: Profile, failOpen: boolean, now: number): RateOutcome | Promise<RateOutcome> {
    this.decisions++;
    let entry = this.entries.get(key);
    if (entry === undefined) entry = this.insert(key, now);
    entry.seen++;
    entry.lastUse = now;
    if (entry.tokens > 0 && now >= entry.expiresAt) {
      entry.ret += entry.tokens;
      entry.tokens = 0;
    }
    if (entry.tokens > 0) return this.spend(entry, profile, now);
    if (now < entry.nextAt) return denied(entry, profile, now);
    if (!this.guard.available) return this.degraded(key, entry, profile, failOpen, now);
    return this.wait(key, entry, profile, failOpen, now, 0);
  }

  refund(key: string, profile: Profile, outcome: RateOutcome, now: number): void {
    if (outcome.via === 1) {
      this.fallback.credit(key, now, profile.shareEmission);
      return;
    }
    const entry = this.entries.get(key);
    // The token goes back to the local lease: free, and the sweep returns it to the store if unused.
    if (entry !== undefined) entry.tokens++;
  }

  /** Gives every leased token back (best effort) and stops the sweep. */
  async close(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    const returns: Promise<unknown>[] = [];
    for (const entry of this.entries.values()) {
      const ret = entry.tokens + entry.ret;
      entry.tokens = 0;
      entry.ret = 0;
      if (ret > 0 && this.guard.available) returns.push(this.giveBack(entry, ret).catch(() => {}));
    }
    this.entries.clear();
    this.cursor = this.entries.entries();
    await Promise.all(returns);
  }

  get size(): number {
    return this.entries.size;
  }

  private spend(entry: LeaseEntry, profile: Profile, now: number): RateOutcome {
    entry.tokens--;
    // Refill ahead of need so steady traffic never waits for the store — for hot keys only (batches of 4+):
    // a cold key prefetching on every instance would park a small bucket's tokens where they are not needed.
    if (
      entry.lastGrant >= 4 &&
      entry.tokens <= entry.lastGrant >> 2 &&
      entry.pending === null &&
      now >= entry.nextAt &&
      this.guard.available
    ) {
      void this.fetch(entry, profile, now);
    }
    const remaining = entry.tokens + entry.remaining;
    return {
      allowed: true,
      remaining: remaining < profile.burst ? remaining : profile.burst,
      resetMs: entry.fullAt > now ? entry.fullAt - now : 0,
      // The last token as far as this instance knows: the wait for the next one in the shared bucket (RateLimit `t`).
      retryAfterMs: remaining > 0 ? 0 : gcraWait(entry.fullAt, now, profile.emission, profile.capacity),
      via: 0,
    };
  }

  /** Waits for the key's one in-flight fetch (starting it if needed), then decides. */
  private wait(
    key: string,
    entry: LeaseEntry,
    profile: Profile,
    failOpen: boolean,
    now: number,
    attempt: number,
  ): Promise<RateOutcome> {
    entry.waiting++;
    const pending = entry.pending ?? this.fetch(entry, profile, now);
    return pending.then((ok) => {
      entry.waiting--;
      return this.settle(key, entry, profile, failOpen, ok, attempt);
    });
  }

  private settle(
    key: string,
    entry: LeaseEntry,
    profile: Profile,
    failOpen: boolean,
    ok: boolean,
    attempt: number,
  ): RateOutcome | Promise<RateOutcome> {
    const now = this.clock();
    if (!ok) return this.degraded(key, entry, profile, failOpen, now);
    if (entry.tokens > 0) return this.spend(entry, profile, now);
    // More waiters than the batch had tokens, while the shared bucket still has some: ask again
    // (the next batch is sized to the waiters) rather than deny requests the limit would admit.
    if (now >= entry.nextAt && attempt < 3 && this.guard.available)
      return this.wait(key, entry, profile, failOpen, now, attempt + 1);
    return denied(entry, profile, now);
  }

  /**
   * Batch size from demand: `holdMs` of recent requests, capped by `maxBatch`,
   * the burst, and this instance's fair share — of the burst, or of what refills
   * during `holdMs`, whichever is larger. The share cap is what stops one
   * instance from hoarding a small bucket that a round-robin client also needs
   * on the other instances.
   */
  private batch(entry: LeaseEntry, profile: Profile, now: number): number {
    if (!this.options.enabled) return 1;
    const { instances, holdMs } = this.options;
    const share = Math.max(Math.floor(profile.burst / instances), Math.floor(holdMs / profile.emission / instances));
    const cap = clamp(share, 1, Math.min(this.options.maxBatch, profile.burst));
    const elapsed = now - entry.lastFetch;
    if (entry.lastGrant === 0 && entry.demand === 0) {
      // No history: a fair slice of the burst, so one instance does not take all of a small bucket.
      entry.seen = 0;
      entry.lastFetch = now;
      const slice = Math.floor(profile.burst / (2 * this.options.instances));
      return clamp(slice > entry.waiting ? slice : entry.waiting, 1, cap);
    }
    if (elapsed >= 1) {
      const rate = entry.seen / elapsed;
      entry.demand = entry.demand === 0 ? rate : 0.5 * entry.demand + 0.5 * rate;
      entry.seen = 0;
      entry.lastFetch = now;
    }
    const fromDemand = Math.ceil(entry.demand * this.options.holdMs);
    return clamp(fromDemand > entry.waiting ? fromDemand : entry.waiting, 1, cap);
  }

  private fetch(entry: LeaseEntry, profile: Profile, now: number): Promise<boolean> {
    const want = this.batch(entry, profile, now);
    const min = want > 1 ? Math.ceil(want / 2) : 1;
    const ret = entry.ret;
    entry.ret = 0;
    entry.emission = profile.emission;
    entry.capacity = profile.capacity;
    const guard = this.guard;
    const request = {
      key: entry.backendKey,
      emission: profile.emission,
      capacity: profile.capacity,
      want,
      min,
      ret,
    };
    const call = guard.backend.lease(request);
    const pending = guard
      .run(() => call)
      .then(
        (grant: LeaseGrant) => {
          entry.pending = null;
          this.granted(entry, grant, profile);
          return true;
        },
        () => {
          entry.pending = null;
          // Timed out is not always failed: if the reply still arrives, the store did debit those tokens —
          // keep them for later requests instead of losing them (the waiters already took the failure mode).
          call.then(
            (grant) => {
              if (grant.granted > 0) {
                entry.tokens += grant.granted;
                entry.expiresAt = this.clock() + this.options.ttlMs;
              }
            },
            () => {},
          );
          // The tokens we meant to return may or may not have reached the store; dropping them errs towards less quota.
          return false;
        },
      );
    entry.pending = pending;
    return pending;
  }

  private granted(entry: LeaseEntry, grant: LeaseGrant, profile: Profile): void {
    const at = this.clock();
    if (grant.granted > 0) {
      entry.tokens += grant.granted;
      entry.expiresAt = at + this.options.ttlMs;
      entry.lastGrant = grant.granted;
    }
    entry.remaining = grant.remaining;
    entry.fullAt = at + grant.resetMs;
    // Fewer than `min` left: deny locally until they are there (plus jitter, so instances do not all ask at once).
    entry.nextAt = grant.waitMs > 0 ? at + grant.waitMs + Math.random() * profile.emission : 0;
  }

  private giveBack(entry: LeaseEntry, ret: number): Promise<unknown> {
    const guard = this.guard;
    const request = { key: entry.backendKey, emission: entry.emission, capacity: entry.capacity, want: 0, min: 1, ret };
    return guard.run(() => guard.backend.lease(request));
  }

  /**
   * The store cannot be asked: a local bucket sized to this instance's share, or
   * a denial (closed). The local bucket starts as drained as the shared one was
   * at the last contact (its full-at time; a share's capacity in time equals the
   * whole bucket's), so a blip of the store does not hand out a fresh burst.
   */
  private degraded(key: string, entry: LeaseEntry, profile: Profile, failOpen: boolean, now: number): RateOutcome {
    if (!failOpen) return { allowed: false, remaining: 0, resetMs: 0, retryAfterMs: 1000, via: 2 };
    const store = this.fallback;
    store.seed(key, entry.fullAt, now);
    const allowed = store.take(key, now, profile.shareEmission, profile.shareCapacity);
    const tat = store.tat;
    const remaining = gcraAvailable(tat, now, profile.shareEmission, profile.shareCapacity);
    return {
      allowed,
      remaining,
      resetMs: gcraResetAfter(tat, now),
      // Admitting the last token: the wait for the next one (RateLimit `t`), as the memory limiter reports it.
      retryAfterMs: allowed && remaining > 0 ? 0 : gcraWait(tat, now, profile.shareEmission, profile.shareCapacity),
      via: 1,
    };
  }

  private insert(key: string, now: number): LeaseEntry {
    const entries = this.entries;
    if (entries.size >= this.options.maxEntries) {
      // Drop the least recently created entry; its unused tokens go back to the store.
      let first = this.cursor.next();
      if (first.done === true) {
        this.cursor = entries.entries();
        first = this.cursor.next();
      }
      if (first.done !== true) {
        const [oldKey, old] = first.value;
        entries.delete(oldKey);
        const ret = old.tokens + old.ret;
        if (ret > 0 && this.guard.available) this.giveBack(old, ret).catch(() => {});
      }
    }
    const entry = new LeaseEntry(this.backendKey(key), now);
    entries.set(key, entry);
    return entry;
  }

  /** Returns expired leases' tokens and forgets idle keys. */
  private sweep(): void {
    const now = this.clock();
    const idleAfter = 4 * this.options.ttlMs;
    for (const [key, entry] of this.entries) {
      if (entry.pending !== null) continue;
      if (entry.tokens > 0 && now >= entry.expiresAt) {
        entry.ret += entry.tokens;
        entry.tokens = 0;
      }
      if (entry.ret > 0 && this.guard.available) {
        const ret = entry.ret;
        entry.ret = 0;
        this.giveBack(entry, ret).catch(() => {});
      }
      if (entry.tokens === 0 && entry.ret === 0 && now - entry.lastUse > idleAfter) this.entries.delete(key);
    }
  }
}

function denied(entry: LeaseEntry, profile: Profile, now: number): RateOutcome {
  const wait = entry.nextAt > now ? entry.nextAt - now : profile.emission;
  return {
    allowed: false,
    remaining: 0,
    resetMs: entry.fullAt > now ? entry.fullAt - now : wait,
    retryAfterMs: wait,
    via: 0,
  };
}

function clamp(n: number, lo: number, hi: number): number {
  return n < lo ? lo : n > hi ? hi : n;
}
