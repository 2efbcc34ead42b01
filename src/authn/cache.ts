/**
 * Verified-token cache: a repeated token skips parsing and signature verification.
 *
 * - Keyed by SHA-256 of the token (plus the provider), so raw tokens are not kept
 *   around in memory and keys have a fixed size.
 * - Bounded LRU on a Map (insertion order = recency). A hit re-inserts its entry only
 *   once half the capacity or more has been inserted since its last insert: a
 *   hot entry is moved long before it could reach the eviction end, and the steady-state
 *   hit costs one Map lookup instead of a delete + insert.
 * - Eviction takes the oldest key from one long-lived iterator over the Map. A fresh
 *   `keys().next()` per eviction would walk every slot deleted since V8 last compacted
 *   the table (evictions and moves leave thousands in a full cache): 2-7 µs per insert
 *   in a unique-token storm, where every request inserts, against ~0.2 µs. Everything before the
 *   iterator's position has been deleted, so what it yields next is the oldest entry.
 * - An entry is valid in [validFrom, validUntil): at most until its `exp` (+ skew),
 *   its max age and the cache TTL, re-checked against the clock on every hit.
 * - An entry dies with its key: each remembers its key's `ref` and the source's
 *   generation; when the generation moved, the key must still be there.
 */
import { hash } from 'node:crypto';
import type { DecisionRecord, Identity } from '../core/context.js';
import type { KeySource } from './key-source.js';

export interface CachedToken {
  readonly providerName: string;
  readonly identity: Identity;
  /** Flat `[name, value, …]`; shared between requests, never mutated. */
  readonly upstreamHeaders: readonly string[];
  /** Decision records, prebuilt: a hit allocates none. */
  readonly verifiedRecord: DecisionRecord;
  readonly cachedRecord: DecisionRecord;
  readonly source: KeySource;
  readonly keyRef: string;
  /** Epoch ms: the token may be accepted from… */
  readonly validFromMs: number;
  /** …until (exclusive). */
  readonly validUntilMs: number;
  /** The source generation at which the key was last known present. */
  generation: number;
  /** Cache bookkeeping: the insert count when this entry was last (re)inserted. */
  insertedAt: number;
}

export interface CacheStats {
  size: number;
  maxEntries: number;
  hits: number;
  misses: number;
}

export function tokenDigest(token: string): string {
  return hash('sha256', token, 'base64');
}

export class VerifiedTokenCache {
  readonly maxEntries: number;
  hits = 0;
  misses = 0;
  private readonly entries = new Map<string, CachedToken>();
  /** Inserts so far (monotonic); eviction only ever follows an insert. */
  private inserts = 0;
  /** Walks the keys oldest first, once, across evictions (see the file comment). */
  private evictor: MapIterator<string> | null = null;
  private readonly refreshAfter: number;

  constructor(maxEntries: number) {
    this.maxEntries = maxEntries;
    this.refreshAfter = Math.floor(maxEntries / 2);
  }

  get size(): number {
    return this.entries.size;
  }

  /** `key` = `tokenDigest(token) + provider tag`. No crypto, no parsing. */
  get(key: string, nowMs: number): CachedToken | undefined {
    const entry = this.entries.get(key);
    if (entry === undefined) {
      this.misses++;
      return undefined;
    }
    if (nowMs < entry.validFromMs || nowMs >= entry.validUntilMs || !keyStillThere(entry)) {
      // Expired (or its key left): the full verification that follows gives the precise reason.
      this.entries.delete(key);
      this.misses++;
      return undefined;
    }
    if (this.inserts - entry.insertedAt >= this.refreshAfter) this.insert(key, entry);
    this.hits++;
    return entry;
  }

  set(key: string, entry: CachedToken): void {
    this.insert(key, entry);
  }

  private insert(key: string, entry: CachedToken): void {
    entry.insertedAt = ++this.inserts;
    const entries = this.entries;
    entries.delete(key);
    entries.set(key, entry);
    if (entries.size > this.maxEntries) {
      let oldest = (this.evictor ??= entries.keys()).next();
      if (oldest.done) {
        // Cannot happen while the cache holds entries (they all lie ahead of the iterator); cheap insurance.
        this.evictor = entries.keys();
        oldest = this.evictor.next();
      }
      if (!oldest.done) entries.delete(oldest.value);
    }
  }

  /** After a source's keys changed: drop every entry whose key is gone (rotation, expiry). */
  sweep(source: KeySource): void {
    const generation = source.generation;
    for (const [key, entry] of this.entries) {
      if (entry.source !== source) continue;
      if (source.has(entry.keyRef)) entry.generation = generation;
      else this.entries.delete(key);
    }
  }

  /**
   * Drops every entry whose identity `matches` (revocation: a revoked token must not
   * outlive its revocation in the cache). O(size); runs on a revocation, never per request.
   */
  evict(matches: (identity: Identity) => boolean): number {
    let evicted = 0;
    for (const [key, entry] of this.entries) {
      if (!matches(entry.identity)) continue;
      this.entries.delete(key);
      evicted++;
    }
    return evicted;
  }

  clear(): void {
    this.entries.clear();
    this.evictor = null;
  }

  stats(): CacheStats {
    return { size: this.entries.size, maxEntries: this.maxEntries, hits: this.hits, misses: this.misses };
  }
}

function keyStillThere(entry: CachedToken): boolean {
  const generation = entry.source.generation;
  if (generation === entry.generation) return true;
  if (!entry.source.has(entry.keyRef)) return false;
  entry.generation = generation;
  return true;
}
