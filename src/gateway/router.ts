/**
 * The route matcher. Everything that can be decided from config is decided in
 * the constructor (host sets, method index, parsed globs), so `match` is a few
 * string comparisons with no regex and no allocation on the miss path: it runs
 * for every request, and a config snapshot serves many of them.
 *
 * Inputs to `match` are already canonical (lower-case host without port; path
 * normalized, starting with `/`, without query). The matcher deliberately does
 * not re-normalize: a second, slightly different canonicalization here would
 * let policy and routing disagree about which path a request names.
 */
import type { PathMatchConfig, RouteMatchConfig } from '../config/schema.js';

export interface RoutableRoute {
  readonly id: string;
  readonly match: RouteMatchConfig;
}

export interface RouteMatch<R> {
  readonly route: R;
  readonly params: Readonly<Record<string, string>>;
}

export interface RouteWarning {
  index: number;
  id: string;
  shadowedBy: string;
  message: string;
}

export class RouterConfigError extends Error {
  override readonly name = 'RouterConfigError';
  readonly code = 'ERR_ROUTE_INVALID' as const;
  /** Position of the offending route in the declared list. */
  readonly index: number;
  /** Path of the offending setting inside the route, e.g. `match.path.glob`. */
  readonly field: string;
  readonly routeId: string;

  constructor(index: number, routeId: string, field: string, reason: string) {
    super(`route #${index} (${JSON.stringify(routeId)}) ${field}: ${reason}`);
    this.index = index;
    this.field = field;
    this.routeId = routeId;
  }
}

// Null prototype so a parameter named `constructor` or `__proto__` is stored
// as data, and a lookup of an absent name never finds an inherited member.
const EMPTY_PARAMS: Readonly<Record<string, string>> = Object.freeze(Object.create(null) as Record<string, string>);

// ---------------------------------------------------------------------------
// Globs
// ---------------------------------------------------------------------------

/** `lit === null` is a one-segment wildcard; `slot >= 0` captures it as a parameter. */
interface GlobSegment {
  readonly lit: string | null;
  readonly slot: number;
}

/**
 * A glob is split at its (at most one) `**`: `head` is matched forwards from
 * the start, `tail` backwards from the end, and `**` takes whatever lies
 * between. With one `**` the split is forced, so matching is linear with no
 * backtracking and a captured parameter can only mean one thing.
 */
interface ParsedGlob {
  readonly source: string;
  readonly head: readonly GlobSegment[];
  /** `null` when the glob has no `**`. */
  readonly tail: readonly GlobSegment[] | null;
  readonly names: readonly string[];
}

const PARAM_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function parseGlob(glob: string): ParsedGlob | string {
  if (!glob.startsWith('/')) return 'a glob must start with "/"';
  const head: GlobSegment[] = [];
  let tail: GlobSegment[] | null = null;
  const names: string[] = [];
  for (const seg of glob.slice(1).split('/')) {
    const into = tail ?? head;
    if (seg === '**') {
      if (tail !== null) return `"**" may appear only once (${glob}): two would make the match ambiguous`;
      tail = [];
    } else if (seg === '*') {
      into.push({ lit: null, slot: -1 });
    } else if (seg.startsWith('{') && seg.endsWith('}') && seg.length >= 2 && !/[{}*]/.test(seg.slice(1, -1))) {
      const name = seg.slice(1, -1);
      if (!PARAM_NAME.test(name)) return `parameter name "${name}" is invalid: use [A-Za-z_][A-Za-z0-9_]*`;
      if (names.includes(name)) return `parameter "{${name}}" appears twice`;
      into.push({ lit: null, slot: names.length });
      names.push(name);
    } else if (/[{}*]/.test(seg)) {
      return `segment "${seg}" mixes a literal with a wildcard or parameter; "*", "**" and "{name}" must each be a whole segment`;
    } else {
      into.push({ lit: seg, slot: -1 });
    }
  }
  return { source: glob, head, tail, names };
}

/** The reason `glob` is invalid, or `null` when it is valid. */
export function validateGlob(glob: string): string | null {
  const parsed = parseGlob(glob);
  return typeof parsed === 'string' ? parsed : null;
}

function segmentMatches(seg: GlobSegment, path: string, start: number, end: number, caps: Int32Array): boolean {
  if (seg.lit !== null) return end - start === seg.lit.length && path.startsWith(seg.lit, start);
  if (end === start) return false;
  if (seg.slot >= 0) {
    caps[seg.slot * 2] = start;
    caps[seg.slot * 2 + 1] = end;
  }
  return true;
}

/**
 * Works on indices into `path` rather than a split array so a miss allocates
 * nothing. Capture bounds go to `caps`, a buffer owned by the compiled glob:
 * `match` is synchronous and never re-entered, so one buffer per glob is safe.
 */
function globMatches(glob: ParsedGlob, path: string, caps: Int32Array): boolean {
  const len = path.length;
  // `pos` is the index of the `/` before the next unmatched segment, or `len` when none is left.
  let pos = 0;
  const head = glob.head;
  for (let i = 0; i < head.length; i++) {
    if (pos >= len) return false;
    const start = pos + 1;
    let end = path.indexOf('/', start);
    if (end === -1) end = len;
    if (!segmentMatches(head[i]!, path, start, end, caps)) return false;
    pos = end;
  }
  const tail = glob.tail;
  if (tail === null) return pos === len;
  // `end` walks backwards; it always stays on a `/` at or after `pos`, so the
  // tail never overlaps the head and `**` gets the (possibly empty) rest.
  let end = len;
  for (let i = tail.length - 1; i >= 0; i--) {
    if (end <= pos) return false;
    const slash = path.lastIndexOf('/', end - 1);
    if (!segmentMatches(tail[i]!, path, slash + 1, end, caps)) return false;
    end = slash;
  }
  return true;
}

/**
 * A glob compiled once, for matchers outside the router (authz resources use
 * it): the same language and the same matcher, so routing and policy cannot
 * disagree about what a pattern means.
 */
export interface CompiledGlob {
  readonly source: string;
  /** Parameter names, in capture-slot order. */
  readonly names: readonly string[];
  /**
   * Whether the canonical `path` matches. No regex, no allocation. After a
   * match the capture bounds stay readable until the next call on this glob
   * (the buffer is owned by the glob, as in the router: read them at once).
   */
  match(path: string): boolean;
  /** Start index, in the last matched path, of parameter `slot` (its index in `names`). */
  captureStart(slot: number): number;
  /** End index (exclusive), in the last matched path, of parameter `slot`. */
  captureEnd(slot: number): number;
}

class GlobMatcher implements CompiledGlob {
  readonly source: string;
  readonly names: readonly string[];
  readonly #glob: ParsedGlob;
  readonly #caps: Int32Array;

  constructor(glob: ParsedGlob) {
    this.source = glob.source;
    this.names = glob.names;
    this.#glob = glob;
    this.#caps = new Int32Array(glob.names.length * 2);
  }

  match(path: string): boolean {
    return globMatches(this.#glob, path, this.#caps);
  }

  captureStart(slot: number): number {
    return this.#caps[slot * 2]!;
  }

  captureEnd(slot: number): number {
    return this.#caps[slot * 2 + 1]!;
  }
}

/** Compiles `glob` for reuse; throws a TypeError when it is invalid (check with `validateGlob` first). */
export function compileGlob(glob: string): CompiledGlob {
  const parsed = parseGlob(glob);
  if (typeof parsed === 'string') throw new TypeError(`invalid glob ${JSON.stringify(glob)}: ${parsed}`);
  return new GlobMatcher(parsed);
}

// ---------------------------------------------------------------------------
// Per-route compilation (shared by the router and the shadow lint)
// ---------------------------------------------------------------------------

const HOST_ENTRY = /^(\*\.)?[a-z0-9.-]+(:[0-9]+)?$/;
const METHOD = /^[A-Z]+$/;

interface HostSet {
  readonly exact: ReadonlySet<string>;
  /** `*.example.com` is stored as `.example.com`. */
  readonly suffixes: readonly string[];
}

type PathSpec =
  | { readonly kind: 'any' }
  | { readonly kind: 'exact'; readonly value: string }
  | { readonly kind: 'prefix'; readonly value: string }
  | { readonly kind: 'glob'; readonly glob: ParsedGlob };

interface NormalizedMatch {
  readonly hosts: HostSet | null;
  readonly methods: readonly string[] | null;
  readonly path: PathSpec;
}

function normalizeMatch(route: RoutableRoute, index: number): NormalizedMatch {
  const fail = (field: string, reason: string): never => {
    throw new RouterConfigError(index, route.id, field, reason);
  };
  const m = route.match;

  let hosts: HostSet | null = null;
  if (m.hosts !== undefined) {
    if (m.hosts.length === 0) fail('match.hosts', 'an empty list would match no request; omit it to match any host');
    const exact = new Set<string>();
    const suffixes: string[] = [];
    m.hosts.forEach((entry, i) => {
      const host = entry.toLowerCase();
      if (!HOST_ENTRY.test(host)) fail(`match.hosts[${i}]`, `"${entry}" is not a host name or "*.domain" wildcard`);
      // Requests arrive with the port already removed; a port in config would otherwise never match.
      const name = host.replace(/:[0-9]+$/, '');
      if (name.startsWith('*.')) suffixes.push(name.slice(1));
      else exact.add(name);
    });
    hosts = { exact, suffixes };
  }

  let methods: string[] | null = null;
  if (m.methods !== undefined) {
    if (m.methods.length === 0) fail('match.methods', 'an empty list would match no request; omit it to match any method');
    m.methods.forEach((method, i) => {
      // Methods are case-sensitive (RFC 9110 §9.1): a lower-case entry would silently never match.
      if (!METHOD.test(method)) fail(`match.methods[${i}]`, `"${method}" is not an upper-case method name`);
    });
    methods = [...new Set(m.methods)];
  }

  return { hosts, methods, path: normalizePath(m.path, fail) };
}

function normalizePath(p: PathMatchConfig | undefined, fail: (field: string, reason: string) => never): PathSpec {
  if (p === undefined) return { kind: 'any' };
  const keys = Object.keys(p);
  if (keys.length !== 1) fail('match.path', 'exactly one of "exact", "prefix" or "glob" is required');
  if ('exact' in p) {
    if (!p.exact.startsWith('/')) fail('match.path.exact', 'must start with "/"');
    return { kind: 'exact', value: p.exact };
  }
  if ('prefix' in p) {
    if (!p.prefix.startsWith('/')) fail('match.path.prefix', 'must start with "/"');
    return { kind: 'prefix', value: p.prefix };
  }
  if ('glob' in p) {
    const glob = parseGlob(p.glob);
    if (typeof glob === 'string') return fail('match.path.glob', glob);
    return { kind: 'glob', glob };
  }
  return fail('match.path', 'exactly one of "exact", "prefix" or "glob" is required');
}

function hostMatches(hosts: HostSet, host: string): boolean {
  if (hosts.exact.has(host)) return true;
  const suffixes = hosts.suffixes;
  for (let i = 0; i < suffixes.length; i++) {
    const s = suffixes[i]!;
    // Strictly longer: `*.example.com` must not match `example.com` itself.
    if (host.length > s.length && host.endsWith(s)) return true;
  }
  return false;
}

function prefixMatches(prefix: string, path: string): boolean {
  if (!path.startsWith(prefix)) return false;
  // A prefix ending in `/` already ends on a boundary; otherwise the next character must be one.
  return prefix.endsWith('/') || path.length === prefix.length || path.charCodeAt(prefix.length) === 0x2f;
}

// ---------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------

const PATH_ANY = 0;
const PATH_EXACT = 1;
const PATH_PREFIX = 2;
const PATH_GLOB = 3;

interface CompiledRoute<R> {
  readonly route: R;
  readonly hosts: HostSet | null;
  readonly pathKind: number;
  readonly pathValue: string;
  readonly glob: ParsedGlob | null;
  readonly caps: Int32Array;
  /** Reused for every hit on a route without parameters, so such hits allocate nothing. */
  readonly staticResult: RouteMatch<R> | null;
}

function compileRoute<R extends RoutableRoute>(
  route: R,
  index: number,
): { compiled: CompiledRoute<R>; methods: readonly string[] | null } {
  const n = normalizeMatch(route, index);
  const p = n.path;
  const glob = p.kind === 'glob' ? p.glob : null;
  const hasParams = glob !== null && glob.names.length > 0;
  const compiled: CompiledRoute<R> = {
    route,
    hosts: n.hosts,
    pathKind: p.kind === 'any' ? PATH_ANY : p.kind === 'exact' ? PATH_EXACT : p.kind === 'prefix' ? PATH_PREFIX : PATH_GLOB,
    pathValue: p.kind === 'exact' || p.kind === 'prefix' ? p.value : '',
    glob,
    caps: new Int32Array(hasParams ? glob.names.length * 2 : 0),
    staticResult: hasParams ? null : Object.freeze({ route, params: EMPTY_PARAMS }),
  };
  return { compiled, methods: n.methods };
}

export class Router<R extends RoutableRoute> {
  /** Routes that can never be selected because an earlier route takes all their requests. */
  readonly warnings: readonly RouteWarning[];
  /**
   * Per method, the routes that accept it, in declared order; methods no route
   * names fall back to `#anyMethod`. Each list is a filter of the declared
   * order, so first-match-wins is unchanged by the indexing.
   */
  readonly #byMethod: ReadonlyMap<string, readonly CompiledRoute<R>[]>;
  readonly #anyMethod: readonly CompiledRoute<R>[];

  constructor(routes: readonly R[]) {
    const compiled = routes.map((route, i) => compileRoute(route, i));
    const named = new Set<string>();
    for (const c of compiled) for (const m of c.methods ?? []) named.add(m);
    const byMethod = new Map<string, CompiledRoute<R>[]>();
    for (const method of named) {
      byMethod.set(
        method,
        compiled.filter((c) => c.methods === null || c.methods.includes(method)).map((c) => c.compiled),
      );
    }
    this.#byMethod = byMethod;
    this.#anyMethod = compiled.filter((c) => c.methods === null).map((c) => c.compiled);
    this.warnings = Object.freeze(findShadowedRoutes(routes));
  }

  match(host: string, method: string, path: string): RouteMatch<R> | null {
    const candidates = this.#byMethod.get(method) ?? this.#anyMethod;
    for (let i = 0; i < candidates.length; i++) {
      const c = candidates[i]!;
      if (c.hosts !== null && !hostMatches(c.hosts, host)) continue;
      switch (c.pathKind) {
        case PATH_ANY:
          return c.staticResult;
        case PATH_EXACT:
          if (path === c.pathValue) return c.staticResult;
          continue;
        case PATH_PREFIX:
          if (prefixMatches(c.pathValue, path)) return c.staticResult;
          continue;
        default: {
          const glob = c.glob!;
          if (!globMatches(glob, path, c.caps)) continue;
          if (c.staticResult !== null) return c.staticResult;
          const params = Object.create(null) as Record<string, string>;
          const names = glob.names;
          for (let k = 0; k < names.length; k++) params[names[k]!] = path.slice(c.caps[k * 2]!, c.caps[k * 2 + 1]!);
          return { route: c.route, params };
        }
      }
    }
    return null;
  }
}

// ---------------------------------------------------------------------------
// Shadow lint
// ---------------------------------------------------------------------------

/**
 * A path condition reduced to the simplest equivalent form, so that e.g.
 * glob `/api/**` is compared as prefix `/api`, and glob `/a/b` as exact `/a/b`.
 * Only rewrites that preserve the matched set exactly are made.
 */
type PathShape =
  | { readonly kind: 'all' }
  | { readonly kind: 'exact'; readonly value: string }
  | { readonly kind: 'prefix'; readonly value: string }
  | {
      readonly kind: 'glob';
      readonly glob: ParsedGlob;
      /** Parameter names do not change what matches, so `{id}` compares as `*`. */
      readonly key: string;
      /** `/`-joined literal segments before the first wildcard, with a leading `/` (empty when none). */
      readonly literalHead: string;
      /** True when the glob can match `literalHead` itself (it ends `literalHead/**`). */
      readonly matchesBareHead: boolean;
    };

function pathShape(spec: PathSpec): PathShape {
  switch (spec.kind) {
    case 'any':
      return { kind: 'all' };
    case 'exact':
      return spec;
    case 'prefix':
      return spec.value === '/' ? { kind: 'all' } : spec;
    case 'glob': {
      const g = spec.glob;
      const literals: string[] = [];
      for (const seg of g.head) {
        if (seg.lit === null) break;
        literals.push(seg.lit);
      }
      const allLiteralHead = literals.length === g.head.length;
      if (allLiteralHead && g.tail === null) return { kind: 'exact', value: g.source };
      const literalHead = literals.length === 0 ? '' : '/' + literals.join('/');
      const endsWithBareStarStar = allLiteralHead && g.tail !== null && g.tail.length === 0;
      if (endsWithBareStarStar) {
        if (literals.length === 0) return { kind: 'all' };
        // `/x/**` matches exactly what prefix `/x` does, unless the last literal is empty (`/x//**`).
        if (literals[literals.length - 1] !== '') return { kind: 'prefix', value: literalHead };
      }
      const key = [...g.head, ...(g.tail === null ? [] : [null]), ...(g.tail ?? [])]
        .map((s) => (s === null ? '**' : s.lit === null ? '*' : s.lit))
        .join('/');
      return { kind: 'glob', glob: g, key, literalHead, matchesBareHead: endsWithBareStarStar };
    }
  }
}

function pathCovers(a: PathShape, b: PathShape): boolean {
  if (a.kind === 'all') return true;
  if (b.kind === 'all') return false;
  switch (a.kind) {
    case 'exact':
      return b.kind === 'exact' && b.value === a.value;
    case 'prefix':
      if (b.kind === 'exact' || b.kind === 'prefix') return prefixMatches(a.value, b.value);
      // Every path the glob matches is `literalHead/...`, or `literalHead` itself when it ends in `/**`.
      return prefixMatches(a.value, b.literalHead + '/') && (!b.matchesBareHead || prefixMatches(a.value, b.literalHead));
    case 'glob':
      if (b.kind === 'exact') return globMatches(a.glob, b.value, new Int32Array(a.glob.names.length * 2));
      return b.kind === 'glob' && b.key === a.key;
  }
}

function hostsCover(a: HostSet | null, b: HostSet | null): boolean {
  if (a === null) return true;
  if (b === null) return false;
  for (const host of b.exact) if (!hostMatches(a, host)) return false;
  // `*.x.com` covers `*.x.com` and `*.a.x.com`; no finite list of exact names covers a wildcard.
  return b.suffixes.every((t) => a.suffixes.some((s) => t.endsWith(s)));
}

function methodsCover(a: readonly string[] | null, b: readonly string[] | null): boolean {
  if (a === null) return true;
  if (b === null) return false;
  return b.every((m) => a.includes(m));
}

/**
 * Routes that no request can reach because an earlier route matches every
 * request they match. Deliberately conservative: a false warning teaches
 * operators to ignore the lint, so a route is reported only when coverage is
 * certain. Invalid routes are skipped (the constructor reports them).
 */
export function findShadowedRoutes(routes: readonly RoutableRoute[]): RouteWarning[] {
  const shapes = routes.map((route, i) => {
    try {
      const n = normalizeMatch(route, i);
      return { hosts: n.hosts, methods: n.methods, path: pathShape(n.path) };
    } catch (error) {
      if (error instanceof RouterConfigError) return null;
      throw error;
    }
  });
  const warnings: RouteWarning[] = [];
  shapes.forEach((b, j) => {
    if (b === null) return;
    for (let i = 0; i < j; i++) {
      const a = shapes[i];
      if (a == null || !methodsCover(a.methods, b.methods) || !hostsCover(a.hosts, b.hosts) || !pathCovers(a.path, b.path)) {
        continue;
      }
      const id = routes[j]!.id;
      const by = routes[i]!.id;
      warnings.push({
        index: j,
        id,
        shadowedBy: by,
        message: `route "${id}" (#${j}) is unreachable: route "${by}" (#${i}) is declared earlier and matches every request it would`,
      });
      break;
    }
  });
  return warnings;
}
