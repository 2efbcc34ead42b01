/** What a hostile gRPC client can make the gateway's own machinery do. */
import { afterEach, describe, expect, it } from 'vitest';
import { DeadlineQueue, parseGrpcTimeout, type DeadlineEntry } from '../../src/grpc/timeout.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('deadlines beyond what setTimeout can hold', () => {
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  afterEach(() => {
    process.off('warning', onWarning);
    warnings.length = 0;
  });

  it('grpc-timeout 99999999H on a route without a maximum: no 1 ms timer loop, no early expiry', async () => {
    process.on('warning', onWarning);
    const queue = new DeadlineQueue();
    let expired = 0;
    const entry: DeadlineEntry = { deadlineAt: 0, deadlineIndex: -1, onDeadline: () => expired++ };
    const ms = parseGrpcTimeout('99999999H')!;
    expect(ms).toBeGreaterThan(2 ** 31);
    queue.add(entry, ms);
    await sleep(50);
    queue.remove(entry);
    expect(expired).toBe(0);
    // Node clamps an over-long delay to 1 ms with a TimeoutOverflowWarning, and the queue would
    // re-arm (and warn) every millisecond for the life of the call.
    expect(warnings.filter((w) => w.name === 'TimeoutOverflowWarning')).toEqual([]);
  });
});
