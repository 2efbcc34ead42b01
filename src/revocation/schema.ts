/**
 * The `revocation` section. TypeBox objects are the source of truth (types via
 * `Static<>`); `revocationChecks` adds what a schema cannot say. Every object is
 * closed: a misspelt field must be an error, never a silently ignored setting.
 *
 * ```yaml
 * revocation:
 *   store: memory                      # one instance; or, shared by several:
 *   # store: { redis: { url: redis://127.0.0.1:6379, keyPrefix: 'bulwark:revocation:', channel: 'bulwark:revocations' } }
 *   onStoreFailure: keep_last          # default: enforce the last synced set, resync on reconnect; or `closed` (503)
 *   maxTokenLifetimeSec: 86400         # default expiry of an entry given no `expiresAt`
 *   adminToken: ${BULWARK_REVOCATION_TOKEN}   # bearer token of the admin API; unset: loopback only
 * ```
 */
import { Type, type Static, type TObject, type TProperties, type ObjectOptions } from '@sinclair/typebox';

function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

export const REVOCATION_DEFAULTS = Object.freeze({
  keyPrefix: 'bulwark:revocation:',
  channel: 'bulwark:revocations',
  onStoreFailure: 'keep_last' as const,
  maxTokenLifetimeSec: 86_400,
});

/** Shortest admin token accepted without a warning (bytes). */
export const MIN_ADMIN_TOKEN_LENGTH = 16;

export const RevocationRedisSchema = Closed(
  {
    url: Type.String({ pattern: '^rediss?://', description: 'Redis URL (`redis://` or `rediss://`).' }),
    // No `default` here: validators do not fill defaults inside a union branch; createRevocationList does.
    keyPrefix: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 128,
        description: `Prefix of the keys holding the revocation set (default \`${REVOCATION_DEFAULTS.keyPrefix}\`).`,
      }),
    ),
    channel: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 128,
        description: `Pub/sub channel on which changes reach every instance (default \`${REVOCATION_DEFAULTS.channel}\`).`,
      }),
    ),
  },
  { description: 'Shared by several instances: entries in Redis, changes pushed by pub/sub into each local set.' },
);

export const RevocationStoreSchema = Type.Union(
  [Type.Literal('memory', { description: 'This instance only (lost on restart).' }), Closed({ redis: RevocationRedisSchema })],
  { default: 'memory', description: 'Where revocations live.' },
);

export const RevocationSchema = Closed(
  {
    store: RevocationStoreSchema,
    onStoreFailure: Type.Union([Type.Literal('keep_last'), Type.Literal('closed')], {
      default: REVOCATION_DEFAULTS.onStoreFailure,
      description:
        'Redis unreachable: `keep_last` enforces the last synced set (and resyncs on reconnect); `closed` refuses authenticated requests with 503 `revocation.store_unavailable`.',
    }),
    maxTokenLifetimeSec: Type.Integer({
      minimum: 1,
      maximum: 31_536_000,
      default: REVOCATION_DEFAULTS.maxTokenLifetimeSec,
      description: 'How long an entry given no `expiresAt` lives: the longest lifetime of a token it may cover (seconds).',
    }),
    adminToken: Type.Optional(
      Type.String({
        minLength: 1,
        description: 'Bearer token of `POST/GET/DELETE /revocations` on the admin listener. Unset: loopback peers only.',
      }),
    ),
  },
  { description: 'Token revocation: deny by `jti`, subject, session id, or "issued to a subject before T".' },
);

export type RevocationRedisConfig = Static<typeof RevocationRedisSchema>;
export type RevocationStoreConfig = Static<typeof RevocationStoreSchema>;
export type RevocationConfig = Static<typeof RevocationSchema>;

export type RevocationReport = (path: (string | number)[], code: string, message: string, severity?: 'error' | 'warning') => void;

/** Config check for `revocation` (plug into the loader's checks). */
export function revocationChecks(config: { revocation?: RevocationConfig }, report: RevocationReport): void {
  const revocation = config.revocation;
  if (revocation === undefined) return;
  const token = revocation.adminToken;
  if (token !== undefined && token.length < MIN_ADMIN_TOKEN_LENGTH) {
    report(
      ['revocation', 'adminToken'],
      'config.revocation_weak_token',
      `revocation.adminToken is shorter than ${MIN_ADMIN_TOKEN_LENGTH} characters`,
    );
  }
  if (revocation.store === 'memory' && revocation.onStoreFailure === 'closed') {
    report(
      ['revocation', 'onStoreFailure'],
      'config.revocation_no_effect',
      'onStoreFailure: closed has no effect with the memory store (it cannot fail)',
      'warning',
    );
  }
  if (typeof revocation.store === 'object') {
    const { redis } = revocation.store;
    try {
      const url = new URL(redis.url);
      if (url.hostname === '') report(['revocation', 'store', 'redis', 'url'], 'config.revocation_url', 'Redis URL needs a host');
    } catch {
      report(['revocation', 'store', 'redis', 'url'], 'config.revocation_url', `not a URL: ${redis.url}`);
    }
  }
}
