/**
 * Issuer store in PostgreSQL (pg Pool): several instances share one database.
 *
 * A `families` row per session is the lock every change to a family takes first
 * (`SELECT … FOR UPDATE`): rotation, reuse, revocation and logout of one family are
 * serialised on it, always in the order family row → token rows, so they cannot
 * deadlock. Without it a logout racing a rotation could miss the successor the
 * rotation was inserting (an UPDATE only sees rows committed when it started), and
 * the session would survive its logout. Under that lock the token row is read,
 * classified and consumed with a conditional UPDATE, then its successor inserted,
 * all in one transaction.
 *
 * Tables: `<prefix>clients`, `<prefix>families`, `<prefix>refresh`. Epoch-ms columns
 * are BIGINT (pg returns them as strings; parsed here); lists and claims are JSON
 * text, so they come back exactly as written.
 */
import { createRequire } from 'node:module';
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
import {
  IssuerStoreError,
  type ClientRecord,
  type IssuerStore,
  type RefreshRecord,
  type RotateRequest,
  type RotateResult,
} from './types.js';

// The small part of pg used here (no types are installed).
interface QueryResult<Row> {
  rows: Row[];
  rowCount: number | null;
}
interface Queryable {
  query<Row = Record<string, unknown>>(text: string, values?: unknown[]): Promise<QueryResult<Row>>;
}
interface PoolClient extends Queryable {
  release(destroy?: boolean | Error): void;
}
interface Pool extends Queryable {
  connect(): Promise<PoolClient>;
  end(): Promise<void>;
  on(event: 'error', listener: (error: Error) => void): this;
}
interface PgModule {
  Pool: new (options: {
    connectionString: string;
    max?: number;
    connectionTimeoutMillis?: number;
    idleTimeoutMillis?: number;
    statement_timeout?: number;
    query_timeout?: number;
    application_name?: string;
  }) => Pool;
}

/** Goes into SQL as an identifier: validated, never escaped. */
const TABLE_PREFIX = /^[a-z_][a-z0-9_]{0,40}$/;

type Int = string | number;

function sqlFor(prefix: string) {
  const clients = `"${prefix}clients"`;
  const families = `"${prefix}families"`;
  const refresh = `"${prefix}refresh"`;
  return {
    schema: [
      `CREATE TABLE IF NOT EXISTS ${clients} (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        audiences TEXT NOT NULL,
        scopes TEXT NOT NULL,
        grants TEXT NOT NULL,
        token_ttl_sec INTEGER,
        created_at BIGINT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT FALSE
      )`,
      `CREATE TABLE IF NOT EXISTS ${families} (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT
      )`,
      `CREATE TABLE IF NOT EXISTS ${refresh} (
        id TEXT PRIMARY KEY,
        family_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        client_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        audience TEXT NOT NULL,
        claims TEXT NOT NULL,
        binding TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        family_expires_at BIGINT NOT NULL,
        used_at BIGINT,
        revoked_at BIGINT
      )`,
      `CREATE INDEX IF NOT EXISTS "${prefix}families_subject" ON ${families} (subject)`,
      `CREATE INDEX IF NOT EXISTS "${prefix}families_expires" ON ${families} (expires_at)`,
      `CREATE INDEX IF NOT EXISTS "${prefix}refresh_family" ON ${refresh} (family_id)`,
      `CREATE INDEX IF NOT EXISTS "${prefix}refresh_family_expires" ON ${refresh} (family_expires_at)`,
    ],
    getClient: `SELECT * FROM ${clients} WHERE id = $1`,
    putClient: `INSERT INTO ${clients} (id, secret_hash, audiences, scopes, grants, token_ttl_sec, created_at, disabled)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
      ON CONFLICT (id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, audiences = EXCLUDED.audiences,
        scopes = EXCLUDED.scopes, grants = EXCLUDED.grants, token_ttl_sec = EXCLUDED.token_ttl_sec,
        created_at = EXCLUDED.created_at, disabled = EXCLUDED.disabled`,
    deleteClient: `DELETE FROM ${clients} WHERE id = $1`,
    listClients: `SELECT * FROM ${clients} ORDER BY id`,
    insertFamily: `INSERT INTO ${families} (id, subject, expires_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING`,
    insertRefresh: `INSERT INTO ${refresh} (id, family_id, subject, client_id, scope, audience, claims, binding,
        created_at, expires_at, family_expires_at, used_at, revoked_at)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
    getRefresh: `SELECT * FROM ${refresh} WHERE id = $1`,
    familyOf: `SELECT family_id FROM ${refresh} WHERE id = $1`,
    lockFamily: `SELECT revoked_at FROM ${families} WHERE id = $1 FOR UPDATE`,
    lockRefresh: `SELECT * FROM ${refresh} WHERE id = $1 FOR UPDATE`,
    markUsed: `UPDATE ${refresh} SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL`,
    revokeFamilyRow: `UPDATE ${families} SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL`,
    revokeTokens: `UPDATE ${refresh} SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL RETURNING used_at`,
    lockLiveFamiliesOf: `SELECT id FROM ${families} WHERE subject = $1 AND revoked_at IS NULL ORDER BY id FOR UPDATE`,
    lockExpiredFamilies: `SELECT id FROM ${families} WHERE expires_at < $1 ORDER BY id FOR UPDATE`,
    deleteFamilies: `DELETE FROM ${families} WHERE expires_at < $1`,
    deleteRefresh: `DELETE FROM ${refresh} WHERE family_expires_at < $1`,
  };
}

export interface PostgresIssuerStoreOptions {
  url: string;
  /** Prefix of the three tables; `^[a-z_][a-z0-9_]{0,40}$`. Default `bulwark_issuer_`. */
  tablePrefix?: string;
  pool?: { max?: number };
  /** Bound on getting a connection (ms): an unreachable server is an error, not a hang. Default 5000. */
  connectTimeoutMs?: number;
}

export class PostgresIssuerStore implements IssuerStore {
  readonly kind = 'postgres';
  readonly tablePrefix: string;
  private readonly pool: Pool;
  private readonly sql: ReturnType<typeof sqlFor>;
  private ready: Promise<void> | null = null;
  private closed = false;

  constructor(options: PostgresIssuerStoreOptions) {
    const prefix = options.tablePrefix ?? 'bulwark_issuer_';
    if (!TABLE_PREFIX.test(prefix)) throw new TypeError(`issuer store: tablePrefix must match ${TABLE_PREFIX.source}`);
    this.tablePrefix = prefix;
    this.sql = sqlFor(prefix);
    const pg = createRequire(import.meta.url)('pg') as PgModule;
    this.pool = new pg.Pool({
      connectionString: options.url,
      max: options.pool?.max ?? 10,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 5_000,
      idleTimeoutMillis: 30_000,
      statement_timeout: 10_000,
      query_timeout: 15_000,
      application_name: 'bulwark-issuer',
    });
    // An idle client's error (server restart) must not crash the process; the next query reconnects.
    this.pool.on('error', () => {});
  }

  init(): Promise<void> {
    // A failed init may be retried; a successful one is not repeated.
    this.ready ??= this.createTables().catch((error: unknown) => {
      this.ready = null;
      throw error;
    });
    return this.ready;
  }

  async getClient(id: string): Promise<ClientRecord | null> {
    const { rows } = await this.query<ClientRow>(this.sql.getClient, [id]);
    return rows[0] === undefined ? null : clientOf(rows[0]);
  }

  async putClient(c: ClientRecord): Promise<void> {
    await this.query(this.sql.putClient, [
      c.id,
      c.secretHash,
      JSON.stringify(c.audiences),
      JSON.stringify(c.scopes),
      JSON.stringify(c.grants),
      c.tokenTtlSec,
      c.createdAt,
      c.disabled,
    ]);
  }

  async deleteClient(id: string): Promise<boolean> {
    const { rowCount } = await this.query(this.sql.deleteClient, [id]);
    return (rowCount ?? 0) > 0;
  }

  async listClients(): Promise<ClientRecord[]> {
    const { rows } = await this.query<ClientRow>(this.sql.listClients);
    return rows.map(clientOf);
  }

  async insertRefresh(record: RefreshRecord): Promise<void> {
    await this.transaction(async (db) => {
      await db.query(this.sql.insertFamily, [record.familyId, record.subject, record.familyExpiresAt]);
      await db.query(this.sql.insertRefresh, refreshParams(record));
    });
  }

  async rotateRefresh(request: RotateRequest): Promise<RotateResult> {
    // The family id never changes, so it can be read before taking the family's lock.
    const found = await this.query<{ family_id: string }>(this.sql.familyOf, [request.id]);
    const familyId = found.rows[0]?.family_id;
    if (familyId === undefined) return { status: 'unknown' };
    return this.transaction(async (db): Promise<RotateResult> => {
      const family = await db.query<{ revoked_at: Int | null }>(this.sql.lockFamily, [familyId]);
      const row = (await db.query<RefreshRow>(this.sql.lockRefresh, [request.id])).rows[0];
      if (row === undefined) return { status: 'unknown' }; // swept meanwhile
      const record = refreshOf(row);
      const familyRevoked = family.rows[0] !== undefined && family.rows[0].revoked_at !== null;
      const status = familyRevoked ? 'revoked' : classifyPresented(record, request);
      if (status === 'reused') await this.revokeIn(db, familyId, request.now);
      if (status !== 'rotate') return { status, record };
      const used = await db.query(this.sql.markUsed, [record.id, request.now]);
      if (used.rowCount !== 1) throw new IssuerStoreError('issuer store (postgres): refresh token changed under its lock');
      const next = successorOf(record, request);
      await db.query(this.sql.insertRefresh, refreshParams(next));
      return { status: 'rotated', record, next };
    });
  }

  async revokeFamily(familyId: string, now: number): Promise<number> {
    return this.transaction(async (db) => {
      await db.query(this.sql.lockFamily, [familyId]);
      return this.revokeIn(db, familyId, now);
    });
  }

  async revokeSubject(subject: string, now: number): Promise<string[]> {
    return this.transaction(async (db) => {
      const { rows } = await db.query<{ id: string }>(this.sql.lockLiveFamiliesOf, [subject]);
      const families = rows.map((r) => r.id);
      for (const familyId of families) await this.revokeIn(db, familyId, now);
      return families;
    });
  }

  async getRefresh(id: string): Promise<RefreshRecord | null> {
    const { rows } = await this.query<RefreshRow>(this.sql.getRefresh, [id]);
    return rows[0] === undefined ? null : refreshOf(rows[0]);
  }

  async sweep(now: number): Promise<number> {
    return this.transaction(async (db) => {
      // Lock order as everywhere: families (sorted) first, then their tokens.
      await db.query(this.sql.lockExpiredFamilies, [now]);
      await db.query(this.sql.deleteFamilies, [now]);
      return (await db.query(this.sql.deleteRefresh, [now])).rowCount ?? 0;
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end().catch(() => {});
  }

  // -------------------------------------------------------------------------

  /** With the family row locked: marks the family and its tokens revoked; returns how many tokens were live. */
  private async revokeIn(db: Queryable, familyId: string, now: number): Promise<number> {
    await db.query(this.sql.revokeFamilyRow, [familyId, now]);
    const { rows } = await db.query<{ used_at: Int | null }>(this.sql.revokeTokens, [familyId, now]);
    return rows.filter((r) => r.used_at === null).length;
  }

  private async createTables(): Promise<void> {
    await this.transaction(async (db) => {
      // Concurrent CREATE … IF NOT EXISTS from several instances can still collide in the
      // catalog (unique violation on pg_type); one lock per prefix makes them take turns.
      await db.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`bulwark-issuer-init:${this.tablePrefix}`]);
      for (const statement of this.sql.schema) await db.query(statement);
    });
  }

  private async query<Row = Record<string, unknown>>(text: string, values?: unknown[]): Promise<QueryResult<Row>> {
    if (this.closed) throw new IssuerStoreError('issuer store (postgres): closed');
    try {
      return await this.pool.query<Row>(text, values);
    } catch (error) {
      throw storeError('postgres', error);
    }
  }

  /** READ COMMITTED is enough: every read that decides anything happens under a row lock. */
  private async transaction<T>(fn: (db: Queryable) => Promise<T>): Promise<T> {
    if (this.closed) throw new IssuerStoreError('issuer store (postgres): closed');
    let client: PoolClient;
    try {
      client = await this.pool.connect();
    } catch (error) {
      throw storeError('postgres', error);
    }
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      try {
        await client.query('ROLLBACK');
      } catch (rollbackError) {
        // A connection that cannot roll back is not handed to the next caller.
        broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
      }
      throw storeError('postgres', error);
    } finally {
      client.release(broken);
    }
  }
}
