/**
 * PostgreSQL sink (pg Pool): the scale-out store, where every instance and
 * worker writes its own chains into one table. One INSERT per batch from
 * `unnest` of column arrays (13 parameters whatever the batch size, so no
 * 65,535-parameter ceiling), `ON CONFLICT (id) DO NOTHING` for replays, and
 * `WITH ORDINALITY … ORDER BY` so `pos` follows WAL order within the batch.
 *
 * `pos` (bigserial) is the storage order verify walks. Several writers
 * interleave their rows, but each writer sends its chain's batches one after
 * another, so within a chain `pos` follows `n` — which is what verify checks.
 */
import { createPgPool, quoteTable, type PgClientLike, type PgPool } from '../drivers.js';
import type { WalEntry } from '../wal.js';
import { rowOf, type AuditSink } from './sink.js';

export interface PostgresSinkOptions {
  url: string;
  table: string;
  poolSize: number;
  batchSize: number;
  /** Shown in names and logs instead of the URL (which may hold a password). */
  label: string;
}

function indexName(table: string, suffix: string): string {
  const bare = table.includes('.') ? (table.split('.').pop() as string) : table;
  return `"${`${bare}_${suffix}`.slice(0, 63).replace(/"/g, '""')}"`;
}

export function postgresSchema(table: string): string[] {
  const t = quoteTable(table);
  const statements = [
    `CREATE TABLE IF NOT EXISTS ${t} (
      pos BIGSERIAL PRIMARY KEY,
      id UUID NOT NULL UNIQUE,
      chain TEXT NOT NULL,
      n BIGINT NOT NULL,
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
    )`,
    `CREATE INDEX IF NOT EXISTS ${indexName(table, 'ts')} ON ${t} (ts)`,
    `CREATE INDEX IF NOT EXISTS ${indexName(table, 'subject_ts')} ON ${t} (subject, ts)`,
    `CREATE INDEX IF NOT EXISTS ${indexName(table, 'chain_n')} ON ${t} (chain, n)`,
    `CREATE INDEX IF NOT EXISTS ${indexName(table, 'request_id')} ON ${t} (request_id)`,
  ];
  const schema = table.includes('.') ? table.split('.')[0] : undefined;
  if (schema !== undefined) statements.unshift(`CREATE SCHEMA IF NOT EXISTS ${quoteTable(schema)}`);
  return statements;
}

export async function ensurePostgresTable(client: PgClientLike, table: string): Promise<void> {
  // Two instances creating the same table at once can race on the catalog; the loser's retry finds it.
  for (const statement of postgresSchema(table)) {
    try {
      await client.query(statement);
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code !== '23505' && code !== '42P07') throw error; // unique_violation on pg_type / duplicate_table
    }
  }
}

export class PostgresSink implements AuditSink {
  readonly name: string;
  readonly batchSize: number;
  readonly exactCursor = false;
  readonly usesColumns = true;
  readonly #options: PostgresSinkOptions;
  readonly #insert: string;
  #pool: PgPool | null = null;
  #ready = false;

  constructor(options: PostgresSinkOptions) {
    this.#options = options;
    this.name = `postgres:${options.label}`;
    this.batchSize = options.batchSize;
    const t = quoteTable(options.table);
    this.#insert = `INSERT INTO ${t} (id, chain, n, ts, kind, subject, tenant, decision, route, action, status, request_id, record)
      SELECT id, chain, n, ts, kind, subject, tenant, decision, route, action, status, request_id, record
      FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                  $9::text[], $10::text[], $11::int[], $12::text[], $13::text[])
        WITH ORDINALITY AS r(id, chain, n, ts, kind, subject, tenant, decision, route, action, status, request_id, record, ord)
      ORDER BY ord
      ON CONFLICT (id) DO NOTHING`;
  }

  async open(): Promise<void> {
    this.#pool ??= createPgPool(this.#options.url, this.#options.poolSize);
    if (!this.#ready) {
      await ensurePostgresTable(this.#pool, this.#options.table);
      this.#ready = true;
    }
  }

  async write(batch: readonly WalEntry[]): Promise<void> {
    if (this.#pool === null || !this.#ready) await this.open();
    const columns: unknown[][] = Array.from({ length: 13 }, () => new Array<unknown>(batch.length));
    batch.forEach((entry, i) => {
      const values = rowOf(entry);
      for (let k = 0; k < 13; k++) (columns[k] as unknown[])[i] = values[k];
    });
    try {
      await (this.#pool as PgPool).query(this.#insert, columns);
    } catch (error) {
      // The table (or its schema) was dropped while running: create it again on the retry rather than
      // fail until a restart. Verify still shows the loss (the new table's chains start mid-way).
      const code = (error as { code?: string }).code;
      if (code === '42P01' || code === '3F000') this.#ready = false;
      throw error;
    }
  }

  async close(): Promise<void> {
    const pool = this.#pool;
    this.#pool = null;
    this.#ready = false;
    if (pool !== null) await pool.end();
  }
}
