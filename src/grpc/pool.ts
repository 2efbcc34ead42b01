/**
 * Pooled HTTP/2 client sessions to gRPC upstreams. gRPC multiplexes every call of a
 * client over few connections; the gateway does the same towards each endpoint:
 * streams go to an open session with room under the peer's
 * SETTINGS_MAX_CONCURRENT_STREAMS, a new session opens only when all are full, and a
 * session that received GOAWAY (or closed) takes no new streams; the next call
 * reconnects.
 */
import {
  connect,
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type OutgoingHttpHeaders,
  type SecureClientSessionOptions,
  type Settings,
} from 'node:http2';
import { BulwarkError } from '../core/errors.js';
import type { Upstream } from '../gateway/upstream.js';
import { GrpcStatus } from './status.js';

export interface GrpcUpstreamPoolOptions {
  /** Time to establish a session (TCP, TLS, preface); then the calls waiting on it fail UNAVAILABLE. */
  connectTimeoutMs?: number;
  /** A session with no stream for this long is closed. */
  idleTimeoutMs?: number;
  /** Sessions per endpoint; more open only when every one is at its stream limit. */
  maxSessionsPerOrigin?: number;
  /** Our own cap on streams per session, below whatever the peer allows. */
  maxStreamsPerSession?: number;
  /** Calls allowed to wait for a free stream when every session is full; beyond, RESOURCE_EXHAUSTED. */
  maxQueued?: number;
  /** How long a call may wait for a free stream before UNAVAILABLE. */
  queueTimeoutMs?: number;
  /**
   * Per-stream receive window towards the upstream. Bigger than HTTP/2's 64 KiB default so one
   * large message does not take dozens of round trips; backpressure still holds, the window
   * is only refilled as the client reads.
   */
  streamWindowBytes?: number;
  /** Connection-level receive window. */
  sessionWindowBytes?: number;
  /** For `https://` endpoints: CA bundle, SNI name, client certificate… (ALPN is always `h2`). */
  tls?: Pick<SecureClientSessionOptions, 'ca' | 'cert' | 'key' | 'servername' | 'rejectUnauthorized'>;
}

const DEFAULTS = {
  connectTimeoutMs: 5_000,
  idleTimeoutMs: 60_000,
  maxSessionsPerOrigin: 4,
  maxStreamsPerSession: 10_000,
  maxQueued: 10_000,
  queueTimeoutMs: 5_000,
  streamWindowBytes: 1 << 20,
  sessionWindowBytes: 16 << 20,
} satisfies Required<Omit<GrpcUpstreamPoolOptions, 'tls'>>;

/** Stream ids are 31-bit; a session close to running out is retired before it does. */
const STREAM_ID_LIMIT = 2 ** 31 - 1 - 2 * 100_000;
/** Until the peer's SETTINGS arrive, assume the spec's recommended minimum. */
const INITIAL_PEER_STREAMS = 100;

/** An object that takes the pool's answer (saves a callback closure per call). */
export interface GrpcStreamReceiver {
  onStream(error: BulwarkError | null, stream: ClientHttp2Stream | null): void;
}

/** The pool's answer: a stream on some upstream session, or why there is none. */
export type GrpcStreamCallback = ((error: BulwarkError | null, stream: ClientHttp2Stream | null) => void) | GrpcStreamReceiver;

function deliver(callback: GrpcStreamCallback, error: BulwarkError | null, stream: ClientHttp2Stream | null): void {
  if (typeof callback === 'function') callback(error, stream);
  else callback.onStream(error, stream);
}

/** `session.request` copies its options: two shared objects instead of one per call. */
const REQUEST_END_STREAM = Object.freeze({ endStream: true });
const REQUEST_OPEN = Object.freeze({ endStream: false });

/** The slot a pooled stream counts against (see onPooledStreamClose). */
const SLOT = Symbol('bulwark.grpcSlot');
interface SlotStream {
  [SLOT]?: SessionSlot;
}

/** One shared 'close' listener for every pooled stream: frees its slot's place. */
function onPooledStreamClose(this: ClientHttp2Stream): void {
  const slot = (this as SlotStream)[SLOT]!;
  if (--slot.active === 0) {
    if (!slot.usable) {
      if (!slot.session.closed) slot.session.close();
    } else {
      slot.becameIdle();
    }
  }
  slot.owner.streamClosed();
}

/** A call waiting for a stream; `cancel()` when the client goes away first. */
export interface PendingGrpcStream {
  cancel(): void;
}

class SessionSlot {
  readonly session: ClientHttp2Session;
  readonly owner: OriginSessions;
  active: number;
  maxStreams: number;
  /** Streams opened on the session so far: client stream ids are 1, 3, 5…, so the next id is 2 × opened + 1. */
  opened: number;
  /** False after GOAWAY, an error, or near stream-id exhaustion: no new streams. */
  usable: boolean;

  /** When the last stream closed (performance.now()); meaningful while `active` is 0. */
  private idleSince: number;
  /** Checks for idleness; armed when the session goes idle, not touched by each call. */
  private idleTimer: NodeJS.Timeout | null;

  constructor(session: ClientHttp2Session, owner: OriginSessions, maxStreams: number) {
    this.session = session;
    this.owner = owner;
    this.active = 0;
    this.maxStreams = maxStreams;
    this.opened = 0;
    this.usable = true;
    this.idleSince = 0;
    this.idleTimer = null;
  }

  /**
   * No stream open any more. Idle means no open stream for `idleTimeoutMs` (a quiet
   * long-lived call keeps its session); the timer is armed only when none is, so a busy
   * session costs one clock read per time it empties, not a timer refresh per frame.
   */
  becameIdle(): void {
    this.idleSince = performance.now();
    if (this.idleTimer === null) this.armIdle(this.owner.options.idleTimeoutMs);
  }

  private armIdle(ms: number): void {
    this.idleTimer = setTimeout(checkIdle, ms, this);
    this.idleTimer.unref();
  }

  checkIdle(): void {
    this.idleTimer = null;
    if (this.active !== 0 || !this.usable) return;
    const left = this.owner.options.idleTimeoutMs - (performance.now() - this.idleSince);
    if (left > 0) return this.armIdle(Math.ceil(left));
    this.owner.closeIdle(this);
  }

  /** The session is gone: nothing left to check. */
  stopIdle(): void {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }
}

function checkIdle(slot: SessionSlot): void {
  slot.checkIdle();
}

class Waiter implements PendingGrpcStream {
  readonly headers: OutgoingHttpHeaders;
  readonly endStream: boolean;
  readonly callback: GrpcStreamCallback;
  readonly origin: OriginSessions;
  timer: NodeJS.Timeout | null;
  settled: boolean;

  constructor(origin: OriginSessions, headers: OutgoingHttpHeaders, endStream: boolean, callback: GrpcStreamCallback) {
    this.origin = origin;
    this.headers = headers;
    this.endStream = endStream;
    this.callback = callback;
    this.settled = false;
    this.timer = setTimeout(() => this.expire(), origin.options.queueTimeoutMs);
  }

  cancel(): void {
    if (this.settled) return;
    this.settled = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.origin.forget(this);
  }

  private expire(): void {
    if (this.settled) return;
    this.settled = true;
    this.timer = null;
    this.origin.forget(this);
    deliver(
      this.callback,
      new BulwarkError('upstream.no_healthy_endpoint', undefined, { context: { reason: 'stream_queue_timeout' } }),
      null,
    );
  }
}

/** The sessions to one endpoint origin. */
class OriginSessions {
  readonly origin: string;
  readonly options: Required<Omit<GrpcUpstreamPoolOptions, 'tls'>>;
  private readonly tls: GrpcUpstreamPoolOptions['tls'];
  private readonly slots: SessionSlot[];
  private readonly waiters: Waiter[];
  /** The endpoint's SETTINGS_MAX_CONCURRENT_STREAMS as last seen: a new session assumes it until its own SETTINGS arrive. */
  private peerStreams: number;
  private closed: boolean;

  constructor(origin: string, options: Required<Omit<GrpcUpstreamPoolOptions, 'tls'>>, tls: GrpcUpstreamPoolOptions['tls']) {
    this.origin = origin;
    this.options = options;
    this.tls = tls;
    this.slots = [];
    this.waiters = [];
    this.peerStreams = INITIAL_PEER_STREAMS;
    this.closed = false;
  }

  get activeStreams(): number {
    let n = 0;
    for (const slot of this.slots) n += slot.active;
    return n;
  }

  get sessionCount(): number {
    return this.slots.length;
  }

  open(headers: OutgoingHttpHeaders, endStream: boolean, callback: GrpcStreamCallback): PendingGrpcStream | null {
    if (this.closed) {
      deliver(callback, new BulwarkError('gateway.shutting_down'), null);
      return null;
    }
    const slot = this.available();
    if (slot !== null) {
      this.start(slot, headers, endStream, callback);
      return null;
    }
    if (this.waiters.length >= this.options.maxQueued) {
      deliver(
        callback,
        new BulwarkError('upstream.no_healthy_endpoint', undefined, {
          context: { reason: 'stream_queue_full', grpcStatus: GrpcStatus.RESOURCE_EXHAUSTED },
        }),
        null,
      );
      return null;
    }
    const waiter = new Waiter(this, headers, endStream, callback);
    this.waiters.push(waiter);
    return waiter;
  }

  forget(waiter: Waiter): void {
    const i = this.waiters.indexOf(waiter);
    if (i >= 0) this.waiters.splice(i, 1);
  }

  /** A session with room, opening one when all are full and the cap allows. */
  private available(): SessionSlot | null {
    const slots = this.slots;
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i]!;
      if (slot.usable && slot.active < slot.maxStreams) return slot;
    }
    return slots.length < this.options.maxSessionsPerOrigin ? this.connect() : null;
  }

  private start(slot: SessionSlot, headers: OutgoingHttpHeaders, endStream: boolean, callback: GrpcStreamCallback): void {
    let stream: ClientHttp2Stream;
    try {
      stream = slot.session.request(headers, endStream ? REQUEST_END_STREAM : REQUEST_OPEN);
    } catch (err) {
      // Node refuses the headers (a value it cannot encode) or the session just died.
      const code = (err as { code?: string }).code;
      if (code === 'ERR_HTTP2_INVALID_SESSION' || code === 'ERR_HTTP2_GOAWAY_SESSION' || code === 'ERR_HTTP2_OUT_OF_STREAMS') {
        this.retire(slot);
        deliver(callback, new BulwarkError('upstream.reset', undefined, { cause: err, context: { reason: code } }), null);
      } else {
        deliver(callback, new BulwarkError('request.malformed', undefined, { cause: err, context: { reason: code } }), null);
      }
      return;
    }
    slot.active++;
    (stream as SlotStream)[SLOT] = slot;
    stream.on('close', onPooledStreamClose);
    // The session's own counter (`session.state`) builds a whole state object per read: count here.
    if (2 * ++slot.opened + 1 > STREAM_ID_LIMIT) this.retire(slot);
    deliver(callback, null, stream);
  }

  /** A pooled stream closed: its place may go to a waiting call. */
  streamClosed(): void {
    if (this.waiters.length > 0) this.serveWaiters();
  }

  private serveWaiters(): void {
    while (this.waiters.length > 0) {
      const slot = this.available();
      if (slot === null) return;
      const waiter = this.waiters.shift()!;
      if (waiter.settled) continue;
      waiter.settled = true;
      if (waiter.timer !== null) clearTimeout(waiter.timer);
      this.start(slot, waiter.headers, waiter.endStream, waiter.callback);
    }
  }

  private connect(): SessionSlot {
    const o = this.options;
    const session = connect(this.origin, {
      ...this.tls,
      ALPNProtocols: ['h2'],
      settings: { enablePush: false, initialWindowSize: o.streamWindowBytes } satisfies Settings,
      peerMaxConcurrentStreams: INITIAL_PEER_STREAMS,
    });
    const slot = new SessionSlot(session, this, Math.min(this.peerStreams, o.maxStreamsPerSession));
    this.slots.push(slot);
    let connectTimer: NodeJS.Timeout | null = setTimeout(() => {
      connectTimer = null;
      session.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' }));
    }, o.connectTimeoutMs);
    session.once('connect', () => {
      if (connectTimer !== null) clearTimeout(connectTimer);
      connectTimer = null;
      try {
        session.setLocalWindowSize(o.sessionWindowBytes);
      } catch {
        // The session closed in between; its streams report that.
      }
    });
    session.on('remoteSettings', (settings: Settings) => {
      const peer = settings.maxConcurrentStreams ?? 2 ** 32 - 1;
      this.peerStreams = peer;
      slot.maxStreams = Math.max(1, Math.min(peer, o.maxStreamsPerSession));
      this.serveWaiters();
    });
    session.once('goaway', () => this.retire(slot));
    // Session errors reach the streams on it (each call reports its own status); the listener
    // only keeps an emitted 'error' from becoming an uncaught exception.
    session.on('error', () => this.retire(slot));
    session.once('close', () => {
      if (connectTimer !== null) clearTimeout(connectTimer);
      connectTimer = null;
      slot.stopIdle();
      this.retire(slot);
    });
    // Idle from the start: a session nobody uses closes like one whose calls are over.
    slot.becameIdle();
    return slot;
  }

  /** A session without a stream for `idleTimeoutMs`: closed. */
  closeIdle(slot: SessionSlot): void {
    this.retire(slot);
    if (!slot.session.closed && !slot.session.destroyed) slot.session.close();
  }

  /** No new streams on this session; it closes once its last stream is done. */
  private retire(slot: SessionSlot): void {
    slot.usable = false;
    const i = this.slots.indexOf(slot);
    if (i < 0) return;
    this.slots.splice(i, 1);
    if (slot.active === 0 && !slot.session.closed && !slot.session.destroyed) slot.session.close();
    // Calls queued behind the full sessions may now get a new one.
    if (!this.closed) this.serveWaiters();
  }

  close(force: boolean): Promise<void> {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) {
      if (waiter.settled) continue;
      waiter.settled = true;
      if (waiter.timer !== null) clearTimeout(waiter.timer);
      deliver(waiter.callback, new BulwarkError('gateway.shutting_down'), null);
    }
    const slots = this.slots.splice(0);
    return Promise.all(
      slots.map(
        (slot) =>
          new Promise<void>((resolve) => {
            slot.usable = false;
            if (slot.session.destroyed) return resolve();
            if (force) {
              slot.session.destroy();
              return resolve();
            }
            slot.session.close(() => resolve());
          }),
      ),
    ).then(() => undefined);
  }
}

/**
 * The HTTP/2 sessions to one upstream's endpoints. Endpoints take calls in turn;
 * within one, streams share sessions up to the peer's concurrency limit.
 */
export class GrpcUpstreamPool {
  readonly name: string;
  private readonly origins: readonly OriginSessions[];
  private cursor: number;

  constructor(name: string, origins: readonly string[], options: GrpcUpstreamPoolOptions = {}) {
    const { tls, ...rest } = options;
    const resolved = { ...DEFAULTS };
    for (const [key, value] of Object.entries(rest) as [keyof typeof DEFAULTS, number | undefined][]) {
      if (value === undefined) continue;
      if (!Number.isInteger(value) || value < 1) throw new TypeError(`GrpcUpstreamPool: ${key} must be a positive integer`);
      resolved[key] = value;
    }
    for (const origin of origins) {
      if (!/^https?:\/\/[^/?#]+\/?$/.test(origin)) throw new TypeError(`GrpcUpstreamPool: ${origin} is not an http(s) origin`);
    }
    this.name = name;
    this.origins = origins.map((o) => new OriginSessions(o.replace(/\/$/, ''), resolved, tls));
    this.cursor = 0;
  }

  /**
   * Opens a stream on some endpoint. The callback runs synchronously when a session has
   * room, later when the call had to wait (then the returned handle cancels the wait).
   */
  open(headers: OutgoingHttpHeaders, endStream: boolean, callback: GrpcStreamCallback): PendingGrpcStream | null {
    const origins = this.origins;
    if (origins.length === 0) {
      deliver(callback, new BulwarkError('upstream.no_healthy_endpoint'), null);
      return null;
    }
    const origin = origins[this.cursor]!;
    this.cursor = this.cursor + 1 === origins.length ? 0 : this.cursor + 1;
    return origin.open(headers, endStream, callback);
  }

  /** Open streams and sessions per endpoint origin (metrics, tests). */
  stats(): { origin: string; sessions: number; activeStreams: number }[] {
    return this.origins.map((o) => ({ origin: o.origin, sessions: o.sessionCount, activeStreams: o.activeStreams }));
  }

  /** Graceful: no new streams; resolves once open streams finished. `force` resets them instead. */
  close(force = false): Promise<void> {
    return Promise.all(this.origins.map((o) => o.close(force))).then(() => undefined);
  }
}

const pools = new WeakMap<Upstream, GrpcUpstreamPool>();

/**
 * The gRPC pool of a gateway upstream, made on first use. Keyed by the Upstream
 * object, so a reload that carries an upstream over keeps its warm sessions, and a
 * retired upstream's pool goes with it (close it with `closeGrpcPool`).
 */
export function grpcPoolFor(upstream: Upstream, options?: GrpcUpstreamPoolOptions): GrpcUpstreamPool {
  let pool = pools.get(upstream);
  if (pool === undefined) {
    pool = new GrpcUpstreamPool(
      upstream.name,
      upstream.endpoints.map((e) => e.origin),
      { connectTimeoutMs: upstream.timeouts.connectMs, ...options },
    );
    pools.set(upstream, pool);
  }
  return pool;
}

/** Closes the gRPC pool of a retired upstream, if it ever had one. */
export async function closeGrpcPool(upstream: Upstream, force = false): Promise<void> {
  const pool = pools.get(upstream);
  if (pool === undefined) return;
  pools.delete(upstream);
  await pool.close(force);
}
