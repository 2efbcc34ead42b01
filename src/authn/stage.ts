/**
 * The authentication stage for one route requirement. Built once per route and
 * config snapshot; per request it extracts the token, consults the verified-token
 * cache (a hit stays synchronous: no promise, no crypto, no allocation beyond the
 * upstream header copy) and only on a miss goes async to verify with jose.
 *
 * - `provider`: that provider's token must verify.
 * - `anyOf`: the first provider that verifies wins; when several share a token
 *   source, the token's `iss` picks among them (no blind trial of every key).
 * - `allOf`: every listed provider verifies its own token; the identity is the
 *   first provider's, upstream headers are everyone's.
 * - `optional`: like `anyOf`, but no token at all is an anonymous pass; a token
 *   that fails is still a 401.
 * - `tenant`: the request's tenant (path parameter, host, header) picks its own provider.
 * - `public`: no stage at all (`null`).
 *
 * Encrypted tokens (JWE) are verified by providers with `decrypt`; a JWE hides its `iss`,
 * so where several providers share a token source, each of them that can decrypt tries it.
 *
 * A token read from the query string must not travel on: once the stage has extracted its
 * tokens (synchronously, before any verification), it removes its providers' query token
 * parameters from `ctx.query`, the query the gateway forwards upstream (and audit records).
 */
import { decodeJwt } from 'jose';
import type { DecisionRecord, Identity, RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import { CONTINUE, type Decision, type Stage } from '../core/stage.js';
import { tokenDigest, type CachedToken } from './cache.js';
import { authnDenial, type AuthnFailureCode } from './failures.js';
import type { CompiledAuthn, CompiledProvider } from './provider.js';
import type { RouteAuthConfig } from './schema.js';
import { looksLikeJwe } from './jwe.js';
import { MAX_TOKEN_LENGTH, withoutQueryParams, type CompiledTokenSource } from './token.js';

export const AUTHN_STAGE_ID = 'authn';
/** Decision code when an `optional` route is called without a token. */
export const AUTHN_ANONYMOUS = 'authn.anonymous';

const ANONYMOUS_RECORD: DecisionRecord = Object.freeze({ stage: AUTHN_STAGE_ID, outcome: 'allow', code: AUTHN_ANONYMOUS });

type Mode = 'one' | 'any' | 'all' | 'optional';

/** Providers reading the token from the same place. */
interface TokenGroup {
  readonly source: CompiledTokenSource;
  readonly providers: readonly CompiledProvider[];
  /** `iss` → providers with that issuer, in requirement order. */
  readonly byIssuer: ReadonlyMap<string, readonly CompiledProvider[]>;
  /** Providers with `decrypt`, in requirement order: the candidates for an encrypted token. */
  readonly decrypting: readonly CompiledProvider[];
}

interface Failure {
  readonly code: AuthnFailureCode;
  readonly provider: string;
  readonly kid: string | undefined;
  readonly reason: string;
}

interface FoundToken {
  readonly group: TokenGroup;
  readonly token: string;
  readonly digest: string;
}

type GroupResult = { readonly ok: true; readonly entry: CachedToken } | { readonly ok: false; readonly failure: Failure };

/**
 * Every forward header any provider sets, lower-case. Adapters put these in
 * `ctx.stripHeaders` on every route, public ones included: a client must never be
 * able to send its own `x-user-id` to an upstream that trusts the header.
 */
export function forwardedHeaderNames(authn: CompiledAuthn): ReadonlySet<string> {
  return authn.forwardedHeaders;
}

/** The stage for a route requirement, or null for `public: true`. Throws TypeError for an unknown provider. */
export function createAuthnStage(requirement: RouteAuthConfig, authn: CompiledAuthn): Stage | null {
  let mode: Mode;
  let names: readonly string[];
  if ('public' in requirement) return null;
  if ('tenant' in requirement) {
    const stages = new Map<string, AuthnStage>();
    for (const [tenant, name] of Object.entries(requirement.tenant.providers)) {
      const provider = authn.providers.get(name);
      if (provider === undefined) throw new TypeError(`unknown authn provider "${name}"`);
      stages.set(tenant, new AuthnStage('one', [provider], authn));
    }
    return new TenantAuthnStage(tenantSource(requirement.tenant.from), stages, requirement.tenant.providers);
  }
  if ('provider' in requirement) [mode, names] = ['one', [requirement.provider]];
  else if ('anyOf' in requirement) [mode, names] = ['any', requirement.anyOf];
  else if ('allOf' in requirement) [mode, names] = ['all', requirement.allOf];
  else [mode, names] = ['optional', typeof requirement.optional === 'string' ? [requirement.optional] : requirement.optional];
  const providers = names.map((name) => {
    const provider = authn.providers.get(name);
    if (provider === undefined) throw new TypeError(`unknown authn provider "${name}"`);
    return provider;
  });
  if (providers.length === 0) throw new TypeError('an authn requirement needs at least one provider');
  return new AuthnStage(mode, providers, authn);
}

type TenantFrom = Extract<RouteAuthConfig, { tenant: unknown }>['tenant']['from'];

/** Reads the tenant a request acts for; null when it names none (or names it twice). */
function tenantSource(from: TenantFrom): (ctx: RequestContext) => string | null {
  if ('param' in from) {
    const name = from.param;
    return (ctx) => ctx.route?.params[name] ?? null;
  }
  if ('header' in from) {
    const name = from.header.toLowerCase();
    return (ctx) => {
      const value = ctx.headers[name];
      return typeof value === 'string' && value !== '' ? value : null;
    };
  }
  const at = from.host.indexOf('{tenant}');
  const prefix = from.host.slice(0, at);
  const suffix = from.host.slice(at + '{tenant}'.length);
  return (ctx) => {
    const host = ctx.host;
    if (host.length <= prefix.length + suffix.length || !host.startsWith(prefix) || !host.endsWith(suffix)) return null;
    const label = host.slice(prefix.length, host.length - suffix.length);
    // One DNS label: `a.b.api.example.com` is not tenant `a.b`.
    return label.includes('.') ? null : label;
  };
}

const MAX_TENANT_DETAIL = 128;

/**
 * `tenant`: each tenant its own provider. The request's tenant picks the one provider that
 * may authenticate it, so a token from another tenant's identity provider never passes here,
 * whatever it claims. The identity then acts for that tenant: a tenant claim naming another
 * is refused, and an identity without one takes the request's (authz tenant isolation and
 * rate limits by tenant see the same value).
 */
export class TenantAuthnStage implements Stage {
  readonly id = AUTHN_STAGE_ID;
  private readonly tenantOf: (ctx: RequestContext) => string | null;
  private readonly stages: ReadonlyMap<string, AuthnStage>;
  /** The identity bound to a tenant, per cached identity: no copy per request. */
  private readonly bound = new WeakMap<Identity, Identity>();
  /** Providers serving more than one tenant here: their tokens must say which. */
  private readonly shared: ReadonlySet<string>;

  constructor(
    tenantOf: (ctx: RequestContext) => string | null,
    stages: ReadonlyMap<string, AuthnStage>,
    providers: Readonly<Record<string, string>>,
  ) {
    this.tenantOf = tenantOf;
    this.stages = stages;
    const names = Object.values(providers);
    this.shared = new Set(names.filter((name, i) => names.indexOf(name) !== i));
  }

  run(ctx: RequestContext): Decision | Promise<Decision> {
    const tenant = this.tenantOf(ctx);
    // `Object.hasOwn` semantics: a Map, so `__proto__` and friends are just unknown tenants.
    const stage = tenant === null ? undefined : this.stages.get(tenant);
    if (stage === undefined) return this.unknown(ctx, tenant);
    const decision = stage.run(ctx);
    return decision instanceof Promise ? decision.then((d) => this.bind(ctx, tenant!, d)) : this.bind(ctx, tenant!, decision);
  }

  /**
   * `bulwark explain --claims`: the identity is given (no token to verify); the request's
   * tenant still has to be known here and the identity must act for it.
   */
  assume(ctx: RequestContext, identity: Identity): Decision {
    const tenant = this.tenantOf(ctx);
    if (tenant === null || !this.stages.has(tenant)) return this.unknown(ctx, tenant);
    ctx.identity = identity;
    return this.bind(ctx, tenant, CONTINUE);
  }

  private unknown(ctx: RequestContext, tenant: string | null): BulwarkError {
    const detail = { tenant: tenant === null ? null : tenant.slice(0, MAX_TENANT_DETAIL) };
    ctx.decisions.push({ stage: AUTHN_STAGE_ID, outcome: 'deny', code: 'authn.unknown_tenant', detail });
    // For the client, a tenant that does not exist here is a resource that does not.
    return new BulwarkError('route.not_found', undefined, { context: detail });
  }

  private bind(ctx: RequestContext, tenant: string, decision: Decision): Decision {
    const identity = ctx.identity;
    if (decision !== CONTINUE || identity === null || identity.tenant === tenant) return decision;
    // A provider several tenants share cannot vouch for the tenant by itself: the token has to name it.
    if (identity.tenant !== undefined || this.shared.has(identity.provider)) {
      const reason = identity.tenant !== undefined ? 'tenant claim names another tenant' : 'shared provider: no tenant claim';
      const detail = { provider: identity.provider, kid: identity.keyId, reason };
      ctx.decisions.push({ stage: AUTHN_STAGE_ID, outcome: 'deny', code: 'jwt.tenant_mismatch', detail });
      ctx.identity = null;
      return authnDenial('jwt.tenant_mismatch', detail);
    }
    let bound = this.bound.get(identity);
    if (bound === undefined || bound.tenant !== tenant) {
      bound = { ...identity, tenant };
      this.bound.set(identity, bound);
    }
    ctx.identity = bound;
    return decision;
  }
}

function groupBySource(providers: readonly CompiledProvider[]): TokenGroup[] {
  const byKey = new Map<string, CompiledProvider[]>();
  for (const provider of providers) {
    const list = byKey.get(provider.token.key);
    if (list) list.push(provider);
    else byKey.set(provider.token.key, [provider]);
  }
  return [...byKey.values()].map((list) => {
    const byIssuer = new Map<string, CompiledProvider[]>();
    for (const provider of list) {
      const same = byIssuer.get(provider.issuer);
      if (same) same.push(provider);
      else byIssuer.set(provider.issuer, [provider]);
    }
    return { source: list[0]!.token, providers: list, byIssuer, decrypting: list.filter((p) => p.decrypter !== null) };
  });
}

class AuthnStage implements Stage {
  readonly id = AUTHN_STAGE_ID;
  private readonly mode: Mode;
  private readonly providers: readonly CompiledProvider[];
  private readonly groups: readonly TokenGroup[];
  /** allOf: index of each provider's group. */
  private readonly groupIndex: readonly number[];
  private readonly strip: ReadonlySet<string>;
  /** Query parameters the providers read their tokens from (null: none). */
  private readonly stripQuery: ReadonlySet<string> | null;
  private readonly authn: CompiledAuthn;
  private readonly providerLabel: string;

  constructor(mode: Mode, providers: readonly CompiledProvider[], authn: CompiledAuthn) {
    this.mode = mode;
    this.providers = providers;
    this.groups = groupBySource(providers);
    this.groupIndex = providers.map((p) => this.groups.findIndex((g) => g.providers.includes(p)));
    this.strip = authn.forwardedHeaders;
    const queryNames = this.groups.flatMap((g) => (g.source.query === undefined ? [] : [g.source.query]));
    this.stripQuery = queryNames.length === 0 ? null : new Set(queryNames);
    this.authn = authn;
    this.providerLabel = providers.map((p) => p.name).join(',');
  }

  run(ctx: RequestContext): Decision | Promise<Decision> {
    this.stripForwarded(ctx);
    const decision = this.mode === 'all' ? this.runAll(ctx) : this.runAny(ctx);
    // Every token has been extracted by now (verification only uses the strings taken).
    if (this.stripQuery !== null) ctx.query = withoutQueryParams(ctx.query, this.stripQuery);
    return decision;
  }

  private stripForwarded(ctx: RequestContext): void {
    const strip = this.strip;
    if (strip.size === 0) return;
    const current = ctx.stripHeaders;
    if (current === null || current === strip) {
      ctx.stripHeaders = strip;
    } else {
      const union = new Set(current);
      for (const name of strip) union.add(name);
      ctx.stripHeaders = union;
    }
  }

  // -------------------------------------------------------------------------
  // provider / anyOf / optional

  private runAny(ctx: RequestContext): Decision | Promise<Decision> {
    const groups = this.groups;
    if (groups.length === 1) {
      // The common case (one token source), without intermediate arrays.
      const group = groups[0]!;
      const token = group.source.extract(ctx);
      if (token === null) return this.noToken(ctx);
      if (typeof token !== 'string') return this.deny(ctx, token.code, this.providerLabel, undefined, token.reason);
      if (token.length > MAX_TOKEN_LENGTH)
        return this.deny(ctx, 'jwt.malformed', this.providerLabel, undefined, 'token too large');
      const digest = tokenDigest(token);
      const hit = this.lookup(group, digest);
      if (hit !== undefined) return this.allow(ctx, hit, hit.cachedRecord);
      const providers = group.providers;
      if (providers.length === 1) return this.verifyWith(ctx, providers[0]!, token, digest);
      return this.verifyFound(ctx, [{ group, token, digest }], null);
    }

    const found: FoundToken[] = [];
    let firstFailure: Failure | null = null;
    for (const group of groups) {
      const token = group.source.extract(ctx);
      if (token === null) continue;
      const label = group.providers[0]!.name;
      if (typeof token !== 'string') {
        if (token.code === 'request.duplicate_authorization') return this.deny(ctx, token.code, label, undefined, token.reason);
        firstFailure ??= { code: token.code, provider: label, kid: undefined, reason: token.reason };
        continue;
      }
      if (token.length > MAX_TOKEN_LENGTH) {
        firstFailure ??= { code: 'jwt.malformed', provider: label, kid: undefined, reason: 'token too large' };
        continue;
      }
      const digest = tokenDigest(token);
      const hit = this.lookup(group, digest);
      if (hit !== undefined) return this.allow(ctx, hit, hit.cachedRecord);
      found.push({ group, token, digest });
    }
    if (found.length === 0) {
      return firstFailure === null ? this.noToken(ctx) : this.denyWith(ctx, firstFailure);
    }
    return this.verifyFound(ctx, found, firstFailure);
  }

  private lookup(group: TokenGroup, digest: string): CachedToken | undefined {
    const now = this.authn.now();
    const cache = this.authn.cache;
    for (const provider of group.providers) {
      const hit = cache.get(digest + provider.tag, now);
      if (hit !== undefined) return hit;
    }
    return undefined;
  }

  /** One provider, one token source (the common case): `verifyFound` without its loops. */
  private async verifyWith(ctx: RequestContext, provider: CompiledProvider, token: string, digest: string): Promise<Decision> {
    const result = await provider.verify(token);
    if (!result.ok) return this.deny(ctx, result.code, provider.name, result.kid, result.reason);
    this.authn.cache.set(digest + provider.tag, result.entry);
    return this.allow(ctx, result.entry, result.entry.verifiedRecord);
  }

  private async verifyFound(ctx: RequestContext, found: readonly FoundToken[], earlier: Failure | null): Promise<Decision> {
    let first = earlier;
    for (const { group, token, digest } of found) {
      const result = await this.verifyInGroup(group, token, digest);
      if (result.ok) return this.allow(ctx, result.entry, result.entry.verifiedRecord);
      first ??= result.failure;
    }
    return this.denyWith(ctx, first!);
  }

  private async verifyInGroup(group: TokenGroup, token: string, digest: string): Promise<GroupResult> {
    let candidates = group.providers;
    if (candidates.length > 1 && looksLikeJwe(token)) {
      // An encrypted token's `iss` is inside: every provider that can decrypt tries it (few, bounded).
      if (group.decrypting.length === 0) {
        return {
          ok: false,
          failure: { code: 'jwt.malformed', provider: this.providerLabel, kid: undefined, reason: 'undecodable' },
        };
      }
      candidates = group.decrypting;
    } else if (candidates.length > 1) {
      // Several providers read this token: its (unverified) `iss` says which one to ask.
      // Verification by that provider then checks `iss` for real.
      let iss: unknown;
      try {
        iss = decodeJwt(token).iss;
      } catch {
        return {
          ok: false,
          failure: { code: 'jwt.malformed', provider: this.providerLabel, kid: undefined, reason: 'undecodable' },
        };
      }
      const matched = typeof iss === 'string' ? group.byIssuer.get(iss) : undefined;
      if (matched === undefined) {
        return {
          ok: false,
          failure: {
            code: 'jwt.issuer_mismatch',
            provider: this.providerLabel,
            kid: undefined,
            reason: 'iss names no listed provider',
          },
        };
      }
      candidates = matched;
    }
    let first: Failure | null = null;
    for (const provider of candidates) {
      const result = await provider.verify(token);
      if (result.ok) {
        this.authn.cache.set(digest + provider.tag, result.entry);
        return result;
      }
      first ??= { code: result.code, provider: provider.name, kid: result.kid, reason: result.reason };
    }
    return { ok: false, failure: first! };
  }

  private noToken(ctx: RequestContext): Decision {
    if (this.mode === 'optional') {
      ctx.decisions.push(ANONYMOUS_RECORD);
      return CONTINUE;
    }
    return this.deny(ctx, 'jwt.missing', this.providerLabel, undefined, 'no token');
  }

  // -------------------------------------------------------------------------
  // allOf

  private runAll(ctx: RequestContext): Decision | Promise<Decision> {
    const providers = this.providers;
    const tokens: (string | undefined)[] = new Array(this.groups.length);
    const digests: (string | undefined)[] = new Array(this.groups.length);
    const entries: (CachedToken | undefined)[] = new Array(providers.length);
    let misses = 0;
    const now = this.authn.now();
    for (let i = 0; i < providers.length; i++) {
      const provider = providers[i]!;
      const g = this.groupIndex[i]!;
      let token = tokens[g];
      if (token === undefined) {
        const extracted = this.groups[g]!.source.extract(ctx);
        if (extracted === null) return this.deny(ctx, 'jwt.missing', provider.name, undefined, 'no token');
        if (typeof extracted !== 'string') return this.deny(ctx, extracted.code, provider.name, undefined, extracted.reason);
        if (extracted.length > MAX_TOKEN_LENGTH)
          return this.deny(ctx, 'jwt.malformed', provider.name, undefined, 'token too large');
        token = extracted;
        tokens[g] = token;
        digests[g] = tokenDigest(token);
      }
      const hit = this.authn.cache.get(digests[g]! + provider.tag, now);
      entries[i] = hit;
      if (hit === undefined) misses++;
    }
    if (misses === 0) return this.allowAll(ctx, entries as CachedToken[], null);
    return this.verifyAll(ctx, tokens as string[], digests as string[], entries);
  }

  private async verifyAll(
    ctx: RequestContext,
    tokens: readonly string[],
    digests: readonly string[],
    entries: (CachedToken | undefined)[],
  ): Promise<Decision> {
    const providers = this.providers;
    const fresh: boolean[] = new Array(providers.length).fill(false);
    for (let i = 0; i < providers.length; i++) {
      if (entries[i] !== undefined) continue;
      const provider = providers[i]!;
      const g = this.groupIndex[i]!;
      const result = await provider.verify(tokens[g]!);
      if (!result.ok) return this.deny(ctx, result.code, provider.name, result.kid, result.reason);
      this.authn.cache.set(digests[g]! + provider.tag, result.entry);
      entries[i] = result.entry;
      fresh[i] = true;
    }
    return this.allowAll(ctx, entries as CachedToken[], fresh);
  }

  private allowAll(ctx: RequestContext, entries: readonly CachedToken[], fresh: readonly boolean[] | null): Decision {
    if (this.authn.revocation !== null) {
      for (const entry of entries) {
        const refused = this.revoked(ctx, entry);
        if (refused !== null) return refused;
      }
    }
    ctx.identity = entries[0]!.identity;
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i]!;
      this.addHeaders(ctx, entry);
      ctx.decisions.push(fresh !== null && fresh[i] ? entry.verifiedRecord : entry.cachedRecord);
    }
    return CONTINUE;
  }

  // -------------------------------------------------------------------------

  private allow(ctx: RequestContext, entry: CachedToken, record: DecisionRecord): Decision {
    if (this.authn.revocation !== null) {
      const refused = this.revoked(ctx, entry);
      if (refused !== null) return refused;
    }
    ctx.identity = entry.identity;
    this.addHeaders(ctx, entry);
    ctx.decisions.push(record);
    return CONTINUE;
  }

  /** A verified (or cached) token that was revoked since: `jwt.revoked`, or 503 when failing closed. */
  private revoked(ctx: RequestContext, entry: CachedToken): BulwarkError | null {
    const verdict = this.authn.revocation!.check(entry.identity);
    if (verdict === null) return null;
    const kid = entry.identity.keyId;
    if (verdict.code === 'jwt.revoked') return this.deny(ctx, 'jwt.revoked', entry.providerName, kid, verdict.reason);
    const detail = { provider: entry.providerName, kid, reason: verdict.reason };
    ctx.decisions.push({ stage: AUTHN_STAGE_ID, outcome: 'deny', code: verdict.code, detail });
    return new BulwarkError(verdict.code, undefined, { context: detail });
  }

  private addHeaders(ctx: RequestContext, entry: CachedToken): void {
    const headers = entry.upstreamHeaders;
    if (headers.length === 0) return;
    // A copy: the cached array is shared by every request carrying this token.
    ctx.upstreamHeaders = ctx.upstreamHeaders === null ? headers.slice() : ctx.upstreamHeaders.concat(headers);
  }

  private denyWith(ctx: RequestContext, failure: Failure): BulwarkError {
    return this.deny(ctx, failure.code, failure.provider, failure.kid, failure.reason);
  }

  private deny(
    ctx: RequestContext,
    code: AuthnFailureCode,
    provider: string,
    kid: string | undefined,
    reason: string,
  ): BulwarkError {
    const detail = { provider, kid, reason };
    ctx.decisions.push({ stage: AUTHN_STAGE_ID, outcome: 'deny', code, detail });
    return authnDenial(code, detail);
  }
}
