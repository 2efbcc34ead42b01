/**
 * Config for JWT authentication: named providers (`authn.providers`) and the
 * per-route requirement (`auth` on a route). Shapes only; rules that span
 * fields (exactly one key source, HS only with a secret…) are in `checks.ts`,
 * so they fail at load with a path, like every other config mistake.
 */
import { Type, type Static, type TObject, type TProperties, type ObjectOptions } from '@sinclair/typebox';

// Same helper as src/config/schema.ts (copied, not imported, so this module has no
// dependency on the gateway's config): a typo must be an error, never ignored.
function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

/** Defaults shared by the schema and by compile (which applies them when `jwks` is absent). */
export const JWKS_DEFAULTS = {
  cacheTtlMs: 300_000,
  cooldownMs: 30_000,
  maxStaleMs: 3_600_000,
  timeoutMs: 3_000,
  maxBytes: 1_048_576,
} as const;

export const AUTHN_CACHE_DEFAULTS = { maxEntries: 10_000, ttlMs: 300_000 } as const;

/** Algorithms a provider may allow. `none` is not representable. */
export const ASYMMETRIC_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
] as const;
export const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'] as const;

/**
 * JWE key management a provider may allow for encrypted tokens (`decrypt`). Asymmetric
 * only: the key is a private key file. No `RSA1_5` (padding oracle), no `PBES2-*`, no `dir`.
 */
export const JWE_KEY_ALGORITHMS = ['ECDH-ES', 'ECDH-ES+A128KW', 'ECDH-ES+A256KW', 'RSA-OAEP', 'RSA-OAEP-256'] as const;
/** JWE content encryption a provider may allow. */
export const JWE_CONTENT_ENCRYPTIONS = ['A256GCM', 'A128GCM', 'A256CBC-HS512', 'A128CBC-HS256'] as const;
export const DECRYPT_DEFAULTS = {
  algorithms: ['ECDH-ES+A256KW', 'RSA-OAEP-256'],
  encryptions: ['A256GCM'],
  required: false,
} as const;

const DurationMs = (description: string, def: number) =>
  Type.Integer({ minimum: 1, maximum: 86_400_000, default: def, description: `${description} (milliseconds).` });

const ProviderName = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$',
  description: 'Provider name: letters, digits, `_`, `.`, `-`.',
});

const TenantName = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$',
  description: 'Tenant id: letters, digits, `_`, `.`, `-`.',
});

// RFC 9110 token characters; names are compared lower-case.
const HEADER_NAME_PATTERN = "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$";
const HeaderName = (description: string) => Type.String({ pattern: HEADER_NAME_PATTERN, description });

// Dot path into the claims; a claim whose whole name contains dots (`https://ex.com/roles`)
// is found first as-is, so namespaced claims work too.
const CLAIM_PATH_PATTERN = '^[^.]+(\\.[^.]+)*$';
const ClaimPath = (description: string) => Type.String({ pattern: CLAIM_PATH_PATTERN, maxLength: 256, description });

export const AlgorithmSchema = Type.Union(
  [...ASYMMETRIC_ALGORITHMS, ...HMAC_ALGORITHMS].map((alg) => Type.Literal(alg)),
  { description: 'A JWS algorithm. `HS*` only with `secret`.' },
);

export const JwksOptionsSchema = Closed(
  {
    cacheTtlMs: DurationMs('How long a fetched JWKS is used before it is refreshed in the background', JWKS_DEFAULTS.cacheTtlMs),
    cooldownMs: DurationMs(
      'Least time between two fetches: an unknown `kid` refetches at most once per cooldown, however many tokens carry one',
      JWKS_DEFAULTS.cooldownMs,
    ),
    maxStaleMs: DurationMs(
      'While the endpoint fails, cached keys keep being used until this long after the last successful fetch; then tokens are refused with `jwt.jwks_unavailable`',
      JWKS_DEFAULTS.maxStaleMs,
    ),
    timeoutMs: DurationMs('Whole fetch, body included', JWKS_DEFAULTS.timeoutMs),
    maxBytes: Type.Integer({
      minimum: 256,
      maximum: 16_777_216,
      default: JWKS_DEFAULTS.maxBytes,
      description: 'Largest JWKS (or discovery document) accepted, in bytes; reading stops there.',
    }),
  },
  { description: 'Fetching and caching of a remote JWKS (with `jwksUrl` or `discovery`).' },
);

export const PublicKeySchema = Closed({
  key: Type.String({
    minLength: 1,
    description:
      'A PEM public key (`-----BEGIN PUBLIC KEY-----`) or X.509 certificate, inline or as a file path (relative to the config file).',
  }),
  kid: Type.Optional(
    Type.String({ minLength: 1, maxLength: 256, description: 'Key id; tokens carrying a `kid` use only the key with that id.' }),
  ),
});

export const TokenSourceSchema = Type.Union(
  [
    Closed({
      header: HeaderName('Request header carrying the token.'),
      prefix: Type.Optional(
        Type.String({
          pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$",
          description: 'Auth scheme before the token (case-insensitive), e.g. `Bearer`; absent: the whole value is the token.',
        }),
      ),
    }),
    Closed({
      cookie: Type.String({ pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$", description: 'Cookie carrying the token.' }),
    }),
    Closed({
      query: Type.String({
        pattern: '^[A-Za-z0-9._~-]{1,128}$',
        description: 'Query parameter carrying the token. Opt-in only: URLs end up in logs and browser history.',
      }),
    }),
  ],
  {
    default: { header: 'authorization', prefix: 'Bearer' },
    description: 'Where the token comes from: one of `header` (+ `prefix`), `cookie`, `query`.',
  },
);

const ClaimValue = Type.Union([Type.String(), Type.Number(), Type.Boolean()]);

export const ForwardSchema = Closed(
  {
    claims: Type.Optional(
      Type.Record(Type.String({ pattern: CLAIM_PATH_PATTERN }), HeaderName('Upstream header name.'), {
        additionalProperties: false,
        description:
          'Claim path → upstream header. Arrays are joined with `,`. Values with control characters (or, in arrays, commas) are not forwarded.',
      }),
    ),
    payloadHeader: Type.Optional(HeaderName('Upstream header receiving the whole verified payload as base64url-encoded JSON.')),
  },
  {
    description:
      "Identity sent upstream. The client's own copies of every configured header (of every provider) are always removed.",
  },
);

export const DecryptSchema = Closed(
  {
    keyFile: Type.String({
      minLength: 1,
      description:
        'Private key that unwraps encrypted tokens: a PEM private key (PKCS#8) or a private JWK (JSON) file, relative to the config file. Read once at load.',
    }),
    algorithms: Type.Array(Type.Union(JWE_KEY_ALGORITHMS.map((alg) => Type.Literal(alg))), {
      minItems: 1,
      uniqueItems: true,
      default: [...DECRYPT_DEFAULTS.algorithms],
      description:
        'Allowed JWE key management `alg` values (`ECDH-ES*` need an EC or X25519 key, `RSA-OAEP*` an RSA key of at least 2048 bits).',
    }),
    encryptions: Type.Array(Type.Union(JWE_CONTENT_ENCRYPTIONS.map((enc) => Type.Literal(enc))), {
      minItems: 1,
      uniqueItems: true,
      default: [...DECRYPT_DEFAULTS.encryptions],
      description: 'Allowed JWE content encryption `enc` values.',
    }),
    required: Type.Boolean({
      default: DECRYPT_DEFAULTS.required,
      description:
        'Refuse plain (unencrypted) signed tokens with `jwt.encryption_required`; by default both encrypted and plain tokens are accepted.',
    }),
  },
  {
    description:
      'Encrypted tokens (compact JWE, `cty: JWT`) wrapping a signed JWT: unwrapped with this key, then the inner token is verified like any other. Compression (`zip`) and nesting beyond one level are refused; decryption failures are `jwt.decrypt_failed`.',
  },
);

export const ProviderSchema = Closed(
  {
    issuer: Type.String({ minLength: 1, description: 'Expected `iss`, exactly. With `discovery`, also where discovery starts.' }),
    audiences: Type.Array(Type.String({ minLength: 1 }), {
      minItems: 1,
      description: 'Accepted `aud` values; the token must name at least one.',
    }),
    algorithms: Type.Array(AlgorithmSchema, {
      minItems: 1,
      uniqueItems: true,
      default: ['RS256'],
      description: 'Allowed `alg` values. `none` is never allowed; `HS*` only (and only) with `secret`.',
    }),
    jwksUrl: Type.Optional(
      Type.String({ pattern: '^https?://', description: 'Key source: remote JWKS URL (never a URL taken from a token).' }),
    ),
    jwks: Type.Optional(JwksOptionsSchema),
    jwksFile: Type.Optional(
      Type.String({
        minLength: 1,
        description: 'Key source: local JWKS file, reloaded when it changes (a bad file keeps the old keys).',
      }),
    ),
    publicKeys: Type.Optional(
      Type.Array(PublicKeySchema, { minItems: 1, description: 'Key source: PEM public keys or certificates.' }),
    ),
    discovery: Type.Optional(
      Type.Literal(true, {
        description: 'Key source: OIDC discovery (`{issuer}/.well-known/openid-configuration` → `jwks_uri`).',
      }),
    ),
    secret: Type.Optional(
      Type.String({
        minLength: 1,
        description: 'Key source: shared secret for `HS*` algorithms, at least 32 bytes. Prefer `${ENV}` over inline text.',
      }),
    ),
    token: TokenSourceSchema,
    clockSkewSec: Type.Integer({
      minimum: 0,
      maximum: 3600,
      default: 60,
      description: 'Tolerance for `exp`, `nbf` and `iat` (seconds).',
    }),
    maxAgeSec: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 31_536_000,
        description: 'Refuse tokens issued (`iat`) longer ago than this (seconds); requires `iat`.',
      }),
    ),
    requireExp: Type.Boolean({ default: true, description: 'Refuse tokens without `exp`.' }),
    requiredClaims: Type.Optional(
      Type.Record(
        Type.String({ pattern: CLAIM_PATH_PATTERN }),
        Type.Union([ClaimValue, Type.Array(ClaimValue, { minItems: 1 })]),
        {
          additionalProperties: false,
          description:
            'Claim path → required value, or list of allowed values. An array claim passes when one of its elements is allowed.',
        },
      ),
    ),
    typ: Type.Optional(
      Type.String({
        minLength: 1,
        description: 'Required `typ` header, e.g. `at+jwt` (compared as a media type, case-insensitive).',
      }),
    ),
    subject: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          'Pattern the `sub` must match: `/`-separated segments (after a `scheme://`), `*` one segment (or part of one), `**` any number of segments. E.g. `spiffe://prod.example/ns/*/sa/**`.',
      }),
    ),
    rolesClaim: Type.Optional(ClaimPath('Claim path holding roles (string or array), e.g. `roles`, `realm_access.roles`.')),
    tenantClaim: Type.Optional(ClaimPath('Claim path holding the tenant id.')),
    forward: Type.Optional(ForwardSchema),
    decrypt: Type.Optional(DecryptSchema),
  },
  { description: 'A JWT issuer Bulwark trusts: where its keys come from and what its tokens must say.' },
);

export const AuthnCacheSchema = Closed(
  {
    maxEntries: Type.Integer({
      minimum: 1,
      maximum: 10_000_000,
      default: AUTHN_CACHE_DEFAULTS.maxEntries,
      description: 'Verified tokens remembered (least recently used dropped first).',
    }),
    ttlMs: DurationMs('Longest a verified token is remembered (never past its `exp`)', AUTHN_CACHE_DEFAULTS.ttlMs),
  },
  { description: 'Verified-token cache: a repeated token skips signature verification.' },
);

export const AuthnSchema = Closed(
  {
    // A Record is not closed by default: a key failing the name pattern would be accepted unvalidated.
    providers: Type.Record(ProviderName, ProviderSchema, { additionalProperties: false, description: 'Named JWT providers.' }),
    cache: Type.Optional(AuthnCacheSchema),
  },
  { description: 'JWT authentication.' },
);

export const RouteAuthSchema = Type.Union(
  [
    Closed({ provider: ProviderName }),
    Closed({
      anyOf: Type.Array(ProviderName, {
        minItems: 1,
        uniqueItems: true,
        description: 'A token from any of these providers (a token picks its provider by `iss`).',
      }),
    }),
    Closed({
      allOf: Type.Array(ProviderName, {
        minItems: 1,
        uniqueItems: true,
        description: 'A valid token from every one of these providers (each from its own token source).',
      }),
    }),
    Closed({
      optional: Type.Union([ProviderName, Type.Array(ProviderName, { minItems: 1, uniqueItems: true })], {
        description: 'No token: anonymous. A valid token: its identity. An invalid token: still 401.',
      }),
    }),
    Closed({ public: Type.Literal(true, { description: 'No authentication, said explicitly.' }) }),
    Closed({
      tenant: Closed(
        {
          from: Type.Union(
            [
              Closed({
                param: Type.String({
                  pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
                  description: "A parameter of the route's path glob (`/tenants/{tenant}/**`).",
                }),
              }),
              Closed({
                host: Type.String({
                  pattern: '^[a-z0-9.-]*\\{tenant\\}[a-z0-9.-]*$',
                  maxLength: 253,
                  description: 'A host template with one `{tenant}` label: `{tenant}.api.example.com` (lower-case, no port).',
                }),
              }),
              Closed({ header: HeaderName('A request header naming the tenant (`x-tenant-id`).') }),
            ],
            { description: 'Where the request says which tenant it acts for.' },
          ),
          providers: Type.Record(TenantName, ProviderName, {
            minProperties: 1,
            additionalProperties: false,
            description: "Tenant → the provider whose tokens alone may act for it (the tenant's own identity provider).",
          }),
        },
        {
          description:
            "Each tenant its own provider: the request's tenant (path parameter, host or header) picks the only provider that may authenticate it. An unknown tenant is a 404; a token whose tenant claim names another tenant is a 401 (`jwt.tenant_mismatch`). The identity's tenant is the request's; a provider several tenants share must name the tenant in its tokens.",
        },
      ),
    }),
  ],
  {
    description: 'Who may call the route: exactly one of `provider`, `anyOf`, `allOf`, `optional`, `tenant`, `public`.',
  },
);

export type AlgorithmName = Static<typeof AlgorithmSchema>;
export type JwksOptionsConfig = Static<typeof JwksOptionsSchema>;
export type PublicKeyConfig = Static<typeof PublicKeySchema>;
export type TokenSourceConfig = Static<typeof TokenSourceSchema>;
export type ForwardConfig = Static<typeof ForwardSchema>;
export type DecryptConfig = Static<typeof DecryptSchema>;
export type JweKeyAlgorithm = (typeof JWE_KEY_ALGORITHMS)[number];
export type JweContentEncryption = (typeof JWE_CONTENT_ENCRYPTIONS)[number];
export type ProviderConfig = Static<typeof ProviderSchema>;
export type AuthnCacheConfig = Static<typeof AuthnCacheSchema>;
export type AuthnConfig = Static<typeof AuthnSchema>;
export type RouteAuthConfig = Static<typeof RouteAuthSchema>;
