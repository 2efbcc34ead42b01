/**
 * Time and identity for audit events: nanosecond timestamps that never go
 * backwards within a process, and RFC 9562 UUIDv7 ids that sort like them.
 *
 * Why not just `Date.now()`: it has millisecond resolution (thousands of events
 * share a value under load) and follows wall-clock steps, so two events of one
 * request could be recorded out of order. The clock here is anchored to the
 * wall clock and advanced by `process.hrtime` (monotonic, nanoseconds); it is
 * re-anchored when the two drift apart by more than a millisecond (NTP slews)
 * but is clamped so it never goes backwards — ordering beats wall-clock accuracy
 * within a chain, and the error is bounded by that re-anchoring.
 */
import { randomFillSync } from 'node:crypto';

const NS_PER_MS = 1_000_000n;
const REANCHOR_EVERY = 1024;
const MAX_DRIFT_NS = 1_000_000n;

export class AuditClock {
  #anchorEpochNs: bigint;
  #anchorHr: bigint;
  #last = 0n;
  #calls = 0;

  constructor() {
    this.#anchorEpochNs = BigInt(Date.now()) * NS_PER_MS;
    this.#anchorHr = process.hrtime.bigint();
  }

  /** Epoch nanoseconds, strictly increasing across calls on this clock. */
  now(): bigint {
    let ns = this.#anchorEpochNs + (process.hrtime.bigint() - this.#anchorHr);
    if (++this.#calls >= REANCHOR_EVERY) {
      this.#calls = 0;
      const wall = BigInt(Date.now()) * NS_PER_MS;
      const drift = ns - wall;
      if (drift > MAX_DRIFT_NS || drift < -MAX_DRIFT_NS) {
        this.#anchorEpochNs = wall;
        this.#anchorHr = process.hrtime.bigint();
        ns = wall;
      }
    }
    if (ns <= this.#last) ns = this.#last + 1n;
    this.#last = ns;
    return ns;
  }
}

// The date-and-seconds prefix changes once a second: format it once per second, not per event.
let cachedSecond = -1;
let cachedPrefix = '';

/** RFC 3339 UTC with nine fractional digits: fixed width, so it sorts as text (stores compare it as a string). */
export function formatTimestamp(epochNs: bigint): string {
  const second = Number(epochNs / 1_000_000_000n);
  if (second !== cachedSecond) {
    cachedSecond = second;
    cachedPrefix = new Date(second * 1000).toISOString().slice(0, 20); // 2026-11-24T02:23:01.
  }
  return `${cachedPrefix}${String(Number(epochNs % 1_000_000_000n)).padStart(9, '0')}Z`;
}

const TIMESTAMP = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{9})Z$/;

/** Inverse of `formatTimestamp`; null when the text is not one. */
export function parseTimestamp(text: string): bigint | null {
  const m = TIMESTAMP.exec(text);
  if (m === null) return null;
  const seconds = Date.parse(`${m[1]}Z`);
  if (Number.isNaN(seconds)) return null;
  return BigInt(seconds) * NS_PER_MS + BigInt(m[2] as string);
}

// Random bytes are drawn in bulk: one randomFillSync per 512 ids instead of one per id.
const POOL = Buffer.alloc(8 * 512);
let poolOffset = POOL.length;
/** Offset in POOL of 6 fresh random bytes. */
function random6(): number {
  if (poolOffset + 6 > POOL.length) {
    randomFillSync(POOL);
    poolOffset = 0;
  }
  const at = poolOffset;
  poolOffset += 6;
  return at;
}

const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');
/** Where byte i's two hex digits go in the 36-character text (dashes after bytes 3, 5, 7 and 9). */
const HEX_AT = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/**
 * RFC 9562 UUIDv7 generator, monotonic per instance.
 *
 * Layout: 48-bit Unix milliseconds | version 7 | 12-bit `rand_a` | variant 10 | 62-bit `rand_b`.
 * `rand_a` carries the sub-millisecond fraction of the timestamp (§6.2 method 3,
 * 1/4096 ms ≈ 244 ns steps), and the top 14 bits of `rand_b` a counter that
 * increments when two ids fall in the same step (§6.2 method 1), so ids from one
 * generator sort in creation order; the other 48 bits stay random.
 */
export class UuidV7 {
  #lastStep = -1;
  #counter = 0;
  readonly #bytes = Buffer.alloc(16);
  // The text is built in place and read out as one string: concatenating 20 pieces allocated ~20 strings per id.
  readonly #text = Buffer.from('00000000-0000-0000-0000-000000000000', 'latin1');

  /** `epochNs` from an AuditClock: the id then sorts with the event's timestamp. */
  next(epochNs: bigint): string {
    const ms = Number(epochNs / NS_PER_MS);
    const fraction = Math.floor((Number(epochNs % NS_PER_MS) * 4096) / 1_000_000);
    let step = ms * 4096 + fraction;
    if (step <= this.#lastStep) {
      this.#counter++;
      // The 14-bit counter ran out within one step: borrow the next step (stays monotonic, drifts < 1 µs).
      if (this.#counter > 0x3fff) {
        step = this.#lastStep + 1;
        this.#counter = 0;
      } else {
        step = this.#lastStep;
      }
    } else {
      this.#counter = 0;
    }
    this.#lastStep = step;
    const stepMs = Math.floor(step / 4096);
    const stepFraction = step % 4096;
    const b = this.#bytes;
    // 48-bit big-endian milliseconds (two writes: JS bit operators are 32-bit).
    b.writeUIntBE(stepMs, 0, 6);
    b[6] = 0x70 | (stepFraction >>> 8);
    b[7] = stepFraction & 0xff;
    b[8] = 0x80 | ((this.#counter >>> 8) & 0x3f);
    b[9] = this.#counter & 0xff;
    const r = random6();
    for (let i = 0; i < 6; i++) b[10 + i] = POOL[r + i] as number;
    const text = this.#text;
    for (let i = 0; i < 16; i++) {
      const byte = b[i] as number;
      const at = HEX_AT[i] as number;
      text[at] = HEX_DIGITS[byte >>> 4] as number;
      text[at + 1] = HEX_DIGITS[byte & 0x0f] as number;
    }
    return text.toString('latin1', 0, 36);
  }
}

export const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
