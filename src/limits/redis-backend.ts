import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import type { BucketBackend, LeaseGrant, LeaseRequest, SlotGrant } from './backend.js';

/**
 * GCRA lease, atomically: credit ARGV[5] unused tokens, then debit up to ARGV[3]
 * tokens if at least ARGV[4] are available. Time is the server's (`TIME`), in
 * integer microseconds, so instances with skewed clocks still share one bucket
 * and no float rounding accumulates. The key expires when the bucket would be
 * full again (PX = TAT - now): a full bucket needs no state, so idle keys cost
 * Redis nothing. Returns {granted, remaining, wait µs until ARGV[4] tokens, reset µs}.
 */
export const LEASE_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local min = tonumber(ARGV[4])
local ret = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if ret > 0 then
  tat = tat - ret * T
  if tat < now then tat = now end
end
local avail = math.floor((now + cap - tat) / T)
if avail < 0 then avail = 0 end
local granted = 0
if want > 0 and avail >= min then
  granted = want
  if avail < want then granted = avail end
  tat = tat + granted * T
end
local wait = tat + min * T - cap - now
if wait < 0 then wait = 0 end
if tat > now then
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
else
  redis.call('DEL', KEYS[1])
end
return {granted, avail - granted, wait, tat - now}
`;

/**
 * Concurrency slot: a sorted set of holders scored by expiry (server ms), so the
 * slots of an instance that died without releasing come back after the TTL.
 * Returns {acquired 0/1, in flight}.
 */
export const ACQUIRE_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then return {0, n} end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, n + 1}
`;

const sha1 = (text: string) => createHash('sha1').update(text).digest('hex');

export interface RedisBackendOptions {
  url: string;
  timeoutMs: number;
  connectTimeoutMs: number;
  concurrencyTtlMs: number;
  /** Called when the connection becomes ready again (the guard trusts the store at once). */
  onReady?: () => void;
}

/**
 * Redis through ioredis, tuned so a sick Redis cannot slow requests down: no
 * offline queue (a command while disconnected fails at once instead of
 * waiting), a short per-command timeout, reconnection in the background. Scripts
 * are loaded with SCRIPT LOAD on every (re)connect and run with EVALSHA; a
 * NOSCRIPT (script cache flushed, failover to a replica that lacks them) reloads
 * and retries once.
 */
export class RedisBackend implements BucketBackend {
  readonly kind = 'redis';
  readonly client: Redis;
  private readonly leaseSha: string;
  private readonly acquireSha: string;
  private readonly concurrencyTtlMs: number;
  private closed: boolean;

  constructor(options: RedisBackendOptions) {
    this.leaseSha = sha1(LEASE_SCRIPT);
    this.acquireSha = sha1(ACQUIRE_SCRIPT);
    this.concurrencyTtlMs = options.concurrencyTtlMs;
    this.closed = false;
    this.client = new Redis(options.url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      // The guard times calls out (and knows event-loop lag from a slow store); this is only a backstop
      // so a hung Redis cannot pile up pending commands for ever.
      commandTimeout: Math.max(1000, options.timeoutMs * 10),
      connectTimeout: options.connectTimeoutMs,
      enableReadyCheck: true,
      // Keep trying in the background, backing off to 1 s; requests meanwhile take the failure mode.
      retryStrategy: (times) => Math.min(25 * 2 ** Math.min(times, 6), 1000),
    });
    // Errors surface as failed commands (and the breaker); an unhandled 'error' event would crash the process.
    this.client.on('error', () => {});
    this.client.on('ready', () => {
      void this.loadScripts().catch(() => {});
      options.onReady?.();
    });
  }

  get ready(): boolean {
    return this.client.status === 'ready';
  }

  async lease(r: LeaseRequest): Promise<LeaseGrant> {
    // Integer microseconds; never 0 (a rate faster than 1/µs is refused at config load).
    const emission = Math.max(1, Math.round(r.emission * 1000));
    const capacity = Math.round((r.capacity / r.emission) * emission);
    const reply = (await this.run(this.leaseSha, LEASE_SCRIPT, r.key, [emission, capacity, r.want, r.min, r.ret])) as number[];
    return {
      granted: reply[0]!,
      remaining: reply[1]!,
      waitMs: reply[2]! / 1000,
      resetMs: reply[3]! / 1000,
    };
  }

  async acquire(key: string, limit: number, member: string): Promise<SlotGrant> {
    const reply = (await this.run(this.acquireSha, ACQUIRE_SCRIPT, key, [limit, this.concurrencyTtlMs, member])) as number[];
    return { acquired: reply[0] === 1, inFlight: reply[1]! };
  }

  release(key: string, member: string): void {
    if (this.ready) this.client.zrem(key, member).catch(() => {});
  }

  async ping(): Promise<void> {
    await this.client.ping();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.client.status === 'ready') await this.client.quit();
      else this.client.disconnect();
    } catch {
      this.client.disconnect();
    }
  }

  private async loadScripts(): Promise<void> {
    await Promise.all([this.client.script('LOAD', LEASE_SCRIPT), this.client.script('LOAD', ACQUIRE_SCRIPT)]);
  }

  private async run(sha: string, script: string, key: string, args: (number | string)[]): Promise<unknown> {
    try {
      return await this.client.evalsha(sha, 1, key, ...args);
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      await this.client.script('LOAD', script);
      return this.client.evalsha(sha, 1, key, ...args);
    }
  }
}
