import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, jwtVerify } from 'jose';
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
