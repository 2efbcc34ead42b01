import type { StoreGuard } from './backend.js';
import type { MemoryConcurrencyStore } from './memory-store.js';
import { once, type ConcurrencyLimiter, type Profile, type SlotOutcome } from './profile.js';

const REFUSED: SlotOutcome = Object.freeze({ allowed: false, inFlight: 0, release: null, via: 0 }) as SlotOutcome;

/** In-process concurrency limit: synchronous acquire, a release that counts once. */
export class LocalConcurrencyLimiter implements ConcurrencyLimiter {
  private readonly store: MemoryConcurrencyStore;

  constructor(store: MemoryConcurrencyStore) {
    this.store = store;
  }

  acquire(key: string, profile: Profile): SlotOutcome {
    const store = this.store;
    const n = store.acquire(key, profile.concurrency);
    if (n < 0) return n === -1 ? { allowed: false, inFlight: profile.concurrency, release: null, via: 0 } : REFUSED;
    return { allowed: true, inFlight: n, release: once(() => store.release(key)), via: 0 };
  }
}

/**
 * Concurrency limit in a shared store (Redis sorted set, or the cluster
 * primary). One store call to acquire, a fire-and-forget one to release; a
 * release that never arrives is reclaimed by the slot TTL (Redis) or when the
 * worker exits (primary). When the store cannot be asked, the failure mode
 * applies: this instance's share of the limit locally (open) or a denial (closed).
 */
export class RemoteConcurrencyLimiter implements ConcurrencyLimiter {
  private readonly guard: StoreGuard;
  private readonly fallback: MemoryConcurrencyStore;
  private readonly backendKey: (key: string) => string;
  private readonly memberPrefix: string;
  private seq: number;
  decisions: number;

  constructor(guard: StoreGuard, fallback: MemoryConcurrencyStore, backendKey: (key: string) => string, instanceId: string) {
    this.guard = guard;
    this.fallback = fallback;
    this.backendKey = backendKey;
    this.memberPrefix = `${instanceId}:`;
    this.seq = 0;
    this.decisions = 0;
  }

  acquire(key: string, profile: Profile, failOpen: boolean): SlotOutcome | Promise<SlotOutcome> {
    this.decisions++;
    const guard = this.guard;
    if (!guard.available) return this.degraded(key, profile, failOpen);
    const backendKey = this.backendKey(key);
    const member = this.memberPrefix + (++this.seq).toString(36);
    return guard
      .run(() => guard.backend.acquire(backendKey, profile.concurrency, member))
      .then(
        (grant): SlotOutcome =>
          grant.acquired
            ? { allowed: true, inFlight: grant.inFlight, release: once(() => guard.backend.release(backendKey, member)), via: 0 }
            : { allowed: false, inFlight: grant.inFlight, release: null, via: 0 },
        () => {
          // Failed or timed out here, yet a frozen (not dead) store runs the queued command once it
          // resumes: a slot taken then belongs to no request and would stay taken until its TTL.
          // Releasing an unknown member is a no-op, and the release is queued behind the acquire.
          guard.backend.release(backendKey, member);
          return this.degraded(key, profile, failOpen);
        },
      );
  }

  private degraded(key: string, profile: Profile, failOpen: boolean): SlotOutcome {
    if (!failOpen) return { allowed: false, inFlight: 0, release: null, via: 2 };
    const store = this.fallback;
    const n = store.acquire(key, profile.shareConcurrency);
    if (n < 0) return { allowed: false, inFlight: profile.shareConcurrency, release: null, via: 1 };
    return { allowed: true, inFlight: n, release: once(() => store.release(key)), via: 1 };
  }
}
