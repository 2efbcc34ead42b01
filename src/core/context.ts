import type { IncomingHttpHeaders } from 'node:http';

export type Protocol = 'http/1.1' | 'http/1.0' | 'h2' | 'h2c';

/** Filled by authentication stages; null while anonymous. */
export interface Identity {
  subject: string;
  tenant?: string;
  roles: readonly string[];
  scopes: readonly string[];
  claims: Readonly<Record<string, unknown>>;
  /** The provider that verified the credential. */
  provider: string;
  /** The key that verified it (JWS `kid`), for explanations and audit. */
  keyId?: string;
  /** Credential expiry, epoch seconds. */
  expiresAt?: number;
}

/**
 * One stage's verdict as recorded for explanations, audit, metrics and spans.
 * `shadow_deny`: a shadow-mode policy would have denied; recorded, not enforced.
 */
export interface DecisionRecord {
  stage: string;
  outcome: 'allow' | 'deny' | 'shadow_deny' | 'skip';
  code: string;
  /** Structured context: provider, kid, rule/policy id, key, remaining quota… never secrets. */
  detail?: Readonly<Record<string, unknown>>;
}

export interface TraceContext {
  traceId: string;
  spanId: string;
  sampled: boolean;
  traceState?: string;
}

/** The route the router chose, as stages see it. */
export interface MatchedRoute {
  readonly id: string;
  readonly params: Readonly<Record<string, string>>;
}

/**
 * One request as every stage sees it, whichever adapter produced it.
 * All fields are declared here so the object keeps one shape (hot path).
 */
export class RequestContext {
  method: string;
  /** The request target exactly as received (never used for decisions). */
  readonly rawTarget: string;
  /** Canonical path: what routing, policy and the upstream all see. */
  path: string;
  /** Raw query string without the leading `?` ('' when absent). Never used for path matching. */
  query: string;
  /** Lower-case host without port, from Host / :authority. */
  host: string;
  headers: IncomingHttpHeaders;
  readonly peerAddress: string;
  readonly peerPort: number;
  /** The client's address: the peer, or what trusted proxies say in X-Forwarded-For (set at admission). */
  clientAddress: string;
  readonly protocol: Protocol;
  /** Whether the client connection is TLS. */
  readonly secure: boolean;
  route: MatchedRoute | null;
  identity: Identity | null;
  requestId: string;
  trace: TraceContext | null;
  /** Every stage's verdict, in order (explanations, audit). */
  readonly decisions: DecisionRecord[];
  /** Extra request headers stages want sent upstream (e.g. identity headers), flat [name, value, …]. */
  upstreamHeaders: string[] | null;
  /** Request header names (lower-case) stages want removed before forwarding (e.g. client copies of identity headers). */
  stripHeaders: ReadonlySet<string> | null;
  /** The client proved it may see this request's explanation (`admin.explainHeader`): it is sent back. */
  explain: boolean;
  /** process.hrtime.bigint() at arrival. */
  readonly startedAt: bigint;

  constructor(init: {
    method: string;
    rawTarget: string;
    headers: IncomingHttpHeaders;
    peerAddress: string;
    peerPort: number;
    protocol: Protocol;
    secure: boolean;
    requestId: string;
  }) {
    this.method = init.method;
    this.rawTarget = init.rawTarget;
    this.path = '';
    this.query = '';
    this.host = '';
    this.headers = init.headers;
    this.peerAddress = init.peerAddress;
    this.peerPort = init.peerPort;
    this.clientAddress = init.peerAddress;
    this.protocol = init.protocol;
    this.secure = init.secure;
    this.route = null;
    this.identity = null;
    this.requestId = init.requestId;
    this.trace = null;
    this.decisions = [];
    this.upstreamHeaders = null;
    this.stripHeaders = null;
    this.explain = false;
    this.startedAt = process.hrtime.bigint();
  }
}
