/**
 * The issuer's contracts: what a store keeps (client registrations and refresh-token
 * families) and what a key ring offers (the signing key, the published JWKS). The
 * issuer service is written against these; SQLite, PostgreSQL and Redis implement
 * the store, `KeyRing` (keys.ts) the ring.
 */
import type { KeyObject } from 'node:crypto';

/** Signing algorithms the issuer can hold keys for. */
export type SigningAlgorithm = 'ES256' | 'EdDSA' | 'RS256' | 'PS256';

/** A registered client (service account) as stored. Secrets are never stored, only `secretHash`. */
export interface ClientRecord {
  readonly id: string;
  /** `$scrypt$...` from `hashSecret` (secret.ts). */
  readonly secretHash: string;
  /** Audiences the client may ask for; the first is the default. */
  readonly audiences: readonly string[];
  /** Scopes the client may be granted. */
  readonly scopes: readonly string[];
  /** Grants the client may use (`client_credentials`, `refresh_token`). */
  readonly grants: readonly string[];
  /** Access token lifetime for this client (seconds); null: the issuer's default. */
  readonly tokenTtlSec: number | null;
  /** Epoch ms. */
  readonly createdAt: number;
  readonly disabled: boolean;
}

/**
 * One refresh token. `id` is the SHA-256 of the opaque token (base64url): the token
 * itself is never stored. Every rotation of a session shares one `familyId` (also the
 * `sid` claim of the session's access tokens).
 */
export interface RefreshRecord {
  readonly id: string;
  readonly familyId: string;
  readonly subject: string;
  /** The client the family belongs to; sessions minted by the application use `""`. */
  readonly clientId: string;
  /** Space-separated scopes of the session. */
  readonly scope: string;
  readonly audience: readonly string[];
  /** Extra claims copied into each access token of the session (roles, tenant, ...). */
  readonly claims: Readonly<Record<string, unknown>>;
  /** Hash of the client attributes the family is bound to; null: unbound. */
  readonly binding: string | null;
  /** Epoch ms. */
  readonly createdAt: number;
  /** Epoch ms: this token's own expiry (never after `familyExpiresAt`). */
  readonly expiresAt: number;
  /** Epoch ms: absolute end of the session, whatever the rotations. */
  readonly familyExpiresAt: number;
  /** Epoch ms when it was rotated (used); null: current. */
  readonly usedAt: number | null;
  /** Epoch ms when its family was revoked; null: live. */
  readonly revokedAt: number | null;
}

/**
 * Outcome of presenting a refresh token:
 * - `rotated`: it was current; it is now used and `next` (same family) is stored.
 * - `reused`: it had already been used; the store revoked the whole family (reuse detection).
 * - `revoked`: its family was revoked earlier.
 * - `expired`: past its own or its family's expiry.
 * - `binding_mismatch`: bound to other client attributes; nothing changed (not consumed).
 * - `unknown`: no such token.
 * `record` is the presented token's record as it was before the call (absent for `unknown`).
 */
export type RotateResult =
  | { readonly status: 'rotated'; readonly record: RefreshRecord; readonly next: RefreshRecord }
  | { readonly status: 'reused' | 'revoked' | 'expired' | 'binding_mismatch'; readonly record: RefreshRecord }
  | { readonly status: 'unknown' };

export interface RotateRequest {
  /** id (hash) of the presented token. */
  readonly id: string;
  /** id (hash) of the token that replaces it. */
  readonly nextId: string;
  /** Epoch ms. */
  readonly now: number;
  /** Expiry of the replacement (epoch ms); the store caps it at the family's expiry. */
  readonly nextExpiresAt: number;
  /** Binding of the presenting client (null: none presented); compared with the record's when it has one. */
  readonly binding: string | null;
}

/** Where client registrations and refresh tokens live. Every method may throw `IssuerStoreError`. */
export interface IssuerStore {
  readonly kind: 'sqlite' | 'postgres' | 'redis';
  /** Creates tables/keys as needed. Idempotent; safe for several processes at once. */
  init(): Promise<void>;

  getClient(id: string): Promise<ClientRecord | null>;
  /** Inserts or replaces. */
  putClient(client: ClientRecord): Promise<void>;
  deleteClient(id: string): Promise<boolean>;
  listClients(): Promise<ClientRecord[]>;

  insertRefresh(record: RefreshRecord): Promise<void>;
  /** Atomic across processes and instances: of two concurrent rotations of one token exactly one gets `rotated`. */
  rotateRefresh(request: RotateRequest): Promise<RotateResult>;
  /** Marks every token of the family revoked; returns how many were live (unused, unrevoked). */
  revokeFamily(familyId: string, now: number): Promise<number>;
  /** Revokes every family of a subject (logout everywhere); returns the family ids. */
  revokeSubject(subject: string, now: number): Promise<string[]>;
  /** The record of a token id, or null. */
  getRefresh(id: string): Promise<RefreshRecord | null>;
  /** Deletes records whose family expired before `now`; returns how many. */
  sweep(now: number): Promise<number>;
  close(): Promise<void>;
}

/** The store could not be reached or failed; the issuer answers 503 and loses nothing. */
export class IssuerStoreError extends Error {
  override readonly name = 'IssuerStoreError';
  readonly code = 'issuer.store_unavailable';
}

/** A key the issuer signs with. */
export interface SigningKey {
  readonly kid: string;
  readonly alg: SigningAlgorithm;
  readonly privateKey: KeyObject;
}

/** Lifecycle of one key, as its metadata file records it (epoch ms). */
export interface KeyState {
  readonly kid: string;
  readonly alg: SigningAlgorithm;
  /** Written (and published in the JWKS) at. */
  readonly createdAt: number;
  /** Signs from (createdAt + publishAhead). */
  readonly activatesAt: number;
  /** Stopped signing (a newer key of its algorithm activated); null: not yet. */
  readonly retiredAt: number | null;
  /** Unpublished from (retiredAt + longest token lifetime + skew); null: not yet known. */
  readonly expiresAt: number | null;
}
