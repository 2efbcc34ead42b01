/**
 * Hostile key sets: a JWKS endpoint (or file) is trusted for keys, not for the work it
 * makes the gateway do. Load-time work is bounded whatever the document holds.
 */
import { describe, expect, it } from 'vitest';
import { JwkKeySet, MAX_JWKS_KEYS } from '../../src/authn/key-source.js';
import { makeKey } from './helpers.js';

describe('JWKS member bound', () => {
  it('tens of thousands of junk members: examined up to MAX_JWKS_KEYS only, so loading stays fast', async () => {
    const good = await makeKey('good');
    // Each junk member costs a thumbprint and an import attempt before it is skipped.
    const junk = Array.from({ length: 50_000 }, (_, i) => ({ kty: 'RSA', n: 'AQAB', e: 'AQAB', kid: `j${i}` }));
    const started = performance.now();
    const set = await JwkKeySet.from({ keys: [good.jwk, ...junk] });
    const elapsed = performance.now() - started;
    expect(set.size).toBe(1);
    expect(set.skipped).toBe(50_000);
    // Unbounded, this takes seconds; bounded, a few milliseconds.
    expect(elapsed).toBeLessThan(1000);
  });

  it('a usable key after MAX_JWKS_KEYS junk members is not examined: the set has no usable key', async () => {
    const good = await makeKey('late');
    const junk = Array.from({ length: MAX_JWKS_KEYS }, () => ({ kty: 'RSA', n: 'AQAB', e: 'AQAB' }));
    await expect(JwkKeySet.from({ keys: [...junk, good.jwk] })).rejects.toMatchObject({ name: 'JwksInvalidError' });
  });
});
