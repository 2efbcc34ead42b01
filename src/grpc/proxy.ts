/**
 * The gRPC proxy: one client stream (from the gateway's HTTP/2 listener) joined to
 * one upstream stream (from a GrpcUpstreamPool), bytes flowing both ways with
 * backpressure, message prefixes checked on the fly, headers and trailers relayed,
 * and every way a call can end (status, deadline, cancel on either side, malformed
 * frames, upstream failure) turned into exactly one gRPC status for the client and
 * one `onDone` for the gateway.
 */
import { CONNECTION_HEADERS, FORWARDING_HEADERS, dashSpelling } from '../gateway/headers.js';
import {
  constants as h2,
  type ClientHttp2Stream,
  type Http2Stream,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import type { RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import { countHeader } from '../engine/admission.js';
import { afterCommit } from '../engine/audit.js';
import {
  checkGrpcEncoding,
  DEFAULT_GRPC_ENCODINGS,
  effectiveEncoding,
  GrpcFrameChecker,
  type FrameGuardOptions,
  type GrpcFrameSink,
} from './framing.js';
import type { GrpcUpstreamPool, PendingGrpcStream } from './pool.js';
import {
  GRPC_CONTENT_TYPE,
  GrpcStatus,
  grpcMessageFor,
  grpcStatusFor,
  grpcStatusForRstCode,
  grpcStatusFromUpstreamHttp,
  sendGrpcError,
  statusTrailers,
} from './status.js';
import { DeadlineQueue, formatGrpcTimeout, resolveGrpcTimeout, type DeadlineEntry } from './timeout.js';
import { EXPLANATION_HEADER } from '../authz/explain.js';

/** Case-insensitive `application/grpc`, optionally `+proto`, `+json`…; never `application/grpc-web`. */
export function isGrpcContentType(value: string | string[] | undefined): boolean {
  if (typeof value !== 'string' || value.length < GRPC_CONTENT_TYPE.length) return false;
  const n = GRPC_CONTENT_TYPE.length;
  if (value.length > n) {
    const next = value.charCodeAt(n);
    if (next !== 0x2b /* + */ && next !== 0x3b /* ; */) return false;
  }
  const head = value.slice(0, n);
  return head === GRPC_CONTENT_TYPE || head.toLowerCase() === GRPC_CONTENT_TYPE;
}

/** A gRPC call: HTTP/2 with a gRPC content type. (gRPC-Web, over HTTP/1.1, is a different protocol.) */
export function isGrpcRequest(req: { readonly httpVersionMajor: number; readonly headers: IncomingHttpHeaders }): boolean {
  return req.httpVersionMajor === 2 && isGrpcContentType(req.headers['content-type']);
}

/**
 * `/Service/Method`: exactly two non-empty segments. gRPC clients never send anything
 * else, and no canonicalization may turn one method name into another.
 */
export function isGrpcMethodPath(path: string): boolean {
  if (path.length < 4 || path.charCodeAt(0) !== 0x2f) return false;
  const slash = path.indexOf('/', 1);
  return slash > 1 && slash < path.length - 1 && path.indexOf('/', slash + 1) === -1;
}

/**
 * The request-shape checks of a gRPC call, after admission (which filled ctx.path).
 * `forwardGrpc` runs them itself; a caller may run them earlier to refuse before any stage.
 */
export function checkGrpcRequest(
  req: { readonly headers: IncomingHttpHeaders; readonly rawHeaders: readonly string[] },
  ctx: RequestContext,
  allowedEncodings: ReadonlySet<string> = DEFAULT_GRPC_ENCODINGS,
): BulwarkError | null {
  if (ctx.method !== 'POST')
    return new BulwarkError('request.method_not_allowed', undefined, { context: { reason: 'grpc_method' } });
  if (!isGrpcContentType(req.headers['content-type'])) return new BulwarkError('grpc.not_grpc');
  // The canonical path is what policy matched; for gRPC it must also be what the client sent,
  // or the upstream would run a method the client did not name (`/a.S//M` → `/a.S/M`).
  if (ctx.query !== '' || ctx.path !== ctx.rawTarget || !isGrpcMethodPath(ctx.path)) {
    return new BulwarkError('route.not_found', undefined, { context: { reason: 'grpc_method_path' } });
  }
  if (countHeader(req.rawHeaders, 'authorization') > 1) return new BulwarkError('request.duplicate_authorization');
  return checkGrpcEncoding(req.headers['grpc-encoding'], allowedEncodings);
}

export interface ForwardGrpcOptions {
  pool: GrpcUpstreamPool;
  /** Largest message either way, checked from its length prefix before any of it is relayed. */
  maxMessageBytes: number;
  /** The route's longest deadline (ms): client timeouts are clamped to it and calls without one get it. Null: unbounded. */
  maxTimeoutMs: number | null;
  /**
   * Client metadata names (lower-case) the gateway owns for this route, on top of the
   * stages' `ctx.stripHeaders` (which forwardGrpc applies itself).
   */
  stripMetadata: ReadonlySet<string> | null;
  /** Extra metadata for the upstream, flat [name, value, …], on top of the stages' `ctx.upstreamHeaders`. */
  extraHeaders: readonly string[] | null;
  /** Encodings clients may compress with (`grpc-encoding`); default gzip and deflate. */
  allowedEncodings?: ReadonlySet<string>;
  /**
   * X-Forwarded-For / -Proto values for the upstream, when the caller applied trusted-proxy
   * rules; default: the peer address and the listener's scheme.
   */
  forwarded?: { readonly for: string; readonly proto: string };
  /** Once per call, when the client stream has closed: the gRPC status the client got, and the error behind it. */
  onDone(status: number, error?: BulwarkError): void;
  /**
   * The status, as soon as it is decided and before it is sent (so before the server
   * response's 'close', which comes ahead of `onDone`); not called for a client's cancel.
   */
  onStatus?(status: number): void;
  /**
   * Durable audit: settles once the call's event is committed; the final status (trailers, or a
   * trailers-only answer) goes to the client only then. Rejects: the call is reset, never completed.
   */
  beforeStatus?(): Promise<void>;
}

/**
 * Proxies one gRPC call. The client stream must be untouched (nothing read, nothing
 * sent). Never throws for anything a client or upstream does; `onDone` always runs.
 */
export function forwardGrpc(
  req: Http2ServerRequest,
  res: Http2ServerResponse,
  ctx: RequestContext,
  options: ForwardGrpcOptions,
): void {
  new GrpcProxyCall(req, res.stream, ctx, options).start();
}

/** Connection-level headers, and the ones Node or the gateway sets itself: never relayed either way. */
const HOP_BY_HOP = new Set([...CONNECTION_HEADERS, 'host', 'content-length']);

/** Request metadata the gateway writes itself; a client's copy would be a forgery. */
const GATEWAY_OWNED = new Set(FORWARDING_HEADERS);

/**
 * The `grpc-*` request keys a client may send; the rest are reserved to the protocol (grpc-timeout
 * is re-written). The trace and tags contexts are the client's tracing metadata, relayed as the
 * W3C `traceparent` is.
 */
const CLIENT_GRPC_KEYS = new Set(['grpc-encoding', 'grpc-accept-encoding', 'grpc-trace-bin', 'grpc-tags-bin']);

/** Client metadata the upstream never gets: the gateway writes it, or it is not the client's to send. */
function ownedMetadata(name: string, ownStrip: ReadonlySet<string> | null, stageStrip: ReadonlySet<string> | null): boolean {
  if (HOP_BY_HOP.has(name) || GATEWAY_OWNED.has(name)) return true;
  if (name.startsWith('grpc-') && !CLIENT_GRPC_KEYS.has(name)) return true;
  return (ownStrip !== null && ownStrip.has(name)) || (stageStrip !== null && stageStrip.has(name));
}

/** A client that will not read its last bytes does not hold the call open for ever. */
const FLUSH_GRACE_MS = 5_000;

const NOOP = (): void => {};

function onStalled(call: GrpcProxyCall): void {
  call.onStalled();
}

function closeClientNoError(client: ServerHttp2Stream): void {
  if (!client.closed && !client.destroyed) client.close(h2.NGHTTP2_NO_ERROR);
}

/**
 * The call a client or upstream stream belongs to. The stream event listeners below are
 * shared functions that find their call here (`this` is the emitting stream), so a call
 * allocates no closure per listener.
 */
const CALL = Symbol('bulwark.grpcCall');
interface CallStream {
  [CALL]?: GrpcProxyCall;
}
const callOf = (stream: unknown): GrpcProxyCall => (stream as CallStream)[CALL]!;

function onClientClose(this: ServerHttp2Stream): void {
  callOf(this).onClientClose();
}
function onClientData(this: ServerHttp2Stream, chunk: Buffer): void {
  callOf(this).requestRelay?.relay(chunk);
}
function onClientEnd(this: ServerHttp2Stream): void {
  callOf(this).onRequestEnd();
}
function onClientDrain(this: Http2Stream): void {
  callOf(this).onClientDrain();
}
function onClientWantTrailers(this: ServerHttp2Stream): void {
  callOf(this).sendTrailers();
}
function onUpstreamResponse(this: ClientHttp2Stream, headers: IncomingHttpHeaders, flags: number): void {
  callOf(this).onResponse(headers, flags);
}
function onUpstreamTrailers(this: ClientHttp2Stream, trailers: IncomingHttpHeaders): void {
  callOf(this).onUpstreamTrailers(trailers);
}
function onUpstreamError(this: ClientHttp2Stream, err: Error): void {
  const call = callOf(this);
  call.upstreamError ??= err;
}
function onUpstreamClose(this: ClientHttp2Stream): void {
  callOf(this).onUpstreamClose();
}
function onUpstreamData(this: ClientHttp2Stream, chunk: Buffer): void {
  callOf(this).responseRelay?.relay(chunk);
}
function onUpstreamEnd(this: ClientHttp2Stream): void {
  callOf(this).onResponseEnd();
}
function onUpstreamDrain(this: Http2Stream): void {
  callOf(this).requestRelay?.unblock();
}

/** Every call's deadline, behind one timer. */
const deadlines = new DeadlineQueue();

/**
 * One direction of a call: the source's bytes, their message prefixes checked on the fly,
 * written to the destination with backpressure (a full destination pauses the source until
 * it drains). What `pipe()` through a checking Transform did, without a stream in between.
 */
class Relay extends GrpcFrameChecker implements GrpcFrameSink {
  private readonly call: GrpcProxyCall;
  readonly source: Http2Stream;
  readonly dest: Http2Stream;
  private readonly onDrain: (this: Http2Stream) => void;
  /** The destination's buffer is full; the source is paused until it drains. */
  private blocked: boolean;
  private full: boolean;

  constructor(
    call: GrpcProxyCall,
    source: Http2Stream,
    dest: Http2Stream,
    onDrain: (this: Http2Stream) => void,
    options: FrameGuardOptions,
  ) {
    super(options, null);
    this.call = call;
    this.source = source;
    this.dest = dest;
    this.onDrain = onDrain;
    this.blocked = false;
    this.full = false;
  }

  relay(chunk: Buffer): void {
    if (!this.feed(chunk, this) || !this.full) return;
    this.full = false;
    if (this.blocked || !this.open) return;
    this.blocked = true;
    this.source.pause();
    this.dest.once('drain', this.onDrain);
  }

  pass(bytes: Buffer): void {
    const dest = this.dest;
    // A destination already gone: its call is being torn down, the bytes have nowhere to go.
    if (dest.destroyed || dest.writableEnded) return;
    if (!dest.write(bytes)) this.full = true;
  }

  protected override violated(error: BulwarkError): void {
    this.call.fail(error);
  }

  unblock(): void {
    if (!this.blocked) return;
    this.blocked = false;
    if (this.open) this.source.resume();
  }

  /**
   * Stops relaying: nothing more is written. What the source still sends is read and dropped
   * (as Node does with a stream nobody reads): a paused source with unread data would never
   * end, so its stream would never close and its call (or pooled slot) would never be freed.
   */
  stop(): void {
    this.abandon();
    this.blocked = false;
    if (!this.source.destroyed) this.source.resume();
  }
}

const END_STREAM = Object.freeze({ endStream: true });
const WAIT_FOR_TRAILERS = Object.freeze({ waitForTrailers: true });

class GrpcProxyCall implements DeadlineEntry {
  private readonly req: Http2ServerRequest;
  private readonly client: ServerHttp2Stream;
  private readonly ctx: RequestContext;
  private readonly options: ForwardGrpcOptions;
  private upstream: ClientHttp2Stream | null;
  private upstreamSession: Http2Session | null;
  private pending: PendingGrpcStream | null;
  requestRelay: Relay | null;
  responseRelay: Relay | null;
  /** The flush grace after the gateway decided a status mid-response. */
  private timer: NodeJS.Timeout | null;
  deadlineAt: number;
  deadlineIndex: number;
  upstreamError: Error | null;
  private upstreamTrailers: IncomingHttpHeaders | null;
  /** Status trailers the gateway decided on, sent instead of the upstream's. */
  private pendingTrailers: OutgoingHttpHeaders | null;
  /** The client's gRPC status, once decided (-1 before). */
  private status: number;
  private error: BulwarkError | undefined;
  private responseStarted: boolean;
  private upstreamCancelled: boolean;
  private hasBody: boolean;
  private done: boolean;

  constructor(req: Http2ServerRequest, client: ServerHttp2Stream, ctx: RequestContext, options: ForwardGrpcOptions) {
    this.req = req;
    this.client = client;
    this.ctx = ctx;
    this.options = options;
    this.upstream = null;
    this.upstreamSession = null;
    this.pending = null;
    this.requestRelay = null;
    this.responseRelay = null;
    this.timer = null;
    this.deadlineAt = 0;
    this.deadlineIndex = -1;
    this.upstreamError = null;
    this.upstreamTrailers = null;
    this.pendingTrailers = null;
    this.status = -1;
    this.error = undefined;
    this.responseStarted = false;
    this.upstreamCancelled = false;
    this.hasBody = false;
    this.done = false;
  }

  start(): void {
    const client = this.client;
    (client as CallStream)[CALL] = this;
    // First, so that onDone runs whatever happens next.
    client.on('close', onClientClose);
    // A client reset surfaces as 'close' (with rstCode); the error event itself carries nothing more.
    client.on('error', NOOP);
    if (client.destroyed || client.closed) return this.onClientClose();

    const headers = this.req.headers;
    const allowed = this.options.allowedEncodings ?? DEFAULT_GRPC_ENCODINGS;
    const invalid = checkGrpcRequest(this.req, this.ctx, allowed);
    if (invalid !== null) return this.fail(invalid);
    const timeout = resolveGrpcTimeout(headers['grpc-timeout'], this.options.maxTimeoutMs);
    if (timeout instanceof BulwarkError) return this.fail(timeout);

    let remaining: number | null = null;
    if (timeout !== null) {
      // The deadline counts from arrival: time spent in the stages is part of the call.
      const elapsed = Number(process.hrtime.bigint() - this.ctx.startedAt) / 1e6;
      remaining = timeout - elapsed;
      if (remaining <= 0) return this.onDeadline();
      deadlines.add(this, remaining);
    }

    let upstreamHeaders: OutgoingHttpHeaders;
    try {
      upstreamHeaders = this.upstreamHeaders(remaining);
    } catch (err) {
      return this.fail(new BulwarkError('request.malformed', undefined, { cause: err }));
    }
    this.hasBody = !client.endAfterHeaders;
    const pending = this.options.pool.open(upstreamHeaders, !this.hasBody, this);
    // The callback may already have run (a session had room); only a real wait leaves a handle.
    if (this.upstream === null && this.status === -1) this.pending = pending;
  }

  private upstreamHeaders(remainingMs: number | null): OutgoingHttpHeaders {
    const ctx = this.ctx;
    const reqHeaders = this.req.headers;
    const out: OutgoingHttpHeaders = {
      ':method': 'POST',
      ':path': ctx.path,
      // The client's authority, as the HTTP proxy keeps Host: upstreams may route on it.
      ':authority': (reqHeaders[':authority'] as string | undefined) ?? ctx.host,
    };
    const ownStrip = this.options.stripMetadata;
    const stageStrip = ctx.stripHeaders;
    const raw = this.req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase(); // HTTP/2 names are lower-case already; cheap insurance
      if (name.charCodeAt(0) === 0x3a /* : */ || ownedMetadata(name, ownStrip, stageStrip)) continue;
      // The same names spelled with `_` for `-` (which CGI-style servers read as one).
      const dashed = dashSpelling(name);
      if (dashed !== null && ownedMetadata(dashed, ownStrip, stageStrip)) continue;
      append(out, name, raw[i + 1]!);
    }
    appendPairs(out, ctx.upstreamHeaders);
    if (this.options.extraHeaders !== ctx.upstreamHeaders) appendPairs(out, this.options.extraHeaders);
    // gRPC servers use `te: trailers` to recognize a proxy that will relay their trailers.
    out['te'] = 'trailers';
    if (remainingMs !== null) out['grpc-timeout'] = formatGrpcTimeout(remainingMs);
    const forwarded = this.options.forwarded;
    out['x-forwarded-for'] = forwarded?.for ?? ctx.peerAddress;
    out['x-forwarded-proto'] = forwarded?.proto ?? (ctx.secure ? 'https' : 'http');
    out['x-request-id'] = ctx.requestId;
    return out;
  }

  /** The pool's answer (GrpcStreamReceiver): a stream on some upstream session, or why there is none. */
  onStream(error: BulwarkError | null, stream: ClientHttp2Stream | null): void {
    this.pending = null;
    if (error !== null) return this.fail(error);
    const upstream = stream!;
    if (this.status !== -1 || this.done) {
      // Decided while we waited (deadline, client gone): the stream is not wanted.
      upstream.on('error', NOOP);
      upstream.close(h2.NGHTTP2_CANCEL);
      return;
    }
    this.upstream = upstream;
    this.upstreamSession = upstream.session ?? null;
    (upstream as CallStream)[CALL] = this;
    upstream.on('response', onUpstreamResponse);
    upstream.on('trailers', onUpstreamTrailers);
    upstream.on('error', onUpstreamError);
    upstream.on('close', onUpstreamClose);
    if (this.hasBody) {
      this.requestRelay = new Relay(this, this.client, upstream, onUpstreamDrain, {
        maxMessageBytes: this.options.maxMessageBytes,
        encoding: effectiveEncoding(this.req.headers['grpc-encoding']),
        direction: 'request',
      });
      // A full upstream window pauses the client stream, whose unread bytes then hold back
      // the client's window in turn.
      this.client.on('data', onClientData);
      this.client.on('end', onClientEnd);
    }
  }

  onRequestEnd(): void {
    const relay = this.requestRelay;
    if (relay === null || !relay.finish()) return;
    const upstream = this.upstream!;
    if (!upstream.destroyed && !upstream.writableEnded) upstream.end();
  }

  onUpstreamTrailers(trailers: IncomingHttpHeaders): void {
    this.upstreamTrailers = trailers;
    // The upstream has decided; a deadline expiring while the client reads the tail changes nothing.
    deadlines.remove(this);
    // But a client that stops reading must not hold the call (and the unread upstream data) for
    // ever: a grace, renewed each time the client takes more (onClientDrain), bounds it instead.
    if (this.status === -1 && this.timer === null) {
      this.timer = setTimeout(onStalled, FLUSH_GRACE_MS, this);
      this.timer.unref();
    }
  }

  onClientDrain(): void {
    this.responseRelay?.unblock();
    if (this.timer !== null && this.status === -1) this.timer.refresh();
  }

  /** The upstream finished, but the client has not read the rest of the response within the grace. */
  onStalled(): void {
    this.timer = null;
    if (this.status !== -1 || this.done) return;
    // The client is reset with CANCEL: CANCELLED is what it sees.
    this.settle(
      GrpcStatus.CANCELLED,
      new BulwarkError('request.timeout', undefined, {
        context: { reason: 'client_stalled', grpcStatus: GrpcStatus.CANCELLED },
      }),
    );
    this.cancelUpstream();
    this.requestRelay?.stop();
    this.responseRelay?.stop();
    if (!this.client.destroyed) this.client.close(h2.NGHTTP2_CANCEL);
  }

  onResponse(headers: IncomingHttpHeaders, flags: number): void {
    if (this.status !== -1) return;
    const client = this.client;
    if (client.destroyed || client.closed) return;
    const endStream = (flags & h2.NGHTTP2_FLAG_END_STREAM) !== 0;
    // Node gives `:status` as a number at run time, whatever the typings say.
    const httpStatus = Number(headers[':status']);
    const grpcStatus = headers['grpc-status'];
    if (endStream && grpcStatus !== undefined) {
      // Trailers-only: the upstream's status and metadata, as one HEADERS frame.
      const code = parseGrpcStatus(grpcStatus);
      const out = relayable(headers);
      out[':status'] = 200;
      out['content-type'] ??= GRPC_CONTENT_TYPE;
      out['x-request-id'] = this.ctx.requestId;
      // The status as the gateway read it (an invalid one is UNKNOWN), not a text clients read differently.
      out['grpc-status'] = String(code);
      // The upstream's own status (OK or not) is no gateway error: onDone gets the code alone.
      this.settle(code, undefined);
      this.whenRecorded(() => {
        try {
          client.respond(out, END_STREAM);
        } catch {
          sendGrpcError(client, GrpcStatus.INTERNAL, 'Bad upstream response');
        }
        this.statusSent();
      });
      return;
    }
    if (httpStatus !== 200) {
      return this.fail(
        new BulwarkError('upstream.bad_response', undefined, {
          context: { reason: 'http_status', httpStatus, grpcStatus: grpcStatusFromUpstreamHttp(httpStatus) },
        }),
      );
    }
    if (!isGrpcContentType(headers['content-type'])) {
      return this.fail(
        new BulwarkError('upstream.bad_response', undefined, {
          context: { reason: 'content_type', grpcStatus: GrpcStatus.UNKNOWN },
        }),
      );
    }
    if (endStream) {
      return this.fail(new BulwarkError('upstream.bad_response', undefined, { context: { reason: 'missing_status' } }));
    }
    const out = relayable(headers);
    out[':status'] = 200;
    out['x-request-id'] = this.ctx.requestId;
    try {
      client.respond(out, WAIT_FOR_TRAILERS);
    } catch (err) {
      return this.fail(new BulwarkError('upstream.bad_response', undefined, { cause: err, context: { reason: 'headers' } }));
    }
    this.responseStarted = true;
    // The HTTP/2 compatibility response answers 'wantTrailers' with its own (empty) trailers;
    // this call owns the response, so its status trailers are the only ones.
    client.removeAllListeners('wantTrailers');
    client.on('wantTrailers', onClientWantTrailers);
    const upstream = this.upstream!;
    this.responseRelay = new Relay(this, upstream, client, onClientDrain, {
      maxMessageBytes: this.options.maxMessageBytes,
      encoding: effectiveEncoding(headers['grpc-encoding']),
      direction: 'response',
    });
    upstream.on('data', onUpstreamData);
    upstream.on('end', onUpstreamEnd);
  }

  onResponseEnd(): void {
    const relay = this.responseRelay;
    if (relay === null || !relay.finish()) return;
    const client = this.client;
    if (!client.destroyed && !client.writableEnded) client.end();
  }

  /** The client stream's data is all out; its status closes it. */
  sendTrailers(): void {
    let trailers: OutgoingHttpHeaders;
    if (this.pendingTrailers !== null) {
      trailers = this.pendingTrailers;
    } else {
      const upstreamTrailers = this.upstreamTrailers;
      const grpcStatus = upstreamTrailers?.['grpc-status'];
      if (upstreamTrailers !== null && grpcStatus !== undefined) {
        const code = parseGrpcStatus(grpcStatus);
        this.settle(code, undefined);
        trailers = relayable(upstreamTrailers);
        trailers['grpc-status'] = String(code);
      } else {
        const error = new BulwarkError('upstream.bad_response', undefined, { context: { reason: 'missing_status' } });
        this.settle(grpcStatusFor(error), error);
        trailers = statusTrailers(this.status, grpcMessageFor(error));
      }
    }
    this.whenRecorded(() => {
      try {
        this.client.sendTrailers(trailers);
      } catch {
        // Invalid trailer values from the upstream: the client still learns the call failed.
        if (!this.client.destroyed) this.client.close(h2.NGHTTP2_INTERNAL_ERROR);
        return;
      }
      this.statusSent();
    });
  }

  /** Sends the final status now, or (durable audit) once the call's event is committed. */
  private whenRecorded(send: () => void): void {
    const gate = this.options.beforeStatus;
    if (gate === undefined) return send();
    const client = this.client;
    afterCommit(
      gate,
      // Gone meanwhile: its close already ended the call.
      () => {
        if (!client.destroyed && !client.closed) send();
      },
      () => {
        if (!client.destroyed) client.close(h2.NGHTTP2_INTERNAL_ERROR);
      },
    );
  }

  /**
   * The client has its final status (trailers-only or trailers, queued on the stream): the
   * call is over whoever still has a side open. The upstream stream, if still open (the client
   * never half-closed, or the upstream answered before the request was whole), is cancelled;
   * the client's further messages are dropped; and a client still sending is asked to stop
   * with RST_STREAM(NO_ERROR) once the status is out (RFC 9113 §8.1), so that its stream closes
   * and the call ends instead of waiting for an END_STREAM that may never come.
   */
  private statusSent(): void {
    const upstream = this.upstream;
    // A request sent whole (END_STREAM out) lets the upstream stream close by itself; one still
    // being sent (or stuck behind the upstream's flow control) would keep it open.
    if (upstream !== null && !upstream.writableFinished) this.cancelUpstream();
    this.requestRelay?.stop();
    const client = this.client;
    if (client.endAfterHeaders || client.readableEnded || client.closed || client.destroyed) return;
    // After finishSendTrailers (itself deferred with setImmediate), so the RST follows the status.
    setImmediate(closeClientNoError, client);
  }

  onUpstreamClose(): void {
    // Whatever the client still sends has nowhere to go: stop reading it (as an unpiped source would).
    const requestRelay = this.requestRelay;
    if (requestRelay !== null && !this.client.readableEnded) requestRelay.stop();
    // Trailers received: the upstream finished, whatever happens to its connection afterwards.
    if (this.status !== -1 || this.upstreamCancelled || this.upstreamTrailers !== null) return;
    const upstream = this.upstream!;
    const rstCode = upstream.rstCode ?? h2.NGHTTP2_NO_ERROR;
    // Streams of a session that died are closed with CANCEL by Node itself: that is a lost
    // connection (UNAVAILABLE), not the upstream cancelling the call.
    const session = this.upstreamSession;
    const connectionLost = session !== null && session.destroyed;
    // A clean end after a response: the response relay delivers the rest and the trailers.
    if (rstCode === h2.NGHTTP2_NO_ERROR && this.upstreamError === null && this.responseStarted && !connectionLost) return;
    this.fail(classifyUpstreamFailure(rstCode, this.upstreamError, connectionLost));
  }

  onDeadline(): void {
    this.fail(
      new BulwarkError('upstream.timeout', 'Deadline exceeded', {
        context: { reason: 'deadline', grpcStatus: GrpcStatus.DEADLINE_EXCEEDED },
      }),
    );
  }

  /**
   * The gateway decides the call's status: stop the upstream, then tell the client —
   * trailers-only if nothing was sent yet, else status trailers after what was relayed.
   */
  fail(error: BulwarkError): void {
    if (this.status !== -1) return;
    this.settle(grpcStatusFor(error), error);
    this.cancelUpstream();
    // No more of the client's messages are read (or relayed).
    this.requestRelay?.stop();
    const client = this.client;
    if (client.destroyed || client.closed) return;
    const message = grpcMessageFor(error);
    if (!client.headersSent) {
      const metadata: Record<string, string> = { 'x-request-id': this.ctx.requestId };
      if (error.code === 'grpc.unsupported_encoding') {
        metadata['grpc-accept-encoding'] = ['identity', ...(this.options.allowedEncodings ?? DEFAULT_GRPC_ENCODINGS)].join(',');
      }
      this.whenRecorded(() => {
        sendGrpcError(client, this.status, message, metadata);
        this.statusSent();
      });
      return;
    }
    this.pendingTrailers = statusTrailers(this.status, message);
    this.clearTimer();
    // Each relayed prefix was checked before it went out, so the client has whole messages
    // (or is mid-message only if the upstream stopped mid-message): end the data, then trailers.
    this.responseRelay?.stop();
    if (!client.writableEnded) client.end();
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!client.destroyed) client.close(h2.NGHTTP2_CANCEL);
    }, FLUSH_GRACE_MS);
    this.timer.unref();
  }

  private settle(status: number, error: BulwarkError | undefined): void {
    this.status = status;
    this.error = error;
    this.options.onStatus?.(status);
    deadlines.remove(this);
  }

  /** The upstream stream is no longer wanted: reset if still open, and destroyed, which frees its pool slot. */
  private cancelUpstream(): void {
    if (this.pending !== null) {
      this.pending.cancel();
      this.pending = null;
    }
    const upstream = this.upstream;
    if (upstream === null || upstream.destroyed) return;
    if (!upstream.closed) {
      this.upstreamCancelled = true;
      upstream.close(h2.NGHTTP2_CANCEL);
    }
    // Node emits 'close' (which frees the pool slot) only for a stream whose unread data was read
    // to the end and whose writes all went out. Neither happens for a stream that finished while
    // the gateway held response data for a slow client (its relay paused), or one closed with
    // request data stuck behind the upstream's flow control. Destroying it flushes a pending
    // RST_STREAM first, then closes it now.
    upstream.destroy();
  }

  private clearTimer(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  onClientClose(): void {
    if (this.done) return;
    this.done = true;
    deadlines.remove(this);
    this.clearTimer();
    if (this.status === -1) {
      // The client reset the stream (cancelled, or its own deadline) before a status was decided.
      this.status = GrpcStatus.CANCELLED;
      this.error = new BulwarkError('request.aborted', undefined, {
        status: 499,
        context: { reason: 'client_cancel', rstCode: this.client.rstCode },
      });
    }
    this.cancelUpstream();
    this.requestRelay?.stop();
    this.responseRelay?.stop();
    this.options.onDone(this.status, this.error);
  }
}

function append(out: OutgoingHttpHeaders, name: string, value: string): void {
  const existing = out[name];
  if (existing === undefined) out[name] = value;
  else if (Array.isArray(existing)) existing.push(value);
  else out[name] = [String(existing), value];
}

function appendPairs(out: OutgoingHttpHeaders, pairs: readonly string[] | null): void {
  if (pairs === null) return;
  for (let i = 0; i + 1 < pairs.length; i += 2) append(out, pairs[i]!.toLowerCase(), pairs[i + 1]!);
}

/** Upstream response headers or trailers minus pseudo-headers and connection-level ones. */
function relayable(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || name.charCodeAt(0) === 0x3a || HOP_BY_HOP.has(name)) continue;
    // Only the gateway explains its decisions: an upstream's copy would pass for one.
    if (name === EXPLANATION_HEADER) continue;
    out[name] = value;
  }
  return out;
}

/** `grpc-status` is 1–2 ASCII digits, 0–16; anything else reads as UNKNOWN, as a client would. */
function parseGrpcStatus(value: string | string[]): number {
  const text = Array.isArray(value) ? value[0]! : value;
  if (text.length === 0 || text.length > 2) return GrpcStatus.UNKNOWN;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return GrpcStatus.UNKNOWN;
    n = n * 10 + (c - 0x30);
  }
  return n <= 16 ? n : GrpcStatus.UNKNOWN;
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT']);

/** Why an upstream stream ended without a status: a network failure (UNAVAILABLE) or its RST_STREAM code. */
export function classifyUpstreamFailure(rstCode: number, error: Error | null, connectionLost = false): BulwarkError {
  let code = (error as { code?: string } | null)?.code;
  // A stream queued on a session that never connected is cancelled with the connect error as cause.
  if (code === 'ERR_HTTP2_STREAM_CANCEL') code = (error!.cause as { code?: string } | undefined)?.code ?? code;
  if (code === undefined && connectionLost) code = 'ECONNRESET';
  if (code !== undefined && code !== 'ERR_HTTP2_STREAM_ERROR') {
    const reason = UNREACHABLE.has(code) || code.includes('CERT') || code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS');
    return new BulwarkError(reason ? 'upstream.unreachable' : 'upstream.reset', undefined, {
      cause: error,
      context: { reason: code, grpcStatus: GrpcStatus.UNAVAILABLE },
    });
  }
  return new BulwarkError('upstream.reset', undefined, {
    cause: error ?? undefined,
    context: { reason: 'rst_stream', rstCode, grpcStatus: grpcStatusForRstCode(rstCode) },
  });
}
