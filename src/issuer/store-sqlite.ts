/**
 * Issuer store in SQLite (better-sqlite3): the default, one host. The cluster's
 * workers open the same file, so it is WAL (readers never wait for the writer) with
 * a busy timeout (writers queue rather than fail), and every read-modify-write runs
 * in a `BEGIN IMMEDIATE` transaction: the write lock is taken before the read, so
 * two workers rotating one refresh token are serialised and the second sees it used.
 *
 * The rotation rules (classification order, what the successor copies) live here
 * and are shared with the PostgreSQL and Redis stores, so the three cannot drift.
 *
 * better-sqlite3 is synchronous; each call is a few indexed row operations, which
 * is cheaper on the event loop than a hop to a worker thread.
 */
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import {
  IssuerStoreError,
  type ClientRecord,
  type IssuerStore,
  type RefreshRecord,
  type RotateRequest,
  type RotateResult,
} from './types.js';
import {
  classifyPresented,
  clientOf,
  refreshOf,
  refreshParams,
  storeError,
  successorOf,
  type ClientRow,
  type RefreshRow,
} from './store-rules.js';

// ---------------------------------------------------------------------------
// The small part of better-sqlite3 used here (no types are installed).

interface Statement<Row> {
  run(...params: unknown[]): { changes: number };
  get(...params: unknown[]): Row | undefined;
  all(...params: unknown[]): Row[];
}

interface Transaction<A extends unknown[], R> {
  (...args: A): R;
  immediate(...args: A): R;
}

interface Database {
  prepare<Row = unknown>(sql: string): Statement<Row>;
  exec(sql: string): void;
  pragma(sql: string, options?: { simple?: boolean }): unknown;
  transaction<A extends unknown[], R>(fn: (...args: A) => R): Transaction<A, R>;
  close(): void;
}

type DatabaseConstructor = new (path: string, options?: { timeout?: number }) => Database;

const P = 'bulwark_issuer_';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS ${P}clients (
  id TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL,
  audiences TEXT NOT NULL,
  scopes TEXT NOT NULL,
  grants TEXT NOT NULL,
  token_ttl_sec INTEGER,
  created_at INTEGER NOT NULL,
  disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ${P}refresh (
  id TEXT PRIMARY KEY,
  family_id TEXT NOT NULL,
  subject TEXT NOT NULL,
  client_id TEXT NOT NULL,
  scope TEXT NOT NULL,
  audience TEXT NOT NULL,
  claims TEXT NOT NULL,
  binding TEXT,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  family_expires_at INTEGER NOT NULL,
  used_at INTEGER,
  revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS ${P}refresh_family ON ${P}refresh (family_id);
CREATE INDEX IF NOT EXISTS ${P}refresh_subject ON ${P}refresh (subject);
CREATE INDEX IF NOT EXISTS ${P}refresh_family_expires ON ${P}refresh (family_expires_at);
`;

function prepare(db: Database) {
  return {
    getClient: db.prepare<ClientRow>(`SELECT * FROM ${P}clients WHERE id = ?`),
    putClient: db.prepare(
      `INSERT OR REPLACE INTO ${P}clients (id, secret_hash, audiences, scopes, grants, token_ttl_sec, created_at, disabled)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    deleteClient: db.prepare(`DELETE FROM ${P}clients WHERE id = ?`),
    listClients: db.prepare<ClientRow>(`SELECT * FROM ${P}clients ORDER BY id`),
    insertRefresh: db.prepare(
      `INSERT INTO ${P}refresh (id, family_id, subject, client_id, scope, audience, claims, binding,
         created_at, expires_at, family_expires_at, used_at, revoked_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    getRefresh: db.prepare<RefreshRow>(`SELECT * FROM ${P}refresh WHERE id = ?`),
    markUsed: db.prepare(`UPDATE ${P}refresh SET used_at = ? WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL`),
    liveInFamily: db.prepare<{ n: number }>(
      `SELECT count(*) AS n FROM ${P}refresh WHERE family_id = ? AND used_at IS NULL AND revoked_at IS NULL`,
    ),
    revokeFamily: db.prepare(`UPDATE ${P}refresh SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL`),
    liveFamiliesOf: db.prepare<{ family_id: string }>(
      `SELECT DISTINCT family_id FROM ${P}refresh WHERE subject = ? AND revoked_at IS NULL ORDER BY family_id`,
    ),
    sweep: db.prepare(`DELETE FROM ${P}refresh WHERE family_expires_at < ?`),
  };
}

export interface SqliteIssuerStoreOptions {
  /** Database file (created with its directory), or `:memory:`. */
  path: string;
}

export class SqliteIssuerStore implements IssuerStore {
  readonly kind = 'sqlite';
  readonly path: string;
  private db: Database | null = null;
  private statements: ReturnType<typeof prepare> | null = null;
  private rotateTx: Transaction<[RotateRequest], RotateResult> | null = null;
  private revokeFamilyTx: Transaction<[string, number], number> | null = null;
  private revokeSubjectTx: Transaction<[string, number], string[]> | null = null;

  constructor(options: SqliteIssuerStoreOptions) {
    this.path = options.path;
  }

  async init(): Promise<void> {
    if (this.db !== null) return;
    let db: Database | null = null;
    try {
      if (this.path !== ':memory:' && this.path !== '') mkdirSync(dirname(this.path), { recursive: true });
      const Sqlite = createRequire(import.meta.url)('better-sqlite3') as DatabaseConstructor;
      db = new Sqlite(this.path, { timeout: 5000 });
      // Before anything that may wait on another worker's lock.
      db.pragma('busy_timeout = 5000');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      const schema = db.transaction(() => db!.exec(SCHEMA));
      schema.immediate();
      const s = prepare(db);
      this.rotateTx = db.transaction((request: RotateRequest) => this.rotateIn(s, request));
      this.revokeFamilyTx = db.transaction((familyId: string, now: number) => {
        const live = s.liveInFamily.get(familyId)?.n ?? 0;
        s.revokeFamily.run(now, familyId);
        return live;
      });
      this.revokeSubjectTx = db.transaction((subject: string, now: number) => {
        const families = s.liveFamiliesOf.all(subject).map((row) => row.family_id);
        for (const familyId of families) s.revokeFamily.run(now, familyId);
        return families;
      });
      this.statements = s;
      this.db = db;
    } catch (error) {
      db?.close();
      throw storeError('sqlite', error);
    }
  }

  async getClient(id: string): Promise<ClientRecord | null> {
    return this.run((s) => {
      const row = s.getClient.get(id);
      return row === undefined ? null : clientOf(row);
    });
  }

  async putClient(c: ClientRecord): Promise<void> {
    this.run((s) =>
      s.putClient.run(
        c.id,
        c.secretHash,
        JSON.stringify(c.audiences),
        JSON.stringify(c.scopes),
        JSON.stringify(c.grants),
        c.tokenTtlSec,
        c.createdAt,
        c.disabled ? 1 : 0,
      ),
    );
  }

  async deleteClient(id: string): Promise<boolean> {
    return this.run((s) => s.deleteClient.run(id).changes > 0);
  }

  async listClients(): Promise<ClientRecord[]> {
    return this.run((s) => s.listClients.all().map(clientOf));
  }

  async insertRefresh(record: RefreshRecord): Promise<void> {
    this.run((s) => s.insertRefresh.run(...refreshParams(record)));
  }

  async rotateRefresh(request: RotateRequest): Promise<RotateResult> {
    return this.run(() => this.rotateTx!.immediate(request));
  }

  async revokeFamily(familyId: string, now: number): Promise<number> {
    return this.run(() => this.revokeFamilyTx!.immediate(familyId, now));
  }

  async revokeSubject(subject: string, now: number): Promise<string[]> {
    return this.run(() => this.revokeSubjectTx!.immediate(subject, now));
  }

  async getRefresh(id: string): Promise<RefreshRecord | null> {
    return this.run((s) => {
      const row = s.getRefresh.get(id);
      return row === undefined ? null : refreshOf(row);
    });
  }

  async sweep(now: number): Promise<number> {
    return this.run((s) => s.sweep.run(now).changes);
  }

  async close(): Promise<void> {
    const db = this.db;
    this.db = null;
    this.statements = null;
    db?.close();
  }

  // -------------------------------------------------------------------------

  /** Runs inside the IMMEDIATE transaction: the read below already holds the write lock. */
  private rotateIn(s: ReturnType<typeof prepare>, request: RotateRequest): RotateResult {
    const row = s.getRefresh.get(request.id);
    if (row === undefined) return { status: 'unknown' };
    const record = refreshOf(row);
    const status = classifyPresented(record, request);
    if (status === 'reused') s.revokeFamily.run(request.now, record.familyId);
    if (status !== 'rotate') return { status, record };
    if (s.markUsed.run(request.now, record.id).changes !== 1) throw new Error('refresh token changed inside its transaction');
    const next = successorOf(record, request);
    s.insertRefresh.run(...refreshParams(next));
    return { status: 'rotated', record, next };
  }

  private run<T>(fn: (s: ReturnType<typeof prepare>) => T): T {
    const s = this.statements;
    if (s === null) throw new IssuerStoreError('issuer store (sqlite): not open (init() not called, or closed)');
    try {
      return fn(s);
    } catch (error) {
      throw storeError('sqlite', error);
    }
  }
}
