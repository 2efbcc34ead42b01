/**
 * The local list: each revocation kind, expiry, merging, the authn hook verdicts,
 * fail-closed, cache eviction, and the config schema + checks.
 */
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import type { Identity } from '../../src/core/context.js';
import {
  RevocationInputError,
  RevocationList,
  type RevocationEntry,
  type RevocationSink,
  type RevocationStore,
} from '../../src/revocation/list.js';
import { RevocationSchema, revocationChecks, type RevocationConfig } from '../../src/revocation/schema.js';

const T0 = 1_760_000_000_000; // epoch ms
const clock = () => {
  let now = T0;
  return { now: () => now, advance: (ms: number) => (now += ms) };
};

function identity(claims: Record<string, unknown>): Identity {
  return {
    subject: (claims['sub'] as string | undefined) ?? 'alice',
    roles: [],
    scopes: [],
    claims: { sub: 'alice', iat: T0 / 1000 - 60, ...claims },
    provider: 'users',
  };
}

describe('RevocationList kinds', () => {
  it('jti: only that token', async () => {
    const list = new RevocationList({ now: clock().now });
    await list.revoke({ jti: 't-1' });
    expect(list.isRevoked(identity({ jti: 't-1' }))).toEqual({ revoked: true, reason: 'jti', id: 'jti:t-1' });
    expect(list.isRevoked(identity({ jti: 't-2' })).revoked).toBe(false);
    expect(list.check(identity({ jti: 't-1' }))).toEqual({ code: 'jwt.revoked', reason: 'jti' });
    expect(list.check(identity({ jti: 't-2' }))).toBeNull();
  });

  it('sub: every token of the subject', async () => {
    const list = new RevocationList({ now: clock().now });
    await list.revoke({ sub: 'mallory' });
    expect(list.isRevoked(identity({ sub: 'mallory', jti: 'x' }))).toMatchObject({ revoked: true, reason: 'sub' });
    expect(list.isRevoked(identity({ sub: 'mallory', iat: T0 / 1000 + 3600 })).revoked).toBe(true);
    expect(list.isRevoked(identity({ sub: 'alice' })).revoked).toBe(false);
    expect(list.isRevokedClaims({ sub: 'mallory' }).revoked).toBe(true);
  });

  it('sid: every token of the session', async () => {
    const list = new RevocationList({ now: clock().now });
    await list.revoke({ sid: 's-9' });
    expect(list.isRevoked(identity({ sid: 's-9', jti: 'a' }))).toMatchObject({ revoked: true, reason: 'sid' });
    expect(list.isRevoked(identity({ sid: 's-8' })).revoked).toBe(false);
    expect(list.isRevoked(identity({})).revoked).toBe(false);
  });

  it('sub_before: tokens issued to the subject before T; later ones pass; no iat counts as before', async () => {
    const list = new RevocationList({ now: clock().now });
    const t = T0 / 1000;
    await list.revoke({ sub: 'alice', before: t });
    expect(list.isRevoked(identity({ iat: t - 1 }))).toMatchObject({ revoked: true, reason: 'sub_before' });
    expect(list.isRevoked(identity({ iat: t })).revoked).toBe(false);
    expect(list.isRevoked(identity({ iat: t + 10 })).revoked).toBe(false);
    expect(list.isRevoked(identity({ iat: undefined })).revoked).toBe(true);
    expect(list.isRevoked(identity({ sub: 'bob', iat: t - 1 })).revoked).toBe(false);
    // A later "before" widens the same entry; an earlier one never narrows it.
    await list.revoke({ sub: 'alice', before: t + 100 });
    expect(list.isRevoked(identity({ iat: t + 10 })).revoked).toBe(true);
    await list.revoke({ sub: 'alice', before: t - 1000 });
    expect(list.isRevoked(identity({ iat: t + 10 })).revoked).toBe(true);
    expect(list.size).toBe(1);
  });

  it('refuses bad input', async () => {
    const list = new RevocationList({ now: clock().now });
    await expect(list.revoke({})).rejects.toBeInstanceOf(RevocationInputError);
    await expect(list.revoke({ jti: 'a', sub: 'b' })).rejects.toBeInstanceOf(RevocationInputError);
    await expect(list.revoke({ jti: 'a', before: 5 })).rejects.toBeInstanceOf(RevocationInputError);
    await expect(list.revoke({ jti: '' })).rejects.toBeInstanceOf(RevocationInputError);
    await expect(list.revoke({ jti: 'a', expiresAt: T0 / 1000 - 1 })).rejects.toThrow(/past/);
    expect(list.size).toBe(0);
  });
});

describe('expiry', () => {
  it('an entry lives until the tokens it covers would have expired (default: max token lifetime)', async () => {
    const c = clock();
    const list = new RevocationList({ now: c.now, maxTokenLifetimeSec: 3600 });
    await list.revoke({ jti: 'default' });
    await list.revoke({ jti: 'short', expiresAt: T0 / 1000 + 60 });
    // sub_before T: a token issued before T is dead by T + lifetime.
    await list.revoke({ sub: 'alice', before: T0 / 1000 - 1800 });
    expect(list.get('sub_before:alice')!.expiresAtMs).toBe(T0 - 1800_000 + 3600_000);
    c.advance(59_000);
    expect(list.isRevoked(identity({ jti: 'short' })).revoked).toBe(true);
    c.advance(1_000);
    expect(list.isRevoked(identity({ jti: 'short' })).revoked).toBe(false);
    expect(list.isRevoked(identity({ jti: 'default', iat: T0 / 1000 })).revoked).toBe(true);
    c.advance(1_800_000 - 60_000);
    expect(list.isRevoked(identity({ sub: 'alice', iat: T0 / 1000 - 3600 })).revoked).toBe(false);
    expect(list.isRevoked(identity({ jti: 'default', iat: T0 / 1000 })).revoked).toBe(true);
    c.advance(1_800_000);
    expect(list.isRevoked(identity({ jti: 'default', iat: T0 / 1000 })).revoked).toBe(false);
    expect(list.entries()).toEqual([]);
    expect(list.sweep()).toBe(3);
    expect(list.size).toBe(0);
  });
});

describe('authn hook', () => {
  it('evicts matching identities from attached caches on revoke', async () => {
    const list = new RevocationList({ now: clock().now });
    const cached = [identity({ jti: 'a' }), identity({ jti: 'b', sid: 's' }), identity({ sub: 'bob', jti: 'c' })];
    const cache = {
      evict(matches: (i: Identity) => boolean) {
        const before = cached.length;
        for (let i = cached.length - 1; i >= 0; i--) if (matches(cached[i]!)) cached.splice(i, 1);
        return before - cached.length;
      },
    };
    const detach = list.attachCache(cache);
    await list.revoke({ sid: 's' });
    expect(cached.map((i) => i.claims['jti'])).toEqual(['a', 'c']);
    await list.revoke({ sub: 'bob' });
    expect(cached.map((i) => i.claims['jti'])).toEqual(['a']);
    detach();
    await list.revoke({ jti: 'a' });
    expect(cached).toHaveLength(1);
  });

  it('closed: no store → revocation.store_unavailable; keep_last: the last set keeps being enforced', async () => {
    let available = true;
    const store: RevocationStore = {
      kind: 'redis',
      get available() {
        return available;
      },
      lastSyncAt: null,
      start: (_sink: RevocationSink) => Promise.resolve(),
      add: (_e: RevocationEntry) => Promise.resolve(available ? 'stored' : 'queued'),
      remove: () => Promise.resolve(true),
      close: () => Promise.resolve(),
    };
    const closed = new RevocationList({ store, onStoreFailure: 'closed', now: clock().now });
    const keep = new RevocationList({ store, now: clock().now });
    for (const list of [closed, keep]) await list.revoke({ jti: 'x' });
    available = false;
    expect(closed.check(identity({ jti: 'y' }))).toEqual({ code: 'revocation.store_unavailable', reason: 'store' });
    expect(keep.check(identity({ jti: 'y' }))).toBeNull();
    expect(keep.check(identity({ jti: 'x' }))).toEqual({ code: 'jwt.revoked', reason: 'jti' });
    expect((await keep.revoke({ jti: 'z' })).write).toBe('queued');
    expect(keep.check(identity({ jti: 'z' }))?.code).toBe('jwt.revoked');
    available = true;
    expect(closed.check(identity({ jti: 'y' }))).toBeNull();
  });

  // The cost per check (ns) is measured by bench/revocation.js, not asserted here.
  it('lookups stay exact with 100k entries in the set', async () => {
    const list = new RevocationList();
    for (let i = 0; i < 100_000; i++) await list.revoke({ jti: `j${i}` });
    await list.revoke({ sub: 'alice', before: Date.now() / 1000 - 3600 });
    await list.revoke({ sid: 'other' });
    expect(list.size).toBe(100_002);
    const now = Date.now() / 1000;
    for (const i of [0, 1, 4_242, 50_000, 99_999]) {
      expect(list.check(identity({ jti: `j${i}`, iat: now }))).toEqual({ code: 'jwt.revoked', reason: 'jti' });
    }
    expect(list.check(identity({ jti: 'j100000', iat: now }))).toBeNull();
    expect(list.check(identity({ jti: 'not-revoked', sid: 's', iat: now }))).toBeNull();
    expect(list.check(identity({ jti: 'not-revoked', sid: 'other', iat: now }))).toEqual({ code: 'jwt.revoked', reason: 'sid' });
    expect(list.check(identity({ jti: 'not-revoked', iat: now - 7200 }))).toEqual({ code: 'jwt.revoked', reason: 'sub_before' });
    expect(await list.unrevoke('jti:j4242')).toBe(true);
    expect(list.check(identity({ jti: 'j4242', iat: now }))).toBeNull();
    expect(list.size).toBe(100_001);
  });
});

describe('config', () => {
  const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, allowUnionTypes: true });
  const validate = ajv.compile<RevocationConfig>(RevocationSchema);

  it('defaults and the Redis shape', () => {
    const memory: unknown = {};
    expect(validate(memory)).toBe(true);
    expect(memory).toEqual({ store: 'memory', onStoreFailure: 'keep_last', maxTokenLifetimeSec: 86400 });
    const redis: unknown = { store: { redis: { url: 'redis://127.0.0.1:6379' } }, onStoreFailure: 'closed' };
    expect(validate(redis)).toBe(true);
    expect((redis as RevocationConfig).store).toEqual({ redis: { url: 'redis://127.0.0.1:6379' } });
    expect(validate({ store: 'redis' })).toBe(false);
    expect(validate({ store: { redis: { url: 'redis://x', chanel: 'c' } } })).toBe(false);
    expect(validate({ onStoreFailure: 'open' })).toBe(false);
  });

  it('checks: short admin token, closed with memory', () => {
    const issues: string[] = [];
    revocationChecks(
      { revocation: { store: 'memory', onStoreFailure: 'closed', maxTokenLifetimeSec: 60, adminToken: 'short' } },
      (path, code, _m, severity = 'error') => issues.push(`${path.join('.')} ${code} ${severity}`),
    );
    expect(issues).toEqual([
      'revocation.adminToken config.revocation_weak_token error',
      'revocation.onStoreFailure config.revocation_no_effect warning',
    ]);
  });
});
