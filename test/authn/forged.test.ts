/**
 * The forged-token class: every token here is hostile or broken, and each must give
 * a 401 with a precise reason code (never a throw, never a 5xx), without any
 * outbound request driven by the token's content.
 */
import { createHmac, createSign, KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportJWK, SignJWT } from 'jose';
import { renderProblem } from '../../src/core/problem.js';
import { compileAuthn, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
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
  startJwksServer,
  jwks,
  type JwksServer,
  type TestKey,
} from './helpers.js';

let server: JwksServer;
let trap: JwksServer;
let key: TestKey;
let attacker: TestKey;
let authn: CompiledAuthn;
let stage: Stage;

beforeAll(async () => {
  key = await makeKey('k1');
  attacker = await makeKey('k1'); // same kid, different key material
  server = await startJwksServer(jwks(key));
  trap = await startJwksServer(jwks(attacker));
  authn = compileAuthn(
    authnConfig({
      providers: {
        main: {
          issuer: ISSUER,
          audiences: [AUDIENCE],
          algorithms: ['RS256', 'ES256'],
          jwksUrl: server.url,
          // Long cooldown: nothing in this file may cause a second fetch.
          jwks: { cooldownMs: 600_000, cacheTtlMs: 600_000, maxStaleMs: 3_600_000 },
        },
      },
    }),
  );
  await authn.ready();
  stage = createAuthnStage({ provider: 'main' }, authn)!;
});

afterAll(async () => {
  authn.close();
  await server.close();
  await trap.close();
});

/** Runs one token through the stage and returns the denial code, checking the 401 contract. */
async function codeOf(token: string): Promise<string> {
  authn.cache.clear();
  const ctx = requestContext(bearer(token));
  const denial = expectDenial(await runStage(stage, ctx));
  expect(denial.status).toBe(401);
  expect(denial.detail).toBeUndefined();
  expect(denial.headers?.['www-authenticate']).toBe('Bearer realm="bulwark", error="invalid_token"');
  expect(ctx.identity).toBeNull();
  expect(ctx.decisions.at(-1)).toMatchObject({ stage: 'authn', outcome: 'deny', code: denial.code });
  // The client-facing problem names no reason beyond the generic title.
  expect(JSON.parse(renderProblem(denial, 'r1')).title).toBe('Invalid token');
  return denial.code;
}

const parts = (token: string) => token.split('.') as [string, string, string];

/**
 * Signs arbitrary header + payload bytes with the real key: a valid signature over hostile
 * content. node:crypto, because jose (rightly) refuses to produce most of these.
 */
function signRaw(header: Record<string, unknown>, payload: string | Uint8Array, encodePayload = true): string {
  const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
  const input = `${b64({ alg: 'RS256', kid: 'k1', ...header })}.${encodePayload ? bytes.toString('base64url') : bytes.toString('latin1')}`;
  return `${input}.${createSign('RSA-SHA256').update(input).sign(KeyObject.from(key.privateKey), 'base64url')}`;
}

describe('sanity', () => {
  it('a well-formed token from the real key is accepted', async () => {
    const ctx = requestContext(bearer(await mint(key)));
    expect(await runStage(stage, ctx)).toBeNull();
    expect(ctx.identity?.subject).toBe('alice');
  });
});

describe('algorithm attacks', () => {
  for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
    it(`alg: ${alg} (unsigned) → jwt.alg_not_allowed`, async () => {
      const token = `${b64({ alg, typ: 'JWT' })}.${b64({ iss: ISSUER, aud: AUDIENCE, sub: 'root', exp: nowSec() + 60 })}.`;
      expect(await codeOf(token)).toBe('jwt.alg_not_allowed');
      const withSig = `${token}${Buffer.from('x').toString('base64url')}`;
      expect(await codeOf(withSig)).toBe('jwt.alg_not_allowed');
    });
  }

  it('HS256 signed with the RSA public key as the HMAC secret → jwt.alg_not_allowed', async () => {
    const header = b64({ alg: 'HS256', kid: 'k1' });
    const payload = b64({ iss: ISSUER, aud: AUDIENCE, sub: 'root', exp: nowSec() + 60 });
    for (const secret of [key.pem, JSON.stringify(key.jwk)]) {
      const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
      expect(await codeOf(`${header}.${payload}.${sig}`)).toBe('jwt.alg_not_allowed');
    }
  });

  it('an algorithm outside the allow-list (RS512, EdDSA) → jwt.alg_not_allowed', async () => {
    const rs512 = await makeKey('k1', 'RS512');
    expect(await codeOf(await mint(rs512))).toBe('jwt.alg_not_allowed');
    const ed = await makeKey('k1', 'EdDSA');
    expect(await codeOf(await mint(ed))).toBe('jwt.alg_not_allowed');
  });

  it('alg of the wrong type → jwt.malformed', async () => {
    const token = `${b64({ alg: 256 })}.${b64({ sub: 'x' })}.AAAA`;
    expect(await codeOf(token)).toBe('jwt.malformed');
  });
});

describe('embedded keys and key URLs are never used', () => {
  it('jwk / jku / x5u / x5c in the header: signature checked against the configured key only, no fetch', async () => {
    const before = server.hits;
    const attackerJwk = await exportJWK(attacker.publicKey);
    const headers = [
      { jwk: attackerJwk },
      { jwk: attackerJwk, kid: undefined },
      { jku: trap.url },
      { jku: trap.url, kid: 'unknown-kid' },
      { x5u: `${trap.origin}/cert.pem` },
      { x5c: ['MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA'] },
    ];
    for (const header of headers) {
      const token = await mint(attacker, {}, header);
      const code = await codeOf(token);
      expect(['jwt.signature_invalid', 'jwt.unknown_kid']).toContain(code);
      if (header.kid !== 'unknown-kid') expect(code).toBe('jwt.signature_invalid');
    }
    expect(trap.hits).toBe(0);
    expect(server.hits).toBe(before);
  });
});

describe('hostile kid values', () => {
  const kids = [
    '../../etc/passwd',
    '/dev/zero',
    "' OR '1'='1",
    'k1; DROP TABLE keys;--',
    '__proto__',
    'constructor',
    'toString',
    'hasOwnProperty',
    '',
    'k1\u0000',
  ];
  for (const kid of kids) {
    it(`kid ${JSON.stringify(kid)} → jwt.unknown_kid, no fetch`, async () => {
      const before = server.hits;
      expect(await codeOf(await mint(key, {}, { kid }))).toBe('jwt.unknown_kid');
      expect(server.hits).toBe(before);
    });
  }

  it('kid of the wrong type → jwt.malformed', async () => {
    for (const kid of [1, {}, ['k1'], null]) {
      const token = signRaw({ kid }, JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub: 'a', exp: nowSec() + 60 }));
      expect(await codeOf(token)).toBe('jwt.malformed');
    }
  });
});

describe('header extensions', () => {
  it('unknown crit → jwt.crit_unsupported', async () => {
    const token = signRaw(
      { crit: ['http://example.com/ext'], 'http://example.com/ext': true },
      JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub: 'a', exp: nowSec() + 60 }),
    );
    expect(await codeOf(token)).toBe('jwt.crit_unsupported');
  });

  it('malformed crit → jwt.malformed', async () => {
    for (const crit of [[], 'b64', [1]]) {
      const token = signRaw({ crit }, JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub: 'a', exp: nowSec() + 60 }));
      expect(await codeOf(token)).toBe('jwt.malformed');
    }
  });

  it('b64: false (unencoded payload) → jwt.malformed', async () => {
    const token = signRaw({ b64: false, crit: ['b64'] }, 'abc', false);
    expect(await codeOf(token)).toBe('jwt.malformed');
    // b64: false without crit is ignored by JWS: the payload is base64url-decoded as usual, and is no JSON object.
    expect(await codeOf(signRaw({ b64: false }, 'abc'))).toBe('jwt.malformed');
  });

  it('nested JWT (cty: JWT) → jwt.malformed', async () => {
    const inner = await mint(key);
    for (const cty of ['JWT', 'jwt', 'application/jwt']) {
      const token = signRaw({ cty }, JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub: 'a', exp: nowSec() + 60, inner }));
      expect(await codeOf(token)).toBe('jwt.malformed');
    }
  });
});

describe('signature tampering', () => {
  it('empty signature → jwt.signature_invalid', async () => {
    const [h, p] = parts(await mint(key));
    expect(await codeOf(`${h}.${p}.`)).toBe('jwt.signature_invalid');
  });

  it('signature truncated by bytes → jwt.signature_invalid; by one character → jwt.malformed', async () => {
    const [h, p, s] = parts(await mint(key));
    const bytes = Buffer.from(s, 'base64url');
    expect(await codeOf(`${h}.${p}.${bytes.subarray(0, bytes.length - 10).toString('base64url')}`)).toBe('jwt.signature_invalid');
    expect(await codeOf(`${h}.${p}.${s.slice(0, -1)}`)).toBe('jwt.malformed');
  });

  it('altered signature byte → jwt.signature_invalid', async () => {
    const [h, p, s] = parts(await mint(key));
    const bytes = Buffer.from(s, 'base64url');
    bytes[10] = bytes[10]! ^ 0x01;
    expect(await codeOf(`${h}.${p}.${bytes.toString('base64url')}`)).toBe('jwt.signature_invalid');
  });

  it('altered payload (same signature) → jwt.signature_invalid', async () => {
    const [h, , s] = parts(await mint(key));
    const forged = b64({ iss: ISSUER, aud: AUDIENCE, sub: 'root', exp: nowSec() + 60 });
    expect(await codeOf(`${h}.${forged}.${s}`)).toBe('jwt.signature_invalid');
  });

  it('signature of another token → jwt.signature_invalid', async () => {
    const [h, p] = parts(await mint(key, { sub: 'alice' }));
    const [, , s] = parts(await mint(key, { sub: 'bob' }));
    expect(await codeOf(`${h}.${p}.${s}`)).toBe('jwt.signature_invalid');
  });
});

describe('non-canonical base64url', () => {
  it('padding, "+" and "/" and whitespace → jwt.malformed', async () => {
    const [h, p, s] = parts(await mint(key));
    const standard = Buffer.from(s, 'base64url').toString('base64');
    expect(standard).toMatch(/[+/=]/);
    expect(await codeOf(`${h}.${p}.${standard}`)).toBe('jwt.malformed');
    expect(await codeOf(`${h}.${p}.${s}==`)).toBe('jwt.malformed');
    expect(await codeOf(`${h}=.${p}.${s}`)).toBe('jwt.malformed');
    expect(await codeOf(`${h}.${p}=.${s}`)).toBe('jwt.malformed');
    expect(await codeOf(`${h}.${p}.${s.slice(0, 20)} ${s.slice(20)}`)).toBe('jwt.malformed');
    expect(await codeOf(`${h}.${p}.${s.slice(0, 20)}%2B${s.slice(20)}`)).toBe('jwt.malformed');
  });

  it('non-zero trailing bits in the signature (same bytes, another spelling) → jwt.malformed', async () => {
    const [h, p, s] = parts(await mint(key));
    // 256 signature bytes = 342 characters: the last one carries 4 unused bits.
    expect(s.length % 4).toBe(2);
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const last = alphabet.indexOf(s.at(-1)!);
    const respelled = `${s.slice(0, -1)}${alphabet[last | 0b0001]}`;
    expect(respelled).not.toBe(s);
    expect(Buffer.from(respelled, 'base64url').equals(Buffer.from(s, 'base64url'))).toBe(true);
    expect(await codeOf(`${h}.${p}.${respelled}`)).toBe('jwt.malformed');
  });

  it('non-canonical header/payload spelling breaks the signature → jwt.signature_invalid', async () => {
    const [h, p, s] = parts(await mint(key));
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const respell = (seg: string) => {
      const bits = [0, 0, 4, 2][seg.length % 4]!;
      if (bits === 0) return null;
      const last = alphabet.indexOf(seg.at(-1)!);
      return `${seg.slice(0, -1)}${alphabet[last | 1]}`;
    };
    const h2 = respell(h);
    if (h2 !== null && h2 !== h) expect(await codeOf(`${h2}.${p}.${s}`)).toBe('jwt.signature_invalid');
    const p2 = respell(p);
    if (p2 !== null && p2 !== p) expect(await codeOf(`${h}.${p2}.${s}`)).toBe('jwt.signature_invalid');
  });
});

describe('claims of the wrong type or value', () => {
  const base = () => ({ iss: ISSUER, aud: AUDIENCE, sub: 'a', exp: nowSec() + 60 });

  it('time claims that are not numbers → jwt.malformed', async () => {
    const cases: Record<string, unknown>[] = [
      { exp: String(nowSec() + 60) },
      { exp: { $gt: 0 } },
      { exp: [nowSec() + 60] },
      { exp: null },
      { nbf: 'yesterday' },
      { nbf: {} },
      { iat: '0' },
      { iat: [] },
      { iat: true },
    ];
    for (const override of cases) {
      const token = signRaw({}, JSON.stringify({ ...base(), ...override }));
      expect(await codeOf(token), JSON.stringify(override)).toBe('jwt.malformed');
    }
  });

  it('time claims past the range of a double (JSON 1e400 parses to Infinity) → jwt.malformed', async () => {
    // JSON.stringify cannot write these: the payload text is spliced by hand.
    const body = JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub: 'a' }).slice(0, -1);
    for (const claims of ['"exp":1e400', `"exp":${nowSec() + 60},"nbf":-1e400`, `"exp":${nowSec() + 60},"iat":1e999`]) {
      const token = signRaw({}, `${body},${claims}}`);
      expect(await codeOf(token), claims).toBe('jwt.malformed');
    }
  });

  it('missing exp → jwt.claim_missing', async () => {
    const { exp: _exp, ...rest } = base();
    expect(await codeOf(signRaw({}, JSON.stringify(rest)))).toBe('jwt.claim_missing');
  });

  it('missing or non-matching audiences → jwt.audience_mismatch', async () => {
    const { aud: _aud, ...noAud } = base();
    expect(await codeOf(signRaw({}, JSON.stringify(noAud)))).toBe('jwt.audience_mismatch');
    for (const aud of ['api://other', ['api://other', 'api://another'], [], 42, [42], { aud: AUDIENCE }]) {
      expect(await codeOf(signRaw({}, JSON.stringify({ ...base(), aud }))), JSON.stringify(aud)).toBe('jwt.audience_mismatch');
    }
  });

  it('an array audience containing ours is accepted', async () => {
    const token = signRaw({}, JSON.stringify({ ...base(), aud: ['api://other', AUDIENCE] }));
    expect(await runStage(stage, requestContext(bearer(token)))).toBeNull();
  });

  it('missing or wrong issuer → jwt.issuer_mismatch', async () => {
    const { iss: _iss, ...noIss } = base();
    expect(await codeOf(signRaw({}, JSON.stringify(noIss)))).toBe('jwt.issuer_mismatch');
    for (const iss of ['https://evil.test', `${ISSUER}/`, ISSUER.toUpperCase(), [ISSUER], null]) {
      expect(await codeOf(signRaw({}, JSON.stringify({ ...base(), iss })))).toBe('jwt.issuer_mismatch');
    }
  });

  it('sub missing → jwt.claim_missing; sub not a string → jwt.malformed', async () => {
    const { sub: _sub, ...noSub } = base();
    expect(await codeOf(signRaw({}, JSON.stringify(noSub)))).toBe('jwt.claim_missing');
    for (const sub of [42, ['alice'], {}, '']) {
      expect(await codeOf(signRaw({}, JSON.stringify({ ...base(), sub })))).toBe('jwt.malformed');
    }
  });

  it('expired and not-yet-valid tokens', async () => {
    expect(await codeOf(await mint(key, { exp: nowSec() - 3600 }))).toBe('jwt.expired');
    expect(await codeOf(await mint(key, { nbf: nowSec() + 3600 }))).toBe('jwt.not_yet_valid');
  });
});

describe('payloads that are not objects', () => {
  for (const payload of ['[1,2,3]', '"a string"', '42', 'null', 'true', '{"a":1', 'not json', '']) {
    it(`payload ${JSON.stringify(payload)} → jwt.malformed`, async () => {
      expect(await codeOf(signRaw({}, payload))).toBe('jwt.malformed');
    });
  }

  it('payload that is not UTF-8 → jwt.malformed', async () => {
    expect(await codeOf(signRaw({}, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])))).toBe('jwt.malformed');
  });

  it('__proto__ and constructor claims are plain data', async () => {
    const token = signRaw(
      {},
      `{"iss":"${ISSUER}","aud":"${AUDIENCE}","sub":"a","exp":${nowSec() + 60},"__proto__":{"admin":true},"constructor":{"prototype":{"x":1}}}`,
    );
    const ctx = requestContext(bearer(token));
    expect(await runStage(stage, ctx)).toBeNull();
    expect(({} as Record<string, unknown>)['admin']).toBeUndefined();
    expect(Object.hasOwn(ctx.identity!.claims, '__proto__')).toBe(true);
  });
});

describe('not a JWS at all', () => {
  const cases: [string, string][] = [
    ['empty after the scheme', 'Bearer '],
    ['one segment', 'Bearer abc'],
    ['two segments', 'Bearer abc.def'],
    ['four segments', 'Bearer a.b.c.d'],
    ['JWE (five segments)', 'Bearer a.b.c.d.e'],
    ['header not JSON', `Bearer ${Buffer.from('not json').toString('base64url')}.${b64({ sub: 'a' })}.AAAA`],
    ['header is an array', `Bearer ${b64(['RS256'])}.${b64({ sub: 'a' })}.AAAA`],
    ['header is a string', `Bearer ${b64('RS256')}.${b64({ sub: 'a' })}.AAAA`],
    ['non-ASCII', 'Bearer héllo.wörld.sig'],
    ['empty header segment', `Bearer .${b64({ sub: 'a' })}.AAAA`],
  ];
  for (const [name, header] of cases) {
    it(`${name} → jwt.malformed`, async () => {
      authn.cache.clear();
      const denial = expectDenial(await runStage(stage, requestContext({ authorization: header })));
      expect(denial.status).toBe(401);
      expect(denial.code).toBe('jwt.malformed');
    });
  }
});

describe('oversized tokens', () => {
  it('a validly signed token over 8 KiB → jwt.malformed, before any parsing', async () => {
    const token = await mint(key, { blob: 'x'.repeat(9000) });
    expect(token.length).toBeGreaterThan(8192);
    expect(await codeOf(token)).toBe('jwt.malformed');
  });

  it('a megabyte of garbage → jwt.malformed', async () => {
    expect(await codeOf('a'.repeat(1_000_000))).toBe('jwt.malformed');
  });

  it('a token just under the cap is fine', async () => {
    const token = await mint(key, { blob: 'x'.repeat(5500) });
    expect(token.length).toBeLessThanOrEqual(8192);
    expect(await runStage(stage, requestContext(bearer(token)))).toBeNull();
  });
});

describe('signing-key confusions inside the allow-list', () => {
  it('an ES256 token with the RSA key id → jwt.unknown_kid (no key of that type)', async () => {
    const es = await makeKey('k1', 'ES256');
    expect(await codeOf(await mint(es))).toBe('jwt.unknown_kid');
  });

  it('a token signed by a key the JWKS does not hold, with a known kid → jwt.signature_invalid', async () => {
    expect(await codeOf(await mint(attacker))).toBe('jwt.signature_invalid');
  });

  it('a token from SignJWT with typ/cty games still verifies only by signature', async () => {
    const token = await new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: 'a' })
      .setProtectedHeader({ alg: 'RS256', kid: 'k1', typ: 'JWT' })
      .setExpirationTime('5m')
      .sign(attacker.privateKey);
    expect(await codeOf(token)).toBe('jwt.signature_invalid');
  });

  it('nothing above caused a JWKS fetch beyond the first', () => {
    expect(server.hits).toBe(1);
    expect(trap.hits).toBe(0);
  });
});
