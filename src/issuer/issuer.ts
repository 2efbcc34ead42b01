/**
 * The token service: `client_credentials`, `refresh_token` with rotation and reuse
 * detection, and sessions the application mints for a subject it authenticated.
 * Transport-free: `http.ts` speaks HTTP for it, the gateway and the library adapters
 * mount that. Everything compiled at `create` (clients, discovery, recipient key);
 * the request path signs, hashes and talks to the store, nothing else.
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, importJWK, importSPKI, jwtVerify, SignJWT, type CryptoKey, type JWK, type KeyObject } from 'jose';
import { BulwarkError, type ErrorCode } from '../core/errors.js';
import { encryptToken } from '../authn/jwe.js';
import type { RevocationList } from '../revocation/index.js';
import { KeyRing, KeyRingError } from './keys.js';
import { ISSUER_DEFAULTS, keyRingOptions, longestTokenTtlSec, type IssuerConfig } from './schema.js';
import { hashSecret, SecretVerifier } from './secret.js';
import { SqliteIssuerStore } from './store-sqlite.js';
import { PostgresIssuerStore } from './store-postgres.js';
import { RedisIssuerStore } from './store-redis.js';
import { IssuerStoreError, type ClientRecord, type IssuerStore, type RefreshRecord, type SigningAlgorithm } from './types.js';

/** What a successful grant returns (the RFC 6749 §5.1 response, camel-cased). */
export interface TokenSet {
  readonly accessToken: string;
  readonly tokenType: 'Bearer';
  /** Seconds. */
  readonly expiresIn: number;
  readonly scope: string;
  readonly refreshToken?: string;
  /** Seconds until the refresh token expires. */
  readonly refreshExpiresIn?: number;
  /** The session (`sid` claim; refresh family). */
  readonly sessionId?: string;
}

/** Client attributes a session may be bound to (`browser.bind`). */
export interface ClientAttributes {
  readonly userAgent?: string | undefined;
  readonly ip?: string | undefined;
}

export interface SessionInput {
  /** The subject the application authenticated. */
  readonly subject: string;
  /** Extra claims of every access token of the session (roles, tenant, ...); registered claims are refused. */
  readonly claims?: Readonly<Record<string, unknown>>;
  readonly scope?: string | readonly string[];
  /** Default: `issuer.sessionAudiences`. */
  readonly audience?: readonly string[];
  /** The client attributes to bind to, when `browser.bind` names any. */
  readonly client?: ClientAttributes;
}

export interface ClientCredentialsInput {
  readonly clientId: string;
  readonly clientSecret: string;
  /** Space-separated, as the request carried it. */
  readonly scope?: string | undefined;
  readonly audience?: readonly string[] | undefined;
}

export interface RefreshInput {
  /** The client that authenticated on this request, if any (confidential clients' families require it). */
  readonly clientId?: string | undefined;
  readonly client?: ClientAttributes;
}

/** What the issuer tells logs and audit (never a token or a secret). */
export type IssuerEvent =
  | {
      type: 'token_issued';
      grant: 'client_credentials' | 'refresh_token' | 'session';
      sub: string;
      clientId: string;
      jti: string;
      sid?: string;
    }
  | { type: 'grant_refused'; code: ErrorCode; reason: string; clientId?: string | undefined; sid?: string }
  | { type: 'refresh_reuse'; sid: string; sub: string; revoked: number }
  | { type: 'session_ended'; sid: string; sub: string }
  | { type: 'store_error'; error: unknown };

export interface IssuerOptions {
  /** Epoch ms (tests). */
  readonly now?: () => number;
  /** Sessions ended for cause (reuse, logout) are revoked here too, so their access tokens die at once. */
  readonly revocation?: RevocationList | null;
  /** A store built elsewhere (tests, or shared); default: built from `config.store`. */
  readonly store?: IssuerStore;
  readonly onEvent?: (event: IssuerEvent) => void;
  /** Start the key ring's rotation timer (default true). */
  readonly rotate?: boolean;
}

// Claims the issuer owns: a session's extra claims may not shadow them.
const REGISTERED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'sid', 'client_id', 'scope', 'cnf']);
// `brt_` marks Bulwark refresh tokens for secret scanners; 32 random bytes → 43 base64url characters.
const REFRESH_TOKEN = /^brt_[A-Za-z0-9_-]{43}$/;
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]{1,128}$/;
const MAX_SUBJECT = 256;

function fail(code: ErrorCode, reason: string, context?: Record<string, unknown>): BulwarkError {
  return new BulwarkError(code, undefined, { context: { reason, ...context } });
}

export function refreshTokenId(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}

function newRefreshToken(): string {
  return `brt_${randomBytes(32).toString('base64url')}`;
}

function splitScope(scope: string | readonly string[] | undefined): string[] {
  if (scope === undefined) return [];
  const list = typeof scope === 'string' ? scope.split(' ').filter((s) => s !== '') : [...scope];
  return [...new Set(list)];
}

interface CompiledClient {
  readonly record: ClientRecord;
  readonly audiences: ReadonlySet<string>;
  readonly scopes: ReadonlySet<string>;
  readonly grants: ReadonlySet<string>;
  readonly algorithm: SigningAlgorithm | undefined;
  readonly encrypt: boolean;
}

function compileClient(record: ClientRecord, algorithm?: SigningAlgorithm, encrypt = false): CompiledClient {
  return {
    record,
    audiences: new Set(record.audiences),
    scopes: new Set(record.scopes),
    grants: new Set(record.grants),
    algorithm,
    encrypt,
  };
}

interface Recipient {
  readonly key: CryptoKey | KeyObject | Uint8Array;
  readonly alg: string;
  readonly enc: string;
  readonly kid: string | undefined;
}

async function loadRecipient(config: NonNullable<IssuerConfig['encryption']>): Promise<Recipient> {
  const text = readFileSync(config.key, 'utf8');
  if (text.includes('-----BEGIN')) {
    return { key: await importSPKI(text, config.alg), alg: config.alg, enc: config.enc, kid: undefined };
  }
  const jwk = JSON.parse(text) as JWK;
  if (jwk.d !== undefined) throw new TypeError(`issuer.encryption.key ${config.key}: a private key; give the public half`);
  return { key: await importJWK(jwk, config.alg), alg: config.alg, enc: config.enc, kid: jwk.kid };
}

export function createIssuerStore(config: IssuerConfig): IssuerStore {
  const store = config.store ?? { sqlite: { path: ISSUER_DEFAULTS.sqlitePath } };
  if ('sqlite' in store) return new SqliteIssuerStore({ path: store.sqlite.path });
  if ('postgres' in store)
    return new PostgresIssuerStore({
      url: store.postgres.url,
      tablePrefix: store.postgres.tablePrefix ?? ISSUER_DEFAULTS.tablePrefix,
    });
  return new RedisIssuerStore({ url: store.redis.url, keyPrefix: store.redis.keyPrefix ?? ISSUER_DEFAULTS.keyPrefix });
}

export class Issuer {
  readonly config: IssuerConfig;
  readonly keys: KeyRing;
  readonly store: IssuerStore;
  /** Endpoint URLs, as the discovery document publishes them. */
  readonly urls: {
    readonly token: string;
    readonly jwks: string;
    readonly refresh: string;
    readonly logout: string;
    readonly revoke: string;
  };
  /** The issuer's own origin (always allowed to call the browser endpoints). */
  readonly origin: string;
  private readonly clients: ReadonlyMap<string, CompiledClient>;
  private readonly verifier = new SecretVerifier();
  private readonly dummyHash: string;
  private readonly recipient: Recipient | null;
  private readonly now: () => number;
  private readonly onEvent: (event: IssuerEvent) => void;
  private readonly longestTtlSec: number;
  private revocation: RevocationList | null;
  private discoveryJson: string;
  private sweepTimer: NodeJS.Timeout | undefined;

  private constructor(init: {
    config: IssuerConfig;
    keys: KeyRing;
    store: IssuerStore;
    dummyHash: string;
    recipient: Recipient | null;
    options: IssuerOptions;
  }) {
    const { config, options } = init;
    this.config = config;
    this.keys = init.keys;
    this.store = init.store;
    this.dummyHash = init.dummyHash;
    this.recipient = init.recipient;
    this.now = options.now ?? Date.now;
    this.onEvent = options.onEvent ?? (() => {});
    this.revocation = options.revocation ?? null;
    this.longestTtlSec = longestTokenTtlSec(config);
    const base = config.issuer.replace(/\/+$/, '') + config.path;
    this.urls = {
      token: `${base}/token`,
      jwks: `${base}/jwks.json`,
      refresh: `${base}/refresh`,
      logout: `${base}/logout`,
      revoke: `${base}/revoke`,
    };
    this.origin = new URL(config.issuer).origin;
    this.clients = new Map(
      config.clients.map((c) => [
        c.id,
        compileClient(
          {
            id: c.id,
            secretHash: c.secretHash,
            audiences: c.audiences,
            scopes: c.scopes,
            grants: c.grants,
            tokenTtlSec: c.tokenTtlSec ?? null,
            createdAt: 0,
            disabled: false,
          },
          c.algorithm,
          c.encrypt,
        ),
      ]),
    );
    this.discoveryJson = JSON.stringify({
      issuer: config.issuer,
      jwks_uri: this.urls.jwks,
      token_endpoint: this.urls.token,
      revocation_endpoint: this.urls.revoke,
      grant_types_supported: ['client_credentials', 'refresh_token'],
      token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
      revocation_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'none'],
      response_types_supported: ['token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: config.keys.algorithms,
      token_endpoint_auth_signing_alg_values_supported: config.keys.algorithms,
      scopes_supported: [...new Set(config.clients.flatMap((c) => c.scopes))],
    });
  }

  /** Opens the key ring and the store; `config` has its paths resolved (the loader does it). */
  static async create(config: IssuerConfig, options: IssuerOptions = {}): Promise<Issuer> {
    const now = options.now ?? Date.now;
    const keys = await KeyRing.open({ ...keyRingOptions(config), now });
    const store = options.store ?? createIssuerStore(config);
    try {
      await store.init();
      const recipient = config.encryption === undefined ? null : await loadRecipient(config.encryption);
      // Unknown client ids still pay one scrypt, so response time does not tell which ids exist.
      const dummyHash = await hashSecret(randomBytes(16).toString('base64url'));
      const issuer = new Issuer({ config, keys, store, dummyHash, recipient, options });
      if (options.rotate !== false) issuer.start();
      return issuer;
    } catch (err) {
      keys.close();
      await store.close().catch(() => {});
      throw err;
    }
  }

  /** A reload may bring another revocation list while the issuer carries over. */
  attachRevocation(list: RevocationList | null): void {
    this.revocation = list;
  }

  private start(): void {
    this.keys.start();
    // Spent families are garbage: sweep hourly, off the request path.
    this.sweepTimer = setInterval(() => {
      this.store.sweep(this.now()).catch((error: unknown) => this.onEvent({ type: 'store_error', error }));
    }, 3_600_000);
    this.sweepTimer.unref();
  }

  discovery(): string {
    return this.discoveryJson;
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    this.keys.close();
    await this.store.close();
  }

  // ---------------------------------------------------------------------------
  // Grants

  async clientCredentials(input: ClientCredentialsInput): Promise<TokenSet> {
    const client = await this.authenticate(input.clientId, input.clientSecret);
    if (!client.grants.has('client_credentials')) {
      throw this.refused('issuer.unauthorized_client', 'grant not allowed for client', client.record.id);
    }
    const requested = splitScope(input.scope);
    for (const scope of requested) {
      if (!SCOPE_TOKEN.test(scope) || !client.scopes.has(scope))
        throw this.refused('issuer.invalid_scope', `scope not allowed: ${scope.slice(0, 64)}`, client.record.id);
    }
    const scope = (requested.length > 0 ? requested : [...client.scopes]).join(' ');
    const audience =
      input.audience === undefined || input.audience.length === 0 ? [client.record.audiences[0]!] : [...new Set(input.audience)];
    for (const aud of audience) {
      if (!client.audiences.has(aud))
        throw this.refused('issuer.invalid_target', `audience not allowed: ${aud.slice(0, 128)}`, client.record.id);
    }
    const ttl = client.record.tokenTtlSec ?? this.config.accessTokenTtlSec;
    const { token, jti } = await this.sign(
      { subject: client.record.id, audience, scope, clientId: client.record.id, sid: undefined, claims: undefined, ttl },
      client.algorithm,
      client.encrypt,
    );
    this.onEvent({ type: 'token_issued', grant: 'client_credentials', sub: client.record.id, clientId: client.record.id, jti });
    return { accessToken: token, tokenType: 'Bearer', expiresIn: ttl, scope };
  }

  /** An application's own login: the subject is authenticated by the application; this mints its session. */
  async mintSession(input: SessionInput): Promise<TokenSet & { refreshToken: string; sessionId: string }> {
    if (typeof input.subject !== 'string' || input.subject === '' || input.subject.length > MAX_SUBJECT)
      throw new TypeError('mintSession: subject must be a non-empty string of at most 256 characters');
    const claims = input.claims ?? {};
    for (const name of Object.keys(claims)) {
      if (REGISTERED_CLAIMS.has(name)) throw new TypeError(`mintSession: claim "${name}" is set by the issuer`);
    }
    const scopes = splitScope(input.scope);
    for (const scope of scopes) if (!SCOPE_TOKEN.test(scope)) throw new TypeError(`mintSession: invalid scope "${scope}"`);
    const now = this.now();
    const refreshToken = newRefreshToken();
    const sessionId = randomUUID();
    const familyExpiresAt = now + this.config.sessionTtlSec * 1000;
    const record: RefreshRecord = {
      id: refreshTokenId(refreshToken),
      familyId: sessionId,
      subject: input.subject,
      clientId: '',
      scope: scopes.join(' '),
      audience: [...(input.audience ?? this.config.sessionAudiences)],
      claims: JSON.parse(JSON.stringify(claims)) as Record<string, unknown>,
      binding: this.bindingOf(input.client),
      createdAt: now,
      expiresAt: Math.min(now + this.config.refreshTokenTtlSec * 1000, familyExpiresAt),
      familyExpiresAt,
      usedAt: null,
      revokedAt: null,
    };
    await this.guard(() => this.store.insertRefresh(record));
    const set = await this.accessFor(record, 'session', refreshToken, record.expiresAt);
    return { ...set, refreshToken, sessionId };
  }

  /** The `refresh_token` grant: rotates the token; a second use of one revokes the whole session. */
  async refresh(refreshToken: string, input: RefreshInput = {}): Promise<TokenSet> {
    if (!REFRESH_TOKEN.test(refreshToken)) throw this.refused('issuer.invalid_grant', 'malformed refresh token', input.clientId);
    const id = refreshTokenId(refreshToken);
    // Look before consuming: a confidential client's token presented without that client's
    // authentication must be refused without being spent.
    const current = await this.guard(() => this.store.getRefresh(id));
    if (current === null) throw this.refused('issuer.invalid_grant', 'unknown refresh token', input.clientId);
    if (current.clientId !== '' && current.clientId !== input.clientId)
      throw this.refused('issuer.invalid_grant', 'refresh token of another client', input.clientId, current.familyId);
    const next = newRefreshToken();
    const now = this.now();
    const result = await this.guard(() =>
      this.store.rotateRefresh({
        id,
        nextId: refreshTokenId(next),
        now,
        nextExpiresAt: now + this.config.refreshTokenTtlSec * 1000,
        binding: this.bindingOf(input.client),
      }),
    );
    switch (result.status) {
      case 'rotated':
        return this.accessFor(result.next, 'refresh_token', next, result.next.expiresAt);
      case 'reused': {
        // Someone holds a copy: the legitimate client and the thief cannot be told apart, so the session ends for both.
        const revoked = await this.guard(() => this.store.revokeFamily(result.record.familyId, now));
        await this.revokeSessionTokens(result.record.familyId);
        this.onEvent({ type: 'refresh_reuse', sid: result.record.familyId, sub: result.record.subject, revoked });
        throw this.refused(
          'issuer.invalid_grant',
          'refresh token reused: session revoked',
          input.clientId,
          result.record.familyId,
        );
      }
      case 'unknown':
        throw this.refused('issuer.invalid_grant', 'unknown refresh token', input.clientId);
      default:
        throw this.refused('issuer.invalid_grant', `refresh token ${result.status}`, input.clientId, result.record.familyId);
    }
  }

  /** Ends the session a refresh token belongs to (logout; RFC 7009 revocation). False: no such token. */
  async endSessionOf(refreshToken: string): Promise<boolean> {
    if (!REFRESH_TOKEN.test(refreshToken)) return false;
    const record = await this.guard(() => this.store.getRefresh(refreshTokenId(refreshToken)));
    if (record === null) return false;
    await this.endSession(record.familyId, record.subject);
    return true;
  }

  async endSession(sessionId: string, subject = ''): Promise<void> {
    await this.guard(() => this.store.revokeFamily(sessionId, this.now()));
    await this.revokeSessionTokens(sessionId);
    this.onEvent({ type: 'session_ended', sid: sessionId, sub: subject });
  }

  /** Every session of a subject (logout everywhere). Returns the ended session ids. */
  async endSessionsOf(subject: string): Promise<string[]> {
    const families = await this.guard(() => this.store.revokeSubject(subject, this.now()));
    for (const sid of families) {
      await this.revokeSessionTokens(sid);
      this.onEvent({ type: 'session_ended', sid, sub: subject });
    }
    return families;
  }

  /**
   * RFC 7009 for access tokens: one this issuer signed (checked against its own JWKS)
   * is revoked by `jti` until it expires. Needs a revocation list; false otherwise or
   * when the token is not ours.
   */
  async revokeAccessToken(token: string): Promise<boolean> {
    if (this.revocation === null) return false;
    try {
      const { payload } = await jwtVerify(token, this.ownKeys(), {
        issuer: this.config.issuer,
        algorithms: [...this.config.keys.algorithms],
      });
      if (typeof payload.jti !== 'string' || typeof payload.exp !== 'number') return false;
      await this.revocation.revoke({ jti: payload.jti, expiresAt: payload.exp });
      return true;
    } catch {
      return false;
    }
  }

  // ---------------------------------------------------------------------------
  // Browser sessions

  /** `Set-Cookie` values handing a session to a browser: the refresh cookie and a fresh CSRF token. */
  sessionCookies(set: TokenSet): string[] {
    const browser = this.browser();
    if (set.refreshToken === undefined) throw new TypeError('sessionCookies: the token set has no refresh token');
    const secure = browser.secure ? '; Secure' : '';
    const maxAge = set.refreshExpiresIn ?? this.config.refreshTokenTtlSec;
    const csrf = randomBytes(24).toString('base64url');
    const refreshPath = new URL(this.urls.refresh).pathname.replace(/\/refresh$/, '');
    return [
      // Scoped to the issuer's path: the refresh token travels to `refresh` and `logout` only.
      `${browser.cookieName}=${set.refreshToken}; Path=${refreshPath}; Max-Age=${maxAge}; HttpOnly${secure}; SameSite=Strict`,
      // Readable by the page (it echoes it in the CSRF header); useless to a cross-site attacker, who cannot read it.
      `${browser.csrfCookieName}=${csrf}; Path=/; Max-Age=${maxAge}${secure}; SameSite=Strict`,
    ];
  }

  clearCookies(): string[] {
    const browser = this.browser();
    const secure = browser.secure ? '; Secure' : '';
    const refreshPath = new URL(this.urls.refresh).pathname.replace(/\/refresh$/, '');
    return [
      `${browser.cookieName}=; Path=${refreshPath}; Max-Age=0; HttpOnly${secure}; SameSite=Strict`,
      `${browser.csrfCookieName}=; Path=/; Max-Age=0${secure}; SameSite=Strict`,
    ];
  }

  /** Double submit: the CSRF header must equal the CSRF cookie. Constant time. */
  csrfValid(cookie: string | undefined, header: string | undefined): boolean {
    if (cookie === undefined || header === undefined || cookie.length < 16) return false;
    const a = Buffer.from(cookie);
    const b = Buffer.from(header);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  browser(): NonNullable<IssuerConfig['browser']> {
    const browser = this.config.browser;
    if (browser === undefined) throw new TypeError('the issuer has no `browser` section');
    return browser;
  }

  /**
   * Authenticates a client (refresh or revocation requests that carry client credentials);
   * with `grant`, the client must also be registered for that grant (`unauthorized_client`).
   */
  async verifyClient(clientId: string, secret: string, grant?: 'client_credentials' | 'refresh_token'): Promise<void> {
    const client = await this.authenticate(clientId, secret);
    if (grant !== undefined && !client.grants.has(grant))
      throw this.refused('issuer.unauthorized_client', 'grant not allowed for client', client.record.id);
  }

  // ---------------------------------------------------------------------------

  private ownKeysCache: { version: string; keys: ReturnType<typeof createLocalJWKSet> } | null = null;
  /** The issuer's own JWKS as a jose key set, rebuilt only when the published set changes. */
  private ownKeys(): ReturnType<typeof createLocalJWKSet> {
    const version = this.keys.jwksVersion;
    if (this.ownKeysCache?.version !== version) this.ownKeysCache = { version, keys: createLocalJWKSet(this.keys.jwks()) };
    return this.ownKeysCache.keys;
  }

  private async authenticate(clientId: string, secret: string): Promise<CompiledClient> {
    const client = this.clients.get(clientId) ?? (await this.storedClient(clientId));
    const ok = await this.verifier.verify(clientId, secret, client?.record.secretHash ?? this.dummyHash);
    if (client === null || client === undefined || client.record.disabled || !ok) {
      const reason =
        client === null || client === undefined
          ? 'unknown client'
          : client.record.disabled
            ? 'client disabled'
            : 'bad client secret';
      throw this.refused('issuer.invalid_client', reason, clientId.slice(0, 128));
    }
    return client;
  }

  private async storedClient(id: string): Promise<CompiledClient | null> {
    if (id === '' || id.length > 128) return null;
    const record = await this.guard(() => this.store.getClient(id));
    return record === null ? null : compileClient(record);
  }

  private async accessFor(
    record: RefreshRecord,
    grant: 'session' | 'refresh_token',
    refreshToken: string,
    refreshExpiresAt: number,
  ): Promise<TokenSet> {
    const ttl = this.config.accessTokenTtlSec;
    const { token, jti } = await this.sign(
      {
        subject: record.subject,
        audience: record.audience,
        scope: record.scope,
        clientId: record.clientId === '' ? undefined : record.clientId,
        sid: record.familyId,
        claims: record.claims,
        ttl,
      },
      undefined,
      this.config.encryption?.sessions === true,
    );
    this.onEvent({ type: 'token_issued', grant, sub: record.subject, clientId: record.clientId, jti, sid: record.familyId });
    return {
      accessToken: token,
      tokenType: 'Bearer',
      expiresIn: ttl,
      scope: record.scope,
      refreshToken,
      refreshExpiresIn: Math.max(0, Math.floor((refreshExpiresAt - this.now()) / 1000)),
      sessionId: record.familyId,
    };
  }

  private async sign(
    t: {
      subject: string;
      audience: readonly string[];
      scope: string;
      clientId: string | undefined;
      sid: string | undefined;
      claims: Readonly<Record<string, unknown>> | undefined;
      ttl: number;
    },
    algorithm: SigningAlgorithm | undefined,
    encrypt: boolean,
  ): Promise<{ token: string; jti: string }> {
    let key;
    try {
      key = this.keys.signer(algorithm);
    } catch (err) {
      if (err instanceof KeyRingError) throw new BulwarkError('issuer.no_signing_key', undefined, { cause: err });
      throw err;
    }
    const iat = Math.floor(this.now() / 1000);
    const jti = randomUUID();
    const payload: Record<string, unknown> = { ...t.claims };
    if (t.scope !== '') payload['scope'] = t.scope;
    if (t.clientId !== undefined) payload['client_id'] = t.clientId;
    if (t.sid !== undefined) payload['sid'] = t.sid;
    const jwt = new SignJWT(payload)
      // RFC 9068: `at+jwt` keeps an access token from being taken for an ID token or any other JWT.
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'at+jwt' })
      .setIssuer(this.config.issuer)
      .setSubject(t.subject)
      .setIssuedAt(iat)
      .setExpirationTime(iat + t.ttl)
      .setJti(jti);
    if (t.audience.length > 0) jwt.setAudience(t.audience.length === 1 ? t.audience[0]! : [...t.audience]);
    const signed = await jwt.sign(key.privateKey);
    if (!encrypt || this.recipient === null) return { token: signed, jti };
    const r = this.recipient;
    return {
      token: await encryptToken(signed, r.key, { alg: r.alg, enc: r.enc, ...(r.kid === undefined ? {} : { kid: r.kid }) }),
      jti,
    };
  }

  private bindingOf(client: ClientAttributes | undefined): string | null {
    const bind = this.config.browser?.bind ?? [];
    if (bind.length === 0) return null;
    const hash = createHash('sha256');
    for (const attribute of bind) {
      hash.update(attribute === 'ip' ? (client?.ip ?? '') : (client?.userAgent ?? ''));
      hash.update('\0');
    }
    return hash.digest('base64url');
  }

  private async revokeSessionTokens(sessionId: string): Promise<void> {
    if (this.revocation === null) return;
    try {
      await this.revocation.revoke({ sid: sessionId, expiresAt: Math.ceil(this.now() / 1000) + this.longestTtlSec });
    } catch (error) {
      this.onEvent({ type: 'store_error', error });
    }
  }

  private refused(code: ErrorCode, reason: string, clientId?: string, sid?: string): BulwarkError {
    this.onEvent({ type: 'grant_refused', code, reason, clientId, ...(sid === undefined ? {} : { sid }) });
    return fail(code, reason, { clientId, sid });
  }

  private async guard<T>(op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (error) {
      if (error instanceof IssuerStoreError) {
        this.onEvent({ type: 'store_error', error });
        throw new BulwarkError('issuer.store_unavailable', undefined, { cause: error });
      }
      throw error;
    }
  }
}
