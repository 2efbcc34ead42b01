import { BulwarkError } from '../core/errors.js';
import type { GlobalLimitsConfig } from './schema.js';

/**
 * A counter of things in flight with a hard cap (requests / HTTP/2 streams of
 * the whole instance). `tryAcquire` and `release` must pair up; the caller
 * releases from its completion hook, exactly once.
 */
export class InFlightGate {
  readonly limit: number;
  inFlight: number;
  refused: number;

  constructor(limit: number) {
    this.limit = limit;
    this.inFlight = 0;
    this.refused = 0;
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
 * spread being refused slightly early).
 */
export interface GlobalLimits {
  /** For `server.maxConnections` of each listener (Node refuses beyond it); null: no cap. */
  readonly maxConnections: number | null;
  /** Requests/streams in flight; null: no cap. */
  readonly streams: InFlightGate | null;
}

export function compileGlobalLimits(config: GlobalLimitsConfig | undefined, workers: number): GlobalLimits {
  const share = (n: number | undefined) => (n === undefined ? null : Math.max(1, Math.ceil(n / Math.max(1, workers))));
  const streams = share(config?.maxConcurrentStreams);
  return Object.freeze({
    maxConnections: share(config?.maxConnections),
    streams: streams === null ? null : new InFlightGate(streams),
  });
}

/** The denial for a request over the instance's global cap. */
export function overloadedError(limit: number): BulwarkError {
  return new BulwarkError('ratelimit.overloaded', 'the gateway is at its limit of requests in flight', {
    headers: { 'retry-after': '1' },
    context: { limit },
  });
}
