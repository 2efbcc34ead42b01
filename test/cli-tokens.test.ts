import { describe, expect, it, vi } from 'vitest';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, decodeJwt, jwtVerify } from 'jose';
import { generateKeys, mintToken, writeKeys } from '../src/cli/dev-tokens.js';
import { runCli } from './helpers/process.js';

describe('bulwark keys generate / token mint', () => {
  for (const alg of ['ES256', 'RS256', 'EdDSA']) {
    it(`mints a ${alg} token that verifies against the generated JWKS`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-keys-'));
      const gen = await runCli(['keys', 'generate', '--alg', alg, '--kid', `k-${alg}`, '--out', dir]);
      expect(gen.code).toBe(0);
      const privateFile = join(dir, `k-${alg}.private.jwk.json`);
      expect(statSync(privateFile).mode & 0o077).toBe(0);
      const minted = await runCli([
        'token',
        'mint',
        '--key',
        privateFile,
        '--sub',
        'alice',
        '--roles',
        'admin,editor',
        '--aud',
        'api',
        '--iss',
        'https://dev',
        '--scope',
        'orders:read',
        '--claim',
        'tier="gold"',
        '--ttl',
        '60',
      ]);
      expect(minted.code).toBe(0);
      const jwks = createLocalJWKSet(JSON.parse(readFileSync(join(dir, 'jwks.json'), 'utf8')));
      const { payload, protectedHeader } = await jwtVerify(minted.stdout.trim(), jwks, {
        issuer: 'https://dev',
        audience: 'api',
      });
      expect(protectedHeader).toMatchObject({ alg, kid: `k-${alg}` });
      expect(payload).toMatchObject({ sub: 'alice', roles: ['admin', 'editor'], scope: 'orders:read', tier: 'gold' });
      expect(payload.exp! - payload.iat!).toBe(60);
    });
  }

  it('exp is iat + ttl exactly, even when the clock crosses a second while minting', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-keys-'));
    const { privateKey } = writeKeys(dir, await generateKeys('EdDSA', 'k'));
    // A clock 1 ms later at every reading, starting 1 ms before a second ends.
    const RealDate = Date;
    let t = 1795551708999;
    class TickingDate extends RealDate {
      constructor(...args: unknown[]) {
        if (args.length === 0) super(t++);
        else super(...(args as [number]));
      }
      static override now(): number {
        return t++;
      }
    }
    vi.stubGlobal('Date', TickingDate);
    let token: string;
    try {
      token = await mintToken({ keyFile: privateKey, subject: 'alice', ttlSeconds: 60 });
    } finally {
      vi.unstubAllGlobals();
    }
    const { exp, iat } = decodeJwt(token);
    expect(iat).toBe(1795551708);
    expect(exp! - iat!).toBe(60);
  });

  it('usage errors exit 2; a public key cannot mint (exit 1)', async () => {
    expect((await runCli(['keys', 'generate', '--alg', 'none'])).code).toBe(2);
    expect((await runCli(['token', 'mint'])).code).toBe(2);
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-keys-'));
    await runCli(['keys', 'generate', '--kid', 'p', '--out', dir]);
    const jwks = JSON.parse(readFileSync(join(dir, 'jwks.json'), 'utf8')) as { keys: unknown[] };
    writeFileSync(join(dir, 'pub.json'), JSON.stringify(jwks.keys[0]));
    expect((await runCli(['token', 'mint', '--key', join(dir, 'pub.json')])).code).toBe(1);
  });
});

describe('bulwark explain', () => {
  it(
    'prints the decision path; exit 0 for allow and 1 for deny, with a token or trusted claims',
    { timeout: 90_000 },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-explain-'));
      await runCli(['keys', 'generate', '--kid', 'e1', '--out', dir]);
      const config = join(dir, 'gw.yaml');
      writeFileSync(
        config,
        `version: 1
listeners: [{ port: 8080 }]
upstreams: { app: { endpoints: ['http://127.0.0.1:1'] } }
authn: { providers: { idp: { issuer: https://i, audiences: [a], algorithms: [ES256], jwksFile: jwks.json, rolesClaim: roles } } }
authz:
  roles: { admin: { permissions: [all] } }
  permissions: { all: { resources: ['/admin/**'], actions: ['*'] } }
  policies: [{ id: p, rules: [{ id: admins, effect: allow, permissions: [all] }] }]
routes:
  - { id: admin, match: { path: { prefix: /admin } }, upstream: app, auth: { provider: idp }, authz: p }
`,
      );
      const mint = async (roles: string) =>
        (
          await runCli([
            'token',
            'mint',
            '--key',
            join(dir, 'e1.private.jwk.json'),
            '--iss',
            'https://i',
            '--aud',
            'a',
            '--sub',
            'ann',
            '--roles',
            roles,
          ])
        ).stdout.trim();
      const allowed = await runCli(['explain', '--config', config, '--path', '/admin/x', '--token', await mint('admin')]);
      expect(allowed.code).toBe(0);
      expect(allowed.stdout).toMatch(/authn\s+allow\s+jwt\.valid\s+provider=idp kid=e1/);
      expect(allowed.stdout).toMatch(/authz\s+allow\s+rbac\.allowed\s+policy=p rule=admins/);
      const denied = await runCli(['explain', '--config', config, '--path', '/admin/../admin/x', '--token', await mint('guest')]);
      expect(denied.code).toBe(1);
      expect(denied.stdout).toContain('rbac.no_matching_rule');
      const expired = await runCli(['explain', '--config', config, '--path', '/admin/x', '--token', 'not-a-token']);
      expect(expired.code).toBe(1);
      expect(expired.stdout).toContain('jwt.malformed');
      const claims = await runCli([
        'explain',
        '--config',
        config,
        '--path',
        '/admin/x',
        '--claims',
        '{"sub":"c","roles":["admin"]}',
        '--json',
      ]);
      expect(claims.code).toBe(0);
      expect(JSON.parse(claims.stdout).outcome).toBe('allow');
      expect((await runCli(['explain', '--config', config])).code).toBe(2);
    },
  );
});
