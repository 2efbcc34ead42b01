/** JWT authentication: the public names, listed (no `export *`). */
export { compileAuthn, CompiledProvider, MAX_KEY_CANDIDATES, AUTHN_VALID, tokenShapeProblem } from './provider.js';
export type { AuthnOptions, AuthnStats, CompiledAuthn, ProviderVerifyResult } from './provider.js';
export { createAuthnStage, forwardedHeaderNames, AUTHN_STAGE_ID, AUTHN_ANONYMOUS, TenantAuthnStage } from './stage.js';
export { authnChecks, checkRouteAuth, resolveAuthnPaths, RESERVED_FORWARD_HEADERS } from './checks.js';
export type { AuthnReport } from './checks.js';
export { countHeader, compileTokenSource, MAX_TOKEN_LENGTH, withoutQueryParams } from './token.js';
export type { CompiledTokenSource, TokenExtraction, TokenProblem } from './token.js';
export { authnDenial, insufficientScope, mapVerifyError, mapDecryptError, KeyLookupError, DecryptRefusal } from './failures.js';
export {
  encryptToken,
  compileDecrypter,
  loadDecryptionKey,
  decryptKeyProblem,
  jweShapeProblem,
  looksLikeJwe,
  isNestedJwt,
  TokenDecrypter,
} from './jwe.js';
export type { DecryptionKey, DecryptionKeyLoad, EncryptTokenOptions, UnwrapResult } from './jwe.js';
export type { AuthnFailureCode, MappedFailure } from './failures.js';
export { VerifiedTokenCache, tokenDigest } from './cache.js';
export type { RevocationCheck, RevocationVerdict } from './revocation-hook.js';
export type { CachedToken, CacheStats } from './cache.js';
export { JwkKeySet, JwksInvalidError, MAX_JWKS_KEYS } from './key-source.js';
export type {
  AuthnEvent,
  KeyCandidate,
  KeyResolution,
  KeySource,
  KeySourceKind,
  SourceHooks,
  VerificationKey,
} from './key-source.js';
export { RemoteJwksKeySource } from './jwks-remote.js';
export type { RemoteJwksOptions } from './jwks-remote.js';
export { FileJwksKeySource } from './jwks-file.js';
export { PemKeySource, readPublicKeyInputs } from './pem.js';
export { SecretKeySource, MIN_SECRET_BYTES } from './secret.js';
export { DiscoveryKeySource, discoveryUrl, jwksUriFromDiscovery } from './discovery.js';
export { fetchJson, FetchError } from './http-fetch.js';
export {
  AuthnSchema,
  RouteAuthSchema,
  ProviderSchema,
  JwksOptionsSchema,
  TokenSourceSchema,
  ForwardSchema,
  PublicKeySchema,
  AuthnCacheSchema,
  AlgorithmSchema,
  DecryptSchema,
  DECRYPT_DEFAULTS,
  JWE_KEY_ALGORITHMS,
  JWE_CONTENT_ENCRYPTIONS,
  JWKS_DEFAULTS,
  AUTHN_CACHE_DEFAULTS,
  ASYMMETRIC_ALGORITHMS,
  HMAC_ALGORITHMS,
} from './schema.js';
export type {
  AuthnConfig,
  RouteAuthConfig,
  ProviderConfig,
  JwksOptionsConfig,
  TokenSourceConfig,
  ForwardConfig,
  PublicKeyConfig,
  AuthnCacheConfig,
  AlgorithmName,
  DecryptConfig,
  JweKeyAlgorithm,
  JweContentEncryption,
} from './schema.js';
