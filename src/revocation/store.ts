/** The shared store of a validated `revocation` section (defaults filled here, not by the schema). */
import { MemoryRevocationStore, type RevocationStore } from './list.js';
import { RedisRevocationStore, type RedisRevocationStoreOptions } from './redis-store.js';
import { REVOCATION_DEFAULTS, type RevocationConfig } from './schema.js';

/** Sync state changes of a Redis store (for logs and metrics). */
export type RevocationStoreEvent = Parameters<NonNullable<RedisRevocationStoreOptions['onEvent']>>[0];

export function createRevocationStore(
  config: RevocationConfig | undefined,
  options: { onEvent?: ((event: RevocationStoreEvent) => void) | undefined } = {},
): RevocationStore {
  if (config === undefined || config.store === 'memory') return new MemoryRevocationStore();
  const redis = config.store.redis;
  return new RedisRevocationStore({
    url: redis.url,
    keyPrefix: redis.keyPrefix ?? REVOCATION_DEFAULTS.keyPrefix,
    channel: redis.channel ?? REVOCATION_DEFAULTS.channel,
    ...(options.onEvent === undefined ? {} : { onEvent: options.onEvent }),
  });
}
