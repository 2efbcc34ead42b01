import { describe, expect, it } from 'vitest';
import { compileGlobalLimits, InFlightGate, overloadedError } from '../../src/limits/global.js';
import { grpcStatusFor, GrpcStatus } from '../../src/grpc/status.js';

describe('global caps', () => {
  it('are split between workers, rounding up, never below 1', () => {
    expect(compileGlobalLimits({ maxConnections: 10, maxConcurrentStreams: 5 }, 4)).toEqual({
      maxConnections: 3,
      maxConcurrentStreams: 2,
    });
    expect(compileGlobalLimits({ maxConnections: 1, maxConcurrentStreams: 1 }, 8)).toEqual({
      maxConnections: 1,
      maxConcurrentStreams: 1,
    });
    expect(compileGlobalLimits(undefined, 2)).toEqual({ maxConnections: null, maxConcurrentStreams: null });
  });

  it('the gate admits up to its limit, counts refusals, and keeps its count across a new limit', () => {
    const gate = new InFlightGate(2);
    expect([gate.tryAcquire(), gate.tryAcquire(), gate.tryAcquire()]).toEqual([true, true, false]);
    expect(gate.refused).toBe(1);
    // A lower cap refuses until enough of what is in flight finishes; nothing is forgotten.
    gate.setLimit(1);
    gate.release();
    expect(gate.tryAcquire()).toBe(false);
    gate.release();
    expect(gate.tryAcquire()).toBe(true);
    // No cap: everything passes, and the count is still kept.
    gate.setLimit(null);
    for (let i = 0; i < 100; i++) expect(gate.tryAcquire()).toBe(true);
    expect(gate.inFlight).toBe(101);
    for (let i = 0; i < 200; i++) gate.release();
    expect(gate.inFlight).toBe(0);
  });

  it('the denial: 503 ratelimit.overloaded with Retry-After, UNAVAILABLE for gRPC', () => {
    const error = overloadedError(3);
    expect(error).toMatchObject({ code: 'ratelimit.overloaded', status: 503 });
    expect(Number(error.headers?.['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(grpcStatusFor(error)).toBe(GrpcStatus.UNAVAILABLE);
  });
});
