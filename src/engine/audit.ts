import { ServerResponse } from 'node:http';
import { Http2ServerResponse } from 'node:http2';
import type { AuditLog } from '../audit/index.js';
import type { RequestContext } from '../core/context.js';
import type { Telemetry } from '../telemetry/index.js';

/** How a request ended, as both forms of the engine (gateway, library) report it to the audit log. */
export interface RequestEnd {
  status: number;
  upstream: string | null;
  /** Response body bytes sent; -1 when unknown. */
  bytesOut: number;
  /** The reason code when Bulwark refused or failed the request; null when served. */
  code: string | null;
  grpcStatus: number | null;
  /** The event takes the queue place `audit.reserve()` held when the request was admitted. */
  reserved?: boolean;
}

function requestEvent(audit: AuditLog, ctx: RequestContext, end: RequestEnd) {
  const length = Number(ctx.headers['content-length'] ?? -1);
  return audit.fromContext(ctx, {
    status: end.status,
    latencyMs: Number(process.hrtime.bigint() - ctx.startedAt) / 1e6,
    upstream: end.upstream,
    bytesIn: Number.isSafeInteger(length) && length >= 0 ? length : -1,
    bytesOut: end.bytesOut,
    clientIp: ctx.clientAddress,
    ...(end.code === null ? {} : { error: { code: end.code } }),
    ...(end.grpcStatus === null ? {} : { grpcStatus: end.grpcStatus }),
  });
}

/** Records a finished request's audit event; a refusal by the log (closed, full) is logged, not thrown. */
export function auditRequest(audit: AuditLog, telemetry: Telemetry, ctx: RequestContext, end: RequestEnd): void {
  const result = audit.record(requestEvent(audit, ctx, end), end.reserved === true);
  if (result.status === 'rejected') telemetry.requestLogger(ctx).error({ reason: result.reason }, 'audit event refused');
}

/**
 * The same, settled once the event is committed (durable mode); rejects when the log refuses it or
 * cannot write it, or when the commit takes longer than `HOLD_LIMIT_MS` (the WAL at its quota while
 * sinks are down) — under `whenFull: drop` it settles then instead, as that policy serves unaudited.
 * `bestEffort`: recorded without waiting (refusals made before the request held a queue place: the
 * client must get them whatever the log can take).
 */
export function auditRequestDurable(
  audit: AuditLog,
  telemetry: Telemetry,
  ctx: RequestContext,
  end: RequestEnd,
  bestEffort = false,
): Promise<void> {
  if (bestEffort) {
    auditRequest(audit, telemetry, ctx, end);
    return Promise.resolve();
  }
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<void>((resolve, reject) => {
    timer = setTimeout(() => (audit.blocksWhenFull ? reject(new Error('audit commit timed out')) : resolve()), HOLD_LIMIT_MS);
    // A stopped gateway exits without waiting for it (its connections are closed by then).
    timer.unref();
  });
  const committed = audit.recordDurable(requestEvent(audit, ctx, end), end.reserved === true).then(() => {});
  return Promise.race([committed, limit])
    .finally(() => clearTimeout(timer))
    .catch((error: unknown) => {
      telemetry.requestLogger(ctx).error({ err: error }, 'audit event not committed: response cut');
      throw error;
    });
}

/** The longest a response waits for its event's commit (durable mode) before it is cut (block) or let go (drop). */
export const HOLD_LIMIT_MS = 10_000;

/**
 * Durable audit where an answer's last part leaves on its own (a gRPC status), as `holdEnd` does for
 * `res.end`: `send` once `commit` (the request's event, committed) has settled, `refuse` if it failed.
 * Without a commit (fast mode, no audit) `send` runs at once.
 */
export function afterCommit(commit: (() => Promise<void>) | null, send: () => void, refuse: () => void): void {
  if (commit === null) return send();
  Promise.resolve().then(commit).then(send, refuse);
}

/** The part of a response `holdEnd` needs. */
interface Holdable {
  writeHead: (...args: never[]) => unknown;
  write: (...args: never[]) => boolean;
  end: (...args: never[]) => unknown;
  getHeader(name: string): unknown;
  destroy(error?: Error): unknown;
  readonly destroyed: boolean;
}

/** A Content-Length header's value as a byte count; null when absent or not one. */
export function contentLength(value: unknown): number | null {
  const n = typeof value === 'number' ? value : typeof value === 'string' ? Number(value) : NaN;
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

/** The Content-Length in `writeHead`'s headers (object, flat array or pairs), if any. */
function lengthIn(headers: unknown): number | null {
  let value: unknown;
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) {
      // [[name, value], …]
      for (const pair of headers as unknown[][]) if (String(pair[0]).toLowerCase() === 'content-length') value = pair[1];
    } else {
      for (let i = 0; i + 1 < headers.length; i += 2)
        if (String(headers[i]).toLowerCase() === 'content-length') value = headers[i + 1];
    }
  } else if (typeof headers === 'object' && headers !== null) {
    const object = headers as Record<string, unknown>;
    for (const name in object) if (name.toLowerCase() === 'content-length') value = object[name];
  }
  return contentLength(value);
}

function sizeOf(chunk: unknown, encoding: unknown): number {
  if (typeof chunk === 'string')
    return Buffer.byteLength(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  return chunk instanceof Uint8Array ? chunk.byteLength : 0;
}

/**
 * `durability: durable`: the response's last bytes leave only once its audit event is committed,
 * so a client holding a complete answer can count on the record surviving a crash (kill -9 included).
 * Without a Content-Length the response is complete at its end (the last chunk, END_STREAM): `end()`
 * waits, every `write` before it goes out at once (a stream of events is not delayed). With one, the
 * client has it all at the last byte, before `end()`: the `write` that completes the declared length
 * waits too. The event is built a tick after `end` is called: callers that finish their bookkeeping
 * right after `res.end()` (bytes relayed, upstream outcome) have done so by then. A refused or failed
 * commit cuts the response instead (the client sees it incomplete, never as served).
 */
export function holdEnd(res: Holdable, commit: () => Promise<void>): void {
  const writeHead = res.writeHead;
  const write = res.write;
  const end = res.end;
  let declared: number | null | undefined; // undefined: not known yet
  let sent = 0;
  let ending = false;
  const held: never[][] = [];
  res.writeHead = function heldWriteHead(this: unknown, ...args: never[]) {
    for (const arg of args as unknown[]) {
      const length = lengthIn(arg);
      if (length !== null) declared = length;
    }
    return writeHead.apply(res, args);
  } as Holdable['writeHead'];
  res.write = function heldWrite(this: unknown, ...args: never[]): boolean {
    if (ending) {
      // As a stream that has ended: refused, the callback told.
      const callback = callbackIn(args);
      if (callback !== null) process.nextTick(callback, writeAfterEnd());
      return false;
    }
    // Once the declared length is reached, whatever follows waits behind it, in order.
    if (held.length > 0) {
      held.push(args);
      return true;
    }
    declared ??= contentLength(res.getHeader('content-length'));
    const [chunk, encoding] = args as unknown[];
    sent += sizeOf(chunk, encoding);
    if (declared === null || sent < declared) return write.apply(res, args);
    held.push(args);
    return true;
  } as Holdable['write'];
  const laterEnds: ((error?: Error | null) => void)[] = [];
  res.end = function heldEnd(this: unknown, ...args: never[]) {
    // A second end() changes nothing (as on a stream), whether the first has gone out yet or not; its
    // callback runs when the response has finished.
    if (ending) {
      const callback = callbackIn(args);
      if (callback !== null) laterEnds.push(callback);
      return res;
    }
    ending = true;
    // Ended as far as the application and its framework can tell: a held response must not look
    // unsent, or a framework adds a second answer into it (Express's 404 after `send`, Fastify's reply).
    const restore = seemEnded(res);
    const release = () => {
      restore();
      res.writeHead = writeHead;
      res.write = write;
      res.end = end;
    };
    // Gone or cut before the end went out: what waited is told, not dropped.
    const abandon = () => {
      release();
      const error = new Error('response destroyed before its audit event was committed');
      for (const waiting of [...held, args]) {
        const callback = callbackIn(waiting);
        if (callback !== null) process.nextTick(callback, error);
      }
      for (const callback of laterEnds) process.nextTick(callback, error);
    };
    process.nextTick(() => {
      Promise.resolve()
        .then(commit)
        .then(
          () => {
            if (res.destroyed) return abandon();
            release();
            for (const waiting of held) write.apply(res, waiting);
            end.apply(res, args);
            for (const callback of laterEnds) end.call(res, callback as never);
          },
          () => {
            if (!res.destroyed) res.destroy();
            abandon();
          },
        );
    });
    return res;
  } as Holdable['end'];
}

const HEADER_SETTERS = ['writeHead', 'setHeader', 'setHeaders', 'appendHeader', 'removeHeader', 'flushHeaders'] as const;
/** What a held response answers `true` to. */
const ENDED_GETTERS = ['headersSent', 'writableEnded'] as const;

/** Set on a response of a holdable class while its end is held (see `holdableResponse`). */
const HELD = Symbol('bulwark.held');

/**
 * Makes a response whose end is held read as ended (`headersSent`, `writableEnded`) and refuse header
 * changes as Node does once headers are out; returns what undoes it, before the real end runs.
 * A response of a holdable class only flips a flag; any other gets its own properties for the hold.
 */
function seemEnded(res: object): () => void {
  if (HELD in res) {
    const held = res as { [HELD]: boolean };
    held[HELD] = true;
    return () => {
      held[HELD] = false;
    };
  }
  const names = [...ENDED_GETTERS, ...HEADER_SETTERS];
  const saved = names.map((name) => [name, Object.getOwnPropertyDescriptor(res, name)] as const);
  for (const name of ENDED_GETTERS) Object.defineProperty(res, name, { configurable: true, get: () => true });
  for (const name of HEADER_SETTERS)
    if (typeof (res as Record<string, unknown>)[name] === 'function')
      Object.defineProperty(res, name, { configurable: true, writable: true, value: headersAlreadySent });
  return () => {
    for (const [name, descriptor] of saved) {
      if (descriptor === undefined) delete (res as Record<string, unknown>)[name];
      else Object.defineProperty(res, name, descriptor);
    }
  };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- TypeScript's rule for a class extending a parameter
type Constructor = abstract new (...args: any[]) => object;

/**
 * A response class whose held end (`holdEnd`) is a flag its prototype reads, defined once here:
 * per-response `defineProperty` and `delete` on a Node response cost the gateway's durable route
 * about a quarter of its CPU (the response objects change shape under Node's http code). The
 * gateway's servers are built with these, and applications can build theirs with them (exported from
 * the package); responses of any other class are held the general way.
 */
function holdableResponse<T extends Constructor>(Base: T): T {
  abstract class Holdable extends Base {}
  const proto = Holdable.prototype as unknown as Record<PropertyKey, unknown>;
  Object.defineProperty(proto, HELD, { configurable: false, writable: true, value: false });
  for (const name of ENDED_GETTERS) {
    const get = getterOf(Base.prototype, name);
    Object.defineProperty(proto, name, {
      configurable: true,
      get(this: { [HELD]: boolean }) {
        return this[HELD] || (get?.call(this) as boolean);
      },
    });
  }
  for (const name of HEADER_SETTERS) {
    const method = (Base.prototype as Record<string, unknown>)[name];
    if (typeof method !== 'function') continue;
    Object.defineProperty(proto, name, {
      configurable: true,
      writable: true,
      value: function (this: { [HELD]: boolean }, ...args: unknown[]): unknown {
        if (this[HELD]) headersAlreadySent();
        return (method as (...a: unknown[]) => unknown).apply(this, args);
      },
    });
  }
  return Holdable as unknown as T;
}

function getterOf(proto: object | null, name: string): (() => unknown) | undefined {
  for (let p = proto; p !== null; p = Object.getPrototypeOf(p) as object | null) {
    const descriptor = Object.getOwnPropertyDescriptor(p, name);
    if (descriptor !== undefined) return descriptor.get;
  }
  return undefined;
}

/** Node's HTTP/1 response, holdable: `http.createServer({ ServerResponse })`, `Http1ServerResponse` for TLS. */
export const HoldableServerResponse = holdableResponse(ServerResponse);
/** Node's HTTP/2 compatibility response, holdable: the `Http2ServerResponse` server option. */
export const HoldableHttp2ServerResponse = holdableResponse(Http2ServerResponse);

function headersAlreadySent(): never {
  throw Object.assign(new Error('Cannot set headers after they are sent to the client'), { code: 'ERR_HTTP_HEADERS_SENT' });
}

function callbackIn(args: readonly unknown[]): ((error?: Error | null) => void) | null {
  const last = args[args.length - 1];
  return typeof last === 'function' ? (last as (error?: Error | null) => void) : null;
}

function writeAfterEnd(): Error {
  return Object.assign(new Error('write after end'), { code: 'ERR_STREAM_WRITE_AFTER_END' });
}
