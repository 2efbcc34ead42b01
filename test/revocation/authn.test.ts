/**
 * Authn integration: a revoked token is refused by the stage with `jwt.revoked` (401,
 * shown to clients as `jwt.invalid`), whether it was freshly verified or came from the
 * verified-token cache, and revoking evicts it from that cache.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { compileAuthn, type CompiledAuthn } from '../../src/authn/provider.js';
import { createAuthnStage } from '../../src/authn/stage.js';
import { publicCode } from '../../src/core/errors.js';
import type { RevocationStore } from '../../src/revocation/list.js';
import { RevocationList } from '../../src/revocation/list.js';
import {
  AUDIENCE,
  authnConfig,
  bearer,
  expectDenial,
  ISSUER,
  makeKey,
  mint,
  requestContext,
  runStage,
  type TestKey,
} from '../authn/helpers.js';

let key: TestKey;
const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0)) fn();
});
beforeAll(async () => {
  key = await makeKey('k1');
});

function compile(list: RevocationList): CompiledAuthn {
  const authn = compileAuthn(
    authnConfig({ providers: { users: { issuer: ISSUER, audiences: [AUDIENCE], publicKeys: [{ key: key.pem, kid: 'k1' }] } } }),
    { revocation: list },
  );
  cleanup.push(list.attachCache(authn.cache), () => authn.close());
  return authn;
}

describe('authn stage with revocation', () => {
  it('jti revoked: cached token evicted, next request is jwt.revoked (401, public jwt.invalid)', async () => {
    const list = new RevocationList();
    const authn = compile(list);
    const stage = createAuthnStage({ provider: 'users' }, authn)!;
    const token = await mint(key, { jti: 'tok-1', sid: 'sess-1' });
    const other = await mint(key, { jti: 'tok-2', sid: 'sess-2' });

    expect(await runStage(stage, requestContext(bearer(token)))).toBeNull();
    expect(await runStage(stage, requestContext(bearer(other)))).toBeNull();
    expect(authn.cache.size).toBe(2);
    // The second call is a cache hit (synchronous).
    const hitCtx = requestContext(bearer(token));
    expect(stage.run(hitCtx)).toBeNull();
    expect(hitCtx.decisions[0]!.detail).toMatchObject({ cached: true });

    await list.revoke({ jti: 'tok-1' });
    expect(authn.cache.size).toBe(1); // evicted

    const ctx = requestContext(bearer(token));
    const denial = expectDenial(await runStage(stage, ctx));
    expect(denial.code).toBe('jwt.revoked');
    expect(denial.status).toBe(401);
    expect(publicCode(denial.code)).toBe('jwt.invalid');
    expect(denial.headers?.['www-authenticate']).toContain('invalid_token');
    expect(ctx.decisions.at(-1)).toMatchObject({ outcome: 'deny', code: 'jwt.revoked', detail: { reason: 'jti' } });
    expect(ctx.identity).toBeNull();
    // Verified again, then refused again (and not allowed from the cache).
    expect(expectDenial(await runStage(stage, requestContext(bearer(token)))).code).toBe('jwt.revoked');
    // The other token is untouched.
    expect(await runStage(stage, requestContext(bearer(other)))).toBeNull();
  });

  it('sid, sub and sub_before through the stage; a token issued after T passes', async () => {
    const list = new RevocationList();
    const authn = compile(list);
    const stage = createAuthnStage({ anyOf: ['users'] }, authn)!;
    const now = Math.floor(Date.now() / 1000);
    const old = await mint(key, { sub: 'bob', iat: now - 100, jti: 'a' });
    const fresh = await mint(key, { sub: 'bob', iat: now, jti: 'b' });
    const session = await mint(key, { sub: 'carol', sid: 'S', jti: 'c' });
    const dave = await mint(key, { sub: 'dave', jti: 'd' });
    for (const t of [old, fresh, session, dave]) expect(await runStage(stage, requestContext(bearer(t)))).toBeNull();

    await list.revoke({ sub: 'bob', before: now - 10 });
    await list.revoke({ sid: 'S' });
    await list.revoke({ sub: 'dave' });
    const reason = async (t: string) => {
      const ctx = requestContext(bearer(t));
      const decision = await runStage(stage, ctx);
      return decision === null ? 'allowed' : `${decision.code}:${String(ctx.decisions.at(-1)!.detail!['reason'])}`;
    };
    expect(await reason(old)).toBe('jwt.revoked:sub_before');
    expect(await reason(fresh)).toBe('allowed');
    expect(await reason(session)).toBe('jwt.revoked:sid');
    expect(await reason(dave)).toBe('jwt.revoked:sub');

    // Lifted: allowed again.
    expect(await list.unrevoke('sub:dave')).toBe(true);
    expect(await reason(dave)).toBe('allowed');
  });

  it('allOf: any revoked identity refuses the request', async () => {
    const list = new RevocationList();
    const authn = compile(list);
    const stage = createAuthnStage({ allOf: ['users'] }, authn)!;
    const token = await mint(key, { jti: 'all-1' });
    expect(await runStage(stage, requestContext(bearer(token)))).toBeNull();
    await list.revoke({ jti: 'all-1' });
    expect(expectDenial(await runStage(stage, requestContext(bearer(token)))).code).toBe('jwt.revoked');
  });

  it('closed mode with the store down: 503 revocation.store_unavailable', async () => {
    let available = false;
    const store: RevocationStore = {
      kind: 'redis',
      get available() {
        return available;
      },
      lastSyncAt: null,
      start: () => Promise.resolve(),
      add: () => Promise.resolve('queued'),
      remove: () => Promise.resolve(false),
      close: () => Promise.resolve(),
    };
    const list = new RevocationList({ store, onStoreFailure: 'closed' });
    const stage = createAuthnStage({ provider: 'users' }, compile(list))!;
    const token = await mint(key);
    const denial = expectDenial(await runStage(stage, requestContext(bearer(token))));
    expect(denial.code).toBe('revocation.store_unavailable');
    expect(denial.status).toBe(503);
    available = true;
    expect(await runStage(stage, requestContext(bearer(token)))).toBeNull();
  });
});
