/**
 * Typed doors to better-sqlite3 and pg. Neither ships TypeScript types and no
 * `@types` package is installed, so this file declares the small surface audit
 * uses and loads the CommonJS modules through `createRequire` — lazily, so a
 * gateway without a SQLite or PostgreSQL sink never loads the native addon or
 * the pg client.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export interface SqliteStatement<Row = unknown> {
  run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint };
  get(...params: unknown[]): Row | undefined;
  all(...params: unknown[]): Row[];
  iterate(...params: unknown[]): IterableIterator<Row>;
}

export interface SqliteDatabase {
  prepare<Row = unknown>(sql: string): SqliteStatement<Row>;
  exec(sql: string): void;
  pragma(sql: string, options?: { simple?: boolean }): unknown;
  transaction<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void;
  close(): void;
  readonly open: boolean;
}

type SqliteConstructor = new (
  path: string,
  options?: { readonly?: boolean; fileMustExist?: boolean; timeout?: number },
) => SqliteDatabase;

export function openSqlite(
  path: string,
  options?: { readonly?: boolean; fileMustExist?: boolean; timeout?: number },
): SqliteDatabase {
  const Database = require('better-sqlite3') as SqliteConstructor;
  return new Database(path, options);
}

export interface PgQueryResult<Row = Record<string, unknown>> {
  rows: Row[];
  rowCount: number | null;
}

export interface PgClientLike {
  query<Row = Record<string, unknown>>(text: string, values?: unknown[]): Promise<PgQueryResult<Row>>;
}

export interface PgPool extends PgClientLike {
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
    application_name?: string;
  }) => PgPool;
}

export function createPgPool(url: string, max: number): PgPool {
  const pg = require('pg') as PgModule;
  const pool = new pg.Pool({
    connectionString: url,
    max,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: 30_000,
    application_name: 'bulwark-audit',
  });
  // An idle client's error (server restart) must not crash the process; the next query reconnects.
  pool.on('error', () => {});
  return pool;
}

/** `schema.table` quoted as identifiers (names are validated by the config schema; quoting is belt and braces). */
export function quoteTable(name: string): string {
  return name
    .split('.')
    .map((part) => `"${part.replace(/"/g, '""')}"`)
    .join('.');
}
