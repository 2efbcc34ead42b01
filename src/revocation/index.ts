/** Token revocation: the public names, listed (no `export *`). */
import { RevocationList, MemoryRevocationStore, type RevocationStore } from './list.js';
import { RedisRevocationStore, type RedisRevocationStoreOptions } from './redis-store.js';
import { REVOCATION_DEFAULTS, type RevocationConfig } from './schema.js';

export {
  RevocationList,
  MemoryRevocationStore,
  RevocationInputError,
  RevocationStoreUnavailableError,
  entryMatches,
  mergeEntries,
  parseEntry,
  MAX_REVOCATION_VALUE,
} from './list.js';
export type {
  EvictableCache,
  RevocationEntry,
  RevocationInput,
  RevocationKind,
  RevocationListOptions,
  RevocationResult,
  RevocationSink,
  RevocationStore,
  RevocationSubject,
  StoreWrite,
} from './list.js';
export { RedisRevocationStore, ADD_SCRIPT, DELETE_SCRIPT } from './redis-store.js';
export type { RedisRevocationStoreOptions } from './redis-store.js';
export { handleRevocationAdmin, isRevocationAdminPath, entryJson, parseTime, REVOCATIONS_PATH } from './admin.js';
export type { RevocationAdminOptions } from './admin.js';
export { revokeCli, REVOKE_USAGE } from './cli.js';
export type { RevokeIo } from './cli.js';
export {
  RevocationSchema,
  RevocationStoreSchema,
  RevocationRedisSchema,
  revocationChecks,
  REVOCATION_DEFAULTS,
  MIN_ADMIN_TOKEN_LENGTH,
} from './schema.js';
export type { RevocationConfig, RevocationRedisConfig, RevocationStoreConfig, RevocationReport } from './schema.js';

/**
 * The list for a validated `revocation` section (defaults filled). Long-lived: build it
 * once per process, `await list.start()`, and keep it across config reloads.
 */
export function createRevocationList(
  config: RevocationConfig | undefined,
  options: { now?: () => number; onEvent?: RedisRevocationStoreOptions['onEvent'] } = {},
): RevocationList {
  const store: RevocationStore =
    config === undefined || config.store === 'memory'
      ? new MemoryRevocationStore()
      : new RedisRevocationStore({
          url: config.store.redis.url,
          keyPrefix: config.store.redis.keyPrefix ?? REVOCATION_DEFAULTS.keyPrefix,
          channel: config.store.redis.channel ?? REVOCATION_DEFAULTS.channel,
          ...(options.onEvent === undefined ? {} : { onEvent: options.onEvent }),
        });
  return new RevocationList({
    store,
    onStoreFailure: config?.onStoreFailure ?? REVOCATION_DEFAULTS.onStoreFailure,
    maxTokenLifetimeSec: config?.maxTokenLifetimeSec ?? REVOCATION_DEFAULTS.maxTokenLifetimeSec,
    ...(options.now === undefined ? {} : { now: options.now }),
  });
}
