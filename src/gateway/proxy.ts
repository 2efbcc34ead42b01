import type { IncomingHttpHeaders } from 'node:http';
import { Http2ServerResponse } from 'node:http2';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import type { Dispatcher } from 'undici';
import { BulwarkError } from '../core/errors.js';
import type { RequestContext } from '../core/context.js';
import { clientResponseHeaders } from './headers.js';
import type { Endpoint, Upstream } from './upstream.js';
import type { UpstreamTimeoutsConfig } from '../config/schema.js';
import type { ServerSpan, Telemetry, UpstreamAttempt } from '../telemetry/index.js';
import { rateLimitHeaders } from '../limits/index.js';
import { EXPLANATION_HEADER, explanationHeaderValue } from '../authz/index.js';

/** The part of a server response both node:http and the HTTP/2 compatibility API offer. */
export interface ClientResponse {
  readonly headersSent: boolean;
  readonly writableEnded: boolean;
  readonly destroyed: boolean;
  writeHead(status: number, headers: Record<string, string | string[]>): unknown;
  write(chunk: Buffer): boolean;
  end(): unknown;
  once(event: 'drain' | 'close', listener: () => void): unknown;
  destroy(error?: Error): unknown;
}

export interface ExchangeHooks {
  /** Renders a problem when nothing was sent yet. */
  fail(error: BulwarkError): void;
  /** Called once when the exchange is over, whatever the outcome; `bytes` of response body relayed. */
  done(status: number, error: BulwarkError | null, bytes: number): void;
}

class TotalTimeoutError extends Error {
  readonly code = 'BULWARK_TOTAL_TIMEOUT';
}
class ClientGoneError extends Error {
  readonly code = 'BULWARK_CLIENT_GONE';
}

/**
 * One upstream attempt, as an undici dispatch handler: response bytes go to the
 * client as they arrive, and a full client socket pauses the upstream read.
 */
export class ProxyExchange implements Dispatcher.DispatchHandler {
  private readonly res: ClientResponse;
  private readonly endpoint: Endpoint;
  private readonly hooks: ExchangeHooks;
  private readonly requestId: string;
  private controller: Dispatcher.DispatchController | null;
  private timer: NodeJS.Timeout | null;
  private status: number;
  private bytes: number;
  private finished: boolean;
  private readonly attempt: UpstreamAttempt;
  /** Headers stages add to the client's response (e.g. RateLimit); null when none. */
  private readonly extra: Record<string, string> | null;
  private readonly resume: () => void;
  /** What `forward` was given: a failed attempt may be sent again (see `isRetryable`). */
  private readonly request: ForwardRequest;
  private readonly retriesLeft: number;
  /** `performance.now()` by which the whole exchange, retries included, must be over. */
  private readonly deadline: number;

  constructor(
    res: ClientResponse,
    endpoint: Endpoint,
    request: ForwardRequest,
    hooks: ExchangeHooks,
    attempt: UpstreamAttempt,
    retriesLeft: number,
    deadline: number,
    totalMs: number,
  ) {
    this.res = res;
    this.request = request;
    this.retriesLeft = retriesLeft;
    this.deadline = deadline;
    this.endpoint = endpoint;
    this.hooks = hooks;
    this.requestId = request.ctx.requestId;
    this.attempt = attempt;
    this.extra = rateLimitHeaders(request.ctx);
    if (request.ctx.explain) this.extra = { ...this.extra, [EXPLANATION_HEADER]: explanationHeaderValue(request.ctx) };
    this.controller = null;
    this.status = 0;
    this.bytes = 0;
    this.finished = false;
    this.resume = () => this.controller?.resume();
    this.timer = setTimeout(() => this.abort(new TotalTimeoutError('total timeout')), totalMs);
    endpoint.inFlight++;
    res.once('close', () => {
      if (!this.finished) this.abort(new ClientGoneError('client closed'));
    });
  }

  private abort(reason: Error): void {
    if (this.controller !== null && !this.controller.aborted) this.controller.abort(reason);
    else if (this.controller === null) this.pendingAbort = reason;
  }
  private pendingAbort: Error | null = null;
  /** The client's response head, between the upstream's head and its first body byte (see onResponseStart). */
  private head: Record<string, string | string[]> | null = null;

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.pendingAbort !== null) controller.abort(this.pendingAbort);
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    // Status codes are three digits, 1xx to 5xx (RFC 9110 §15): HTTP/1.1 would relay a 999 as
    // is (HTTP/2 refuses it), so both refuse it here, the same way.
    if (statusCode < 100 || statusCode > 599) {
      controller.abort(new BulwarkError('upstream.bad_response', undefined, { context: { reason: 'status', statusCode } }));
      return;
    }
    if (statusCode < 200) return; // 1xx informational responses are not relayed
    this.status = statusCode;
    const out = clientResponseHeaders(headers, this.requestId);
    if (this.extra !== null) Object.assign(out, this.extra);
    this.head = out;
    // HTTP/1: Node sends the head with the first body byte (or the end) whenever writeHead is
    // called, so holding it back until then changes nothing on the wire, and an upstream failing
    // before that byte still gets the client a 502 rather than an empty reply. HTTP/2 sends
    // HEADERS at writeHead: the head goes now, so a slow body does not hold it back.
    if (this.res instanceof Http2ServerResponse) this.sendHead(controller);
  }

  /** Writes the held-back head; false (and the exchange aborted) when Node refuses it. */
  private sendHead(controller: Dispatcher.DispatchController): boolean {
    const head = this.head;
    if (head === null) return true;
    this.head = null;
    try {
      this.res.writeHead(this.status, head);
      return true;
    } catch (err) {
      // An upstream header Node refuses to send (invalid characters): that upstream is broken.
      controller.abort(new BulwarkError('upstream.bad_response', undefined, { cause: err }));
      return false;
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.head !== null && !this.sendHead(controller)) return;
    this.bytes += chunk.length;
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once('drain', this.resume);
    }
  }

  onResponseEnd(controller: Dispatcher.DispatchController): void {
    if (this.head !== null) {
      const head = this.head;
      this.head = null;
      try {
        this.res.writeHead(this.status, head);
      } catch (err) {
        // Complete upstream, nothing aborts any more: fail the exchange here.
        return this.onResponseError(controller, new BulwarkError('upstream.bad_response', undefined, { cause: err }));
      }
    }
    this.settle();
    this.attempt.end(this.status);
    this.res.end();
    this.hooks.done(this.status, null, this.bytes);
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.settle();
    // A head held back and never sent: the client has seen nothing, so it gets a problem.
    this.head = null;
    const failure = classifyUpstreamError(error);
    this.attempt.end(this.status, failure.code);
    // No response head yet and the client still waits: the request may go again.
    if (this.status === 0 && this.retriesLeft > 0 && !this.res.headersSent && !this.res.destroyed && this.retried(failure))
      return;
    if (!this.res.headersSent && !this.res.destroyed) {
      this.hooks.fail(failure);
      this.hooks.done(failure.status, failure, this.bytes);
      return;
    }
    // Headers are out: the only honest signal left is to cut the response short.
    if (!this.res.destroyed) this.res.destroy(failure);
    this.hooks.done(this.status, failure, this.bytes);
  }

  /** Sends the request again after `failure` when that is safe and time is left; whether it did. */
  private retried(failure: BulwarkError): boolean {
    const request = this.request;
    if (!isRetryable(failure, request.method, request.body !== null)) return false;
    const remaining = this.deadline - performance.now();
    if (remaining < 1) return false;
    const { res, hooks, endpoint, retriesLeft, deadline } = this;
    // Another endpoint when there is one: the one that just failed is the likeliest to fail again.
    // Deferred: this runs inside undici's error path for the pool the retry may reuse.
    queueMicrotask(() =>
      dispatchAttempt(request, res, hooks, request.upstream.pick(endpoint), retriesLeft - 1, deadline, remaining),
    );
    return true;
  }

  private settle(): void {
    this.finished = true;
    this.endpoint.inFlight--;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }
}

/** Maps what undici and the socket layer report to a stable upstream reason code. */
export function classifyUpstreamError(error: Error): BulwarkError {
  if (error instanceof BulwarkError) return error;
  const code = (error as { code?: string }).code ?? '';
  switch (code) {
    case 'BULWARK_CLIENT_GONE':
      return new BulwarkError('request.aborted', undefined, { cause: error, status: 499 });
    case 'BULWARK_TOTAL_TIMEOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
    case 'ETIMEDOUT':
      return new BulwarkError('upstream.timeout', undefined, { cause: error, context: { reason: code } });
    case 'ECONNREFUSED':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return new BulwarkError('upstream.unreachable', undefined, { cause: error, context: { reason: code } });
    case 'ECONNRESET':
    case 'EPIPE':
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
      return new BulwarkError('upstream.reset', undefined, { cause: error, context: { reason: code } });
    case 'BULWARK_BODY_TOO_LARGE':
      return new BulwarkError('request.body_too_large', undefined, { cause: error });
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH':
    case 'ERR_STREAM_PREMATURE_CLOSE':
      return new BulwarkError('request.aborted', undefined, { cause: error, status: 400 });
    default:
      // Parser errors (HPE_*), header overflow, content-length lies: the upstream spoke nonsense.
      return new BulwarkError('upstream.bad_response', undefined, { cause: error, context: { reason: code } });
  }
}

class BodyTooLargeError extends Error {
  readonly code = 'BULWARK_BODY_TOO_LARGE';
}

/** Counts a body of unknown length on its way through; errors past the limit. */
export class BodyLimiter extends Transform {
  private remaining: number;
  constructor(limit: number) {
    super();
    this.remaining = limit;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    this.remaining -= chunk.length;
    if (this.remaining < 0) callback(new BodyTooLargeError('request body over limit'));
    else callback(null, chunk);
  }
}

export interface ForwardRequest {
  ctx: RequestContext;
  method: string;
  headers: string[];
  body: Readable | null;
  upstream: Upstream;
  timeouts: Readonly<UpstreamTimeoutsConfig>;
  telemetry: Telemetry;
  span: ServerSpan;
}

/** RFC 9110 §9.2.2: methods a client expects the server to handle the same way if sent twice. */
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/**
 * Whether an attempt that failed before any response may be sent again. Only a request
 * without a body (a streamed body is consumed and cannot be replayed), and only when doing
 * so cannot repeat an effect: a refused connection never reached the upstream, whatever the
 * method; a reset one may have (or was a stale keep-alive socket the upstream had just
 * closed), so only idempotent methods go again. Timeouts are not retried: the budget is spent.
 */
export function isRetryable(failure: BulwarkError, method: string, hasBody: boolean): boolean {
  if (hasBody) return false;
  if (failure.code === 'upstream.unreachable') return true;
  if (failure.code !== 'upstream.reset') return false;
  // A pool closed under us (the snapshot retired) would refuse the retry the same way.
  if (failure.context?.['reason'] === 'UND_ERR_CLOSED') return false;
  return IDEMPOTENT_METHODS.has(method);
}

/** Sends one request upstream; the outcome reaches `hooks`. */
export function forward(request: ForwardRequest, res: ClientResponse, hooks: ExchangeHooks): void {
  const upstream = request.upstream;
  // Once more for a stale pooled connection; with several endpoints, up to three get a turn.
  const retries = upstream.endpoints.length > 2 ? 2 : 1;
  const totalMs = request.timeouts.totalMs;
  dispatchAttempt(request, res, hooks, upstream.pick(), retries, performance.now() + totalMs, totalMs);
}

function dispatchAttempt(
  request: ForwardRequest,
  res: ClientResponse,
  hooks: ExchangeHooks,
  endpoint: Endpoint | null,
  retriesLeft: number,
  deadline: number,
  /** What is left of the budget now (`deadline` minus the present, read once by the caller). */
  totalMs: number,
): void {
  if (endpoint === null) {
    const error = new BulwarkError('upstream.no_healthy_endpoint');
    hooks.fail(error);
    hooks.done(error.status, error, 0);
    return;
  }
  const ctx = request.ctx;
  const attempt = request.telemetry.startUpstream(request.span, request.upstream.name, endpoint.origin, request.method);
  attempt.inject(request.headers);
  const exchange = new ProxyExchange(res, endpoint, request, hooks, attempt, retriesLeft, deadline, totalMs);
  const path = ctx.query === '' ? ctx.path : ctx.path + '?' + ctx.query;
  endpoint.pool.dispatch(
    {
      path,
      method: request.method as Dispatcher.HttpMethod,
      headers: request.headers,
      body: request.body,
      headersTimeout: request.timeouts.headersMs,
      bodyTimeout: request.timeouts.idleMs,
      // undici never replays a request itself; `forward` decides (see `isRetryable`).
      idempotent: false,
      blocking: true,
    },
    exchange,
  );
}
