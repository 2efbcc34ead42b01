/**
 * The matchers authz compiles at load: resource globs (the router's own
 * language and matcher, imported, so routing and policy read a pattern the
 * same way), gRPC methods, subject patterns and claim paths. None uses a
 * regex at request time and none allocates on a miss.
 */
import { wildcardSafe } from '../core/subject.js';
import { compileGlob, validateGlob, type CompiledGlob } from '../gateway/router.js';

// ---------------------------------------------------------------------------
// Compile accounting
// ---------------------------------------------------------------------------

let compilations = 0;

/**
 * How many patterns (resource globs, subject patterns) have been compiled by
 * this process. Only `compileAuthz` compiles; a decision never does, and
 * tests hold the stage to that by watching this number stay put.
 */
export function patternCompilations(): number {
  return compilations;
}

// ---------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------

export { validateGlob };
export type { CompiledGlob };

/** One compiled glob per distinct source within one `compileAuthz` (permissions are shared by many rules). */
export class GlobCache {
  readonly #globs = new Map<string, CompiledGlob>();

  get(source: string): CompiledGlob {
    let glob = this.#globs.get(source);
    if (glob === undefined) {
      glob = compileGlob(source);
      compilations++;
      this.#globs.set(source, glob);
    }
    return glob;
  }
}

const GRPC_METHOD = /^\/(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*\/(?:[A-Za-z_][A-Za-z0-9_]*|\*)$/;

/** The reason a gRPC method pattern is invalid, or `null`. */
export function validateGrpcMethod(pattern: string): string | null {
  return GRPC_METHOD.test(pattern)
    ? null
    : 'a gRPC resource is "/pkg.Service/Method" or "/pkg.Service/*" (identifiers only, case-sensitive; no other wildcards)';
}

const HTTP_METHOD = /^(?:[A-Z]+|\*)$/;

export function validateAction(action: string): string | null {
  // Methods are case-sensitive (RFC 9110 §9.1): a lower-case entry would silently never match.
  return HTTP_METHOD.test(action) ? null : `"${action}" is not an upper-case HTTP method or "*"`;
}

// ---------------------------------------------------------------------------
// Subjects
// ---------------------------------------------------------------------------

/** One `/`-separated segment: literal pieces around `*`s (one piece = a plain literal). */
type SubjectSegment = readonly string[];

/**
 * A subject pattern. Like a router glob it is split at its (at most one)
 * `**`: `head` is matched forwards, `tail` backwards and `**` takes what lies
 * between, so matching is linear and never backtracks across segments.
 */
export class SubjectPattern {
  readonly source: string;
  /** Set when the pattern has no `*`: matching is then one string comparison. */
  readonly #exact: string | null;
  readonly #head: readonly SubjectSegment[];
  readonly #tail: readonly SubjectSegment[] | null;

  private constructor(source: string, head: SubjectSegment[], tail: SubjectSegment[] | null) {
    this.source = source;
    this.#exact = source.includes('*') ? null : source;
    this.#head = head;
    this.#tail = tail;
  }

  /** Compiles `pattern`, or returns why it is invalid. */
  static compile(pattern: string): SubjectPattern | string {
    const parsed = parseSubjectPattern(pattern);
    if (typeof parsed === 'string') return parsed;
    compilations++;
    return new SubjectPattern(pattern, parsed.head, parsed.tail);
  }

  match(subject: string): boolean {
    if (this.#exact !== null) return subject === this.#exact;
    if (!wildcardSafe(subject)) return false;
    const len = subject.length;
    // `pos`: index where the next unmatched segment starts (after its `/`), or len + 1 when none is left.
    let pos = 0;
    const head = this.#head;
    for (let i = 0; i < head.length; i++) {
      if (pos > len) return false;
      let end = subject.indexOf('/', pos);
      if (end === -1) end = len;
      if (!segmentMatches(head[i]!, subject, pos, end)) return false;
      pos = end + 1;
    }
    const tail = this.#tail;
    if (tail === null) return pos === len + 1;
    // Walk the tail backwards from the end; it may not reach into the head's segments.
    let end = len;
    for (let i = tail.length - 1; i >= 0; i--) {
      if (end < pos) return false;
      // lastIndexOf clamps a negative start to 0, which would find a `/` at 0 after the first segment.
      const slash = end === 0 ? -1 : subject.lastIndexOf('/', end - 1);
      const start = slash + 1;
      if (start < pos) return false;
      if (!segmentMatches(tail[i]!, subject, start, end)) return false;
      end = slash;
    }
    return true;
  }
}

function parseSubjectPattern(pattern: string): { head: SubjectSegment[]; tail: SubjectSegment[] | null } | string {
  if (pattern.length === 0) return 'a subject pattern cannot be empty';
  const head: SubjectSegment[] = [];
  let tail: SubjectSegment[] | null = null;
  for (const seg of pattern.split('/')) {
    if (seg === '**') {
      if (tail !== null) return `"**" may appear only once (${pattern}): two would make the match ambiguous`;
      tail = [];
      continue;
    }
    if (seg.includes('**')) return `"**" must be a whole segment (in "${seg}")`;
    (tail ?? head).push(seg.split('*'));
  }
  return { head, tail };
}

/** The reason a subject pattern is invalid, or `null`. */
export function validateSubjectPattern(pattern: string): string | null {
  const parsed = parseSubjectPattern(pattern);
  return typeof parsed === 'string' ? parsed : null;
}

/**
 * `*` stands for one or more characters (never `/`, never nothing: `user:*`
 * must not match `user:`). Pieces are placed leftmost-first, which is optimal
 * for `*`-only patterns, so there is no backtracking.
 */
function segmentMatches(pieces: SubjectSegment, s: string, start: number, end: number): boolean {
  const first = pieces[0]!;
  if (pieces.length === 1) return end - start === first.length && s.startsWith(first, start);
  const last = pieces[pieces.length - 1]!;
  const lastStart = end - last.length;
  if (!s.startsWith(first, start) || !s.startsWith(last, lastStart)) return false;
  let pos = start + first.length;
  for (let i = 1; i < pieces.length - 1; i++) {
    const piece = pieces[i]!;
    const at = s.indexOf(piece, pos + 1);
    if (at === -1 || at + piece.length + 1 > lastStart) return false;
    pos = at + piece.length;
  }
  return pos + 1 <= lastStart;
}

// ---------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------

/** A claim path compiled once: the whole name (URL-style claims contain dots) and its dotted parts. */
export interface ClaimRef {
  readonly whole: string;
  readonly parts: readonly string[];
}

export function claimRef(path: string): ClaimRef {
  return { whole: path, parts: path.split('.') };
}

/**
 * A claim's value: a top-level claim named exactly `whole` wins (e.g.
 * `https://example.com/roles`), else the dotted path walks nested objects.
 * Own properties only, so `__proto__` or `constructor` never resolve to
 * something the token did not say.
 */
export function readClaim(claims: Readonly<Record<string, unknown>>, ref: ClaimRef): unknown {
  if (Object.hasOwn(claims, ref.whole)) return claims[ref.whole];
  if (ref.parts.length === 1) return undefined;
  let value: unknown = claims;
  const parts = ref.parts;
  for (let i = 0; i < parts.length; i++) {
    if (typeof value !== 'object' || value === null || Array.isArray(value) || !Object.hasOwn(value, parts[i]!)) {
      return undefined;
    }
    value = (value as Record<string, unknown>)[parts[i]!];
  }
  return value;
}
