/**
 * Every way authentication fails, as data: jose's error codes mapped to Bulwark's
 * stable reason codes in one switch, and the denials (RFC 6750 challenges) built
 * from them. The client gets a generic 401/403; the precise reason travels as the
 * `code` + `context` for logs, audit, metrics and `explain`.
 */
import { errors as joseErrors } from 'jose';
import { BulwarkError, type ErrorCode } from '../core/errors.js';

/** The reason codes this stage produces for an invalid or absent token. */
export type AuthnFailureCode = Extract<ErrorCode, `jwt.${string}`> | 'request.duplicate_authorization';

const REALM = 'Bearer realm="bulwark"';

// RFC 6750 §3.1: no `error` attribute when the request carried no credentials at all.
const MISSING_HEADERS: Readonly<Record<string, string>> = Object.freeze({ 'www-authenticate': REALM });
const INVALID_TOKEN_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'www-authenticate': `${REALM}, error="invalid_token"`,
});
const INVALID_REQUEST_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'www-authenticate': `${REALM}, error="invalid_request"`,
});

/**
 * A key source's answer when it cannot produce a key: thrown from inside jose's
 * key callback (jose passes it through untouched) and mapped below.
 */
export class KeyLookupError extends Error {
  override readonly name = 'KeyLookupError';
  readonly code: 'jwt.unknown_kid' | 'jwt.jwks_unavailable' | 'jwt.malformed';
  readonly reason: string;

  constructor(code: KeyLookupError['code'], reason: string) {
    super(reason);
    this.code = code;
    this.reason = reason;
  }
}

/**
 * The JWE envelope refused before any key unwrap (`zip`, `cty`, an alg the key cannot
 * serve): thrown from jose's decrypt key callback, mapped to `jwt.decrypt_failed`.
 */
export class DecryptRefusal extends Error {
  override readonly name = 'DecryptRefusal';
  readonly reason: string;

  constructor(reason: string) {
    super(reason);
    this.reason = reason;
  }
}

export interface MappedFailure {
  code: AuthnFailureCode;
  /** jose's code or our sub-reason: for logs, never for the client. */
  reason: string;
}

/**
 * jose error → reason code. `keyRequested` says whether jose got as far as asking
 * for a key: jose validates `crit` before the algorithm allow-list and before the
 * key, so an ERR_JOSE_NOT_SUPPORTED raised before that point can only be `crit`.
 */
export function mapVerifyError(err: unknown, keyRequested: boolean): MappedFailure {
  if (err instanceof KeyLookupError) return { code: err.code, reason: err.reason };
  if (!(err instanceof joseErrors.JOSEError)) {
    // TypeError from jose: the key cannot be used for this token (e.g. an RSA key
    // under 2048 bits, a JWK whose `alg`/`use` forbids it). Not the client's to know.
    return { code: 'jwt.signature_invalid', reason: err instanceof Error ? `key_unusable: ${err.message}` : 'key_unusable' };
  }
  const reason = err.code;
  switch (err.code) {
    case 'ERR_JWT_EXPIRED': {
      // jose reports a too-old `iat` (maxTokenAge) as expired too; keep them apart.
      const claim = (err as joseErrors.JWTExpired).claim;
      return { code: claim === 'iat' ? 'jwt.too_old' : 'jwt.expired', reason };
    }
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const { claim, reason: why } = err as joseErrors.JWTClaimValidationFailed;
      const detail = `${reason}:${claim}:${why}`;
      if (claim === 'iss') return { code: 'jwt.issuer_mismatch', reason: detail };
      if (claim === 'aud') return { code: 'jwt.audience_mismatch', reason: detail };
      if (claim === 'typ') return { code: 'jwt.typ_mismatch', reason: detail };
      // "invalid": a time claim that is not a number (string, object…).
      if (why === 'invalid') return { code: 'jwt.malformed', reason: detail };
      if (why === 'missing') return { code: 'jwt.claim_missing', reason: detail };
      if (claim === 'nbf' || claim === 'iat') return { code: 'jwt.not_yet_valid', reason: detail };
      return { code: 'jwt.claim_mismatch', reason: detail };
    }
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return { code: 'jwt.signature_invalid', reason };
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return { code: 'jwt.unknown_kid', reason };
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return { code: 'jwt.alg_not_allowed', reason };
    case 'ERR_JOSE_NOT_SUPPORTED':
      return { code: keyRequested ? 'jwt.alg_not_allowed' : 'jwt.crit_unsupported', reason };
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID':
      return { code: 'jwt.malformed', reason };
    case 'ERR_JWKS_TIMEOUT':
    case 'ERR_JWKS_INVALID':
    case 'ERR_JWK_INVALID':
      return { code: 'jwt.jwks_unavailable', reason };
    default:
      return { code: 'jwt.malformed', reason };
  }
}

/**
 * Anything that stops a JWE from being unwrapped is `jwt.decrypt_failed` (wrong key,
 * tampering, a disallowed alg/enc, `zip`, `crit`, a bad header…); the reason says which.
 * jose answers a wrong key and a tampered token alike (ERR_JWE_DECRYPTION_FAILED), by design.
 */
export function mapDecryptError(err: unknown): MappedFailure {
  if (err instanceof DecryptRefusal) return { code: 'jwt.decrypt_failed', reason: err.reason };
  if (err instanceof joseErrors.JOSEError) return { code: 'jwt.decrypt_failed', reason: err.code };
  // TypeError from jose: the key cannot serve this token's algorithm.
  return { code: 'jwt.decrypt_failed', reason: err instanceof Error ? `key_unusable: ${err.message}` : 'key_unusable' };
}

/** A denial for the client: status from ERROR_CODES, the RFC 6750 challenge, no detail. */
export function authnDenial(code: AuthnFailureCode, context: Record<string, unknown>): BulwarkError {
  const headers =
    code === 'jwt.missing'
      ? MISSING_HEADERS
      : code === 'request.duplicate_authorization'
        ? INVALID_REQUEST_HEADERS
        : INVALID_TOKEN_HEADERS;
  return new BulwarkError(code, undefined, { context, headers: headers as Record<string, string> });
}

// RFC 6750 scope-token characters (no space, `"` or backslash): anything else is left out of the challenge.
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]+$/;

/**
 * 403 for a valid token lacking a scope (RFC 6750 §3.1 `insufficient_scope`), for the
 * authorization stage to return. Scope names are public API surface, safe to list.
 */
export function insufficientScope(requiredScopes: readonly string[], context: Record<string, unknown> = {}): BulwarkError {
  const scope = requiredScopes.filter((s) => SCOPE_TOKEN.test(s)).join(' ');
  const challenge = `${REALM}, error="insufficient_scope"${scope === '' ? '' : `, scope="${scope}"`}`;
  return new BulwarkError('jwt.insufficient_scope', undefined, {
    context: { ...context, requiredScopes },
    headers: { 'www-authenticate': challenge },
  });
}
