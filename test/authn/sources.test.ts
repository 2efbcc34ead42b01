/**
 * Key sources other than the remote JWKS: a watched JWKS file, PEM keys and
 * certificates, an HMAC secret, OIDC discovery (over a real HTTP server).
 */
import { readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { importPKCS8, SignJWT } from 'jose';
import { compileAuthn, type AuthnOptions, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
import { discoveryUrl, jwksUriFromDiscovery } from '../../src/authn/discovery.js';
import type { AuthnEvent } from '../../src/authn/key-source.js';
import { selfSignedCert } from '../helpers/net.js';
import {
  AUDIENCE,
  authnConfig,
  bearer,
  ISSUER,
  jwks,
  makeKey,
  mint,
  nowSec,
  requestContext,
  runStage,
  startJwksServer,
  until,
} from './helpers.js';

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

function compile(providers: Record<string, unknown>, options: AuthnOptions = {}): CompiledAuthn {
  const authn = compileAuthn(authnConfig({ providers }), options);
  cleanup.push(() => authn.close());
  return authn;
}

async function verdict(authn: CompiledAuthn, provider: string, token: string): Promise<string> {
  const stage = createAuthnStage({ provider }, authn)!;
  const decision = await runStage(stage, requestContext(bearer(token)));
  return decision === null ? 'allow' : decision.code;
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-authn-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('JWKS file', () => {
  it('loads, reloads on change (in place and by rename), and keeps the old keys when the new file is bad', async () => {
    const k1 = await makeKey('k1');
    const k2 = await makeKey('k2');
    const dir = tempDir();
    const file = join(dir, 'jwks.json');
    writeFileSync(file, JSON.stringify(jwks(k1)));
    const events: AuthnEvent[] = [];
    const authn = compile({ f: { issuer: ISSUER, audiences: [AUDIENCE], jwksFile: file } }, { onEvent: (e) => events.push(e) });
    await authn.ready();
    const t1 = await mint(k1);
    const t2 = await mint(k2);
    expect(await verdict(authn, 'f', t1)).toBe('allow');
    expect(await verdict(authn, 'f', t2)).toBe('jwt.unknown_kid');

    // Rewritten in place with both keys.
    writeFileSync(file, JSON.stringify(jwks(k1, k2)));
    await until(async () => (await verdict(authn, 'f', t2)) === 'allow');
    expect(await verdict(authn, 'f', t1)).toBe('allow');
    expect(authn.cache.size).toBe(2);

    // Replaced atomically (write + rename, as editors and ConfigMaps do) without k1.
    writeFileSync(join(dir, '.tmp'), JSON.stringify(jwks(k2)));
    renameSync(join(dir, '.tmp'), file);
    await until(async () => (await verdict(authn, 'f', t1)) === 'jwt.unknown_kid');
    expect(await verdict(authn, 'f', t2)).toBe('allow');
    expect(authn.cache.size).toBe(1);

    // Broken files: reported, old keys kept.
    for (const bad of ['{"keys": [', '{"keys": []}', '[]', '']) {
      const errors = events.filter((e) => e.type === 'keys_error').length;
      writeFileSync(file, bad);
      await until(() => events.filter((e) => e.type === 'keys_error').length > errors);
      expect(await verdict(authn, 'f', t2)).toBe('allow');
    }
  });

  it('a path that is a symlink into another directory: changes to the target are seen', async () => {
    const k1 = await makeKey('k1');
    const k2 = await makeKey('k2');
    const target = join(tempDir(), 'jwks.json');
    const link = join(tempDir(), 'jwks.json');
    writeFileSync(target, JSON.stringify(jwks(k1)));
    symlinkSync(target, link);
    const authn = compile({ f: { issuer: ISSUER, audiences: [AUDIENCE], jwksFile: link } });
    await authn.ready();
    const t1 = await mint(k1);
    const t2 = await mint(k2);
    expect(await verdict(authn, 'f', t1)).toBe('allow');
    // Only the target changes: nothing happens in the link's own directory.
    writeFileSync(target, JSON.stringify(jwks(k2)));
    await until(async () => (await verdict(authn, 'f', t1)) === 'jwt.unknown_kid');
    expect(await verdict(authn, 'f', t2)).toBe('allow');
  });

  it('a missing or invalid file at start: ready() rejects, tokens get jwt.jwks_unavailable, and the file appearing later fixes it', async () => {
    const k1 = await makeKey('k1');
    const dir = tempDir();
    const file = join(dir, 'jwks.json');
    const authn = compile({ f: { issuer: ISSUER, audiences: [AUDIENCE], jwksFile: file } });
    await expect(authn.ready()).rejects.toThrow(/provider "f"/);
    const token = await mint(k1);
    expect(await verdict(authn, 'f', token)).toBe('jwt.jwks_unavailable');
    writeFileSync(file, JSON.stringify(jwks(k1)));
    await until(async () => (await verdict(authn, 'f', token)) === 'allow');
  });

  it('close() stops watching', async () => {
    const k1 = await makeKey('k1');
    const k2 = await makeKey('k2');
    const dir = tempDir();
    const file = join(dir, 'jwks.json');
    writeFileSync(file, JSON.stringify(jwks(k1)));
    const events: AuthnEvent[] = [];
    const authn = compile({ f: { issuer: ISSUER, audiences: [AUDIENCE], jwksFile: file } }, { onEvent: (e) => events.push(e) });
    await authn.ready();
    authn.close();
    writeFileSync(file, JSON.stringify(jwks(k2)));
    await new Promise((r) => setTimeout(r, 300));
    expect(events.filter((e) => e.type === 'keys_loaded')).toHaveLength(1);
  });
});

describe('PEM public keys', () => {
  it('inline SPKI with a kid: that kid only', async () => {
    const k1 = await makeKey('k1');
    const authn = compile({ p: { issuer: ISSUER, audiences: [AUDIENCE], publicKeys: [{ key: k1.pem, kid: 'k1' }] } });
    await authn.ready();
    expect(await verdict(authn, 'p', await mint(k1))).toBe('allow');
    expect(await verdict(authn, 'p', await mint({ ...k1, kid: 'other' }))).toBe('jwt.unknown_kid');
  });

  it('from files, without kids: any kid; a kid-less token tries each key', async () => {
    const k1 = await makeKey('a');
    const k2 = await makeKey('b');
    const dir = tempDir();
    writeFileSync(join(dir, 'a.pem'), k1.pem);
    writeFileSync(join(dir, 'b.pem'), k2.pem);
    const authn = compile({
      p: { issuer: ISSUER, audiences: [AUDIENCE], publicKeys: [{ key: join(dir, 'a.pem') }, { key: join(dir, 'b.pem') }] },
    });
    await authn.ready();
    expect(await verdict(authn, 'p', await mint(k1))).toBe('allow');
    expect(await verdict(authn, 'p', await mint(k2, {}, { kid: undefined }))).toBe('allow');
    const stranger = await makeKey('c');
    expect(await verdict(authn, 'p', await mint(stranger, {}, { kid: undefined }))).toBe('jwt.signature_invalid');
  });

  it('an X.509 certificate, and mixed key types across algorithms', async () => {
    const { cert, key } = selfSignedCert();
    const ecPrivate = await importPKCS8(readFileSync(key, 'utf8'), 'ES256');
    const rsa = await makeKey('rsa');
    const authn = compile({
      p: {
        issuer: ISSUER,
        audiences: [AUDIENCE],
        algorithms: ['RS256', 'ES256'],
        publicKeys: [
          { key: cert, kid: 'ec' },
          { key: rsa.pem, kid: 'rsa' },
        ],
      },
    });
    await authn.ready();
    const ecToken = await new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: 'svc', exp: nowSec() + 60 })
      .setProtectedHeader({ alg: 'ES256', kid: 'ec' })
      .sign(ecPrivate);
    expect(await verdict(authn, 'p', ecToken)).toBe('allow');
    expect(await verdict(authn, 'p', await mint(rsa))).toBe('allow');
    // The EC key's kid with an RS256 token: no RS256 key under that kid.
    expect(await verdict(authn, 'p', await mint({ ...rsa, kid: 'ec' }))).toBe('jwt.unknown_kid');
  });

  it('a key no allowed algorithm can use makes ready() reject', async () => {
    const ec = await makeKey('ec', 'ES256');
    const authn = compile({ p: { issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['RS256'], publicKeys: [{ key: ec.pem }] } });
    await expect(authn.ready()).rejects.toThrow(/not a public key usable with RS256/);
    expect(await verdict(authn, 'p', await mint(ec))).toBe('jwt.alg_not_allowed');
  });

  it('an unreadable key file is a compile-time error', () => {
    expect(() =>
      compileAuthn(
        authnConfig({
          providers: { p: { issuer: ISSUER, audiences: [AUDIENCE], publicKeys: [{ key: '/nonexistent/key.pem' }] } },
        }),
      ),
    ).toThrow(/ENOENT/);
  });
});

describe('HMAC secret', () => {
  const secret = 'a-shared-secret-that-is-at-least-32-bytes-long';

  it('verifies HS256 with the secret, nothing else', async () => {
    const authn = compile({ h: { issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['HS256', 'HS512'], secret } });
    await authn.ready();
    const sign = (alg: string, key: string) =>
      new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: 'svc', exp: nowSec() + 60 })
        .setProtectedHeader({ alg })
        .sign(new TextEncoder().encode(key));
    expect(await verdict(authn, 'h', await sign('HS256', secret))).toBe('allow');
    expect(await verdict(authn, 'h', await sign('HS512', secret))).toBe('allow');
    expect(await verdict(authn, 'h', await sign('HS384', secret))).toBe('jwt.alg_not_allowed');
    expect(await verdict(authn, 'h', await sign('HS256', `${secret}!`))).toBe('jwt.signature_invalid');
    expect(await verdict(authn, 'h', await mint(await makeKey('k1')))).toBe('jwt.alg_not_allowed');
  });

  it('a short secret is refused even if config checks were skipped', async () => {
    const authn = compile({ h: { issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['HS256'], secret: 'short' } });
    await expect(authn.ready()).rejects.toThrow(/at least 32/);
  });

  it('the secret source never serves asymmetric algorithms, even if misconfigured', async () => {
    const authn = compile({ h: { issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['HS256', 'RS256'], secret } });
    await authn.ready();
    expect(await verdict(authn, 'h', await mint(await makeKey('k1')))).toBe('jwt.unknown_kid');
  });
});

describe('OIDC discovery', () => {
  it('finds jwks_uri from the issuer and verifies with it', async () => {
    const k1 = await makeKey('k1');
    const server = await startJwksServer(jwks(k1));
    cleanup.push(() => server.close());
    const issuer = server.origin;
    server.routes.set('/.well-known/openid-configuration', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer, jwks_uri: server.url, authorization_endpoint: `${issuer}/auth` }));
    });
    const authn = compile({ d: { issuer, audiences: [AUDIENCE], discovery: true } });
    await authn.ready();
    expect(await verdict(authn, 'd', await mint(k1, { iss: issuer }))).toBe('allow');
    expect(server.paths).toEqual(['/.well-known/openid-configuration', '/jwks.json']);
  });

  it('refuses a document naming another issuer, then recovers when discovery is fixed', async () => {
    const k1 = await makeKey('k1');
    const server = await startJwksServer(jwks(k1));
    cleanup.push(() => server.close());
    const issuer = server.origin;
    let documentIssuer = 'https://evil.test';
    server.routes.set('/.well-known/openid-configuration', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer: documentIssuer, jwks_uri: server.url }));
    });
    const events: AuthnEvent[] = [];
    const authn = compile(
      { d: { issuer, audiences: [AUDIENCE], discovery: true, jwks: { cooldownMs: 100 } } },
      { onEvent: (e) => events.push(e) },
    );
    await authn.ready();
    const token = await mint(k1, { iss: issuer });
    expect(await verdict(authn, 'd', token)).toBe('jwt.jwks_unavailable');
    expect(events).toContainEqual(expect.objectContaining({ type: 'keys_error', error: expect.stringContaining('evil.test') }));
    expect(server.paths).not.toContain('/jwks.json');
    documentIssuer = issuer;
    await until(async () => (await verdict(authn, 'd', token)) === 'allow');
  });

  it('discovery URL and document rules', () => {
    expect(discoveryUrl('https://id.example.com')).toBe('https://id.example.com/.well-known/openid-configuration');
    expect(discoveryUrl('https://id.example.com/realms/x/')).toBe(
      'https://id.example.com/realms/x/.well-known/openid-configuration',
    );
    const issuer = 'https://id.example.com';
    expect(jwksUriFromDiscovery({ issuer, jwks_uri: 'https://id.example.com/keys' }, issuer)).toBe('https://id.example.com/keys');
    expect(() => jwksUriFromDiscovery({ issuer, jwks_uri: 'http://id.example.com/keys' }, issuer)).toThrow(/cleartext/);
    expect(() => jwksUriFromDiscovery({ issuer, jwks_uri: 'file:///etc/passwd' }, issuer)).toThrow(/http/);
    expect(() => jwksUriFromDiscovery({ issuer }, issuer)).toThrow(/jwks_uri/);
    expect(() => jwksUriFromDiscovery({ issuer: `${issuer}/`, jwks_uri: 'https://x/' }, issuer)).toThrow(/issuer/);
    expect(() => jwksUriFromDiscovery([], issuer)).toThrow(/object/);
  });
});
