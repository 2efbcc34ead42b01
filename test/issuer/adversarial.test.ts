/**
 * Adversarial token-endpoint and browser-endpoint requests, through `IssuerHttp` (the code
 * every mount shares): targets asked for under both `audience` and `resource`, grants a client
 * is not registered for, a CSRF header configured in mixed case.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IssuerHttp, type IssuerHttpResponse } from '../../src/issuer/http.js';
import type { Issuer } from '../../src/issuer/issuer.js';
import { OTHER_SECRET, SECRET, openIssuer, tempDir } from './helpers.js';

let issuer: Issuer;
let http: IssuerHttp;

beforeAll(async () => {
  issuer = await openIssuer(tempDir(), {
    browser: { secure: true, allowedOrigins: ['https://app.test'], csrfHeader: 'X-CSRF-Token' },
  });
  http = new IssuerHttp(issuer);
});
afterAll(async () => {
  await issuer.close();
});

function basic(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
}

function post(path: string, body: string, headers: Record<string, string> = {}): Promise<IssuerHttpResponse> {
  return http.serve({
    method: 'POST',
    path,
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    clientAddress: '127.0.0.1',
    body: (async function* () {
      yield Buffer.from(body);
    })(),
  });
}

describe('token endpoint: audience and resource', () => {
  it('a disallowed resource beside an allowed audience is invalid_target, not silently dropped', async () => {
    const res = await post(
      '/oauth/token',
      'grant_type=client_credentials&audience=https://ledger.test&resource=https://evil.test',
      {
        authorization: basic('billing', SECRET),
      },
    );
    expect(res.status).toBe(400);
    expect(res.code).toBe('issuer.invalid_target');
  });

  it('allowed audience and resource together are both granted', async () => {
    const res = await post(
      '/oauth/token',
      'grant_type=client_credentials&audience=https://ledger.test&resource=https://audit.test',
      {
        authorization: basic('billing', SECRET),
      },
    );
    expect(res.status).toBe(200);
    const token = (JSON.parse(res.body) as { access_token: string }).access_token;
    const payload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { aud: string[] };
    expect([...payload.aud].sort()).toEqual(['https://audit.test', 'https://ledger.test']);
  });
});

describe('token endpoint: refresh_token grant', () => {
  it('a client not registered for refresh_token is unauthorized_client, and the token is not spent', async () => {
    const session = await issuer.mintSession({ subject: 'alice' });
    // billing has the default grants: client_credentials only.
    const refused = await post('/oauth/token', `grant_type=refresh_token&refresh_token=${session.refreshToken}`, {
      authorization: basic('billing', SECRET),
    });
    expect(refused.status).toBe(400);
    expect(refused.code).toBe('issuer.unauthorized_client');
    // reports is registered for refresh_token: the same token still rotates.
    const ok = await post('/oauth/token', `grant_type=refresh_token&refresh_token=${session.refreshToken}`, {
      authorization: basic('reports', OTHER_SECRET),
    });
    expect(ok.status).toBe(200);
  });
});

describe('browser endpoints: CSRF header configured in mixed case', () => {
  it('the header, which Node lowercases, is still found', async () => {
    const session = await issuer.mintSession({ subject: 'bob' });
    const csrf = 'csrf-token-0123456789abcdef';
    const res = await post('/oauth/refresh', '', {
      cookie: `bulwark_refresh=${session.refreshToken}; bulwark_csrf=${csrf}`,
      'x-csrf-token': csrf,
      origin: 'https://app.test',
    });
    expect(res.code).toBe(null);
    expect(res.status).toBe(200);
  });
});
