/**
 * Rotation rules and row shapes shared by the three issuer stores (SQLite, PostgreSQL,
 * Redis), so the classification of a presented refresh token cannot drift between them.
 */
import { IssuerStoreError, type ClientRecord, type RefreshRecord, type RotateRequest } from './types.js';

/** What presenting `record` leads to, before any change: `rotate` when it is current. */
export type PresentedStatus = 'revoked' | 'reused' | 'expired' | 'binding_mismatch' | 'rotate';

/**
 * The classification order matters: a revoked family stays revoked whatever else is
 * true; a used token is reuse (and ends the family) even when it has since expired,
 * so a thief replaying an old token is noticed as long as the record exists; binding
 * comes last so a mismatch never consumes a token that is otherwise good.
 */
export function classifyPresented(record: RefreshRecord, request: RotateRequest): PresentedStatus {
  if (record.revokedAt !== null) return 'revoked';
  if (record.usedAt !== null) return 'reused';
  if (request.now >= record.expiresAt || request.now >= record.familyExpiresAt) return 'expired';
  if (record.binding !== null && request.binding !== record.binding) return 'binding_mismatch';
  return 'rotate';
}

/** The record that replaces `record` in its family. */
export function successorOf(record: RefreshRecord, request: RotateRequest): RefreshRecord {
  return {
    id: request.nextId,
    familyId: record.familyId,
    subject: record.subject,
    clientId: record.clientId,
    scope: record.scope,
    audience: record.audience,
    claims: record.claims,
    binding: record.binding,
    createdAt: request.now,
    expiresAt: Math.min(request.nextExpiresAt, record.familyExpiresAt),
    familyExpiresAt: record.familyExpiresAt,
    usedAt: null,
    revokedAt: null,
  };
}

/** Wraps any driver error: the issuer answers 503 for these and keeps running. */
export function storeError(kind: string, error: unknown): IssuerStoreError {
  if (error instanceof IssuerStoreError) return error;
  const detail = error instanceof Error ? error.message : String(error);
  return new IssuerStoreError(`issuer store (${kind}): ${detail}`, { cause: error });
}

/** A refresh record as positional SQL parameters, in the column order both SQL stores use. */
export function refreshParams(r: RefreshRecord): unknown[] {
  return [
    r.id,
    r.familyId,
    r.subject,
    r.clientId,
    r.scope,
    JSON.stringify(r.audience),
    JSON.stringify(r.claims),
    r.binding,
    r.createdAt,
    r.expiresAt,
    r.familyExpiresAt,
    r.usedAt,
    r.revokedAt,
  ];
}

/** A refresh row as both SQL stores read it (PostgreSQL returns BIGINT columns as strings). */
export interface RefreshRow {
  id: string;
  family_id: string;
  subject: string;
  client_id: string;
  scope: string;
  audience: string;
  claims: string;
  binding: string | null;
  created_at: number | string;
  expires_at: number | string;
  family_expires_at: number | string;
  used_at: number | string | null;
  revoked_at: number | string | null;
}

const orNull = (v: number | string | null): number | null => (v === null ? null : Number(v));

export function refreshOf(row: RefreshRow): RefreshRecord {
  return {
    id: row.id,
    familyId: row.family_id,
    subject: row.subject,
    clientId: row.client_id,
    scope: row.scope,
    audience: JSON.parse(row.audience) as string[],
    claims: JSON.parse(row.claims) as Record<string, unknown>,
    binding: row.binding,
    createdAt: Number(row.created_at),
    expiresAt: Number(row.expires_at),
    familyExpiresAt: Number(row.family_expires_at),
    usedAt: orNull(row.used_at),
    revokedAt: orNull(row.revoked_at),
  };
}

/** A client row as both SQL stores read it (SQLite has no boolean: `disabled` is 0/1 there). */
export interface ClientRow {
  id: string;
  secret_hash: string;
  audiences: string;
  scopes: string;
  grants: string;
  token_ttl_sec: number | null;
  created_at: number | string;
  disabled: boolean | number;
}

export function clientOf(row: ClientRow): ClientRecord {
  return {
    id: row.id,
    secretHash: row.secret_hash,
    audiences: JSON.parse(row.audiences) as string[],
    scopes: JSON.parse(row.scopes) as string[],
    grants: JSON.parse(row.grants) as string[],
    tokenTtlSec: row.token_ttl_sec,
    createdAt: Number(row.created_at),
    disabled: Boolean(row.disabled),
  };
}
