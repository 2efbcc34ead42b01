/**
 * The cluster relay, in process: a primary host and worker lists joined by a fake IPC
 * channel (asynchronous, ordered, like the real one). Memory store: an admin write
 * resolves once every worker enforces it, a worker that starts late gets the whole set,
 * a worker that never answers holds a write up to the deadline only, a change made in a
 * worker reaches the others. Redis store: a revocation the primary had to queue is
 * queued by every worker too, and lifting it drops their copies.
 */
import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { Identity } from '../../src/core/context.js';
import { createRevocationList } from '../../src/revocation/index.js';
import {
  RevocationPrimaryHost,
  WorkerRelayStore,
  isRevocationRelayMessage,
  type RelayCluster,
  type RelayEvent,
  type RelayPeer,
  type RevocationChannel,
  type RevocationRelayMessage,
} from '../../src/revocation/cluster.js';
import {
  MemoryRevocationStore,
  RevocationList,
  type RevocationEntry,
  type RevocationSink,
  type RevocationStore,
  type StoreWrite,
} from '../../src/revocation/list.js';
import type { RevocationConfig } from '../../src/revocation/schema.js';

const MEMORY: RevocationConfig = { store: 'memory', onStoreFailure: 'keep_last', maxTokenLifetimeSec: 3600 };

/** One fake worker process: its end of the channel and the primary's handle on it. */
class FakeWorker implements RelayPeer {
  connected = true;
  /** false: the worker receives nothing (wedged). */
  deliver = true;
  readonly received: RevocationRelayMessage[] = [];
  private readonly handlers = new Set<(message: unknown) => void>();
  readonly channel: RevocationChannel;

  constructor(
    readonly id: number,
    private readonly cluster: FakeCluster,
  ) {
    const connected = () => this.connected;
    this.channel = {
      get connected() {
        return connected();
      },
      send: (message) => setImmediate(() => this.cluster.emit('message', this, message)),
      subscribe: (handler) => {
        this.handlers.add(handler);
        return () => this.handlers.delete(handler);
      },
    };
  }

  isConnected(): boolean {
    return this.connected;
  }

  send(message: RevocationRelayMessage): boolean {
    if (isRevocationRelayMessage(message)) this.received.push(message);
    setImmediate(() => {
      if (!this.deliver) return;
      for (const handler of this.handlers) handler(message);
    });
    return true;
  }
}

class FakeCluster extends EventEmitter {
  readonly workers: Record<number, FakeWorker> = {};
  private next = 1;

  fork(): FakeWorker {
    const worker = new FakeWorker(this.next++, this);
    this.workers[worker.id] = worker;
    return worker;
  }

  exit(worker: FakeWorker): void {
    worker.connected = false;
    delete this.workers[worker.id];
    this.emit('exit', worker);
  }
}

const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.close()));
});

function setup(options: { ackTimeoutMs?: number; createStore?: () => RevocationStore } = {}) {
  const cluster = new FakeCluster();
  const events: RelayEvent[] = [];
  const host = new RevocationPrimaryHost({
    ackTimeoutMs: options.ackTimeoutMs ?? 5_000,
    onEvent: (e) => events.push(e),
    ...(options.createStore === undefined ? {} : { createStore: options.createStore }),
  });
  host.attach(cluster as unknown as RelayCluster);
  open.push(host);
  return { cluster, host, events };
}

async function startWorker(cluster: FakeCluster, config: RevocationConfig = MEMORY) {
  const worker = cluster.fork();
  const list = createRevocationList(config, { channel: worker.channel });
  open.push(list);
  await list.start();
  return { worker, list };
}

const who = (claims: Record<string, unknown>): Identity => ({
  subject: (claims['sub'] as string | undefined) ?? 'alice',
  roles: [],
  scopes: [],
  claims: { sub: 'alice', iat: Math.floor(Date.now() / 1000) - 5, ...claims },
  provider: 'p',
});
const revoked = (list: RevocationList, claims: Record<string, unknown>) => list.isRevoked(who(claims)).revoked;
const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 20));

describe('memory store across workers', () => {
  it('an admin write resolves once every worker enforces it; lifting it too', async () => {
    const { cluster, host } = setup();
    await host.configure(MEMORY);
    const w1 = await startWorker(cluster);
    const w2 = await startWorker(cluster);
    expect(host.memberCount).toBe(2);
    const primary = host.list!;
    for (let i = 0; i < 20; i++) {
      const { write } = await primary.revoke({ jti: `t-${i}` });
      expect(write).toBe('stored');
      // No waiting: the write resolved after both workers acknowledged it.
      expect(revoked(w1.list, { jti: `t-${i}` })).toBe(true);
      expect(revoked(w2.list, { jti: `t-${i}` })).toBe(true);
    }
    await primary.revoke({ sub: 'bob', before: Math.floor(Date.now() / 1000) });
    expect(revoked(w2.list, { sub: 'bob', iat: 1 })).toBe(true);
    expect(await primary.unrevoke('jti:t-3')).toBe(true);
    expect(revoked(w1.list, { jti: 't-3' })).toBe(false);
    expect(revoked(w2.list, { jti: 't-3' })).toBe(false);
    expect(await primary.unrevoke('jti:nope')).toBe(false);
    expect(w1.list.size).toBe(20);
    expect(w2.list.entries()).toEqual(primary.entries());
  });

  it('a worker that starts (or restarts) gets the whole set before its list is ready', async () => {
    const { cluster, host } = setup();
    await host.configure(MEMORY);
    const w1 = await startWorker(cluster);
    await host.list!.revoke({ jti: 'early' });
    await host.list!.revoke({ sid: 's-1' });
    cluster.exit(w1.worker);
    expect(host.memberCount).toBe(0);
    const w2 = await startWorker(cluster);
    expect(revoked(w2.list, { jti: 'early' })).toBe(true);
    expect(revoked(w2.list, { sid: 's-1' })).toBe(true);
    expect(w2.list.store.lastSyncAt).not.toBeNull();
    expect(w2.list.size).toBe(2);
  });

  it('a wedged worker holds a write until it exits, or up to the deadline (reported)', async () => {
    // No deadline in reach: the write resolves only because the wedged worker goes away.
    const patient = setup({ ackTimeoutMs: 600_000 });
    await patient.host.configure(MEMORY);
    const ok = await startWorker(patient.cluster);
    const wedged = await startWorker(patient.cluster);
    wedged.worker.deliver = false;
    let resolved = false;
    const pending = patient.host.list!.revoke({ jti: 'a' }).then(() => (resolved = true));
    await settle();
    expect(revoked(ok.list, { jti: 'a' })).toBe(true);
    expect(resolved).toBe(false);
    patient.cluster.exit(wedged.worker);
    await pending;
    expect(patient.events).toEqual([]);

    // A deadline: the write resolves without the wedged worker's ack, and says which worker it was.
    const hasty = setup({ ackTimeoutMs: 50 });
    await hasty.host.configure(MEMORY);
    await startWorker(hasty.cluster);
    const stuck = await startWorker(hasty.cluster);
    stuck.worker.deliver = false;
    expect((await hasty.host.list!.revoke({ jti: 'b' })).write).toBe('stored');
    expect(hasty.events).toEqual([
      { type: 'relay_timeout', detail: expect.stringContaining(`workers ${stuck.worker.id} `) as string },
    ]);
  });

  it('a change made in a worker reaches the primary and the other workers', async () => {
    const { cluster, host } = setup();
    await host.configure(MEMORY);
    const w1 = await startWorker(cluster);
    const w2 = await startWorker(cluster);
    await w1.list.revoke({ sub: 'mallory' });
    expect(revoked(w1.list, { sub: 'mallory' })).toBe(true);
    await settle();
    expect(revoked(host.list!, { sub: 'mallory' })).toBe(true);
    expect(revoked(w2.list, { sub: 'mallory' })).toBe(true);
    expect(await w2.list.unrevoke('sub:mallory')).toBe(true);
    await settle();
    expect([host.list!, w1.list, w2.list].some((l) => revoked(l, { sub: 'mallory' }))).toBe(false);
  });

  it('configure keeps the list while the store is the same, and replaces it when it changes', async () => {
    const { host } = setup();
    await host.configure(MEMORY);
    const first = host.list!;
    await first.revoke({ jti: 'kept' });
    await host.configure({ ...MEMORY, maxTokenLifetimeSec: 60 });
    expect(host.list).toBe(first);
    await host.configure(undefined);
    expect(host.list).toBeNull();
    await host.configure(MEMORY);
    expect(host.list).not.toBe(first);
    expect(host.list!.size).toBe(0);
  });

  it('other IPC messages are not ours', () => {
    expect(isRevocationRelayMessage({ type: 'config' })).toBe(false);
    expect(isRevocationRelayMessage({ bulwarkLimits: 1, ops: [] })).toBe(false);
    const { host } = setup();
    expect(host.handle({ id: 1, isConnected: () => true, send: () => true }, { bulwarkTelemetry: 1, id: 1, op: 'metrics' })).toBe(
      false,
    );
  });
});

/** A Redis store stand-in: down (every write queued) until `up`. */
class FakeRedisStore implements RevocationStore {
  readonly kind = 'redis';
  up = false;
  readonly queued = new Map<string, RevocationEntry>();
  lastSyncAt: number | null = null;
  get available(): boolean {
    return this.up;
  }
  start(_sink: RevocationSink): Promise<void> {
    return Promise.resolve();
  }
  add(entry: RevocationEntry): Promise<StoreWrite> {
    if (this.up) return Promise.resolve('stored');
    this.queued.set(entry.id, entry);
    return Promise.resolve('queued');
  }
  remove(id: string): Promise<boolean> {
    return Promise.resolve(this.queued.delete(id));
  }
  forget(id: string): boolean {
    return this.queued.delete(id);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

describe('Redis store across workers', () => {
  it('a revocation queued by the primary is enforced and queued by every worker; lifting it drops their copies', async () => {
    const primaryStore = new FakeRedisStore();
    const { cluster, host } = setup({ createStore: () => primaryStore });
    await host.configure({ ...MEMORY, store: { redis: { url: 'redis://127.0.0.1:1' } } });
    const workers = [cluster.fork(), cluster.fork()].map((worker) => {
      const store = new FakeRedisStore();
      const list = new RevocationList({ store: new WorkerRelayStore(store, worker.channel) });
      open.push(list);
      return { worker, store, list };
    });
    for (const w of workers) await w.list.start();
    await settle(); // the hellos
    expect(host.memberCount).toBe(2);

    const { write } = await host.list!.revoke({ jti: 'during-outage' });
    expect(write).toBe('queued');
    for (const w of workers) {
      expect(revoked(w.list, { jti: 'during-outage' })).toBe(true);
      expect([...w.store.queued.keys()]).toEqual(['jti:during-outage']);
    }
    expect(await host.list!.unrevoke('jti:during-outage')).toBe(true);
    for (const w of workers) {
      expect(revoked(w.list, { jti: 'during-outage' })).toBe(false);
      expect(w.store.queued.size).toBe(0);
    }

    // Redis up: workers apply the relayed entry but leave the writing to the primary.
    primaryStore.up = true;
    for (const w of workers) w.store.up = true;
    expect((await host.list!.revoke({ sub: 'eve' })).write).toBe('stored');
    for (const w of workers) {
      expect(revoked(w.list, { sub: 'eve' })).toBe(true);
      expect(w.store.queued.size).toBe(0);
    }
    // A memory worker's hello to a Redis primary gets an empty set, not the Redis one.
    const late = cluster.fork();
    const memoryList = new RevocationList({ store: new WorkerRelayStore(new MemoryRevocationStore(), late.channel) });
    open.push(memoryList);
    await memoryList.start();
    expect(memoryList.size).toBe(0);
  });
});
