/**
 * The limits that apply to one request once tier and tenant are resolved,
 * precomputed at compile time so the hot path only picks one.
 */
export interface Profile {
  /** `default`, `tier:gold`, `tenant:acme` — for explanations. */
  readonly name: string;
  readonly rate: number;
  readonly periodMs: number;
  readonly burst: number;
  /** GCRA emission interval and capacity (ms). */
  readonly emission: number;
  readonly capacity: number;
  readonly concurrency: number;
  /** This instance's share when the shared store is unreachable (`onStoreFailure: open`). */
  readonly shareEmission: number;
  readonly shareCapacity: number;
  readonly shareConcurrency: number;
  /** IETF `RateLimit-Policy` quota and window (seconds) and the rendered item `"id";q=…;w=…`. */
  readonly quota: number;
  readonly window: number;
  readonly policyItem: string;
}

/** The outcome of one token-bucket decision, whatever the store. */
export interface RateOutcome {
  allowed: boolean;
  /** Tokens left for the key after this decision (an estimate when leasing: local lease + shared bucket). */
  remaining: number;
  /** Until the bucket is full again, ms. */
  resetMs: number;
  /** Until a request would be admitted (0 when admitted), ms. */
  retryAfterMs: number;
  /** 0: decided by the store. 1: store unavailable, decided by the local share (open). 2: store unavailable, failing closed. */
  via: 0 | 1 | 2;
}

export interface SlotOutcome {
  allowed: boolean;
  inFlight: number;
  /** Frees the slot; safe to call more than once (only the first call counts). Null when not admitted. */
  release: (() => void) | null;
  via: 0 | 1 | 2;
}

export interface RateLimiter {
  take(key: string, profile: Profile, failOpen: boolean, now: number): RateOutcome | Promise<RateOutcome>;
  /** Gives back the token a `take` consumed (a later policy denied the request). */
  refund(key: string, profile: Profile, outcome: RateOutcome, now: number): void;
}

export interface ConcurrencyLimiter {
  acquire(key: string, profile: Profile, failOpen: boolean): SlotOutcome | Promise<SlotOutcome>;
}

/** Wraps a release so only its first call has an effect (completion, abort and error may all fire). */
export function once(release: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    release();
  };
}
