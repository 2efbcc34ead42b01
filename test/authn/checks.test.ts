/**
 * Config: the schema (closed objects, defaults, `none` unrepresentable, exactly-one
 * requirement shapes) and the cross-field checks that fail at load with a path.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ajv } from 'ajv';
import { authnChecks, checkRouteAuth, resolveAuthnPaths } from '../../src/authn/checks.js';
import { AuthnSchema, RouteAuthSchema, type AuthnConfig, type RouteAuthConfig } from '../../src/authn/schema.js';
import { AUDIENCE, authnConfig, ISSUER, jwks, makeKey, schemaErrors } from './helpers.js';

interface Issue {
  path: string;
  code: string;
  message: string;
  severity: 'error' | 'warning';
}

function issuesOf(providers: Record<string, unknown>): Issue[] {
  const issues: Issue[] = [];
  authnChecks({ authn: authnConfig({ providers }) }, (path, code, message, severity = 'error') =>
    issues.push({ path: path.join('.'), code, message, severity }),
  );
  return issues;
}

const base = { issuer: ISSUER, audiences: [AUDIENCE] };
const SECRET = 'x'.repeat(32);

describe('schema', () => {
  it('fills defaults', () => {
    const config = authnConfig({ providers: { p: { ...base, jwksUrl: 'https://id.test/jwks' } } });
    expect(config.providers['p']).toMatchObject({
      algorithms: ['RS256'],
      token: { header: 'authorization', prefix: 'Bearer' },
      clockSkewSec: 60,
      requireExp: true,
    });
    const withJwks = authnConfig({ providers: { p: { ...base, jwksUrl: 'https://id.test/jwks', jwks: {} } }, cache: {} });
    expect(withJwks.providers['p']!.jwks).toEqual({
      cacheTtlMs: 300_000,
      cooldownMs: 30_000,
      maxStaleMs: 3_600_000,
      timeoutMs: 3_000,
      maxBytes: 1_048_576,
    });
    expect(withJwks.cache).toEqual({ maxEntries: 10_000, ttlMs: 300_000 });
  });

  it('`none` (any case) and unknown algorithms are not representable', () => {
    for (const alg of ['none', 'None', 'NONE', 'HS1', 'RSA1_5', 'ES256K']) {
      expect(schemaErrors({ providers: { p: { ...base, jwksUrl: 'https://x/', algorithms: [alg] } } }).length).toBeGreaterThan(0);
    }
    expect(schemaErrors({ providers: { p: { ...base, jwksUrl: 'https://x/', algorithms: [] } } }).length).toBeGreaterThan(0);
  });

  it('objects are closed; names and headers are validated', () => {
    expect(schemaErrors({ providers: { p: { ...base, jwksUrl: 'https://x/', audience: 'typo' } } }).length).toBeGreaterThan(0);
    expect(schemaErrors({ providers: { p: { ...base, jwksUrl: 'https://x/', jwks: { ttl: 1 } } } }).length).toBeGreaterThan(0);
    expect(schemaErrors({ providers: { 'bad name!': { ...base, jwksUrl: 'https://x/' } } }).length).toBeGreaterThan(0);
    expect(schemaErrors({ providers: { p: { ...base, audiences: [], jwksUrl: 'https://x/' } } }).length).toBeGreaterThan(0);
    expect(schemaErrors({ providers: { p: { ...base, jwksUrl: 'ftp://x/' } } }).length).toBeGreaterThan(0);
    expect(
      schemaErrors({ providers: { p: { ...base, jwksUrl: 'https://x/', forward: { claims: { sub: 'bad header' } } } } }).length,
    ).toBeGreaterThan(0);
    expect(
      schemaErrors({ providers: { p: { ...base, jwksUrl: 'https://x/', token: { header: 'x', cookie: 'y' } } } }).length,
    ).toBeGreaterThan(0);
    expect(schemaErrors({ providers: { p: { ...base, jwksUrl: 'https://x/', discovery: false } } }).length).toBeGreaterThan(0);
    expect(schemaErrors({ providers: {}, extra: 1 }).length).toBeGreaterThan(0);
  });

  it('route requirements: exactly one form', () => {
    const ajv = new Ajv({ strict: false });
    const valid = ajv.compile(RouteAuthSchema);
    for (const ok of [
      { provider: 'a' },
      { anyOf: ['a', 'b'] },
      { allOf: ['a'] },
      { optional: 'a' },
      { optional: ['a', 'b'] },
      { public: true },
    ]) {
      expect(valid(ok), JSON.stringify(ok)).toBe(true);
    }
    for (const bad of [
      {},
      { public: false },
      { provider: 'a', public: true },
      { anyOf: [] },
      { anyOf: ['a', 'a'] },
      { optional: [] },
      { provider: 'a', extra: 1 },
    ]) {
      expect(valid(bad), JSON.stringify(bad)).toBe(false);
    }
  });

  it('every property has a description (the config reference is generated from them)', () => {
    const missing: string[] = [];
    const visit = (node: unknown, path: string) => {
      if (typeof node !== 'object' || node === null) return;
      const schema = node as Record<string, unknown>;
      const props = schema['properties'] as Record<string, Record<string, unknown>> | undefined;
      for (const [name, prop] of Object.entries(props ?? {})) {
        if (typeof prop['description'] !== 'string') missing.push(`${path}.${name}`);
        visit(prop, `${path}.${name}`);
      }
      for (const key of ['patternProperties', 'items']) {
        const child = schema[key];
        if (child && typeof child === 'object') {
          if (key === 'items') visit(child, `${path}[]`);
          else for (const [k, v] of Object.entries(child)) visit(v, `${path}{${k}}`);
        }
      }
      for (const branch of (schema['anyOf'] as unknown[] | undefined) ?? []) visit(branch, path);
    };
    visit(JSON.parse(JSON.stringify(RouteAuthSchema)), 'auth');
    visit(JSON.parse(JSON.stringify(AuthnSchema)), 'authn');
    expect(missing).toEqual([]);
  });
});

describe('authnChecks', () => {
  it('a clean provider has no issues', () => {
    expect(issuesOf({ p: { ...base, jwksUrl: 'https://id.test/jwks' } })).toEqual([]);
  });

  it('exactly one key source', () => {
    expect(issuesOf({ p: base })).toEqual([
      expect.objectContaining({ path: 'authn.providers.p', code: 'config.authn_key_source' }),
    ]);
    expect(issuesOf({ p: { ...base, jwksUrl: 'https://id.test/jwks', discovery: true } })).toEqual([
      expect.objectContaining({ path: 'authn.providers.p.discovery', code: 'config.authn_key_source' }),
    ]);
    expect(issuesOf({ p: { ...base, publicKeys: [{ key: 'k.pem' }], jwks: {} } }).map((i) => i.code)).toContain(
      'config.authn_key_source',
    );
  });

  it('HS only with a secret, a secret only with HS, and at least 32 bytes', () => {
    expect(issuesOf({ p: { ...base, algorithms: ['HS256'], secret: SECRET } })).toEqual([]);
    expect(issuesOf({ p: { ...base, algorithms: ['HS256'], jwksUrl: 'https://id.test/jwks' } })).toEqual([
      expect.objectContaining({ path: 'authn.providers.p.algorithms', code: 'config.authn_algorithms' }),
    ]);
    expect(issuesOf({ p: { ...base, algorithms: ['HS256', 'RS256'], secret: SECRET } })).toEqual([
      expect.objectContaining({ path: 'authn.providers.p.algorithms', code: 'config.authn_algorithms' }),
    ]);
    expect(issuesOf({ p: { ...base, secret: SECRET } })).toEqual([
      expect.objectContaining({ code: 'config.authn_algorithms' }), // default RS256 with a secret
    ]);
    expect(issuesOf({ p: { ...base, algorithms: ['HS256'], secret: 'x'.repeat(31) } })).toEqual([
      expect.objectContaining({ path: 'authn.providers.p.secret', code: 'config.authn_weak_secret' }),
    ]);
    // Bytes, not characters: 11 three-byte characters are 33 bytes.
    expect(issuesOf({ p: { ...base, algorithms: ['HS256'], secret: '€'.repeat(11) } })).toEqual([]);
  });

  it('JWKS settings and URLs', () => {
    expect(issuesOf({ p: { ...base, jwksUrl: 'https://id.test/jwks', jwks: { cacheTtlMs: 60_000, maxStaleMs: 1000 } } })).toEqual(
      [expect.objectContaining({ path: 'authn.providers.p.jwks.maxStaleMs', code: 'config.authn_jwks' })],
    );
    expect(issuesOf({ p: { ...base, jwksUrl: 'http://id.test/jwks' } })).toEqual([
      expect.objectContaining({ code: 'config.authn_insecure_jwks', severity: 'warning' }),
    ]);
    expect(issuesOf({ p: { ...base, jwksUrl: 'http://127.0.0.1:8080/jwks' } })).toEqual([]);
    expect(issuesOf({ p: { issuer: 'not a url', audiences: ['a'], discovery: true } })).toEqual([
      expect.objectContaining({ path: 'authn.providers.p.issuer', code: 'config.authn_discovery' }),
    ]);
  });

  it('key files: exist, hold public keys usable with the algorithms', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-checks-'));
    const rsa = await makeKey('r');
    const ec = await makeKey('e', 'ES256');
    writeFileSync(join(dir, 'rsa.pem'), rsa.pem);
    writeFileSync(join(dir, 'priv.pem'), '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+2\n-----END PRIVATE KEY-----\n');
    writeFileSync(join(dir, 'jwks.json'), JSON.stringify(jwks(rsa)));
    writeFileSync(join(dir, 'bad.json'), '{"keys": []}');
    const keysAt = (issues: Issue[]) => issues.map((i) => [i.path, i.code]);
    expect(
      issuesOf({ p: { ...base, publicKeys: [{ key: join(dir, 'rsa.pem') }, { key: ec.pem }], algorithms: ['RS256', 'ES256'] } }),
    ).toEqual([]);
    expect(keysAt(issuesOf({ p: { ...base, publicKeys: [{ key: ec.pem }] } }))).toEqual([
      ['authn.providers.p.publicKeys.0.key', 'config.authn_public_key'],
    ]);
    expect(issuesOf({ p: { ...base, publicKeys: [{ key: join(dir, 'priv.pem') }] } })[0]?.message).toMatch(/private key/);
    expect(issuesOf({ p: { ...base, publicKeys: [{ key: join(dir, 'missing.pem') }] } })[0]?.message).toMatch(/ENOENT/);
    expect(
      issuesOf({ p: { ...base, publicKeys: [{ key: '-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----' }] } })[0]
        ?.message,
    ).toMatch(/not a PEM/);
    expect(issuesOf({ p: { ...base, jwksFile: join(dir, 'jwks.json') } })).toEqual([]);
    expect(keysAt(issuesOf({ p: { ...base, jwksFile: join(dir, 'bad.json') } }))).toEqual([
      ['authn.providers.p.jwksFile', 'config.authn_jwks_file'],
    ]);
    expect(keysAt(issuesOf({ p: { ...base, jwksFile: join(dir, 'nope.json') } }))).toEqual([
      ['authn.providers.p.jwksFile', 'config.authn_jwks_file'],
    ]);
  });

  it('relative key paths resolve against the config directory', () => {
    const config: AuthnConfig = authnConfig({
      providers: {
        a: { ...base, jwksFile: 'keys/jwks.json' },
        b: {
          ...base,
          publicKeys: [
            { key: 'keys/a.pem' },
            { key: '/abs/b.pem' },
            { key: '-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----' },
          ],
        },
      },
    });
    resolveAuthnPaths(config, '/etc/bulwark');
    expect(config.providers['a']!.jwksFile).toBe('/etc/bulwark/keys/jwks.json');
    expect(config.providers['b']!.publicKeys!.map((k) => k.key.slice(0, 20))).toEqual([
      '/etc/bulwark/keys/a.',
      '/abs/b.pem',
      '-----BEGIN PUBLIC KE',
    ]);
  });

  it('subject patterns, query tokens, forward headers', () => {
    const jwksUrl = 'https://id.test/jwks';
    expect(issuesOf({ p: { ...base, jwksUrl, subject: 'spiffe://td/a**' } })).toEqual([
      expect.objectContaining({ path: 'authn.providers.p.subject', code: 'config.authn_subject_pattern' }),
    ]);
    expect(issuesOf({ p: { ...base, jwksUrl, token: { query: 'access_token' } } })).toEqual([
      expect.objectContaining({ code: 'config.authn_query_token', severity: 'warning' }),
    ]);
    const forward = (claims: Record<string, string>, payloadHeader?: string, token?: unknown) =>
      issuesOf({
        p: { ...base, jwksUrl, forward: { claims, ...(payloadHeader ? { payloadHeader } : {}) }, ...(token ? { token } : {}) },
      });
    expect(forward({ sub: 'x-user-id', roles: 'x-roles' }, 'x-jwt')).toEqual([]);
    for (const reserved of [
      'Authorization',
      'host',
      'Content-Length',
      'cookie',
      'x-forwarded-for',
      'transfer-encoding',
      'x-request-id',
    ]) {
      expect(
        forward({ sub: reserved }).map((i) => i.code),
        reserved,
      ).toEqual(['config.authn_forward_header']);
    }
    expect(forward({ sub: 'x-user', email: 'X-User' }).map((i) => i.path)).toEqual(['authn.providers.p.forward.claims.email']);
    expect(forward({ sub: 'x-user' }, 'x-user').map((i) => i.path)).toEqual(['authn.providers.p.forward.payloadHeader']);
    expect(forward({ sub: 'x-token' }, undefined, { header: 'X-Token' }).map((i) => i.code)).toEqual([
      'config.authn_forward_header',
    ]);
  });
});

describe('checkRouteAuth', () => {
  const authn = authnConfig({
    providers: { users: { ...base, jwksUrl: 'https://id.test/jwks' }, partners: { ...base, jwksUrl: 'https://id.test/jwks' } },
  });
  const check = (requirement: RouteAuthConfig, config: AuthnConfig | null = authn) => {
    const issues: string[] = [];
    checkRouteAuth(requirement, config ?? undefined, ['routes', 0, 'auth'], (path, code, message) =>
      issues.push(`${path.join('.')} ${code} ${message}`),
    );
    return issues;
  };

  it('names must exist, with a suggestion', () => {
    expect(check({ provider: 'users' })).toEqual([]);
    expect(check({ public: true }, null)).toEqual([]);
    expect(check({ provider: 'user' })).toEqual([
      'routes.0.auth.provider config.authn_unknown_provider unknown authn provider "user" (did you mean "users"?); defined: users, partners',
    ]);
    expect(check({ anyOf: ['users', 'partner'] })[0]).toMatch(/^routes\.0\.auth\.anyOf\.1 /);
    expect(check({ allOf: ['x'] })[0]).toMatch(/^routes\.0\.auth\.allOf\.0 /);
    expect(check({ optional: 'x' })[0]).toMatch(/^routes\.0\.auth\.optional /);
    expect(check({ optional: ['users', 'x'] })[0]).toMatch(/^routes\.0\.auth\.optional\.1 /);
    expect(check({ provider: 'users' }, null)[0]).toMatch(/no authn providers are defined/);
    expect(check({ provider: '__proto__' })[0]).toMatch(/unknown authn provider/);
  });
});
