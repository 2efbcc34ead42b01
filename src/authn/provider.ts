/**
 * Providers compiled once per config snapshot: key source, token source, jose
 * options, claim readers and header mappings all built here, so verifying a token
 * allocates only what the token itself needs. `compileAuthn` owns the sources and
 * the verified-token cache; `close()` stops their watchers and timers.
 */
import { wildcardSafe } from '../core/subject.js';
import { withDashSpellings } from '../core/header-names.js';
import { errors as joseErrors, jwtVerify, type JWTHeaderParameters, type JWTPayload, type JWTVerifyOptions } from 'jose';
import type { DecisionRecord, Identity } from '../core/context.js';
import { VerifiedTokenCache, type CachedToken, type CacheStats } from './cache.js';
import {
  checkRequiredClaims,
  compileClaimPath,
  compileRequiredClaims,
  compileSubjectPattern,
  deepFreeze,
  headerValueOf,
  readClaim,
  rolesFrom,
  scopesFrom,
  tenantFrom,
  type ClaimPath,
  type RequiredClaim,
} from './claims.js';
import { DiscoveryKeySource } from './discovery.js';
import { KeyLookupError, mapVerifyError, type AuthnFailureCode } from './failures.js';
import { FileJwksKeySource } from './jwks-file.js';
import { compileDecrypter, isNestedJwt, looksLikeJwe, type TokenDecrypter } from './jwe.js';
import { RemoteJwksKeySource, type RemoteJwksOptions } from './jwks-remote.js';
import type { AuthnEvent, KeyCandidate, KeySource, SourceHooks, VerificationKey } from './key-source.js';
import { PemKeySource, readPublicKeyInputs } from './pem.js';
import type { RevocationCheck } from './revocation-hook.js';
import { AUTHN_CACHE_DEFAULTS, HMAC_ALGORITHMS, JWKS_DEFAULTS, type AuthnConfig, type ProviderConfig } from './schema.js';
import { SecretKeySource } from './secret.js';
import { compileTokenSource, DEFAULT_TOKEN_SOURCE, MAX_TOKEN_LENGTH, type CompiledTokenSource } from './token.js';

/** A kid-less token against several keys tries at most this many (bounds the work a junk token can cause). */
export const MAX_KEY_CANDIDATES = 4;

/** Decision code of a successful verification (allow records are not errors, so not in ERROR_CODES). */
export const AUTHN_VALID = 'jwt.valid';

export type ProviderVerifyResult =
  | { readonly ok: true; readonly entry: CachedToken }
  | { readonly ok: false; readonly code: AuthnFailureCode; readonly reason: string; readonly kid: string | undefined };

// Compact JWS: three base64url segments (the signature may be empty: `alg: none` is then
// refused by the algorithm allow-list, with its own reason). No padding, no `+`/`/`, no JWE.
/** NumericDate claims (RFC 7519 §4.1.4–6). */
const TIME_CLAIMS = ['exp', 'nbf', 'iat'] as const;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/**
 * Syntax gate before jose: size, alphabet, and a canonical signature encoding (jose's
 * decoder tolerates non-zero trailing bits, which would let one signature be spelled
 * several ways: several cache keys, several "different" tokens).
 */
export function tokenShapeProblem(token: string): string | null {
  if (token.length > MAX_TOKEN_LENGTH) return `token longer than ${MAX_TOKEN_LENGTH} characters`;
  if (!COMPACT_JWS.test(token)) return 'not a compact JWS';
  // Only the last 4-character group can be spelled two ways (its unused low bits, or a lone
  // character that decodes to nothing); full groups before it always re-encode as they were.
  // So the round trip through the platform's decoder is run on that group alone.
  const length = token.length - token.lastIndexOf('.') - 1;
  if (length !== 0) {
    const last = token.slice(token.length - (length % 4 || 4));
    if (Buffer.from(last, 'base64url').toString('base64url') !== last) return 'non-canonical base64url signature';
  }
  return null;
}

function isSignatureFailure(err: unknown): boolean {
  return err instanceof joseErrors.JWSSignatureVerificationFailed;
}

/** Logs want the kid a bad token claimed, but never an unbounded attacker string. */
function loggableKid(kid: unknown): string | undefined {
  return typeof kid === 'string' ? kid.slice(0, 128) : undefined;
}

const NO_KEYS: readonly KeyCandidate[] = Object.freeze([]);

/**
 * jose's key callback for one verification, and what it found: whether jose got as far as
 * asking (error mapping), the kid the token claimed (logs) and the candidate keys (retries,
 * and the key the cache entry depends on). Synchronous when the source has the keys at hand.
 */
class KeyLookup {
  requested = false;
  kid: string | undefined = undefined;
  candidates: readonly KeyCandidate[] = NO_KEYS;
  private readonly source: KeySource;

  constructor(source: KeySource) {
    this.source = source;
  }

  readonly getKey = (header: JWTHeaderParameters): VerificationKey | Promise<VerificationKey> => {
    this.requested = true;
    this.kid = loggableKid(header.kid);
    if (header.kid !== undefined && typeof header.kid !== 'string') {
      throw new KeyLookupError('jwt.malformed', '"kid" is not a string');
    }
    // Nested JWTs (RFC 7519 §5.2) are not supported: the inner token would go unchecked.
    if (isNestedJwt(header.cty)) throw new KeyLookupError('jwt.malformed', 'nested JWT (cty: JWT)');
    const resolution = this.source.resolve(header);
    if (resolution instanceof Promise) return resolution.then((candidates) => this.found(candidates));
    return this.found(resolution);
  };

  private found(candidates: readonly KeyCandidate[]): VerificationKey {
    this.candidates = candidates;
    return candidates[0]!.key;
  }
}

interface AllowRecords {
  readonly verified: DecisionRecord;
  readonly cached: DecisionRecord;
}

/** Allow records are kept for at most this many kids per provider. */
const MAX_REMEMBERED_KIDS = 64;

function allowRecords(provider: string, kid: string | undefined): AllowRecords {
  const record = (cached: boolean): DecisionRecord =>
    Object.freeze({ stage: 'authn', outcome: 'allow', code: AUTHN_VALID, detail: Object.freeze({ provider, kid, cached }) });
  return { verified: record(false), cached: record(true) };
}

interface ForwardedClaim {
  readonly path: ClaimPath;
  readonly header: string;
}

export class CompiledProvider {
  readonly name: string;
  /** Suffix of this provider's cache keys. */
  readonly tag: string;
  readonly issuer: string;
  readonly source: KeySource;
  readonly token: CompiledTokenSource;
  /** Lower-case upstream header names this provider sets (claims and payload). */
  readonly forwardHeaderNames: readonly string[];
  /** `decrypt`, compiled (key imported); null: encrypted tokens are `jwt.malformed`. */
  readonly decrypter: TokenDecrypter | null;
  private readonly options: JWTVerifyOptions;
  private readonly subject: RegExp | null;
  private readonly required: readonly RequiredClaim[];
  private readonly roles: ClaimPath | null;
  private readonly tenant: ClaimPath | null;
  private readonly forwardClaims: readonly ForwardedClaim[];
  private readonly payloadHeader: string | null;
  private readonly skewSec: number;
  private readonly maxAgeSec: number | undefined;
  private readonly cacheTtlMs: number;
  private readonly now: () => number;
  private readonly injectedClock: boolean;
  private readonly records = new Map<string | undefined, AllowRecords>();

  constructor(init: {
    name: string;
    index: number;
    config: ProviderConfig;
    source: KeySource;
    cacheTtlMs: number;
    now?: (() => number) | undefined;
    decrypter?: TokenDecrypter | null;
  }) {
    const { config } = init;
    this.name = init.name;
    this.tag = `#${init.index}`;
    this.issuer = config.issuer;
    this.source = init.source;
    this.decrypter = init.decrypter ?? null;
    this.token = compileTokenSource(config.token ?? DEFAULT_TOKEN_SOURCE);
    this.skewSec = config.clockSkewSec ?? 60;
    this.maxAgeSec = config.maxAgeSec;
    this.options = {
      issuer: config.issuer,
      audience: [...config.audiences],
      algorithms: [...config.algorithms],
      clockTolerance: this.skewSec,
      requiredClaims: (config.requireExp ?? true) ? ['exp'] : [],
      ...(config.maxAgeSec === undefined ? {} : { maxTokenAge: config.maxAgeSec }),
      ...(config.typ === undefined ? {} : { typ: config.typ }),
    };
    this.subject = config.subject === undefined ? null : compileSubjectPattern(config.subject);
    this.required = compileRequiredClaims(config.requiredClaims);
    this.roles = config.rolesClaim === undefined ? null : compileClaimPath(config.rolesClaim);
    this.tenant = config.tenantClaim === undefined ? null : compileClaimPath(config.tenantClaim);
    this.forwardClaims = Object.entries(config.forward?.claims ?? {}).map(([path, header]) => ({
      path: compileClaimPath(path),
      header: header.toLowerCase(),
    }));
    this.payloadHeader = config.forward?.payloadHeader?.toLowerCase() ?? null;
    this.forwardHeaderNames = Object.freeze([
      ...this.forwardClaims.map((f) => f.header),
      ...(this.payloadHeader === null ? [] : [this.payloadHeader]),
    ]);
    this.cacheTtlMs = init.cacheTtlMs;
    this.injectedClock = init.now !== undefined;
    this.now = init.now ?? Date.now;
  }

  /**
   * Full verification (the cache miss path). Never throws: every failure is a result with a code.
   * With `decrypt`, a compact JWE is unwrapped first and its inner JWS verified exactly as a
   * plain one (the caller caches the result under the outer token).
   */
  verify(token: string): Promise<ProviderVerifyResult> {
    return this.decrypter === null ? this.verifySigned(token) : this.verifyDecrypting(token, this.decrypter);
  }

  private async verifyDecrypting(token: string, decrypter: TokenDecrypter): Promise<ProviderVerifyResult> {
    if (looksLikeJwe(token)) {
      const inner = await decrypter.unwrap(token);
      if (!inner.ok) return { ok: false, code: inner.code, reason: inner.reason, kid: undefined };
      return this.verifySigned(inner.jws);
    }
    if (decrypter.required) {
      const shape = tokenShapeProblem(token);
      return shape === null
        ? { ok: false, code: 'jwt.encryption_required', reason: 'plain JWS (decrypt.required)', kid: undefined }
        : { ok: false, code: 'jwt.malformed', reason: shape, kid: undefined };
    }
    return this.verifySigned(token);
  }

  /** Verification of a compact JWS: the token itself, or what a JWE wrapped. */
  private async verifySigned(token: string): Promise<ProviderVerifyResult> {
    const shape = tokenShapeProblem(token);
    if (shape !== null) return { ok: false, code: 'jwt.malformed', reason: shape, kid: undefined };

    const nowMs = this.now();
    const options = this.injectedClock ? { ...this.options, currentDate: new Date(nowMs) } : this.options;
    // One jose call per token: jose parses the header once and hands it to this key callback
    // (only after `crit` and the algorithm allow-list passed), which records what it resolved.
    const lookup = new KeyLookup(this.source);
    let payload: JWTPayload;
    let header: JWTHeaderParameters;
    let used: KeyCandidate;
    try {
      const result = await jwtVerify(token, lookup.getKey, options);
      payload = result.payload;
      header = result.protectedHeader;
      used = lookup.candidates[0]!;
    } catch (err) {
      const retried = isSignatureFailure(err) ? await this.tryOtherKeys(token, lookup.candidates, options) : null;
      if (retried === null || 'failure' in retried) {
        const failure = retried !== null && 'failure' in retried ? retried.failure : err;
        const mapped = mapVerifyError(failure, lookup.requested);
        return { ok: false, code: mapped.code, reason: mapped.reason, kid: lookup.kid };
      }
      ({ payload, header, used } = retried);
    }
    return this.accept(payload, header, used, nowMs);
  }

  /**
   * A token without `kid` may match several keys (jose's "multiple matching keys"):
   * the first failed, try the next few. Null when there was nothing else to try.
   */
  private async tryOtherKeys(
    token: string,
    candidates: readonly KeyCandidate[],
    options: JWTVerifyOptions,
  ): Promise<{ payload: JWTPayload; header: JWTHeaderParameters; used: KeyCandidate } | { failure: unknown } | null> {
    const limit = Math.min(candidates.length, MAX_KEY_CANDIDATES);
    if (limit < 2) return null;
    for (let i = 1; i < limit; i++) {
      const candidate = candidates[i]!;
      try {
        const result = await jwtVerify(token, candidate.key, options);
        return { payload: result.payload, header: result.protectedHeader, used: candidate };
      } catch (err) {
        if (!isSignatureFailure(err)) return { failure: err };
      }
    }
    return null;
  }

  /**
   * The allow records of a token verified with key `kid` (frozen, so shared by every token of
   * that key). Remembered for the first MAX_REMEMBERED_KIDS kids: a kid only gets here with a
   * valid signature, but a key without a kid lets the token name any.
   */
  private recordsFor(kid: string | undefined): AllowRecords {
    const known = this.records.get(kid);
    if (known !== undefined) return known;
    const records = allowRecords(this.name, kid);
    if (this.records.size < MAX_REMEMBERED_KIDS) this.records.set(kid, records);
    return records;
  }

  private accept(payload: JWTPayload, header: JWTHeaderParameters, used: KeyCandidate, nowMs: number): ProviderVerifyResult {
    const kid = used.kid ?? loggableKid(header.kid);
    // JSON numbers past ~1.8e308 parse to Infinity, which jose takes for a number: `exp: 1e400`
    // would never expire (and `nbf: -1e400` never be early). RFC 7519 NumericDate is finite.
    for (const claim of TIME_CLAIMS) {
      const value = payload[claim];
      if (typeof value === 'number' && !Number.isFinite(value))
        return { ok: false, code: 'jwt.malformed', reason: `"${claim}" is not finite`, kid };
    }
    const sub = payload.sub;
    if (sub === undefined) return { ok: false, code: 'jwt.claim_missing', reason: 'claim:sub', kid };
    if (typeof sub !== 'string' || sub === '') return { ok: false, code: 'jwt.malformed', reason: '"sub" is not a string', kid };
    if (this.subject !== null && (!this.subject.test(sub) || !wildcardSafe(sub))) {
      return { ok: false, code: 'jwt.subject_mismatch', reason: 'subject pattern', kid };
    }
    const claims = deepFreeze(payload as Record<string, unknown>);
    const required = checkRequiredClaims(claims, this.required);
    if (required !== null) return { ok: false, code: required.code, reason: `claim:${required.claim}`, kid };

    // A tenant claim that is there but names no tenant (a list, an object, "") is not "no tenant":
    // that would make the token a platform identity, outside tenant isolation.
    let tenant: string | undefined;
    if (this.tenant !== null) {
      const raw = readClaim(claims, this.tenant);
      tenant = tenantFrom(raw);
      if (tenant === undefined && raw !== undefined && raw !== null)
        return { ok: false, code: 'jwt.malformed', reason: 'tenant claim is not a tenant id', kid };
    }
    const exp = typeof payload.exp === 'number' ? payload.exp : undefined;
    const identity: Identity = Object.freeze({
      subject: sub,
      tenant,
      roles: this.roles === null ? Object.freeze([]) : rolesFrom(readClaim(claims, this.roles)),
      scopes: scopesFrom(claims),
      claims,
      provider: this.name,
      keyId: kid,
      expiresAt: exp,
    });

    const headers: string[] = [];
    for (const { path, header: name } of this.forwardClaims) {
      const value = headerValueOf(readClaim(claims, path));
      if (value !== null) headers.push(name, value);
    }
    if (this.payloadHeader !== null) {
      headers.push(this.payloadHeader, Buffer.from(JSON.stringify(claims), 'utf8').toString('base64url'));
    }

    // The window in which a cache hit may stand in for this verification (jose's rules, in ms).
    const skew = this.skewSec;
    let validUntilMs = nowMs + this.cacheTtlMs;
    let validFromMs = -Infinity;
    if (exp !== undefined) validUntilMs = Math.min(validUntilMs, (exp + skew) * 1000);
    if (typeof payload.nbf === 'number') validFromMs = (payload.nbf - skew) * 1000;
    if (this.maxAgeSec !== undefined && typeof payload.iat === 'number') {
      validUntilMs = Math.min(validUntilMs, (payload.iat + this.maxAgeSec + skew) * 1000);
      validFromMs = Math.max(validFromMs, (payload.iat - skew) * 1000);
    }

    const records = this.recordsFor(kid);
    const entry: CachedToken = {
      providerName: this.name,
      identity,
      // Not frozen (frozen arrays take a slow path when copied on every hit); readonly by type.
      upstreamHeaders: headers,
      verifiedRecord: records.verified,
      cachedRecord: records.cached,
      source: this.source,
      keyRef: used.ref,
      validFromMs,
      validUntilMs,
      generation: this.source.generation,
      insertedAt: 0,
    };
    return { ok: true, entry };
  }
}

// ---------------------------------------------------------------------------

export interface AuthnOptions {
  /** Wall clock in epoch ms (tests inject one). Drives claim checks and cache expiry. */
  now?: () => number;
  /** Key load/rotation/failure notices, for logs and metrics. */
  onEvent?: (event: AuthnEvent) => void;
  /** Consulted after verification and on every cache hit (src/revocation). Also settable later. */
  revocation?: RevocationCheck;
}

export interface AuthnStats {
  cache: CacheStats;
  jwks: Record<string, { fetches: number; failures: number; generation: number }>;
}

export interface CompiledAuthn {
  readonly providers: ReadonlyMap<string, CompiledProvider>;
  readonly cache: VerifiedTokenCache;
  /** Every configured forward header (lower-case), across providers: always stripped from client requests. */
  readonly forwardedHeaders: ReadonlySet<string>;
  readonly now: () => number;
  /** Revocation check run on every accepted token (null: none). Mutable so a long-lived list can attach. */
  revocation: RevocationCheck | null;
  /** Settles when every source tried its first load; rejects if a local key source (file, PEM, secret) is unusable. */
  ready(): Promise<void>;
  stats(): AuthnStats;
  /** Stops watchers and refresh timers, aborts fetches in flight. */
  close(): void;
}

function jwksOptions(config: ProviderConfig): RemoteJwksOptions {
  return { ...JWKS_DEFAULTS, ...config.jwks };
}

function createKeySource(config: ProviderConfig, hooks: SourceHooks): KeySource {
  const sources = [
    config.jwksUrl !== undefined,
    config.jwksFile !== undefined,
    config.publicKeys !== undefined,
    config.discovery === true,
    config.secret !== undefined,
  ].filter(Boolean).length;
  if (sources !== 1) {
    throw new TypeError(
      `provider "${hooks.provider}": exactly one of jwksUrl, jwksFile, publicKeys, discovery, secret is required`,
    );
  }
  // Asymmetric sources never see HS algorithms and the secret never sees anything else, whatever
  // the config says: the RSA-public-key-as-HMAC-secret confusion cannot be constructed.
  const hmac = new Set<string>(HMAC_ALGORITHMS);
  const asymmetric = config.algorithms.filter((a) => !hmac.has(a));
  if (config.secret !== undefined) {
    return new SecretKeySource(
      config.secret,
      config.algorithms.filter((a) => hmac.has(a)),
      hooks,
    );
  }
  if (config.jwksUrl !== undefined) return new RemoteJwksKeySource(config.jwksUrl, jwksOptions(config), hooks);
  if (config.jwksFile !== undefined) return new FileJwksKeySource(config.jwksFile, hooks);
  if (config.discovery === true) return new DiscoveryKeySource(config.issuer, jwksOptions(config), hooks);
  return new PemKeySource(readPublicKeyInputs(config.publicKeys ?? []), asymmetric, hooks);
}

/**
 * Compiles `authn` once per config snapshot. Throws TypeError for config that checks
 * should have refused (bad subject pattern, no key source, unreadable PEM file, unusable
 * decryption key).
 */
export function compileAuthn(config: AuthnConfig, options: AuthnOptions = {}): CompiledAuthn {
  const onEvent = options.onEvent;
  const emit = (event: AuthnEvent) => {
    if (onEvent === undefined) return;
    try {
      onEvent(event);
    } catch {
      // A broken listener must not break key loading.
    }
  };
  const cacheConfig = { ...AUTHN_CACHE_DEFAULTS, ...config.cache };
  const cache = new VerifiedTokenCache(cacheConfig.maxEntries);
  const providers = new Map<string, CompiledProvider>();
  const unsubscribe: (() => void)[] = [];
  const sources: KeySource[] = [];
  const forwarded = new Set<string>();
  try {
    let index = 0;
    for (const [name, providerConfig] of Object.entries(config.providers)) {
      const source = createKeySource(providerConfig, { provider: name, emit });
      sources.push(source);
      const provider = new CompiledProvider({
        name,
        index: index++,
        config: providerConfig,
        source,
        cacheTtlMs: cacheConfig.ttlMs,
        now: options.now,
        decrypter: providerConfig.decrypt === undefined ? null : compileDecrypter(providerConfig.decrypt, name),
      });
      providers.set(name, provider);
      for (const header of provider.forwardHeaderNames) forwarded.add(header);
      unsubscribe.push(source.onChange(() => cache.sweep(source)));
    }
  } catch (err) {
    for (const source of sources) source.close();
    throw err;
  }
  const now = options.now ?? Date.now;
  return {
    providers,
    cache,
    // With the dash spelling of any underscore name: a client's `x-user-id` must not pass next to
    // the gateway's `x_user_id` (one variable to a CGI-style upstream; see dashSpelling).
    forwardedHeaders: withDashSpellings(forwarded),
    now,
    revocation: options.revocation ?? null,
    ready: async () => {
      const results = await Promise.allSettled(sources.map((s) => s.ready));
      const failed = results.flatMap((r, i) =>
        r.status === 'rejected'
          ? [`provider "${[...providers.keys()][i]}": ${r.reason instanceof Error ? r.reason.message : String(r.reason)}`]
          : [],
      );
      if (failed.length > 0) throw new Error(failed.join('; '));
    },
    stats: () => {
      const jwks: AuthnStats['jwks'] = {};
      for (const [name, provider] of providers) {
        const source = provider.source;
        if (source instanceof RemoteJwksKeySource) {
          jwks[name] = { fetches: source.fetches, failures: source.failures, generation: source.generation };
        }
      }
      return { cache: cache.stats(), jwks };
    },
    close: () => {
      for (const off of unsubscribe) off();
      for (const source of sources) source.close();
      cache.clear();
    },
  };
}
