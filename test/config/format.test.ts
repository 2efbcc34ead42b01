import { describe, expect, it } from 'vitest';
import { formatIssues, parseConfig, redactConfig, type ConfigIssue } from '../../src/config/load.js';
import type { BulwarkConfig } from '../../src/config/schema.js';
import { BASE, issuesOf, yaml } from './helpers.js';

describe('formatIssues', () => {
  it('prints one file:line:column line per issue', () => {
    const issues = issuesOf(yaml(...BASE, 'bogus: 1', 'also: 2'), {}, 'gateway.yaml');
    const lines = formatIssues(issues).split('\n');
    expect(lines).toHaveLength(2);
    const line = BASE.length + 1;
    expect(lines[0]).toMatch(
      new RegExp(`^gateway\\.yaml:${line}:1: error bogus: unknown key "bogus".* \\(config\\.unknown_key\\)$`),
    );
    expect(lines[1]).toContain(`gateway.yaml:${line + 1}:1: error also:`);
  });

  it('marks warnings and the document root', () => {
    const issues: ConfigIssue[] = [
      { file: 'a.yaml', line: 0, column: 0, path: '', code: 'config.file_unreadable', message: 'gone' },
      {
        file: 'a.yaml',
        line: 3,
        column: 5,
        path: 'routes[1]',
        code: 'router.shadowed',
        message: 'never matches',
        severity: 'warning',
      },
    ];
    expect(formatIssues(issues)).toBe(
      'a.yaml:0:0: error (root): gone (config.file_unreadable)\na.yaml:3:5: warning routes[1]: never matches (router.shadowed)',
    );
  });
});

describe('redactConfig', () => {
  it('returns a deep copy', () => {
    const { config } = parseConfig(yaml(...BASE), 'r.yaml', { env: {} });
    const copy = redactConfig(config) as BulwarkConfig;
    expect(copy).toEqual(config);
    expect(copy).not.toBe(config);
    expect(copy.listeners[0]).not.toBe(config.listeners[0]);
  });

  it('redacts secret-looking keys and URL credentials, keeps key file paths', () => {
    const config = {
      listeners: [{ port: 1, tls: { cert: '/etc/tls/cert.pem', key: '/etc/tls/key.pem' } }],
      auth: {
        clientSecret: 's3cr3t',
        password: 'hunter2',
        apiToken: 'tok',
        privateKey: '/etc/keys/signing.pem',
        signingKey: 'raw-key-material',
        key: '-----BEGIN PRIVATE KEY-----\nabc',
        nested: [{ db_password: { anything: 'x' } }],
      },
      upstreams: { app: { endpoints: ['https://user:pass@app.internal:8443'] } },
      stores: {
        pg: 'postgres://u:p@ss@db.internal:5432/audit',
        redis: 'redis://cache.internal:6379/0?password=hunter3&db=2',
        other: 'https://idp.example/jwks?client%5Fsecret=abc&kid=k1',
      },
    } as unknown as BulwarkConfig;
    expect(redactConfig(config)).toEqual({
      listeners: [{ port: 1, tls: { cert: '/etc/tls/cert.pem', key: '/etc/tls/key.pem' } }],
      auth: {
        clientSecret: '[redacted]',
        password: '[redacted]',
        apiToken: '[redacted]',
        privateKey: '[redacted]',
        signingKey: '[redacted]',
        key: '[redacted]',
        nested: [{ db_password: '[redacted]' }],
      },
      upstreams: { app: { endpoints: ['https://[redacted]@app.internal:8443'] } },
      stores: {
        pg: 'postgres://[redacted]@db.internal:5432/audit',
        redis: 'redis://cache.internal:6379/0?password=[redacted]&db=2',
        other: 'https://idp.example/jwks?client%5Fsecret=[redacted]&kid=k1',
      },
    });
    expect((config as unknown as { auth: { password: string } }).auth.password).toBe('hunter2');
  });
});
