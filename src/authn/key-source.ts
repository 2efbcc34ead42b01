/**
 * What every key source (remote JWKS, JWKS file, PEM keys, discovery, secret)
 * offers the verifier, and the JWKS snapshot the JWKS-based ones share.
 *
 * A source never looks at anything in a token but `alg` and `kid`: `jku`, `x5u`,
 * `x5c` and an embedded `jwk` are ignored, so no token can make Bulwark fetch a URL
 * or trust a key it carries.
 */
import { calculateJwkThumbprint, createLocalJWKSet, type CryptoKey, type JWK, type JWSHeaderParameters } from 'jose';

export type VerificationKey = CryptoKey | Uint8Array;

export type KeySourceKind = 'jwks_url' | 'jwks_file' | 'public_keys' | 'discovery' | 'secret';

/** One key that may have signed a token. */
export interface KeyCandidate {
  readonly key: VerificationKey;
  /**
   * Stable identity of the key material (RFC 7638 thumbprint for JWKs, `pem:<i>`,
   * `secret`): the verified-token cache remembers it to drop entries whose key left.
   */
  readonly ref: string;
  readonly kid: string | undefined;
}

/** Never empty: a source throws `KeyLookupError` rather than answer with no key. */
export type KeyResolution = readonly KeyCandidate[] | Promise<readonly KeyCandidate[]>;

/** `resolution`, then `next` on its candidates: at once when they are at hand, else when they arrive. */
export function thenCandidates<T>(
  resolution: KeyResolution,
  next: (candidates: readonly KeyCandidate[]) => T | Promise<T>,
): T | Promise<T> {
  return resolution instanceof Promise ? resolution.then(next) : next(resolution);
}

/** Load, rotation and failure notices, for logs and metrics (wired by the caller). */
export type AuthnEvent =
  | {
      type: 'keys_loaded';
      provider: string;
      source: KeySourceKind;
      keys: number;
      skipped: number;
      generation: number;
      /** False when a refresh found the same keys (the generation did not move). */
      changed: boolean;
    }
  | { type: 'keys_error'; provider: string; source: KeySourceKind; error: string }
  | { type: 'keys_expired'; provider: string; source: KeySourceKind };

export interface SourceHooks {
  readonly provider: string;
  emit(event: AuthnEvent): void;
}

export interface KeySource {
  readonly kind: KeySourceKind;
  /** Bumped whenever the set of usable keys changes (rotation, reload, expiry). */
  readonly generation: number;
  /**
   * Keys that may verify a token with this header; throws (or rejects with) `KeyLookupError`
   * when there are none. Synchronous whenever the answer is at hand (keys loaded, this
   * `alg`/`kid` seen before): the cache-miss path then costs no promise for the key.
   */
  resolve(header: JWSHeaderParameters): KeyResolution;
  /** jose-compatible `getKey`: the first candidate. */
  getKey(header: JWSHeaderParameters): Promise<VerificationKey>;
  /** Whether the key with this `ref` is still usable. */
  has(ref: string): boolean;
  /** Called after every generation change; returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
  /**
   * Settles after the first load attempt. Rejects when a local source (file, PEM,
   * secret) cannot be loaded; a remote one resolves either way and keeps retrying.
   */
  readonly ready: Promise<void>;
  close(): void;
}

export class JwksInvalidError extends Error {
  override readonly name = 'JwksInvalidError';
}

interface JwkEntry {
  readonly kid: string | undefined;
  readonly ref: string;
  /** jose's own selection (kty/crv/alg/use/key_ops) and import cache for this one key. */
  readonly select: (header: JWSHeaderParameters) => Promise<CryptoKey>;
}

/** Real key sets hold a handful of keys; members beyond this many are skipped unexamined (bounds load-time work). */
export const MAX_JWKS_KEYS = 100;

const NO_CANDIDATES: readonly KeyCandidate[] = Object.freeze([]);
const NO_ENTRIES: readonly JwkEntry[] = Object.freeze([]);

/** An algorithm to import a JWK with at load, to prove it usable before any token needs it. */
function probeAlgorithm(jwk: JWK): string | undefined {
  if (typeof jwk.alg === 'string') return jwk.alg;
  switch (jwk.kty) {
    case 'RSA':
      return 'RS256';
    case 'EC':
      return jwk.crv === 'P-256' ? 'ES256' : jwk.crv === 'P-384' ? 'ES384' : jwk.crv === 'P-521' ? 'ES512' : undefined;
    case 'OKP':
      return jwk.crv === 'Ed25519' ? 'EdDSA' : undefined;
    default:
      return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * An immutable, validated snapshot of a JWKS. Keys are indexed by `kid` in a Map
 * (so `__proto__`, paths or SQL in a `kid` are just misses) and each is selected
 * and imported through jose's `createLocalJWKSet`, one single-key set per key so
 * that the key that verified a token is known by its thumbprint.
 */
export class JwkKeySet {
  readonly size: number;
  readonly skipped: number;
  /** Equal fingerprints = same usable keys: a refetch that changed nothing keeps the generation. */
  readonly fingerprint: string;
  readonly refs: ReadonlySet<string>;
  private readonly all: readonly JwkEntry[];
  private readonly byKid: ReadonlyMap<string, readonly JwkEntry[]>;
  /** `alg` → `kid` (undefined: none) → candidates, for answers with at least one key (see `select`). */
  private readonly memo = new Map<string, Map<string | undefined, readonly KeyCandidate[]>>();

  private constructor(entries: JwkEntry[], skipped: number) {
    this.all = entries;
    this.size = entries.length;
    this.skipped = skipped;
    const byKid = new Map<string, JwkEntry[]>();
    for (const entry of entries) {
      if (entry.kid === undefined) continue;
      const list = byKid.get(entry.kid);
      if (list) list.push(entry);
      else byKid.set(entry.kid, [entry]);
    }
    this.byKid = byKid;
    this.refs = new Set(entries.map((e) => e.ref));
    this.fingerprint = entries
      .map((e) => `${e.kid ?? ''}|${e.ref}`)
      .sort()
      .join('\n');
  }

  /**
   * Validates a parsed JWKS. Unusable members (encryption keys, symmetric or private
   * keys, unknown types, keys jose cannot import) are skipped, as a verifier must;
   * a set with no usable signature key at all is invalid.
   */
  static async from(document: unknown): Promise<JwkKeySet> {
    if (!isObject(document) || !Array.isArray(document['keys'])) {
      throw new JwksInvalidError('not a JSON Web Key Set (an object with a "keys" array)');
    }
    const members = document['keys'] as unknown[];
    const entries: JwkEntry[] = [];
    // Only the first MAX_JWKS_KEYS members are examined, usable or not: each costs a
    // thumbprint and an import attempt, so counting only the usable ones would let a
    // set of thousands of junk members (a 1 MB body holds ~20 000) burn seconds of CPU.
    const examined = Math.min(members.length, MAX_JWKS_KEYS);
    let skipped = members.length - examined;
    for (let i = 0; i < examined; i++) {
      const member = members[i];
      const entry = isObject(member) ? await JwkKeySet.entry(member as JWK) : null;
      if (entry) entries.push(entry);
      else skipped++;
    }
    if (entries.length === 0) throw new JwksInvalidError(`no usable signature key (${skipped} skipped)`);
    return new JwkKeySet(entries, skipped);
  }

  private static async entry(jwk: JWK): Promise<JwkEntry | null> {
    if (jwk.use !== undefined && jwk.use !== 'sig') return null;
    if (jwk.kty === 'oct' || jwk.d !== undefined) return null;
    if (jwk.kid !== undefined && typeof jwk.kid !== 'string') return null;
    const probe = probeAlgorithm(jwk);
    if (probe === undefined) return null;
    try {
      const ref = await calculateJwkThumbprint(jwk);
      const select = createLocalJWKSet({ keys: [jwk] });
      // Imports once now (jose caches it): a broken key is skipped at load, not at the first request.
      const key = await select({ alg: probe, kid: jwk.kid });
      // jose refuses RSA under 2048 bits only when verifying; such a key is no candidate at all.
      const modulus = (key.algorithm as { modulusLength?: number }).modulusLength;
      if (modulus !== undefined && modulus < 2048) return null;
      return { kid: jwk.kid, ref, select };
    } catch {
      return null;
    }
  }

  /**
   * Candidates for a header: by `kid` when the token has one (a Map lookup), else every key.
   * Synchronous once this `alg` and `kid` have been answered before: answers with at least one
   * key are kept per `alg` and `kid` (the set is immutable, a rotation builds a new one). Only
   * non-empty answers are kept, and only a `kid` of this set and an `alg` jose could use with
   * one of its keys give one, so the memo is bounded by the set (keys x algorithms), whatever
   * the tokens claim.
   */
  select(header: JWSHeaderParameters): readonly KeyCandidate[] | Promise<readonly KeyCandidate[]> {
    const { alg, kid } = header;
    const known = typeof alg === 'string' ? this.memo.get(alg)?.get(kid) : undefined;
    if (known !== undefined) return known;
    const entries = kid === undefined ? this.all : (this.byKid.get(kid) ?? NO_ENTRIES);
    if (entries.length === 0) return NO_CANDIDATES;
    return this.selectAndRemember(header, entries);
  }

  private async selectAndRemember(header: JWSHeaderParameters, entries: readonly JwkEntry[]): Promise<readonly KeyCandidate[]> {
    const out: KeyCandidate[] = [];
    for (const entry of entries) {
      try {
        out.push(Object.freeze({ key: await entry.select(header), ref: entry.ref, kid: entry.kid }));
      } catch {
        // Not usable for this `alg` (wrong kty/crv, the JWK's own `alg` differs…).
      }
    }
    if (out.length === 0) return NO_CANDIDATES;
    const candidates = Object.freeze(out);
    const { alg, kid } = header;
    if (typeof alg === 'string' && (kid === undefined || typeof kid === 'string')) {
      let byKid = this.memo.get(alg);
      if (byKid === undefined) this.memo.set(alg, (byKid = new Map()));
      byKid.set(kid, candidates);
    }
    return candidates;
  }
}

/** Generation counter and change listeners, shared by the JWKS-based sources. */
export abstract class JwksBackedSource implements KeySource {
  abstract readonly kind: KeySourceKind;
  abstract readonly ready: Promise<void>;
  generation = 0;
  protected keys: JwkKeySet | null = null;
  private readonly listeners = new Set<() => void>();

  abstract resolve(header: JWSHeaderParameters): KeyResolution;
  abstract close(): void;

  async getKey(header: JWSHeaderParameters): Promise<VerificationKey> {
    return (await this.resolve(header))[0]!.key;
  }

  has(ref: string): boolean {
    return this.keys !== null && this.keys.refs.has(ref);
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  /** Swaps the snapshot; returns whether the usable keys changed (and the generation moved). */
  protected install(next: JwkKeySet | null): boolean {
    const current = this.keys;
    if (next !== null && current !== null && next.fingerprint === current.fingerprint) return false;
    if (next === null && current === null) return false;
    this.keys = next;
    this.generation++;
    for (const listener of this.listeners) listener();
    return true;
  }

  protected clearListeners(): void {
    this.listeners.clear();
  }
}
