/**
 * The issuer over HTTP: discovery, JWKS, the token endpoint (RFC 6749), browser
 * refresh/logout (cookie + CSRF) and revocation (RFC 7009). One function from a
 * request to a response, so the gateway, `bulwark issuer` and the library adapters
 * mount the same code. Errors are RFC 7807 problems carrying the OAuth `error` too.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { RequestContext } from '../core/context.js';
import { BulwarkError, type ErrorCode } from '../core/errors.js';
import { PROBLEM_CONTENT_TYPE, toProblem } from '../core/problem.js';
import type { ClientAttributes, Issuer, TokenSet } from './issuer.js';

export type IssuerEndpoint = 'discovery' | 'jwks' | 'token' | 'refresh' | 'logout' | 'revoke';

export interface IssuerHttpRequest {
  readonly method: string;
  /** Canonical path, without the query. */
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  /** The client's address (after trusted proxies). */
  readonly clientAddress: string;
  readonly body: AsyncIterable<Buffer | string>;
  readonly requestId?: string | undefined;
  /** The request's trace, so the issuer's events join it. */
  readonly trace?: { readonly traceId: string; readonly spanId: string } | null | undefined;
}

/** The request an issuer event happened in. */
export interface IssuerEventOrigin {
  readonly requestId: string | null;
  readonly traceId: string | null;
  readonly spanId: string | null;
}

// The issuer's API takes no request (it is called from code too), yet a security event must join
// the request it happened in: the HTTP front carries that across the issuer's awaits.
const origins = new AsyncLocalStorage<IssuerEventOrigin>();

/** The request being served when an issuer event fires (null outside the HTTP endpoints). */
export function issuerEventOrigin(): IssuerEventOrigin | null {
  return origins.getStore() ?? null;
}

export interface IssuerHttpResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[]>;
  readonly body: string;
  /** The error code when the request was refused (for logs, audit, metrics). */
  readonly code: ErrorCode | null;
}

/** Largest form body the token endpoints read (bytes): parameters are short. */
export const MAX_FORM_BYTES = 16_384;

const DISCOVERY_PATHS = ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server'];

// RFC 6749 §5.1: token responses must not be cached anywhere.
const NO_STORE = { 'cache-control': 'no-store', pragma: 'no-cache' } as const;

const OAUTH_ERROR: Partial<Record<ErrorCode, string>> = {
  'issuer.invalid_request': 'invalid_request',
  'issuer.invalid_client': 'invalid_client',
  'issuer.invalid_grant': 'invalid_grant',
  'issuer.unauthorized_client': 'unauthorized_client',
  'issuer.unsupported_grant_type': 'unsupported_grant_type',
  'issuer.invalid_scope': 'invalid_scope',
  'issuer.invalid_target': 'invalid_target',
  'issuer.csrf': 'invalid_request',
  'issuer.store_unavailable': 'temporarily_unavailable',
  'issuer.no_signing_key': 'temporarily_unavailable',
};

/** Which endpoint a canonical path names, or null. Built once per issuer. */
export function endpointTable(issuer: Issuer): ReadonlyMap<string, IssuerEndpoint> {
  const prefix = issuer.config.path;
  const table = new Map<string, IssuerEndpoint>(DISCOVERY_PATHS.map((p) => [p, 'discovery']));
  // Discovery beside the issuer's path too, for issuers with a path component (RFC 8414 §3).
  const issuerPath = new URL(issuer.config.issuer).pathname.replace(/\/+$/, '');
  if (issuerPath !== '') for (const p of DISCOVERY_PATHS) table.set(issuerPath + p, 'discovery');
  table.set(`${prefix}/jwks.json`, 'jwks');
  table.set(`${prefix}/token`, 'token');
  table.set(`${prefix}/refresh`, 'refresh');
  table.set(`${prefix}/logout`, 'logout');
  table.set(`${prefix}/revoke`, 'revoke');
  return table;
}

function json(status: number, body: unknown, headers: Record<string, string | string[]> = {}): IssuerHttpResponse {
  return {
    status,
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    code: null,
  };
}

export function problemResponse(
  error: BulwarkError,
  requestId?: string,
  extra: Record<string, string | string[]> = {},
): IssuerHttpResponse {
  const problem = {
    ...toProblem(error, requestId),
    ...(OAUTH_ERROR[error.code] === undefined ? {} : { error: OAUTH_ERROR[error.code] }),
  };
  return {
    status: error.status,
    headers: { 'content-type': PROBLEM_CONTENT_TYPE, ...NO_STORE, ...error.headers, ...extra },
    body: JSON.stringify(problem),
    code: error.code,
  };
}

function invalid(reason: string): BulwarkError {
  return new BulwarkError('issuer.invalid_request', undefined, { context: { reason } });
}

async function readForm(req: IssuerHttpRequest): Promise<Map<string, string>> {
  const type = req.headers['content-type'];
  const mediaType = typeof type === 'string' ? type.split(';')[0]!.trim().toLowerCase() : '';
  if (mediaType !== 'application/x-www-form-urlencoded') throw invalid('content type must be application/x-www-form-urlencoded');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += buffer.length;
    if (size > MAX_FORM_BYTES) throw new BulwarkError('request.body_too_large');
    chunks.push(buffer);
  }
  const form = new Map<string, string>();
  for (const [name, value] of new URLSearchParams(Buffer.concat(chunks).toString('utf8'))) {
    // RFC 6749 §3.2: parameters must not repeat; which copy would count is ambiguous.
    if (form.has(name)) throw invalid(`parameter repeated: ${name.slice(0, 32)}`);
    form.set(name, value);
  }
  return form;
}

interface ClientAuth {
  readonly id: string;
  readonly secret: string;
  readonly basic: boolean;
}

/** client_secret_basic or client_secret_post; both at once is invalid (RFC 6749 §2.3.1). */
function clientAuthOf(req: IssuerHttpRequest, form: Map<string, string>): ClientAuth | null {
  const header = req.headers.authorization;
  const postId = form.get('client_id');
  const postSecret = form.get('client_secret');
  if (typeof header === 'string' && header !== '') {
    if (postSecret !== undefined) throw invalid('client authenticated twice');
    const match = /^Basic ([A-Za-z0-9+/]+=*)$/i.exec(header.trim());
    if (match === null) throw invalid('Authorization is not Basic');
    const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw invalid('Basic credentials without a colon');
    let id: string;
    let secret: string;
    try {
      // RFC 6749 §2.3.1: id and secret are form-urlencoded inside Basic.
      id = decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
      secret = decodeURIComponent(decoded.slice(colon + 1).replace(/\+/g, ' '));
    } catch {
      throw invalid('Basic credentials not form-encoded');
    }
    if (postId !== undefined && postId !== id) throw invalid('client_id disagrees with Basic credentials');
    return { id, secret, basic: true };
  }
  if (postId !== undefined && postSecret !== undefined) return { id: postId, secret: postSecret, basic: false };
  return null;
}

function tokenBody(set: TokenSet): Record<string, unknown> {
  const body: Record<string, unknown> = {
    access_token: set.accessToken,
    token_type: set.tokenType,
    expires_in: set.expiresIn,
  };
  if (set.scope !== '') body['scope'] = set.scope;
  if (set.refreshToken !== undefined) {
    body['refresh_token'] = set.refreshToken;
    body['refresh_expires_in'] = set.refreshExpiresIn;
  }
  return body;
}

function cookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  let found: string | undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue;
    // Two cookies of one name (one planted by a sibling subdomain): refuse to pick.
    if (found !== undefined) return undefined;
    found = part.slice(eq + 1).trim();
  }
  return found;
}

function attributesOf(req: IssuerHttpRequest): ClientAttributes {
  const ua = req.headers['user-agent'];
  return { userAgent: typeof ua === 'string' ? ua : '', ip: req.clientAddress };
}

function allowed(method: string, ...methods: string[]): BulwarkError | null {
  return methods.includes(method)
    ? null
    : new BulwarkError('request.method_not_allowed', undefined, { headers: { allow: methods.join(', ') } });
}

export class IssuerHttp {
  readonly table: ReadonlyMap<string, IssuerEndpoint>;

  constructor(readonly issuer: Issuer) {
    this.table = endpointTable(issuer);
  }

  endpointOf(path: string): IssuerEndpoint | null {
    return this.table.get(path) ?? null;
  }

  /** Serves one request; never throws (a failure is a problem response). */
  async serve(req: IssuerHttpRequest): Promise<IssuerHttpResponse> {
    const endpoint = this.endpointOf(req.path);
    if (endpoint === null) return problemResponse(new BulwarkError('route.not_found'), req.requestId);
    const origin: IssuerEventOrigin = {
      requestId: req.requestId ?? null,
      traceId: req.trace?.traceId ?? null,
      spanId: req.trace?.spanId ?? null,
    };
    try {
      return await origins.run(origin, () => this.dispatch(endpoint, req));
    } catch (err) {
      const error = err instanceof BulwarkError ? err : new BulwarkError('gateway.internal', undefined, { cause: err });
      const extra: Record<string, string | string[]> = {};
      // RFC 6749 §5.2: a 401 for a client that tried Basic names the scheme it must use.
      if (error.code === 'issuer.invalid_client') extra['www-authenticate'] = 'Basic realm="bulwark-issuer", charset="UTF-8"';
      if (
        (endpoint === 'refresh' || endpoint === 'logout') &&
        this.issuer.config.browser !== undefined &&
        error.code === 'issuer.invalid_grant'
      )
        extra['set-cookie'] = this.issuer.clearCookies();
      return problemResponse(error, req.requestId, extra);
    }
  }

  private async dispatch(endpoint: IssuerEndpoint, req: IssuerHttpRequest): Promise<IssuerHttpResponse> {
    const issuer = this.issuer;
    switch (endpoint) {
      case 'discovery': {
        const refused = allowed(req.method, 'GET', 'HEAD');
        if (refused !== null) throw refused;
        return json(200, issuer.discovery(), { 'cache-control': 'public, max-age=300' });
      }
      case 'jwks': {
        const refused = allowed(req.method, 'GET', 'HEAD');
        if (refused !== null) throw refused;
        const etag = `"${issuer.keys.jwksVersion}"`;
        // Verifiers may cache no longer than half the publish-ahead time: a new key reaches them before it signs.
        const maxAge = Math.min(300, Math.floor(issuer.config.keys.publishAheadSec / 2));
        const headers = { 'cache-control': `public, max-age=${maxAge}`, etag };
        if (req.headers['if-none-match'] === etag) return { status: 304, headers, body: '', code: null };
        return json(200, issuer.keys.jwksJson(), headers);
      }
      case 'token':
        return this.token(req);
      case 'refresh':
      case 'logout':
        return this.browserEndpoint(endpoint, req);
      case 'revoke':
        return this.revoke(req);
    }
  }

  private async token(req: IssuerHttpRequest): Promise<IssuerHttpResponse> {
    const refused = allowed(req.method, 'POST');
    if (refused !== null) throw refused;
    const form = await readForm(req);
    const grant = form.get('grant_type');
    const auth = clientAuthOf(req, form);
    let set: TokenSet;
    if (grant === 'client_credentials') {
      if (auth === null)
        throw new BulwarkError('issuer.invalid_client', undefined, { context: { reason: 'no client authentication' } });
      // Both `audience` and `resource` (RFC 8707) name targets: every one asked for is checked, so
      // a `resource` beside an `audience` is never silently dropped from the check.
      const targets = [form.get('audience'), form.get('resource')].flatMap((t) =>
        t === undefined ? [] : t.split(' ').filter((a) => a !== ''),
      );
      set = await this.issuer.clientCredentials({
        clientId: auth.id,
        clientSecret: auth.secret,
        scope: form.get('scope'),
        audience: targets.length === 0 ? undefined : targets,
      });
    } else if (grant === 'refresh_token') {
      const token = form.get('refresh_token');
      if (token === undefined) throw invalid('refresh_token missing');
      let clientId: string | undefined;
      if (auth !== null) {
        // A client that authenticates must authenticate correctly, whatever the token, and
        // may only use the grants it was registered for.
        await this.issuer.verifyClient(auth.id, auth.secret, 'refresh_token');
        clientId = auth.id;
      }
      set = await this.issuer.refresh(token, { clientId, client: attributesOf(req) });
    } else if (grant === undefined) {
      throw invalid('grant_type missing');
    } else {
      throw new BulwarkError('issuer.unsupported_grant_type', undefined, { context: { reason: grant.slice(0, 64) } });
    }
    return json(200, tokenBody(set), NO_STORE);
  }

  private async browserEndpoint(endpoint: 'refresh' | 'logout', req: IssuerHttpRequest): Promise<IssuerHttpResponse> {
    const issuer = this.issuer;
    const browser = issuer.config.browser;
    if (browser === undefined) throw new BulwarkError('route.not_found');
    const refused = allowed(req.method, 'POST');
    if (refused !== null) throw refused;
    const cookies = typeof req.headers.cookie === 'string' ? req.headers.cookie : undefined;
    const origin = req.headers.origin;
    if (typeof origin === 'string' && origin !== issuer.origin && !browser.allowedOrigins.includes(origin))
      throw new BulwarkError('issuer.csrf', undefined, { context: { reason: 'origin not allowed' } });
    if (req.headers['sec-fetch-site'] === 'cross-site')
      throw new BulwarkError('issuer.csrf', undefined, { context: { reason: 'cross-site request' } });
    // Node lowercases incoming header names; the configured name may be written `X-CSRF-Token`.
    const header = req.headers[browser.csrfHeader.toLowerCase()];
    if (!issuer.csrfValid(cookie(cookies, browser.csrfCookieName), typeof header === 'string' ? header : undefined))
      throw new BulwarkError('issuer.csrf', undefined, { context: { reason: 'CSRF token missing or wrong' } });
    const token = cookie(cookies, browser.cookieName);
    if (endpoint === 'logout') {
      if (token !== undefined) await issuer.endSessionOf(token);
      return { status: 204, headers: { ...NO_STORE, 'set-cookie': issuer.clearCookies() }, body: '', code: null };
    }
    if (token === undefined)
      throw new BulwarkError('issuer.invalid_grant', undefined, { context: { reason: 'no refresh cookie' } });
    const set = await issuer.refresh(token, { client: attributesOf(req) });
    const body = tokenBody(set);
    // The refresh token stays in its HttpOnly cookie: script never sees it.
    delete body['refresh_token'];
    return json(200, body, { ...NO_STORE, 'set-cookie': issuer.sessionCookies(set) });
  }

  private async revoke(req: IssuerHttpRequest): Promise<IssuerHttpResponse> {
    const refused = allowed(req.method, 'POST');
    if (refused !== null) throw refused;
    const form = await readForm(req);
    const token = form.get('token');
    if (token === undefined) throw invalid('token missing');
    const auth = clientAuthOf(req, form);
    if (auth !== null) await this.issuer.verifyClient(auth.id, auth.secret);
    const hint = form.get('token_type_hint');
    // RFC 7009 §2.2: the answer is 200 whether or not the token was known, so it tells a prober nothing.
    if (hint !== 'access_token' && token.startsWith('brt_')) await this.issuer.endSessionOf(token);
    else await this.issuer.revokeAccessToken(token);
    return { status: 200, headers: { ...NO_STORE }, body: '', code: null };
  }
}

/**
 * Serves a request the gateway or a library adapter already admitted (canonical path, client
 * address after trusted proxies) and writes the answer, request id included, unless the client
 * left. Resolves to the response, for logs and audit.
 */
export async function respondToAdmitted(
  http: IssuerHttp,
  ctx: Pick<RequestContext, 'method' | 'path' | 'clientAddress' | 'requestId' | 'trace'>,
  req: { readonly headers: IncomingHttpHeaders } & AsyncIterable<Buffer | string>,
  res: ServerResponse,
): Promise<IssuerHttpResponse> {
  const response = await http.serve({
    method: ctx.method,
    path: ctx.path,
    headers: req.headers,
    clientAddress: ctx.clientAddress,
    body: req,
    requestId: ctx.requestId,
    trace: ctx.trace,
  });
  if (!res.headersSent && !res.destroyed) {
    res.setHeader('x-request-id', ctx.requestId);
    writeIssuerResponse(res, response, ctx.method === 'HEAD');
  }
  return response;
}

/** Writes a response to a node:http (or compatible HTTP/2) response. */
export function writeIssuerResponse(res: ServerResponse, response: IssuerHttpResponse, head = false): void {
  res.statusCode = response.status;
  for (const [name, value] of Object.entries(response.headers)) res.setHeader(name, value);
  if (response.body !== '' && !head) res.setHeader('content-length', Buffer.byteLength(response.body));
  res.end(head ? undefined : response.body);
}

/**
 * A node:http / Express / Connect handler serving the issuer's endpoints; other paths
 * go to `next` (404 problem without one). The application's own login mints sessions
 * with `issuer.mintSession` and sets `issuer.sessionCookies`.
 */
export function issuerHandler(
  issuer: Issuer,
): (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void {
  const http = new IssuerHttp(issuer);
  return (req, res, next) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (http.endpointOf(path) === null && next !== undefined) {
      next();
      return;
    }
    http
      .serve({
        method: req.method ?? 'GET',
        path,
        headers: req.headers,
        clientAddress: req.socket.remoteAddress ?? '',
        body: req,
      })
      .then((response) => writeIssuerResponse(res, response, req.method === 'HEAD'), next ?? (() => res.destroy()));
  };
}
