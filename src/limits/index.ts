// Public API of src/limits: every exported name is listed here (no `export *`).
export { compileLimits, CompiledLimits, CompiledPolicy } from './compile.js';
export type { CompileLimitsOptions, LimitsStats, PolicyKind } from './compile.js';
export { createLimitStage, rateLimitHeaders, releaseLimits, STAGE_ID } from './stage.js';
export type { LimitDecision } from './stage.js';
export { clientAddressFrom, KeyHasher } from './keys.js';
export type { ClientAddress } from './keys.js';
export { compileGlobalLimits, InFlightGate, overloadedError } from './global.js';
export type { GlobalLimits } from './global.js';
export { IpcBackend, isLimitsMessage, LimitsPrimaryHost, processChannel } from './ipc.js';
export type { IpcChannel, LimitsMessage, LimitsReplyMessage, LimitsRequestMessage } from './ipc.js';
export { MemoryBackend, StoreGuard, StoreUnavailableError } from './backend.js';
export type { BreakerState, BucketBackend, LeaseGrant, LeaseRequest, SlotGrant } from './backend.js';
export { RedisBackend, LEASE_SCRIPT, ACQUIRE_SCRIPT } from './redis-backend.js';
export { LeasedRateLimiter } from './lease.js';
export type { LeaseOptions } from './lease.js';
export { MemoryConcurrencyStore, MemoryGcraStore } from './memory-store.js';
export { gcraAdmit, gcraAvailable, gcraCredit, gcraLease, gcraParams, gcraResetAfter, gcraWait } from './gcra.js';
export type { GcraParams } from './gcra.js';
export type { Profile, RateOutcome, SlotOutcome } from './profile.js';
export {
  BreakerSchema,
  GlobalLimitsSchema,
  LeaseSchema,
  LimitOverrideSchema,
  limitsChecks,
  MemoryStoreSchema,
  parseDescriptor,
  parseDuration,
  PolicySchema,
  policyReferenceChecks,
  RateLimitsSchema,
  RedisStoreSchema,
  StoreSchema,
  TiersSchema,
} from './schema.js';
export type {
  BreakerConfig,
  Descriptor,
  GlobalLimitsConfig,
  LeaseConfig,
  LimitOverrideConfig,
  MemoryStoreConfig,
  PolicyConfig,
  RateLimitsConfig,
  RedisStoreConfig,
  Report,
  StoreConfig,
  TiersConfig,
} from './schema.js';
