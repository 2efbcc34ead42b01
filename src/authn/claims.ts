/**
 * Reading verified claims: dot paths, subject patterns, roles, scopes, tenant and
 * header values. Everything is compiled at load; at verification time these are
 * plain property reads (own properties only, so `__proto__`/`constructor` in a
 * path or a payload are just names).
 */

export interface ClaimPath {
  /** The path as configured; tried first as one claim name (`https://example.com/roles`). */
  readonly whole: string;
  readonly parts: readonly string[];
}

export function compileClaimPath(path: string): ClaimPath {
  return { whole: path, parts: path.split('.') };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function readClaim(claims: Readonly<Record<string, unknown>>, path: ClaimPath): unknown {
  if (Object.hasOwn(claims, path.whole)) return claims[path.whole];
  const parts = path.parts;
  if (parts.length === 1) return undefined;
  let node: unknown = claims;
  for (const part of parts) {
    if (!isRecord(node) || !Object.hasOwn(node, part)) return undefined;
    node = node[part];
  }
  return node;
}

// ---------------------------------------------------------------------------
// Subject patterns

const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

/** Why a subject pattern is unusable, or null when it is fine. */
export function subjectPatternProblem(pattern: string): string | null {
  const rest = pattern.replace(SCHEME, '');
  const segments = rest.split('/');
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    if (seg.includes('**') && seg !== '**') return `"**" must be a whole segment (in "${seg}")`;
    if (seg === '**' && segments[i - 1] === '**') return '"**/**" is redundant; use one "**"';
    if (seg === '' && segments.length > 1) return 'empty segment ("//" or a leading/trailing "/")';
  }
  return null;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * `scheme://` is literal; after it, `/` separates segments: `*` alone is exactly one
 * non-empty segment, `*` inside a segment any run of non-`/` characters, `**` any
 * number of whole segments (zero included). Compiled once into an anchored RegExp.
 */
export function compileSubjectPattern(pattern: string): RegExp {
  const problem = subjectPatternProblem(pattern);
  if (problem !== null) throw new TypeError(`subject pattern ${JSON.stringify(pattern)}: ${problem}`);
  const scheme = SCHEME.exec(pattern)?.[0] ?? '';
  const segments = pattern.slice(scheme.length).split('/');
  let re = `^${escapeRegExp(scheme)}`;
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '**') {
      // Middle/leading `**` ends with its own `/`, so the next segment adds none.
      if (last) re += i === 0 ? '(?:[^/]+(?:/[^/]+)*)?' : '(?:/[^/]+)*';
      else re += `${i === 0 ? '' : '/'}(?:[^/]+/)*`;
      continue;
    }
    const afterDoubleStar = i > 0 && segments[i - 1] === '**';
    if (i > 0 && !afterDoubleStar) re += '/';
    re += seg === '*' ? '[^/]+' : seg.split('*').map(escapeRegExp).join('[^/]*');
  }
  return new RegExp(`${re}$`);
}

// ---------------------------------------------------------------------------
// Roles, scopes, tenant

const EMPTY: readonly string[] = Object.freeze([]);

/** A string is one role; an array contributes its string members. */
export function rolesFrom(value: unknown): readonly string[] {
  if (typeof value === 'string') return value === '' ? EMPTY : Object.freeze([value]);
  if (!Array.isArray(value)) return EMPTY;
  // The usual claim, every member a role, from a frozen payload: the claim itself, no copy.
  if (Object.isFrozen(value) && value.length > 0 && value.every((v) => typeof v === 'string' && v !== '')) {
    return value as readonly string[];
  }
  const roles = value.filter((v): v is string => typeof v === 'string' && v !== '');
  return roles.length === 0 ? EMPTY : Object.freeze(roles);
}

function spaceSeparated(value: string, into: Set<string>): void {
  for (const s of value.split(' ')) if (s !== '') into.add(s);
}

/** RFC 8693 `scope` (space-delimited string) and `scp` (array, or a string as some issuers send it), merged. */
export function scopesFrom(claims: Readonly<Record<string, unknown>>): readonly string[] {
  const scope = Object.hasOwn(claims, 'scope') ? claims['scope'] : undefined;
  const scp = Object.hasOwn(claims, 'scp') ? claims['scp'] : undefined;
  if (scope === undefined && scp === undefined) return EMPTY;
  const out = new Set<string>();
  if (typeof scope === 'string') spaceSeparated(scope, out);
  if (typeof scp === 'string') spaceSeparated(scp, out);
  else if (Array.isArray(scp)) for (const s of scp) if (typeof s === 'string' && s !== '') out.add(s);
  return out.size === 0 ? EMPTY : Object.freeze([...out]);
}

export function tenantFrom(value: unknown): string | undefined {
  if (typeof value === 'string') return value === '' ? undefined : value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return undefined;
}

// ---------------------------------------------------------------------------
// Required claims

export type ClaimScalar = string | number | boolean;

export interface RequiredClaim {
  readonly path: ClaimPath;
  readonly allowed: readonly ClaimScalar[];
}

export function compileRequiredClaims(
  config: Readonly<Record<string, ClaimScalar | ClaimScalar[]>> | undefined,
): RequiredClaim[] {
  if (config === undefined) return [];
  return Object.entries(config).map(([path, value]) => ({
    path: compileClaimPath(path),
    allowed: Object.freeze(Array.isArray(value) ? [...value] : [value]),
  }));
}

/** null when satisfied; otherwise which way it failed and for which claim. */
export function checkRequiredClaims(
  claims: Readonly<Record<string, unknown>>,
  required: readonly RequiredClaim[],
): { code: 'jwt.claim_missing' | 'jwt.claim_mismatch'; claim: string } | null {
  for (const { path, allowed } of required) {
    const value = readClaim(claims, path);
    if (value === undefined || value === null) return { code: 'jwt.claim_missing', claim: path.whole };
    const ok = Array.isArray(value)
      ? value.some((v) => allowed.includes(v as ClaimScalar))
      : allowed.includes(value as ClaimScalar);
    if (!ok) return { code: 'jwt.claim_mismatch', claim: path.whole };
  }
  return null;
}

// ---------------------------------------------------------------------------
// Header values

// Visible ASCII and space: anything else (CR/LF, other controls, non-ASCII) could split
// or corrupt the header, or be read differently by different upstream parsers.
const SAFE_HEADER_VALUE = /^[\x20-\x7e]+$/;

function scalarText(value: unknown): string | null {
  if (typeof value === 'string') return SAFE_HEADER_VALUE.test(value) ? value : null;
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : null;
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  return null;
}

/**
 * A claim as a header value, or null when it cannot be sent unambiguously: arrays are
 * joined with `,`, so a member containing `,` would read as two values upstream and
 * the whole header is left out instead (fail closed: no header rather than a wrong one).
 */
export function headerValueOf(value: unknown): string | null {
  if (!Array.isArray(value)) return scalarText(value);
  if (value.length === 0) return null;
  const parts: string[] = [];
  for (const member of value) {
    const text = scalarText(member);
    if (text === null || text.includes(',')) return null;
    parts.push(text);
  }
  return parts.join(',');
}

/**
 * Freezes a parsed JSON value in place, iteratively (a deep payload cannot overflow the stack).
 * Runs on every verified payload: only objects go on the stack, and none is allocated for a
 * payload without nested objects or arrays.
 */
export function deepFreeze<T>(value: T): T {
  let stack: object[] | null = null;
  let node: unknown = value;
  for (;;) {
    if (typeof node === 'object' && node !== null && !Object.isFrozen(node)) {
      Object.freeze(node);
      if (Array.isArray(node)) {
        for (const child of node as unknown[]) if (typeof child === 'object' && child !== null) (stack ??= []).push(child);
      } else {
        const record = node as Record<string, unknown>;
        for (const key in record) {
          if (!Object.hasOwn(record, key)) continue;
          const child = record[key];
          if (typeof child === 'object' && child !== null) (stack ??= []).push(child);
        }
      }
    }
    if (stack === null || stack.length === 0) return value;
    node = stack.pop();
  }
}
