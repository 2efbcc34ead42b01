/**
 * The audit pipeline: `record()` on the request path → bounded in-memory queue
 * → (off the request path) mask, chain, serialize → WAL (group commit) → sinks,
 * each at its own pace, with retries and backoff.
 *
 *   record()      sync, no I/O: assigns id/ts/seq, queues, returns. Full queue:
 *                 `block` → rejected (the gateway answers 503 audit.unavailable),
 *                 `drop` → counted, a gap marker takes the events' place in the chain.
 *   drain         setImmediate batches (≤ 2,048 records, ~2 ms a tick): builds records,
 *                 masks them, appends to the chain (hash), serializes each once, straight
 *                 into byte chunks; adds checkpoints; stops while the WAL is at its quota.
 *   commit        one writev (+ one fdatasync in durable mode) per group of records;
 *                 `recordDurable` resolves when its record's group is committed.
 *   sinks         one loop per sink from its cursor: committed entries from memory (the
 *                 WAL's bytes: a file sink writes them as they are), or read back from
 *                 the WAL when it fell behind (outage, restart).
 *                 A segment is deleted when every sink is past it.
 *
 * Restart: the previous process's WAL is replayed to every sink from its saved
 * cursor (sinks are idempotent by id), its chain — if it did not close cleanly —
 * is sealed with a `recovered` final checkpoint, and a new chain starts with a
 * `start` record linking to it.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import type { RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import type { Logger } from '../telemetry/logger.js';
import { ChainWriter, newChainId, storedLineMaxBytes, writeStoredLine, type ChainedRecord } from './chain.js';
import { AuditClock, formatTimestamp, UuidV7 } from './clock.js';
import {
  snapshotBusinessEvent,
  compileExtraFields,
  eventFromContext,
  type AuditInput,
  type BusinessEventInput,
  type ExtraFieldSelection,
  type RequestEventInput,
  type RequestOutcome,
} from './event.js';
import { loadSigningKey, type SigningKey } from './keys.js';
import { compileMasking, Masker, toJsonData } from './mask.js';
import { AUDIT_DEFAULTS, sinkIdentity, type AuditConfig } from './schema.js';
import { createSink } from './sinks/factory.js';
import { indexedColumns, recordOf, type AuditSink } from './sinks/sink.js';
import { claimSlot, staleSlots, tryClaim, type ClaimedSlot } from './slot.js';
import { LineChunks, Wal, type ChunkEntry, type WalEntry, type WalReader } from './wal.js';

export type EnqueueResult =
  | { readonly status: 'accepted'; readonly id: string; readonly seq: number }
  | { readonly status: 'dropped'; readonly seq: number }
  | { readonly status: 'rejected'; readonly reason: 'queue_full' | 'closed'; readonly error: BulwarkError }
  | { readonly status: 'disabled' };

export type DurableResult =
  | { readonly status: 'accepted'; readonly id: string; readonly seq: number }
  | { readonly status: 'dropped'; readonly seq: number }
  | { readonly status: 'disabled' };

export interface SinkStats {
  name: string;
  state: 'opening' | 'ok' | 'retrying' | 'closed';
  /** Entries this sink took in this process's lifetime. */
  delivered: number;
  /** Committed entries it has not taken yet. */
  lag: number;
  errors: number;
  lastError: string | null;
}

export interface AuditStats {
  enabled: boolean;
  chain: string | null;
  slot: number | null;
  queueDepth: number;
  queueCapacity: number;
  /** Events accepted by record(). */
  recorded: number;
  /** Refused under `block` (each one a 503). */
  rejected: number;
  /** Discarded under `drop` (each one inside a gap marker). */
  dropped: number;
  gaps: number;
  checkpoints: number;
  /** Records this process wrote to the WAL (events, gaps, checkpoints, start). */
  written: number;
  walBytes: number;
  walSegments: number;
  walQuotaBytes: number;
  /** The WAL is at its quota: the queue is filling and `whenFull` is about to apply. */
  walFull: boolean;
  walErrors: number;
  sinks: SinkStats[];
}

export interface AuditLog {
  readonly enabled: boolean;
  /** `durability: durable`: a request's event is committed (fdatasync'ed) before its response ends. */
  readonly durable: boolean;
  /** `whenFull: block`: an event the log cannot take is refused, never served unaudited. */
  readonly blocksWhenFull: boolean;
  /** This process's chain id (null when disabled). */
  readonly chainId: string | null;
  /**
   * Never blocks on I/O. Business events with a bad shape throw TypeError (a caller bug).
   * `reserved`: the event takes the queue place `reserve()` held for it.
   */
  record(event: AuditInput, reserved?: boolean): EnqueueResult;
  /**
   * Whether a request may start: false under \`whenFull: block\` while the queue is full or the
   * log is closed, so the gateway refuses it (503) rather than serve it unaudited. Cheap.
   */
  accepting(): boolean;
  /**
   * `accepting()`, and under \`whenFull: block\` a queue place held for the request's event until it
   * is recorded (`record(event, true)`): requests admitted together cannot outnumber the places
   * left, so none of them is served and then finds the queue full. True for a log that never refuses.
   */
  reserve(): boolean;
  /**
   * Resolves once the event is committed to the WAL — fdatasync'ed in `durable`
   * mode, written in `fast` mode; under `drop`, once the gap marker standing for
   * it is. Rejects with BulwarkError `audit.unavailable` when refused (`block`, closed).
   */
  recordDurable(event: AuditInput, reserved?: boolean): Promise<DurableResult>;
  /** A request event from a context, with this log's configured extra fields. */
  fromContext(ctx: RequestContext, outcome: RequestOutcome): RequestEventInput;
  /** Everything recorded so far is in the WAL and taken by every sink. Rejects on timeout. */
  flush(options?: { timeoutMs?: number }): Promise<void>;
  /** Writes the rest, seals the chain, gives sinks `closeTimeoutMs`, releases the WAL slot. */
  close(): Promise<void>;
  stats(): AuditStats;
}

export interface AuditLogOptions {
  logger: Logger;
  /** `bulwark/<version>` by default; written in each chain's start record and the webhook user agent. */
  software?: string;
  /** Sinks to use instead of the configured ones (library users with their own sink; tests). */
  sinks?: AuditSink[];
  /**
   * How long after opening to look for WAL slots no process owns (their owner died, or the
   * worker count shrank) and deliver what they hold; default 5 s, so restarting workers
   * reclaim their own slots first. `false`: never (always the case with `sinks`, which one
   * log at a time can use).
   */
  orphanDrainDelayMs?: number | false;
}

// ---------------------------------------------------------------------------

const EVENT = 0;
const GAP = 1;

interface Waiter {
  resolve(result: DurableResult): void;
  reject(error: Error): void;
}

interface EventItem {
  readonly type: typeof EVENT;
  readonly input: AuditInput;
  readonly ns: bigint;
  readonly seq: number;
  readonly id: string;
  waiters: Waiter[] | null;
}

interface GapItem {
  readonly type: typeof GAP;
  readonly id: string;
  readonly firstNs: bigint;
  readonly fromSeq: number;
  lastNs: bigint;
  toSeq: number;
  count: number;
  waiters: Waiter[] | null;
}

type QueueItem = EventItem | GapItem;

/** Records handed to the WAL but not yet committed, with whom to tell. */
interface PendingWaiter {
  waiter: Waiter;
  result: DurableResult;
}

class SinkRunner {
  readonly sink: AuditSink;
  readonly key: string;
  cursor: number;
  delivered = 0;
  errors = 0;
  consecutiveFailures = 0;
  lastError: string | null = null;
  lastLoggedAt = 0;
  state: SinkStats['state'] = 'opening';
  reader: WalReader | null = null;
  /** Ends the wait for new entries (a commit calls it). */
  wake: (() => void) | null = null;
  /** Ends a backoff or pacing sleep early (close; a flush ends pacing only). */
  interrupt: (() => void) | null = null;
  /** Whether the sleep in progress is pacing (see SINK_PACE_MS), not backoff. */
  pacing = false;
  stopped = false;
  done: Promise<void> = Promise.resolve();

  constructor(sink: AuditSink, key: string, cursor: number) {
    this.sink = sink;
    this.key = key;
    this.cursor = cursor;
  }
}

/** Entries kept in memory for sinks (beyond this, a lagging sink reads the WAL back from disk). */
const TAIL_MAX_BYTES = 32 * 1024 * 1024;
/** Records built per drain tick: bounded so one tick never holds the event loop long. */
const DRAIN_BATCH = 2048;
/**
 * …and bounded in time: the commit, the sinks (a file batch is several fs
 * round trips, each waiting for a turn of the loop) and the gateway's requests
 * run between ticks. A 2,048-record tick holds the loop for tens of ms; the
 * sinks then fall behind the in-memory tail and read back from disk, which
 * costs more than the loop turns saved.
 */
const DRAIN_SLICE_MS = 2;
/** Serialized but uncommitted bytes before the drain waits for the WAL. */
const MAX_PENDING_BYTES = 8 * 1024 * 1024;
const MAINTENANCE_MS = 250;
const CURSOR_SAVE_MS = 1000;
const FAST_SYNC_MS = 1000;
/** `fast` mode: the WAL is written at most this often (ms) while the log is open and nobody waits for a flush. */
const FAST_COMMIT_MS = 5;
const SINK_LOG_EVERY_MS = 30_000;
/**
 * A sink that is caught up waits this long before writing a part batch. Under
 * load every commit would otherwise wake it for a few records, and each write
 * (a writev, a stat, an fs round trip per call) costs more than the records it
 * carries; the WAL holds them meanwhile. A flush or close does not wait.
 */
const SINK_PACE_MS = 10;

function unavailable(reason: string): BulwarkError {
  return new BulwarkError('audit.unavailable', undefined, { context: { reason } });
}

// Preallocated: a refusal under load must not cost an Error (and its stack trace) per request.
const REJECTED_FULL: EnqueueResult = Object.freeze({
  status: 'rejected',
  reason: 'queue_full',
  error: unavailable('queue_full'),
});
const REJECTED_CLOSED: EnqueueResult = Object.freeze({ status: 'rejected', reason: 'closed', error: unavailable('closed') });
const DISABLED: EnqueueResult & DurableResult = Object.freeze({ status: 'disabled' });

function defaultSoftware(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return `bulwark/${pkg.version ?? 'unknown'}`;
  } catch {
    return 'bulwark';
  }
}

/** Whether `work` settled within `ms` (its timer cleared either way, so it never holds the process). */
async function within(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function jitter(ms: number): number {
  return Math.round(ms * (0.5 + Math.random() * 0.5));
}

/**
 * The WAL directory's id, made once and kept in it (`wal-id`): start records carry it, so verify can tell
 * the lineages of two gateways on one host apart (both have a slot 0). Workers sharing the directory race
 * to make it; the first file wins and the others read it.
 */
async function walIdentity(dir: string): Promise<string> {
  const path = join(dir, 'wal-id');
  const read = async () => (await readFile(path, 'utf8')).trim();
  try {
    const id = await read();
    if (id !== '') return id;
  } catch {
    // not made yet
  }
  const id = randomBytes(8).toString('hex');
  try {
    await writeFile(path, `${id}\n`, { flag: 'wx' });
    return id;
  } catch {
    return read();
  }
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

class DisabledAuditLog implements AuditLog {
  readonly enabled = false;
  readonly durable = false;
  readonly blocksWhenFull = false;
  readonly chainId = null;
  record(): EnqueueResult {
    return DISABLED;
  }
  async recordDurable(): Promise<DurableResult> {
    return DISABLED;
  }
  fromContext(ctx: RequestContext, outcome: RequestOutcome): RequestEventInput {
    return eventFromContext(ctx, outcome);
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  accepting(): boolean {
    return true;
  }
  reserve(): boolean {
    return true;
  }

  stats(): AuditStats {
    return {
      enabled: false,
      chain: null,
      slot: null,
      queueDepth: 0,
      queueCapacity: 0,
      recorded: 0,
      rejected: 0,
      dropped: 0,
      gaps: 0,
      checkpoints: 0,
      written: 0,
      walBytes: 0,
      walSegments: 0,
      walQuotaBytes: 0,
      walFull: false,
      walErrors: 0,
      sinks: [],
    };
  }
}

class AuditLogImpl implements AuditLog {
  readonly enabled = true;
  readonly chainId: string;

  // config, fixed for the life of the log
  readonly #durable: boolean;
  readonly #block: boolean;
  readonly #maxEvents: number;
  /** Queue places `reserve()` holds for requests in flight (block mode). */
  #reserved = 0;
  readonly #fsyncIntervalMs: number;
  readonly #walMaxBytes: number;
  readonly #checkpointEvery: number;
  readonly #checkpointIntervalMs: number;
  readonly #closeTimeoutMs: number;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  readonly #software: string;
  readonly #extras: ExtraFieldSelection;
  readonly #masker: Masker;
  readonly #logger: Logger;

  readonly #slot: ClaimedSlot;
  readonly #wal: Wal;
  readonly #key: SigningKey | null;
  readonly #clock = new AuditClock();
  readonly #uuid = new UuidV7();
  readonly #chain: ChainWriter;
  readonly #runners: SinkRunner[];
  readonly #cursorFile: string;

  #state: 'open' | 'closing' | 'closed' = 'open';
  #closing: Promise<void> | null = null;
  #seq = 0;

  // queue (array + head index: shift() is O(n) on large arrays)
  #queue: (QueueItem | undefined)[] = [];
  #head = 0;
  #drainScheduled = false;
  #checkpointDue = false;
  #walFull = false;

  // serialized (into #chunks), not yet committed
  readonly #chunks = new LineChunks();
  /** Some sink stores indexed columns (SQL): take them from each record as it is built. */
  readonly #wantColumns: boolean;
  #pendingEntries: ChunkEntry[] = [];
  #pendingWaiters: PendingWaiter[] = [];
  #pendingBytes = 0;
  /** Bytes of the commit in flight: neither pending nor in the WAL's size yet, but on their way. */
  #inflightBytes = 0;
  #commitScheduled = false;
  /** A commit waiting out its window (group commit, or `fast` mode's pacing): a flush or close cuts it short. */
  #commitWindow: NodeJS.Timeout | null = null;
  #committing = false;
  #lastCommitAt = 0;
  #commitRetryMs = 0;
  #commitRetryTimer: NodeJS.Timeout | null = null;
  #unsynced = false;

  // committed entries kept in memory for sinks: #tail[#tailHead…] are indexes #tailStart…
  #tail: (ChunkEntry | undefined)[] = [];
  #tailHead = 0;
  #tailStart = 0;
  #tailBytes = 0;

  #idleWaiters: (() => void)[] = [];
  #progressWaiters: (() => void)[] = [];
  #cursorsDirty = false;
  #cursorsSavedAt = 0;
  #cursorWrite: Promise<void> = Promise.resolve();
  #releasing = false;
  #releaseAgain = false;
  #maintenance: NodeJS.Timeout | null = null;

  readonly #stats = { recorded: 0, rejected: 0, dropped: 0, gaps: 0, checkpoints: 0, written: 0, walErrors: 0 };

  constructor(
    config: AuditConfig,
    options: AuditLogOptions,
    slot: ClaimedSlot,
    wal: Wal,
    key: SigningKey | null,
    sinks: { sink: AuditSink; key: string }[],
  ) {
    this.#durable = isDurable(config);
    this.#block = (config.whenFull ?? 'block') === 'block';
    this.#maxEvents = config.queue?.maxEvents ?? AUDIT_DEFAULTS.queue.maxEvents;
    this.#fsyncIntervalMs = config.wal?.fsyncIntervalMs ?? AUDIT_DEFAULTS.wal.fsyncIntervalMs;
    this.#walMaxBytes = config.wal?.maxBytes ?? AUDIT_DEFAULTS.wal.maxBytes;
    this.#checkpointEvery = config.chain?.checkpointEvery ?? AUDIT_DEFAULTS.chain.checkpointEvery;
    this.#checkpointIntervalMs = config.chain?.checkpointIntervalMs ?? AUDIT_DEFAULTS.chain.checkpointIntervalMs;
    this.#closeTimeoutMs = config.closeTimeoutMs ?? AUDIT_DEFAULTS.closeTimeoutMs;
    this.#retryInitialMs = config.retry?.initialMs ?? AUDIT_DEFAULTS.retry.initialMs;
    this.#retryMaxMs = config.retry?.maxMs ?? AUDIT_DEFAULTS.retry.maxMs;
    this.#software = options.software ?? defaultSoftware();
    this.#extras = compileExtraFields(config.extraFields);
    this.#masker = new Masker(compileMasking(config.masking));
    this.#logger = options.logger.child({ component: 'audit' });
    this.#slot = slot;
    this.#wal = wal;
    this.#key = key;
    this.chainId = newChainId();
    this.#chain = new ChainWriter({ id: this.chainId, key, clock: this.#clock, uuid: this.#uuid });
    this.#runners = sinks.map(({ sink, key: k }) => new SinkRunner(sink, k, 0));
    this.#wantColumns = sinks.some(({ sink }) => sink.usesColumns === true);
    this.#cursorFile = join(slot.dir, 'cursors.json');
  }

  // -------------------------------------------------------------------------
  // startup

  async start(): Promise<void> {
    let after: { chain: string; n: number; hash: string } | null = null;
    const lastLine = this.#wal.lastLineAtOpen;
    if (lastLine !== null) {
      const last = JSON.parse(lastLine) as Record<string, unknown>;
      const chain = last['chain'];
      const n = last['n'];
      const hash = last['hash'];
      if (typeof chain !== 'string' || typeof n !== 'number' || typeof hash !== 'string') {
        this.#logger.warn(
          { slot: this.#slot.slot },
          'audit WAL ends in a record without chain fields; previous chain left unsealed',
        );
      } else if (last['kind'] === 'checkpoint' && last['final'] === true) {
        after = { chain, n, hash };
      } else {
        // The previous process died without closing: seal its chain so verify can tell a later truncation.
        const previous = new ChainWriter({
          id: chain,
          key: this.#key,
          clock: this.#clock,
          uuid: this.#uuid,
          n: n + 1,
          prev: hash,
        });
        const seal = previous.checkpoint('recovered', true);
        this.#pushPending(seal);
        this.#stats.checkpoints++;
        after = { chain, n: seal.record.n, hash: seal.record.hash };
        this.#logger.info(
          { chain, n: seal.record.n, hash: seal.record.hash },
          'sealed the chain of a previous process (it did not close cleanly)',
        );
      }
    }
    const startIndex = this.#wal.nextIndex + this.#pendingEntries.length;
    this.#pushPending(
      this.#chain.start({
        host: hostname(),
        pid: process.pid,
        slot: this.#slot.slot,
        software: this.#software,
        after,
        checkpoint: { every: this.#checkpointEvery, intervalMs: this.#checkpointIntervalMs },
        wal: await walIdentity(dirname(this.#slot.dir)),
      }),
    );

    const saved = await this.#loadCursors();
    // No readable cursor file while the WAL holds earlier entries: it was lost or corrupted, not absent
    // because the slot is new. Replaying everything still on disk (sinks are idempotent) beats losing it.
    const lost = saved === null && this.#wal.firstIndex < this.#wal.nextIndex;
    if (lost)
      this.#logger.error({ slot: this.#slot.slot }, 'audit sink cursors unreadable; replaying the whole WAL to every sink');
    for (const runner of this.#runners) {
      const cursor = saved?.[runner.key];
      // A sink new to this slot starts with the new chain; a known one resumes where it was (replay).
      // A cursor past the WAL's end cannot have been saved by a sink: it is corrupt, so replay instead of skipping.
      const valid = typeof cursor === 'number' && Number.isSafeInteger(cursor) && cursor >= 0 && cursor <= this.#wal.nextIndex;
      runner.cursor = valid
        ? Math.max(cursor, this.#wal.firstIndex)
        : lost || cursor !== undefined
          ? this.#wal.firstIndex
          : startIndex;
    }
    this.#tailStart = this.#wal.nextIndex;
    await this.#commit();
    if (this.#pendingEntries.length > 0) {
      if (this.#commitRetryTimer !== null) clearTimeout(this.#commitRetryTimer);
      throw new Error(`audit WAL in ${this.#slot.dir} is not writable`);
    }
    await this.#saveCursors();
    for (const runner of this.#runners) runner.done = this.#runSink(runner);
    this.#maintenance = setInterval(() => this.#maintain(), MAINTENANCE_MS);
    this.#maintenance.unref();
    this.#logger.info(
      { chain: this.chainId, slot: this.#slot.slot, sinks: this.#runners.map((r) => r.sink.name), replay: this.replayCount },
      'audit log open',
    );
  }

  /** Entries replayed to the sink furthest behind when the log opened. */
  get replayCount(): number {
    let most = 0;
    for (const r of this.#runners) most = Math.max(most, this.#tailStart - r.cursor);
    return Math.max(0, most);
  }

  #loadCursors(): Promise<Record<string, unknown> | null> {
    return readCursors(this.#cursorFile);
  }

  /** Serialized: writes never overlap, and each one carries the latest cursors. */
  #saveCursors(): Promise<void> {
    this.#cursorsDirty = false;
    this.#cursorWrite = this.#cursorWrite.then(async () => {
      const sinks: Record<string, number> = {};
      for (const r of this.#runners) sinks[r.key] = r.cursor;
      const tmp = `${this.#cursorFile}.tmp`;
      try {
        await writeFile(tmp, JSON.stringify({ v: 1, sinks }));
        await rename(tmp, this.#cursorFile);
        this.#cursorsSavedAt = Date.now();
      } catch (error) {
        this.#cursorsDirty = true;
        this.#logger.error({ err: message(error) }, 'cannot save audit sink cursors');
      }
    });
    return this.#cursorWrite;
  }

  // -------------------------------------------------------------------------
  // request path

  fromContext(ctx: RequestContext, outcome: RequestOutcome): RequestEventInput {
    return eventFromContext(ctx, outcome, this.#extras);
  }

  get durable(): boolean {
    return this.#durable;
  }

  get blocksWhenFull(): boolean {
    return this.#block;
  }

  record(event: AuditInput, reserved = false): EnqueueResult {
    return this.#enqueue(event, null, reserved);
  }

  accepting(): boolean {
    if (this.#state !== 'open') return false;
    if (!this.#block) return true;
    // Durable responses wait for their commit: with the WAL at its quota none would come, so refuse now.
    if (this.#durable && this.#walFull) return false;
    return this.#queue.length - this.#head + this.#reserved < this.#maxEvents;
  }

  reserve(): boolean {
    if (!this.accepting()) return false;
    if (this.#block) this.#reserved++;
    return true;
  }

  recordDurable(event: AuditInput, reserved = false): Promise<DurableResult> {
    return new Promise<DurableResult>((resolve, reject) => {
      const result = this.#enqueue(event, { resolve, reject }, reserved);
      if (result.status === 'rejected') reject(result.error);
    });
  }

  #enqueue(input: AuditInput, waiter: Waiter | null, reserved: boolean): EnqueueResult {
    // The place held for this event is taken now, whatever becomes of the event.
    if (reserved && this.#block && this.#reserved > 0) this.#reserved--;
    else reserved = false;
    const event = input.kind === 'request' ? input : snapshotBusinessEvent(input);
    if (this.#state !== 'open') return REJECTED_CLOSED;
    const depth = this.#queue.length - this.#head;
    // A reserved event was promised its place: others may have filled the queue since (business
    // events, refusals recorded before admission), so the queue may run over by the places held.
    if (depth >= this.#maxEvents && !reserved) {
      if (this.#block) {
        this.#stats.rejected++;
        return REJECTED_FULL;
      }
      const seq = ++this.#seq;
      const ns = this.#clock.now();
      this.#stats.dropped++;
      const tail = this.#queue[this.#queue.length - 1];
      let gap: GapItem;
      if (tail !== undefined && tail.type === GAP && this.#queue.length > this.#head) {
        gap = tail;
        gap.count++;
        gap.toSeq = seq;
        gap.lastNs = ns;
      } else {
        // The gap marker takes the dropped events' place in the queue, so it lands where they would have.
        gap = { type: GAP, id: this.#uuid.next(ns), firstNs: ns, lastNs: ns, fromSeq: seq, toSeq: seq, count: 1, waiters: null };
        this.#queue.push(gap);
      }
      if (waiter !== null) (gap.waiters ??= []).push(waiter);
      this.#scheduleDrain();
      return { status: 'dropped', seq };
    }
    const seq = ++this.#seq;
    const ns = this.#clock.now();
    const id = this.#uuid.next(ns);
    this.#queue.push({ type: EVENT, input: event, ns, seq, id, waiters: waiter === null ? null : [waiter] });
    this.#stats.recorded++;
    this.#scheduleDrain();
    return { status: 'accepted', id, seq };
  }

  // -------------------------------------------------------------------------
  // drain: queue → records → pending WAL bytes

  #scheduleDrain(): void {
    if (this.#drainScheduled) return;
    this.#drainScheduled = true;
    setImmediate(() => this.#drain());
  }

  #drain(): void {
    this.#drainScheduled = false;
    if (this.#state === 'closed') return;
    const force = this.#state !== 'open'; // closing: the quota must not lose what was accepted
    if (this.#checkpointDue) {
      this.#checkpointDue = false;
      if (this.#chain.sinceCheckpoint > 0) this.#appendCheckpoint('periodic', false);
    }
    const deadline = performance.now() + DRAIN_SLICE_MS;
    let built = 0;
    let yielded = false;
    while (this.#head < this.#queue.length) {
      if (built === DRAIN_BATCH || ((built & 31) === 31 && performance.now() >= deadline)) {
        yielded = true;
        break;
      }
      built++;
      if (!force && this.#pendingBytes >= MAX_PENDING_BYTES) break; // the commit reschedules us
      // Bytes serialized but not yet written count too (pending, and the commit in flight).
      if (!force && this.#wal.bytes + this.#inflightBytes + this.#pendingBytes >= this.#walMaxBytes) {
        if (!this.#walFull) this.#logger.warn({ walBytes: this.#wal.bytes, quota: this.#walMaxBytes }, 'audit WAL at its quota');
        this.#walFull = true;
        break;
      }
      this.#walFull = false;
      const item = this.#queue[this.#head] as QueueItem;
      this.#queue[this.#head++] = undefined;
      this.#appendItem(item);
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head > 4096 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    this.#scheduleCommit();
    if (yielded) this.#scheduleDrain();
    this.#checkIdle();
  }

  #appendItem(item: QueueItem): void {
    let chained: ChainedRecord | null;
    let result: DurableResult;
    if (item.type === GAP) {
      chained = this.#chain.append({
        chain: '',
        dropped: item.count,
        firstTs: formatTimestamp(item.firstNs),
        fromSeq: item.fromSeq,
        id: item.id,
        kind: 'gap',
        lastTs: formatTimestamp(item.lastNs),
        n: 0,
        prev: '',
        reason: 'queue_full',
        toSeq: item.toSeq,
        ts: formatTimestamp(item.firstNs),
        v: 1,
      });
      this.#stats.gaps++;
      result = { status: 'dropped', seq: item.toSeq };
      this.#logger.warn(
        { dropped: item.count, fromSeq: item.fromSeq, toSeq: item.toSeq },
        'audit events dropped (queue full); gap marker written',
      );
    } else {
      chained = this.#appendEvent(item);
      result = { status: 'accepted', id: item.id, seq: item.seq };
    }
    if (chained !== null) this.#pushPending(chained);
    if (item.waiters !== null) {
      if (chained === null) for (const w of item.waiters) w.reject(unavailable('invalid_event'));
      else for (const waiter of item.waiters) this.#pendingWaiters.push({ waiter, result });
    }
    if (this.#chain.sinceCheckpoint >= this.#checkpointEvery) this.#appendCheckpoint('periodic', false);
  }

  #appendEvent(item: EventItem): ChainedRecord | null {
    const body = item.input.kind === 'request' ? this.#requestBody(item, item.input) : this.#businessBody(item, item.input);
    try {
      const canonicalReady = this.#masker.apply(body);
      return this.#chain.append(body, canonicalReady);
    } catch (error) {
      // Only malformed input gets here (a NaN, a lone surrogate in a key…): retry once as sanitized JSON data.
      try {
        const safe = toJsonData(body) as Record<string, unknown>;
        this.#masker.apply(safe);
        return this.#chain.append(safe);
      } catch {
        this.#logger.error({ err: message(error), id: item.id }, 'audit event could not be serialized; not written');
        return null;
      }
    }
  }

  // Bodies list their keys in canonical (sorted) order, chain fields as placeholders: canonicalization then skips the sort.
  #requestBody(item: EventItem, e: RequestEventInput): Record<string, unknown> {
    const decisions: Record<string, unknown>[] = [];
    for (const d of e.decisions)
      decisions.push({
        code: d.code,
        detail: d.detail === undefined ? undefined : toJsonData(d.detail),
        outcome: d.outcome,
        stage: d.stage,
      });
    return {
      bytesIn: num(e.bytesIn),
      bytesOut: num(e.bytesOut),
      chain: '',
      claims: e.claims === undefined ? undefined : toJsonData(e.claims),
      clientIp: e.clientIp,
      decision: e.decision,
      decisions,
      grpcMethod: e.grpcMethod,
      grpcStatus: e.grpcStatus,
      headers: e.headers === undefined ? undefined : { ...e.headers },
      id: item.id,
      kind: 'request',
      latencyMs: typeof e.latencyMs === 'number' && Number.isFinite(e.latencyMs) ? Math.round(e.latencyMs * 1000) / 1000 : null,
      method: e.method,
      n: 0,
      path: e.path,
      policy: e.policy,
      prev: '',
      protocol: e.protocol,
      query: e.query === undefined ? undefined : { ...e.query },
      reason: e.reason,
      requestId: e.requestId,
      roles: [...e.roles],
      route: e.route,
      rule: e.rule,
      seq: item.seq,
      spanId: e.spanId,
      stage: e.stage,
      status: num(e.status),
      subject: e.subject,
      tenant: e.tenant,
      traceId: e.traceId,
      ts: formatTimestamp(item.ns),
      upstream: e.upstream,
      userAgent: e.userAgent,
      v: 1,
    };
  }

  #businessBody(item: EventItem, e: BusinessEventInput): Record<string, unknown> {
    return {
      action: e.action,
      chain: '',
      details: e.details ?? null, // JSON data already: snapshotBusinessEvent copied it at record()
      id: item.id,
      kind: 'event',
      n: 0,
      outcome: e.outcome ?? null,
      prev: '',
      requestId: e.requestId ?? null,
      resource: e.resource ?? null,
      seq: item.seq,
      spanId: e.spanId ?? null,
      subject: e.subject ?? null,
      tenant: e.tenant ?? null,
      traceId: e.traceId ?? null,
      ts: formatTimestamp(item.ns),
      v: 1,
    };
  }

  #appendCheckpoint(reason: 'periodic' | 'close', final: boolean): void {
    const chained = this.#chain.checkpoint(reason, final);
    this.#pushPending(chained);
    this.#stats.checkpoints++;
    // Checkpoints in the operational log are an outside witness: `audit verify --anchor <chain>:<n>:<hash>`
    // checks a store against them (and so catches a cut tail the store alone cannot show).
    const fields = { chain: this.chainId, n: chained.record.n, hash: chained.record.hash, final };
    if (final) this.#logger.info(fields, 'audit chain sealed');
    else this.#logger.debug(fields, 'audit checkpoint');
  }

  /** Serializes the record into the pending bytes; the record object itself is not kept. */
  #pushPending(chained: ChainedRecord): void {
    const buffer = this.#chunks.room(storedLineMaxBytes(chained));
    const newline = writeStoredLine(buffer, this.#chunks.offset, chained);
    const columns = this.#wantColumns ? indexedColumns(chained.record as unknown as Record<string, unknown>) : undefined;
    const entry = this.#chunks.take(newline, columns);
    this.#pendingEntries.push(entry);
    this.#pendingBytes += entry.size;
  }

  // -------------------------------------------------------------------------
  // commit: pending entries → WAL (one writev, one fdatasync)

  #scheduleCommit(): void {
    if (this.#commitScheduled || this.#committing || this.#commitRetryTimer !== null || this.#pendingEntries.length === 0) return;
    this.#commitScheduled = true;
    // Group commit: in durable mode, wait out the window since the last commit began so more records share the fsync.
    // `fast`: nothing waits for a WAL write, and one per loop turn (a few events each, an fs round trip
    // through the thread pool apiece) costs more than the events it carries. A flush or close does not wait.
    const window = this.#durable
      ? this.#fsyncIntervalMs
      : this.#idleWaiters.length > 0 || this.#state !== 'open'
        ? 0
        : FAST_COMMIT_MS;
    const wait = this.#lastCommitAt + window - Date.now();
    if (wait > 0)
      this.#commitWindow = setTimeout(() => {
        this.#commitWindow = null;
        void this.#commit();
      }, wait);
    else setImmediate(() => void this.#commit());
  }

  /** A commit waiting out its window goes now (the window only ever saves work; a flush wants the write). */
  #commitNow(): void {
    if (this.#commitWindow === null) return;
    clearTimeout(this.#commitWindow);
    this.#commitWindow = null;
    setImmediate(() => void this.#commit());
  }

  async #commit(): Promise<void> {
    this.#commitScheduled = false;
    if (this.#committing || this.#pendingEntries.length === 0) return;
    this.#committing = true;
    this.#lastCommitAt = Date.now();
    const entries = this.#pendingEntries;
    const waiters = this.#pendingWaiters;
    this.#pendingEntries = [];
    this.#pendingWaiters = [];
    this.#inflightBytes = this.#pendingBytes;
    this.#pendingBytes = 0;
    try {
      await this.#wal.append(entries, this.#durable);
    } catch (error) {
      // Keep the records (in order, ahead of newer ones) and retry; tell waiters now rather than hang their requests.
      this.#pendingEntries = entries.concat(this.#pendingEntries);
      this.#pendingBytes += this.#inflightBytes;
      this.#inflightBytes = 0;
      const failure = unavailable('wal_error');
      for (const { waiter } of waiters) waiter.reject(failure);
      this.#stats.walErrors++;
      this.#committing = false;
      this.#commitRetryMs = Math.min(Math.max(this.#commitRetryMs * 2, 50), 5_000);
      this.#logger.error({ err: message(error), retryMs: this.#commitRetryMs }, 'audit WAL write failed');
      if (this.#state !== 'closed') {
        this.#commitRetryTimer = setTimeout(() => {
          this.#commitRetryTimer = null;
          this.#scheduleCommit();
        }, this.#commitRetryMs);
      }
      return;
    }
    this.#inflightBytes = 0;
    this.#commitRetryMs = 0;
    if (!this.#durable) this.#unsynced = true;
    // Tail entries live until every sink has them: they hold bytes and columns, never the record
    // object graph (big graphs surviving that long are what makes GC expensive).
    for (const entry of entries) {
      this.#tail.push(entry);
      this.#tailBytes += entry.size;
    }
    this.#stats.written += entries.length;
    for (const { waiter, result } of waiters) waiter.resolve(result);
    this.#committing = false;
    for (const runner of this.#runners) runner.wake?.();
    if (this.#pendingEntries.length > 0) this.#scheduleCommit();
    // The drain may have stopped for pending bytes or the quota: it re-checks both.
    if (this.#head < this.#queue.length) this.#scheduleDrain();
    this.#trimTail();
    this.#checkIdle();
  }

  get #committedEnd(): number {
    return this.#tailStart + (this.#tail.length - this.#tailHead);
  }

  // -------------------------------------------------------------------------
  // sinks

  async #runSink(r: SinkRunner): Promise<void> {
    let delay = this.#retryInitialMs;
    let opened = false;
    while (!r.stopped) {
      try {
        if (!opened) {
          await r.sink.open();
          opened = true;
          r.state = 'ok';
          const resumeAfter = r.sink.takeResumePoint?.() ?? null;
          if (resumeAfter !== null) await this.#skipStored(r, resumeAfter);
        }
        const end = this.#committedEnd;
        if (r.cursor >= end) {
          await this.#waitForWork(r);
          continue;
        }
        const batch = await this.#entriesFor(r, end);
        const full = batch.length >= r.sink.batchSize;
        const reader = r.reader;
        if (reader !== null && reader.skipped.length > 0) {
          this.#logger.error(
            { sink: r.sink.name, indexes: reader.skipped.splice(0) },
            'audit WAL entries corrupted on disk (not JSON records); skipped: verify will report them missing',
          );
        }
        if (batch.length === 0) {
          // Only corrupted lines were read: move past them.
          if (reader !== null && reader.index > r.cursor) {
            r.cursor = reader.index;
            this.#cursorsDirty = true;
            continue;
          }
          await this.#waitForWork(r);
          continue;
        }
        await r.sink.write(batch);
        // Read back from disk, the batch may have left out corrupted lines: the reader knows how far it got.
        r.cursor = reader !== null ? reader.index : r.cursor + batch.length;
        r.delivered += batch.length;
        if (r.consecutiveFailures > 0)
          this.#logger.info({ sink: r.sink.name, failures: r.consecutiveFailures }, 'audit sink recovered');
        r.consecutiveFailures = 0;
        r.state = 'ok';
        delay = this.#retryInitialMs;
        // A file cannot dedup a long replay: its cursor is saved before the next batch (a replay then re-sends at most one batch).
        if (r.sink.exactCursor) await this.#saveCursors();
        else this.#cursorsDirty = true;
        this.#afterAck();
        if (!full && this.#state === 'open' && this.#progressWaiters.length === 0) await this.#sleep(r, SINK_PACE_MS, true);
      } catch (error) {
        r.errors++;
        r.consecutiveFailures++;
        r.lastError = message(error);
        r.state = opened ? 'retrying' : 'opening';
        const now = Date.now();
        if (r.consecutiveFailures === 1 || now - r.lastLoggedAt >= SINK_LOG_EVERY_MS) {
          r.lastLoggedAt = now;
          this.#logger.warn(
            { sink: r.sink.name, err: r.lastError, failures: r.consecutiveFailures, lag: this.#committedEnd - r.cursor },
            'audit sink write failed; retrying',
          );
        }
        await this.#sleep(r, jitter(delay));
        delay = Math.min(delay * 2, this.#retryMaxMs);
      }
    }
    r.state = 'closed';
  }

  /**
   * Moves the cursor past the record with this id when the WAL still holds it
   * ahead of the cursor: the store has it, and everything before it. A store
   * only holds what earlier processes wrote, so only the WAL on disk is read.
   * Best effort: should the read fail, the replay re-sends from the saved
   * cursor (duplicates, which verify tells apart, rather than a stalled sink).
   */
  async #skipStored(r: SinkRunner, id: string): Promise<void> {
    const needle = `"id":"${id}"`;
    const reader = this.#wal.reader(r.cursor);
    try {
      for (;;) {
        const batch = await reader.read(1024, this.#tailStart);
        if (batch.length === 0) return;
        for (const entry of batch) {
          if (!entry.line.includes(needle) || recordOf(entry)['id'] !== id) continue;
          this.#logger.info(
            { sink: r.sink.name, skipped: entry.index + 1 - r.cursor },
            'audit sink already holds the replay start',
          );
          r.cursor = entry.index + 1;
          this.#cursorsDirty = true;
          return;
        }
      }
    } catch (error) {
      this.#logger.warn({ sink: r.sink.name, err: message(error) }, 'audit WAL not readable for the sink resume point');
    }
  }

  async #entriesFor(r: SinkRunner, end: number): Promise<WalEntry[]> {
    const max = r.sink.batchSize;
    if (r.cursor >= this.#tailStart) {
      r.reader = null;
      const from = this.#tailHead + (r.cursor - this.#tailStart);
      const to = Math.min(from + max, this.#tailHead + (end - this.#tailStart));
      return this.#tail.slice(from, to) as WalEntry[];
    }
    // Behind the in-memory tail (an outage, or replay after a restart): read the WAL back.
    if (r.reader === null || r.reader.index !== r.cursor) r.reader = this.#wal.reader(r.cursor);
    return r.reader.read(max, Math.min(end, this.#tailStart));
  }

  #waitForWork(r: SinkRunner): Promise<void> {
    return new Promise((resolve) => {
      r.wake = () => {
        r.wake = null;
        resolve();
      };
    });
  }

  /** New entries do not end it (a failing sink must not be retried at the commit rate); close does. */
  #sleep(r: SinkRunner, ms: number, pacing = false): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        r.interrupt = null;
        r.pacing = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      r.interrupt = done;
      r.pacing = pacing;
    });
  }

  #minCursor(): number {
    let min = this.#committedEnd;
    for (const r of this.#runners) if (r.cursor < min) min = r.cursor;
    return min;
  }

  #afterAck(): void {
    this.#trimTail();
    void this.#release();
    for (const resolve of this.#progressWaiters.splice(0)) resolve();
  }

  /** Drop entries every sink has, and the oldest beyond the byte cap (laggards then read from disk). */
  #trimTail(): void {
    const min = this.#minCursor();
    while (this.#tailHead < this.#tail.length && (this.#tailStart < min || this.#tailBytes > TAIL_MAX_BYTES)) {
      this.#tailBytes -= (this.#tail[this.#tailHead] as ChunkEntry).size;
      this.#tail[this.#tailHead++] = undefined;
      this.#tailStart++;
    }
    if (this.#tailHead === this.#tail.length) {
      this.#tail = [];
      this.#tailHead = 0;
    } else if (this.#tailHead > 4096 && this.#tailHead * 2 > this.#tail.length) {
      this.#tail = this.#tail.slice(this.#tailHead);
      this.#tailHead = 0;
    }
  }

  async #release(): Promise<void> {
    if (this.#releasing) {
      this.#releaseAgain = true;
      return;
    }
    this.#releasing = true;
    try {
      do {
        this.#releaseAgain = false;
        const freed = await this.#wal.release(this.#minCursor());
        if (freed > 0 && this.#walFull) {
          this.#logger.info({ walBytes: this.#wal.bytes }, 'audit WAL segments delivered and deleted; below its quota again');
          this.#scheduleDrain();
        }
      } while (this.#releaseAgain);
    } catch (error) {
      this.#logger.error({ err: message(error) }, 'cannot delete delivered audit WAL segments');
    } finally {
      this.#releasing = false;
    }
  }

  #maintain(): void {
    if (this.#state !== 'open') return;
    if (this.#chain.sinceCheckpoint > 0 && Date.now() - this.#chain.lastCheckpointAt >= this.#checkpointIntervalMs) {
      this.#checkpointDue = true;
      this.#scheduleDrain();
    }
    if (this.#cursorsDirty && Date.now() - this.#cursorsSavedAt >= CURSOR_SAVE_MS) void this.#saveCursors();
    // fast mode: no fsync per commit, but one a second bounds what an OS crash can take.
    if (!this.#durable && this.#unsynced && this.#wal.sinceSync >= FAST_SYNC_MS && !this.#committing) {
      this.#unsynced = false;
      this.#wal.sync().catch((error: unknown) => this.#logger.error({ err: message(error) }, 'audit WAL fsync failed'));
    }
  }

  // -------------------------------------------------------------------------
  // flush / close / stats

  #isIdle(): boolean {
    return this.#head >= this.#queue.length && this.#pendingEntries.length === 0 && !this.#committing;
  }

  #checkIdle(): void {
    if (this.#idleWaiters.length > 0 && this.#isIdle()) for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }

  #whenIdle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => {
      this.#idleWaiters.push(resolve);
      this.#commitNow();
      this.#scheduleDrain();
    });
  }

  async #whenDelivered(target: number): Promise<void> {
    for (const r of this.#runners) if (r.pacing) r.interrupt?.();
    while (this.#minCursor() < target) {
      await new Promise<void>((resolve) => this.#progressWaiters.push(resolve));
    }
  }

  async flush(options: { timeoutMs?: number } = {}): Promise<void> {
    const work = (async () => {
      await this.#whenIdle();
      await this.#whenDelivered(this.#committedEnd);
    })();
    if (options.timeoutMs === undefined) return work;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(unavailable('flush_timeout')), options.timeoutMs);
    });
    try {
      await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Delivers, in the background, what slots nobody owns hold (see `drainOrphanedSlots`); close() waits for it. */
  adoptOrphans(delayMs: number, drain: () => Promise<void>): void {
    this.#orphanTimer = setTimeout(() => {
      this.#orphanTimer = null;
      if (this.#state === 'open') this.#orphans = drain();
    }, delayMs);
    this.#orphanTimer.unref();
  }
  #orphanTimer: NodeJS.Timeout | null = null;
  #orphans: Promise<void> | null = null;

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = 'closing';
    if (this.#maintenance !== null) clearInterval(this.#maintenance);
    if (this.#orphanTimer !== null) clearTimeout(this.#orphanTimer);
    const deadline = Date.now() + this.#closeTimeoutMs;
    // Ref'd timers: a script's `await log.close()` must not end the process (exit 13) while sinks are idle-waiting.
    const untilDeadline = <T>(work: Promise<T>): Promise<boolean> => within(work, Math.max(0, deadline - Date.now()));
    // An orphan drain in progress finishes (or its WAL keeps the rest for the next one).
    if (this.#orphans !== null && !(await untilDeadline(this.#orphans)))
      this.#logger.warn({}, 'audit close: an orphaned WAL slot was still being delivered; the rest waits for the next start');
    if (!(await untilDeadline(this.#whenIdle())))
      this.#logger.error(
        { queued: this.#queue.length - this.#head },
        'audit close: events could not be written to the WAL in time',
      );
    else {
      this.#appendCheckpoint('close', true);
      this.#scheduleCommit();
      await untilDeadline(this.#whenIdle());
    }
    const target = this.#committedEnd;
    if (!(await untilDeadline(this.#whenDelivered(target)))) {
      const behind = this.#runners.filter((r) => r.cursor < target).map((r) => ({ sink: r.sink.name, lag: target - r.cursor }));
      this.#logger.warn({ behind }, 'audit close: sinks behind; the WAL keeps the rest for the next start');
    }
    this.#state = 'closed';
    if (this.#commitRetryTimer !== null) clearTimeout(this.#commitRetryTimer);
    if (this.#commitWindow !== null) clearTimeout(this.#commitWindow);
    for (const r of this.#runners) {
      r.stopped = true;
      r.wake?.();
      r.interrupt?.();
    }
    // An in-flight write settles within the sink's own timeout; do not wait forever for a wedged one.
    await within(Promise.all(this.#runners.map((r) => r.done)), 5_000);
    await this.#saveCursors();
    for (const r of this.#runners) {
      try {
        await r.sink.close();
      } catch (error) {
        this.#logger.warn({ sink: r.sink.name, err: message(error) }, 'audit sink close failed');
      }
    }
    await this.#wal.close();
    await this.#slot.release();
    for (const resolve of this.#progressWaiters.splice(0)) resolve();
  }

  stats(): AuditStats {
    const end = this.#committedEnd;
    return {
      enabled: true,
      chain: this.chainId,
      slot: this.#slot.slot,
      queueDepth: this.#queue.length - this.#head,
      queueCapacity: this.#maxEvents,
      ...this.#stats,
      walBytes: this.#wal.bytes,
      walSegments: this.#wal.segmentCount,
      walQuotaBytes: this.#walMaxBytes,
      walFull: this.#walFull,
      sinks: this.#runners.map((r) => ({
        name: r.sink.name,
        state: r.state,
        delivered: r.delivered,
        lag: Math.max(0, end - r.cursor),
        errors: r.errors,
        lastError: r.lastError,
      })),
    };
  }
}

/**
 * Opens the audit log: claims a WAL slot, replays what the previous owner left
 * (sealing its chain), starts a new chain and the sink loops. Fails (and
 * releases the slot) when the WAL directory or signing key is unusable — an
 * audit log that cannot write must not be mistaken for one that can.
 */
export async function createAuditLog(config: AuditConfig, options: AuditLogOptions): Promise<AuditLog> {
  if (config.enabled === false) return new DisabledAuditLog();
  const segmentBytes = config.wal?.segmentBytes ?? AUDIT_DEFAULTS.wal.segmentBytes;
  const maxBytes = config.wal?.maxBytes ?? AUDIT_DEFAULTS.wal.maxBytes;
  if (maxBytes < 2 * segmentBytes) throw new TypeError('audit wal.maxBytes must be at least twice wal.segmentBytes');
  const key = config.chain?.signingKey === undefined ? null : loadSigningKey(config.chain.signingKey);
  const slot = await claimSlot(config.wal?.dir ?? AUDIT_DEFAULTS.wal.dir);
  const log = await openOnSlot(config, options, slot, key, await openWal(slot, segmentBytes, isDurable(config)));
  const delay = options.orphanDrainDelayMs ?? ORPHAN_DRAIN_DELAY_MS;
  if (delay !== false && options.sinks === undefined) log.adoptOrphans(delay, () => drainOrphanedSlots(config, options, key));
  return log;
}

const ORPHAN_DRAIN_DELAY_MS = 5_000;

function isDurable(config: AuditConfig): boolean {
  return (config.durability ?? 'durable') === 'durable';
}

/** `durable`: every append is synced, so the kernel does it on the write (O_DSYNC) rather than a second call. */
async function openWal(slot: ClaimedSlot, segmentBytes: number, durable: boolean): Promise<Wal> {
  try {
    return await Wal.open(slot.dir, segmentBytes, { dsync: durable });
  } catch (error) {
    await slot.release();
    throw error;
  }
}

/** Starts a log on a claimed slot and its opened WAL; on failure closes the WAL and releases the slot. */
async function openOnSlot(
  config: AuditConfig,
  options: AuditLogOptions,
  slot: ClaimedSlot,
  key: SigningKey | null,
  wal: Wal,
): Promise<AuditLogImpl> {
  try {
    const durable = (config.durability ?? 'durable') === 'durable';
    const software = options.software ?? defaultSoftware();
    const sinks =
      options.sinks?.map((sink) => ({ sink, key: sink.name })) ??
      config.sinks.map((sink) => ({
        sink: createSink(sink, { slot: slot.slot, durable, software }),
        key: sinkIdentity(sink),
      }));
    const log = new AuditLogImpl(config, { ...options, software }, slot, wal, key, sinks);
    try {
      await log.start();
    } catch (error) {
      await wal.close().catch(() => {});
      throw error;
    }
    return log;
  } catch (error) {
    await slot.release();
    throw error;
  }
}

/** Saved sink cursors; null when the file is missing or unreadable. */
async function readCursors(file: string): Promise<Record<string, unknown> | null> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as { sinks?: unknown } | null;
    const sinks = parsed?.sinks;
    return typeof sinks === 'object' && sinks !== null && !Array.isArray(sinks) ? (sinks as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/**
 * Slots whose owner is gone hold undelivered events when that owner crashed, or closed
 * while a sink was down — and when the worker count shrank, no restarted process claims
 * them again. Each such slot is claimed in turn, replayed to the configured sinks (its
 * `{slot}` files and rows), its chain sealed, and closed again; a slot with nothing left
 * is only looked at. Errors are logged, never thrown: the slot stays for the next start.
 */
async function drainOrphanedSlots(config: AuditConfig, options: AuditLogOptions, key: SigningKey | null): Promise<void> {
  const logger = options.logger.child({ component: 'audit' });
  const baseDir = config.wal?.dir ?? AUDIT_DEFAULTS.wal.dir;
  const segmentBytes = config.wal?.segmentBytes ?? AUDIT_DEFAULTS.wal.segmentBytes;
  const sinkKeys = config.sinks.map(sinkIdentity);
  for (const n of await staleSlots(baseDir)) {
    let slot: ClaimedSlot | null = null;
    try {
      slot = await tryClaim(baseDir, n);
      if (slot === null) continue; // a restarting worker (or another drainer) has it now
      const wal = await openWal(slot, segmentBytes, isDurable(config));
      if (!(await holdsUndelivered(wal, join(slot.dir, 'cursors.json'), sinkKeys))) {
        await wal.close();
        await slot.release();
        continue;
      }
      const claimed = slot;
      slot = null; // openOnSlot releases it on failure, close() on success
      const log = await openOnSlot(config, { ...options, orphanDrainDelayMs: false }, claimed, key, wal);
      const replayed = log.replayCount;
      await log.close();
      logger.info({ slot: n, replayed, chain: log.chainId }, 'audit: delivered the WAL of a slot no process owns');
    } catch (error) {
      if (slot !== null) await slot.release();
      logger.error(
        { slot: n, err: message(error) },
        'audit: cannot deliver an orphaned WAL slot; it is retried at the next start',
      );
    }
  }
}

/** An unsealed chain (its owner died) or a sink cursor short of the WAL's end. */
async function holdsUndelivered(wal: Wal, cursorFile: string, sinkKeys: readonly string[]): Promise<boolean> {
  const last = wal.lastLineAtOpen;
  if (last === null) return false;
  const record = JSON.parse(last) as Record<string, unknown>;
  if (record['kind'] !== 'checkpoint' || record['final'] !== true) return true;
  const cursors = await readCursors(cursorFile);
  if (cursors === null) return wal.firstIndex < wal.nextIndex;
  return sinkKeys.some((k) => {
    const cursor = cursors[k];
    return typeof cursor === 'number' && cursor < wal.nextIndex;
  });
}
