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

/** The same, settled once the event is committed (durable mode); rejects when the log refuses it or cannot write it. */
export function auditRequestDurable(audit: AuditLog, telemetry: Telemetry, ctx: RequestContext, end: RequestEnd): Promise<void> {
  return audit.recordDurable(requestEvent(audit, ctx, end), end.reserved === true).then(
    () => {},
    (error: unknown) => {
      telemetry.requestLogger(ctx).error({ err: error }, 'audit event not committed: response cut');
      throw error;
    },
  );
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

/** The Content-Length in `writeHead`'s headers (object or flat array), if any. */
function lengthIn(headers: unknown): number | null {
  let value: unknown;
  if (Array.isArray(headers)) {
    for (let i = 0; i + 1 < headers.length; i += 2)
      if (String(headers[i]).toLowerCase() === 'content-length') value = headers[i + 1];
  } else if (typeof headers === 'object' && headers !== null) {
    for (const [name, v] of Object.entries(headers)) if (name.toLowerCase() === 'content-length') value = v;
  }
  const n = typeof value === 'number' ? value : typeof value === 'string' ? Number(value) : NaN;
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
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
  const held: never[][] = [];
  res.writeHead = function heldWriteHead(this: unknown, ...args: never[]) {
    for (const arg of args as unknown[]) {
      const length = lengthIn(arg);
      if (length !== null) declared = length;
    }
    return writeHead.apply(res, args);
  } as Holdable['writeHead'];
  res.write = function heldWrite(this: unknown, ...args: never[]): boolean {
    // Once the declared length is reached, whatever follows waits behind it, in order.
    if (held.length > 0) {
      held.push(args);
      return true;
    }
    declared ??= lengthIn({ 'content-length': res.getHeader('content-length') });
    const [chunk, encoding] = args as unknown[];
    sent += sizeOf(chunk, encoding);
    if (declared === null || sent < declared) return write.apply(res, args);
    held.push(args);
    return true;
  } as Holdable['write'];
  res.end = function heldEnd(this: unknown, ...args: never[]) {
    res.writeHead = writeHead;
    res.write = write;
    res.end = end;
    process.nextTick(() => {
      Promise.resolve()
        .then(commit)
        .then(
          () => {
            if (res.destroyed) return;
            for (const args of held) write.apply(res, args);
            end.apply(res, args);
          },
          () => {
            if (!res.destroyed) res.destroy();
          },
        );
    });
    return res;
  } as Holdable['end'];
}
