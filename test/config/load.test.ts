import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfigFile, parseConfig, type ConfigCheck } from '../../src/config/load.js';
import { BASE, fixture, issuesOf, lineOf, pick, yaml } from './helpers.js';

describe('loading a valid config', () => {
  it('fills defaults and resolves TLS paths next to the config file', async () => {
    const file = fixture('valid.yaml');
    const loaded = await loadConfigFile(file, { env: {} });
    const { config } = loaded;

    expect(loaded.file).toBe(file);
    expect(loaded.source).toBe(readFileSync(file, 'utf8'));
    expect(loaded.hash).toBe(createHash('sha256').update(loaded.source).digest('hex'));
    expect(loaded.warnings).toEqual([]);

    expect(config.workers).toBe('auto');
    expect(config.shutdownTimeoutMs).toBe(30_000);
    const [pub, tls] = config.listeners;
    expect(pub).toMatchObject({ name: 'public', address: '0.0.0.0', port: 8080, protocol: 'http' });
    expect(pub?.limits).toEqual({
      maxHeaderBytes: 16384,
      maxHeaders: 100,
      maxBodyBytes: 1048576,
      headersTimeoutMs: 10_000,
      requestTimeoutMs: 60_000,
      idleTimeoutMs: 60_000,
    });
    expect(tls?.tls).toEqual({ cert: fixture('tls/cert.pem'), key: fixture('tls/key.pem') });
    expect(config.admin).toEqual({ address: '127.0.0.1', port: 9901, enabled: true });
    expect(config.upstreams['app']).toMatchObject({ balancer: 'least_request', connections: 128, keepAliveTimeoutMs: 4000 });
    expect(config.upstreams['demo']).toMatchObject({ builtin: 'echo', balancer: 'round_robin' });
    // Route overrides stay partial: only what the route says, so the upstream's values apply otherwise.
    expect(config.routes[0]?.timeouts).toEqual({ headersMs: 5000 });
  });

  it('reads JSON too', async () => {
    const { config } = await loadConfigFile(fixture('minimal.json'), { env: {} });
    expect(config.listeners[0]).toEqual({ address: '0.0.0.0', port: 8080, protocol: 'http', trustedProxies: [] });
    expect(config.routes[0]?.match).toEqual({});
    expect(config.admin).toBeUndefined();
  });

  it('parses the base test config', () => {
    const { config, warnings } = parseConfig(yaml(...BASE), 'base.yaml', { env: {} });
    expect(config.routes[0]?.match.path).toEqual({ prefix: '/api' });
    expect(warnings).toEqual([]);
  });
});

describe('extra checks', () => {
  it('runs after the built-in ones, with warnings returned and errors thrown', () => {
    const source = yaml(...BASE);
    const warnShadow: ConfigCheck = (config, report) => {
      report(
        ['routes', 0, 'match', 'path', 'prefix'],
        'router.shadowed',
        `route ${config.routes[0]?.id} shadows nothing`,
        'warning',
      );
    };
    const loaded = parseConfig(source, 'x.yaml', { env: {}, checks: [warnShadow] });
    expect(pick(loaded.warnings)).toEqual([
      { code: 'router.shadowed', path: 'routes[0].match.path.prefix', line: lineOf(source, 'prefix') },
    ]);
    expect(loaded.warnings[0]?.severity).toBe('warning');

    const rejectGlob: ConfigCheck = (_config, report) => report(['routes', 0, 'match', 'path'], 'router.bad_glob', 'bad');
    const issues = issuesOf(source, { checks: [warnShadow, rejectGlob] });
    // Same line; sorted by column (`path:` before the prefix value).
    expect(pick(issues)).toEqual([
      { code: 'router.bad_glob', path: 'routes[0].match.path', line: lineOf(source, 'path:') },
      { code: 'router.shadowed', path: 'routes[0].match.path.prefix', line: lineOf(source, 'prefix') },
    ]);
  });

  it('turns a throwing check into an issue instead of a crash', () => {
    const boom: ConfigCheck = () => {
      throw new Error('boom');
    };
    expect(pick(issuesOf(yaml(...BASE), { checks: [boom] }))).toEqual([{ code: 'config.check_failed', path: '', line: 1 }]);
  });

  it('are not run when the schema fails', () => {
    let ran = false;
    issuesOf(yaml(...BASE, 'bogus: 1'), { checks: [() => void (ran = true)] });
    expect(ran).toBe(false);
  });
});

describe('ConfigError', () => {
  it('carries a stable code and every issue, sorted by line', () => {
    const source = yaml(
      'version: 2', // 1
      'listeners:', // 2
      '  - port: 99999', // 3
      '    protocol: htp', // 4
      'upstreams: {}', // 5
      'routes: []', // 6
      'extra: true', // 7
    );
    let caught: unknown;
    try {
      parseConfig(source, 'c.yaml', { env: {} });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const error = caught as ConfigError;
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(pick(error.issues)).toEqual([
      { code: 'config.enum', path: 'version', line: 1 },
      { code: 'config.range', path: 'listeners[0].port', line: 3 },
      { code: 'config.enum', path: 'listeners[0].protocol', line: 4 },
      { code: 'config.unknown_key', path: 'extra', line: 7 },
    ]);
    expect(error.message).toContain('c.yaml:3:');
  });

  it('never reports the same issue twice', () => {
    const issues = issuesOf(yaml(...BASE.map((l) => l.replace('{ prefix: /api }', '{ prefix: /a, exact: /b, glob: /c }'))));
    const keys = issues.map((i) => `${i.line}:${i.column}:${i.path}:${i.code}`);
    expect(new Set(keys).size).toBe(keys.length);
    expect(issues).toHaveLength(1);
  });
});
