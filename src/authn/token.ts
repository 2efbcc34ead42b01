/**
 * Where a provider's token comes from: a header (with an auth scheme or without),
 * a cookie, or a query parameter (opt-in). Extraction only finds the string; the
 * token's syntax is judged by the verifier.
 */
import type { RequestContext } from '../core/context.js';
import type { TokenSourceConfig } from './schema.js';

/** Longest token accepted (characters); longer is `jwt.malformed` before any hashing or parsing. */
export const MAX_TOKEN_LENGTH = 8192;

/** The request carried something where the token should be, but not one usable token. */
export interface TokenProblem {
  readonly code: 'request.duplicate_authorization' | 'jwt.malformed';
  readonly reason: string;
}

/** A token, `null` when there is none, or a problem. */
export type TokenExtraction = string | TokenProblem | null;

export interface CompiledTokenSource {
  /** Equal keys = same place: providers sharing it share one extraction. */
  readonly key: string;
  /** The header this source reads, if any (for config checks and docs). */
  readonly header: string | undefined;
  /** The query parameter this source reads, if any: removed from the query forwarded upstream. */
  readonly query: string | undefined;
  extract(ctx: RequestContext): TokenExtraction;
}

const problem = (code: TokenProblem['code'], reason: string): TokenProblem => Object.freeze({ code, reason });
const DUPLICATE_AUTHORIZATION = problem('request.duplicate_authorization', 'more than one Authorization header');
const DUPLICATE_HEADER = problem('jwt.malformed', 'token header repeated');
const EMPTY_CREDENTIALS = problem('jwt.malformed', 'auth scheme without a token');
const DUPLICATE_COOKIE = problem('jwt.malformed', 'token cookie repeated');
const EMPTY_COOKIE = problem('jwt.malformed', 'empty token cookie');
const DUPLICATE_QUERY = problem('jwt.malformed', 'token query parameter repeated');
const EMPTY_QUERY = problem('jwt.malformed', 'empty token query parameter');

export const DEFAULT_TOKEN_SOURCE: TokenSourceConfig = Object.freeze({ header: 'authorization', prefix: 'Bearer' });

export function compileTokenSource(config: TokenSourceConfig): CompiledTokenSource {
  if ('cookie' in config) return cookieSource(config.cookie);
  if ('query' in config) return querySource(config.query);
  return headerSource(config.header.toLowerCase(), config.prefix);
}

function headerSource(name: string, prefix: string | undefined): CompiledTokenSource {
  const scheme = prefix ?? null;
  const schemeLower = scheme?.toLowerCase() ?? '';
  const schemeLength = schemeLower.length;
  return {
    key: `header:${name}:${schemeLower}`,
    header: name,
    query: undefined,
    extract(ctx) {
      let value = ctx.headers[name];
      if (value === undefined) return null;
      if (typeof value !== 'string') {
        // node:http keeps only the first Authorization and joins other repeats with ", ";
        // an array here means an adapter kept the repeats apart: never pick one of them.
        if (value.length === 0) return null;
        if (value.length > 1) return name === 'authorization' ? DUPLICATE_AUTHORIZATION : DUPLICATE_HEADER;
        value = value[0]!;
      }
      if (value === '') return null;
      if (scheme === null) return value;
      // Auth schemes are case-insensitive (RFC 9110 §11.1); the exact spelling is the fast path.
      if (!value.startsWith(scheme) && value.slice(0, schemeLength).toLowerCase() !== schemeLower) {
        return null; // another scheme (Basic…): no credentials of ours
      }
      if (value.length === schemeLength) return EMPTY_CREDENTIALS;
      if (value.charCodeAt(schemeLength) !== 32) return null; // "BearerX…" is another scheme
      let start = schemeLength + 1;
      while (start < value.length && value.charCodeAt(start) === 32) start++;
      return start === value.length ? EMPTY_CREDENTIALS : value.slice(start);
    },
  };
}

function cookieSource(name: string): CompiledTokenSource {
  return {
    key: `cookie:${name}`,
    header: undefined,
    query: undefined,
    extract(ctx) {
      const raw = ctx.headers.cookie;
      if (raw === undefined || raw === '') return null;
      const header = Array.isArray(raw) ? raw.join('; ') : raw;
      if (!header.includes(name)) return null;
      let found: string | null = null;
      for (const pair of header.split(';')) {
        const eq = pair.indexOf('=');
        if (eq === -1 || pair.slice(0, eq).trim() !== name) continue;
        // Two cookies of the same name (set for different paths or domains): ambiguous, refuse.
        if (found !== null) return DUPLICATE_COOKIE;
        let value = pair.slice(eq + 1).trim();
        if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
        found = value;
      }
      if (found === null) return null;
      return found === '' ? EMPTY_COOKIE : found;
    },
  };
}

function querySource(name: string): CompiledTokenSource {
  return {
    key: `query:${name}`,
    header: undefined,
    query: name,
    extract(ctx) {
      const query = ctx.query;
      // Cheap pre-check; a percent-encoded name still goes through the real parser.
      if (query === '' || (!query.includes(name) && !query.includes('%'))) return null;
      const values = new URLSearchParams(query).getAll(name);
      if (values.length === 0) return null;
      if (values.length > 1) return DUPLICATE_QUERY;
      return values[0] === '' ? EMPTY_QUERY : values[0]!;
    },
  };
}

/**
 * `query` without every parameter whose name is in `names`, names compared as
 * `querySource` reads them (URLSearchParams decoding: `access%5Ftoken` is `access_token`;
 * one leading `?` of the whole string is ignored). Every other `&`-separated part stays
 * byte for byte, in order. Returns `query` itself when nothing matched.
 */
export function withoutQueryParams(query: string, names: ReadonlySet<string>): string {
  if (query === '' || names.size === 0) return query;
  if (!query.includes('%')) {
    let mentioned = false;
    for (const name of names) mentioned ||= query.includes(name);
    if (!mentioned) return query;
  }
  const parts = query.split('&');
  const kept: string[] = [];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (!names.has(queryParamName(part, i === 0))) kept.push(part);
  }
  return kept.length === parts.length ? query : kept.join('&');
}

function queryParamName(part: string, first: boolean): string {
  const eq = part.indexOf('=');
  let name = eq === -1 ? part : part.slice(0, eq);
  if (first && name.startsWith('?')) name = name.slice(1);
  if (!name.includes('%') && !name.includes('+')) return name;
  // The platform's own form decoding (`+`, percent escapes, UTF-8 with replacement); the
  // leading `&` keeps it from dropping a `?` that is part of the name.
  return new URLSearchParams(`&${name}`).keys().next().value ?? '';
}

/**
 * How many times a header appears in a raw header list (`[name, value, name, value…]`,
 * as node:http's `req.rawHeaders`). node:http keeps only the first `Authorization`
 * in `req.headers`, so a second one is invisible to this stage: adapters must call
 * `countHeader(req.rawHeaders, 'authorization') > 1` and reject with
 * `request.duplicate_authorization` (400) before running the pipeline.
 */
export function countHeader(rawHeaders: readonly string[], name: string): number {
  const wanted = name.toLowerCase();
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const header = rawHeaders[i]!;
    if (header.length === wanted.length && header.toLowerCase() === wanted) count++;
  }
  return count;
}
