import { describe, expect, it } from 'vitest';
import { AuditClock, formatTimestamp, parseTimestamp, UuidV7, UUID_V7 } from '../../src/audit/clock.js';

describe('AuditClock', () => {
  it('is strictly increasing, nanosecond-resolution, near the wall clock', () => {
    const clock = new AuditClock();
    let last = 0n;
    let backwards = 0;
    for (let i = 0; i < 100_000; i++) {
      const now = clock.now();
      if (now <= last) backwards++;
      last = now;
    }
    expect(backwards).toBe(0);
    expect(Number(last / 1_000_000n) - Date.now()).toBeLessThan(50);
  });

  it('formats RFC 3339 UTC with nine fraction digits (fixed width: sorts as text) and parses back', () => {
    const ns = 1_795_000_000_123_456_789n;
    const text = formatTimestamp(ns);
    expect(text).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$/);
    expect(text.endsWith('.123456789Z')).toBe(true);
    expect(parseTimestamp(text)).toBe(ns);
    expect(formatTimestamp(ns + 1n) > text).toBe(true);
    expect(parseTimestamp('2026-01-01T00:00:00Z')).toBeNull();
  });
});

describe('UUIDv7 (RFC 9562)', () => {
  it('has version 7, variant 10, the millisecond timestamp in the first 48 bits', () => {
    const clock = new AuditClock();
    const uuid = new UuidV7();
    const ns = clock.now();
    const id = uuid.next(ns);
    expect(id).toMatch(UUID_V7);
    expect(parseInt(id.replace(/-/g, '').slice(0, 12), 16)).toBe(Number(ns / 1_000_000n));
  });

  it('sorts in creation order, also many ids within one clock step, and never repeats', () => {
    const uuid = new UuidV7();
    const clock = new AuditClock();
    const ids: string[] = [];
    const sameStep = clock.now();
    for (let i = 0; i < 20_000; i++) ids.push(uuid.next(i % 2 === 0 ? sameStep : clock.now()));
    // Same-step ids (and ids whose clock went back) still increase: the counter / next step take over.
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids).size).toBe(ids.length);
  });
});
