import { execFile, fork } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { deleteKeys, REDIS_URL, uniquePrefix } from './helpers.js';

// Real processes run the compiled code (dist/, built by test/setup/build.ts), as `bulwark serve` does.
const root = join(import.meta.dirname, '..', '..');
const fixtures = join(import.meta.dirname, 'fixtures');
const run = promisify(execFile);

describe('across processes', () => {
  it('2 cluster workers share the memory store through the primary: the limit holds for the instance, not per worker', async () => {
    // A burst of a whole second: the load generators share 2 cores with the primary (and vitest), and a
    // stall longer than burst / rate would let the bucket overflow — a loss an exact limiter makes too.
    const settings = { rate: 500, burst: 500, windowMs: 3000, offered: 1500, concurrency: 4 };
    const { stdout } = await run(process.execPath, [join(fixtures, 'cluster-limits.js'), JSON.stringify(settings)], {
      cwd: root,
      timeout: 40_000,
    });
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as {
      admitted: number;
      offered: number;
      expected: number;
      error: number;
      ipcCalls: number;
      ipcFailures: number;
      maxInFlight: number;
      results: { kind: string; admitted: number; degraded: number; failures: number }[];
    };
    console.log(
      `[limits] 2 cluster workers, memory store via primary: admitted ${r.admitted} of ${r.offered} ` +
        `(${r.results.map((w) => w.admitted).join('/')}), expected ${r.expected} (${(r.error * 100).toFixed(2)}%), ` +
        `${r.ipcCalls} IPC calls = ${(r.ipcCalls / r.offered).toFixed(4)}/request, ` +
        `${r.ipcFailures} failed, ${r.results.reduce((s, w) => s + w.degraded, 0)} degraded; ` +
        `concurrency 4 → ${r.maxInFlight} held at once`,
    );
    expect(r.results.every((w) => w.kind === 'primary-ipc')).toBe(true);
    expect(Math.abs(r.error)).toBeLessThan(0.02); // not 2× the limit
    expect(r.maxInFlight).toBe(4); // 4 slots for the instance, not 4 per worker
  }, 60_000);

  it('4 processes on one Redis: within ±2% of the limit at < 0.05 round trips per request', async () => {
    const keyPrefix = uniquePrefix('procs');
    // Burst = 1 s of rate, for the same reason as above (4 processes on 2 cores).
    const settings = { url: REDIS_URL, keyPrefix, rate: 1000, burst: 1000, instances: 4, windowMs: 4000, offered: 1500 };
    try {
      const children = [0, 1, 2, 3].map(() =>
        fork(join(fixtures, 'redis-instance.js'), [JSON.stringify(settings)], {
          cwd: root,
          stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        }),
      );
      const message = (child: (typeof children)[number], type: string) =>
        new Promise<{
          type: string;
          result?: { admitted: number; offered: number; calls: number; failures: number; degraded: number };
        }>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ${type} from child`)), 30_000);
          child.on('message', (m: { type: string }) => {
            if (m.type === type) {
              clearTimeout(timer);
              resolve(m);
            }
          });
          child.once('exit', (code) => code !== 0 && reject(new Error(`child exited ${code}`)));
        });
      await Promise.all(children.map((c) => message(c, 'ready')));
      const results = children.map((c) => message(c, 'result'));
      const at = Date.now() + 300;
      for (const c of children) c.send({ type: 'go', at });
      const done = (await Promise.all(results)).map((m) => m.result!);
      const admitted = done.reduce((s, r) => s + r.admitted, 0);
      const offered = done.reduce((s, r) => s + r.offered, 0);
      const calls = done.reduce((s, r) => s + r.calls, 0);
      const expected = settings.burst + (settings.rate * settings.windowMs) / 1000;
      const error = (admitted - expected) / expected;
      console.log(
        `[limits] redis 4 processes: admitted ${admitted} of ${offered} (${done.map((r) => r.admitted).join('/')}), ` +
          `expected ${expected} (${(error * 100).toFixed(2)}%), ${calls} round trips = ${(calls / offered).toFixed(4)}/request, ` +
          `${done.reduce((s, r) => s + r.failures, 0)} store failures, ${done.reduce((s, r) => s + r.degraded, 0)} degraded`,
      );
      expect(Math.abs(error)).toBeLessThan(0.02);
      expect(calls / offered).toBeLessThan(0.05);
    } finally {
      await deleteKeys(REDIS_URL, keyPrefix);
    }
  }, 60_000);
});
