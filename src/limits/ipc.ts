import type { Cluster, Worker } from 'node:cluster';
import { MemoryBackend, type BucketBackend, type LeaseGrant, type LeaseRequest, type SlotGrant } from './backend.js';

/**
 * Memory-store buckets shared by the workers of one instance: the cluster
 * primary owns them, workers lease tokens over IPC (see README.md for why this
 * and not a per-worker quota split).
 *
 * Wire format: a worker batches every operation of one event-loop turn into one
 * message, and the primary answers each batch with one message. Ops are tuples,
 * not objects, to keep the structured-clone cost of IPC small.
 */
type LeaseOp = ['l', number, string, number, number, number, number, number];
type AcquireOp = ['a', number, string, number, string];
type ReleaseOp = ['r', string, string];
type PingOp = ['p', number];
type Op = LeaseOp | AcquireOp | ReleaseOp | PingOp;
/** [id, …values]: lease → granted, remaining, waitMs, resetMs; acquire → acquired (0/1), in flight; ping → nothing. */
type Reply = [number, ...number[]];

export interface LimitsRequestMessage {
  readonly bulwarkLimits: 1;
  readonly ops: Op[];
}
export interface LimitsReplyMessage {
  readonly bulwarkLimits: 1;
  readonly replies: Reply[];
}
export type LimitsMessage = LimitsRequestMessage | LimitsReplyMessage;

/**
 * Whether an IPC message belongs to the limits protocol. The primary's and the
 * workers' own message handlers must skip these (they share the channel).
 */
export function isLimitsMessage(message: unknown): message is LimitsMessage {
  return typeof message === 'object' && message !== null && (message as { bulwarkLimits?: unknown }).bulwarkLimits === 1;
}

/** A worker's end of the channel to the primary (shared by every protocol on it: limits, revocation). */
export interface IpcChannel<M = LimitsRequestMessage> {
  readonly connected: boolean;
  send(message: M): void;
  /** Subscribes to incoming messages; returns the unsubscribe function. */
  subscribe(handler: (message: unknown) => void): () => void;
}

/** The worker's own process channel (`process.send`). */
export function processChannel<M = LimitsRequestMessage>(): IpcChannel<M> {
  return {
    get connected() {
      return process.connected === true && typeof process.send === 'function';
    },
    send(message) {
      process.send?.(message);
    },
    subscribe(handler) {
      process.on('message', handler);
      return () => process.off('message', handler);
    },
  };
}

interface Waiter {
  resolve: (reply: Reply) => void;
  reject: (err: Error) => void;
  at: number;
}

/** Worker side: a BucketBackend whose buckets live in the primary. */
export class IpcBackend implements BucketBackend {
  readonly kind = 'primary-ipc';
  private readonly channel: IpcChannel;
  private readonly waiters: Map<number, Waiter>;
  private queue: Op[];
  private scheduled: boolean;
  private seq: number;
  private readonly unsubscribe: () => void;
  private readonly sweeper: NodeJS.Timeout;
  private readonly flushBound: () => void;

  constructor(channel: IpcChannel, options: { abandonAfterMs?: number } = {}) {
    this.channel = channel;
    this.waiters = new Map();
    this.queue = [];
    this.scheduled = false;
    this.seq = 0;
    this.flushBound = () => this.flush();
    this.unsubscribe = channel.subscribe((message) => {
      if (isLimitsMessage(message) && 'replies' in message) this.receive(message.replies);
    });
    // Callers time out through the guard; this only frees waiters the primary will never answer.
    const abandonAfter = options.abandonAfterMs ?? 5_000;
    this.sweeper = setInterval(() => {
      const cutoff = performance.now() - abandonAfter;
      for (const [id, waiter] of this.waiters) {
        if (waiter.at < cutoff) {
          this.waiters.delete(id);
          waiter.reject(new Error('no reply from the primary'));
        }
      }
    }, 1000);
    this.sweeper.unref();
  }

  get ready(): boolean {
    return this.channel.connected;
  }

  async lease(r: LeaseRequest): Promise<LeaseGrant> {
    const id = this.nextId();
    const reply = await this.call(id, ['l', id, r.key, r.emission, r.capacity, r.want, r.min, r.ret]);
    return { granted: reply[1]!, remaining: reply[2]!, waitMs: reply[3]!, resetMs: reply[4]! };
  }

  async acquire(key: string, limit: number, member: string): Promise<SlotGrant> {
    const id = this.nextId();
    const reply = await this.call(id, ['a', id, key, limit, member]);
    return { acquired: reply[1] === 1, inFlight: reply[2]! };
  }

  release(key: string, member: string): void {
    this.enqueue(['r', key, member]);
  }

  async ping(): Promise<void> {
    const id = this.nextId();
    await this.call(id, ['p', id]);
  }

  close(): Promise<void> {
    this.unsubscribe();
    clearInterval(this.sweeper);
    if (this.queue.length > 0) this.flush();
    for (const waiter of this.waiters.values()) waiter.reject(new Error('closed'));
    this.waiters.clear();
    return Promise.resolve();
  }

  private nextId(): number {
    this.seq = this.seq >= 0x7fffffff ? 1 : this.seq + 1;
    return this.seq;
  }

  private call(id: number, op: Op): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      this.waiters.set(id, { resolve, reject, at: performance.now() });
      this.enqueue(op);
    });
  }

  private enqueue(op: Op): void {
    this.queue.push(op);
    if (!this.scheduled) {
      this.scheduled = true;
      // Everything asked during this turn of the event loop travels in one message.
      setImmediate(this.flushBound);
    }
  }

  private flush(): void {
    this.scheduled = false;
    const ops = this.queue;
    if (ops.length === 0) return;
    this.queue = [];
    try {
      if (!this.channel.connected) throw new Error('IPC channel closed');
      this.channel.send({ bulwarkLimits: 1, ops });
    } catch (err) {
      for (const op of ops) {
        if (op[0] === 'r') continue;
        const waiter = this.waiters.get(op[1]);
        if (waiter === undefined) continue;
        this.waiters.delete(op[1]);
        waiter.reject(err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  private receive(replies: Reply[]): void {
    for (const reply of replies) {
      const waiter = this.waiters.get(reply[0]);
      if (waiter === undefined) continue;
      this.waiters.delete(reply[0]);
      waiter.resolve(reply);
    }
  }
}

/**
 * Primary side: owns the instance's memory buckets and concurrency counts and
 * answers workers. Slots a worker held are freed when it exits, so a crashed
 * worker cannot leak concurrency.
 *
 * The lead process wires it with `host.attach(cluster)` before forking; the
 * workers' message handlers must ignore `isLimitsMessage` messages.
 */
export class LimitsPrimaryHost {
  readonly backend: MemoryBackend;
  private readonly held: Map<string | number, Map<string, string>>;

  constructor(options: { maxKeys?: number; ghostSlots?: number; clock?: () => number } = {}) {
    this.backend = new MemoryBackend(options);
    this.held = new Map();
  }

  /** Answers one message from `owner`; false when it is not a limits message. */
  handle(message: unknown, owner: string | number, reply: (message: LimitsReplyMessage) => void): boolean {
    if (!isLimitsMessage(message) || !('ops' in message)) return false;
    const replies: Reply[] = [];
    const backend = this.backend;
    for (const op of message.ops) {
      switch (op[0]) {
        case 'l': {
          const g = backend.leaseNow({ key: op[2], emission: op[3], capacity: op[4], want: op[5], min: op[6], ret: op[7] });
          replies.push([op[1], g.granted, g.remaining, g.waitMs, g.resetMs]);
          break;
        }
        case 'a': {
          const g = backend.acquireNow(op[2], op[3]);
          if (g.acquired) this.holder(owner).set(op[4], op[2]);
          replies.push([op[1], g.acquired ? 1 : 0, g.inFlight]);
          break;
        }
        case 'r': {
          const slots = this.held.get(owner);
          if (slots?.delete(op[2]) === true) backend.release(op[1]);
          break;
        }
        case 'p':
          replies.push([op[1]]);
          break;
      }
    }
    if (replies.length > 0) reply({ bulwarkLimits: 1, replies });
    return true;
  }

  /** Frees every slot `owner` still holds (it exited or restarted). */
  forget(owner: string | number): void {
    const slots = this.held.get(owner);
    if (slots === undefined) return;
    for (const key of slots.values()) this.backend.release(key);
    this.held.delete(owner);
  }

  /** Serves the workers of `cluster`; returns a function that detaches. */
  attach(cluster: Cluster): () => void {
    const onMessage = (worker: Worker, message: unknown) => {
      this.handle(message, worker.id, (answer) => {
        if (worker.isConnected()) worker.send(answer);
      });
    };
    const onExit = (worker: Worker) => this.forget(worker.id);
    cluster.on('message', onMessage);
    cluster.on('exit', onExit);
    return () => {
      cluster.off('message', onMessage);
      cluster.off('exit', onExit);
    };
  }

  private holder(owner: string | number): Map<string, string> {
    let slots = this.held.get(owner);
    if (slots === undefined) {
      slots = new Map();
      this.held.set(owner, slots);
    }
    return slots;
  }
}
