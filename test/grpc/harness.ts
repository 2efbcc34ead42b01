/**
 * Test harness for the gRPC proxy until the gateway routes gRPC itself: an HTTP/2
 * server whose request handler does what Gateway.handle will (context → admission →
 * route pipeline → forwardGrpc), with a real config, real routes and real stages, plus
 * a real grpc-js upstream and client speaking raw-byte messages.
 */
import * as grpc from '@grpc/grpc-js';
import {
  connect as h2connect,
  createServer as createH2Server,
  type ClientHttp2Session,
  type Http2Server,
  type Http2ServerRequest,
  type Http2Session,
  type ServerHttp2Stream,
  type Settings,
  type Http2ServerResponse,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { AuditLog } from '../../src/audit/index.js';
import type { RouteConfig } from '../../src/config/schema.js';
import { loadConfigFile, parseConfig } from '../../src/config/load.js';
import { BulwarkError } from '../../src/core/errors.js';
import type { Stage } from '../../src/core/stage.js';
import { admit, contextFor, problemResponse } from '../../src/engine/admission.js';
import { CompiledRoute, compileRuntime, retireRuntime, Runtime } from '../../src/gateway/runtime.js';
import type { GrpcHealthService } from '../../src/grpc/health.js';
import { closeGrpcPool, grpcPoolFor, type GrpcUpstreamPoolOptions } from '../../src/grpc/pool.js';
import { forwardGrpc, isGrpcRequest } from '../../src/grpc/proxy.js';
import { grpcStatusFor, sendGrpcDenial } from '../../src/grpc/status.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { createLogger } from '../../src/telemetry/logger.js';
import type { Telemetry } from '../../src/telemetry/index.js';

// ---------------------------------------------------------------------------
// A raw-bytes service: messages are Buffers, so tests choose sizes and bytes freely.

const identity = (b: Buffer): Buffer => b;
function method(name: string, requestStream: boolean, responseStream: boolean) {
  return {
    path: `/test.Echo/${name}`,
    requestStream,
    responseStream,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: name,
  };
}

export const ECHO_SERVICE = {
  Unary: method('Unary', false, false),
  ServerStream: method('ServerStream', false, true),
  ClientStream: method('ClientStream', true, false),
  Bidi: method('Bidi', true, true),
} satisfies grpc.ServiceDefinition;

export const EchoClient = grpc.makeGenericClientConstructor(ECHO_SERVICE, 'Echo');
export type EchoClientInstance = InstanceType<typeof EchoClient> & {
  Unary: (
    req: Buffer,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: Buffer) => void,
  ) => grpc.ClientUnaryCall;
  ServerStream: (req: Buffer, md: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientReadableStream<Buffer>;
  ClientStream: (
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: Buffer) => void,
  ) => grpc.ClientWritableStream<Buffer>;
  Bidi: (md: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientDuplexStream<Buffer, Buffer>;
};

/**
 * A grpc-js server with the echo service behind `interceptors` (Unary echoes; the others end at
 * once, ClientStream is UNIMPLEMENTED), on a free port; `handlers` replaces any of them.
 */
export async function serveEcho(
  interceptors: grpc.ServerInterceptor[],
  handlers: Partial<grpc.UntypedServiceImplementation> = {},
): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server({ interceptors });
  server.addService(ECHO_SERVICE, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request),
    ServerStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => call.end(),
    ClientStream: (_call: unknown, cb: grpc.sendUnaryData<Buffer>) => cb({ code: grpc.status.UNIMPLEMENTED }, null),
    Bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => call.end(),
    ...handlers,
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return { server, port };
}

export const MAX_MESSAGE = 64 << 20;
const SIZE_OPTIONS = { 'grpc.max_receive_message_length': MAX_MESSAGE, 'grpc.max_send_message_length': MAX_MESSAGE };

export function echoClient(port: number, options: grpc.ChannelOptions = {}): EchoClientInstance {
  return new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    ...SIZE_OPTIONS,
    ...options,
  }) as EchoClientInstance;
}

/** `count` messages of `size` bytes, each starting with its index (u32 BE). */
/** One unary call with these metadata; the status the client saw (0 for OK). `cancelAfterMs`: the client cancels then. */
export function unaryStatus(
  client: EchoClientInstance,
  metadata: Record<string, string>,
  options: grpc.CallOptions = {},
  cancelAfterMs?: number,
): Promise<number> {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  return new Promise((resolve) => {
    const call = client.Unary(Buffer.from('ping'), md, options, (err) => resolve(err === null ? 0 : err.code));
    if (cancelAfterMs !== undefined) setTimeout(() => call.cancel(), cancelAfterMs);
  });
}

export function numbered(index: number, size: number): Buffer {
  const b = Buffer.alloc(Math.max(4, size), index & 0xff);
  b.writeUInt32BE(index, 0);
  return b;
}

export interface UpstreamCall {
  path: string;
  metadata: Record<string, string | Buffer>;
  /** Milliseconds left until the call's deadline when it arrived (from grpc-timeout); Infinity without one. */
  deadlineMs: number;
  cancelled: boolean;
  messages: number;
  bytes: number;
  /** Server streaming: writes that returned false (the proxy pushed back). */
  blocked: number;
  written: number;
}

export interface EchoUpstream {
  port: number;
  origin: string;
  server: grpc.Server;
  calls: UpstreamCall[];
  close(): Promise<void>;
}

function num(md: grpc.Metadata, key: string, fallback: number): number {
  const v = md.get(key)[0];
  return v === undefined ? fallback : Number(v);
}

/**
 * A grpc-js upstream whose behaviour the client steers with metadata:
 * `x-delay-ms`, `x-reply-bytes`, `x-count`/`x-size` (server streaming), `x-status`/`x-message`
 * (fail with that status). It sends initial metadata `x-initial` and trailing `x-trailer`.
 */
export async function startEchoUpstream(port = 0): Promise<EchoUpstream> {
  const calls: UpstreamCall[] = [];
  const server = new grpc.Server(SIZE_OPTIONS);
  const record = (
    path: string,
    call: { metadata: grpc.Metadata; getDeadline(): grpc.Deadline; on(e: 'cancelled', l: () => void): unknown },
  ) => {
    const deadline = call.getDeadline();
    const rec: UpstreamCall = {
      path,
      metadata: call.metadata.getMap(),
      deadlineMs: deadline instanceof Date ? deadline.getTime() - Date.now() : deadline - Date.now(),
      cancelled: false,
      messages: 0,
      bytes: 0,
      blocked: 0,
      written: 0,
    };
    call.on('cancelled', () => (rec.cancelled = true));
    calls.push(rec);
    return rec;
  };
  const trailer = () => {
    const md = new grpc.Metadata();
    md.set('x-trailer', 'bye');
    return md;
  };
  const initial = () => {
    const md = new grpc.Metadata();
    md.set('x-initial', 'hello');
    return md;
  };
  const failure = (md: grpc.Metadata): Partial<grpc.StatusObject> | null => {
    const code = md.get('x-status')[0];
    if (code === undefined) return null;
    // URI-encoded, as metadata values are ASCII: lets a test ask for a non-ASCII status message.
    return {
      code: Number(code),
      details: decodeURIComponent(String(md.get('x-message')[0] ?? 'upstream%20says%20no')),
      metadata: trailer(),
    };
  };
  const delay = (md: grpc.Metadata) => new Promise((r) => setTimeout(r, num(md, 'x-delay-ms', 0)));

  server.addService(ECHO_SERVICE, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const rec = record('Unary', call);
      rec.messages = 1;
      rec.bytes = call.request.length;
      void delay(call.metadata).then(() => {
        if (rec.cancelled) return;
        const fail = failure(call.metadata);
        if (fail !== null) return cb(fail, null);
        call.sendMetadata(initial());
        const size = num(call.metadata, 'x-reply-bytes', -1);
        cb(null, size >= 0 ? Buffer.alloc(size, 7) : call.request, trailer());
      });
    },
    ServerStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      const rec = record('ServerStream', call);
      const count = num(call.metadata, 'x-count', 10);
      const size = num(call.metadata, 'x-size', 16);
      void delay(call.metadata).then(async () => {
        const fail = failure(call.metadata);
        if (fail !== null) return call.destroy(Object.assign(new Error(fail.details), fail));
        call.sendMetadata(initial());
        for (let i = 0; i < count && !rec.cancelled; i++) {
          rec.written++;
          if (!call.write(numbered(i, size))) {
            rec.blocked++;
            await new Promise<void>((r) => {
              const done = () => {
                call.off('drain', done);
                call.off('cancelled', done);
                r();
              };
              call.on('drain', done);
              call.on('cancelled', done);
            });
          }
        }
        if (!rec.cancelled) call.end(trailer());
      });
    },
    ClientStream: (call: grpc.ServerReadableStream<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const rec = record('ClientStream', call);
      let ordered = true;
      call.on('data', (m: Buffer) => {
        if (m.length >= 4 && m.readUInt32BE(0) !== rec.messages) ordered = false;
        rec.messages++;
        rec.bytes += m.length;
      });
      call.on('end', () => {
        const fail = failure(call.metadata);
        if (fail !== null) return cb(fail, null);
        cb(null, Buffer.from(JSON.stringify({ count: rec.messages, bytes: rec.bytes, ordered })), trailer());
      });
      call.on('error', () => {});
    },
    Bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      const rec = record('Bidi', call);
      call.sendMetadata(initial());
      call.on('data', (m: Buffer) => {
        rec.messages++;
        rec.bytes += m.length;
        call.write(m);
      });
      call.on('end', () => call.end(trailer()));
      call.on('error', () => {});
    },
  });
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return {
    port: bound,
    origin: `http://127.0.0.1:${bound}`,
    server,
    calls,
    close: () => new Promise<void>((r) => server.tryShutdown(() => r())).then(() => server.forceShutdown()),
  };
}

/** A bare node:http2 upstream, for header-level checks and misbehaviour grpc-js would not produce. */
export interface RawUpstream {
  port: number;
  origin: string;
  server: Http2Server;
  seen: IncomingHttpHeaders[];
  close(): Promise<void>;
}

export async function startRawUpstream(
  onStream: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void,
  settings: Settings = {},
): Promise<RawUpstream> {
  const seen: IncomingHttpHeaders[] = [];
  const server = createH2Server({ settings });
  const sessions = new Set<Http2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.once('close', () => sessions.delete(s));
  });
  server.on('stream', (stream, headers) => {
    seen.push(headers);
    stream.on('error', () => {});
    onStream(stream, headers);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    server,
    seen,
    close: async () => {
      for (const s of sessions) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

// ---------------------------------------------------------------------------
// The harness gateway.

export interface HarnessCall {
  path: string;
  /** The gRPC status the client got (the HTTP status for a non-gRPC request). */
  status: number;
  code: string | undefined;
}

export interface HarnessOptions {
  /** Upstream origin for the default config's `echo` upstream. */
  upstream: string;
  /** Full YAML config; default: one h2c listener and route(s) for /test.Echo. */
  yaml?: string;
  /** A config file instead (relative key paths resolve next to it). */
  file?: string;
  /** Environment for `${VAR}` substitution; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Extra stages after the config's own (authn, authz), per route: for denials no config stage gives yet. */
  extraStages?: (route: RouteConfig) => Stage[];
  maxMessageBytes?: number;
  maxTimeoutMs?: number | null;
  stripMetadata?: ReadonlySet<string>;
  pool?: GrpcUpstreamPoolOptions;
  health?: GrpcHealthService;
}

export interface Harness {
  port: number;
  runtime: Runtime;
  /** Every call's outcome, in completion order: the status the client got and the reason code. */
  calls: HarnessCall[];
  /** Resolves after `n` calls have completed. */
  waitForCalls(n: number, timeoutMs?: number): Promise<HarnessCall[]>;
  close(): Promise<void>;
}

export function defaultYaml(upstream: string): string {
  return `
version: 1
listeners:
  - address: 127.0.0.1
    port: 0
    protocol: h2c
upstreams:
  echo:
    endpoints: ['${upstream}']
routes:
  - id: echo-service
    match: { path: { prefix: /test.Echo } }
    upstream: echo
    auth: { public: true }
`;
}

/** The compiled route with this id (the router only answers by request). */
function findRoute(runtime: Runtime, id: string): CompiledRoute | undefined {
  for (const route of runtime.config.routes) {
    if (route.id !== id) continue;
    // Routes are compiled in config order; find it by matching a request the route itself describes.
    const path = route.match.path;
    const probe = path === undefined ? '/' : 'exact' in path ? path.exact : 'prefix' in path ? path.prefix : null;
    if (probe === null) return undefined;
    const hit = runtime.router.match('localhost', route.match.methods?.[0] ?? 'POST', probe);
    if (hit?.route.id === id) return hit.route;
  }
  return undefined;
}

export async function startGrpcHarness(options: HarnessOptions): Promise<Harness> {
  const parseOptions = { checks: CONFIG_CHECKS, ...(options.env === undefined ? {} : { env: options.env }) };
  const loaded =
    options.file !== undefined
      ? await loadConfigFile(options.file, parseOptions)
      : parseConfig(options.yaml ?? defaultYaml(options.upstream), 'harness.yaml', parseOptions);
  let runtime = await compileRuntime(loaded.config, loaded.hash, null);
  runtime.activate(null);
  const extra = options.extraStages;
  if (extra !== undefined) {
    const compiled = runtime;
    const routes = loaded.config.routes.map((config) => {
      const upstream = config.upstream === undefined ? null : compiled.upstreams.get(config.upstream)!;
      const own = findRoute(compiled, config.id)?.pipeline?.stages ?? [];
      return new CompiledRoute(config, upstream, [...own, ...extra(config)]);
    });
    runtime = new Runtime(loaded.config, loaded.hash, new Map(compiled.upstreams), routes, {
      authn: compiled.authn,
      authz: compiled.authz,
    });
  }
  const settings = [...runtime.listeners.values()][0]!;
  const calls: HarnessCall[] = [];
  let waiters: (() => void)[] = [];
  const record = (path: string, status: number, error?: BulwarkError) => {
    calls.push({ path, status, code: error?.code });
    const w = waiters;
    waiters = [];
    for (const f of w) f();
  };
  const health = options.health;

  // What Gateway.handle would do for an HTTP/2 request, with the gRPC branch wired in.
  const handle = (req: Http2ServerRequest, res: Http2ServerResponse) => {
    const ctx = contextFor(req, false);
    const grpcCall = isGrpcRequest(req);
    if (grpcCall && health !== undefined && health.handles(ctx.rawTarget)) {
      health.serve(req.stream, req.headers, (status) => record(ctx.rawTarget, status));
      return;
    }
    const deny = (error: BulwarkError) => {
      if (grpcCall) sendGrpcDenial(res, error, ctx.requestId);
      else {
        const problem = problemResponse(error, ctx);
        res.writeHead(problem.status, problem.headers);
        res.end(problem.body);
      }
      res.once('close', () => record(ctx.rawTarget, grpcCall ? grpcStatusFor(error) : error.status, error));
    };
    const admitted = admit(req, ctx, settings, runtime);
    if (admitted instanceof BulwarkError) return deny(admitted);
    ctx.stripHeaders = runtime.ownedHeaders;
    // Every route in these configs is a gRPC route: anything else is refused (415).
    if (!grpcCall) return deny(new BulwarkError('grpc.not_grpc'));
    const proceed = (route: CompiledRoute) =>
      forwardGrpc(req, res, ctx, {
        pool: grpcPoolFor(route.upstream!, options.pool),
        maxMessageBytes: options.maxMessageBytes ?? 16 << 20,
        maxTimeoutMs: options.maxTimeoutMs ?? null,
        stripMetadata: options.stripMetadata ?? null,
        extraHeaders: null,
        onDone: (status, error) => record(ctx.rawTarget, status, error),
      });
    const decision = admitted.pipeline === null ? null : admitted.pipeline.run(ctx);
    if (decision === null) return proceed(admitted);
    if (decision instanceof BulwarkError) return deny(decision);
    decision.then(
      (d) => (d === null ? proceed(admitted) : deny(d)),
      (err: unknown) => deny(new BulwarkError('gateway.internal', undefined, { cause: err })),
    );
  };

  const server: Http2Server = createH2Server({ settings: { maxConcurrentStreams: 1000 } }, handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const sessions = new Set<Http2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.once('close', () => sessions.delete(s));
  });
  return {
    port,
    runtime,
    calls,
    waitForCalls(n: number, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${calls.length} of ${n} calls completed`)), timeoutMs);
        const check = () => {
          if (calls.length >= n) {
            clearTimeout(timer);
            resolve(calls);
          } else waiters.push(check);
        };
        check();
      });
    },
    async close() {
      for (const s of sessions) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      for (const upstream of runtime.upstreams.values()) await closeGrpcPool(upstream, true);
      await retireRuntime(runtime, null, 0);
    },
  };
}

// ---------------------------------------------------------------------------
// A raw HTTP/2 client, for what grpc-js would never send.

export interface RawResponse {
  headers: IncomingHttpHeaders;
  trailers: IncomingHttpHeaders | null;
  data: Buffer;
  rstCode: number | undefined;
  /** grpc-status from the trailers, or from the headers of a trailers-only response. */
  grpcStatus: number | undefined;
  grpcMessage: string | undefined;
}

export function rawSession(port: number): ClientHttp2Session {
  const session = h2connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  return session;
}

export function rawGrpcCall(
  session: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  body: Buffer | Buffer[] | null,
  timeoutMs = 5000,
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ':method': 'POST',
      'content-type': 'application/grpc',
      te: 'trailers',
      ...headers,
    });
    let responseHeaders: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders | null = null;
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      req.close();
      reject(new Error('raw call timed out'));
    }, timeoutMs);
    req.on('response', (h) => (responseHeaders = h));
    req.on('trailers', (t) => (trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', () => {});
    req.on('close', () => {
      clearTimeout(timer);
      const source = trailers ?? responseHeaders;
      const status = source['grpc-status'];
      resolve({
        headers: responseHeaders,
        trailers,
        data: Buffer.concat(chunks),
        rstCode: req.rstCode,
        grpcStatus: status === undefined ? undefined : Number(status),
        grpcMessage: source['grpc-message'] as string | undefined,
      });
    });
    const parts = body === null ? [] : Array.isArray(body) ? body : [body];
    for (const p of parts) req.write(p);
    req.end();
  });
}

/**
 * Durable audit checks: the allowed Unary call and a denied ClientStream call (no route:
 * UNIMPLEMENTED) each report their status and whether `audit`'s WAL held one more record when
 * that status arrived.
 */
export function durableStatusChecks(audit: () => AuditLog, client: () => EchoClientInstance) {
  const committedBeforeStatus = async (call: () => Promise<number>): Promise<{ status: number; committed: boolean }> => {
    await audit().flush();
    const before = audit().stats().written;
    const status = await call();
    return { status, committed: audit().stats().written > before };
  };
  return {
    allowed: () => committedBeforeStatus(() => unaryStatus(client(), {})),
    denied: () =>
      committedBeforeStatus(
        () =>
          new Promise<number>((resolve) => {
            client()
              .ClientStream(new grpc.Metadata(), {}, (err: grpc.ServiceError | null) => resolve(err === null ? 0 : err.code))
              .end();
          }),
      ),
  };
}

/**
 * An in-process gateway with one h2c listener in front of the echo upstream at `origin`; `rest` is the
 * config after `upstreams` (telemetry, rateLimits, routes). Telemetry, when wanted, is made from the
 * parsed config.
 */
export async function startGrpcGateway(
  origin: string,
  rest: string,
  options: { telemetry?: (config: ReturnType<typeof parseConfig>['config']) => Telemetry; audit?: AuditLog } = {},
): Promise<{ gateway: Gateway; port: number }> {
  const loaded = parseConfig(
    `version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]
upstreams: { echo: { endpoints: ['${origin}'] } }
${rest}`,
    'grpc.yaml',
    { checks: CONFIG_CHECKS },
  );
  const telemetry = options.telemetry?.(loaded.config);
  const gateway = new Gateway({
    logger: createLogger({ level: 'silent' }),
    ...(telemetry === undefined ? {} : { telemetry }),
    ...(options.audit === undefined ? {} : { audit: options.audit }),
  });
  await gateway.start(loaded.config, loaded.hash);
  return { gateway, port: [...gateway.ports().values()][0]! };
}
