/**
 * Client-secret hashing: the scrypt string format round-trips, salts differ, and a
 * malformed or hostile hash string is a plain `false` (never an exception, never an
 * absurd cost). SecretVerifier remembers successes only, and a changed hash misses.
 */
import { describe, expect, it } from 'vitest';
import { generateSecret, hashSecret, isSecretHash, SecretVerifier, verifySecret } from '../../src/issuer/secret.js';

const SECRET = 'billing-secret-0123456789abcdef';

describe('hashSecret / verifySecret', () => {
  it('round trip; a wrong secret is false; two hashes of one secret differ', async () => {
    const [a, b] = await Promise.all([hashSecret(SECRET), hashSecret(SECRET)]);
    expect(a).toMatch(/^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    expect(isSecretHash(a)).toBe(true);
    expect(await verifySecret(SECRET, a)).toBe(true);
    expect(await verifySecret(SECRET, b)).toBe(true);
    expect(await verifySecret(`${SECRET}x`, a)).toBe(false);
    expect(await verifySecret('', a)).toBe(false);
  });

  it('verifies hashes with other (bounded) parameters', async () => {
    const hash = await hashSecret(SECRET);
    const [, , , salt] = hash.split('$');
    // Recompute with ln=10: same format, cheaper cost; the parameters come from the string.
    const { scryptSync } = await import('node:crypto');
    const key = scryptSync(SECRET, Buffer.from(salt!, 'base64url'), 32, { N: 2 ** 10, r: 4, p: 2 }).toString('base64url');
    const cheap = `$scrypt$ln=10,r=4,p=2$${salt}$${key}`;
    expect(isSecretHash(cheap)).toBe(true);
    expect(await verifySecret(SECRET, cheap)).toBe(true);
    expect(await verifySecret('nope', cheap)).toBe(false);
  });

  it('malformed and hostile hash strings are false, never a throw', async () => {
    const good = await hashSecret(SECRET);
    const [, , , salt, key] = good.split('$');
    const hostile = [
      '',
      SECRET,
      '$scrypt$',
      good.slice(0, -1) + '!',
      good + '$extra',
      `$scrypt$ln=40,r=8,p=1$${salt}$${key}`, // 2^40 iterations
      `$scrypt$ln=21,r=8,p=1$${salt}$${key}`,
      `$scrypt$ln=20,r=16,p=1$${salt}$${key}`, // each bound alone passes: 2 GiB of working set
      `$scrypt$ln=9,r=8,p=1$${salt}$${key}`,
      `$scrypt$ln=15,r=17,p=1$${salt}$${key}`,
      `$scrypt$ln=15,r=0,p=1$${salt}$${key}`,
      `$scrypt$ln=15,r=8,p=5$${salt}$${key}`,
      `$scrypt$ln=15,r=8,p=0$${salt}$${key}`,
      `$scrypt$ln=15,r=8,p=1$$${key}`,
      `$scrypt$ln=15,r=8,p=1$${salt}$`,
      `$scrypt$ln=15,r=8,p=1$AAAA$${key}`, // salt too short
      `$scrypt$ln=15,r=8,p=1$${salt}$AAAA`, // key too short
      `$scrypt$ln=15,r=8,p=1$${salt}$${'A'.repeat(200)}`, // key too long
      `$scrypt$ln=15,r=8,p=1$${salt}=$${key}`, // padding is not base64url
      `$argon2id$v=19$m=65536,t=3,p=4$${salt}$${key}`,
      `$scrypt$ln=1e1,r=8,p=1$${salt}$${key}`,
      `$scrypt$ln=15,r=8,p=1$${salt}$${key}`.replace('ln=15', 'ln=015'),
      'x'.repeat(100_000),
    ];
    for (const encoded of hostile) {
      expect(isSecretHash(encoded)).toBe(false);
      await expect(verifySecret(SECRET, encoded)).resolves.toBe(false);
    }
    // Not strings at all (untyped callers).
    await expect(verifySecret(SECRET, null as unknown as string)).resolves.toBe(false);
    await expect(verifySecret(undefined as unknown as string, good)).resolves.toBe(false);
    expect(isSecretHash(42 as unknown as string)).toBe(false);
  });

  it('generateSecret: 32 random bytes, base64url', () => {
    const a = generateSecret();
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(Buffer.from(a, 'base64url')).toHaveLength(32);
    expect(generateSecret()).not.toBe(a);
  });
});

describe('SecretVerifier', () => {
  it('remembers a success; a wrong secret and another client still miss; a changed hash invalidates', async () => {
    let now = 1_000_000;
    const verifier = new SecretVerifier({ ttlMs: 60_000, now: () => now });
    const hash = await hashSecret(SECRET);
    expect(await verifier.verify('billing', SECRET, hash)).toBe(true);
    expect(verifier.size).toBe(1);
    expect(verifier.hits).toBe(0);
    expect(await verifier.verify('billing', SECRET, hash)).toBe(true);
    expect(verifier.hits).toBe(1);
    expect(verifier.size).toBe(1);

    expect(await verifier.verify('billing', 'wrong-secret', hash)).toBe(false);
    expect(await verifier.verify('reports', SECRET, hash)).toBe(true); // its own entry
    expect(verifier.size).toBe(2);
    expect(verifier.hits).toBe(1);

    // The client's secret was rotated: the old secret against the new hash fails.
    const rotated = await hashSecret('the-new-secret-0123456789abcdef');
    expect(await verifier.verify('billing', SECRET, rotated)).toBe(false);
    expect(verifier.hits).toBe(1);
    expect(await verifier.verify('billing', 'the-new-secret-0123456789abcdef', rotated)).toBe(true);

    // Expired entries are verified again (and still succeed).
    now += 60_001;
    expect(await verifier.verify('billing', SECRET, hash)).toBe(true);
    expect(verifier.hits).toBe(1);
  });

  it('failures are never cached; entries are bounded', async () => {
    const verifier = new SecretVerifier({ maxEntries: 2 });
    const hash = await hashSecret(SECRET);
    expect(await verifier.verify('a', 'wrong', hash)).toBe(false);
    expect(await verifier.verify('a', 'wrong', 'not-a-hash')).toBe(false);
    expect(verifier.size).toBe(0);
    expect(verifier.hits).toBe(0);
    const results = await Promise.all(['a', 'b', 'c'].map((id) => verifier.verify(id, SECRET, hash)));
    expect(results).toEqual([true, true, true]);
    expect(verifier.size).toBe(2);
  });

  it('concurrent identical verifications agree', async () => {
    const verifier = new SecretVerifier();
    const hash = await hashSecret(SECRET);
    const results = await Promise.all(Array.from({ length: 5 }, () => verifier.verify('billing', SECRET, hash)));
    expect(results).toEqual([true, true, true, true, true]);
    const wrong = await Promise.all(Array.from({ length: 5 }, () => verifier.verify('billing', 'nope', hash)));
    expect(wrong).toEqual([false, false, false, false, false]);
    expect(verifier.size).toBe(1);
  });
});
