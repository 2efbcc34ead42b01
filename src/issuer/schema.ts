/**
 * The `issuer` section: Bulwark's own token service, for the paths with no identity
 * provider in them (service-to-service, an application's own login). TypeBox objects
 * are the source of truth; `issuerChecks` adds what a schema cannot say.
 *
 * ```yaml
 * issuer:
 *   issuer: https://auth.internal.example    # `iss` of every token; base of the discovery document's URLs
 *   path: /oauth                            # endpoints: /oauth/token, /oauth/jwks.json, /oauth/refresh, /oauth/logout, /oauth/revoke
 *   keys: { dir: ./issuer-keys, algorithms: [ES256, EdDSA], rotateEverySec: 604800, publishAheadSec: 3600 }
 *   store: { sqlite: { path: ./issuer.db } }  # or { postgres: { url } } / { redis: { url } } for several instances
 *   clients:
 *     - id: billing
 *       secretHash: $scrypt$ln=15,r=8,p=1$...  # `bulwark issuer hash-secret`
 *       audiences: [https://ledger.internal]
 *       scopes: [ledger:read, ledger:write]
 * ```
 */
import { createPublicKey, type JsonWebKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { Type, type Static, type TObject, type TProperties, type ObjectOptions } from '@sinclair/typebox';
import { isSecretHash } from './secret.js';

function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

export const SIGNING_ALGORITHMS = ['ES256', 'EdDSA', 'RS256', 'PS256'] as const;
export const GRANTS = ['client_credentials', 'refresh_token'] as const;
export const BINDINGS = ['user_agent', 'ip'] as const;
export const KEY_WRAP_ALGORITHMS = ['ECDH-ES+A256KW', 'ECDH-ES+A128KW', 'RSA-OAEP-256'] as const;
export const CONTENT_ENCRYPTIONS = ['A256GCM', 'A128GCM'] as const;

export const ISSUER_DEFAULTS = Object.freeze({
  path: '/oauth',
  algorithms: ['ES256', 'EdDSA'] as ('ES256' | 'EdDSA' | 'RS256' | 'PS256')[],
  rotateEverySec: 604_800,
  publishAheadSec: 3_600,
  accessTokenTtlSec: 600,
  refreshTokenTtlSec: 1_209_600,
  sessionTtlSec: 2_592_000,
  sqlitePath: 'bulwark-issuer.db',
  tablePrefix: 'bulwark_issuer_',
  keyPrefix: 'bulwark:issuer:',
  cookieName: 'bulwark_refresh',
  csrfCookieName: 'bulwark_csrf',
  csrfHeader: 'x-csrf-token',
});

const Seconds = (description: string, def: number, minimum = 1, maximum = 31_536_000) =>
  Type.Integer({ minimum, maximum, default: def, description: `${description} (seconds).` });

// Scope tokens per RFC 6749 §3.3: printable ASCII except space, `"` and `\`.
const ScopeToken = Type.String({ pattern: '^[\\x21\\x23-\\x5B\\x5D-\\x7E]{1,128}$', description: 'One scope.' });
const Audience = Type.String({ minLength: 1, maxLength: 512, description: 'An audience (`aud`), usually a URL.' });

export const IssuerKeysSchema = Closed(
  {
    dir: Type.String({
      minLength: 1,
      description:
        'Directory of the signing keys (created 0700; one PKCS#8 PEM and one metadata file per key). Relative to the config file. Several instances may share it.',
    }),
    algorithms: Type.Array(
      Type.Union(
        SIGNING_ALGORITHMS.map((alg) => Type.Literal(alg)),
        { description: 'A signing algorithm.' },
      ),
      {
        minItems: 1,
        uniqueItems: true,
        default: ISSUER_DEFAULTS.algorithms,
        description: 'One active key per algorithm; the first signs unless a client names another.',
      },
    ),
    rotateEverySec: Seconds(
      'A new key takes over this often; 0 = only `bulwark issuer keys rotate`',
      ISSUER_DEFAULTS.rotateEverySec,
      0,
    ),
    publishAheadSec: Seconds(
      "A new key is in the JWKS this long before it signs anything: at least the verifiers' JWKS cache time (Bulwark's default 300 s)",
      ISSUER_DEFAULTS.publishAheadSec,
      0,
    ),
  },
  {
    description:
      'Signing keys. A retired key stays published until every token it signed has expired, then its files are deleted.',
  },
);

export const IssuerStoreSchema = Type.Union(
  [
    Closed(
      {
        sqlite: Closed({
          path: Type.String({
            minLength: 1,
            description: `Database file, relative to the config file (default \`${ISSUER_DEFAULTS.sqlitePath}\`). Shared by the workers of one host.`,
          }),
        }),
      },
      { description: 'Embedded SQLite: one host.' },
    ),
    Closed(
      {
        postgres: Closed({
          url: Type.String({ pattern: '^postgres(ql)?://', description: 'PostgreSQL connection URL.' }),
          tablePrefix: Type.Optional(
            Type.String({
              pattern: '^[a-z_][a-z0-9_]{0,40}$',
              description: `Prefix of the issuer's tables (default \`${ISSUER_DEFAULTS.tablePrefix}\`).`,
            }),
          ),
        }),
      },
      { description: 'PostgreSQL: several instances.' },
    ),
    Closed(
      {
        redis: Closed({
          url: Type.String({ pattern: '^rediss?://', description: 'Redis URL.' }),
          keyPrefix: Type.Optional(
            Type.String({
              minLength: 1,
              maxLength: 128,
              description: `Prefix of the issuer's keys (default \`${ISSUER_DEFAULTS.keyPrefix}\`).`,
            }),
          ),
        }),
      },
      { description: 'Redis: several instances (configure persistence if refresh tokens must survive a restart).' },
    ),
  ],
  {
    description: `Where client registrations and refresh tokens live. Default: SQLite \`${ISSUER_DEFAULTS.sqlitePath}\` next to the config file.`,
  },
);

export const IssuerClientSchema = Closed(
  {
    id: Type.String({
      pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$',
      description: 'Client id (`client_id`; also the `sub` of its tokens).',
    }),
    secretHash: Type.String({
      minLength: 1,
      description: 'scrypt hash of the client secret, from `bulwark issuer hash-secret` (never the secret itself).',
    }),
    audiences: Type.Array(Audience, {
      minItems: 1,
      uniqueItems: true,
      description: 'Audiences the client may ask for (`audience` or `resource`); the first when it asks for none.',
    }),
    scopes: Type.Array(ScopeToken, {
      default: [],
      uniqueItems: true,
      description: 'Scopes the client may be granted; all of them when it asks for none.',
    }),
    grants: Type.Array(
      Type.Union(
        GRANTS.map((grant) => Type.Literal(grant)),
        { description: 'An OAuth 2.0 grant type.' },
      ),
      {
        minItems: 1,
        uniqueItems: true,
        default: ['client_credentials'],
        description: 'Grants the client may use.',
      },
    ),
    tokenTtlSec: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 86_400,
        description: "Access token lifetime for this client (default: the issuer's).",
      }),
    ),
    algorithm: Type.Optional(
      Type.Union(
        SIGNING_ALGORITHMS.map((alg) => Type.Literal(alg)),
        { description: "Sign this client's tokens with this algorithm (must be in `keys.algorithms`)." },
      ),
    ),
    encrypt: Type.Boolean({
      default: false,
      description: "Wrap this client's tokens in a JWE for `encryption.key` (confidential claims).",
    }),
  },
  { description: 'A service account.' },
);

export const IssuerBrowserSchema = Closed(
  {
    cookieName: Type.String({
      pattern: '^[A-Za-z0-9_-]{1,64}$',
      default: ISSUER_DEFAULTS.cookieName,
      description: 'Cookie holding the refresh token (`HttpOnly; Secure; SameSite=Strict; Path=<path>/refresh`).',
    }),
    csrfCookieName: Type.String({
      pattern: '^[A-Za-z0-9_-]{1,64}$',
      default: ISSUER_DEFAULTS.csrfCookieName,
      description: 'Readable cookie with the CSRF token the page echoes in the CSRF header (double submit).',
    }),
    csrfHeader: Type.String({
      pattern: '^[A-Za-z0-9-]{1,64}$',
      default: ISSUER_DEFAULTS.csrfHeader,
      description: 'Header that must carry the CSRF cookie value on `refresh` and `logout`.',
    }),
    secure: Type.Boolean({
      default: true,
      description: 'Mark cookies `Secure`. Only `false` for plain-HTTP development on localhost.',
    }),
    allowedOrigins: Type.Array(Type.String({ pattern: '^https?://[^/]+$' }), {
      default: [],
      uniqueItems: true,
      description:
        "Origins a browser may call `refresh`/`logout` from (an `Origin` header outside them is refused); the issuer's own origin always may.",
    }),
    bind: Type.Array(
      Type.Union(
        BINDINGS.map((b) => Type.Literal(b)),
        { description: 'A client attribute.' },
      ),
      {
        default: [],
        uniqueItems: true,
        description:
          'Bind a session to the client attributes it started with: a refresh from another `user_agent` or `ip` is refused (not revoked). `ip` logs out users whose address changes (mobile networks).',
      },
    ),
  },
  { description: 'Sessions of browser applications: refresh token in an HttpOnly cookie, CSRF defence.' },
);

export const IssuerEncryptionSchema = Closed(
  {
    key: Type.String({
      minLength: 1,
      description:
        "Recipient's public key (PEM SPKI or a public JWK file), relative to the config file: the gateway holding the matching private key unwraps (`authn.providers.*.decrypt`).",
    }),
    alg: Type.Union(
      KEY_WRAP_ALGORITHMS.map((alg) => Type.Literal(alg)),
      { default: 'ECDH-ES+A256KW', description: 'Key management algorithm.' },
    ),
    enc: Type.Union(
      CONTENT_ENCRYPTIONS.map((enc) => Type.Literal(enc)),
      { default: 'A256GCM', description: 'Content encryption.' },
    ),
    sessions: Type.Boolean({ default: false, description: 'Encrypt the access tokens of sessions too.' }),
  },
  { description: 'Encrypted tokens (nested JWT: a signed token inside a JWE).' },
);

export const IssuerSchema = Closed(
  {
    issuer: Type.String({
      pattern: '^https?://[^\\s?#]+$',
      description: "The issuer identifier (`iss`) and the base URL of the discovery document's endpoints.",
    }),
    path: Type.String({
      pattern: '^(/[A-Za-z0-9._~-]+)+$',
      default: ISSUER_DEFAULTS.path,
      description:
        'Prefix of the endpoints: `token`, `jwks.json`, `refresh`, `logout`, `revoke` (discovery is at `/.well-known/`).',
    }),
    keys: IssuerKeysSchema,
    accessTokenTtlSec: Seconds('Access token lifetime', ISSUER_DEFAULTS.accessTokenTtlSec, 1, 86_400),
    refreshTokenTtlSec: Seconds('Lifetime of one refresh token (each use replaces it)', ISSUER_DEFAULTS.refreshTokenTtlSec),
    sessionTtlSec: Seconds('Absolute lifetime of a session, however often it is refreshed', ISSUER_DEFAULTS.sessionTtlSec),
    sessionAudiences: Type.Array(Audience, {
      default: [],
      uniqueItems: true,
      description: 'Default `aud` of session access tokens (an application may name others when it mints a session).',
    }),
    store: Type.Optional(IssuerStoreSchema),
    clients: Type.Array(IssuerClientSchema, {
      default: [],
      description: 'Service accounts. More can live in the store (`bulwark issuer client add`); these win on an id clash.',
    }),
    browser: Type.Optional(IssuerBrowserSchema),
    encryption: Type.Optional(IssuerEncryptionSchema),
  },
  {
    description:
      'Built-in token service: `client_credentials` and `refresh_token` grants, sessions minted by the application, rotating signing keys, JWKS and discovery. Routes with `issuer: true` serve it.',
  },
);

export type IssuerConfig = Static<typeof IssuerSchema>;
export type IssuerClientConfig = Static<typeof IssuerClientSchema>;
export type IssuerStoreConfig = Static<typeof IssuerStoreSchema>;
export type IssuerBrowserConfig = Static<typeof IssuerBrowserSchema>;
export type IssuerEncryptionConfig = Static<typeof IssuerEncryptionSchema>;

export type IssuerReport = (path: (string | number)[], code: string, message: string, severity?: 'error' | 'warning') => void;

/** Relative paths mean "next to the config file", whatever the process's cwd. */
export function resolveIssuerPaths(issuer: IssuerConfig, baseDir: string): IssuerConfig {
  const at = (path: string) => (isAbsolute(path) ? path : resolvePath(baseDir, path));
  const store: IssuerStoreConfig = issuer.store ?? { sqlite: { path: ISSUER_DEFAULTS.sqlitePath } };
  return {
    ...issuer,
    keys: { ...issuer.keys, dir: at(issuer.keys.dir) },
    store:
      'sqlite' in store ? { sqlite: { path: store.sqlite.path === ':memory:' ? ':memory:' : at(store.sqlite.path) } } : store,
    ...(issuer.encryption === undefined ? {} : { encryption: { ...issuer.encryption, key: at(issuer.encryption.key) } }),
  };
}

/** Longest lifetime of any access token the issuer signs (seconds): how long a retired key stays published. */
export function longestTokenTtlSec(issuer: IssuerConfig): number {
  let longest = issuer.accessTokenTtlSec;
  for (const client of issuer.clients) longest = Math.max(longest, client.tokenTtlSec ?? 0);
  return longest;
}

/** Why the recipient key file cannot be used (checked at load, so a bad file names its line), or null. */
function recipientKeyProblem(path: string): string | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`;
  }
  try {
    if (text.includes('PRIVATE KEY')) return `${path} is a private key: give the recipient's public key`;
    const key = text.includes('-----BEGIN')
      ? createPublicKey(text)
      : (() => {
          const jwk = JSON.parse(text) as { d?: unknown };
          if (jwk.d !== undefined) throw new TypeError('a private JWK');
          return createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
        })();
    if (key.asymmetricKeyType !== 'ec' && key.asymmetricKeyType !== 'rsa') return `${path}: an EC or RSA public key is needed`;
    return null;
  } catch (err) {
    return `${path} is not a usable public key (${(err as Error).message})`;
  }
}

/** What the key ring needs of the section (the server and `bulwark issuer keys` open it alike). */
export function keyRingOptions(issuer: IssuerConfig) {
  return {
    dir: issuer.keys.dir,
    algorithms: issuer.keys.algorithms,
    rotateEveryMs: issuer.keys.rotateEverySec * 1000,
    publishAheadMs: issuer.keys.publishAheadSec * 1000,
    maxTokenLifetimeMs: longestTokenTtlSec(issuer) * 1000,
  };
}

/** Config check for `issuer` and the routes that serve it. */
export function issuerChecks(
  config: { issuer?: IssuerConfig; workers?: number | 'auto'; routes: readonly { issuer?: boolean; upstream?: string }[] },
  report: IssuerReport,
): void {
  const issuer = config.issuer;
  config.routes.forEach((route, i) => {
    if (route.issuer !== true) return;
    if (issuer === undefined)
      report(['routes', i, 'issuer'], 'config.issuer_missing', 'route serves the issuer but there is no `issuer` section');
    if (route.upstream !== undefined)
      report(
        ['routes', i, 'upstream'],
        'config.issuer_upstream',
        'a route serves the issuer or forwards to an upstream, not both',
      );
  });
  if (issuer === undefined) return;
  const ids = new Map<string, number>();
  issuer.clients.forEach((client, i) => {
    const at = ['issuer', 'clients', i];
    const first = ids.get(client.id);
    if (first === undefined) ids.set(client.id, i);
    else report([...at, 'id'], 'config.duplicate_id', `duplicate client id "${client.id}" (also issuer.clients[${first}])`);
    if (!isSecretHash(client.secretHash))
      report(
        [...at, 'secretHash'],
        'config.issuer_secret',
        'not a secret hash: store `bulwark issuer hash-secret` output, never the secret',
      );
    if (client.algorithm !== undefined && !issuer.keys.algorithms.includes(client.algorithm))
      report([...at, 'algorithm'], 'config.issuer_algorithm', `${client.algorithm} is not in issuer.keys.algorithms`);
    if (client.encrypt && issuer.encryption === undefined)
      report([...at, 'encrypt'], 'config.issuer_encryption', 'encrypt: true needs an issuer.encryption section');
  });
  if (issuer.encryption !== undefined) {
    const problem = recipientKeyProblem(issuer.encryption.key);
    if (problem !== null) report(['issuer', 'encryption', 'key'], 'config.issuer_encryption_key', problem);
  }
  const { rotateEverySec, publishAheadSec } = issuer.keys;
  if (rotateEverySec > 0 && publishAheadSec >= rotateEverySec)
    report(
      ['issuer', 'keys', 'publishAheadSec'],
      'config.issuer_rotation',
      'publishAheadSec must be shorter than rotateEverySec (a key must sign before its successor is due)',
    );
  if (issuer.refreshTokenTtlSec > issuer.sessionTtlSec)
    report(
      ['issuer', 'refreshTokenTtlSec'],
      'config.issuer_lifetime',
      'refreshTokenTtlSec is longer than sessionTtlSec: the session ends first',
      'warning',
    );
  if (issuer.browser !== undefined && !issuer.browser.secure)
    report(
      ['issuer', 'browser', 'secure'],
      'config.issuer_insecure_cookie',
      'refresh cookies without Secure travel over plain HTTP: development only',
      'warning',
    );
  let url: URL | null = null;
  try {
    url = new URL(issuer.issuer);
  } catch {
    report(['issuer', 'issuer'], 'config.issuer_url', `not a URL: ${issuer.issuer}`);
  }
  if (url !== null && url.protocol === 'http:' && !['localhost', '127.0.0.1', '[::1]'].includes(url.hostname))
    report(['issuer', 'issuer'], 'config.issuer_url', 'an issuer on plain HTTP outside localhost', 'warning');
  if (issuer.store !== undefined && 'sqlite' in issuer.store && issuer.store.sqlite.path === ':memory:' && config.workers !== 1)
    report(
      ['issuer', 'store', 'sqlite', 'path'],
      'config.issuer_store_memory',
      'an in-memory SQLite store is per process: with several workers a refresh token only works on the worker that issued it',
    );
  if (issuer.store !== undefined && !('sqlite' in issuer.store)) {
    const storeUrl = 'postgres' in issuer.store ? issuer.store.postgres.url : issuer.store.redis.url;
    if (!URL.canParse(storeUrl)) report(['issuer', 'store'], 'config.issuer_store_url', 'not a URL');
  }
}

/** The routes `bulwark issuer serve` runs: the issuer's endpoints and discovery, public (the token endpoint authenticates clients itself). */
export function issuerRoutes(
  issuer: IssuerConfig,
): { id: string; match: { path: { prefix: string } | { exact: string } }; auth: { public: true }; issuer: true }[] {
  return [
    { id: 'issuer', match: { path: { prefix: issuer.path } }, auth: { public: true }, issuer: true },
    { id: 'issuer-discovery', match: { path: { prefix: '/.well-known' } }, auth: { public: true }, issuer: true },
  ];
}
