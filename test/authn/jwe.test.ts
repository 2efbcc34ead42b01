/**
 * Encrypted tokens (JWE around a signed JWT): a provider with `decrypt` unwraps, then
 * verifies the inner token exactly as a plain one. Every envelope failure is
 * `jwt.decrypt_failed`; inner failures keep their own codes; the client always sees
 * `jwt.invalid`. Config mistakes about the key fail at load.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CompactEncrypt,
  decodeProtectedHeader,
  exportJWK,
  exportPKCS8,
  exportSPKI,
  generateKeyPair,
  type CompactJWEHeaderParameters,
  type CryptoKey,
} from 'jose';
import { authnChecks, resolveAuthnPaths } from '../../src/authn/checks.js';
import { encryptToken, jweShapeProblem, looksLikeJwe } from '../../src/authn/jwe.js';
import { compileAuthn, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
import { publicCode } from '../../src/core/errors.js';
import { renderProblem } from '../../src/core/problem.js';
import type { Stage } from '../../src/core/stage.js';
import {
  AUDIENCE,
  authnConfig,
  b64,
  bearer,
  expectDenial,
  ISSUER,
  makeKey,
  mint,
  nowSec,
  requestContext,
  runStage,
  schemaErrors,
  type TestKey,
} from './helpers.js';

interface EncKey {
  publicKey: CryptoKey;
  privateKey: CryptoKey;
}

let dir: string;
let signing: TestKey;
let ec: EncKey;
let rsa: EncKey;
let other: EncKey;
let ecFile: string;
let rsaJwkFile: string;
let authn: CompiledAuthn;
const stages: Record<string, Stage> = {};

const encKey = async (alg: string): Promise<EncKey> => generateKeyPair(alg, { extractable: true });

const base = () => ({ issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['ES256'], publicKeys: [{ key: signing.pem }] });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'bulwark-jwe-'));
  signing = await makeKey('s1', 'ES256');
  ec = await encKey('ECDH-ES+A256KW');
  rsa = await encKey('RSA-OAEP-256');
  other = await encKey('ECDH-ES+A256KW');
  ecFile = join(dir, 'ec.pem');
  writeFileSync(ecFile, await exportPKCS8(ec.privateKey));
  rsaJwkFile = join(dir, 'rsa.jwk.json');
  writeFileSync(rsaJwkFile, JSON.stringify(await exportJWK(rsa.privateKey)));
  authn = compileAuthn(
    authnConfig({
      providers: {
        ec: { ...base(), decrypt: { keyFile: ecFile } },
        rsa: { ...base(), decrypt: { keyFile: rsaJwkFile } },
        strict: { ...base(), decrypt: { keyFile: ecFile, required: true } },
        cbc: { ...base(), decrypt: { keyFile: ecFile, encryptions: ['A256CBC-HS512'] } },
        plain: base(),
      },
    }),
  );
  await authn.ready();
  for (const name of ['ec', 'rsa', 'strict', 'cbc', 'plain']) stages[name] = createAuthnStage({ provider: name }, authn)!;
});

afterAll(() => authn.close());

/** Runs a token through a provider's stage and returns the denial code, checking the 401 contract. */
async function codeOf(token: string, provider = 'ec'): Promise<string> {
  authn.cache.clear();
  const ctx = requestContext(bearer(token));
  const denial = expectDenial(await runStage(stages[provider]!, ctx));
  expect(denial.status).toBe(401);
  expect(denial.headers?.['www-authenticate']).toBe('Bearer realm="bulwark", error="invalid_token"');
  expect(ctx.identity).toBeNull();
  expect(ctx.decisions.at(-1)).toMatchObject({ stage: 'authn', outcome: 'deny', code: denial.code, detail: { provider } });
  const problem = JSON.parse(renderProblem(denial, 'r1')) as Record<string, unknown>;
  expect(problem['code']).toBe('jwt.invalid');
  expect(problem['title']).toBe('Invalid token');
  return denial.code;
}

/** Arbitrary protected header and plaintext, encrypted for real (jose refuses nothing on this side). */
async function seal(
  plaintext: string,
  key: CryptoKey,
  header: CompactJWEHeaderParameters & Record<string, unknown> = { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT' },
): Promise<string> {
  return new CompactEncrypt(Buffer.from(plaintext)).setProtectedHeader(header).encrypt(key);
}

const ecJwe = async (claims: Record<string, unknown> = {}) =>
  encryptToken(await mint(signing, claims), ec.publicKey, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });

/** Flips one bit in the middle of a decoded part of a compact JWE. */
function tamper(token: string, part: number): string {
  const parts = token.split('.');
  const bytes = Buffer.from(parts[part]!, 'base64url');
  bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0x01;
  parts[part] = bytes.toString('base64url');
  return parts.join('.');
}

describe('accepted', () => {
  it('ECDH-ES+A256KW / A256GCM around an ES256 token: identity, then a cache hit on the outer token', async () => {
    authn.cache.clear();
    const token = await ecJwe({ sub: 'alice', roles: ['viewer'] });
    expect(looksLikeJwe(token)).toBe(true);
    expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT' });

    const first = requestContext(bearer(token));
    expect(await runStage(stages['ec']!, first)).toBeNull();
    expect(first.identity).toMatchObject({ subject: 'alice', provider: 'ec', keyId: 's1' });
    expect(first.decisions.at(-1)).toMatchObject({ outcome: 'allow', code: 'jwt.valid', detail: { cached: false } });

    const hits = authn.cache.hits;
    const second = requestContext(bearer(token));
    // A hit is synchronous: no decryption, no verification.
    const decision = stages['ec']!.run(second);
    expect(decision).toBeNull();
    expect(second.identity?.subject).toBe('alice');
    expect(second.decisions.at(-1)).toMatchObject({ outcome: 'allow', code: 'jwt.valid', detail: { cached: true } });
    expect(authn.cache.hits).toBe(hits + 1);
  });

  it('RSA-OAEP-256 / A256GCM with a private JWK key file', async () => {
    const token = await encryptToken(await mint(signing, { sub: 'bob' }), rsa.publicKey, { alg: 'RSA-OAEP-256', enc: 'A256GCM' });
    const ctx = requestContext(bearer(token));
    expect(await runStage(stages['rsa']!, ctx)).toBeNull();
    expect(ctx.identity).toMatchObject({ subject: 'bob', provider: 'rsa' });
  });

  it('cty is compared case-insensitively, `application/jwt` too', async () => {
    for (const cty of ['jwt', 'application/JWT']) {
      const token = await seal(await mint(signing), ec.publicKey, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty });
      authn.cache.clear();
      expect(await runStage(stages['ec']!, requestContext(bearer(token)))).toBeNull();
    }
  });

  it('a configured `encryptions` list replaces the default', async () => {
    const cbc = await encryptToken(await mint(signing), ec.publicKey, { alg: 'ECDH-ES+A256KW', enc: 'A256CBC-HS512' });
    expect(await runStage(stages['cbc']!, requestContext(bearer(cbc)))).toBeNull();
    expect(await codeOf(await ecJwe(), 'cbc')).toBe('jwt.decrypt_failed');
  });

  it('plain signed tokens still pass a provider with decrypt (required: false)', async () => {
    expect(await runStage(stages['ec']!, requestContext(bearer(await mint(signing))))).toBeNull();
  });
});

describe('envelope failures → jwt.decrypt_failed', () => {
  it('encrypted for another key', async () => {
    const token = await encryptToken(await mint(signing), other.publicKey, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
    expect(await codeOf(token)).toBe('jwt.decrypt_failed');
  });

  it('tampered encrypted key, iv, ciphertext or tag', async () => {
    const rsaToken = await encryptToken(await mint(signing), rsa.publicKey, { alg: 'RSA-OAEP-256', enc: 'A256GCM' });
    expect(await codeOf(tamper(rsaToken, 1), 'rsa')).toBe('jwt.decrypt_failed');
    const token = await ecJwe();
    for (const part of [2, 3, 4]) expect(await codeOf(tamper(token, part)), `part ${part}`).toBe('jwt.decrypt_failed');
  });

  it('tampered protected header (the AAD), even with a harmless change', async () => {
    const token = await ecJwe();
    const [header, ...rest] = token.split('.');
    const altered = b64({ ...(JSON.parse(Buffer.from(header!, 'base64url').toString()) as object), kid: 'x' });
    expect(await codeOf([altered, ...rest].join('.'))).toBe('jwt.decrypt_failed');
  });

  it('a key management algorithm outside the allow-list: RSA1_5, RSA-OAEP, dir, A256KW', async () => {
    const junk = (n: number) => randomBytes(n).toString('base64url');
    for (const alg of ['RSA1_5', 'dir', 'A256KW', 'PBES2-HS256+A128KW']) {
      const token = `${b64({ alg, enc: 'A256GCM', cty: 'JWT' })}.${alg === 'dir' ? '' : junk(256)}.${junk(12)}.${junk(64)}.${junk(16)}`;
      expect(await codeOf(token, 'rsa'), alg).toBe('jwt.decrypt_failed');
    }
    // Supported by jose and by the key, but not allowed by the (default) config.
    const rsaJwk = await exportJWK(rsa.publicKey); // the CryptoKey is bound to SHA-256
    const oaep = await encryptToken(await mint(signing), rsaJwk, { alg: 'RSA-OAEP', enc: 'A256GCM' });
    expect(await codeOf(oaep, 'rsa')).toBe('jwt.decrypt_failed');
  });

  it('a content encryption outside the allow-list', async () => {
    const token = await encryptToken(await mint(signing), ec.publicKey, { alg: 'ECDH-ES+A256KW', enc: 'A128GCM' });
    expect(await codeOf(token)).toBe('jwt.decrypt_failed');
  });

  it('an allowed algorithm the key cannot serve (RSA-OAEP-256 to an EC key)', async () => {
    const token = await encryptToken(await mint(signing), rsa.publicKey, { alg: 'RSA-OAEP-256', enc: 'A256GCM' });
    expect(await codeOf(token, 'ec')).toBe('jwt.decrypt_failed');
  });

  it('compressed plaintext (zip: DEF) and unknown zip values', async () => {
    const inner = await mint(signing);
    const zipped = await seal(inner, ec.publicKey, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT', zip: 'DEF' });
    expect(await codeOf(zipped)).toBe('jwt.decrypt_failed');
    const [, ...rest] = (await ecJwe()).split('.');
    const odd = [b64({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT', zip: 'GZIP' }), ...rest].join('.');
    expect(await codeOf(odd)).toBe('jwt.decrypt_failed');
  });

  it('missing or other cty', async () => {
    const inner = await mint(signing);
    for (const cty of [undefined, 'json', 'at+jwt', 1]) {
      const header = { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', ...(cty === undefined ? {} : { cty }) };
      expect(await codeOf(await seal(inner, ec.publicKey, header as CompactJWEHeaderParameters)), String(cty)).toBe(
        'jwt.decrypt_failed',
      );
    }
  });

  it('unknown crit', async () => {
    const token = await new CompactEncrypt(Buffer.from(await mint(signing)))
      .setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT', crit: ['urn:x'], 'urn:x': true })
      .encrypt(ec.publicKey, { crit: { 'urn:x': true } });
    expect(await codeOf(token)).toBe('jwt.decrypt_failed');
  });
});

describe('the inner token is verified as a plain one', () => {
  it('a bad inner signature: jwt.signature_invalid on the decision, jwt.invalid for the client', async () => {
    const [h, p, s] = (await mint(signing)).split('.') as [string, string, string];
    const sig = Buffer.from(s, 'base64url');
    sig[5] = sig[5]! ^ 0x01;
    const token = await encryptToken(`${h}.${p}.${sig.toString('base64url')}`, ec.publicKey, {
      alg: 'ECDH-ES+A256KW',
      enc: 'A256GCM',
    });
    const code = await codeOf(token);
    expect(code).toBe('jwt.signature_invalid');
    expect(publicCode(code)).toBe('jwt.invalid');
  });

  it('inner claims are checked (wrong issuer, expired)', async () => {
    const wrongIss = await encryptToken(await mint(signing, { iss: 'https://evil' }), ec.publicKey, {
      alg: 'ECDH-ES+A256KW',
      enc: 'A256GCM',
    });
    expect(await codeOf(wrongIss)).toBe('jwt.issuer_mismatch');
    const expired = await ecJwe({ iat: nowSec() - 7200, exp: nowSec() - 3600 });
    expect(await codeOf(expired)).toBe('jwt.expired');
  });

  it('unsigned inner token (alg: none) → jwt.alg_not_allowed', async () => {
    const unsigned = `${b64({ alg: 'none' })}.${b64({ iss: ISSUER, aud: AUDIENCE, sub: 'root', exp: nowSec() + 60 })}.`;
    expect(await codeOf(await seal(unsigned, ec.publicKey))).toBe('jwt.alg_not_allowed');
  });

  it('a JWE inside the JWE (nesting beyond one level) → jwt.malformed', async () => {
    const inner = await ecJwe();
    expect(await codeOf(await seal(inner, ec.publicKey))).toBe('jwt.malformed');
  });

  it('an inner JWS that itself claims to nest (cty: JWT) → jwt.malformed', async () => {
    const inner = await mint(signing, {}, { cty: 'JWT' });
    expect(await codeOf(await seal(inner, ec.publicKey))).toBe('jwt.malformed');
  });

  it('plaintext that is no JWS at all → jwt.malformed', async () => {
    for (const plaintext of ['{"sub":"root"}', 'a.b', '\u00ff\u00fe.x.y']) {
      expect(await codeOf(await seal(plaintext, ec.publicKey)), plaintext).toBe('jwt.malformed');
    }
  });
});

describe('shape and provider mode', () => {
  it('a JWE to a provider without decrypt stays jwt.malformed', async () => {
    expect(await codeOf(await ecJwe(), 'plain')).toBe('jwt.malformed');
  });

  it('JWE syntax is checked before jose: bad alphabet, empty parts, non-canonical base64url', async () => {
    const token = await ecJwe();
    const parts = token.split('.');
    expect(jweShapeProblem(token)).toBeNull();
    expect(await codeOf(`${parts[0]}.${parts[1]}.${parts[2]}.${parts[3]}+.${parts[4]}`)).toBe('jwt.malformed');
    expect(await codeOf(`${parts[0]}.${parts[1]}..${parts[3]}.${parts[4]}`)).toBe('jwt.malformed');
    // A 16-byte tag is 22 base64url characters: the last one carries 4 unused bits.
    const tag = parts[4]!;
    const last = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.indexOf(tag.at(-1)!);
    const sloppy = tag.slice(0, -1) + 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'[last ^ 1];
    expect(jweShapeProblem([...parts.slice(0, 4), sloppy].join('.'))).not.toBeNull();
    expect(await codeOf([...parts.slice(0, 4), sloppy].join('.'))).toBe('jwt.malformed');
  });

  it('required: a plain JWS → jwt.encryption_required; a JWE passes; garbage stays jwt.malformed', async () => {
    expect(await codeOf(await mint(signing), 'strict')).toBe('jwt.encryption_required');
    expect(publicCode('jwt.encryption_required')).toBe('jwt.invalid');
    authn.cache.clear();
    expect(await runStage(stages['strict']!, requestContext(bearer(await ecJwe())))).toBeNull();
    expect(await codeOf('not-a-token', 'strict')).toBe('jwt.malformed');
  });

  it('several providers on one token source: a JWE goes to those that can decrypt', async () => {
    const group = compileAuthn(
      authnConfig({
        providers: {
          other: { ...base(), issuer: 'https://other.test' },
          enc: { ...base(), decrypt: { keyFile: ecFile } },
        },
      }),
    );
    try {
      const any = createAuthnStage({ anyOf: ['other', 'enc'] }, group)!;
      const ctx = requestContext(bearer(await ecJwe()));
      expect(await runStage(any, ctx)).toBeNull();
      expect(ctx.identity?.provider).toBe('enc');
      const noDecrypt = createAuthnStage({ anyOf: ['other', 'other'] }, group)!;
      expect(expectDenial(await runStage(noDecrypt, requestContext(bearer(await ecJwe())))).code).toBe('jwt.malformed');
      const wrongKey = await encryptToken(await mint(signing), other.publicKey, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
      expect(expectDenial(await runStage(any, requestContext(bearer(wrongKey)))).code).toBe('jwt.decrypt_failed');
    } finally {
      group.close();
    }
  });
});

describe('encryptToken (issuer side)', () => {
  it('sets cty: JWT and the kid; wraps only signed compact JWS', async () => {
    const token = await encryptToken(await mint(signing), ec.publicKey, { alg: 'ECDH-ES', enc: 'A128GCM', kid: 'gw-1' });
    expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'ECDH-ES', enc: 'A128GCM', cty: 'JWT', kid: 'gw-1' });
    expect(token.split('.')[1]).toBe(''); // direct key agreement: no encrypted key
    const opts = { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' } as const;
    await expect(encryptToken('a.b.', ec.publicKey, opts)).rejects.toBeInstanceOf(TypeError);
    await expect(encryptToken(token, ec.publicKey, opts)).rejects.toBeInstanceOf(TypeError);
    await expect(encryptToken(await mint(signing), ec.publicKey, { alg: 'RSA1_5', enc: 'A256GCM' })).rejects.toBeInstanceOf(
      TypeError,
    );
    await expect(encryptToken(await mint(signing), ec.publicKey, { alg: 'ECDH-ES', enc: 'A192GCM' })).rejects.toBeInstanceOf(
      TypeError,
    );
  });
});

describe('config', () => {
  const issuesOf = (provider: Record<string, unknown>) => {
    const issues: { path: string; code: string; severity: string }[] = [];
    authnChecks({ authn: authnConfig({ providers: { p: provider } }) }, (path, code, _message, severity = 'error') =>
      issues.push({ path: path.join('.'), code, severity }),
    );
    return issues;
  };
  const keyIssue = [{ path: 'authn.providers.p.decrypt.keyFile', code: 'config.authn_decrypt_key', severity: 'error' }];

  it('schema: defaults, closed object, only the listed algorithms', () => {
    const config = authnConfig({ providers: { p: { ...base(), decrypt: { keyFile: ecFile } } } });
    expect(config.providers['p']!.decrypt).toEqual({
      keyFile: ecFile,
      algorithms: ['ECDH-ES+A256KW', 'RSA-OAEP-256'],
      encryptions: ['A256GCM'],
      required: false,
    });
    const errors = (decrypt: unknown) => schemaErrors({ providers: { p: { ...base(), decrypt } } });
    expect(errors({ keyFile: ecFile, typo: 1 }).length).toBeGreaterThan(0);
    expect(errors({}).length).toBeGreaterThan(0);
    for (const alg of ['RSA1_5', 'dir', 'A256KW', 'PBES2-HS256+A128KW', 'none']) {
      expect(errors({ keyFile: ecFile, algorithms: [alg] }).length, alg).toBeGreaterThan(0);
    }
    expect(errors({ keyFile: ecFile, encryptions: ['A192GCM'] }).length).toBeGreaterThan(0);
    expect(errors({ keyFile: ecFile, algorithms: [] }).length).toBeGreaterThan(0);
  });

  it('usable private keys pass the load checks (PEM and JWK)', () => {
    expect(issuesOf({ ...base(), decrypt: { keyFile: ecFile } })).toEqual([]);
    expect(issuesOf({ ...base(), decrypt: { keyFile: rsaJwkFile } })).toEqual([]);
  });

  it('a missing key file, a public key, or a key unfit for the algorithms is a load error', async () => {
    const pub = join(dir, 'public.pem');
    writeFileSync(pub, await exportSPKI(ec.publicKey));
    const pubJwk = join(dir, 'public.jwk.json');
    writeFileSync(pubJwk, JSON.stringify(await exportJWK(ec.publicKey)));
    const sigJwk = join(dir, 'sig.jwk.json');
    writeFileSync(sigJwk, JSON.stringify({ ...(await exportJWK(ec.privateKey)), use: 'sig' }));
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
    const ed = join(dir, 'ed.pem');
    writeFileSync(ed, await exportPKCS8((await generateKeyPair('EdDSA', { extractable: true })).privateKey));
    for (const keyFile of [join(dir, 'missing.pem'), pub, pubJwk, sigJwk, garbage, ed]) {
      expect(issuesOf({ ...base(), decrypt: { keyFile } }), keyFile).toEqual(keyIssue);
    }
    // An RSA key where only ECDH algorithms are allowed.
    expect(issuesOf({ ...base(), decrypt: { keyFile: rsaJwkFile, algorithms: ['ECDH-ES+A256KW'] } })).toEqual(keyIssue);
  });

  it('compile refuses what the checks refuse, with a TypeError', async () => {
    const pub = join(dir, 'public2.pem');
    writeFileSync(pub, await exportSPKI(ec.publicKey));
    for (const keyFile of [join(dir, 'missing.pem'), pub]) {
      expect(() => compileAuthn(authnConfig({ providers: { p: { ...base(), decrypt: { keyFile } } } }))).toThrow(TypeError);
    }
  });

  it('a relative keyFile resolves against the config directory', () => {
    const config = authnConfig({ providers: { p: { ...base(), decrypt: { keyFile: 'keys/gw.pem' } } } });
    resolveAuthnPaths(config, '/etc/bulwark');
    expect(config.providers['p']!.decrypt!.keyFile).toBe('/etc/bulwark/keys/gw.pem');
  });
});
