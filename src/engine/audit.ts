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
}

/** Records a finished request's audit event; a refusal by the log (closed, full) is logged, not thrown. */
export function auditRequest(audit: AuditLog, telemetry: Telemetry, ctx: RequestContext, end: RequestEnd): void {
  const length = Number(ctx.headers['content-length'] ?? -1);
  const result = audit.record(
    audit.fromContext(ctx, {
      status: end.status,
      latencyMs: Number(process.hrtime.bigint() - ctx.startedAt) / 1e6,
      upstream: end.upstream,
      bytesIn: Number.isSafeInteger(length) && length >= 0 ? length : -1,
      bytesOut: end.bytesOut,
      clientIp: ctx.clientAddress,
      ...(end.code === null ? {} : { error: { code: end.code } }),
      ...(end.grpcStatus === null ? {} : { grpcStatus: end.grpcStatus }),
    }),
  );
  if (result.status === 'rejected') telemetry.requestLogger(ctx).error({ reason: result.reason }, 'audit event refused');
}
