import { gcraAdmit, gcraCredit, gcraLease } from './gcra.js';

/**
 * In-process GCRA buckets: one number (the TAT) per key in a Map, bounded by
 * `maxKeys`.
 *
 * Eviction rule — why it cannot refill a bucket. When the map is full, a
 * candidate is taken from the oldest end (insertion order, with second chances):
 * - a candidate whose TAT is in the past is a full bucket: dropping it loses
 *   nothing (an absent key *is* a full bucket), so it goes first;
 * - a candidate still carrying debt (a "hot" key) gets a second chance — moved
 *   to the young end — up to `SECOND_CHANCES` times per eviction;
 * - when only hot keys are left (the table is flooded), the oldest one is
 *   evicted anyway and its TAT is folded into the ghost table: a fixed array of
 *   TATs indexed by a hash of the key, keeping the maximum of what lands in a
 *   slot. A key that is not in the map starts from its ghost slot, so an evicted
 *   client comes back exactly as drained as it left — or more, when another
 *   evicted key shares its slot: collisions err towards less quota, never more.
 *   Ghost entries need no cleanup: a TAT in the past means "full", as an empty
 *   slot does.
 *
 * So memory is bounded (`maxKeys` entries + 8 bytes × `ghostSlots`) whatever the
 * number of distinct keys, and flooding the table with fresh keys buys nobody a
 * fresh bucket. Admitting a request updates the TAT in place (no reordering on
 * the hot path): recency only matters under eviction pressure, and the rule
 * above is about debt, not recency.
 */
/** Hot keys passed over per eviction before one is ghosted: bounds the work of one insert. */
const SECOND_CHANCES = 4;

export class MemoryGcraStore {
  readonly maxKeys: number;
  /** TAT of the key after the last `take` (admitted or not): callers derive remaining / reset from it. */
  tat: number;
  /** Keys dropped to stay within `maxKeys`, and how many of them carried debt into the ghost table. */
  evictions: number;
  ghosted: number;
  private readonly tats: Map<string, number>;
  private readonly ghost: Float64Array;
  private readonly ghostMask: number;
  private readonly scratch: { tat: number };
  /**
   * A live iterator walks insertion order and survives mutation; re-creating one
   * per eviction would rescan the holes earlier deletions left at the front of
   * V8's table (quadratic under churn).
   */
  private cursor: MapIterator<[string, number]>;
  private flooded: boolean;

  constructor(options: { maxKeys?: number; ghostSlots?: number } = {}) {
    this.maxKeys = Math.max(1, options.maxKeys ?? 100_000);
    // A power of two, so the slot is a mask instead of a division.
    const slots = 2 ** Math.ceil(Math.log2(Math.max(1024, options.ghostSlots ?? 65_536)));
    this.ghost = new Float64Array(slots);
    this.ghostMask = slots - 1;
    this.tats = new Map();
    this.tat = 0;
    this.evictions = 0;
    this.ghosted = 0;
    this.scratch = { tat: 0 };
    this.cursor = this.tats.entries();
    this.flooded = false;
  }

  get size(): number {
    return this.tats.size;
  }

  /** The stored TAT of `key` (from the ghost table when not resident); `now` when the bucket is full. */
  peek(key: string, now: number): number {
    const tat = this.tats.get(key) ?? this.ghost[hash32(key) & this.ghostMask]!;
    return tat > now ? tat : now;
  }

  /** Admits `n` tokens if the bucket holds them. `this.tat` gets the key's TAT after the decision. */
  take(key: string, now: number, emission: number, capacity: number, n = 1): boolean {
    const tats = this.tats;
    const stored = tats.get(key);
    const tat = stored ?? this.ghost[hash32(key) & this.ghostMask]!;
    const next = gcraAdmit(tat, now, emission, capacity, n);
    if (next !== next) {
      // Denied: nothing changes (a denied request costs nothing).
      this.tat = tat > now ? tat : now;
      return false;
    }
    this.tat = next;
    if (stored === undefined && tats.size >= this.maxKeys) this.evict(now);
    tats.set(key, next);
    return true;
  }

  /** Raises `key`'s TAT to at least `tat` (never lowers it): starts a bucket as drained as a known state. */
  seed(key: string, tat: number, now: number): void {
    if (!(tat > now)) return;
    const tats = this.tats;
    const stored = tats.get(key);
    const current = stored ?? this.ghost[hash32(key) & this.ghostMask]!;
    if (current >= tat) return;
    if (stored === undefined && tats.size >= this.maxKeys) this.evict(now);
    tats.set(key, tat);
  }

  /** Gives `n` tokens back to `key` (a refund); never beyond a full bucket. */
  credit(key: string, now: number, emission: number, n = 1): void {
    const stored = this.tats.get(key);
    if (stored === undefined) return; // evicted: its debt sits in the ghost table, and a refund may be lost (errs towards less).
    this.tats.set(key, gcraCredit(stored, now, emission, n));
  }

  /**
   * Lease semantics for the primary-IPC host: credit `ret` unused tokens, then
   * debit up to `want` (at least `min`, else none). Same rule as the Redis script.
   */
  lease(key: string, now: number, emission: number, capacity: number, want: number, min: number, ret: number): number {
    const tats = this.tats;
    const stored = tats.get(key);
    let tat = stored ?? this.ghost[hash32(key) & this.ghostMask]!;
    if (ret > 0) tat = gcraCredit(tat, now, emission, ret);
    const granted = want > 0 ? gcraLease(tat, now, emission, capacity, want, min, this.scratch) : 0;
    if (granted > 0) tat = this.scratch.tat;
    this.tat = tat > now ? tat : now;
    if (granted === 0 && ret === 0) return 0;
    if (stored === undefined && tats.size >= this.maxKeys) this.evict(now);
    tats.set(key, tat);
    return granted;
  }

  clear(): void {
    this.tats.clear();
    this.ghost.fill(0);
    this.cursor = this.tats.entries();
  }

  /** Makes room for one key (see the eviction rule above). */
  private evict(now: number): void {
    const tats = this.tats;
    // Flooded with hot keys (the last eviction found no full bucket): do not keep paying for second chances.
    const chances = this.flooded ? 1 : SECOND_CHANCES;
    for (let chance = 0; ; chance++) {
      let it = this.cursor.next();
      if (it.done === true) {
        this.cursor = tats.entries();
        it = this.cursor.next();
        if (it.done === true) return;
      }
      const [key, tat] = it.value;
      tats.delete(key);
      if (tat <= now) {
        this.evictions++;
        this.flooded = false;
        return;
      }
      if (chance < chances) {
        tats.set(key, tat); // to the young end: the cursor meets it again only after every other key
        continue;
      }
      this.evictions++;
      this.ghosted++;
      this.flooded = true;
      const slot = hash32(key) & this.ghostMask;
      if (tat > this.ghost[slot]!) this.ghost[slot] = tat;
      return;
    }
  }
}

/**
 * Requests in flight per key. A key at zero keeps its entry (deleting and
 * re-adding on every request would churn the Map); zero entries are swept when
 * the table reaches `maxKeys`. Beyond `maxKeys` keys actually in flight, new keys
 * are refused rather than an in-flight count forgotten (forgetting one would hand
 * out slots the limit does not have).
 */
export class MemoryConcurrencyStore {
  readonly maxKeys: number;
  private readonly inflight: Map<string, number>;
  /** Entries at zero: a full table is swept only when there is something to sweep. */
  private zeros: number;

  constructor(maxKeys = 100_000) {
    this.maxKeys = maxKeys;
    this.inflight = new Map();
    this.zeros = 0;
  }

  /** In-flight count after admitting, or -1 when `limit` is reached, -2 when the table is full. */
  acquire(key: string, limit: number): number {
    const inflight = this.inflight;
    const current = inflight.get(key);
    if (current === undefined) {
      if (inflight.size >= this.maxKeys && (this.zeros === 0 || this.sweep() >= this.maxKeys)) return -2;
      inflight.set(key, 1);
      return 1;
    }
    if (current >= limit) return -1;
    if (current === 0) this.zeros--;
    inflight.set(key, current + 1);
    return current + 1;
  }

  release(key: string): void {
    const current = this.inflight.get(key);
    if (current === undefined || current === 0) return;
    this.inflight.set(key, current - 1);
    if (current === 1) this.zeros++;
  }

  count(key: string): number {
    return this.inflight.get(key) ?? 0;
  }

  /** Keys with something in flight. */
  get size(): number {
    let n = 0;
    for (const v of this.inflight.values()) if (v > 0) n++;
    return n;
  }

  /** Drops keys at zero; returns the entries left. */
  private sweep(): number {
    for (const [key, v] of this.inflight) if (v === 0) this.inflight.delete(key);
    this.zeros = 0;
    return this.inflight.size;
  }
}

/** FNV-1a, 32 bits: only spreads keys over ghost slots (collisions are safe, see above). */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
