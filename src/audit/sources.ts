/**
 * Reading audit records back, in storage order, from any store a sink writes:
 * JSONL files (with their rotated predecessors), SQLite, PostgreSQL. Shared by
 * verify and query. Storage order matters to verify: a file's line order and a
 * table's `pos` order are what an attacker would have to rearrange.
 */
import { createReadStream } from 'node:fs';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { createInterface } from 'node:readline';
import { createPgPool, openSqlite, quoteTable } from './drivers.js';
import { INDEXED_COLUMNS, type IndexedColumns } from './sinks/sink.js';
import { rotationSet } from './sinks/file.js';

export type AuditSource =
  | { file: string | readonly string[]; rotated?: boolean }
  | { sqlite: string; table?: string }
  | { postgres: string; table?: string };

export interface SourceRow {
  /** Where the row is: `audit.jsonl:12`, `pos 1234`. */
  position: string;
  line: string;
  /** Indexed columns of SQL stores (verify checks they agree with the record). */
  columns?: IndexedColumns;
  /** Files: the file a sink appended these lines to (rotated files count as the live one they were cut from). */
  stream?: string;
}

/** `audit.20261124T022301123Z.jsonl` → `audit.jsonl`: a rotated file continues the stream of the live one. */
function streamOf(file: string): string {
  return file.replace(/\.\d{8}T\d{9}Z(?=(\.[^./\\]*)?$)/, '');
}

export function describeSource(source: AuditSource): string {
  if ('file' in source) return `file ${typeof source.file === 'string' ? source.file : source.file.join(', ')}`;
  if ('sqlite' in source) return `sqlite ${source.sqlite}#${source.table ?? 'audit_events'}`;
  let where = source.postgres;
  try {
    const u = new URL(source.postgres);
    where = `${u.username}@${u.host}${u.pathname}`;
  } catch {
    // keep as given
  }
  return `postgres ${where}#${source.table ?? 'audit_events'}`;
}

/** The files a file source covers, in order: each path's rotated files first unless `rotated: false`. */
export async function sourceFiles(source: { file: string | readonly string[]; rotated?: boolean }): Promise<string[]> {
  const paths = typeof source.file === 'string' ? [source.file] : [...source.file];
  if (source.rotated === false) return paths;
  const out: string[] = [];
  for (const path of paths) for (const file of await rotationSet(path)) if (!out.includes(file)) out.push(file);
  // A path given explicitly that does not exist must fail loudly, not verify as an empty store.
  for (const path of paths) if (!out.includes(path)) out.push(path);
  return out;
}

const SELECT_COLUMNS = `pos, ${INDEXED_COLUMNS.join(', ')}, record`;

type SqlRow = IndexedColumns & { pos: number | string; record: string };

function columnsOf(row: SqlRow): IndexedColumns {
  return {
    id: row.id,
    chain: row.chain,
    n: Number(row.n),
    ts: row.ts,
    kind: row.kind,
    subject: row.subject,
    tenant: row.tenant,
    decision: row.decision,
    route: row.route,
    action: row.action,
    status: row.status === null ? null : Number(row.status),
    request_id: row.request_id,
  };
}

export async function* readSource(source: AuditSource, where?: { sql: string; params: unknown[] }): AsyncGenerator<SourceRow> {
  if ('file' in source) {
    for (const file of await sourceFiles(source)) {
      const stream = streamOf(file);
      const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
      let n = 0;
      for await (const line of lines) {
        n++;
        yield { position: `${file}:${n}`, line, stream };
      }
    }
    return;
  }
  if ('sqlite' in source) {
    const db = openSqlite(source.sqlite, { readonly: true, fileMustExist: true });
    try {
      const table = quoteTable(source.table ?? 'audit_events');
      const clause = where === undefined ? '' : `WHERE ${where.sql.replace(/\$\d+/g, '?')}`;
      const statement = db.prepare<SqlRow>(`SELECT ${SELECT_COLUMNS} FROM ${table} ${clause} ORDER BY pos`);
      let count = 0;
      for (const row of statement.iterate(...(where?.params ?? []))) {
        yield { position: `pos ${row.pos}`, line: row.record, columns: columnsOf(row) };
        // better-sqlite3 is synchronous: let the event loop breathe on long stores.
        if (++count % 5000 === 0) await yieldToLoop();
      }
    } finally {
      db.close();
    }
    return;
  }
  const pool = createPgPool(source.postgres, 1);
  try {
    const table = quoteTable(source.table ?? 'audit_events');
    const params = where?.params ?? [];
    const filter = where === undefined ? '' : `AND (${where.sql})`;
    let after: string = '0';
    for (;;) {
      // Keyset pagination: constant cost per page however large the table.
      const page = await pool.query<SqlRow>(
        `SELECT ${SELECT_COLUMNS} FROM ${table} WHERE pos > $${params.length + 1} ${filter} ORDER BY pos LIMIT 5000`,
        [...params, after],
      );
      for (const row of page.rows) yield { position: `pos ${row.pos}`, line: row.record, columns: columnsOf(row) };
      if (page.rows.length < 5000) break;
      after = String((page.rows[page.rows.length - 1] as SqlRow).pos);
    }
  } finally {
    await pool.end();
  }
}
