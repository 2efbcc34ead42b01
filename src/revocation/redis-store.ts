/**
 * Revocations shared by several instances through Redis:
 *
 * - `<prefix>entries`: hash id → entry JSON; `<prefix>expiry`: sorted set id → expiry
 *   (ms), so expired entries are purged; `<prefix>epoch`: a random id naming this
 *   incarnation of the data set.
 * - Writes are one script each (merge + HSET + ZADD + PUBLISH), so an entry and its
 *   announcement are atomic; every instance applies the announcement to its local
 *   list (the request path never talks to Redis).
 * - Full resync on start and whenever either connection is ready again. Messages
 *   arriving during a resync are replayed after the snapshot, so none is lost.
 * - Redis down: writes are enforced locally and queued, then pushed on reconnect.
 *   If Redis came back without the data (a new epoch: restarted without
 *   persistence, failover to an empty replica), every instance pushes its local set
 *   back before resyncing: a revocation is never silently forgotten.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import {
  mergeEntries,
  parseEntry,
  RevocationStoreUnavailableError,
  type RevocationEntry,
  type RevocationSink,
  type RevocationStore,
  type StoreWrite,
} from './list.js';

/**
 * KEYS: entries hash, expiry zset. ARGV: id, entry JSON, now ms, channel.
 * Merges with an existing entry (the wider one wins), purges expired entries, publishes.
 */
export const ADD_SCRIPT = `
local e = cjson.decode(ARGV[2])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local c = cjson.decode(cur)
  if tonumber(c.expiresAtMs) > tonumber(e.expiresAtMs) then e.expiresAtMs = c.expiresAtMs end
  if tonumber(c.createdAtMs) < tonumber(e.createdAtMs) then e.createdAtMs = c.createdAtMs end
  if c.before ~= nil and e.before ~= nil and tonumber(c.before) > tonumber(e.before) then e.before = c.before end
end
local json = cjson.encode(e)
redis.call('HSET', KEYS[1], ARGV[1], json)
redis.call('ZADD', KEYS[2], e.expiresAtMs, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 500)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
redis.call('PUBLISH', ARGV[4], '{"op":"add","entry":' .. json .. '}')
return json
`;

/** KEYS: entries hash, expiry zset. ARGV: id, channel. Returns 1 when there was an entry. */
export const DELETE_SCRIPT = `
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if n > 0 then redis.call('PUBLISH', ARGV[2], '{"op":"del","id":' .. cjson.encode(ARGV[1]) .. '}') end
return n
`;

export interface RedisRevocationStoreOptions {
  url: string;
  keyPrefix: string;
  channel: string;
  /** Per-command backstop (ms). */
  commandTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Sync state changes, for logs and metrics. */
  onEvent?: (event: { type: 'synced' | 'unavailable' | 'resync_failed' | 'reseeded'; detail?: string }) => void;
}

type Message = { op: 'add'; entry: RevocationEntry } | { op: 'del'; id: string };

function parseMessage(text: string): Message | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  if (v['op'] === 'del' && typeof v['id'] === 'string') return { op: 'del', id: v['id'] };
  if (v['op'] !== 'add') return null;
  const entry = parseEntry(v['entry']);
  return entry === null ? null : { op: 'add', entry };
}

const RETRY_MS = 500;

export class RedisRevocationStore implements RevocationStore {
  readonly kind = 'redis';
  readonly client: Redis;
  readonly subscriber: Redis;
  lastSyncAt: number | null = null;
  /** Counters for stats and tests. */
  resyncs = 0;
  reseeds = 0;
  private readonly keys: { entries: string; expiry: string; epoch: string };
  private readonly channel: string;
  private readonly onEvent: RedisRevocationStoreOptions['onEvent'];
  private sink: RevocationSink | null = null;
  private synced = false;
  private subscribed = false;
  private epoch: string | null = null;
  /** Writes made while Redis was unreachable: enforced locally, pushed on reconnect. */
  private readonly pending = new Map<string, RevocationEntry>();
  /** Messages seen while a resync runs, replayed after its snapshot. */
  private replay: Message[] | null = null;
  private syncing: Promise<void> | null = null;
  private again = false;
  private retry: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(options: RedisRevocationStoreOptions) {
    const prefix = options.keyPrefix;
    this.keys = { entries: `${prefix}entries`, expiry: `${prefix}expiry`, epoch: `${prefix}epoch` };
    this.channel = options.channel;
    this.onEvent = options.onEvent;
    const common = {
      lazyConnect: true,
      connectTimeout: options.connectTimeoutMs ?? 2000,
      maxRetriesPerRequest: 0,
      // Keep trying in the background, backing off to 1 s.
      retryStrategy: (times: number) => Math.min(25 * 2 ** Math.min(times, 6), 1000),
    };
    this.client = new Redis(options.url, {
      ...common,
      enableOfflineQueue: false,
      commandTimeout: options.commandTimeoutMs ?? 2000,
    });
    this.client.defineCommand('revocationAdd', { numberOfKeys: 2, lua: ADD_SCRIPT });
    this.client.defineCommand('revocationDelete', { numberOfKeys: 2, lua: DELETE_SCRIPT });
    // We subscribe ourselves on every 'ready', then resync: the order matters (subscribe first).
    this.subscriber = new Redis(options.url, { ...common, autoResubscribe: false });
    for (const connection of [this.client, this.subscriber]) {
      connection.on('error', () => {});
      connection.on('close', () => this.lost());
    }
    this.client.on('ready', () => this.requestSync());
    this.subscriber.on('ready', () => {
      this.subscribed = false;
      this.subscriber.subscribe(this.channel).then(
        () => {
          this.subscribed = true;
          this.requestSync();
        },
        () => {},
      );
    });
    this.subscriber.on('message', (channel: string, text: string) => {
      if (channel !== this.channel) return;
      const message = parseMessage(text);
      if (message === null) return;
      this.replay?.push(message);
      this.deliver(message);
    });
  }

  get available(): boolean {
    return this.synced && this.client.status === 'ready' && this.subscriber.status === 'ready';
  }

  /** Writes waiting for Redis. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Connects and syncs; resolves after the first sync, or after `timeoutMs` with Redis still down (it keeps retrying). */
  async start(sink: RevocationSink, timeoutMs = 3000): Promise<void> {
    this.sink = sink;
    this.client.connect().catch(() => {});
    this.subscriber.connect().catch(() => {});
    const t0 = Date.now();
    while (!this.available && !this.closed && Date.now() - t0 < timeoutMs) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  async add(entry: RevocationEntry): Promise<StoreWrite> {
    if (this.client.status !== 'ready') {
      this.queue(entry);
      return 'queued';
    }
    try {
      await this.write(entry);
      return 'stored';
    } catch {
      // Maybe written, maybe not: the merge makes a second write harmless.
      this.queue(entry);
      return 'queued';
    }
  }

  async remove(id: string): Promise<boolean> {
    const queued = this.pending.delete(id);
    if (this.client.status !== 'ready') {
      if (queued) return true;
      throw new RevocationStoreUnavailableError('revocation store unavailable');
    }
    try {
      const n = (await this.run('revocationDelete', this.keys.entries, this.keys.expiry, id, this.channel)) as number;
      return n > 0 || queued;
    } catch (err) {
      throw new RevocationStoreUnavailableError('revocation store unavailable', { cause: err });
    }
  }

  /**
   * Drops a queued write without touching Redis: the revocation was lifted elsewhere
   * (the cluster primary relays a lift to its workers), and pushing it on reconnect
   * would bring it back.
   */
  forget(id: string): boolean {
    return this.pending.delete(id);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retry !== null) clearTimeout(this.retry);
    for (const connection of [this.client, this.subscriber]) {
      try {
        if (connection.status === 'ready') await connection.quit();
        else connection.disconnect();
      } catch {
        connection.disconnect();
      }
    }
  }

  // -------------------------------------------------------------------------

  private queue(entry: RevocationEntry): void {
    const current = this.pending.get(entry.id);
    this.pending.set(entry.id, current === undefined ? entry : mergeEntries(current, entry));
  }

  private async write(entry: RevocationEntry): Promise<void> {
    await this.run(
      'revocationAdd',
      this.keys.entries,
      this.keys.expiry,
      entry.id,
      JSON.stringify(entry),
      Date.now(),
      this.channel,
    );
  }

  private run(command: 'revocationAdd' | 'revocationDelete', ...args: (string | number)[]): Promise<unknown> {
    const fn = (this.client as unknown as Record<string, (...a: (string | number)[]) => Promise<unknown>>)[command]!;
    return fn.apply(this.client, args);
  }

  private deliver(message: Message): void {
    const sink = this.sink;
    if (sink === null) return;
    if (message.op === 'add') sink.apply(message.entry);
    else if (!this.pending.has(message.id)) sink.drop(message.id);
  }

  private lost(): void {
    if (this.synced) this.onEvent?.({ type: 'unavailable' });
    this.synced = false;
  }

  private requestSync(): void {
    if (this.closed) return;
    if (this.syncing !== null) {
      this.again = true;
      return;
    }
    this.syncing = this.resync()
      .catch((err: unknown) => {
        this.onEvent?.({ type: 'resync_failed', detail: err instanceof Error ? err.message : String(err) });
        if (!this.closed && this.retry === null) {
          this.retry = setTimeout(() => {
            this.retry = null;
            this.requestSync();
          }, RETRY_MS);
          this.retry.unref();
        }
      })
      .finally(() => {
        this.syncing = null;
        if (this.again) {
          this.again = false;
          this.requestSync();
        }
      });
  }

  private async resync(): Promise<void> {
    const sink = this.sink;
    if (sink === null || this.client.status !== 'ready' || this.subscriber.status !== 'ready' || !this.subscribed) return;
    this.replay = [];
    try {
      const client = this.client;
      let epoch = await client.get(this.keys.epoch);
      if (epoch === null || epoch !== this.epoch) {
        // Another data set than the one we synced with (or a first start): push what we enforce.
        const local = sink.entries();
        if (this.epoch !== null && local.length > 0) {
          for (const entry of local) await this.write(entry);
          this.reseeds++;
          this.onEvent?.({ type: 'reseeded', detail: `${local.length} entries` });
        }
        if (epoch === null) {
          await client.set(this.keys.epoch, randomUUID(), 'NX');
          epoch = await client.get(this.keys.epoch);
        }
      }
      for (const [id, entry] of [...this.pending]) {
        await this.write(entry);
        if (this.pending.get(id) === entry) this.pending.delete(id);
      }
      const raw = await client.hgetall(this.keys.entries);
      const now = Date.now();
      const snapshot: RevocationEntry[] = [];
      for (const text of Object.values(raw)) {
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch {
          continue;
        }
        const entry = parseEntry(value);
        if (entry !== null && entry.expiresAtMs > now) snapshot.push(entry);
      }
      for (const entry of this.pending.values()) snapshot.push(entry);
      sink.replace(snapshot);
      const replay = this.replay;
      this.replay = null;
      for (const message of replay) this.deliver(message);
      this.epoch = epoch;
      this.lastSyncAt = now;
      this.resyncs++;
      this.synced = this.client.status === 'ready' && this.subscriber.status === 'ready';
      if (this.synced) this.onEvent?.({ type: 'synced', detail: `${snapshot.length} entries` });
    } finally {
      this.replay = null;
    }
  }
}
