/**
 * `grpc-timeout`, parsed strictly: the spec's grammar is `TimeoutValue TimeoutUnit`,
 * 1–8 ASCII digits and one of H M S m u n, nothing else (no sign, no space, no
 * fraction, no second unit). Anything looser would let two readers of the same header
 * (the gateway and the upstream) disagree about the deadline.
 */
import { BulwarkError } from '../core/errors.js';

const MAX_DIGITS = 8;

/** The longest delay setTimeout honours (2^31-1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2_147_483_647;

/** Milliseconds per unit, by the unit's char code. */
const UNIT_MS = new Float64Array(128).fill(-1);
UNIT_MS[0x48 /* H */] = 3_600_000;
UNIT_MS[0x4d /* M */] = 60_000;
UNIT_MS[0x53 /* S */] = 1_000;
UNIT_MS[0x6d /* m */] = 1;
UNIT_MS[0x75 /* u */] = 1e-3;
UNIT_MS[0x6e /* n */] = 1e-6;

/** The timeout in milliseconds (possibly fractional for u/n), or null when the value is not valid. */
export function parseGrpcTimeout(value: string): number | null {
  const n = value.length;
  if (n < 2 || n > MAX_DIGITS + 1) return null;
  const unit = value.charCodeAt(n - 1);
  const perUnit = unit < 128 ? UNIT_MS[unit]! : -1;
  if (perUnit < 0) return null;
  let amount = 0;
  for (let i = 0; i < n - 1; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return null;
    amount = amount * 10 + (c - 0x30);
  }
  return amount * perUnit;
}

/**
 * The deadline a call gets, in milliseconds from now: the client's `grpc-timeout`
 * clamped to the route's maximum, the maximum when the client sent none, or null when
 * neither bounds the call. A header Node received twice arrives as an array: invalid.
 */
export function resolveGrpcTimeout(header: string | string[] | undefined, maxMs: number | null): number | null | BulwarkError {
  if (header === undefined) return maxMs;
  const parsed = typeof header === 'string' ? parseGrpcTimeout(header) : null;
  if (parsed === null) return new BulwarkError('grpc.bad_timeout', undefined, { context: { reason: 'grpc-timeout' } });
  return maxMs !== null && parsed > maxMs ? maxMs : parsed;
}

// Finest unit first, in nanoseconds: the first one in which the value fits 8 digits is the most precise.
const FORMAT_UNITS: readonly (readonly [string, number])[] = [
  ['n', 1],
  ['u', 1e3],
  ['m', 1e6],
  ['S', 1e9],
  ['M', 6e10],
  ['H', 3.6e12],
];
const MAX_AMOUNT = 99_999_999;

/**
 * The remaining time as a `grpc-timeout` value for the upstream. Rounded down, so the
 * upstream's deadline never outlives the gateway's and the upstream, not the gateway,
 * usually reports DEADLINE_EXCEEDED (with its own trailers). Negative time is `0n`.
 */
export function formatGrpcTimeout(ms: number): string {
  if (!(ms > 0)) return '0n';
  // Whole nanoseconds first (250.7 ms is 250699999.99… ns in binary floating point).
  const ns = Math.round(ms * 1e6);
  for (const [unit, perUnit] of FORMAT_UNITS) {
    const amount = Math.floor(ns / perUnit);
    if (amount <= MAX_AMOUNT) return `${amount}${unit}`;
  }
  return `${MAX_AMOUNT}H`;
}

/** Something with a deadline in a DeadlineQueue. */
export interface DeadlineEntry {
  /** When it expires (performance.now() time, ms); set by the queue. */
  deadlineAt: number;
  /** Its place in the queue, -1 when not queued; kept by the queue. */
  deadlineIndex: number;
  /** Called once, when the deadline passes while still queued. */
  onDeadline(): void;
}

/**
 * Deadlines of many calls behind one timer: a binary min-heap on the expiry time (add
 * and remove in O(log n), whatever mix of deadlines clients send) and a single Node
 * timer armed for the earliest. Removing an entry (the usual end: the call finished in
 * time) leaves the timer as it is; when it fires early it re-arms for the new earliest.
 * With calls of similar timeouts the timer fires about once per timeout, not once per call.
 */
export class DeadlineQueue {
  private readonly heap: DeadlineEntry[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** When the armed timer fires (performance.now() time). */
  private timerAt = Infinity;
  private readonly fire = (): void => this.expire();

  get size(): number {
    return this.heap.length;
  }

  /** Queues `entry` to expire `ms` from now. */
  add(entry: DeadlineEntry, ms: number): void {
    if (entry.deadlineIndex !== -1) this.remove(entry);
    const at = performance.now() + ms;
    entry.deadlineAt = at;
    const heap = this.heap;
    entry.deadlineIndex = heap.length;
    heap.push(entry);
    this.up(entry.deadlineIndex);
    if (at < this.timerAt) this.arm(at, ms);
  }

  /** Takes `entry` out (no-op when it is not queued). */
  remove(entry: DeadlineEntry): void {
    const i = entry.deadlineIndex;
    if (i === -1) return;
    entry.deadlineIndex = -1;
    const heap = this.heap;
    const last = heap.pop()!;
    if (last === entry) return;
    heap[i] = last;
    last.deadlineIndex = i;
    this.down(i);
    this.up(last.deadlineIndex);
  }

  private arm(at: number, ms: number): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerAt = at;
    // Node runs a timer over 2^31-1 ms after 1 ms instead (a client's `99999999H` on a route
    // without a maximum would spin the timer every millisecond): wait at most that long,
    // expire() re-arms when it wakes before the earliest deadline.
    this.timer = setTimeout(this.fire, Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(ms))));
    // Calls in flight keep the process alive through their sockets; a deadline alone does not.
    this.timer.unref();
  }

  private expire(): void {
    this.timer = null;
    this.timerAt = Infinity;
    const heap = this.heap;
    // Node may run a timer a fraction of a millisecond before performance.now() reaches it.
    const now = performance.now() + 1;
    try {
      while (heap.length > 0 && heap[0]!.deadlineAt <= now) {
        const entry = heap[0]!;
        this.remove(entry);
        entry.onDeadline();
      }
    } finally {
      if (heap.length > 0 && this.timer === null) {
        const at = heap[0]!.deadlineAt;
        this.arm(at, at - performance.now());
      }
    }
  }

  private up(i: number): void {
    const heap = this.heap;
    const entry = heap[i]!;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = heap[parent]!;
      if (p.deadlineAt <= entry.deadlineAt) break;
      heap[i] = p;
      p.deadlineIndex = i;
      i = parent;
    }
    heap[i] = entry;
    entry.deadlineIndex = i;
  }

  private down(i: number): void {
    const heap = this.heap;
    const n = heap.length;
    const entry = heap[i]!;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && heap[child + 1]!.deadlineAt < heap[child]!.deadlineAt) child++;
      const c = heap[child]!;
      if (c.deadlineAt >= entry.deadlineAt) break;
      heap[i] = c;
      c.deadlineIndex = i;
      i = child;
    }
    heap[i] = entry;
    entry.deadlineIndex = i;
  }
}
