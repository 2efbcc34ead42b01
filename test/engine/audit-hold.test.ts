/**
 * The hold limit of durable audit: a response waits for its event's commit at most
 * HOLD_LIMIT_MS; past it, `whenFull: block` cuts the response (the promise rejects) and
 * `whenFull: drop` lets it go unaudited (it resolves), as each policy serves otherwise.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { AuditLog } from '../../src/audit/index.js';
import type { RequestContext } from '../../src/core/context.js';
import { auditRequestDurable, HOLD_LIMIT_MS, type RequestEnd } from '../../src/engine/audit.js';
import type { Telemetry } from '../../src/telemetry/index.js';

afterEach(() => {
  vi.useRealTimers();
});

const END: RequestEnd = { status: 200, upstream: 'app', bytesOut: 2, code: null, grpcStatus: null };

function setup(blocksWhenFull: boolean, commit: Promise<unknown>) {
  const errors = vi.fn();
  const audit = { blocksWhenFull, fromContext: () => ({}), recordDurable: () => commit } as unknown as AuditLog;
  const telemetry = { requestLogger: () => ({ error: errors }) } as unknown as Telemetry;
  const ctx = { headers: {}, startedAt: process.hrtime.bigint(), clientAddress: '127.0.0.1' } as unknown as RequestContext;
  const state = { settled: 'pending' as 'pending' | 'resolved' | 'rejected' };
  const held = auditRequestDurable(audit, telemetry, ctx, END).then(
    () => (state.settled = 'resolved'),
    () => (state.settled = 'rejected'),
  );
  return { state, errors, held };
}

describe('durable audit hold limit', () => {
  it('block: a commit that never comes cuts the response at the limit, not before, and says so in the log', async () => {
    vi.useFakeTimers();
    const { state, errors, held } = setup(true, new Promise(() => {}));
    await vi.advanceTimersByTimeAsync(HOLD_LIMIT_MS - 1);
    expect(state.settled).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    await held;
    expect(state.settled).toBe('rejected');
    expect(errors).toHaveBeenCalledTimes(1);
  });

  it('drop: the same wait ends by letting the response go', async () => {
    vi.useFakeTimers();
    const { state, errors, held } = setup(false, new Promise(() => {}));
    await vi.advanceTimersByTimeAsync(HOLD_LIMIT_MS);
    await held;
    expect(state.settled).toBe('resolved');
    expect(errors).not.toHaveBeenCalled();
  });

  it('a commit in time settles it at once, and the limit passing later changes nothing', async () => {
    vi.useFakeTimers();
    let commit!: () => void;
    const { state, errors, held } = setup(true, new Promise<void>((resolve) => (commit = resolve)));
    await vi.advanceTimersByTimeAsync(5);
    commit();
    await held;
    expect(state.settled).toBe('resolved');
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(HOLD_LIMIT_MS);
    expect(errors).not.toHaveBeenCalled();
  });

  it('a refused event (log closed, queue full) rejects at once', async () => {
    const { state, errors, held } = setup(true, Promise.reject(new Error('audit.unavailable')));
    await held;
    expect(state.settled).toBe('rejected');
    expect(errors).toHaveBeenCalledTimes(1);
  });
});
