/**
 * Request-target canonicalization. The canonical path is the single string
 * routing, policy and the upstream all see: if any two of them could read a
 * target differently (dot segments, encoded slashes, `;params`, overlong
 * UTF-8…), an allow rule could be bypassed. So anything ambiguous is either
 * rewritten to one canonical spelling or rejected, and the result is a fixed
 * point (canonicalizing it again changes nothing).
 *
 * Client input never throws: failures are returned as BulwarkError values.
 */
import { isIPv6 } from 'node:net';
import type { PathPolicyConfig } from '../config/schema.js';
import { BulwarkError } from './errors.js';

export interface PathPolicy {
  readonly mergeSlashes: boolean;
  readonly decodeUnreserved: boolean;
  readonly encodedSlash: 'reject' | 'keep';
  readonly backslash: 'reject' | 'keep';
  readonly semicolon: 'reject' | 'keep';
  readonly maxLength: number;
}

// Mirrors the PathPolicySchema defaults; a test keeps the two in step, so core
// does not pull the schema library in at runtime.
export const STRICT_PATH_POLICY: PathPolicy = Object.freeze({
  mergeSlashes: true,
  decodeUnreserved: true,
  encodedSlash: 'reject',
  backslash: 'reject',
  semicolon: 'reject',
  maxLength: 8192,
});

/**
 * Fills defaults and freezes. Bad values throw: config is validated at load,
 * so this only guards programmatic callers, never a request.
 */
export function compilePathPolicy(cfg?: Partial<PathPolicyConfig>): PathPolicy {
  const d = STRICT_PATH_POLICY;
  const policy: PathPolicy = {
    mergeSlashes: cfg?.mergeSlashes ?? d.mergeSlashes,
    decodeUnreserved: cfg?.decodeUnreserved ?? d.decodeUnreserved,
    encodedSlash: cfg?.encodedSlash ?? d.encodedSlash,
    backslash: cfg?.backslash ?? d.backslash,
    semicolon: cfg?.semicolon ?? d.semicolon,
    maxLength: cfg?.maxLength ?? d.maxLength,
  };
  if (typeof policy.mergeSlashes !== 'boolean') throw new TypeError('paths.mergeSlashes must be a boolean');
  if (typeof policy.decodeUnreserved !== 'boolean') throw new TypeError('paths.decodeUnreserved must be a boolean');
  for (const key of ['encodedSlash', 'backslash', 'semicolon'] as const) {
    if (policy[key] !== 'reject' && policy[key] !== 'keep') throw new TypeError(`paths.${key} must be 'reject' or 'keep'`);
  }
  if (!Number.isInteger(policy.maxLength) || policy.maxLength < 1 || policy.maxLength > 65536) {
    throw new TypeError('paths.maxLength must be an integer in 1..65536');
  }
  return Object.freeze(policy);
}

export interface CanonicalTarget {
  path: string;
  query: string;
  /** Lower-case, no port; IPv6 kept in brackets. '' only when no Host was required nor given. */
  host: string;
  /** The explicit port, or null when absent. */
  port: number | null;
}

export interface TargetInput {
  method: string;
  target: string;
  hosts: readonly string[];
  requireHost: boolean;
  scheme: 'http' | 'https';
}

// ---------------------------------------------------------------------------
// Lookup tables, built once.

const C_ENCODE = 0; // outside pchar: percent-encode it
const C_SAFE = 1; // pchar other than the ones below
const C_DOT = 2;
const C_SLASH = 3;
const C_PCT = 4;
const C_SEMI = 5;
const C_BSLASH = 6;
const C_CTRL = 7;

const PATH_CLASS = new Uint8Array(128);
// Raw bytes are latin1 from Node; > 0x7F is handled before the table.
const HEX_DIGIT = new Int8Array(128).fill(-1);
const UNRESERVED = new Uint8Array(128);
const REG_NAME = new Uint8Array(128);
const ENC: string[] = [];
{
  const hex = '0123456789ABCDEF';
  for (let b = 0; b < 256; b++) ENC.push('%' + hex[b >> 4]! + hex[b & 15]!);
  for (let c = 0; c < 128; c++) {
    const ch = String.fromCharCode(c);
    const alnum = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
    if (alnum || ch === '-' || ch === '.' || ch === '_' || ch === '~') {
      UNRESERVED[c] = 1;
      REG_NAME[c] = 1;
    }
    if (c < 0x20 || c === 0x7f) PATH_CLASS[c] = C_CTRL;
    else if (ch === '.') PATH_CLASS[c] = C_DOT;
    else if (ch === '/') PATH_CLASS[c] = C_SLASH;
    else if (ch === '%') PATH_CLASS[c] = C_PCT;
    else if (ch === ';') PATH_CLASS[c] = C_SEMI;
    else if (ch === '\\') PATH_CLASS[c] = C_BSLASH;
    else if (UNRESERVED[c] === 1 || "!$&'()*+,=:@".includes(ch)) PATH_CLASS[c] = C_SAFE;
    else PATH_CLASS[c] = C_ENCODE;
  }
  for (let c = 0x30; c <= 0x39; c++) HEX_DIGIT[c] = c - 0x30;
  for (let c = 0x41; c <= 0x46; c++) HEX_DIGIT[c] = c - 0x41 + 10;
  for (let c = 0x61; c <= 0x66; c++) HEX_DIGIT[c] = c - 0x61 + 10;
}

function hexValue(c: number): number {
  return c < 128 ? HEX_DIGIT[c]! : -1;
}

// ---------------------------------------------------------------------------
// Authority parsing. Results go through module scratch variables rather than a
// fresh object per call (this runs for every request; JS is single-threaded
// and the parser does not re-enter).

let parsedHost = '';
let parsedPort: number | null = null;

/** `host[:port]` as RFC 3986 authority without userinfo. False when invalid. */
function parseAuthority(s: string, requirePort: boolean): boolean {
  const n = s.length;
  // 255 for the name, plus ':' and five digits.
  if (n === 0 || n > 261) return false;
  let hostEnd: number;
  if (s.charCodeAt(0) === 0x5b /* [ */) {
    const close = s.indexOf(']');
    if (close < 0) return false;
    const inner = s.slice(1, close);
    // isIPv6 accepts zone ids (`%eth0`); a zone names a local interface and
    // means nothing in a Host header, so it is refused.
    if (inner.includes('%') || !isIPv6(inner)) return false;
    hostEnd = close + 1;
  } else {
    let labelStart = 0;
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c === 0x3a /* : */) break;
      if (c === 0x2e /* . */) {
        // Empty labels (`a..b`, `.a`, `a.`) are alternative spellings of a
        // name that host-based rules could fail to match.
        if (i === labelStart) return false;
        labelStart = i + 1;
        continue;
      }
      if (c >= 128 || REG_NAME[c] !== 1) return false;
    }
    hostEnd = i;
    if (hostEnd === labelStart || hostEnd > 255) return false;
    // WHATWG URL parsers (and inet_aton) read a name whose last label is
    // numeric as an IPv4 address in shorthand, octal or hex (`2130706433`,
    // `0x7f.1`, `0177.0.0.1`); only the one unambiguous dotted-quad spelling
    // is allowed.
    if (endsInNumber(s, labelStart, hostEnd) && !isStrictIPv4(s, hostEnd)) return false;
  }
  if (hostEnd === n) {
    if (requirePort) return false;
    parsedPort = null;
  } else {
    if (s.charCodeAt(hostEnd) !== 0x3a) return false;
    const digits = n - hostEnd - 1;
    if (digits < 1 || digits > 5) return false;
    let port = 0;
    for (let i = hostEnd + 1; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x30 || c > 0x39) return false;
      port = port * 10 + (c - 0x30);
    }
    if (port < 1 || port > 65535) return false;
    parsedPort = port;
  }
  parsedHost = s.slice(0, hostEnd).toLowerCase();
  return true;
}

function endsInNumber(s: string, start: number, end: number): boolean {
  const first = s.charCodeAt(start);
  if (end - start >= 2 && first === 0x30 && (s.charCodeAt(start + 1) | 0x20) === 0x78 /* 0x / 0X */) {
    for (let i = start + 2; i < end; i++) if (hexValue(s.charCodeAt(i)) < 0) return false;
    return true;
  }
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

function isStrictIPv4(s: string, end: number): boolean {
  let parts = 0;
  let i = 0;
  while (i <= end) {
    const start = i;
    let value = 0;
    while (i < end && s.charCodeAt(i) !== 0x2e) {
      const c = s.charCodeAt(i);
      if (c < 0x30 || c > 0x39) return false;
      value = value * 10 + (c - 0x30);
      i++;
    }
    const len = i - start;
    if (len === 0 || len > 3 || value > 255 || (len > 1 && s.charCodeAt(start) === 0x30)) return false;
    parts++;
    i++;
  }
  return parts === 4;
}

/** 7 for `http://`, 8 for `https://` (any case), else 0. */
function absoluteSchemeLength(t: string): number {
  if (t.length < 7) return 0;
  if (
    (t.charCodeAt(0) | 0x20) !== 0x68 ||
    (t.charCodeAt(1) | 0x20) !== 0x74 ||
    (t.charCodeAt(2) | 0x20) !== 0x74 ||
    (t.charCodeAt(3) | 0x20) !== 0x70
  ) {
    return 0;
  }
  let i = 4;
  if ((t.charCodeAt(4) | 0x20) === 0x73) i = 5;
  return t.charCodeAt(i) === 0x3a && t.charCodeAt(i + 1) === 0x2f && t.charCodeAt(i + 2) === 0x2f ? i + 3 : 0;
}

// ---------------------------------------------------------------------------

export function canonicalizeTarget(input: TargetInput, policy: PathPolicy): CanonicalTarget | BulwarkError {
  const t = input.target;
  const len = t.length;
  if (len > policy.maxLength) return new BulwarkError('request.path_too_long');

  // --- form (RFC 9112 §3.2)
  let pathStart = 0;
  let targetHost: string | null = null;
  let targetPort: number | null = null;
  if (len === 1 && t.charCodeAt(0) === 0x2a /* * */) return new BulwarkError('request.asterisk_form');
  if (input.method === 'CONNECT') return new BulwarkError('request.authority_form');
  if (len === 0 || t.charCodeAt(0) !== 0x2f) {
    const schemeLen = absoluteSchemeLength(t);
    if (schemeLen === 0) {
      return parseAuthority(t, true) ? new BulwarkError('request.authority_form') : new BulwarkError('request.bad_target');
    }
    const https = schemeLen === 8;
    // An absolute URI with the other scheme names a different origin than the
    // one this connection serves; policy keyed on "secure" would be misled.
    if (https !== (input.scheme === 'https'))
      return new BulwarkError('request.bad_target', 'Target scheme does not match the connection');
    let authEnd = schemeLen;
    while (authEnd < len) {
      const c = t.charCodeAt(authEnd);
      if (c === 0x2f || c === 0x3f || c === 0x23) break;
      if (c === 0x40 /* @ */) return new BulwarkError('request.bad_target', 'Userinfo in target');
      authEnd++;
    }
    if (!parseAuthority(t.slice(schemeLen, authEnd), false))
      return new BulwarkError('request.bad_target', 'Invalid authority in target');
    targetHost = parsedHost;
    targetPort = parsedPort;
    pathStart = authEnd;
  }

  // --- Host
  let host = '';
  let port: number | null = null;
  const hosts = input.hosts;
  if (hosts.length > 1) {
    const first = hosts[0];
    for (let i = 1; i < hosts.length; i++) {
      if (hosts[i] !== first) return new BulwarkError('request.host_mismatch', 'Conflicting Host values');
    }
    return new BulwarkError('request.host_duplicate');
  }
  if (hosts.length === 1) {
    if (!parseAuthority(hosts[0]!, false)) return new BulwarkError('request.host_invalid');
    host = parsedHost;
    port = parsedPort;
    if (targetHost !== null) {
      const defaultPort = input.scheme === 'https' ? 443 : 80;
      if (targetHost !== host || (targetPort ?? defaultPort) !== (port ?? defaultPort)) {
        return new BulwarkError('request.host_mismatch');
      }
    }
  } else if (input.requireHost) {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is refused, absolute-form target or not.
    return new BulwarkError('request.host_missing');
  } else if (targetHost !== null) {
    host = targetHost;
    port = targetPort;
  }

  // --- split off fragment and query
  let end = t.indexOf('#', pathStart);
  if (end < 0) end = len;
  let pathEnd = t.indexOf('?', pathStart);
  let query = '';
  if (pathEnd < 0 || pathEnd > end) {
    pathEnd = end;
  } else {
    for (let i = pathEnd + 1; i < end; i++) {
      const c = t.charCodeAt(i);
      if (c < 0x20 || c >= 0x7f) return new BulwarkError('request.bad_target', 'Control or non-ASCII character in query');
    }
    query = t.slice(pathEnd + 1, end);
  }

  // --- path
  let path: string | BulwarkError;
  if (pathStart === pathEnd) {
    // Absolute-form with an empty path (`http://host?q`) means `/` (RFC 9112 §3.2.2).
    path = '/';
  } else if (t.charCodeAt(pathStart) !== 0x2f) {
    return new BulwarkError('request.bad_target');
  } else if (isAlreadyCanonical(t, pathStart, pathEnd, policy.semicolon === 'keep')) {
    path = pathStart === 0 && pathEnd === len ? t : t.slice(pathStart, pathEnd);
  } else {
    path = canonicalizePath(t, pathStart, pathEnd, policy);
    if (typeof path !== 'string') return path;
  }
  return { path, query, host, port };
}

/**
 * The common case: only plain pchars, no `%`, no empty and no dot segment.
 * Such a path is its own canonical form, so it is returned without copying.
 */
function isAlreadyCanonical(t: string, start: number, end: number, semicolonOk: boolean): boolean {
  let segStart = start + 1;
  for (let i = segStart; i <= end; i++) {
    const c = i < end ? t.charCodeAt(i) : 0x2f;
    if (c >= 128) return false;
    const k = PATH_CLASS[c]!;
    if (k === C_SAFE || k === C_DOT || (k === C_SEMI && semicolonOk)) continue;
    if (k !== C_SLASH) return false;
    const segLen = i - segStart;
    // An empty segment is fine only as the trailing one (`/a/`).
    if (segLen === 0 && i < end) return false;
    if (segLen === 1 && t.charCodeAt(segStart) === 0x2e) return false;
    if (segLen === 2 && t.charCodeAt(segStart) === 0x2e && t.charCodeAt(segStart + 1) === 0x2e) return false;
    segStart = i + 1;
  }
  return true;
}

/**
 * One pass that decodes, validates and re-encodes each segment, then applies
 * slash merging and RFC 3986 §5.2.4 dot-segment removal on the segment stack.
 * Slashes are merged before dots are resolved (`/a//../b` → `/b`), matching
 * what nginx-style upstreams do.
 */
function canonicalizePath(t: string, start: number, end: number, policy: PathPolicy): string | BulwarkError {
  const merge = policy.mergeSlashes;
  const decode = policy.decodeUnreserved;
  const out: string[] = [];
  let seg = '';
  let runStart = start + 1;
  // Dot segments are recognised whatever the spelling (`.`, `%2E`, `.%2e`…),
  // even when unreserved characters are not decoded: an upstream that decodes
  // them would otherwise climb out of the prefix the policy checked.
  let dots = 0;
  let other = false;
  // UTF-8 state across a run of escapes (Unicode Table 3-7 well-formed ranges,
  // which excludes overlongs, surrogates and code points above U+10FFFF).
  let need = 0;
  let lower = 0x80;
  let upper = 0xbf;

  for (let i = start + 1; i <= end; i++) {
    const c = i < end ? t.charCodeAt(i) : 0x2f;
    if (c === 0x25 /* % */) {
      const h1 = i + 2 < end ? hexValue(t.charCodeAt(i + 1)) : -1;
      const h2 = i + 2 < end ? hexValue(t.charCodeAt(i + 2)) : -1;
      if (h1 < 0 || h2 < 0) return new BulwarkError('request.path_invalid_escape');
      const b = (h1 << 4) | h2;
      if (runStart < i) seg += t.slice(runStart, i);
      i += 2;
      runStart = i + 1;
      if (need > 0) {
        if (b < lower || b > upper) return new BulwarkError('request.path_invalid_utf8');
        lower = 0x80;
        upper = 0xbf;
        need--;
        seg += ENC[b]!;
        continue;
      }
      if (b >= 0x80) {
        if (b >= 0xc2 && b <= 0xdf) {
          need = 1;
        } else if (b >= 0xe0 && b <= 0xef) {
          need = 2;
          if (b === 0xe0) lower = 0xa0;
          else if (b === 0xed) upper = 0x9f;
        } else if (b >= 0xf0 && b <= 0xf4) {
          need = 3;
          if (b === 0xf0) lower = 0x90;
          else if (b === 0xf4) upper = 0x8f;
        } else {
          return new BulwarkError('request.path_invalid_utf8');
        }
        other = true;
        seg += ENC[b]!;
        continue;
      }
      if (b < 0x20 || b === 0x7f) return new BulwarkError('request.path_control_char');
      if (b === 0x2e) {
        dots++;
        seg += decode ? '.' : '%2E';
        continue;
      }
      other = true;
      if (b === 0x2f || b === 0x5c) {
        if (policy.encodedSlash === 'reject') return new BulwarkError('request.path_encoded_slash');
      } else if (b === 0x3b) {
        if (policy.semicolon === 'reject') return new BulwarkError('request.path_semicolon');
      } else if (decode && UNRESERVED[b] === 1) {
        seg += String.fromCharCode(b);
        continue;
      }
      seg += ENC[b]!;
      continue;
    }
    if (need > 0) return new BulwarkError('request.path_invalid_utf8');
    if (c >= 128) return new BulwarkError('request.path_non_ascii');
    switch (PATH_CLASS[c]) {
      case C_SAFE:
        other = true;
        continue;
      case C_DOT:
        dots++;
        continue;
      case C_SLASH: {
        if (runStart < i) seg += t.slice(runStart, i);
        runStart = i + 1;
        const last = i === end;
        if (!other && dots === 1) {
          if (last) out.push('');
        } else if (!other && dots === 2) {
          // At the root there is nothing to pop: `..` is clamped at `/`.
          out.pop();
          if (last) out.push('');
        } else if (seg !== '' || last || !merge) {
          out.push(seg);
        }
        seg = '';
        dots = 0;
        other = false;
        continue;
      }
      case C_SEMI:
        if (policy.semicolon === 'reject') return new BulwarkError('request.path_semicolon');
        other = true;
        continue;
      case C_BSLASH:
        if (policy.backslash === 'reject') return new BulwarkError('request.path_backslash');
        break;
      case C_CTRL:
        return new BulwarkError('request.path_control_char');
      default:
        break;
    }
    // C_ENCODE, or a kept backslash: emitted percent-encoded.
    if (runStart < i) seg += t.slice(runStart, i);
    runStart = i + 1;
    other = true;
    seg += ENC[c]!;
  }
  return out.length === 0 ? '/' : '/' + out.join('/');
}
