/**
 * SQLite sink (better-sqlite3): WAL journal mode, one prepared INSERT, one
 * transaction per batch, `ON CONFLICT(id) DO NOTHING` for replays.
 *
 * better-sqlite3 is synchronous, and a 2,000-row transaction holds the thread
 * for milliseconds; on the gateway's event loop that is request latency. So
 * the connection lives in a worker thread, and the main thread only posts rows
 * and awaits the acknowledgement. The worker's code is inline (`eval`) so it
 * runs the same from `src/` under the test runner and from `dist/`.
 *
 * A batch is posted in slices of rows: the worker inserts one while this
 * thread builds the next (for entries read back from the WAL that means
 * parsing their lines, as slow as the inserts), and commits the batch's one
 * transaction with the last slice.
 *
 * Table (also read by verify and query):
 *   pos INTEGER PRIMARY KEY AUTOINCREMENT  -- storage order: what verify walks
 *   id TEXT UNIQUE, chain, n, ts, kind, subject, tenant, decision, route,
 *   action, status, request_id              -- copies of record fields, indexed for queries
 *   record TEXT                             -- the JSON line exactly as hashed
 */
import { createRequire } from 'node:module';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { SqliteDatabase } from '../drivers.js';
import type { WalEntry } from '../wal.js';
import { INDEXED_COLUMNS, rowOf, type AuditSink } from './sink.js';

export interface SqliteSinkOptions {
  path: string;
  table: string;
  batchSize: number;
  /** synchronous=FULL (durable mode) rather than NORMAL. */
  sync: boolean;
}

/** DDL shared by the sink and the tests; `table` is validated by the config schema. */
export function sqliteSchema(table: string): string {
  const t = `"${table}"`;
  return `
CREATE TABLE IF NOT EXISTS ${t} (
  pos INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  chain TEXT NOT NULL,
  n INTEGER NOT NULL,
  ts TEXT NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT,
  tenant TEXT,
  decision TEXT,
  route TEXT,
  action TEXT,
  status INTEGER,
  request_id TEXT,
  record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "${table}_ts" ON ${t} (ts);
CREATE INDEX IF NOT EXISTS "${table}_subject_ts" ON ${t} (subject, ts);
CREATE INDEX IF NOT EXISTS "${table}_chain_n" ON ${t} (chain, n);
CREATE INDEX IF NOT EXISTS "${table}_request_id" ON ${t} (request_id);`;
}

export function sqliteInsert(table: string): string {
  const columns = [...INDEXED_COLUMNS, 'record'];
  return `INSERT INTO "${table}" (${columns.join(', ')}) VALUES (${columns.map(() => '?').join(', ')}) ON CONFLICT(id) DO NOTHING`;
}

/** Opens (and prepares) a database for writing; used in the worker and directly by tests. */
export function prepareSqlite(db: SqliteDatabase, table: string, sync: boolean): void {
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${sync ? 'FULL' : 'NORMAL'}`);
  db.pragma('busy_timeout = 5000');
  db.exec(sqliteSchema(table));
}

/** Rows per message: small enough that the worker starts early, large enough that messages stay few. */
const SLICE_ROWS = 256;

// The worker: plain CommonJS, no imports from this package (it is eval'd). A batch arrives as `rows`
// messages; the first opens its transaction, the `last` one commits it and acknowledges. A failed
// batch is rolled back, and its remaining slices (already on their way) are ignored.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.modulePath);
let db;
try {
  db = new Database(workerData.path, { timeout: 5000 });
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = ' + (workerData.sync ? 'FULL' : 'NORMAL'));
  db.exec(workerData.ddl);
  const insert = db.prepare(workerData.insert);
  const begin = db.prepare('BEGIN');
  const commit = db.prepare('COMMIT');
  const rollback = db.prepare('ROLLBACK');
  let open = -1;
  let failed = -1;
  const fail = (id, error) => {
    if (db.inTransaction) rollback.run();
    open = -1;
    failed = id;
    parentPort.postMessage({ type: 'failed', id, message: String(error && error.message || error), code: error && error.code });
  };
  parentPort.postMessage({ type: 'ready' });
  parentPort.on('message', (message) => {
    if (message.type === 'close') { if (db.inTransaction) rollback.run(); db.close(); parentPort.close(); return; }
    if (message.id === failed) return;
    if (message.type === 'abort') { if (open === message.id && db.inTransaction) rollback.run(); open = -1; return; }
    try {
      if (open !== message.id) {
        if (db.inTransaction) rollback.run();
        begin.run();
        open = message.id;
      }
      for (const row of message.rows) insert.run(row);
      if (message.last) {
        commit.run();
        open = -1;
        parentPort.postMessage({ type: 'done', id: message.id });
      }
    } catch (error) {
      fail(message.id, error);
    }
  });
} catch (error) {
  parentPort.postMessage({ type: 'error', message: String(error && error.message || error), code: error && error.code });
}
`;

type FromWorker =
  | { type: 'ready' }
  | { type: 'done'; id: number }
  | { type: 'failed'; id: number; message: string; code?: string }
  | { type: 'error'; message: string; code?: string };

export class SqliteSink implements AuditSink {
  readonly name: string;
  readonly batchSize: number;
  readonly exactCursor = false;
  readonly usesColumns = true;
  readonly #options: SqliteSinkOptions;
  #worker: Worker | null = null;
  #nextId = 0;
  readonly #pending = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();

  constructor(options: SqliteSinkOptions) {
    this.#options = options;
    this.name = `sqlite:${options.path}`;
    this.batchSize = options.batchSize;
  }

  async open(): Promise<void> {
    if (this.#worker !== null) return;
    await mkdir(dirname(this.#options.path), { recursive: true });
    const modulePath = createRequire(import.meta.url).resolve('better-sqlite3');
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        modulePath,
        path: this.#options.path,
        sync: this.#options.sync,
        ddl: sqliteSchema(this.#options.table),
        insert: sqliteInsert(this.#options.table),
      },
    });
    await new Promise<void>((resolve, reject) => {
      const onMessage = (message: FromWorker) => {
        worker.off('error', onError);
        if (message.type === 'ready') resolve();
        else
          reject(new Error(`sqlite sink ${this.#options.path}: ${'message' in message ? message.message : 'failed to start'}`));
      };
      const onError = (error: Error) => {
        worker.off('message', onMessage);
        reject(error);
      };
      worker.once('message', onMessage);
      worker.once('error', onError);
    }).catch(async (error: unknown) => {
      await worker.terminate();
      throw error;
    });
    worker.on('message', (message: FromWorker) => {
      if (message.type !== 'done' && message.type !== 'failed') return;
      const waiter = this.#pending.get(message.id);
      if (waiter === undefined) return;
      this.#pending.delete(message.id);
      if (this.#pending.size === 0) worker.unref();
      if (message.type === 'done') waiter.resolve();
      else waiter.reject(new Error(`sqlite sink ${this.#options.path}: ${message.message}`));
    });
    const fail = (error: Error) => {
      if (this.#worker === worker) this.#worker = null;
      for (const waiter of this.#pending.values()) waiter.reject(error);
      this.#pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', () => fail(new Error(`sqlite sink ${this.#options.path}: worker exited`)));
    // An idle worker must not keep the process alive; one with a write in flight must (see write()).
    worker.unref();
    this.#worker = worker;
  }

  write(batch: readonly WalEntry[]): Promise<void> {
    const worker = this.#worker;
    if (worker === null) return this.open().then(() => this.write(batch));
    const id = this.#nextId++;
    return new Promise<void>((resolve, reject) => {
      if (this.#pending.size === 0) worker.ref();
      this.#pending.set(id, { resolve, reject });
      let from = 0;
      try {
        do {
          const to = Math.min(from + SLICE_ROWS, batch.length);
          const rows = new Array<unknown[]>(to - from);
          for (let i = from; i < to; i++) rows[i - from] = rowOf(batch[i] as WalEntry);
          worker.postMessage({ type: 'rows', id, rows, last: to === batch.length });
          from = to;
        } while (from < batch.length);
      } catch (error) {
        // A line that does not parse (read back from a damaged WAL): nothing of this batch is committed.
        if (from > 0) worker.postMessage({ type: 'abort', id });
        this.#pending.delete(id);
        if (this.#pending.size === 0) worker.unref();
        reject(error instanceof Error ? error : new Error(String(error)));
      }
    });
  }

  async close(): Promise<void> {
    const worker = this.#worker;
    if (worker === null) return;
    this.#worker = null;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.postMessage({ type: 'close' });
    const timer = setTimeout(() => void worker.terminate(), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
