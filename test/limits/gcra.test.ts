import { describe, expect, it } from 'vitest';
import { gcraAdmit, gcraAvailable, gcraCredit, gcraLease, gcraParams, gcraResetAfter, gcraWait } from '../../src/limits/gcra.js';

describe('GCRA', () => {
  const { emission, capacity } = gcraParams(10, 1000, 5); // 10/s, burst 5

  it('admits exactly the burst from a full bucket, then one per emission interval', () => {
    let tat = 0;
    const now = 1000;
    let admitted = 0;
    for (let i = 0; i < 20; i++) {
      const next = gcraAdmit(tat, now, emission, capacity);
      if (Number.isNaN(next)) break;
      tat = next;
      admitted++;
    }
    expect(admitted).toBe(5);
    expect(gcraAvailable(tat, now, emission, capacity)).toBe(0);
    expect(gcraWait(tat, now, emission, capacity)).toBeCloseTo(100);
    expect(Number.isNaN(gcraAdmit(tat, now + 99.9, emission, capacity))).toBe(true);
    expect(Number.isNaN(gcraAdmit(tat, now + 100, emission, capacity))).toBe(false);
    expect(gcraResetAfter(tat, now)).toBeCloseTo(500);
  });

  it('never banks more than the burst however long the key was idle', () => {
    expect(gcraAvailable(0, 1e9, emission, capacity)).toBe(5);
  });

  it('admits many tokens at once only if all fit', () => {
    expect(Number.isNaN(gcraAdmit(0, 1000, emission, capacity, 6))).toBe(true);
    expect(gcraAdmit(0, 1000, emission, capacity, 5)).toBeCloseTo(1500);
  });

  it('credits tokens back but never past a full bucket', () => {
    const tat = 1300; // 3 tokens used at now=1000
    expect(gcraCredit(tat, 1000, emission, 1)).toBeCloseTo(1200);
    expect(gcraCredit(tat, 1000, emission, 10)).toBe(1000);
  });

  it('leases up to `want`, and nothing when fewer than `min` are available', () => {
    const out = { tat: 0 };
    expect(gcraLease(0, 1000, emission, capacity, 3, 2, out)).toBe(3);
    expect(out.tat).toBeCloseTo(1300);
    expect(gcraLease(out.tat, 1000, emission, capacity, 3, 2, out)).toBe(2);
    expect(out.tat).toBeCloseTo(1500);
    expect(gcraLease(out.tat, 1000, emission, capacity, 3, 2, out)).toBe(0);
    expect(out.tat).toBeCloseTo(1500);
  });

  it('stays exact over long runs of fractional intervals (no drift)', () => {
    const p = gcraParams(3, 1000, 2); // T = 333.33… ms
    let tat = 0;
    let admitted = 0;
    for (let now = 0; now < 60_000; now += 1) {
      const next = gcraAdmit(tat, now, p.emission, p.capacity);
      if (!Number.isNaN(next)) {
        tat = next;
        admitted++;
      }
    }
    expect(admitted).toBe(2 + 179); // the burst at t=0, then one each 333.33 ms: k × T for k = 1…179
  });
});
