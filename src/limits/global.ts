import { BulwarkError } from '../core/errors.js';
import type { GlobalLimitsConfig } from './schema.js';

/**
 * A counter of things in flight with a cap (requests / HTTP/2 streams of the
 * whole process). `tryAcquire` and `release` must pair up; the caller releases
 * from its completion hook, exactly once. One gate lives as long as the
 * process (the gateway owns it): a reload changes `limit`, never the count, so
 * requests still running on an old snapshot keep counting against the new cap.
 *
 * The admission check is one compare of two numbers and allocates nothing;
 * without a cap `limit` is Infinity and the count is still kept (for gauges).
 */
export class InFlightGate {
  limit: number;
  inFlight: number;
  /** Refusals since the gate was created. */
  refused: number;

  constructor(limit: number | null = null) {
    this.limit = limit ?? Infinity;
    this.inFlight = 0;
    this.refused = 0;
  }

  /** A new cap; null: none. What is in flight stays counted (a lower cap refuses until enough finish). */
  setLimit(limit: number | null): void {
    this.limit = limit ?? Infinity;
  }

  tryAcquire(): boolean {
    if (this.inFlight >= this.limit) {
      this.refused++;
      return false;
    }
    this.inFlight++;
    return true;
  }

  release(): void {
    if (this.inFlight > 0) this.inFlight--;
  }
}

/**
 * Instance-wide caps, already divided among workers (each worker enforces
 * ceil(max / workers): no IPC on the connection path, at the cost of an uneven
 * spread being refused slightly early). Plain numbers: the state (the count of
 * requests in flight, the open connections) belongs to the gateway, not to a
 * config snapshot, so it survives reloads.
 */
export interface GlobalLimits {
  /** For `server.maxConnections` of each listener (Node drops connections beyond it); null: no cap. */
  readonly maxConnections: number | null;
  /** For the gateway's `InFlightGate`: requests/streams in flight in this worker; null: no cap. */
  readonly maxConcurrentStreams: number | null;
}

export function compileGlobalLimits(config: GlobalLimitsConfig | undefined, workers: number): GlobalLimits {
  const share = (n: number | undefined) => (n === undefined ? null : Math.max(1, Math.ceil(n / Math.max(1, workers))));
  return Object.freeze({
    maxConnections: share(config?.maxConnections),
    maxConcurrentStreams: share(config?.maxConcurrentStreams),
  });
}

/**
 * The denial for a request over the instance's global cap: 503 with `Retry-After: 1`
 * (the condition is the instance's, not the client's, and clears as requests finish).
 *
 * For gRPC it is pinned to UNAVAILABLE (14), not RESOURCE_EXHAUSTED: UNAVAILABLE is the
 * status the gRPC spec calls transient and safe to retry with backoff, the one retry
 * policies list (gRFC A6 `retryableStatusCodes`, Envoy `retry_on: unavailable`), and the
 * call never reached an upstream, so a retry — on this instance or another — is safe even
 * for a non-idempotent method. RESOURCE_EXHAUSTED says the caller's own quota ran out (it is
 * what 429 `ratelimit.*` denials map to); clients do not retry it by default.
 *
 * One instance can be shared by every refusal at this limit: nothing mutates it.
 */
export function overloadedError(limit: number): BulwarkError {
  return new BulwarkError('ratelimit.overloaded', 'the gateway is at its limit of requests in flight', {
    headers: { 'retry-after': '1' },
    context: { limit, grpcStatus: 14 },
  });
}
