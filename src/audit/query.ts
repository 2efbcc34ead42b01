/**
 * `queryAudit`: records matching simple filters, from any store. SQL stores
 * filter on their indexed columns (ts, subject, tenant, decision, route,
 * action, kind, request_id); files are scanned. Timestamps are fixed-width RFC
 * 3339 text, so time ranges are string comparisons in every store.
 *
 * Query answers are not verified: run `audit verify` on the store to know the
 * records are genuine (verify also checks the SQL columns agree with them).
 */
import { formatTimestamp } from './clock.js';
import type { AuditDecision } from './event.js';
import { readSource, type AuditSource } from './sources.js';
import { indexedText } from './sinks/sink.js';

export interface AuditQuery {
  /** Inclusive lower bound: RFC 3339 text, or a Date. */
  since?: string | Date;
  until?: string | Date;
  subject?: string;
  tenant?: string;
  decision?: AuditDecision;
  route?: string;
  action?: string;
  kind?: 'request' | 'event' | 'gap' | 'checkpoint' | 'start';
  requestId?: string;
  /** Most records returned (the newest are kept when more match). Default 100. */
  limit?: number;
}

const DURATION = /^(\d+)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `1h`, `30m`, `2d` before `now`, or an RFC 3339 timestamp. Null when it is neither. */
export function parseSince(text: string, now = Date.now()): Date | null {
  const m = DURATION.exec(text);
  if (m !== null) {
    // Beyond the Date range (`99999999999999d`) is not a time either.
    const date = new Date(now - Number(m[1]) * (UNIT_MS[m[2] as string] as number));
    return Number.isNaN(date.getTime()) ? null : date;
  }
  const ms = Date.parse(text);
  return Number.isNaN(ms) || !/^\d{4}-\d{2}-\d{2}/.test(text) ? null : new Date(ms);
}

/**
 * A bound as a record timestamp (nanoseconds). A Date has milliseconds only: an upper bound
 * takes the end of its millisecond, so `--until <a record's own ts>` keeps that record.
 */
function bound(value: string | Date | undefined, upper = false): string | undefined {
  if (value === undefined) return undefined;
  const date = typeof value === 'string' ? new Date(value) : value;
  if (Number.isNaN(date.getTime())) throw new TypeError(`invalid time bound ${String(value)}`);
  return formatTimestamp(BigInt(date.getTime()) * 1_000_000n + (upper ? 999_999n : 0n));
}

const COLUMN_FILTERS = [
  ['subject', 'subject'],
  ['tenant', 'tenant'],
  ['decision', 'decision'],
  ['route', 'route'],
  ['action', 'action'],
  ['kind', 'kind'],
  ['requestId', 'request_id'],
] as const;

export async function queryAudit(source: AuditSource, query: AuditQuery = {}): Promise<Record<string, unknown>[]> {
  const since = bound(query.since);
  const until = bound(query.until, true);
  const limit = query.limit ?? 100;
  const clauses: string[] = [];
  const params: unknown[] = [];
  if (since !== undefined) {
    params.push(since);
    clauses.push(`ts >= $${params.length}`);
  }
  if (until !== undefined) {
    params.push(until);
    clauses.push(`ts <= $${params.length}`);
  }
  for (const [field, column] of COLUMN_FILTERS) {
    const value = query[field];
    if (value === undefined) continue;
    // The column holds the value as indexed (cut, NUL replaced); the record check below is exact.
    params.push(indexedText(value));
    clauses.push(`${column} = $${params.length}`);
  }
  const where = 'file' in source || clauses.length === 0 ? undefined : { sql: clauses.join(' AND '), params };
  const out: Record<string, unknown>[] = [];
  for await (const row of readSource(source, where)) {
    let record: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(row.line);
      // Lines that are JSON but not records (`null`, `42`, `[…]`) are as foreign as unparseable ones.
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) continue;
      record = parsed as Record<string, unknown>;
    } catch {
      continue;
    }
    if (!matches(record, query, since, until)) continue;
    out.push(record);
    // Keep the newest `limit`: storage order is (roughly) time order.
    if (out.length > limit) out.shift();
  }
  return out;
}

function matches(
  record: Record<string, unknown>,
  query: AuditQuery,
  since: string | undefined,
  until: string | undefined,
): boolean {
  const ts = String(record['ts']);
  if (since !== undefined && ts < since) return false;
  if (until !== undefined && ts > until) return false;
  for (const [field] of COLUMN_FILTERS) {
    const value = query[field];
    if (value !== undefined && record[field] !== value) return false;
  }
  return true;
}
