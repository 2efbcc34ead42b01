import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { BulwarkError } from '../../src/core/errors.js';
import type { Issuer, IssuerEvent } from '../../src/issuer/issuer.js';
import { createRevocationList } from '../../src/revocation/index.js';
import { OTHER_SECRET, SECRET, openIssuer, secretHashes, tempDir } from './helpers.js';

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof BulwarkError) return err.code;
    throw err;
  }
  throw new Error('expected a refusal');
}

async function verify(issuer: Issuer, token: string) {
  return jwtVerify(token, createLocalJWKSet(issuer.keys.jwks()), { issuer: 'https://auth.test', typ: 'at+jwt' });
}

describe('client_credentials', () => {
  let issuer: Issuer;
  const events: IssuerEvent[] = [];
  beforeAll(async () => {
    issuer = await openIssuer(tempDir(), {}, { onEvent: (e) => events.push(e) });
  });
  afterAll(() => issuer.close());

  it('issues a signed access token with the client as subject, its scopes and its first audience', async () => {
    const set = await issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET });
    expect(set.tokenType).toBe('Bearer');
    expect(set.expiresIn).toBe(300);
    expect(set.refreshToken).toBeUndefined();
    const { payload, protectedHeader } = await verify(issuer, set.accessToken);
    expect(protectedHeader.alg).toBe('ES256');
    expect(protectedHeader.kid).toBe(issuer.keys.signer().kid);
    expect(payload.sub).toBe('billing');
    expect(payload['client_id']).toBe('billing');
    expect(payload.aud).toBe('https://ledger.test');
    expect(payload['scope']).toBe('ledger:read ledger:write');
    expect(payload.exp! - payload.iat!).toBe(300);
    expect(typeof payload.jti).toBe('string');
    expect(events.some((e) => e.type === 'token_issued' && e.jti === payload.jti)).toBe(true);
  });

  it('narrows to the requested scopes and audiences', async () => {
    const set = await issuer.clientCredentials({
      clientId: 'billing',
      clientSecret: SECRET,
      scope: 'ledger:read',
      audience: ['https://audit.test', 'https://ledger.test'],
    });
    const { payload } = await verify(issuer, set.accessToken);
    expect(payload['scope']).toBe('ledger:read');
    expect(payload.aud).toEqual(['https://audit.test', 'https://ledger.test']);
    // Distinct tokens: a fresh jti each time.
    const again = await issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET, scope: 'ledger:read' });
    expect((await verify(issuer, again.accessToken)).payload.jti).not.toBe(payload.jti);
  });

  it('refuses: bad secret, unknown client, wrong grant, disallowed scope, disallowed audience', async () => {
    expect(await codeOf(issuer.clientCredentials({ clientId: 'billing', clientSecret: OTHER_SECRET }))).toBe(
      'issuer.invalid_client',
    );
    expect(await codeOf(issuer.clientCredentials({ clientId: 'billing', clientSecret: '' }))).toBe('issuer.invalid_client');
    expect(await codeOf(issuer.clientCredentials({ clientId: 'nobody', clientSecret: SECRET }))).toBe('issuer.invalid_client');
    expect(await codeOf(issuer.clientCredentials({ clientId: 'reports', clientSecret: OTHER_SECRET }))).toBe(
      'issuer.unauthorized_client',
    );
    expect(await codeOf(issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET, scope: 'ledger:admin' }))).toBe(
      'issuer.invalid_scope',
    );
    expect(
      await codeOf(issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET, scope: 'ledger:read ledger:admin' })),
    ).toBe('issuer.invalid_scope');
    expect(
      await codeOf(issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET, audience: ['https://evil.test'] })),
    ).toBe('issuer.invalid_target');
    const refusals = events.filter((e) => e.type === 'grant_refused').map((e) => (e as { code: string }).code);
    expect(refusals).toContain('issuer.invalid_client');
  });

  it('clients registered in the store work, disabled ones do not; the config wins on an id clash', async () => {
    const { hashSecret } = await import('../../src/issuer/secret.js');
    const record = {
      id: 'stored',
      secretHash: await hashSecret('stored-secret-0123456789'),
      audiences: ['https://ledger.test'],
      scopes: ['ledger:read'],
      grants: ['client_credentials'],
      tokenTtlSec: 60,
      createdAt: Date.now(),
      disabled: false,
    };
    await issuer.store.putClient(record);
    const set = await issuer.clientCredentials({ clientId: 'stored', clientSecret: 'stored-secret-0123456789' });
    expect((await verify(issuer, set.accessToken)).payload.sub).toBe('stored');
    expect(set.expiresIn).toBe(60);
    await issuer.store.putClient({ ...record, disabled: true });
    expect(await codeOf(issuer.clientCredentials({ clientId: 'stored', clientSecret: 'stored-secret-0123456789' }))).toBe(
      'issuer.invalid_client',
    );
    await issuer.store.putClient({ ...record, id: 'billing' });
    expect(await codeOf(issuer.clientCredentials({ clientId: 'billing', clientSecret: 'stored-secret-0123456789' }))).toBe(
      'issuer.invalid_client',
    );
  });
});

describe('sessions and refresh rotation', () => {
  let issuer: Issuer;
  let clock = Date.now();
  const revocation = createRevocationList(undefined);
  const events: IssuerEvent[] = [];
  beforeAll(async () => {
    await revocation.start();
    issuer = await openIssuer(
      tempDir(),
      { refreshTokenTtlSec: 3600, sessionTtlSec: 7200 },
      { now: () => clock, revocation, onEvent: (e) => events.push(e) },
    );
  });
  afterAll(async () => {
    await issuer.close();
    await revocation.close();
  });

  it('mints a session: access token with sid and the claims, an opaque refresh token', async () => {
    const session = await issuer.mintSession({
      subject: 'alice',
      claims: { roles: ['teller'], tenant: 'acme' },
      scope: 'profile',
    });
    expect(session.refreshToken).toMatch(/^brt_[A-Za-z0-9_-]{43}$/);
    const { payload } = await verify(issuer, session.accessToken);
    expect(payload.sub).toBe('alice');
    expect(payload['sid']).toBe(session.sessionId);
    expect(payload['roles']).toEqual(['teller']);
    expect(payload['tenant']).toBe('acme');
    expect(payload.aud).toBe('https://app.test');
    expect(session.refreshExpiresIn).toBe(3600);
    // The store keeps a hash, never the token.
    const stored = JSON.stringify(
      await issuer.store.getRefresh((await import('../../src/issuer/issuer.js')).refreshTokenId(session.refreshToken)),
    );
    expect(stored).not.toContain(session.refreshToken);
  });

  it('refuses registered claims and empty subjects', async () => {
    await expect(issuer.mintSession({ subject: 'alice', claims: { sub: 'root' } })).rejects.toBeInstanceOf(TypeError);
    await expect(issuer.mintSession({ subject: 'alice', claims: { exp: 1 } })).rejects.toBeInstanceOf(TypeError);
    await expect(issuer.mintSession({ subject: '' })).rejects.toBeInstanceOf(TypeError);
  });

  it('rotates on every use; a reused token revokes the whole family, access tokens included', async () => {
    const session = await issuer.mintSession({ subject: 'bob', claims: { roles: ['auditor'] } });
    const first = await issuer.refresh(session.refreshToken);
    expect(first.refreshToken).not.toBe(session.refreshToken);
    expect(first.sessionId).toBe(session.sessionId);
    const { payload } = await verify(issuer, first.accessToken);
    expect(payload['roles']).toEqual(['auditor']);
    const second = await issuer.refresh(first.refreshToken!);
    expect(revocation.isRevoked({ subject: 'bob', claims: { sid: session.sessionId } }).revoked).toBe(false);
    // The thief replays the first refresh token: the session ends for everyone.
    expect(await codeOf(issuer.refresh(first.refreshToken!))).toBe('issuer.invalid_grant');
    expect(await codeOf(issuer.refresh(second.refreshToken!))).toBe('issuer.invalid_grant');
    expect(events.some((e) => e.type === 'refresh_reuse' && e.sid === session.sessionId)).toBe(true);
    expect(revocation.isRevoked({ subject: 'bob', claims: { sid: session.sessionId } }).revoked).toBe(true);
    // Other sessions are untouched.
    const other = await issuer.mintSession({ subject: 'bob' });
    expect((await issuer.refresh(other.refreshToken)).refreshToken).toBeDefined();
  });

  it('malformed, unknown and expired refresh tokens are invalid_grant', async () => {
    expect(await codeOf(issuer.refresh('not-a-token'))).toBe('issuer.invalid_grant');
    expect(await codeOf(issuer.refresh(`brt_${'A'.repeat(43)}`))).toBe('issuer.invalid_grant');
    const session = await issuer.mintSession({ subject: 'carol' });
    clock += 3601_000;
    try {
      expect(await codeOf(issuer.refresh(session.refreshToken))).toBe('issuer.invalid_grant');
    } finally {
      clock -= 3601_000;
    }
  });

  it('a session ends at sessionTtlSec however often it is refreshed', async () => {
    const start = clock;
    try {
      let token = (await issuer.mintSession({ subject: 'dave' })).refreshToken;
      for (let i = 0; i < 2; i++) {
        clock += 3000_000;
        token = (await issuer.refresh(token)).refreshToken!;
      }
      clock += 3000_000;
      // 9000 s after the start: past the 7200 s session, though the last token is only 3000 s old.
      expect(await codeOf(issuer.refresh(token))).toBe('issuer.invalid_grant');
    } finally {
      clock = start;
    }
  });

  it('endSession and endSessionsOf revoke refresh tokens and the sid', async () => {
    const a = await issuer.mintSession({ subject: 'erin' });
    const b = await issuer.mintSession({ subject: 'erin' });
    expect(await issuer.endSessionOf(a.refreshToken)).toBe(true);
    expect(await codeOf(issuer.refresh(a.refreshToken))).toBe('issuer.invalid_grant');
    expect(revocation.isRevoked({ subject: 'erin', claims: { sid: a.sessionId } }).revoked).toBe(true);
    expect(await issuer.endSessionsOf('erin')).toContain(b.sessionId);
    expect(await codeOf(issuer.refresh(b.refreshToken))).toBe('issuer.invalid_grant');
  });

  it('revokeAccessToken revokes one of its own tokens by jti, and ignores foreign tokens', async () => {
    const set = await issuer.clientCredentials({ clientId: 'billing', clientSecret: SECRET });
    const { payload } = await verify(issuer, set.accessToken);
    expect(await issuer.revokeAccessToken(set.accessToken)).toBe(true);
    expect(revocation.isRevoked({ subject: 'billing', claims: { jti: payload.jti } }).revoked).toBe(true);
    expect(await issuer.revokeAccessToken('eyJhbGciOiJub25lIn0.e30.')).toBe(false);
  });
});

describe('binding', () => {
  it('a bound session refuses another user agent without spending the token', async () => {
    const issuer = await openIssuer(tempDir(), { browser: { bind: ['user_agent'] } });
    try {
      const session = await issuer.mintSession({ subject: 'frank', client: { userAgent: 'UA-1' } });
      expect(await codeOf(issuer.refresh(session.refreshToken, { client: { userAgent: 'UA-2' } }))).toBe('issuer.invalid_grant');
      const next = await issuer.refresh(session.refreshToken, { client: { userAgent: 'UA-1' } });
      expect(next.refreshToken).toBeDefined();
    } finally {
      await issuer.close();
    }
  });
});

describe('algorithms and encryption', () => {
  it('a client may be signed with EdDSA; the JWKS publishes both keys', async () => {
    const [hash] = await secretHashes();
    const issuer = await openIssuer(tempDir(), {
      clients: [{ id: 'edge', secretHash: hash, audiences: ['https://x.test'], algorithm: 'EdDSA' }],
    });
    try {
      const set = await issuer.clientCredentials({ clientId: 'edge', clientSecret: SECRET });
      expect(decodeProtectedHeader(set.accessToken).alg).toBe('EdDSA');
      expect((await verify(issuer, set.accessToken)).payload.sub).toBe('edge');
      expect(new Set(issuer.keys.jwks().keys.map((k) => k.alg))).toEqual(new Set(['ES256', 'EdDSA']));
    } finally {
      await issuer.close();
    }
  });
});
