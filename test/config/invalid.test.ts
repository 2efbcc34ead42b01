import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfigFile } from '../../src/config/load.js';
import { BASE, fixture, issuesOf, lineOf, pick, yaml } from './helpers.js';

/** BASE with `line` (exact match) replaced by `replacement` lines. */
function edit(line: string, ...replacement: string[]): string[] {
  const index = BASE.indexOf(line);
  if (index < 0) throw new Error(`no line ${JSON.stringify(line)} in BASE`);
  return [...BASE.slice(0, index), ...replacement, ...BASE.slice(index + 1)];
}

interface Case {
  name: string;
  source: string;
  expected: { code: string; path: string; line: number }[];
}

const cases: Case[] = [];
const add = (name: string, lines: string[], expected: (source: string) => Case['expected']) => {
  const source = yaml(...lines);
  cases.push({ name, source, expected: expected(source) });
};

add('unknown top-level key', [...BASE, 'upstream_timeout: 5'], (s) => [
  { code: 'config.unknown_key', path: 'upstream_timeout', line: lineOf(s, 'upstream_timeout') },
]);

add(
  'typo in a nested key (reported with the missing key it was meant to be)',
  edit('    upstream: app', '    upstrem: app'),
  // `upstream` itself is optional in the schema (library mode); the gateway checks then demand it.
  (s) => [{ code: 'config.unknown_key', path: 'routes[0].upstrem', line: lineOf(s, 'upstrem') }],
);

add('wrong type', edit('  - port: 8080', '  - port: eighty'), (s) => [
  { code: 'config.type', path: 'listeners[0].port', line: lineOf(s, 'eighty') },
]);

add('bad enum value', edit('  - port: 8080', '  - port: 8080', '    protocol: htp'), (s) => [
  { code: 'config.enum', path: 'listeners[0].protocol', line: lineOf(s, 'htp') },
]);

add('missing required key (reported at the parent)', edit('  - port: 8080', '  - address: 127.0.0.1'), (s) => [
  { code: 'config.required', path: 'listeners[0].port', line: lineOf(s, 'address') },
]);

add('missing top-level key', BASE.slice(0, 6), () => [{ code: 'config.required', path: 'routes', line: 1 }]);

add('unsupported version', edit('version: 1', 'version: 2'), () => [{ code: 'config.enum', path: 'version', line: 1 }]);

add('version as a string', edit('version: 1', "version: '1'"), () => [{ code: 'config.enum', path: 'version', line: 1 }]);

add('number out of range', edit('version: 1', 'version: 1', 'workers: 0'), () => [
  { code: 'config.range', path: 'workers', line: 2 },
]);

add('value fitting no union branch', edit('version: 1', 'version: 1', 'workers: many'), () => [
  { code: 'config.one_of', path: 'workers', line: 2 },
]);

add(
  'duplicate methods',
  edit('      path: { prefix: /api }', '      path: { prefix: /api }', '      methods: [GET, GET]'),
  (s) => [{ code: 'config.unique', path: 'routes[0].match.methods[1]', line: lineOf(s, 'methods') }],
);

add('path match with two kinds', edit('      path: { prefix: /api }', '      path: { prefix: /api, exact: /api }'), (s) => [
  { code: 'config.one_of', path: 'routes[0].match.path', line: lineOf(s, 'path:') },
]);

add('path match with no kind', edit('      path: { prefix: /api }', '      path: {}'), (s) => [
  { code: 'config.one_of', path: 'routes[0].match.path', line: lineOf(s, 'path:') },
]);

add(
  'two list items failing the same union: each reported at its own place, precisely',
  [
    ...BASE,
    '  - id: b',
    '    match: { path: { prefix: /b, exact: /b } }',
    '    upstream: app',
    '    auth: { public: true }',
    '  - id: c',
    '    match: { path: { prefix: c } }',
    '    upstream: app',
    '    auth: { public: true }',
  ],
  (s) => [
    { code: 'config.one_of', path: 'routes[1].match.path', line: lineOf(s, 'exact: /b') },
    { code: 'config.pattern', path: 'routes[2].match.path.prefix', line: lineOf(s, 'prefix: c') },
  ],
);

add(
  'credentials in an endpoint URL (they would become a metric label)',
  edit('    endpoints: [http://127.0.0.1:3000]', "    endpoints: ['http://user:s3cret@127.0.0.1:3000']"),
  (s) => [{ code: 'config.pattern', path: 'upstreams.app.endpoints[0]', line: lineOf(s, 's3cret') }],
);

add('path match of the right kind with a bad value', edit('      path: { prefix: /api }', '      path: { prefix: api }'), (s) => [
  { code: 'config.pattern', path: 'routes[0].match.path.prefix', line: lineOf(s, 'prefix') },
]);

add('invalid upstream name', edit('  app:', '  bad name:'), (s) => [
  { code: 'config.pattern', path: 'upstreams["bad name"]', line: lineOf(s, 'bad name') },
]);

add('route to an unknown upstream', edit('    upstream: app', '    upstream: api'), (s) => [
  { code: 'config.unknown_upstream', path: 'routes[0].upstream', line: lineOf(s, 'upstream: api') },
]);

add(
  'upstream with neither endpoints nor builtin',
  [...BASE.slice(0, 6), '  empty: { balancer: round_robin }', ...BASE.slice(6)],
  (s) => [{ code: 'config.upstream_source', path: 'upstreams.empty', line: lineOf(s, 'empty:') }],
);

add(
  'upstream with both endpoints and builtin',
  edit('    endpoints: [http://127.0.0.1:3000]', '    endpoints: [http://127.0.0.1:3000]', '    builtin: echo'),
  (s) => [{ code: 'config.upstream_source', path: 'upstreams.app.builtin', line: lineOf(s, 'builtin') }],
);

add('duplicate route id', [...BASE, '  - id: api', '    match: {}', '    upstream: app', '    auth: { public: true }'], (s) => [
  { code: 'config.duplicate_id', path: 'routes[1].id', line: lineOf(s, '- id: api', 2) },
]);

add('https without tls', edit('  - port: 8080', '  - port: 8443', '    protocol: https'), (s) => [
  { code: 'config.tls_required', path: 'listeners[0].protocol', line: lineOf(s, 'https') },
]);

add('tls without https', edit('  - port: 8080', '  - port: 8080', '    tls: { cert: tls/cert.pem, key: tls/key.pem }'), (s) => [
  { code: 'config.tls_required', path: 'listeners[0].tls', line: lineOf(s, 'tls:') },
]);

add(
  'unreadable TLS file',
  edit('  - port: 8080', '  - port: 8443', '    protocol: https', '    tls:', '      cert: tls/missing.pem', '      key: tls'),
  (s) => [
    { code: 'config.file_unreadable', path: 'listeners[0].tls.cert', line: lineOf(s, 'missing.pem') },
    { code: 'config.file_unreadable', path: 'listeners[0].tls.key', line: lineOf(s, 'key: tls') },
  ],
);

add(
  'bad CIDR',
  edit('  - port: 8080', '  - port: 8080', "    trustedProxies: [10.0.0.0/8, 10.0.0.0/33, 'fe80::/64', proxy.local]"),
  (s) => [
    { code: 'config.bad_cidr', path: 'listeners[0].trustedProxies[1]', line: lineOf(s, 'trustedProxies') },
    { code: 'config.bad_cidr', path: 'listeners[0].trustedProxies[3]', line: lineOf(s, 'trustedProxies') },
  ],
);

add('listener port conflict', edit('  - port: 8080', '  - port: 8080', '  - port: 8080', '    address: 127.0.0.1'), (s) => [
  { code: 'config.port_conflict', path: 'listeners[1].port', line: lineOf(s, '- port: 8080', 2) },
]);

add('admin port equal to a listener port', [...BASE, 'admin: { port: 8080 }'], (s) => [
  { code: 'config.port_conflict', path: 'admin.port', line: lineOf(s, 'admin:') },
]);

add('YAML syntax error', edit('  - port: 8080', '  - port: [8080'), (s) => [
  { code: 'config.yaml_syntax', path: '', line: lineOf(s, 'upstreams:') },
]);

add('duplicate YAML key', [...BASE, 'version: 1'], (s) => [
  { code: 'config.duplicate_key', path: 'version', line: lineOf(s, 'version', 2) },
]);

add('duplicate nested YAML key', edit('  - port: 8080', '  - port: 8080', '    port: 8081'), (s) => [
  { code: 'config.duplicate_key', path: 'listeners[0].port', line: lineOf(s, '8081') },
]);

add('more than one document', [...BASE, '---', 'version: 1'], (s) => [
  { code: 'config.multi_document', path: '', line: lineOf(s, '---') },
]);

add('empty file', [''], () => [{ code: 'config.empty', path: '', line: 1 }]);

add('file with only comments', ['# nothing here', '---'], () => [{ code: 'config.empty', path: '', line: 1 }]);

add('not a mapping', ['- version: 1'], () => [{ code: 'config.type', path: '', line: 1 }]);

add('alias to an unknown anchor', edit('  - port: 8080', '  - port: *port'), (s) => [
  { code: 'config.yaml_alias', path: '', line: lineOf(s, '*port') },
]);

add('unknown YAML tag', edit('  - port: 8080', '  - port: !env PORT'), (s) => [
  { code: 'config.yaml_tag', path: '', line: lineOf(s, '!env') },
]);

add('merge keys are not supported', [...BASE, 'admin:', '  <<: { port: 9000 }'], (s) => [
  { code: 'config.unknown_key', path: 'admin["<<"]', line: lineOf(s, '<<') },
]);

add('__proto__ is just an unknown key', [...BASE, '__proto__: { polluted: true }'], (s) => [
  { code: 'config.unknown_key', path: '__proto__', line: lineOf(s, '__proto__') },
]);

add('unset environment variable', edit('  - port: 8080', '  - port: 8080', '    address: ${BIND_ADDRESS}'), (s) => [
  { code: 'config.env_unset', path: 'listeners[0].address', line: lineOf(s, 'BIND_ADDRESS') },
]);

add('malformed variable reference', edit('  - port: 8080', '  - port: 8080', "    address: '${1BAD}'"), (s) => [
  { code: 'config.env_syntax', path: 'listeners[0].address', line: lineOf(s, '1BAD') },
]);

describe('invalid configs', () => {
  it.each(cases)('$name', ({ source, expected }) => {
    expect(pick(issuesOf(source))).toEqual(expected);
  });

  it('suggests the key that was probably meant', () => {
    const unknown = issuesOf(yaml(...edit('    upstream: app', '    upstrem: app'))).find((i) => i.code === 'config.unknown_key');
    expect(unknown?.message).toContain('did you mean "upstream"?');
  });

  it('stops YAML alias expansion bombs', () => {
    const bomb = [
      'a: &a [x, x, x, x, x, x, x, x, x, x]',
      'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]',
      'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]',
      'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]',
    ];
    expect(pick(issuesOf(yaml(...bomb)))).toEqual([{ code: 'config.yaml_alias', path: '', line: 2 }]);
  });

  it('reports a missing file as one issue at line 0', async () => {
    const file = fixture('does-not-exist.yaml');
    const error = await loadConfigFile(file).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).issues).toEqual([
      expect.objectContaining({ file, line: 0, column: 0, path: '', code: 'config.file_unreadable' }),
    ]);
    expect((error as ConfigError).issues[0]?.message).toContain('ENOENT');
  });

  it('reports a directory as one issue at line 0', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-config-'));
    try {
      const error = await loadConfigFile(dir).catch((e: unknown) => e);
      expect(pick((error as ConfigError).issues)).toEqual([{ code: 'config.file_unreadable', path: '', line: 0 }]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('gateway checks (what `bulwark serve` needs beyond the library)', () => {
  it('needs a listener and an upstream on every route', async () => {
    const { CONFIG_CHECKS } = await import('../../src/server/config-source.js');
    const source = yaml(
      BASE[0] as string,
      'listeners: []',
      'routes:',
      '  - id: api',
      '    match: { path: { prefix: /api } }',
      '    auth: { public: true }',
    );
    expect(pick(issuesOf(source, { checks: CONFIG_CHECKS }))).toEqual([
      { code: 'config.required', path: 'listeners', line: 2 },
      { code: 'config.required', path: 'routes[0]', line: 4 },
    ]);
  });
});

describe('route authentication requirement', () => {
  it('is required on every route: no requirement must be said explicitly', () => {
    const source = yaml(...BASE.filter((l) => !l.includes('auth:')));
    expect(pick(issuesOf(source))).toEqual([
      { code: 'config.required', path: 'routes[0].auth', line: lineOf(source, '- id: api') },
    ]);
  });
});
