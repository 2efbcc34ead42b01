/** The token issuer: the public names, listed (no `export *`). */
export { Issuer, createIssuerStore, refreshTokenId } from './issuer.js';
export type {
  ClientAttributes,
  ClientCredentialsInput,
  IssuerEvent,
  IssuerOptions,
  RefreshInput,
  SessionInput,
  TokenSet,
} from './issuer.js';
export { IssuerHttp, issuerHandler, issuerEventOrigin, writeIssuerResponse, endpointTable, MAX_FORM_BYTES } from './http.js';
export type { IssuerEndpoint, IssuerEventOrigin, IssuerHttpRequest, IssuerHttpResponse } from './http.js';
export { KeyRing, KeyRingError } from './keys.js';
export type { KeyRingOptions } from './keys.js';
export { hashSecret, verifySecret, generateSecret, isSecretHash, SecretVerifier } from './secret.js';
export { SqliteIssuerStore } from './store-sqlite.js';
export { PostgresIssuerStore } from './store-postgres.js';
export { RedisIssuerStore } from './store-redis.js';
export { IssuerStoreError } from './types.js';
export type {
  ClientRecord,
  IssuerStore,
  KeyState,
  RefreshRecord,
  RotateRequest,
  RotateResult,
  SigningAlgorithm,
  SigningKey,
} from './types.js';
export { IssuerSchema, ISSUER_DEFAULTS, issuerChecks, longestTokenTtlSec, resolveIssuerPaths } from './schema.js';
export type { IssuerConfig, IssuerClientConfig, IssuerStoreConfig } from './schema.js';
