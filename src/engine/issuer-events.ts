import type { AuditLog } from '../audit/index.js';
import { issuerEventOrigin, type IssuerEvent, type IssuerEventOrigin } from '../issuer/index.js';
import type { Logger, Telemetry } from '../telemetry/index.js';

/**
 * Where both forms of the engine send the issuer's events. They are security events (a reused
 * refresh token is a stolen one), so each is logged and audited, joined to the request it happened
 * in; the log never shows a subject in clear (the audit masking rules, else a hash), the audit
 * record applies those rules itself.
 */
export function issuerEventSink(logger: Logger, telemetry: Telemetry, audit: AuditLog | null): (event: IssuerEvent) => void {
  return (event) => {
    const origin = issuerEventOrigin();
    if (event.type === 'store_error') {
      logger.error({ err: event.error, ...originFields(origin) }, 'issuer store failure');
      return;
    }
    const line = { event: event.type, ...logFields(event, telemetry), ...originFields(origin) };
    if (event.type === 'refresh_reuse') logger.warn(line, 'refresh token reused: session revoked');
    else logger.debug(line, event.type);
    if (audit === null) return;
    const result = audit.record({
      ...auditEvent(event),
      requestId: origin?.requestId ?? null,
      traceId: origin?.traceId ?? null,
      spanId: origin?.spanId ?? null,
    });
    if (result.status === 'rejected') logger.error({ reason: result.reason, ...originFields(origin) }, 'audit event refused');
  };
}

function originFields(origin: IssuerEventOrigin | null): Record<string, string> {
  if (origin === null) return {};
  const fields: Record<string, string> = {};
  if (origin.requestId !== null) fields['request_id'] = origin.requestId;
  if (origin.traceId !== null) fields['trace_id'] = origin.traceId;
  if (origin.spanId !== null) fields['span_id'] = origin.spanId;
  return fields;
}

function logFields(event: Exclude<IssuerEvent, { type: 'store_error' }>, telemetry: Telemetry): Record<string, unknown> {
  switch (event.type) {
    case 'token_issued':
      return {
        grant: event.grant,
        // A client's own token: its subject is its id, which a pseudonym next to it would give away.
        ...(event.grant === 'client_credentials' ? {} : { subject_hash: telemetry.subjectForLog(event.sub) }),
        client_id: event.clientId,
        jti: event.jti,
        ...(event.sid === undefined ? {} : { sid: event.sid }),
      };
    case 'grant_refused':
      return {
        code: event.code,
        reason: event.reason,
        client_id: event.clientId ?? null,
        ...(event.sid === undefined ? {} : { sid: event.sid }),
      };
    case 'refresh_reuse':
      return { sid: event.sid, subject_hash: telemetry.subjectForLog(event.sub), revoked: event.revoked };
    case 'session_ended':
      return { sid: event.sid, subject_hash: telemetry.subjectForLog(event.sub) };
  }
}

/** Who got which token, and every refusal and ended session (never a token or secret). */
function auditEvent(event: Exclude<IssuerEvent, { type: 'store_error' }>) {
  switch (event.type) {
    case 'token_issued':
      return {
        action: 'token.issued',
        subject: event.sub,
        outcome: 'success' as const,
        details: { grant: event.grant, clientId: event.clientId, jti: event.jti, sid: event.sid ?? null },
      };
    case 'grant_refused':
      return {
        action: 'token.refused',
        subject: event.clientId ?? null,
        outcome: 'failure' as const,
        details: { code: event.code, reason: event.reason, sid: event.sid ?? null },
      };
    case 'refresh_reuse':
      return { action: 'session.reuse_detected', subject: event.sub, outcome: 'failure' as const, details: { sid: event.sid } };
    case 'session_ended':
      return { action: 'session.ended', subject: event.sub, outcome: 'success' as const, details: { sid: event.sid } };
  }
}
