import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import {
  createSecureServer,
  createServer as createH2Server,
  Http2ServerResponse,
  type Http2SecureServer,
  type Http2Server,
  type Http2ServerRequest,
  type Http2Session,
} from 'node:http2';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { ListenerConfig } from '../config/schema.js';
import { BulwarkError } from '../core/errors.js';
import { PROBLEM_CONTENT_TYPE, renderProblem } from '../core/problem.js';
import { HoldableHttp2ServerResponse, HoldableServerResponse } from '../engine/audit.js';
import { DEFAULT_LISTENER_LIMITS, listenerKey } from './runtime.js';
import { loadTlsMaterial, watchTlsFiles, type TlsMaterial } from './tls.js';

export type AnyRequest = IncomingMessage | Http2ServerRequest;
export type AnyResponse = ServerResponse | Http2ServerResponse;
export type RequestHandler = (req: AnyRequest, res: AnyResponse, listener: BoundListener) => void;
type TlsConfig = NonNullable<ListenerConfig['tls']>;

/** New TLS material for a running listener, checked and not yet in use. */
export interface TlsSwap {
  readonly files: TlsConfig;
  readonly material: TlsMaterial;
}

export type ClientErrorHandler = (
  error: NodeJS.ErrnoException & { bytesParsed?: number; rawPacket?: Buffer },
  socket: Socket,
) => void;

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
/** SETTINGS_MAX_CONCURRENT_STREAMS per HTTP/2 connection when no global cap is lower. */
const H2_MAX_CONCURRENT_STREAMS = 1000;

/**
 * One bound socket and the servers behind it. Socket-level settings (address,
 * protocol, limits) are fixed for the listener's life, but its TLS certificate can be
 * swapped (`prepareTls` / `applyTls`); per-request settings come from the current runtime snapshot.
 */
export class BoundListener {
  readonly key: string;
  readonly config: ListenerConfig;
  readonly secure: boolean;
  /** The socket we listen on. */
  readonly server: NetServer | HttpServer | Http2SecureServer;
  private readonly http1: HttpServer | null;
  private readonly http2: Http2Server | Http2SecureServer | null;
  private readonly sessions = new Set<Http2Session>();
  private readonly sockets = new Set<Socket>();
  /** How long an h2c connection may take to show which protocol it speaks. */
  private readonly sniffTimeoutMs: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS currently advertised. */
  private h2MaxStreams = H2_MAX_CONCURRENT_STREAMS;
  draining = false;
  /** Requests/streams of this listener holding a slot of the gateway's in-flight gate (the gateway counts). */
  inFlight = 0;
  /** Connections Node dropped because the listener was at `maxConnections`, since it started. */
  dropped = 0;
  /** The TLS files and what was read from them, as in use (https only). */
  private tlsFiles: TlsConfig | null = null;
  private tlsMaterial: TlsMaterial | null = null;
  private tlsChanged: (() => void) | null = null;
  private tlsPollMs: number | undefined;
  private unwatchTls: (() => void) | null = null;

  constructor(config: ListenerConfig, onRequest: RequestHandler, onClientError: ClientErrorHandler) {
    this.key = listenerKey(config);
    this.config = config;
    const limits = { ...DEFAULT_LISTENER_LIMITS, ...config.limits };
    const protocol = config.protocol ?? 'http';
    this.secure = protocol === 'https';
    this.sniffTimeoutMs = limits.headersTimeoutMs;
    const handler = (req: AnyRequest, res: AnyResponse) => onRequest(req, res, this);
    const http1Options = {
      maxHeaderSize: limits.maxHeaderBytes,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.idleTimeoutMs,
      // Node checks header/request timeouts on this tick; its 30 s default would let slow clients linger.
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(limits.headersTimeoutMs / 4))),
      insecureHTTPParser: false,
      requireHostHeader: false, // Host rules (missing, duplicate, mismatch) are enforced by canonicalization, with problems.
      joinDuplicateHeaders: false,
    };
    const h2Settings = {
      maxHeaderListSize: limits.maxHeaderBytes,
      maxConcurrentStreams: H2_MAX_CONCURRENT_STREAMS,
    };

    if (protocol === 'https') {
      const tls = config.tls!;
      const material = loadTlsMaterial(tls);
      this.tlsFiles = tls;
      this.tlsMaterial = material;
      const server = createSecureServer(
        {
          ...material.options,
          allowHTTP1: true,
          ALPNProtocols: ['h2', 'http/1.1'],
          // A durable audit holds each response's end: these classes hold it without reshaping the object.
          Http1ServerResponse: HoldableServerResponse,
          Http2ServerResponse: HoldableHttp2ServerResponse,
          settings: h2Settings,
          maxSessionInvalidFrames: 100,
        },
        handler as never,
      );
      // With allowHTTP1 the secure server parses HTTP/1.1 itself, with Node's HTTP/1 connection
      // code reading these from the server it is given: the same guards as a plain listener. Set
      // before listen(): Node arms the header/request timeout checks on 'listening', at this interval.
      Object.assign(server, http1Options, { maxHeadersCount: limits.maxHeaders + 1 });
      http1Guards(server, onClientError);
      // Socket inactivity for HTTP/1.1 over TLS; HTTP/2 sessions get closeWhenIdle instead (below).
      server.setTimeout(limits.idleTimeoutMs);
      this.server = server;
      this.http1 = null;
      this.http2 = server;
    } else {
      const http1 = createHttpServer({ ...http1Options, ServerResponse: HoldableServerResponse }, handler as never);
      http1.maxHeadersCount = limits.maxHeaders + 1;
      http1Guards(http1, onClientError);
      this.http1 = http1;
      if (protocol === 'h2c') {
        this.http2 = createH2Server(
          { settings: h2Settings, maxSessionInvalidFrames: 100, Http2ServerResponse: HoldableHttp2ServerResponse },
          handler as never,
        );
        this.http2.on('connect', refuseConnect);
        // One port for both: a connection opening with the HTTP/2 preface is h2c, anything else HTTP/1.1.
        this.server = createNetServer({ pauseOnConnect: true }, (socket) => this.sniff(socket));
      } else {
        this.http2 = null;
        this.server = http1;
      }
    }
    if (this.http2 !== null) {
      const idleMs = limits.idleTimeoutMs;
      this.http2.on('session', (session: Http2Session) => {
        this.sessions.add(session);
        session.once('close', () => this.sessions.delete(session));
        if (this.draining) session.close();
        closeWhenIdle(session, idleMs);
      });
    }
    // `Expect: 100-continue`: Node would answer 100 at once, inviting the body of a request no
    // stage has looked at yet. The request goes through the pipeline like any other; the gateway
    // sends 100 when it forwards the body (a denial is answered without it: no upload is invited).
    for (const server of new Set([this.http1, this.http2])) {
      if (server === null) continue;
      server.on('checkContinue', handler);
      // Any other expectation: refused by admission with a problem document, not Node's bare 417.
      server.on('checkExpectation', handler);
    }
    this.server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    // Emitted instead of 'connection' for a connection over `maxConnections` (Node has already closed it).
    this.server.on('drop', () => this.dropped++);
  }

  /** Client connections open on this listener now. */
  get connections(): number {
    return this.sockets.size;
  }

  /**
   * Applies the global caps (this worker's share); called before `listen()` and on every
   * reload, since listeners outlive config snapshots.
   *
   * - `maxConnections` becomes the socket server's `maxConnections`: past it Node accepts and
   *   at once closes each new connection (emitting 'drop'). It counts this listener's
   *   connections, TLS and h2c ones included (the h2c sniffer and the TLS server are the
   *   socket servers). Lowering it closes nothing already open.
   * - `maxStreams` caps SETTINGS_MAX_CONCURRENT_STREAMS (min of it and 1000): one HTTP/2
   *   connection then never has more streams open than the whole worker may serve, so its
   *   client queues them instead of being refused. Sent to open sessions too; new sessions
   *   get it in their initial SETTINGS.
   */
  applyCaps(maxConnections: number | null, maxStreams: number | null): void {
    this.server.maxConnections = maxConnections ?? Infinity;
    const streams = Math.min(H2_MAX_CONCURRENT_STREAMS, maxStreams ?? Infinity);
    if (this.http2 === null || streams === this.h2MaxStreams) return;
    this.h2MaxStreams = streams;
    this.http2.updateSettings({ maxConcurrentStreams: streams });
    for (const session of this.sessions) {
      if (session.closed || session.destroyed) continue;
      try {
        session.settings({ maxConcurrentStreams: streams });
      } catch {
        // Too many SETTINGS not yet acknowledged by a stalled peer: it keeps the previous value.
      }
    }
  }

  private sniff(socket: Socket): void {
    let head: Buffer = Buffer.alloc(0);
    // Until the protocol is known neither server's timeouts apply: a client sending nothing (or a
    // partial preface) would hold the connection for ever. It gets the time it has for a head.
    const timer = setTimeout(() => socket.destroy(), this.sniffTimeoutMs);
    const onData = (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const n = Math.min(head.length, H2_PREFACE.length);
      const isPreface = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isPreface && n < H2_PREFACE.length) return; // need more bytes to decide
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.pause();
      socket.unshift(head);
      if (isPreface) {
        // The HTTP/2 session drains the buffered preface itself and then reads the handle natively.
        this.http2!.emit('connection', socket);
      } else {
        this.http1!.emit('connection', socket);
        socket.resume();
      }
    };
    const onError = () => socket.destroy();
    socket.once('close', () => clearTimeout(timer));
    socket.on('error', onError);
    socket.on('data', onData);
    socket.resume();
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(this.config.port, this.config.address ?? '0.0.0.0', () => {
        this.server.off('error', onError);
        // Node arms an HTTP server's header/request timeout checks on 'listening'; behind the
        // h2c sniffer the HTTP/1.1 server never listens itself, so arm them here.
        if (this.http1 !== null && this.server !== this.http1) this.http1.emit('listening');
        resolve();
      });
    });
  }

  get port(): number {
    const address = this.server.address();
    return typeof address === 'object' && address !== null ? address.port : this.config.port;
  }

  /** The leaf certificate's expiry (epoch ms); null without TLS. */
  get certificateNotAfter(): number | null {
    return this.tlsMaterial?.notAfter ?? null;
  }

  /**
   * Reads the TLS files (the configured ones, or `files` when a reload names others) and checks
   * them. Null when nothing changed (or no TLS); throws TlsMaterialError when they cannot serve,
   * and the running certificate stays.
   */
  prepareTls(files: TlsConfig | undefined = this.tlsFiles ?? undefined): TlsSwap | null {
    if (this.tlsMaterial === null || files === undefined) return null;
    const material = loadTlsMaterial(files, { swap: true });
    const same = this.tlsFiles !== null && sameFiles(this.tlsFiles, files);
    return same && material.fingerprint === this.tlsMaterial.fingerprint ? null : { files, material };
  }

  /** New connections get the new certificate; open ones keep theirs (TLS has no way to change it mid-connection). */
  applyTls(swap: TlsSwap): void {
    (this.server as Http2SecureServer).setSecureContext(swap.material.options);
    const moved = this.tlsFiles === null || !sameFiles(this.tlsFiles, swap.files);
    this.tlsFiles = swap.files;
    this.tlsMaterial = swap.material;
    if (moved && this.tlsChanged !== null) this.watchTls(this.tlsChanged, this.tlsPollMs);
  }

  /** True when `files` names other files than the ones in use. */
  tlsFilesDiffer(files: TlsConfig | undefined): boolean {
    return this.tlsFiles !== null && files !== undefined && !sameFiles(this.tlsFiles, files);
  }

  /** Calls `onChange` when the TLS files may have changed (renewed in place); nothing without TLS. */
  watchTls(onChange: () => void, pollMs?: number): void {
    if (this.tlsFiles === null || this.draining) return;
    this.unwatchTls?.();
    this.tlsChanged = onChange;
    this.tlsPollMs = pollMs;
    this.unwatchTls = watchTlsFiles(this.tlsFiles, onChange, pollMs === undefined ? {} : { pollMs });
  }

  /** Stop accepting; let in-flight requests finish; close idle keep-alive connections now. */
  beginDrain(): Promise<void> {
    this.draining = true;
    this.unwatchTls?.();
    this.unwatchTls = null;
    this.tlsChanged = null;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Keep-alive connections busy at this moment become idle later; close them as they do.
    const sweep = setInterval(() => this.closeIdle(), 50);
    sweep.unref();
    void closed.then(() => clearInterval(sweep));
    if (this.http1 !== null && this.server !== this.http1) this.http1.close(() => {}); // stops its timeout checks; it never listened
    this.closeIdle();
    for (const session of this.sessions) session.close();
    return closed;
  }

  private closeIdle(): void {
    this.http1?.closeIdleConnections();
    const server = this.server as HttpServer;
    if (server !== this.http1 && typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
  }

  /** Deadline passed: cut whatever is left. */
  forceClose(): void {
    for (const session of this.sessions) session.destroy();
    for (const socket of this.sockets) socket.destroy();
    if (this.http1 !== null) this.http1.closeAllConnections();
  }
}

/**
 * What every server parsing HTTP/1 gets (the plain one, and the TLS one with allowHTTP1): parser
 * errors and timeouts answered with a problem by the gateway, and CONNECT refused.
 */
function http1Guards(server: HttpServer | Http2SecureServer, onClientError: ClientErrorHandler): void {
  server.on('clientError', onClientError);
  // Upgrade requests (WebSocket…) go through the pipeline like any other: authentication and
  // policy decide first, and only an admitted one hears that upgrades are not proxied (501).
  // CONNECT never reaches 'request' in Node: answer it here (an authority-form target).
  server.on('connect', refuseConnect);
}

/**
 * CONNECT (RFC 9110 §9.3.6): not proxied, refused as an authority-form target. Node emits it
 * with the raw socket for HTTP/1 and with a request/response pair for an HTTP/2 stream (whose
 * default answer is a bare 405); the secure server with allowHTTP1 emits both kinds.
 */
function refuseConnect(_req: IncomingMessage | Http2ServerRequest, sink: Socket | Http2ServerResponse): void {
  const body = renderProblem(new BulwarkError('request.authority_form'), undefined);
  const length = Buffer.byteLength(body);
  if (sink instanceof Http2ServerResponse) {
    sink.writeHead(400, { 'content-type': PROBLEM_CONTENT_TYPE, 'content-length': length, 'cache-control': 'no-store' });
    sink.end(body);
    return;
  }
  sink.end(
    `HTTP/1.1 400 Bad Request\r\ncontent-type: ${PROBLEM_CONTENT_TYPE}\r\ncontent-length: ${length}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/**
 * An HTTP/2 connection is idle when it has no open stream (Envoy's `idle_timeout`), not when no
 * byte moved: a quiet gRPC stream (a watch, a long poll) or a slow upstream must not have its
 * connection cut under it, as Node's session inactivity timeout would. Closed gracefully (GOAWAY).
 */
function closeWhenIdle(session: Http2Session, idleMs: number): void {
  // The TLS server's socket timeout would still cut a quiet session: the streams decide here.
  session.setTimeout(0);
  let open = 0;
  let timer: NodeJS.Timeout | null = null;
  const arm = () => {
    timer = setTimeout(() => {
      if (open === 0 && !session.closed) session.close();
    }, idleMs);
    timer.unref();
  };
  session.on('stream', (stream) => {
    open++;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    stream.once('close', () => {
      if (--open === 0 && !session.closed) arm();
    });
  });
  // Liveness, whether streams are open or not: a peer must answer PING (RFC 9113 §6.7), so one
  // that has not answered by the next round is gone. This also ends sessions nghttp2 has given up
  // on: after a connection error from the peer (e.g. DATA on a closed stream) it sends GOAWAY and
  // stops reading, but Node neither closes the socket nor ends the open streams, so the
  // connection (and its in-flight slots) would otherwise stay in CLOSE_WAIT for ever.
  let unanswered = false;
  const probe = setInterval(() => {
    if (session.destroyed) return;
    if (unanswered) {
      session.destroy();
      return;
    }
    unanswered = true;
    try {
      session.ping((err) => {
        if (err === null) unanswered = false;
      });
    } catch {
      session.destroy(); // too many PINGs outstanding: the peer is not reading either
    }
  }, idleMs);
  probe.unref();
  session.once('close', () => {
    if (timer !== null) clearTimeout(timer);
    clearInterval(probe);
  });
  arm();
}

function sameFiles(a: TlsConfig, b: TlsConfig): boolean {
  return a.cert === b.cert && a.key === b.key && a.ca === b.ca;
}
