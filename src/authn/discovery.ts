/**
 * OIDC discovery: `{issuer}/.well-known/openid-configuration` → `jwks_uri`, then a
 * remote JWKS with the provider's `jwks` settings. The document must name the
 * configured issuer exactly (OIDC Discovery §4.3), and an https issuer may not
 * send us to a cleartext JWKS. Discovery is retried (per cooldown) until it works.
 */
import { performance } from 'node:perf_hooks';
import type { JWSHeaderParameters } from 'jose';
import { KeyLookupError } from './failures.js';
import { fetchJson } from './http-fetch.js';
import { RemoteJwksKeySource, type RemoteJwksOptions } from './jwks-remote.js';
import type { KeyCandidate, KeyResolution, KeySource, SourceHooks, VerificationKey } from './key-source.js';

/** OIDC Discovery §4: remove any trailing `/`, then append the well-known path. */
export function discoveryUrl(issuer: string): string {
  return `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
}

/** The `jwks_uri` of a discovery document, or an Error saying why it is not acceptable. */
export function jwksUriFromDiscovery(document: unknown, issuer: string): string {
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new Error('discovery document is not a JSON object');
  }
  const doc = document as Record<string, unknown>;
  if (doc['issuer'] !== issuer) {
    throw new Error(`discovery document names issuer ${JSON.stringify(doc['issuer'])}, expected ${JSON.stringify(issuer)}`);
  }
  const jwksUri = doc['jwks_uri'];
  if (typeof jwksUri !== 'string') throw new Error('discovery document has no jwks_uri');
  let url: URL;
  try {
    url = new URL(jwksUri);
  } catch {
    throw new Error(`jwks_uri ${JSON.stringify(jwksUri)} is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('jwks_uri must be http(s)');
  if (new URL(issuer).protocol === 'https:' && url.protocol !== 'https:') {
    throw new Error('an https issuer may not publish a cleartext jwks_uri');
  }
  return url.href;
}

export class DiscoveryKeySource implements KeySource {
  readonly kind = 'discovery' as const;
  readonly ready: Promise<void>;
  readonly url: string;
  private readonly issuer: string;
  private readonly options: RemoteJwksOptions;
  private readonly hooks: SourceHooks;
  private remote: RemoteJwksKeySource | null = null;
  private discovering: Promise<RemoteJwksKeySource | null> | null = null;
  private lastAttempt = -Infinity;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly listeners = new Set<() => void>();
  private readonly abort = new AbortController();
  private closed = false;

  constructor(issuer: string, options: RemoteJwksOptions, hooks: SourceHooks) {
    this.issuer = issuer;
    this.url = discoveryUrl(issuer);
    this.options = options;
    this.hooks = hooks;
    this.ready = this.discover().then((remote) => remote?.ready);
  }

  get generation(): number {
    return this.remote?.generation ?? 0;
  }

  /** The JWKS URL discovery found, once it has. */
  get jwksUri(): string | undefined {
    return this.remote?.url;
  }

  resolve(header: JWSHeaderParameters): KeyResolution {
    const remote = this.remote;
    return remote === null ? this.resolveUndiscovered(header) : remote.resolve(header);
  }

  private async resolveUndiscovered(header: JWSHeaderParameters): Promise<readonly KeyCandidate[]> {
    const pending = this.discovering ?? (this.cooldownOver() ? this.discover() : null);
    const remote = pending === null ? null : await pending;
    if (remote === null) throw new KeyLookupError('jwt.jwks_unavailable', `OIDC discovery at ${this.url} failed`);
    return remote.resolve(header);
  }

  async getKey(header: JWSHeaderParameters): Promise<VerificationKey> {
    return (await this.resolve(header))[0]!.key;
  }

  has(ref: string): boolean {
    return this.remote !== null && this.remote.has(ref);
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  close(): void {
    this.closed = true;
    this.abort.abort();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.remote?.close();
    this.listeners.clear();
  }

  private cooldownOver(): boolean {
    return performance.now() - this.lastAttempt >= this.options.cooldownMs;
  }

  /** Single-flight like the JWKS fetch: concurrent callers share one discovery. */
  private discover(): Promise<RemoteJwksKeySource | null> {
    if (this.discovering !== null) return this.discovering;
    this.lastAttempt = performance.now();
    const pending = this.runDiscovery();
    this.discovering = pending;
    return pending;
  }

  private async runDiscovery(): Promise<RemoteJwksKeySource | null> {
    try {
      const jwksUri = jwksUriFromDiscovery(await fetchJson(this.url, this.options, this.abort.signal), this.issuer);
      if (this.closed) return null;
      const remote = new RemoteJwksKeySource(jwksUri, this.options, this.hooks, 'discovery');
      remote.onChange(() => {
        for (const listener of this.listeners) listener();
      });
      this.remote = remote;
      return remote;
    } catch (err) {
      if (this.closed) return null;
      this.hooks.emit({
        type: 'keys_error',
        provider: this.hooks.provider,
        source: this.kind,
        error: `discovery: ${err instanceof Error ? err.message : String(err)}`,
      });
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        if (this.remote === null) void this.discover();
      }, this.options.cooldownMs);
      this.retryTimer.unref();
      return null;
    } finally {
      this.discovering = null;
    }
  }
}
