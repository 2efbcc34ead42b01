/**
 * The seam between authentication and revocation (src/revocation implements it).
 * The authn stage asks it after every successful verification and on every cache
 * hit, so a revocation is enforced even for tokens already in the verified-token
 * cache. It must be a synchronous, allocation-free local lookup.
 */
import type { Identity } from '../core/context.js';

/** Why a verified token is refused anyway. */
export interface RevocationVerdict {
  /** `jwt.revoked` (401), or `revocation.store_unavailable` (503) when failing closed. */
  readonly code: 'jwt.revoked' | 'revocation.store_unavailable';
  /** For logs and audit (`jti`, `sub`, `sid`, `sub_before`, `store`); never for the client. */
  readonly reason: string;
}

export interface RevocationCheck {
  /** Null: not revoked. Synchronous and cheap: it runs on every authenticated request. */
  check(identity: Identity): RevocationVerdict | null;
}
