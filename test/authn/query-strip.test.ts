/**
 * A token read from the query string must not travel on: the authn stage removes its
 * providers' query token parameters from `ctx.query` (what the gateway forwards), matching
 * names as the query source decodes them, and keeps every other parameter byte for byte.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileAuthn, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
import { withoutQueryParams } from '../../src/authn/token.js';
import { AUDIENCE, authnConfig, bearer, ISSUER, makeKey, mint, requestContext, runStage, type TestKey } from './helpers.js';

describe('withoutQueryParams', () => {
  const names = new Set(['access_token']);
  const cases: [string, string][] = [
    ['a=1&access_token=XYZ&b=2', 'a=1&b=2'],
    ['access_token=XYZ', ''],
    ['access_token=XYZ&a=1', 'a=1'],
    ['a=1&access_token=XYZ', 'a=1'],
    // every occurrence, however spelled (as URLSearchParams decodes the name)
    ['access_token=1&a=1&access_token=2', 'a=1'],
    ['a=1&access%5Ftoken=XYZ&b=2', 'a=1&b=2'],
    ['%61ccess_token=XYZ&b=2', 'b=2'],
    ['a=1&%61%63%63%65%73%73%5f%74%6f%6b%65%6e=XYZ', 'a=1'],
    ['access_token&a=1', 'a=1'],
    ['access_token=&a=1', 'a=1'],
    ['?access_token=XYZ&a=1', 'a=1'], // URLSearchParams ignores one leading `?`
    // other parameters untouched, byte for byte and in order
    ['b=%2F%zz+x&access_token=1&a=a=b&&c', 'b=%2F%zz+x&a=a=b&&c'],
    ['z=1&y=2', 'z=1&y=2'],
    // not the same name
    ['access_token2=1&xaccess_token=2&access+token=3&a=1', 'access_token2=1&xaccess_token=2&access+token=3&a=1'],
    ['a=access_token&b=1', 'a=access_token&b=1'],
    ['a=1&%3Faccess_token=1', 'a=1&%3Faccess_token=1'],
    ['', ''],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input)} → ${JSON.stringify(expected)}`, () => {
      expect(withoutQueryParams(input, names)).toBe(expected);
      // whatever remains, the query source finds no token in it
      expect(new URLSearchParams(withoutQueryParams(input, names)).getAll('access_token')).toEqual([]);
    });
  }

  it('returns the same string when nothing matched', () => {
    const query = 'a=1&b=%41';
    expect(withoutQueryParams(query, names)).toBe(query);
    expect(withoutQueryParams(query, new Set())).toBe(query);
  });
});

describe('the authn stage strips the query token', () => {
  let key: TestKey;
  let authn: CompiledAuthn;

  beforeAll(async () => {
    key = await makeKey('k1', 'ES256');
    const provider = { issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['ES256'], publicKeys: [{ key: key.pem }] };
    authn = compileAuthn(
      authnConfig({
        providers: {
          q: { ...provider, token: { query: 'access_token' } },
          t: { ...provider, token: { query: 't' } },
          h: provider,
        },
      }),
    );
    await authn.ready();
  });
  afterAll(() => authn.close());

  it('after a valid token, an invalid one, a cache hit, and on optional routes', async () => {
    const stage = createAuthnStage({ provider: 'q' }, authn)!;
    const token = await mint(key);
    for (let i = 0; i < 2; i++) {
      const ctx = requestContext({}, `a=1&access_token=${token}&b=2`);
      expect(await runStage(stage, ctx)).toBeNull();
      expect(ctx.query).toBe('a=1&b=2');
    }
    const bad = requestContext({}, 'a=1&access_token=junk');
    expect(await runStage(stage, bad)).not.toBeNull();
    expect(bad.query).toBe('a=1');
    const optional = createAuthnStage({ optional: 'q' }, authn)!;
    const anonymous = requestContext({}, 'a=1');
    expect(await runStage(optional, anonymous)).toBeNull();
    expect(anonymous.query).toBe('a=1');
  });

  it('anyOf: a header token wins, the query token parameters are still removed', async () => {
    const stage = createAuthnStage({ anyOf: ['h', 'q', 't'] }, authn)!;
    const ctx = requestContext(bearer(await mint(key)), 'access_token=x&a=1&t=y&access_token=z');
    expect(await runStage(stage, ctx)).toBeNull();
    expect(ctx.query).toBe('a=1');
  });

  it('a route whose providers read a header leaves the query alone', async () => {
    const stage = createAuthnStage({ provider: 'h' }, authn)!;
    const ctx = requestContext(bearer(await mint(key)), 'a=1&access_token=XYZ&b=2');
    expect(await runStage(stage, ctx)).toBeNull();
    expect(ctx.query).toBe('a=1&access_token=XYZ&b=2');
  });
});
