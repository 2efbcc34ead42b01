/**
 * The local revocation set: what the request path consults. Four maps (by `jti`,
 * by subject, by session id, and "issued to subject X before T"), so a check is at
 * most four Map lookups with no allocation; an empty set costs one comparison.
 *
 * Entries live until the tokens they cover would have expired (`expiresAtMs`),
 * checked on every lookup and swept in the background. A store (memory, or Redis
 * with pub/sub) carries changes between instances; the list is the same either way.
 */
import type { Identity } from '../core/context.js';
import type { RevocationCheck, RevocationVerdict } from '../authn/revocation-hook.js';
import { REVOCATION_DEFAULTS } from './schema.js';

export type RevocationKind = 'jti' | 'sub' | 'sid' | 'sub_before';

/** One revocation, as stored and published. */
export interface RevocationEntry {
  /** `kind:value` (one entry per subject for `sub_before`: a later revocation extends it). */
  readonly id: string;
  readonly kind: RevocationKind;
  /** The jti, subject or session id. */
  readonly value: string;
  /** `sub_before` only: tokens with `iat` before this (epoch seconds) are revoked. */
  readonly before?: number;
  /** Epoch ms: when every token this covers has expired, and so the entry. */
  readonly expiresAtMs: number;
  /** Epoch ms. */
  readonly createdAtMs: number;
}

/** What to revoke: exactly one of `jti`, `sub`, `sid`; `before` only with `sub`. */
export interface RevocationInput {
  jti?: string;
  sub?: string;
  sid?: string;
  /** Epoch seconds (`iat` scale): with `sub`, revoke only tokens issued before it. */
  before?: number;
  /** Epoch seconds (`exp` scale): when the covered tokens expire. Default: now (or `before`) + max token lifetime. */
  expiresAt?: number;
}

export type RevocationResult =
  { readonly revoked: false } | { readonly revoked: true; readonly reason: RevocationKind; readonly id: string };

/** The subset of an identity a check reads (an `Identity` fits). */
export interface RevocationSubject {
  readonly subject: string;
  readonly claims: Readonly<Record<string, unknown>>;
}

/** Outcome of a write: `stored` (in the shared store, propagating) or `queued` (store down: enforced here, pushed on reconnect). */
export type StoreWrite = 'stored' | 'queued';

/** What a store may do to the list. */
export interface RevocationSink {
  /** Adds (or merges into) an entry that came from elsewhere. */
  apply(entry: RevocationEntry): void;
  /** False when there was no such entry. */
  drop(id: string): boolean;
  /** Full resync: the set becomes exactly `entries`. */
  replace(entries: readonly RevocationEntry[]): void;
  entries(): RevocationEntry[];
}

export interface RevocationStore {
  readonly kind: 'memory' | 'redis';
  /** True while the store vouches for the local set (in sync with the shared store). */
  readonly available: boolean;
  /** Epoch ms of the last full sync (null: never). */
  readonly lastSyncAt: number | null;
  start(sink: RevocationSink): Promise<void>;
  add(entry: RevocationEntry): Promise<StoreWrite>;
  /** Throws RevocationStoreUnavailableError when the shared store is unreachable. */
  remove(id: string): Promise<boolean>;
  close(): Promise<void>;
}

export class RevocationStoreUnavailableError extends Error {
  override readonly name = 'RevocationStoreUnavailableError';
  readonly code = 'revocation.store_unavailable';
}

/** A revocation request that cannot be carried out (admin API: 400). */
export class RevocationInputError extends Error {
  override readonly name = 'RevocationInputError';
}

/** Longest jti / subject / session id accepted. */
export const MAX_REVOCATION_VALUE = 1024;
/** Furthest in the future an entry may expire (one year). */
const MAX_EXPIRY_MS = 366 * 86_400_000;
const SWEEP_INTERVAL_MS = 30_000;

const NOT_REVOKED: RevocationResult = Object.freeze({ revoked: false });

const VERDICTS: Readonly<Record<RevocationKind | 'store', RevocationVerdict>> = Object.freeze({
  jti: Object.freeze({ code: 'jwt.revoked', reason: 'jti' }),
  sub: Object.freeze({ code: 'jwt.revoked', reason: 'sub' }),
  sid: Object.freeze({ code: 'jwt.revoked', reason: 'sid' }),
  sub_before: Object.freeze({ code: 'jwt.revoked', reason: 'sub_before' }),
  store: Object.freeze({ code: 'revocation.store_unavailable', reason: 'store' }),
});

interface LocalEntry {
  readonly entry: RevocationEntry;
  readonly result: RevocationResult;
  /** `sub_before` threshold (−∞ for other kinds). */
  readonly before: number;
  readonly expiresAtMs: number;
}

/** Evicts identities from a verified-token cache (`VerifiedTokenCache` fits). */
export interface EvictableCache {
  evict(matches: (identity: Identity) => boolean): number;
}

export interface RevocationListOptions {
  store?: RevocationStore;
  /** `keep_last` (default): enforce the last synced set when the store is down; `closed`: refuse (503). */
  onStoreFailure?: 'keep_last' | 'closed';
  maxTokenLifetimeSec?: number;
  /** Epoch ms (tests inject one). */
  now?: () => number;
}

const isEntryKind = (kind: unknown): kind is RevocationKind =>
  kind === 'jti' || kind === 'sub' || kind === 'sid' || kind === 'sub_before';

/** Parses an entry from the wire (store, pub/sub): null when it is not one. */
export function parseEntry(value: unknown): RevocationEntry | null {
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  if (!isEntryKind(v['kind']) || typeof v['value'] !== 'string' || v['value'] === '') return null;
  const expiresAtMs = v['expiresAtMs'];
  const createdAtMs = v['createdAtMs'];
  if (typeof expiresAtMs !== 'number' || !Number.isFinite(expiresAtMs)) return null;
  if (typeof createdAtMs !== 'number' || !Number.isFinite(createdAtMs)) return null;
  const kind = v['kind'];
  const id = `${kind}:${v['value']}`;
  if (v['id'] !== id) return null;
  if (kind === 'sub_before') {
    const before = v['before'];
    if (typeof before !== 'number' || !Number.isFinite(before)) return null;
    return { id, kind, value: v['value'], before, expiresAtMs, createdAtMs };
  }
  return { id, kind, value: v['value'], expiresAtMs, createdAtMs };
}

/** Two revocations of the same id: the wider one (latest expiry, latest `before`, earliest creation). */
export function mergeEntries(a: RevocationEntry, b: RevocationEntry): RevocationEntry {
  const expiresAtMs = Math.max(a.expiresAtMs, b.expiresAtMs);
  const createdAtMs = Math.min(a.createdAtMs, b.createdAtMs);
  if (a.before !== undefined || b.before !== undefined) {
    const before = Math.max(a.before ?? -Infinity, b.before ?? -Infinity);
    return { ...a, before, expiresAtMs, createdAtMs };
  }
  return { ...a, expiresAtMs, createdAtMs };
}

/** Does `entry` cover this identity? (The same rule as the indexed lookup, for cache eviction.) */
export function entryMatches(entry: RevocationEntry, identity: RevocationSubject): boolean {
  const claims = identity.claims;
  switch (entry.kind) {
    case 'jti':
      return claims['jti'] === entry.value;
    case 'sub':
      return identity.subject === entry.value;
    case 'sid':
      return claims['sid'] === entry.value;
    case 'sub_before': {
      if (identity.subject !== entry.value) return false;
      const iat = claims['iat'];
      return typeof iat !== 'number' || iat < entry.before!;
    }
  }
}

export class RevocationList implements RevocationCheck {
  readonly store: RevocationStore;
  readonly onStoreFailure: 'keep_last' | 'closed';
  readonly maxTokenLifetimeSec: number;
  private readonly now: () => number;
  private readonly byJti = new Map<string, LocalEntry>();
  private readonly bySub = new Map<string, LocalEntry>();
  private readonly bySid = new Map<string, LocalEntry>();
  private readonly bySubBefore = new Map<string, LocalEntry>();
  private readonly caches = new Set<EvictableCache>();
  private count = 0;
  private readonly failClosed: boolean;
  private sweeper: NodeJS.Timeout | null = null;
  private readonly sink: RevocationSink;

  constructor(options: RevocationListOptions = {}) {
    this.store = options.store ?? new MemoryRevocationStore();
    this.onStoreFailure = options.onStoreFailure ?? REVOCATION_DEFAULTS.onStoreFailure;
    this.failClosed = this.onStoreFailure === 'closed';
    this.maxTokenLifetimeSec = options.maxTokenLifetimeSec ?? REVOCATION_DEFAULTS.maxTokenLifetimeSec;
    this.now = options.now ?? Date.now;
    this.sink = {
      apply: (entry) => this.apply(entry),
      drop: (id) => this.drop(id),
      replace: (entries) => this.replace(entries),
      entries: () => this.entries(),
    };
  }

  /** Connects the store and loads the shared set. Resolves even if Redis is down (it keeps retrying). */
  async start(): Promise<void> {
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
      this.sweeper.unref();
    }
    await this.store.start(this.sink);
  }

  async close(): Promise<void> {
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
    this.caches.clear();
    await this.store.close();
  }

  get size(): number {
    return this.count;
  }

  /** Whether the store vouches for the set (memory: always). */
  get available(): boolean {
    return this.store.available;
  }

  /**
   * Registers a verified-token cache: every revocation evicts the tokens it covers.
   * Returns the detach function (call it when that authn snapshot is retired).
   */
  attachCache(cache: EvictableCache): () => void {
    this.caches.add(cache);
    for (const local of this.allLocal()) this.evict(local.entry);
    return () => this.caches.delete(cache);
  }

  /** The request-path lookup: at most four Map lookups, no allocation. */
  isRevoked(identity: RevocationSubject): RevocationResult {
    if (this.count === 0) return NOT_REVOKED;
    const now = this.now();
    const claims = identity.claims;
    let local: LocalEntry | undefined;
    const jti = claims['jti'];
    if (typeof jti === 'string' && (local = this.byJti.get(jti)) !== undefined && now < local.expiresAtMs) return local.result;
    const sub = identity.subject;
    if ((local = this.bySub.get(sub)) !== undefined && now < local.expiresAtMs) return local.result;
    if ((local = this.bySubBefore.get(sub)) !== undefined && now < local.expiresAtMs) {
      const iat = claims['iat'];
      // No `iat`: no proof it was issued after T, so it is covered.
      if (typeof iat !== 'number' || iat < local.before) return local.result;
    }
    const sid = claims['sid'];
    if (typeof sid === 'string' && (local = this.bySid.get(sid)) !== undefined && now < local.expiresAtMs) return local.result;
    return NOT_REVOKED;
  }

  /** Claims only (`sub` read from them). */
  isRevokedClaims(claims: Readonly<Record<string, unknown>>): RevocationResult {
    const sub = claims['sub'];
    return this.isRevoked({ subject: typeof sub === 'string' ? sub : '', claims });
  }

  /** The authn hook (RevocationCheck): null, `jwt.revoked`, or 503 when failing closed without the store. */
  check(identity: Identity): RevocationVerdict | null {
    if (this.failClosed && !this.store.available) return VERDICTS.store;
    const result = this.isRevoked(identity);
    return result.revoked ? VERDICTS[result.reason] : null;
  }

  /**
   * Revokes: enforced on this instance at once, then written to the store (which
   * propagates it). `queued`: the shared store is down; the entry is enforced here
   * and pushed when it is back. Throws RevocationInputError for a bad request.
   */
  async revoke(input: RevocationInput): Promise<{ entry: RevocationEntry; write: StoreWrite }> {
    const entry = this.build(input);
    this.apply(entry);
    const write = await this.store.add(entry);
    return { entry: this.get(entry.id) ?? entry, write };
  }

  /** Lifts a revocation everywhere. False when there was none. Throws RevocationStoreUnavailableError. */
  async unrevoke(id: string): Promise<boolean> {
    const removed = await this.store.remove(id);
    const here = this.drop(id);
    return removed || here;
  }

  get(id: string): RevocationEntry | undefined {
    const local = this.mapFor(id)?.get(id.slice(id.indexOf(':') + 1));
    return local === undefined || local.expiresAtMs <= this.now() ? undefined : local.entry;
  }

  /** Live entries, oldest first. */
  entries(): RevocationEntry[] {
    const now = this.now();
    return [...this.allLocal()]
      .filter((l) => l.expiresAtMs > now)
      .map((l) => l.entry)
      .sort((a, b) => a.createdAtMs - b.createdAtMs);
  }

  /** Drops expired entries (also done every 30 s in the background). */
  sweep(): number {
    const now = this.now();
    let dropped = 0;
    for (const map of [this.byJti, this.bySub, this.bySid, this.bySubBefore]) {
      for (const [key, local] of map) {
        if (local.expiresAtMs > now) continue;
        map.delete(key);
        this.count--;
        dropped++;
      }
    }
    return dropped;
  }

  // -------------------------------------------------------------------------

  private build(input: RevocationInput): RevocationEntry {
    const given = (['jti', 'sub', 'sid'] as const).filter((k) => input[k] !== undefined);
    if (given.length !== 1) throw new RevocationInputError('exactly one of jti, sub, sid is required');
    const key = given[0]!;
    const value = input[key];
    if (typeof value !== 'string' || value === '' || value.length > MAX_REVOCATION_VALUE) {
      throw new RevocationInputError(`${key} must be a non-empty string of at most ${MAX_REVOCATION_VALUE} characters`);
    }
    const now = this.now();
    const lifetimeMs = this.maxTokenLifetimeSec * 1000;
    const before = input.before;
    if (before !== undefined) {
      if (key !== 'sub') throw new RevocationInputError('before goes with sub only');
      if (typeof before !== 'number' || !Number.isFinite(before) || before <= 0) {
        throw new RevocationInputError('before must be epoch seconds');
      }
    }
    let expiresAtMs: number;
    if (input.expiresAt !== undefined) {
      if (typeof input.expiresAt !== 'number' || !Number.isFinite(input.expiresAt)) {
        throw new RevocationInputError('expiresAt must be epoch seconds');
      }
      expiresAtMs = Math.round(input.expiresAt * 1000);
    } else {
      // A token issued before T expires by T + the longest lifetime; anything else by now + it.
      expiresAtMs = (before === undefined ? now : Math.min(now, before * 1000)) + lifetimeMs;
    }
    if (expiresAtMs <= now) throw new RevocationInputError('expiresAt is in the past: nothing left to revoke');
    if (expiresAtMs > now + MAX_EXPIRY_MS) throw new RevocationInputError('expiresAt is more than a year away');
    const kind: RevocationKind = before !== undefined ? 'sub_before' : key;
    const base = { id: `${kind}:${value}`, kind, value, expiresAtMs, createdAtMs: now };
    return before === undefined ? base : { ...base, before };
  }

  private mapFor(id: string): Map<string, LocalEntry> | undefined {
    const kind = id.slice(0, id.indexOf(':'));
    switch (kind) {
      case 'jti':
        return this.byJti;
      case 'sub':
        return this.bySub;
      case 'sid':
        return this.bySid;
      case 'sub_before':
        return this.bySubBefore;
      default:
        return undefined;
    }
  }

  private *allLocal(): Iterable<LocalEntry> {
    yield* this.byJti.values();
    yield* this.bySub.values();
    yield* this.bySid.values();
    yield* this.bySubBefore.values();
  }

  private apply(incoming: RevocationEntry): void {
    if (incoming.expiresAtMs <= this.now()) return;
    const map = this.mapFor(incoming.id)!;
    const current = map.get(incoming.value);
    const entry = current === undefined ? incoming : mergeEntries(current.entry, incoming);
    if (current !== undefined && sameEntry(current.entry, entry)) return;
    if (current === undefined) this.count++;
    map.set(entry.value, {
      entry,
      result: Object.freeze({ revoked: true, reason: entry.kind, id: entry.id }),
      before: entry.before ?? -Infinity,
      expiresAtMs: entry.expiresAtMs,
    });
    this.evict(entry);
  }

  private drop(id: string): boolean {
    const map = this.mapFor(id);
    if (map === undefined || !map.delete(id.slice(id.indexOf(':') + 1))) return false;
    this.count--;
    return true;
  }

  private replace(entries: readonly RevocationEntry[]): void {
    const keep = new Set(entries.map((e) => e.id));
    for (const local of [...this.allLocal()]) if (!keep.has(local.entry.id)) this.drop(local.entry.id);
    for (const entry of entries) {
      const current = this.mapFor(entry.id)?.get(entry.value);
      // The store's entry is the truth (a deleted-and-recreated entry may be narrower).
      if (current !== undefined && !sameEntry(current.entry, entry)) this.drop(entry.id);
      this.apply(entry);
    }
  }

  private evict(entry: RevocationEntry): void {
    for (const cache of this.caches) {
      try {
        cache.evict((identity) => entryMatches(entry, identity));
      } catch {
        // Eviction is hygiene (every hit is checked anyway): never let it break a revocation.
      }
    }
  }
}

function sameEntry(a: RevocationEntry, b: RevocationEntry): boolean {
  return a.expiresAtMs === b.expiresAtMs && a.before === b.before && a.createdAtMs === b.createdAtMs;
}

/** One instance: the list is the store. */
export class MemoryRevocationStore implements RevocationStore {
  readonly kind = 'memory';
  readonly available = true;
  lastSyncAt: number | null = null;
  private sink: RevocationSink | null = null;

  start(sink: RevocationSink): Promise<void> {
    this.sink = sink;
    this.lastSyncAt = Date.now();
    return Promise.resolve();
  }

  add(): Promise<StoreWrite> {
    return Promise.resolve('stored');
  }

  remove(id: string): Promise<boolean> {
    return Promise.resolve(this.sink?.entries().some((e) => e.id === id) ?? false);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
