import { describe, expect, it } from 'vitest';
import { expandEnv } from '../../src/config/env.js';
import { parseConfig } from '../../src/config/load.js';
import { BASE, issuesOf, lineOf, pick, yaml } from './helpers.js';

/** BASE with the first listener's lines replaced by `listener` lines. */
const withListener = (...listener: string[]): string => yaml(BASE[0] as string, BASE[1] as string, ...listener, ...BASE.slice(3));

const load = (source: string, env: NodeJS.ProcessEnv) => parseConfig(source, 'env.yaml', { env }).config;

describe('environment substitution', () => {
  it('uses the default when the variable is unset or empty', () => {
    const source = withListener('  - port: ${PORT:-8080}', '    address: ${ADDR:-127.0.0.1}');
    expect(load(source, {}).listeners[0]).toMatchObject({ port: 8080, address: '127.0.0.1' });
    expect(load(source, { ADDR: '' }).listeners[0]?.address).toBe('127.0.0.1');
  });

  it('uses the variable when set', () => {
    const source = withListener('  - port: ${PORT:-8080}', '    address: ${ADDR}');
    expect(load(source, { PORT: '9000', ADDR: '10.1.2.3' }).listeners[0]).toMatchObject({ port: 9000, address: '10.1.2.3' });
  });

  it('substitutes inside larger strings and keeps them strings', () => {
    // Block style: `{` and `}` are indicators inside a flow collection (`[...]`).
    const source = yaml(
      ...BASE.map((l) => (l.includes('endpoints') ? '    endpoints:\n      - http://${HOST}:${APP_PORT:-3000}' : l)),
    );
    expect(load(source, { HOST: 'app.internal' }).upstreams['app']?.endpoints).toEqual(['http://app.internal:3000']);
  });

  it('types a plain whole-value reference like YAML would, but not a quoted one', () => {
    expect(load(withListener('  - port: ${PORT}'), { PORT: '8081' }).listeners[0]?.port).toBe(8081);
    const quoted = withListener("  - port: '${PORT}'");
    expect(pick(issuesOf(quoted, { env: { PORT: '8081' } }))).toEqual([
      { code: 'config.type', path: 'listeners[0].port', line: 3 },
    ]);
    const source = yaml(...BASE, 'admin:', '  enabled: ${ADMIN:-false}');
    expect(load(source, {}).admin?.enabled).toBe(false);
  });

  it('treats $${ as a literal ${', () => {
    const source = withListener('  - port: 8080', '    name: "$${NOT_A_VAR}"');
    expect(pick(issuesOf(source))).toEqual([{ code: 'config.pattern', path: 'listeners[0].name', line: 4 }]);
    expect(expandEnv('a $${B} ${C}', { C: 'c' })).toEqual({ value: 'a ${B} c', problems: [] });
  });

  it('cannot inject YAML structure through a variable', () => {
    const source = withListener('  - port: 8080', '    address: ${FOO}');
    const config = load(source, { FOO: 'a\nb: c' });
    expect(config.listeners[0]?.address).toBe('a\nb: c');
    expect(Object.keys(config.listeners[0] ?? {})).not.toContain('b');
    const flow = load(source, { FOO: '[1, 2]' });
    expect(flow.listeners[0]?.address).toBe('[1, 2]');
  });

  it('hints at quoting when an unquoted reference breaks a flow collection', () => {
    const source = yaml(BASE[0] as string, 'listeners: [{ port: ${PORT} }]', ...BASE.slice(3));
    const issues = issuesOf(source, { env: { PORT: '1' } });
    expect(pick(issues)).toEqual([{ code: 'config.yaml_syntax', path: '', line: 2 }]);
    expect(issues[0]?.message).toContain('quote');
  });

  it('does not substitute keys', () => {
    const source = yaml(...BASE, '${KEY}: 1');
    expect(pick(issuesOf(source, { env: { KEY: 'admin' } }))).toEqual([
      { code: 'config.unknown_key', path: '["${KEY}"]', line: lineOf(source, '${KEY}') },
    ]);
  });

  it('reports every unset variable at its own line, without follow-on schema errors', () => {
    const source = withListener('  - port: ${PORT}', '    address: ${ADDR}');
    expect(pick(issuesOf(source))).toEqual([
      { code: 'config.env_unset', path: 'listeners[0].port', line: lineOf(source, 'PORT') },
      { code: 'config.env_unset', path: 'listeners[0].address', line: lineOf(source, 'ADDR') },
    ]);
  });

  it('reports malformed references', () => {
    expect(expandEnv('${', {}).problems.map((p) => p.code)).toEqual(['config.env_syntax']);
    expect(expandEnv('${A-B}', {}).problems.map((p) => p.code)).toEqual(['config.env_syntax']);
    expect(expandEnv('${A:-${B}}', {}).problems.map((p) => p.code)).toEqual(['config.env_syntax']);
    expect(expandEnv('$A ${A:-x} $', { A: 'a' })).toEqual({ value: '$A a $', problems: [] });
  });
});
