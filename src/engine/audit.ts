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
  write: (...args: never[]) => boolean;
  end: (...args: never[]) => unknown;
  destroy(error?: Error): unknown;
  readonly destroyed: boolean;
}

/**
 * `durability: durable`: the response's last bytes leave only once its audit event is committed,
 * so a client holding a complete answer can count on the record surviving a crash (kill -9 included).
 * A body with a Content-Length is complete for the client at its last byte, before `end()`: so the
 * latest `write` is always held back until the next one (one chunk in hand), and the last one until
 * the commit. The event is built a tick after `end` is called: callers that finish their bookkeeping
 * right after `res.end()` (bytes relayed, upstream outcome) have done so by then. A refused or failed
 * commit cuts the response instead (the client sees it incomplete, never as served).
 */
export function holdEnd(res: Holdable, commit: () => Promise<void>): void {
  const write = res.write;
  const end = res.end;
  let held: never[] | null = null;
  res.write = function heldWrite(this: unknown, ...args: never[]): boolean {
    const previous = held;
    held = args;
    // Backpressure still reaches the writer: the answer is the stream's own, one chunk behind.
    return previous === null ? true : write.apply(res, previous);
  } as Holdable['write'];
  res.end = function heldEnd(this: unknown, ...args: never[]) {
    res.write = write;
    res.end = end;
    process.nextTick(() => {
      Promise.resolve()
        .then(commit)
        .then(
          () => {
            if (res.destroyed) return;
            if (held !== null) write.apply(res, held);
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
