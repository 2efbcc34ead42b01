/** Token revocation: the public names, listed (no `export *`). */
import { RevocationList, type RevocationStore } from './list.js';
import type { RedisRevocationStoreOptions } from './redis-store.js';
import { REVOCATION_DEFAULTS, type RevocationConfig } from './schema.js';
import { createRevocationStore } from './store.js';
import { isClusterWorker, workerChannel, WorkerRelayStore, type RevocationChannel } from './cluster.js';

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
export { createRevocationStore } from './store.js';
export type { RevocationStoreEvent } from './store.js';
export { RevocationPrimaryHost, WorkerRelayStore, isRevocationRelayMessage, isClusterWorker, workerChannel } from './cluster.js';
export type {
  RelayCluster,
  RelayEvent,
  RelayPeer,
  RevocationChannel,
  RevocationPrimaryHostOptions,
  RevocationRelayMessage,
} from './cluster.js';
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
 * once per process, `await list.start()`, and keep it across config reloads. In a
 * `bulwark serve` cluster worker its store also takes what the primary relays (see
 * cluster.ts); `channel: null` turns that off, a channel replaces the process's.
 */
export function createRevocationList(
  config: RevocationConfig | undefined,
  options: { now?: () => number; onEvent?: RedisRevocationStoreOptions['onEvent']; channel?: RevocationChannel | null } = {},
): RevocationList {
  let store: RevocationStore = createRevocationStore(config, { onEvent: options.onEvent });
  const channel = options.channel !== undefined ? options.channel : isClusterWorker() ? workerChannel() : null;
  if (channel !== null) store = new WorkerRelayStore(store, channel);
  return new RevocationList({
    store,
    onStoreFailure: config?.onStoreFailure ?? REVOCATION_DEFAULTS.onStoreFailure,
    maxTokenLifetimeSec: config?.maxTokenLifetimeSec ?? REVOCATION_DEFAULTS.maxTokenLifetimeSec,
    ...(options.now === undefined ? {} : { now: options.now }),
  });
}
