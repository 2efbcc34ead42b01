import { describe, expect, it } from 'vitest';
import type { RouteMatchConfig } from '../../src/config/schema.js';
import { Router, RouterConfigError, findShadowedRoutes, validateGlob, type RoutableRoute } from '../../src/gateway/router.js';

const route = (id: string, match: RouteMatchConfig): RoutableRoute => ({ id, match });

/** Which route (if any) a single-route table selects for `path`. */
function pathHits(path: RouteMatchConfig['path'], requestPath: string): boolean {
  return new Router([route('r', path === undefined ? {} : { path })]).match('h.test', 'GET', requestPath) !== null;
}

describe('path matching', () => {
  const table: Array<[string, RouteMatchConfig['path'], string, boolean]> = [
    // exact
    ['exact equal', { exact: '/a/b' }, '/a/b', true],
    ['exact trailing slash differs', { exact: '/a/b' }, '/a/b/', false],
    ['exact is not a prefix', { exact: '/a' }, '/a/b', false],
    ['exact is case-sensitive', { exact: '/a' }, '/A', false],
    ['exact root', { exact: '/' }, '/', true],
    // prefix boundaries
    ['prefix itself', { prefix: '/api' }, '/api', true],
    ['prefix with slash', { prefix: '/api' }, '/api/', true],
    ['prefix child', { prefix: '/api' }, '/api/x/y', true],
    ['prefix not mid-segment', { prefix: '/api' }, '/apix', false],
    ['prefix not a sibling', { prefix: '/api' }, '/ap', false],
    ['prefix case-sensitive', { prefix: '/api' }, '/API/x', false],
    ['prefix / matches root', { prefix: '/' }, '/', true],
    ['prefix / matches anything', { prefix: '/' }, '/anything/at/all', true],
    ['trailing-slash prefix: slash', { prefix: '/api/' }, '/api/', true],
    ['trailing-slash prefix: child', { prefix: '/api/' }, '/api/x', true],
    ['trailing-slash prefix: bare', { prefix: '/api/' }, '/api', false],
    ['trailing-slash prefix: sibling', { prefix: '/api/' }, '/apix/', false],
    ['multi-segment prefix', { prefix: '/a/b' }, '/a/b/c', true],
    ['multi-segment prefix boundary', { prefix: '/a/b' }, '/a/bc', false],
    // absent path
    ['no path matches everything', undefined, '/x/y', true],
    // glob: *
    ['* one segment', { glob: '/users/*' }, '/users/42', true],
    ['* not zero segments', { glob: '/users/*' }, '/users', false],
    ['* not empty segment', { glob: '/users/*' }, '/users/', false],
    ['* not two segments', { glob: '/users/*' }, '/users/1/2', false],
    ['* in the middle', { glob: '/users/*/posts' }, '/users/7/posts', true],
    ['* in the middle, wrong literal', { glob: '/users/*/posts' }, '/users/7/comments', false],
    ['* first', { glob: '/*/health' }, '/svc/health', true],
    ['* literals after are exact', { glob: '/*/health' }, '/svc/healthz', false],
    // glob: ** at end
    ['/files/** matches /files', { glob: '/files/**' }, '/files', true],
    ['/files/** matches /files/', { glob: '/files/**' }, '/files/', true],
    ['/files/** matches deep', { glob: '/files/**' }, '/files/a/b/c', true],
    ['/files/** not /filesx', { glob: '/files/**' }, '/filesx', false],
    ['/files/** not /filesx/a', { glob: '/filesx/**' }, '/files/a', false],
    // glob: ** at start
    ['/**/x zero segments', { glob: '/**/x' }, '/x', true],
    ['/**/x many segments', { glob: '/**/x' }, '/a/b/x', true],
    ['/**/x last segment exact', { glob: '/**/x' }, '/a/xx', false],
    ['/**/x not root', { glob: '/**/x' }, '/', false],
    ['/** matches root', { glob: '/**' }, '/', true],
    ['/** matches deep', { glob: '/**' }, '/a/b/c/', true],
    // glob: ** in the middle
    ['/a/**/b zero', { glob: '/a/**/b' }, '/a/b', true],
    ['/a/**/b one', { glob: '/a/**/b' }, '/a/x/b', true],
    ['/a/**/b many', { glob: '/a/**/b' }, '/a/x/y/z/b', true],
    ['/a/**/b needs b', { glob: '/a/**/b' }, '/a/x', false],
    ['/a/**/b no overlap of a and b', { glob: '/a/**/a' }, '/a', false],
    ['/a/**/b needs a', { glob: '/a/**/b' }, '/x/b', false],
    ['/a/**/*/c', { glob: '/a/**/*/c' }, '/a/q/c', true],
    ['/a/**/*/c needs the *', { glob: '/a/**/*/c' }, '/a/c', false],
    // glob: trailing slash is significant
    ['glob /a/ vs /a', { glob: '/a/' }, '/a', false],
    ['glob /a/ vs /a/', { glob: '/a/' }, '/a/', true],
    ['glob /a vs /a/', { glob: '/a' }, '/a/', false],
    ['glob /* vs /x/', { glob: '/*/' }, '/x/', true],
    ['glob /* vs /x', { glob: '/*/' }, '/x', false],
    // regex metacharacters in literals are literal
    ['exact dot is literal', { exact: '/a.b' }, '/axb', false],
    ['glob dot is literal', { glob: '/a.b/*' }, '/axb/1', false],
    ['glob dot matches dot', { glob: '/a.b/*' }, '/a.b/1', true],
    ['glob plus is literal', { glob: '/c+' }, '/c+', true],
    ['glob plus is not a quantifier', { glob: '/c+' }, '/cc', false],
    ['prefix plus is literal', { prefix: '/c+' }, '/cc', false],
    ['glob parens/brackets/dollar', { glob: '/(a)[b]$^|\\' }, '/(a)[b]$^|\\', true],
    ['glob ? is not a wildcard', { glob: '/a?' }, '/ab', false],
    // the query is never consulted: the matcher treats `?` as an ordinary character
    ['exact with query-looking path', { exact: '/search' }, '/search?admin=1', false],
    ['prefix with query-looking path', { prefix: '/search' }, '/search?admin=1', false],
  ];
  it.each(table)('%s', (_name, path, requestPath, expected) => {
    expect(pathHits(path, requestPath)).toBe(expected);
  });
});

describe('glob parameters', () => {
  const table: Array<[string, string, Record<string, string> | null]> = [
    ['/users/{id}', '/users/42', { id: '42' }],
    ['/users/{id}', '/users/', null],
    ['/users/{id}', '/users', null],
    ['/users/{id}/posts/{post_id}', '/users/u1/posts/p-9', { id: 'u1', post_id: 'p-9' }],
    ['/{tenant}/**', '/acme', { tenant: 'acme' }],
    ['/{tenant}/**', '/acme/a/b', { tenant: 'acme' }],
    ['/**/{file}', '/a/b/c.txt', { file: 'c.txt' }],
    ['/a/**/{x}/{y}', '/a/1/2/3/4', { x: '3', y: '4' }],
    ['/a/{x}/**/{y}', '/a/1/2', { x: '1', y: '2' }],
    ['/a/{x}/**/{y}', '/a/1', null],
    // Values are returned as they appear in the canonical path (still percent-encoded).
    ['/f/{name}', '/f/a%20b', { name: 'a%20b' }],
  ];
  it.each(table)('%s on %s', (glob, path, expected) => {
    const m = new Router([route('r', { path: { glob } })]).match('h', 'GET', path);
    if (expected === null) {
      expect(m).toBeNull();
      return;
    }
    expect(m).not.toBeNull();
    expect({ ...m!.params }).toEqual(expected);
    expect(Object.keys(m!.params)).toEqual(Object.keys(expected));
  });

  it('stores parameters named like Object.prototype members as plain data', () => {
    const m = new Router([route('r', { path: { glob: '/p/{constructor}/{__proto__}' } })]).match('h', 'GET', '/p/1/2')!;
    expect(Object.getOwnPropertyDescriptor(m.params, 'constructor')?.value).toBe('1');
    expect(Object.getOwnPropertyDescriptor(m.params, '__proto__')?.value).toBe('2');
    expect(Object.keys(m.params)).toEqual(['constructor', '__proto__']);
  });

  it('captures fresh values on every call (the capture buffer is reused)', () => {
    const r = new Router([route('r', { path: { glob: '/u/{id}' } })]);
    const first = r.match('h', 'GET', '/u/1');
    const second = r.match('h', 'GET', '/u/2');
    expect(first!.params.id).toBe('1');
    expect(second!.params.id).toBe('2');
  });

  it('shares one frozen empty params object for routes without parameters', () => {
    const r = new Router([route('a', { path: { glob: '/x/*' } }), route('b', { path: { prefix: '/y' } })]);
    const a = r.match('h', 'GET', '/x/1')!;
    const b = r.match('h', 'GET', '/y')!;
    expect(a.params).toBe(b.params);
    expect(Object.isFrozen(a.params)).toBe(true);
    expect(Object.keys(a.params)).toEqual([]);
    expect(a.params['toString']).toBeUndefined();
  });
});

describe('validateGlob', () => {
  it.each(['/', '/a', '/a/', '/*', '/**', '/a/**/b', '/{id}', '/{_x1}/{Y}', '/a.b/c+d', '/a//b'])('accepts %s', (glob) => {
    expect(validateGlob(glob)).toBeNull();
  });

  const invalid: Array<[string, RegExp]> = [
    ['a', /start with "\/"/],
    ['/a*b', /mixes/],
    ['/a*', /mixes/],
    ['/**x', /mixes/],
    ['/x**', /mixes/],
    ['/***', /mixes/],
    ['/{x}.json', /mixes/],
    ['/v{x}', /mixes/],
    ['/{a}{b}', /mixes/],
    ['/{x', /mixes/],
    ['/x}', /mixes/],
    ['/{}', /name "" is invalid/],
    ['/{1x}', /name "1x" is invalid/],
    ['/{a-b}', /name "a-b" is invalid/],
    ['/{id}/{id}', /appears twice/],
    ['/**/a/**', /only once/],
  ];
  it.each(invalid)('rejects %s', (glob, reason) => {
    expect(validateGlob(glob)).toMatch(reason);
  });

  it('the Router rejects an invalid glob with index and field', () => {
    const routes = [route('ok', { path: { prefix: '/' } }), route('bad', { path: { glob: '/{x}.json' } })];
    let error: unknown;
    try {
      new Router(routes);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(RouterConfigError);
    const e = error as RouterConfigError;
    expect(e.code).toBe('ERR_ROUTE_INVALID');
    expect(e.index).toBe(1);
    expect(e.field).toBe('match.path.glob');
    expect(e.routeId).toBe('bad');
    expect(e.message).toMatch(/"bad"/);
  });

  it.each<[string, RouteMatchConfig, string]>([
    ['empty hosts', { hosts: [] }, 'match.hosts'],
    ['bad host', { hosts: ['ok.test', 'a.*.test'] }, 'match.hosts[1]'],
    ['empty methods', { methods: [] }, 'match.methods'],
    ['lower-case method', { methods: ['GET', 'get'] }, 'match.methods[1]'],
    ['relative exact', { path: { exact: 'a' } }, 'match.path.exact'],
    ['relative prefix', { path: { prefix: 'a' } }, 'match.path.prefix'],
  ])('the Router rejects %s', (_name, match, field) => {
    expect(() => new Router([route('r', match)])).toThrow(
      expect.objectContaining({ code: 'ERR_ROUTE_INVALID', index: 0, field }),
    );
  });
});

describe('hosts', () => {
  const table: Array<[string[], string, boolean]> = [
    [['api.example.com'], 'api.example.com', true],
    [['api.example.com'], 'www.example.com', false],
    [['api.example.com'], 'x.api.example.com', false],
    [['API.Example.COM'], 'api.example.com', true],
    [['api.example.com:8443'], 'api.example.com', true],
    [['*.example.com'], 'a.example.com', true],
    [['*.example.com'], 'a.b.example.com', true],
    [['*.example.com'], 'example.com', false],
    [['*.example.com'], 'badexample.com', false],
    [['*.example.com'], 'a.example.com.evil.test', false],
    [['*.Example.com:80'], 'a.example.com', true],
    [['a.test', '*.b.test'], 'a.test', true],
    [['a.test', '*.b.test'], 'x.b.test', true],
    [['a.test', '*.b.test'], 'b.test', false],
  ];
  it.each(table)('%j vs %s', (hosts, host, expected) => {
    expect(new Router([route('r', { hosts })]).match(host, 'GET', '/') !== null).toBe(expected);
  });

  it('absent hosts match any host', () => {
    expect(new Router([route('r', {})]).match('anything.test', 'GET', '/')).not.toBeNull();
  });
});

describe('methods', () => {
  const r = new Router([
    route('reads', { methods: ['GET', 'HEAD'] }),
    route('writes', { methods: ['POST'], path: { prefix: '/w' } }),
  ]);
  it.each<[string, string, string | null]>([
    ['GET', '/', 'reads'],
    ['HEAD', '/', 'reads'],
    ['POST', '/w/1', 'writes'],
    ['POST', '/', null],
    ['DELETE', '/w', null],
    ['get', '/', null],
  ])('%s %s', (method, path, expected) => {
    expect(r.match('h', method, path)?.route.id ?? null).toBe(expected);
  });

  it('absent methods match any method, including ones no route names', () => {
    const any = new Router([route('post', { methods: ['POST'] }), route('any', {})]);
    expect(any.match('h', 'PURGE', '/')!.route.id).toBe('any');
    expect(any.match('h', 'POST', '/')!.route.id).toBe('post');
  });
});

describe('declared order', () => {
  it('first match wins; a later, more specific route does not', () => {
    const r = new Router([
      route('api', { path: { prefix: '/api' } }),
      route('users', { path: { exact: '/api/users' }, methods: ['GET'], hosts: ['h.test'] }),
    ]);
    expect(r.match('h.test', 'GET', '/api/users')!.route.id).toBe('api');
  });

  it('keeps order across the method index', () => {
    const r = new Router([
      route('get-a', { methods: ['GET'], path: { prefix: '/a' } }),
      route('any-a', { path: { prefix: '/a' } }),
      route('get-all', { methods: ['GET'] }),
      route('post-a', { methods: ['POST'], path: { prefix: '/a' } }),
    ]);
    expect(r.match('h', 'GET', '/a/1')!.route.id).toBe('get-a');
    expect(r.match('h', 'POST', '/a/1')!.route.id).toBe('any-a');
    expect(r.match('h', 'GET', '/b')!.route.id).toBe('get-all');
    expect(r.match('h', 'PUT', '/b')).toBeNull();
  });

  it('falls through to later routes when host, method or path do not match', () => {
    const r = new Router([
      route('other-host', { hosts: ['other.test'] }),
      route('post-only', { methods: ['POST'] }),
      route('elsewhere', { path: { prefix: '/elsewhere' } }),
      route('fallback', {}),
    ]);
    expect(r.match('h.test', 'GET', '/x')!.route.id).toBe('fallback');
  });

  it('returns the route object itself', () => {
    const cfg = { id: 'r', match: {}, upstream: 'u' };
    expect(new Router([cfg]).match('h', 'GET', '/')!.route).toBe(cfg);
  });

  it('an empty table matches nothing', () => {
    expect(new Router([]).match('h', 'GET', '/')).toBeNull();
  });
});

describe('shadow lint', () => {
  const shadowed = (a: RouteMatchConfig, b: RouteMatchConfig): boolean =>
    findShadowedRoutes([route('A', a), route('B', b)]).length > 0;

  const positive: Array<[string, RouteMatchConfig, RouteMatchConfig]> = [
    ['catch-all', {}, { path: { exact: '/x' }, methods: ['GET'], hosts: ['a.test'] }],
    ['prefix /', { path: { prefix: '/' } }, { path: { glob: '/a/{id}' } }],
    ['glob /**', { path: { glob: '/**' } }, { path: { prefix: '/a' } }],
    ['identical route', { path: { exact: '/a' } }, { path: { exact: '/a' } }],
    ['prefix covers exact', { path: { prefix: '/api' } }, { path: { exact: '/api/users' } }],
    ['prefix covers itself as exact', { path: { prefix: '/api' } }, { path: { exact: '/api' } }],
    ['prefix covers longer prefix', { path: { prefix: '/api' } }, { path: { prefix: '/api/v1' } }],
    ['prefix covers slash prefix', { path: { prefix: '/api' } }, { path: { prefix: '/api/' } }],
    ['slash prefix covers child prefix', { path: { prefix: '/api/' } }, { path: { prefix: '/api/v1' } }],
    ['prefix covers glob under it', { path: { prefix: '/api' } }, { path: { glob: '/api/*/x' } }],
    ['prefix covers glob with **', { path: { prefix: '/api' } }, { path: { glob: '/api/**' } }],
    ['slash prefix covers glob /api/*', { path: { prefix: '/api/' } }, { path: { glob: '/api/*' } }],
    ['glob /a/** covers prefix /a/b', { path: { glob: '/a/**' } }, { path: { prefix: '/a/b' } }],
    ['glob covers exact it matches', { path: { glob: '/u/{id}' } }, { path: { exact: '/u/42' } }],
    ['literal glob equals exact', { path: { glob: '/a/b' } }, { path: { exact: '/a/b' } }],
    ['identical glob', { path: { glob: '/a/*/b/**' } }, { path: { glob: '/a/*/b/**' } }],
    ['glob differs only in param names', { path: { glob: '/u/{id}' } }, { path: { glob: '/u/{user}' } }],
    ['* equals {param}', { path: { glob: '/u/*' } }, { path: { glob: '/u/{id}' } }],
    ['absent hosts cover any', { path: { prefix: '/a' } }, { hosts: ['x.test'], path: { prefix: '/a' } }],
    ['host list superset', { hosts: ['a.test', 'b.test'] }, { hosts: ['b.test'] }],
    ['host case and port ignored', { hosts: ['A.test:8080'] }, { hosts: ['a.TEST'] }],
    ['wildcard covers exact', { hosts: ['*.x.com'] }, { hosts: ['a.x.com', 'b.c.x.com'] }],
    ['wildcard covers deeper wildcard', { hosts: ['*.x.com'] }, { hosts: ['*.a.x.com'] }],
    ['wildcard covers same wildcard', { hosts: ['*.x.com'] }, { hosts: ['*.x.com'] }],
    ['method superset', { methods: ['GET', 'POST'] }, { methods: ['POST'] }],
    ['absent methods cover any', {}, { methods: ['DELETE'] }],
  ];
  it.each(positive)('warns: %s', (_name, a, b) => {
    expect(shadowed(a, b)).toBe(true);
  });

  const negative: Array<[string, RouteMatchConfig, RouteMatchConfig]> = [
    ['later broader route', { path: { exact: '/a' } }, {}],
    ['different exact', { path: { exact: '/a' } }, { path: { exact: '/b' } }],
    ['exact does not cover prefix', { path: { exact: '/a' } }, { path: { prefix: '/a' } }],
    ['prefix boundary', { path: { prefix: '/api' } }, { path: { prefix: '/apix' } }],
    ['prefix boundary, exact', { path: { prefix: '/api' } }, { path: { exact: '/apix' } }],
    ['shorter prefix is not covered', { path: { prefix: '/api/v1' } }, { path: { prefix: '/api' } }],
    ['slash prefix does not cover bare', { path: { prefix: '/api/' } }, { path: { prefix: '/api' } }],
    ['slash prefix does not cover bare exact', { path: { prefix: '/api/' } }, { path: { exact: '/api' } }],
    ['slash prefix does not cover /api/**', { path: { prefix: '/api/' } }, { path: { glob: '/api/**' } }],
    ['prefix does not cover glob starting with *', { path: { prefix: '/api' } }, { path: { glob: '/*/x' } }],
    ['prefix does not cover glob outside', { path: { prefix: '/api' } }, { path: { glob: '/apix/*' } }],
    ['glob does not cover prefix', { path: { glob: '/a/*' } }, { path: { prefix: '/a/b' } }],
    ['glob does not cover exact it misses', { path: { glob: '/u/*' } }, { path: { exact: '/u/1/2' } }],
    ['different globs', { path: { glob: '/a/*' } }, { path: { glob: '/a/*/b' } }],
    ['trailing slash glob', { path: { glob: '/a/*/' } }, { path: { glob: '/a/*' } }],
    ['** is not *', { path: { glob: '/a/*/c' } }, { path: { glob: '/a/**/c' } }],
    ['case-sensitive paths', { path: { prefix: '/API' } }, { path: { exact: '/api' } }],
    ['host subset not superset', { hosts: ['a.test'] }, { hosts: ['a.test', 'b.test'] }],
    ['hosts present vs absent', { hosts: ['a.test'] }, {}],
    ['wildcard does not cover apex', { hosts: ['*.x.com'] }, { hosts: ['x.com'] }],
    ['deeper wildcard does not cover shallower', { hosts: ['*.a.x.com'] }, { hosts: ['*.x.com'] }],
    ['exact hosts do not cover wildcard', { hosts: ['a.x.com'] }, { hosts: ['*.x.com'] }],
    ['wildcard label boundary', { hosts: ['*.x.com'] }, { hosts: ['*.ax.com'] }],
    ['method subset not superset', { methods: ['GET'] }, { methods: ['GET', 'POST'] }],
    ['methods present vs absent', { methods: ['GET'] }, {}],
  ];
  it.each(negative)('does not warn: %s', (_name, a, b) => {
    expect(shadowed(a, b)).toBe(false);
  });

  it('needs all three conditions covered at once', () => {
    expect(shadowed({ methods: ['GET'], path: { prefix: '/a' } }, { methods: ['POST'], path: { exact: '/a/b' } })).toBe(false);
    expect(shadowed({ hosts: ['a.test'], path: { prefix: '/a' } }, { hosts: ['b.test'], path: { exact: '/a/b' } })).toBe(false);
  });

  it('reports index, ids and a message naming both routes, once per shadowed route', () => {
    const warnings = findShadowedRoutes([
      route('api', { path: { prefix: '/api' } }),
      route('all-api', { path: { glob: '/api/**' } }),
      route('users', { path: { exact: '/api/users' } }),
      route('other', { path: { exact: '/other' } }),
    ]);
    expect(warnings).toEqual([
      { index: 1, id: 'all-api', shadowedBy: 'api', message: expect.any(String) },
      { index: 2, id: 'users', shadowedBy: 'api', message: expect.any(String) },
    ]);
    expect(warnings[1]!.message).toContain('"users"');
    expect(warnings[1]!.message).toContain('"api"');
  });

  it('is exposed on the Router', () => {
    const r = new Router([route('all', {}), route('dead', { path: { exact: '/x' } })]);
    expect(r.warnings.map((w) => [w.id, w.shadowedBy])).toEqual([['dead', 'all']]);
    expect(new Router([route('x', { path: { exact: '/x' } }), route('all', {})]).warnings).toEqual([]);
  });

  it('skips invalid routes instead of throwing', () => {
    expect(findShadowedRoutes([route('bad', { path: { glob: '/a*' } }), route('b', { path: { exact: '/ab' } })])).toEqual([]);
  });
});
