/**
 * A JWKS fetched from a configured URL, in the manner of jose's `createRemoteJWKSet`
 * but with the lifecycle a gateway needs:
 *
 * - refreshed in the background every `cacheTtlMs` (so cached verified tokens also
 *   learn about removed keys without a request having to miss first);
 * - on an unknown `kid`: one refetch, single-flight (every waiter shares the one
 *   in-flight fetch) and at most once per `cooldownMs`, so a flood of random kids
 *   costs at most one fetch per cooldown;
 * - stale-while-revalidate: when the endpoint fails, the last good keys stay in use
 *   until `maxStaleMs` after the last success, then tokens get `jwt.jwks_unavailable`.
 */
import { performance } from 'node:perf_hooks';
import type { JWSHeaderParameters } from 'jose';
import { KeyLookupError } from './failures.js';
import { fetchJson, type FetchLimits } from './http-fetch.js';
import {
  JwkKeySet,
  JwksBackedSource,
  thenCandidates,
  type KeyCandidate,
  type KeyResolution,
  type KeySourceKind,
  type SourceHooks,
} from './key-source.js';

export interface RemoteJwksOptions extends FetchLimits {
  readonly cacheTtlMs: number;
  readonly cooldownMs: number;
  readonly maxStaleMs: number;
}

export class RemoteJwksKeySource extends JwksBackedSource {
  readonly kind: KeySourceKind;
  readonly ready: Promise<void>;
  readonly url: string;
  /** Statistics: fetch attempts and failed attempts. */
  fetches = 0;
  failures = 0;
  private readonly options: RemoteJwksOptions;
  private readonly hooks: SourceHooks;
  private inflight: Promise<boolean> | null = null;
  /** performance.now() of the last attempt: the cooldown counts from it. */
  private lastAttempt = -Infinity;
  private refreshTimer: NodeJS.Timeout | null = null;
  private staleTimer: NodeJS.Timeout | null = null;
  private readonly abort = new AbortController();
  private closed = false;

  constructor(url: string, options: RemoteJwksOptions, hooks: SourceHooks, kind: KeySourceKind = 'jwks_url') {
    super();
    this.url = url;
    this.options = options;
    this.hooks = hooks;
    this.kind = kind;
    // Fetched at compile time, not on the first request; failures are retried by the timer.
    this.ready = this.refresh().then(() => undefined);
  }

  resolve(header: JWSHeaderParameters): KeyResolution {
    const keys = this.keys;
    if (keys === null) return this.resolveUnloaded(header);
    // The common case, a known key with the keys at hand, stays synchronous.
    return thenCandidates(keys.select(header), (found) => (found.length > 0 ? found : this.refetchFor(header, keys)));
  }

  /** Never loaded, or expired past maxStale: join the fetch in flight, or start one if the cooldown allows. */
  private async resolveUnloaded(header: JWSHeaderParameters): Promise<readonly KeyCandidate[]> {
    const pending = this.inflight ?? (this.cooldownOver() ? this.refresh() : null);
    if (pending !== null) await pending;
    const keys = this.keys as JwkKeySet | null;
    if (keys === null) throw new KeyLookupError('jwt.jwks_unavailable', `no usable JWKS from ${this.url}`);
    const found = await keys.select(header);
    return found.length > 0 ? found : this.refetchFor(header, keys);
  }

  /** Unknown kid (or no key for this alg) in `keys`: perhaps a key published since the last fetch. */
  private async refetchFor(header: JWSHeaderParameters, keys: JwkKeySet): Promise<readonly KeyCandidate[]> {
    let pending = this.inflight;
    if (pending === null) {
      if (!this.cooldownOver()) throw new KeyLookupError('jwt.unknown_kid', 'no matching key; refetch in cooldown');
      pending = this.refresh();
    }
    const ok = await pending;
    const now = this.keys as JwkKeySet | null;
    if (now === null) throw new KeyLookupError('jwt.jwks_unavailable', `no usable JWKS from ${this.url}`);
    if (now !== keys) {
      const again = await now.select(header);
      if (again.length > 0) return again;
    }
    if (!ok) throw new KeyLookupError('jwt.jwks_unavailable', 'no matching key and the refetch failed');
    throw new KeyLookupError('jwt.unknown_kid', 'no matching key after refetch');
  }

  close(): void {
    this.closed = true;
    this.abort.abort();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    if (this.staleTimer) clearTimeout(this.staleTimer);
    this.refreshTimer = null;
    this.staleTimer = null;
    this.clearListeners();
  }

  private cooldownOver(): boolean {
    return performance.now() - this.lastAttempt >= this.options.cooldownMs;
  }

  /** Single-flight: every caller during a fetch gets the same promise. */
  private refresh(): Promise<boolean> {
    if (this.inflight !== null) return this.inflight;
    this.lastAttempt = performance.now();
    this.fetches++;
    const pending = this.load();
    this.inflight = pending;
    return pending;
  }

  private async load(): Promise<boolean> {
    let ok = false;
    try {
      const set = await JwkKeySet.from(await fetchJson(this.url, this.options, this.abort.signal));
      if (!this.closed) {
        const changed = this.install(set);
        this.armStaleTimer();
        this.hooks.emit({
          type: 'keys_loaded',
          provider: this.hooks.provider,
          source: this.kind,
          keys: set.size,
          skipped: set.skipped,
          generation: this.generation,
          changed,
        });
        ok = true;
      }
    } catch (err) {
      this.failures++;
      if (!this.closed) {
        this.hooks.emit({
          type: 'keys_error',
          provider: this.hooks.provider,
          source: this.kind,
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }
    this.inflight = null;
    // Fresh keys: next refresh at the TTL. A failure: retry once the cooldown allows.
    if (!this.closed) this.scheduleRefresh(ok ? this.options.cacheTtlMs : this.options.cooldownMs);
    return ok;
  }

  private scheduleRefresh(delayMs: number): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      void this.refresh();
    }, delayMs);
    this.refreshTimer.unref();
  }

  private armStaleTimer(): void {
    if (this.staleTimer) clearTimeout(this.staleTimer);
    this.staleTimer = setTimeout(() => {
      this.staleTimer = null;
      if (this.closed || this.keys === null) return;
      // No successful fetch for maxStale: these keys can no longer be vouched for.
      this.install(null);
      this.hooks.emit({ type: 'keys_expired', provider: this.hooks.provider, source: this.kind });
    }, this.options.maxStaleMs);
    this.staleTimer.unref();
  }
}
