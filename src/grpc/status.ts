/**
 * gRPC statuses: how a Bulwark denial or failure reads to a gRPC client, and the
 * trailers-only response that carries it (gRPC over HTTP/2 spec, "Responses").
 */
import { Http2ServerResponse, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { ERROR_CODES, type BulwarkError, type ErrorCode } from '../core/errors.js';

/** The canonical gRPC status codes (google.rpc.Code). */
export const GrpcStatus = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const);
export type GrpcStatusCode = (typeof GrpcStatus)[keyof typeof GrpcStatus];

export const GRPC_CONTENT_TYPE = 'application/grpc';

/**
 * Codes whose gRPC status is not what their HTTP status would suggest. Everything
 * else maps by HTTP status below, so a stage adding a new 401/403/429 code needs no
 * change here.
 */
const BY_CODE: Partial<Record<ErrorCode, GrpcStatusCode>> = {
  'route.not_found': GrpcStatus.UNIMPLEMENTED, // an unknown method, as a gRPC server would say
  'request.aborted': GrpcStatus.CANCELLED,
  'request.timeout': GrpcStatus.DEADLINE_EXCEEDED,
  'upstream.timeout': GrpcStatus.DEADLINE_EXCEEDED,
  // A response the gateway cannot relay is not a reason for the client to retry.
  'upstream.bad_response': GrpcStatus.INTERNAL,
  // The gRPC spec: malformed framing and a compressed flag without an encoding are INTERNAL;
  // an encoding the receiver does not support is UNIMPLEMENTED; an oversized message RESOURCE_EXHAUSTED.
  'grpc.malformed_frame': GrpcStatus.INTERNAL,
  'grpc.unsupported_encoding': GrpcStatus.UNIMPLEMENTED,
  'grpc.message_too_large': GrpcStatus.RESOURCE_EXHAUSTED,
  'grpc.bad_timeout': GrpcStatus.INVALID_ARGUMENT,
  'request.method_not_allowed': GrpcStatus.UNIMPLEMENTED,
};

/** The gRPC status for an HTTP status, for codes without an explicit entry. */
export function grpcStatusForHttp(status: number): GrpcStatusCode {
  switch (status) {
    case 400:
    case 414:
      return GrpcStatus.INVALID_ARGUMENT;
    case 401:
      return GrpcStatus.UNAUTHENTICATED;
    case 403:
      return GrpcStatus.PERMISSION_DENIED;
    case 404:
    case 405:
    case 501:
      return GrpcStatus.UNIMPLEMENTED;
    case 408:
    case 504:
      return GrpcStatus.DEADLINE_EXCEEDED;
    case 413:
    case 431:
    case 429:
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case 499:
      return GrpcStatus.CANCELLED;
    case 502:
    case 503:
      return GrpcStatus.UNAVAILABLE;
    default:
      if (status >= 400 && status < 500) return GrpcStatus.INVALID_ARGUMENT;
      return GrpcStatus.INTERNAL;
  }
}

/**
 * What a gRPC client makes of an upstream answering with another HTTP status and no
 * grpc-status (spec: "HTTP to gRPC Status Code Mapping"); the gateway says it for them.
 */
export function grpcStatusFromUpstreamHttp(status: number): GrpcStatusCode {
  switch (status) {
    case 400:
      return GrpcStatus.INTERNAL;
    case 401:
      return GrpcStatus.UNAUTHENTICATED;
    case 403:
      return GrpcStatus.PERMISSION_DENIED;
    case 404:
      return GrpcStatus.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return GrpcStatus.UNAVAILABLE;
    default:
      return GrpcStatus.UNKNOWN;
  }
}

/**
 * The gRPC status for an RST_STREAM error code received instead of a status
 * (spec: "Errors"): CANCEL is CANCELLED, REFUSED_STREAM is retryable, the rest INTERNAL.
 */
export function grpcStatusForRstCode(rstCode: number): GrpcStatusCode {
  switch (rstCode) {
    case 0x7: // REFUSED_STREAM: the server did not process it; safe to retry
      return GrpcStatus.UNAVAILABLE;
    case 0x8: // CANCEL
      return GrpcStatus.CANCELLED;
    case 0xb: // ENHANCE_YOUR_CALM
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case 0xc: // INADEQUATE_SECURITY
      return GrpcStatus.PERMISSION_DENIED;
    default:
      return GrpcStatus.INTERNAL;
  }
}

/**
 * The gRPC status for a Bulwark error. An error may pin one in `context.grpcStatus`
 * (the proxy does for upstream resets, whose RST_STREAM code decides); then the code
 * table; then the HTTP status.
 */
export function grpcStatusFor(error: BulwarkError): GrpcStatusCode {
  const pinned = error.context?.['grpcStatus'];
  if (typeof pinned === 'number' && Number.isInteger(pinned) && pinned >= 1 && pinned <= 16) return pinned as GrpcStatusCode;
  return BY_CODE[error.code] ?? grpcStatusForHttp(error.status);
}

/**
 * What the client is told: the client-safe `detail` when the error has one, else the
 * code's generic title; never `cause` or `context`, so nothing internal leaks.
 */
export function grpcMessageFor(error: BulwarkError): string {
  return error.detail ?? ERROR_CODES[error.code].title;
}

const HEX = '0123456789ABCDEF';

/**
 * grpc-message is percent-encoded UTF-8: bytes outside printable ASCII (0x20–0x7E),
 * and `%` itself, become `%XX` (spec: "Responses", Status-Message).
 */
export function encodeGrpcMessage(message: string): string {
  let plain = true;
  for (let i = 0; i < message.length; i++) {
    const c = message.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x25) {
      plain = false;
      break;
    }
  }
  if (plain) return message;
  const bytes = Buffer.from(message, 'utf8');
  let out = '';
  for (const b of bytes) {
    out += b < 0x20 || b > 0x7e || b === 0x25 ? '%' + HEX[b >> 4]! + HEX[b & 15]! : String.fromCharCode(b);
  }
  return out;
}

/** Inverse of encodeGrpcMessage; malformed escapes are kept literally, as the spec asks of receivers. */
export function decodeGrpcMessage(value: string): string {
  if (!value.includes('%')) return value;
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    const hi = c === 0x25 && i + 2 < value.length ? hexDigit(value.charCodeAt(i + 1)) : -1;
    const lo = hi < 0 ? -1 : hexDigit(value.charCodeAt(i + 2));
    if (lo >= 0) {
      bytes.push(hi * 16 + lo);
      i += 2;
    } else {
      bytes.push(c & 0xff);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x66 ? l - 0x61 + 10 : -1;
}

/** Status trailers (for a response whose headers were already sent). */
export function statusTrailers(code: number, message: string): OutgoingHttpHeaders {
  return code === GrpcStatus.OK
    ? { 'grpc-status': '0' }
    : { 'grpc-status': String(code), 'grpc-message': encodeGrpcMessage(message) };
}

/**
 * Sends a trailers-only response: one HEADERS frame with END_STREAM carrying
 * `:status 200`, the gRPC content type and the status. Returns false when that is no
 * longer possible (stream gone, or headers already sent; the caller then ends the
 * stream with status trailers or a reset instead).
 *
 * `metadata` adds response metadata (e.g. `x-request-id`); names must be lower-case.
 */
export function sendGrpcError(
  target: ServerHttp2Stream | Http2ServerResponse,
  code: number,
  message: string,
  metadata?: Readonly<Record<string, string>>,
): boolean {
  const stream = target instanceof Http2ServerResponse ? target.stream : target;
  if (stream.destroyed || stream.closed || stream.headersSent) return false;
  const headers: OutgoingHttpHeaders = {
    ...metadata,
    ':status': 200,
    'content-type': GRPC_CONTENT_TYPE,
    ...statusTrailers(code, message),
  };
  try {
    stream.respond(headers, { endStream: true });
  } catch {
    // Only reachable with invalid caller metadata: still tell the client something.
    stream.respond({ ':status': 200, 'content-type': GRPC_CONTENT_TYPE, ...statusTrailers(code, message) }, { endStream: true });
  }
  return true;
}

/** A Bulwark denial as a trailers-only gRPC response, with the request id (and when to retry) as metadata. */
export function sendGrpcDenial(
  target: ServerHttp2Stream | Http2ServerResponse,
  error: BulwarkError,
  requestId: string | undefined,
): boolean {
  return sendGrpcError(target, grpcStatusFor(error), grpcMessageFor(error), grpcDenialMetadata(error, requestId));
}

// The quota state an HTTP client gets with a rate-limit refusal, which a gRPC client has no headers for.
const RELAYED_DENIAL_HEADERS = ['ratelimit', 'ratelimit-policy', 'retry-after'] as const;

/**
 * A denial's response metadata: the request id, and for a refusal that says when to come back,
 * `retry-after` (seconds, as over HTTP) and `grpc-retry-pushback-ms` (gRFC A6: a grpc client
 * with a retry policy waits that long instead of its own backoff).
 */
export function grpcDenialMetadata(error: BulwarkError, requestId: string | undefined): Record<string, string> | undefined {
  const headers = error.headers;
  if (headers === undefined || headers['retry-after'] === undefined)
    return requestId === undefined ? undefined : { 'x-request-id': requestId };
  const metadata: Record<string, string> = requestId === undefined ? {} : { 'x-request-id': requestId };
  for (const name of RELAYED_DENIAL_HEADERS) {
    const value = headers[name];
    if (value !== undefined) metadata[name] = value;
  }
  const seconds = Number(headers['retry-after']);
  if (Number.isSafeInteger(seconds) && seconds >= 0) metadata['grpc-retry-pushback-ms'] = String(seconds * 1000);
  return metadata;
}
