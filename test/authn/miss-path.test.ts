/**
 * The cache-miss path's shortcuts (issue #3, unique-token storm) keep their contracts:
 * the last-group signature check equals a full round trip, the eviction iterator keeps
 * exact LRU order, key answers are remembered only for keys of the set, decision records
 * are shared but frozen, and payloads are still frozen all the way down.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Identity } from '../../src/core/context.js';
import { VerifiedTokenCache, type CachedToken } from '../../src/authn/cache.js';
import { deepFreeze, rolesFrom } from '../../src/authn/claims.js';
import { JwkKeySet, type KeyCandidate, type KeySource } from '../../src/authn/key-source.js';
import { PemKeySource } from '../../src/authn/pem.js';
import { compileAuthn, tokenShapeProblem } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
import {
  AUDIENCE,
  authnConfig,
  bearer,
  ISSUER,
  jwks,
  makeKey,
  mint,
  requestContext,
  runStage,
  startJwksServer,
} from './helpers.js';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** The check as it was: the whole signature through the decoder and back. */
function fullRoundTrip(token: string): boolean {
  const signature = token.slice(token.lastIndexOf('.') + 1);
  return signature === '' || Buffer.from(signature, 'base64url').toString('base64url') === signature;
}

describe('canonical signature check', () => {
  it('judges every signature length and every last character as the full round trip does', () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    let nonCanonical = 0;
    for (let length = 0; length <= 70; length++) {
      for (const last of ALPHABET) {
        let signature = '';
        for (let i = 0; i < length - 1; i++) signature += ALPHABET[random() % 64];
        if (length > 0) signature += last;
        const token = `eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.${signature}`;
        const canonical = fullRoundTrip(token);
        if (!canonical) nonCanonical++;
        expect(tokenShapeProblem(token), `${length}: ${signature}`).toBe(canonical ? null : 'non-canonical base64url signature');
      }
    }
    expect(nonCanonical).toBeGreaterThan(1000); // the cases that matter were there
    // Real signatures (RSA-2048, P-256, P-521 sizes) are canonical as encoded.
    for (const bytes of [256, 64, 132, 0]) {
      const signature = randomBytes(bytes).toString('base64url');
      expect(tokenShapeProblem(`eyJhIjoxfQ.eyJiIjoyfQ.${signature}`)).toBeNull();
    }
  });
});

// ---------------------------------------------------------------------------

const SOURCE: KeySource = {
  kind: 'jwks_file',
  generation: 0,
  resolve: () => [],
  getKey: () => Promise.reject(new Error('unused')),
  has: () => true,
  onChange: () => () => undefined,
  ready: Promise.resolve(),
  close: () => undefined,
};

function cachedToken(subject: string): CachedToken {
  const identity: Identity = { subject, roles: [], scopes: [], claims: {}, provider: 'p' };
  const record = { stage: 'authn', outcome: 'allow', code: 'jwt.valid' } as const;
  return {
    providerName: 'p',
    identity,
    upstreamHeaders: [],
    verifiedRecord: record,
    cachedRecord: record,
    source: SOURCE,
    keyRef: 'k',
    validFromMs: -Infinity,
    validUntilMs: Infinity,
    generation: 0,
    insertedAt: 0,
  };
}

/** The cache as it was before the long-lived eviction iterator: the reference for its order. */
class ReferenceLru {
  readonly entries = new Map<string, number>();
  private inserts = 0;
  constructor(
    private readonly max: number,
    private readonly refreshAfter = Math.floor(max / 2),
  ) {}

  get(key: string): boolean {
    const at = this.entries.get(key);
    if (at === undefined) return false;
    if (this.inserts - at >= this.refreshAfter) this.set(key);
    return true;
  }

  set(key: string): void {
    this.entries.delete(key);
    this.entries.set(key, ++this.inserts);
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!);
  }
}

const keysOf = (cache: VerifiedTokenCache): string[] => [
  ...(cache as unknown as { entries: Map<string, CachedToken> }).entries.keys(),
];

describe('verified-token cache eviction', () => {
  it('keeps the exact LRU order through hits, moves, evictions, revocation eviction and clear()', () => {
    for (const max of [1, 2, 5, 64]) {
      const cache = new VerifiedTokenCache(max);
      const reference = new ReferenceLru(max);
      let seed = max;
      const random = () => {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        return seed;
      };
      const universe = max * 4;
      for (let step = 0; step < 6_000; step++) {
        const key = `t${random() % universe}`;
        const roll = random() % 100;
        if (roll < 45) {
          expect(cache.get(key, 0) !== undefined).toBe(reference.get(key));
        } else if (roll < 90) {
          if (cache.get(key, 0) === undefined) {
            reference.get(key);
            cache.set(key, cachedToken(key));
            reference.set(key);
          } else {
            reference.get(key);
          }
        } else if (roll < 99) {
          // A revocation drops some entries from the middle.
          const victim = `t${random() % universe}`;
          cache.evict((identity) => identity.subject === victim);
          reference.entries.delete(victim);
        } else {
          cache.clear();
          reference.entries.clear();
        }
        expect(cache.size).toBeLessThanOrEqual(max);
        expect(keysOf(cache)).toEqual([...reference.entries.keys()]);
      }
    }
  });

  it('in a storm (every request a new token) the oldest goes first, whatever V8 does with its table', () => {
    const max = 1000;
    const cache = new VerifiedTokenCache(max);
    for (let i = 0; i < 50_000; i++) {
      cache.set(`t${i}`, cachedToken(`t${i}`));
      if (i % 7 === 0) cache.get(`t${i - 400}`, 0); // a few hits, some of them moving their entry
    }
    expect(cache.size).toBe(max);
    expect(cache.get('t49999', 0)).toBeDefined();
    expect(cache.get(`t${50_000 - max - 500}`, 0)).toBeUndefined();
    const keys = keysOf(cache);
    expect(new Set(keys).size).toBe(max);
  });
});

// ---------------------------------------------------------------------------

describe('JWKS key answers', () => {
  it('the second answer for an alg and kid is synchronous and the same; unknown kids are not remembered', async () => {
    const a = await makeKey('a');
    const b = await makeKey('b');
    const set = await JwkKeySet.from(jwks(a, b));
    const first = set.select({ alg: 'RS256', kid: 'a' });
    expect(first).toBeInstanceOf(Promise);
    const candidates = await first;
    expect(candidates.map((c) => c.kid)).toEqual(['a']);
    const again = set.select({ alg: 'RS256', kid: 'a' });
    expect(again).toBe(candidates);
    expect(Object.isFrozen(again)).toBe(true);
    expect(Object.isFrozen((again as readonly KeyCandidate[])[0])).toBe(true);

    // Kid-less: every key usable for the alg, remembered too.
    const all = await set.select({ alg: 'RS256' });
    expect(all.map((c) => c.kid)).toEqual(['a', 'b']);
    expect(set.select({ alg: 'RS256' })).toBe(all);

    // An alg the keys cannot serve, unknown kids, a kid of another type: nothing, and nothing kept.
    expect(await set.select({ alg: 'ES256', kid: 'a' })).toEqual([]);
    for (let i = 0; i < 1000; i++) expect(set.select({ alg: 'RS256', kid: `nope-${i}` })).toEqual([]);
    expect(await set.select({ alg: 'RS256', kid: 7 as unknown as string })).toEqual([]);
    const memo = (set as unknown as { memo: Map<string, Map<unknown, unknown>> }).memo;
    expect([...memo.keys()]).toEqual(['RS256']);
    expect([...memo.get('RS256')!.keys()]).toEqual(['a', undefined]);
  });

  it('PEM keys: answers kept for configured kids and kid-less tokens only, not for the kids tokens make up', async () => {
    const a = await makeKey('a');
    const b = await makeKey('b');
    const source = new PemKeySource(
      [
        { pem: a.pem, kid: 'a', label: 'a' },
        { pem: b.pem, kid: undefined, label: 'b' },
      ],
      ['RS256', 'ES256'],
      { provider: 'p', emit: () => undefined },
    );
    await source.ready;
    const named = source.resolve({ alg: 'RS256', kid: 'a' }) as readonly KeyCandidate[];
    expect(named.map((c) => c.ref)).toEqual(['pem:0']);
    expect(source.resolve({ alg: 'RS256', kid: 'a' })).toBe(named);
    expect((source.resolve({ alg: 'RS256' }) as readonly KeyCandidate[]).map((c) => c.ref)).toEqual(['pem:0', 'pem:1']);
    // Any other kid goes to the key without a kid, answered afresh every time.
    for (let i = 0; i < 1000; i++) {
      expect((source.resolve({ alg: 'RS256', kid: `x${i}` }) as readonly KeyCandidate[]).map((c) => c.ref)).toEqual(['pem:1']);
    }
    expect(() => source.resolve({ alg: 'ES256', kid: 'a' })).toThrow(/no configured public key matches/);
    const memo = (source as unknown as { memo: Map<string, Map<unknown, unknown>> }).memo;
    expect([...memo.keys()]).toEqual(['RS256']);
    expect([...memo.get('RS256')!.keys()]).toEqual(['a', undefined]);
  });

  it('rotation: tokens of a key that left fail, a new key verifies (the new set answers afresh)', async () => {
    const a = await makeKey('a');
    const b = await makeKey('b');
    const server = await startJwksServer(jwks(a));
    try {
      const authn = compileAuthn(
        authnConfig({
          providers: {
            r: { issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: server.url, jwks: { cooldownMs: 1, cacheTtlMs: 600_000 } },
          },
        }),
      );
      await authn.ready();
      const provider = authn.providers.get('r')!;
      const code = async (token: string) => {
        const result = await provider.verify(token);
        return result.ok ? 'ok' : result.code;
      };
      expect(await code(await mint(a))).toBe('ok');
      expect(await code(await mint(a))).toBe('ok'); // the remembered answer
      server.body = jwks(b);
      expect(await code(await mint(b))).toBe('ok'); // unknown kid: refetch
      expect(await code(await mint(a))).toBe('jwt.unknown_kid');
      authn.close();
    } finally {
      await server.close();
    }
  });
});

// ---------------------------------------------------------------------------

describe('what a verification builds', () => {
  it('shares frozen decision records between tokens of one key, and freezes every payload deeply', async () => {
    const key = await makeKey('k');
    const server = await startJwksServer(jwks(key));
    try {
      const authn = compileAuthn(
        authnConfig({
          providers: { p: { issuer: ISSUER, audiences: [AUDIENCE], jwksUrl: server.url, rolesClaim: 'roles' } },
        }),
      );
      await authn.ready();
      const provider = authn.providers.get('p')!;
      const one = await provider.verify(await mint(key, { sub: 'a', roles: ['r1', 'r2'], nested: { deep: [{ x: 1 }] } }));
      const two = await provider.verify(await mint(key, { sub: 'b', roles: ['r1', '', 5] }));
      if (!one.ok || !two.ok) throw new Error('expected valid tokens');
      expect(one.entry.verifiedRecord).toBe(two.entry.verifiedRecord);
      expect(one.entry.cachedRecord).toBe(two.entry.cachedRecord);
      expect(one.entry.verifiedRecord).toEqual({
        stage: 'authn',
        outcome: 'allow',
        code: 'jwt.valid',
        detail: { provider: 'p', kid: 'k', cached: false },
      });
      expect(Object.isFrozen(one.entry.verifiedRecord)).toBe(true);
      expect(Object.isFrozen(one.entry.cachedRecord.detail)).toBe(true);

      const claims = one.entry.identity.claims as { nested: { deep: { x: number }[] }; roles: string[] };
      expect(Object.isFrozen(claims)).toBe(true);
      expect(Object.isFrozen(claims.nested)).toBe(true);
      expect(Object.isFrozen(claims.nested.deep)).toBe(true);
      expect(Object.isFrozen(claims.nested.deep[0])).toBe(true);
      expect(one.entry.identity.roles).toEqual(['r1', 'r2']);
      expect(Object.isFrozen(one.entry.identity.roles)).toBe(true);
      expect(two.entry.identity.roles).toEqual(['r1']);

      // The stage still records the shared records, and a hit the cached one.
      const stage = createAuthnStage({ provider: 'p' }, authn)!;
      const token = await mint(key, { sub: 'c' });
      const ctx = requestContext(bearer(token));
      expect(await runStage(stage, ctx)).toBeNull();
      expect(ctx.decisions).toEqual([one.entry.verifiedRecord]);
      const hit = requestContext(bearer(token));
      expect(stage.run(hit)).toBeNull();
      expect(hit.decisions[0]).toBe(one.entry.cachedRecord);
      authn.close();
    } finally {
      await server.close();
    }
  });

  it('deepFreeze: deep nesting without recursion, shared and already-frozen parts, primitives', () => {
    let deep: unknown = { leaf: [1, { x: 2 }] };
    for (let i = 0; i < 100_000; i++) deep = i % 2 === 0 ? [deep] : { d: deep };
    deepFreeze(deep);
    let node = deep;
    let depth = 0;
    while (typeof node === 'object' && node !== null && !('leaf' in node)) {
      expect(Object.isFrozen(node)).toBe(true);
      node = Array.isArray(node) ? node[0] : (node as { d: unknown }).d;
      depth++;
    }
    expect(depth).toBe(100_000);
    const leaf = node as { leaf: [number, { x: number }] };
    expect(Object.isFrozen(leaf.leaf[1])).toBe(true);

    const inner = { y: [1] };
    const outer = deepFreeze({ a: Object.freeze({ inner }), b: inner, c: 'text', d: null, e: 3 });
    expect(Object.isFrozen(outer.b.y)).toBe(true); // reached through b, though a was frozen already
    expect(deepFreeze('text')).toBe('text');
    expect(deepFreeze(null)).toBeNull();
  });

  it('rolesFrom: a frozen all-roles array is used as is; anything else is filtered into a frozen copy', () => {
    const frozen = Object.freeze(['a', 'b']);
    expect(rolesFrom(frozen)).toBe(frozen);
    const open = ['a', 'b'];
    const copy = rolesFrom(open);
    expect(copy).toEqual(['a', 'b']);
    expect(copy).not.toBe(open);
    expect(Object.isFrozen(copy)).toBe(true);
    expect(rolesFrom(Object.freeze(['a', '', 1, 'b']))).toEqual(['a', 'b']);
    expect(rolesFrom(Object.freeze([]))).toEqual([]);
    expect(rolesFrom('r')).toEqual(['r']);
    expect(rolesFrom(42)).toEqual([]);
  });
});
