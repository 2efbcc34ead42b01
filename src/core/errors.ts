/**
 * Errors are data: every failure the pipeline can produce has a stable `code`
 * (shared by problems, audit, metrics, spans and explanations) and a default
 * HTTP status. Messages are for humans and may change; codes may not.
 */

export interface ErrorCodeSpec {
  readonly status: number;
  readonly title: string;
}

/**
 * What a client is told instead of the precise code, where the precise code
 * would help an attacker (which check a forged token failed, which rule
 * matched). Logs, audit, metrics and explanations keep the precise code.
 */
const PUBLIC_CODE: Readonly<Record<string, string>> = {
  'rbac.no_matching_rule': 'rbac.denied',
  'rbac.tenant_mismatch': 'rbac.denied',
};

export function publicCode(code: string): string {
  if (code.startsWith('jwt.') && code !== 'jwt.missing' && code !== 'jwt.insufficient_scope') return 'jwt.invalid';
  return PUBLIC_CODE[code] ?? code;
}

export const ERROR_CODES = {
  // request shape (normalize stage, adapters)
  'request.bad_target': { status: 400, title: 'Bad request target' },
  'request.path_encoded_slash': { status: 400, title: 'Encoded slash in path' },
  'request.path_backslash': { status: 400, title: 'Backslash in path' },
  'request.path_control_char': { status: 400, title: 'Control character in path' },
  'request.path_invalid_utf8': { status: 400, title: 'Invalid UTF-8 in path' },
  'request.path_invalid_escape': { status: 400, title: 'Invalid percent-encoding in path' },
  'request.path_semicolon': { status: 400, title: 'Semicolon in path' },
  'request.path_non_ascii': { status: 400, title: 'Raw non-ASCII byte in path' },
  'request.path_too_long': { status: 414, title: 'Request target too long' },
  'request.asterisk_form': { status: 400, title: 'Asterisk-form target not supported' },
  'request.authority_form': { status: 400, title: 'Authority-form target not supported' },
  'request.host_mismatch': { status: 400, title: 'Target host disagrees with Host' },
  'request.host_missing': { status: 400, title: 'Host header missing' },
  'request.host_invalid': { status: 400, title: 'Invalid Host header' },
  'request.host_duplicate': { status: 400, title: 'Duplicate Host header' },
  'request.malformed': { status: 400, title: 'Malformed request' },
  'request.headers_too_large': { status: 431, title: 'Request header fields too large' },
  'request.body_too_large': { status: 413, title: 'Request body too large' },
  'request.timeout': { status: 408, title: 'Request timeout' },
  'request.method_not_allowed': { status: 405, title: 'Method not allowed' },
  'request.aborted': { status: 400, title: 'Request aborted by the client' },
  'request.upgrade_unsupported': { status: 501, title: 'Protocol upgrade not supported' },
  'request.duplicate_authorization': { status: 400, title: 'Duplicate Authorization header' },
  'request.transfer_encoding': { status: 400, title: 'Unsupported transfer encoding' },
  'request.expectation_failed': { status: 417, title: 'Expectation not supported' },
  // 400, not 505: a request line that claims HTTP/2.0 or 0.9 over an HTTP/1 connection is malformed.
  'request.http_version': { status: 400, title: 'Unsupported HTTP version' },
  // routing
  'route.not_found': { status: 404, title: 'No route matches' },
  // upstream
  'upstream.unreachable': { status: 502, title: 'Upstream unreachable' },
  'upstream.reset': { status: 502, title: 'Upstream connection reset' },
  'upstream.bad_response': { status: 502, title: 'Bad upstream response' },
  'upstream.no_healthy_endpoint': { status: 503, title: 'No healthy upstream endpoint' },
  'upstream.timeout': { status: 504, title: 'Upstream timeout' },
  // gateway state
  'gateway.shutting_down': { status: 503, title: 'Gateway shutting down' },
  'gateway.internal': { status: 500, title: 'Internal error' },
  // authn — JWT authentication (src/authn). Titles stay generic: the precise reason is the
  // code on the decision (logs, audit, metrics), never something the client is told.
  'jwt.missing': { status: 401, title: 'Authentication required' },
  'jwt.malformed': { status: 401, title: 'Invalid token' },
  'jwt.expired': { status: 401, title: 'Invalid token' },
  'jwt.not_yet_valid': { status: 401, title: 'Invalid token' },
  'jwt.too_old': { status: 401, title: 'Invalid token' },
  'jwt.signature_invalid': { status: 401, title: 'Invalid token' },
  'jwt.unknown_kid': { status: 401, title: 'Invalid token' },
  'jwt.alg_not_allowed': { status: 401, title: 'Invalid token' },
  'jwt.issuer_mismatch': { status: 401, title: 'Invalid token' },
  'jwt.audience_mismatch': { status: 401, title: 'Invalid token' },
  'jwt.typ_mismatch': { status: 401, title: 'Invalid token' },
  'jwt.claim_missing': { status: 401, title: 'Invalid token' },
  'jwt.claim_mismatch': { status: 401, title: 'Invalid token' },
  'jwt.subject_mismatch': { status: 401, title: 'Invalid token' },
  // A `tenant` route: the token's tenant claim names another tenant than the request acts for.
  'jwt.tenant_mismatch': { status: 401, title: 'Invalid token' },
  'jwt.crit_unsupported': { status: 401, title: 'Invalid token' },
  'jwt.jwks_unavailable': { status: 401, title: 'Invalid token' },
  'jwt.insufficient_scope': { status: 403, title: 'Insufficient scope' },
  'jwt.revoked': { status: 401, title: 'Invalid token' },
  // An encrypted token (JWE) that could not be unwrapped: wrong key, tampered, disallowed alg/enc,
  // `zip`, missing `cty: JWT`. Problems of the inner signed token keep their own codes.
  'jwt.decrypt_failed': { status: 401, title: 'Invalid token' },
  // A plain signed token where the provider's `decrypt.required` demands an encrypted one.
  'jwt.encryption_required': { status: 401, title: 'Invalid token' },
  // end authn
  // revocation (src/revocation): `onStoreFailure: closed` and the shared store cannot vouch for the set.
  'revocation.store_unavailable': { status: 503, title: 'Revocation store unavailable' },
  // end revocation
  // authz — RBAC (src/authz). Which rule decided is on the decision record, never in the response.
  'rbac.denied': { status: 403, title: 'Forbidden by policy' },
  'rbac.no_matching_rule': { status: 403, title: 'Forbidden: no rule allows this request' },
  'rbac.tenant_mismatch': { status: 403, title: "Forbidden: another tenant's resource" },
  'rbac.insufficient_scope': { status: 403, title: 'Insufficient scope' },
  'rbac.unauthenticated': { status: 401, title: 'Authentication required' },
  // end authz
  // ratelimit — rate and concurrency limits (src/limits). Policy id and hashed key are on the
  // decision record; raw key material (IPs, subjects) never reaches the response.
  'ratelimit.exceeded': { status: 429, title: 'Rate limit exceeded' },
  'ratelimit.concurrency': { status: 429, title: 'Too many concurrent requests' },
  'ratelimit.store_unavailable': { status: 503, title: 'Rate limit store unavailable' },
  'ratelimit.overloaded': { status: 503, title: 'Gateway overloaded' },
  // end ratelimit
  // audit (src/audit): the audit log cannot take the event (queue or WAL full under
  // `whenFull: block`, or the log is closed); the request is refused rather than left unaudited.
  'audit.unavailable': { status: 503, title: 'Audit log unavailable' },
  // end audit
  // issuer — the built-in token service (src/issuer). Each maps to an OAuth 2.0 `error`
  // (RFC 6749 §5.2) sent beside the problem; the reason stays in logs and audit.
  'issuer.invalid_request': { status: 400, title: 'Invalid token request' },
  'issuer.invalid_client': { status: 401, title: 'Client authentication failed' },
  'issuer.invalid_grant': { status: 400, title: 'Invalid grant' },
  'issuer.unauthorized_client': { status: 400, title: 'Grant not allowed for this client' },
  'issuer.unsupported_grant_type': { status: 400, title: 'Unsupported grant type' },
  'issuer.invalid_scope': { status: 400, title: 'Scope not allowed' },
  'issuer.invalid_target': { status: 400, title: 'Audience not allowed' },
  'issuer.csrf': { status: 403, title: 'CSRF check failed' },
  'issuer.store_unavailable': { status: 503, title: 'Token store unavailable' },
  'issuer.no_signing_key': { status: 503, title: 'No signing key' },
  // end issuer
  // grpc — the gRPC proxy and interceptors (src/grpc). Rendered as grpc-status (see
  // src/grpc/status.ts), or as a problem for the one code a non-gRPC client can get (415).
  'grpc.not_grpc': { status: 415, title: 'This route only serves gRPC' },
  'grpc.bad_timeout': { status: 400, title: 'Invalid grpc-timeout' },
  'grpc.message_too_large': { status: 413, title: 'gRPC message larger than allowed' },
  'grpc.malformed_frame': { status: 400, title: 'Malformed gRPC message frame' },
  'grpc.unsupported_encoding': { status: 415, title: 'Unsupported grpc-encoding' },
  // end grpc
} as const satisfies Record<string, ErrorCodeSpec>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class BulwarkError extends Error {
  override readonly name = 'BulwarkError';
  readonly code: ErrorCode;
  readonly status: number;
  /** Safe to show a client. Internal detail goes to `cause`/logs, never here. */
  readonly detail: string | undefined;
  /** Extra structured context for logs and audit (never rendered to clients). */
  readonly context: Readonly<Record<string, unknown>> | undefined;
  /** Response headers the denial requires (e.g. `WWW-Authenticate`, `Retry-After`). */
  readonly headers: Readonly<Record<string, string>> | undefined;

  constructor(
    code: ErrorCode,
    detail?: string,
    options?: { cause?: unknown; context?: Record<string, unknown>; status?: number; headers?: Record<string, string> },
  ) {
    const spec = ERROR_CODES[code];
    super(detail ?? spec.title, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = options?.status ?? spec.status;
    this.detail = detail;
    this.context = options?.context;
    this.headers = options?.headers;
  }
}

export function isBulwarkError(value: unknown): value is BulwarkError {
  return value instanceof BulwarkError;
}
