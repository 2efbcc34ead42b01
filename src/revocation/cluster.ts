/**
 * Revocations across the workers of one instance (`workers: N`), over the cluster IPC
 * channel. The primary serves the admin listener, so the admin API writes to a list
 * the primary holds; every worker keeps its own local list for the request path.
 *
 * - memory store: the primary's list is the instance's set. Each change is relayed to
 *   every worker, which applies it to its local list (the request check stays a Map
 *   lookup). A worker that starts, or is restarted, says `hello` and gets the whole
 *   set (`sync`) before it reports ready.
 * - Redis store: every process, the primary included, is an instance of its own,
 *   synced by pub/sub. The relay still carries each admin change, so the answer can
 *   wait for this instance's workers (below), and so a revocation made while Redis is
 *   down is enforced, and queued for Redis, by every worker rather than by the
 *   primary alone (which serves no traffic).
 *
 * The primary answers an admin write once every worker that said `hello` acknowledged
 * it (or after `ackTimeoutMs`): a 201 means this instance's workers refuse the token
 * from then on, whichever one the next connection lands on.
 *
 * Wire format: every message carries `bulwarkRevocation: 1` (like `bulwarkLimits` and
 * `bulwarkTelemetry`); other handlers on the channel skip them.
 */
import { processChannel, type IpcChannel } from '../limits/ipc.js';
import cluster, { type Cluster, type Worker } from 'node:cluster';
import {
  parseEntry,
  RevocationList,
  type RevocationEntry,
  type RevocationSink,
  type RevocationStore,
  type StoreWrite,
} from './list.js';
import type { RedisRevocationStore } from './redis-store.js';
import { REVOCATION_DEFAULTS, type RevocationConfig } from './schema.js';
import { createRevocationStore, type RevocationStoreEvent } from './store.js';

export type RevocationRelayMessage =
  /** Worker → primary: a list started; `memory` asks for the set. */
  | { readonly bulwarkRevocation: 1; readonly op: 'hello'; readonly store: 'memory' | 'redis' }
  /** Worker → primary: relayed change `seq` is applied. */
  | { readonly bulwarkRevocation: 1; readonly op: 'ack'; readonly seq: number }
  /** Both ways (seq 0 from a worker: no ack wanted). `queued`: the shared store is down, push it on reconnect. */
  | {
      readonly bulwarkRevocation: 1;
      readonly op: 'add';
      readonly seq: number;
      readonly entry: RevocationEntry;
      readonly queued?: boolean;
    }
  | { readonly bulwarkRevocation: 1; readonly op: 'del'; readonly seq: number; readonly id: string }
  /** Primary → worker: the whole set (memory store). */
  | { readonly bulwarkRevocation: 1; readonly op: 'sync'; readonly entries: readonly RevocationEntry[] };

/** Whether an IPC message belongs to this protocol (the other handlers on the channel skip these). */
export function isRevocationRelayMessage(message: unknown): message is RevocationRelayMessage {
  return typeof message === 'object' && message !== null && (message as { bulwarkRevocation?: unknown }).bulwarkRevocation === 1;
}

/** A worker's end of the channel to the primary. */
export type RevocationChannel = IpcChannel<RevocationRelayMessage>;

/** Whether this process is a `bulwark serve` cluster worker (the primary relays to it). */
export function isClusterWorker(): boolean {
  return cluster.isWorker && process.env['BULWARK_WORKER'] === '1' && typeof process.send === 'function';
}

/** The worker's own process channel. */
export function workerChannel(): RevocationChannel {
  return processChannel<RevocationRelayMessage>();
}

/** How long a starting worker waits for the primary's set before serving without it. */
const SYNC_TIMEOUT_MS = 5_000;

const isRedisStore = (store: RevocationStore): store is RedisRevocationStore => store.kind === 'redis';

/**
 * Worker side: the worker's own store (memory or Redis) plus what the primary relays.
 * With the memory store the primary's set is the truth: `start` waits for it, and a
 * change made in this worker (not through the admin API) goes to the primary, which
 * passes it on to every worker.
 */
export class WorkerRelayStore implements RevocationStore {
  readonly kind: 'memory' | 'redis';
  readonly inner: RevocationStore;
  private readonly channel: RevocationChannel;
  private readonly syncTimeoutMs: number;
  private sink: RevocationSink | null = null;
  private unsubscribe: (() => void) | null = null;
  private synced: (() => void) | null = null;
  private syncedAt: number | null = null;

  constructor(inner: RevocationStore, channel: RevocationChannel, options: { syncTimeoutMs?: number } = {}) {
    this.inner = inner;
    this.kind = inner.kind;
    this.channel = channel;
    this.syncTimeoutMs = options.syncTimeoutMs ?? SYNC_TIMEOUT_MS;
  }

  get available(): boolean {
    return this.inner.available;
  }

  get lastSyncAt(): number | null {
    return this.kind === 'memory' ? this.syncedAt : this.inner.lastSyncAt;
  }

  async start(sink: RevocationSink): Promise<void> {
    this.sink = sink;
    this.unsubscribe ??= this.channel.subscribe((message) => this.receive(message));
    if (this.kind === 'redis') {
      // Redis brings the set; the hello only makes the primary wait for our acks.
      this.send({ bulwarkRevocation: 1, op: 'hello', store: 'redis' });
      return this.inner.start(sink);
    }
    await this.inner.start(sink);
    const synced = new Promise<void>((resolve) => (this.synced = resolve));
    this.send({ bulwarkRevocation: 1, op: 'hello', store: 'memory' });
    let timer: NodeJS.Timeout | undefined;
    // A primary that never answers must not keep the worker from serving; what it relays later still applies.
    await Promise.race([synced, new Promise<void>((resolve) => (timer = setTimeout(resolve, this.syncTimeoutMs)))]);
    clearTimeout(timer);
    this.synced = null;
  }

  add(entry: RevocationEntry): Promise<StoreWrite> {
    if (this.kind === 'redis') return this.inner.add(entry);
    this.send({ bulwarkRevocation: 1, op: 'add', seq: 0, entry });
    return Promise.resolve('stored');
  }

  remove(id: string): Promise<boolean> {
    if (this.kind === 'redis') return this.inner.remove(id);
    this.send({ bulwarkRevocation: 1, op: 'del', seq: 0, id });
    // The list reports whether it held one; the primary's answer is not awaited.
    return Promise.resolve(false);
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.synced?.();
    await this.inner.close();
  }

  private send(message: RevocationRelayMessage): void {
    try {
      if (this.channel.connected) this.channel.send(message);
    } catch {
      // The primary is gone: this worker is about to be torn down with it.
    }
  }

  private receive(message: unknown): void {
    const sink = this.sink;
    if (sink === null || !isRevocationRelayMessage(message)) return;
    switch (message.op) {
      case 'sync': {
        if (this.kind !== 'memory' || !Array.isArray(message.entries)) return;
        const entries: RevocationEntry[] = [];
        for (const value of message.entries as unknown[]) {
          const entry = parseEntry(value);
          if (entry !== null) entries.push(entry);
        }
        sink.replace(entries);
        this.syncedAt = Date.now();
        this.synced?.();
        return;
      }
      case 'add': {
        const entry = parseEntry(message.entry);
        if (entry === null) break;
        sink.apply(entry);
        // Queued by the primary: queue it here too, so whichever process reconnects first pushes it.
        if (message.queued === true && isRedisStore(this.inner)) void this.inner.add(entry);
        break;
      }
      case 'del':
        if (typeof message.id !== 'string') break;
        if (isRedisStore(this.inner)) this.inner.forget(message.id);
        sink.drop(message.id);
        break;
      default:
        return;
    }
    if (typeof message.seq === 'number' && message.seq > 0) this.send({ bulwarkRevocation: 1, op: 'ack', seq: message.seq });
  }
}

/** What the primary needs of a worker (a cluster `Worker` fits). */
export interface RelayPeer {
  readonly id: number;
  isConnected(): boolean;
  send(message: RevocationRelayMessage): unknown;
}

/** What the host needs of the cluster module (`node:cluster` fits). */
export type RelayCluster = Pick<Cluster, 'on' | 'off'> & { readonly workers?: NodeJS.Dict<RelayPeer> | undefined };

/** What the host reports: a worker that did not acknowledge in time, or its Redis store's sync state. */
export type RelayEvent = { type: 'relay_timeout'; detail: string } | { type: 'store'; event: RevocationStoreEvent };

export interface RevocationPrimaryHostOptions {
  /** How long an admin write waits for the workers' acks (ms). */
  ackTimeoutMs?: number;
  /** Builds the shared store of a `revocation` section (tests inject one). */
  createStore?: typeof createRevocationStore;
  onEvent?: (event: RelayEvent) => void;
}

interface InFlight {
  readonly waiting: Set<number>;
  readonly done: () => void;
}

/**
 * Primary side: holds the instance's list for the admin API and relays its changes to
 * the workers. Wire it with `host.attach(cluster)` before forking, and call
 * `configure` with each accepted config's `revocation` section.
 */
export class RevocationPrimaryHost {
  private current: RevocationList | null = null;
  private currentStore: string | null = null;
  private cluster: RelayCluster | null = null;
  /** Workers that said hello: the ones an admin write waits for. */
  private readonly members = new Set<number>();
  private readonly inflight = new Map<number, InFlight>();
  private seq = 0;
  private readonly ackTimeoutMs: number;
  private readonly createStore: typeof createRevocationStore;
  private readonly onEvent: ((event: RelayEvent) => void) | undefined;

  constructor(options: RevocationPrimaryHostOptions) {
    this.ackTimeoutMs = options.ackTimeoutMs ?? 2_000;
    this.createStore = options.createStore ?? createRevocationStore;
    this.onEvent = options.onEvent;
  }

  /** The list the admin API writes to (null: no `revocation` section). */
  get list(): RevocationList | null {
    return this.current;
  }

  /** Workers this primary waits for. */
  get memberCount(): number {
    return this.members.size;
  }

  /** Serves the workers of `cluster`; returns a function that detaches. */
  attach(target: RelayCluster): () => void {
    this.cluster = target;
    const onMessage = (worker: Worker, message: unknown) => void this.handle(worker, message);
    const onExit = (worker: Worker) => this.forget(worker.id);
    target.on('message', onMessage);
    target.on('exit', onExit);
    return () => {
      target.off('message', onMessage);
      target.off('exit', onExit);
      if (this.cluster === target) this.cluster = null;
    };
  }

  /**
   * Applies a config's `revocation` section. The list is kept while its store is the
   * same (like the workers' lists: a reload must never forget a revocation).
   */
  async configure(config: RevocationConfig | undefined): Promise<void> {
    const key = config === undefined ? null : JSON.stringify(config.store);
    if (key === this.currentStore && this.current !== null) return;
    const previous = this.current;
    this.current = null;
    this.currentStore = null;
    if (config !== undefined) {
      const inner = this.createStore(config, { onEvent: (event) => this.onEvent?.({ type: 'store', event }) });
      const list = new RevocationList({
        store: new PrimaryRelayStore(inner, this),
        onStoreFailure: config.onStoreFailure ?? REVOCATION_DEFAULTS.onStoreFailure,
        maxTokenLifetimeSec: config.maxTokenLifetimeSec ?? REVOCATION_DEFAULTS.maxTokenLifetimeSec,
      });
      // Published before start resolves: a hello arriving meanwhile is answered from this list.
      this.current = list;
      this.currentStore = key;
      await list.start();
    }
    await previous?.close();
  }

  /** Answers one message from `worker`; false when it is not a revocation message. */
  handle(worker: RelayPeer, message: unknown): boolean {
    if (!isRevocationRelayMessage(message)) return false;
    switch (message.op) {
      case 'hello': {
        this.members.add(worker.id);
        if (message.store === 'memory') {
          const list = this.current;
          const entries = list !== null && list.store.kind === 'memory' ? list.entries() : [];
          this.sendTo(worker, { bulwarkRevocation: 1, op: 'sync', entries });
        }
        break;
      }
      case 'ack': {
        const flight = this.inflight.get(message.seq);
        if (flight === undefined) break; // after its deadline: nobody waits any more
        flight.waiting.delete(worker.id);
        if (flight.waiting.size === 0) flight.done();
        break;
      }
      case 'add':
      case 'del': {
        // A change made in a worker (memory store): the primary's set is the truth; pass it on.
        const store = this.current?.store;
        if (store instanceof PrimaryRelayStore) void store.fromWorker(message);
        break;
      }
    }
    return true;
  }

  /** A worker exited: stop waiting for it. */
  forget(workerId: number): void {
    this.members.delete(workerId);
    for (const flight of [...this.inflight.values()]) {
      flight.waiting.delete(workerId);
      if (flight.waiting.size === 0) flight.done();
    }
  }

  /** Sends a change to every connected worker; resolves when every member acknowledged it, or at the deadline. */
  broadcast(change: { op: 'add'; entry: RevocationEntry; queued?: boolean } | { op: 'del'; id: string }): Promise<void> {
    const seq = (this.seq = this.seq >= 0x7fffffff ? 1 : this.seq + 1);
    const message: RevocationRelayMessage = { bulwarkRevocation: 1, seq, ...change };
    const waiting = new Set<number>();
    for (const worker of Object.values(this.cluster?.workers ?? {})) {
      if (worker === undefined || !worker.isConnected()) continue;
      // Workers that have not said hello get it too (their list may be starting); only members are waited for.
      if (this.sendTo(worker, message) && this.members.has(worker.id)) waiting.add(worker.id);
    }
    if (waiting.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.inflight.delete(seq);
        this.onEvent?.({
          type: 'relay_timeout',
          detail: `workers ${[...waiting].join(', ')} did not acknowledge within ${this.ackTimeoutMs} ms`,
        });
        resolve();
      }, this.ackTimeoutMs);
      timer.unref();
      this.inflight.set(seq, {
        waiting,
        done: () => {
          clearTimeout(timer);
          this.inflight.delete(seq);
          resolve();
        },
      });
    });
  }

  async close(): Promise<void> {
    for (const flight of [...this.inflight.values()]) flight.done();
    const list = this.current;
    this.current = null;
    this.currentStore = null;
    await list?.close();
  }

  private sendTo(worker: RelayPeer, message: RevocationRelayMessage): boolean {
    try {
      if (!worker.isConnected()) return false;
      worker.send(message);
      return true;
    } catch {
      return false;
    }
  }
}

/** The primary's store: the shared one (memory or Redis), with every change relayed to the workers. */
class PrimaryRelayStore implements RevocationStore {
  readonly kind: 'memory' | 'redis';
  private readonly inner: RevocationStore;
  private readonly host: RevocationPrimaryHost;
  private sink: RevocationSink | null = null;

  constructor(inner: RevocationStore, host: RevocationPrimaryHost) {
    this.inner = inner;
    this.kind = inner.kind;
    this.host = host;
  }

  get available(): boolean {
    return this.inner.available;
  }

  get lastSyncAt(): number | null {
    return this.inner.lastSyncAt;
  }

  start(sink: RevocationSink): Promise<void> {
    this.sink = sink;
    return this.inner.start(sink);
  }

  async add(entry: RevocationEntry): Promise<StoreWrite> {
    const write = await this.inner.add(entry);
    await this.host.broadcast({ op: 'add', entry, ...(write === 'queued' ? { queued: true } : {}) });
    return write;
  }

  async remove(id: string): Promise<boolean> {
    // Memory: drop here before relaying, so a hello answered in between cannot hand the entry back.
    const removed = this.kind === 'memory' ? (this.sink?.drop(id) ?? false) : await this.inner.remove(id);
    if (removed) await this.host.broadcast({ op: 'del', id });
    return removed;
  }

  /** A change a worker made (memory store only: with Redis, workers write to Redis themselves). */
  async fromWorker(message: RevocationRelayMessage): Promise<void> {
    const sink = this.sink;
    if (sink === null || this.kind !== 'memory') return;
    if (message.op === 'add') {
      const entry = parseEntry(message.entry);
      if (entry === null) return;
      sink.apply(entry);
      await this.host.broadcast({ op: 'add', entry });
    } else if (message.op === 'del' && typeof message.id === 'string') {
      if (sink.drop(message.id)) await this.host.broadcast({ op: 'del', id: message.id });
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
