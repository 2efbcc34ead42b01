/**
 * Header hygiene between client and upstream. Hop-by-hop headers describe one
 * connection and never cross the proxy; the gateway-owned forwarding headers are
 * dropped from the client's copy and re-added by the gateway, so a client can
 * neither forge them nor use `Connection` to strip them.
 */
import { EXPLANATION_HEADER } from '../authz/explain.js';
import { dashSpelling } from '../core/header-names.js';

export { dashSpelling, withDashSpellings } from '../core/header-names.js';

/** Headers that describe one connection (RFC 9110 §7.6.1 and friends); shared with the gRPC proxy. */
export const CONNECTION_HEADERS: readonly string[] = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
];

/** Forwarding and correlation headers only the gateway writes; shared with the gRPC proxy. */
export const FORWARDING_HEADERS: readonly string[] = [
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-request-id',
  'forwarded',
  'x-real-ip',
];

// `expect`: undici refuses it, and 100-continue is handled by the listener itself.
const HOP_BY_HOP = new Set([...CONNECTION_HEADERS, 'expect']);

/** Request headers the gateway writes itself; the client's copies never pass. */
const GATEWAY_OWNED = new Set(['host', ...FORWARDING_HEADERS]);

/** Tokens in Connection that name nothing beyond the always-stripped set, so need no lookup. */
function connectionTokens(value: string | string[] | undefined): Set<string> | null {
  if (value === undefined) return null;
  // What nearly every HTTP/1.1 client sends: nothing to look up, no split.
  if (value === 'keep-alive' || value === 'close' || value === 'Keep-Alive') return null;
  const joined = Array.isArray(value) ? value.join(',') : value;
  let tokens: Set<string> | null = null;
  for (const part of joined.split(',')) {
    const token = part.trim().toLowerCase();
    if (token === '' || token === 'keep-alive' || token === 'close' || HOP_BY_HOP.has(token)) continue;
    (tokens ??= new Set()).add(token);
  }
  return tokens;
}

export interface ForwardingInfo {
  host: string;
  requestId: string;
  xForwardedFor: string;
  xForwardedProto: string;
  xForwardedHost: string;
}

/**
 * Upstream request headers as a flat [name, value, ...] list (undici's cheapest
 * form), keeping the client's order and duplicates.
 */
export function upstreamRequestHeaders(
  rawHeaders: readonly string[],
  connection: string | string[] | undefined,
  forwarding: ForwardingInfo,
  strip: ReadonlySet<string> | null = null,
  extra: readonly string[] | null = null,
): string[] {
  const nominated = connectionTokens(connection);
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.charCodeAt(0) === 58 /* ':' h2 pseudo-header */) continue;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || GATEWAY_OWNED.has(lower)) continue;
    if (nominated !== null && nominated.has(lower)) continue;
    // Headers stages own (identity headers): the client's copies never pass, whatever their case.
    if (strip !== null && strip.has(lower)) continue;
    // …nor spelled with `_` for `-` (`strip` holds the dash spelling of its own underscore names).
    const dashed = dashSpelling(lower);
    if (dashed !== null && (HOP_BY_HOP.has(dashed) || GATEWAY_OWNED.has(dashed) || (strip !== null && strip.has(dashed))))
      continue;
    out.push(lower, rawHeaders[i + 1]!);
  }
  if (extra !== null) for (let i = 0; i < extra.length; i++) out.push(extra[i]!);
  out.push(
    'host',
    forwarding.host,
    'x-forwarded-for',
    forwarding.xForwardedFor,
    'x-forwarded-proto',
    forwarding.xForwardedProto,
    'x-forwarded-host',
    forwarding.xForwardedHost,
    'x-request-id',
    forwarding.requestId,
  );
  return out;
}

/** Response headers for the client: upstream's, minus hop-by-hop and what its Connection names. */
export function clientResponseHeaders(
  headers: Record<string, string | string[] | undefined>,
  requestId: string,
): Record<string, string | string[]> {
  const nominated = connectionTokens(headers['connection']);
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || name.charCodeAt(0) === 58) continue;
    if (nominated !== null && nominated.has(name)) continue;
    // Only the gateway explains its decisions: an upstream's copy would pass for one.
    if (name === EXPLANATION_HEADER) continue;
    out[name] = value;
  }
  out['x-request-id'] = requestId;
  return out;
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

/** A client-supplied request id is kept only when it cannot smuggle anything into logs. */
export function acceptableRequestId(value: string | string[] | undefined): value is string {
  return typeof value === 'string' && REQUEST_ID.test(value);
}
