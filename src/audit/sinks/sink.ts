/**
 * The sink contract. A sink receives committed WAL entries in WAL order, one
 * batch at a time (the next batch only after the previous one resolved), and
 * must be idempotent by record id: after a crash the WAL re-sends what a sink
 * may already hold (SQL stores use `ON CONFLICT (id) DO NOTHING`; the file sink
 * names its last line, `takeResumePoint`; a webhook receiver dedups by id).
 *
 * `write` resolving means the batch is stored as durably as the sink can make
 * it: the WAL segment holding it may then be deleted. A rejection is retried
 * with backoff, forever — the WAL keeps the events meanwhile.
 */
import type { WalEntry } from '../wal.js';

export interface AuditSink {
  /** For logs and stats: `file:/var/log/audit.jsonl`, `postgres:audit@db/audit#audit_events`. */
  readonly name: string;
  readonly batchSize: number;
  /**
   * Sinks that can neither deduplicate nor read back what they hold (stdout) have
   * the cursor saved after every batch, so a replay re-sends at most the last
   * batch. Others have it saved once a second: it costs a file write and a rename.
   */
  readonly exactCursor: boolean;
  /**
   * For a store that cannot `ON CONFLICT` but can read back what it holds (a
   * file): the id of the newest record it had when it opened, given once. The log
   * moves the sink's cursor past that record in the WAL, so a replay after a
   * crash starts right after it however far the saved cursor lagged.
   */
  takeResumePoint?(): string | null;
  /**
   * `write` reads each entry's indexed columns (`columnsOf`: the SQL stores). The log then takes
   * them as it builds each record; without it, `columnsOf` has to parse the line.
   */
  readonly usesColumns?: boolean;
  open(): Promise<void>;
  write(batch: readonly WalEntry[]): Promise<void>;
  close(): Promise<void>;
}

/** The parsed record of an entry (entries read back from the WAL carry only the line). */
export function recordOf(entry: WalEntry): Record<string, unknown> {
  if (entry.record === undefined) entry.record = JSON.parse(entry.line) as Record<string, unknown>;
  return entry.record;
}

/** An entry's indexed columns: taken when it was built, or from its parsed line (entries read back from disk). */
export function columnsOf(entry: WalEntry): IndexedColumns {
  return entry.columns ?? indexedColumns(recordOf(entry));
}

/** One SQL row: the indexed columns in INDEXED_COLUMNS order, then the record line. */
export function rowOf(entry: WalEntry): unknown[] {
  const c = columnsOf(entry);
  return [
    c.id,
    c.chain,
    c.n,
    c.ts,
    c.kind,
    c.subject,
    c.tenant,
    c.decision,
    c.route,
    c.action,
    c.status,
    c.request_id,
    entry.line,
  ];
}

/** The indexed columns the SQL sinks store beside the record (verify checks they agree with it). */
export interface IndexedColumns {
  id: string;
  chain: string;
  n: number;
  ts: string;
  kind: string;
  subject: string | null;
  tenant: string | null;
  decision: string | null;
  route: string | null;
  action: string | null;
  status: number | null;
  request_id: string | null;
}

export const INDEXED_COLUMNS = [
  'id',
  'chain',
  'n',
  'ts',
  'kind',
  'subject',
  'tenant',
  'decision',
  'route',
  'action',
  'status',
  'request_id',
] as const;

/** Longest text kept in an indexed column (a B-tree entry must fit a PostgreSQL page). */
export const MAX_INDEXED_TEXT = 256;

/**
 * A text as an indexed column holds it: NUL (which PostgreSQL text refuses) as U+FFFD, cut to
 * MAX_INDEXED_TEXT without splitting a surrogate pair. The record keeps the whole value; the
 * column is a search key — one record a store cannot take must not stop a sink for ever.
 */
export function indexedText(value: string): string {
  let text = value.includes('\u0000') ? value.replaceAll('\u0000', '\uFFFD') : value;
  if (text.length > MAX_INDEXED_TEXT) {
    const cut = (text.charCodeAt(MAX_INDEXED_TEXT - 1) & 0xfc00) === 0xd800 ? MAX_INDEXED_TEXT - 1 : MAX_INDEXED_TEXT;
    text = text.slice(0, cut);
  }
  return text;
}

function str(value: unknown): string | null {
  return typeof value === 'string' ? indexedText(value) : null;
}

export function indexedColumns(record: Record<string, unknown>): IndexedColumns {
  return {
    id: String(record['id']),
    chain: String(record['chain']),
    n: Number(record['n']),
    ts: String(record['ts']),
    kind: String(record['kind']),
    subject: str(record['subject']),
    tenant: str(record['tenant']),
    decision: str(record['decision']),
    route: str(record['route']),
    action: str(record['action']),
    status: typeof record['status'] === 'number' ? record['status'] : null,
    request_id: str(record['requestId']),
  };
}
