import { randomUUID } from 'node:crypto';
import { IncomingMessage, type IncomingHttpHeaders } from 'node:http';
import { RequestContext, type Protocol } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import { PROBLEM_CONTENT_TYPE, renderProblem } from '../core/problem.js';
import { canonicalizeTarget } from '../core/target.js';
import { acceptableRequestId } from '../gateway/headers.js';
import type { CompiledRoute, ListenerSettings, Runtime } from '../gateway/runtime.js';

/** What every adapter can say about a request, whatever its framework. */
export interface RequestLike {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
  readonly httpVersionMajor: number;
  readonly httpVersionMinor: number;
  /**
   * The message came over an HTTP/1 connection, whatever version its request line claims (Node's
   * parser takes `HTTP/2.0` and `HTTP/0.9` lines too). Default: whether it is an `IncomingMessage`.
   */
  readonly http1?: boolean;
  readonly socket?: { readonly remoteAddress?: string | undefined; readonly remotePort?: number | undefined } | null;
}

/** The message came over an HTTP/1 connection (see `RequestLike.http1`). */
function overHttp1(req: RequestLike): boolean {
  return req.http1 ?? req instanceof IncomingMessage;
}

/**
 * Whether `req` is an HTTP/2 stream: the one test everything downstream relies on (Host rules,
 * Transfer-Encoding, the response path). An HTTP/1 line claiming `HTTP/2.0` is not one; `admit`
 * refuses it (`request.http_version`).
 */
export function isHttp2(req: RequestLike): boolean {
  return req.httpVersionMajor === 2 && !overHttp1(req);
}

export function contextFor(req: RequestLike, secure: boolean): RequestContext {
  const isH2 = isHttp2(req);
  const protocol: Protocol = isH2 ? (secure ? 'h2' : 'h2c') : req.httpVersionMinor === 0 ? 'http/1.0' : 'http/1.1';
  const incomingId = req.headers['x-request-id'];
  const socket = req.socket;
  return new RequestContext({
    method: req.method ?? 'GET',
    rawTarget: req.url ?? '',
    headers: req.headers,
    peerAddress: socket?.remoteAddress ?? '',
    peerPort: socket?.remotePort ?? 0,
    protocol,
    secure,
    requestId: acceptableRequestId(incomingId) ? incomingId : randomUUID(),
  });
}

/**
 * Everything decided before any stage runs: header count, canonical target and
 * Host rules, route, transfer-encoding, declared body size. Fills ctx.path /
 * query / host / route.
 */
export function admit(
  req: RequestLike,
  ctx: RequestContext,
  settings: ListenerSettings,
  runtime: Runtime,
): BulwarkError | CompiledRoute {
  // HTTP/1 framing with a request line claiming HTTP/2.0 or 0.9: nothing else here may guess its rules.
  if (req.httpVersionMajor !== 1 && overHttp1(req)) return new BulwarkError('request.http_version');
  // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing (1.0 has no chunked
  // coding; Node would decode it anyway and keep the connection for whatever follows the body).
  // Refused before anything else; the body is unread, so the response closes the connection.
  if (req.httpVersionMinor === 0 && req.headers['transfer-encoding'] !== undefined && overHttp1(req))
    return new BulwarkError('request.transfer_encoding');
  const raw = req.rawHeaders;
  if (raw.length > settings.limits.maxHeaders * 2) return new BulwarkError('request.headers_too_large');
  const isH2 = ctx.protocol === 'h2' || ctx.protocol === 'h2c';
  const target = canonicalizeTarget(
    {
      method: ctx.method,
      target: ctx.rawTarget,
      hosts: collectHosts(raw, isH2),
      requireHost: ctx.protocol !== 'http/1.0',
      scheme: ctx.secure ? 'https' : 'http',
    },
    settings.pathPolicy,
  );
  if (target instanceof BulwarkError) return target;
  ctx.path = target.path;
  ctx.query = target.query;
  ctx.host = target.host;
  if (!settings.trustedProxies.empty) {
    const xff = req.headers['x-forwarded-for'];
    ctx.clientAddress = settings.trustedProxies.clientAddress(ctx.peerAddress, typeof xff === 'string' ? xff : undefined);
  }
  // Node keeps only the first Authorization header; a second one is an attempt to confuse
  // whoever reads the other copy, so it is refused before any stage sees the request.
  if (countHeader(raw, 'authorization') > 1) return new BulwarkError('request.duplicate_authorization');
  const match = runtime.router.match(ctx.host, ctx.method, ctx.path);
  if (match === null) return new BulwarkError('route.not_found');
  const route = match.route;
  ctx.route = { id: route.id, params: match.params };
  const expect = req.headers['expect'];
  // RFC 9110 §10.1.1: 100-continue is the only expectation; any other cannot be met (417).
  if (expect !== undefined && expect.toLowerCase() !== '100-continue') return new BulwarkError('request.expectation_failed');
  const te = req.headers['transfer-encoding'];
  if (te !== undefined && !isH2 && te.trim().toLowerCase() !== 'chunked') return new BulwarkError('request.transfer_encoding');
  const limit = route.maxBodyBytes ?? settings.limits.maxBodyBytes;
  const length = req.headers['content-length'];
  if (length !== undefined && Number(length) > limit) return new BulwarkError('request.body_too_large');
  return route;
}

export function countHeader(raw: readonly string[], lowerName: string): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === lowerName.length && name.toLowerCase() === lowerName) n++;
  }
  return n;
}

function collectHosts(raw: readonly string[], isH2: boolean): string[] {
  const hosts: string[] = [];
  let authority: string | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') hosts.push(raw[i + 1]!);
    else if (isH2 && name === ':authority') authority = raw[i + 1]!;
  }
  if (authority === null) return hosts;
  // RFC 9113 §8.3.1: a Host equal to :authority is allowed (and some clients send both); one
  // that differs still counts, so canonicalization refuses the pair as a duplicate.
  const rest = hosts.filter((h) => h.toLowerCase() !== authority.toLowerCase());
  rest.unshift(authority);
  return rest;
}

export interface ProblemResponse {
  status: number;
  headers: Record<string, string | number>;
  body: string;
}

/** A denial as every adapter sends it: the same status, headers and RFC 7807 body as the gateway. */
export function problemResponse(error: BulwarkError, ctx: RequestContext): ProblemResponse {
  const body = renderProblem(error, ctx.requestId);
  return {
    status: error.status,
    headers: {
      ...error.headers,
      'content-type': PROBLEM_CONTENT_TYPE,
      'content-length': Buffer.byteLength(body),
      'x-request-id': ctx.requestId,
      'cache-control': 'no-store',
    },
    body,
  };
}
