/**
 * GCRA (generic cell rate algorithm): a token bucket kept as one number, the
 * theoretical arrival time (TAT). The bucket is full when `tat <= now`; every
 * admitted request pushes `tat` forward by the emission interval `T = period /
 * rate`; a request is admitted while `tat - now` stays within the capacity
 * `burst × T`. One number per key is what makes it cheap in memory and atomic in
 * a Lua script, and refill needs no timer: it is only ever computed.
 *
 * Pure functions over (tat, now); units are whatever the caller uses (the memory
 * store uses milliseconds from `performance.now()`, the Redis scripts integer
 * microseconds from the server's clock).
 */

/** Rounding slack: `burst` takes of `T` must fit `burst × T` exactly despite float sums. */
const SLACK = 1e-9;

export interface GcraParams {
  /** Emission interval T: time one token takes to refill (period / rate). */
  readonly emission: number;
  /** Burst tolerance in time units: `burst × T`. */
  readonly capacity: number;
}

export function gcraParams(rate: number, periodMs: number, burst: number): GcraParams {
  const emission = periodMs / rate;
  return { emission, capacity: burst * emission };
}

/** The TAT after admitting `n` tokens at `now`, or NaN when that would exceed the burst. */
export function gcraAdmit(tat: number, now: number, emission: number, capacity: number, n = 1): number {
  const next = (tat > now ? tat : now) + n * emission;
  return next - now <= capacity + emission * SLACK * n + SLACK ? next : Number.NaN;
}

/** Whole tokens available at `now` (0 … burst). */
export function gcraAvailable(tat: number, now: number, emission: number, capacity: number): number {
  const debt = tat > now ? tat - now : 0;
  const available = Math.floor((capacity - debt) / emission + SLACK);
  return available > 0 ? available : 0;
}

/** Time from `now` until `n` tokens are available (0 when they already are). */
export function gcraWait(tat: number, now: number, emission: number, capacity: number, n = 1): number {
  const wait = (tat > now ? tat : now) + n * emission - capacity - now;
  return wait > emission * SLACK ? wait : 0;
}

/** Time from `now` until the bucket is full again (what `RateLimit: t=` reports once quota is left). */
export function gcraResetAfter(tat: number, now: number): number {
  return tat > now ? tat - now : 0;
}

/** Gives `n` tokens back (a refund, or an unused lease): never past "full", so it cannot mint tokens. */
export function gcraCredit(tat: number, now: number, emission: number, n: number): number {
  const back = tat - n * emission;
  return back > now ? back : now;
}

/**
 * Debits a batch for a lease: up to `want` tokens, but only if at least `min`
 * are available (otherwise none: a trickle of one-token grants would cost a
 * round trip each). Returns the tokens granted; `out.tat` gets the new TAT.
 */
export function gcraLease(
  tat: number,
  now: number,
  emission: number,
  capacity: number,
  want: number,
  min: number,
  out: { tat: number },
): number {
  const base = tat > now ? tat : now;
  const available = gcraAvailable(base, now, emission, capacity);
  const granted = available >= min ? (available < want ? available : want) : 0;
  out.tat = base + granted * emission;
  return granted;
}
