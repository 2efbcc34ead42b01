import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RequestContext } from '../../src/core/context.js';
import { compileExtraFields, eventFromContext } from '../../src/audit/event.js';
import { createAuditLog } from '../../src/audit/log.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { canonicalize } from '../../src/audit/canonical.js';
import { compileMasking, isSensitiveKey, Masker, REDACTED, scrubTokens, toJsonData } from '../../src/audit/mask.js';
import type { MaskingConfig } from '../../src/audit/schema.js';
import { auditConfig, silentLogger, tempDir } from './helpers.js';

const JWT =
  'eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsImVtYWlsIjoiYWxpY2VAZXhhbXBsZS5jb20ifQ.MEUCIQDx3i1m8w0Zr9aQ2c4bY7t6sK1v';
const HMAC_KEY = 'k'.repeat(32);

function context(headers: Record<string, string> = {}): RequestContext {
  const ctx = new RequestContext({
    method: 'POST',
    rawTarget: '/orders/42?page=2&token=abc123secretvalue&email=alice@example.com',
    headers: { host: 'api.example.com', 'user-agent': 'curl/8.5', ...headers },
    peerAddress: '10.0.0.9',
    peerPort: 5555,
    protocol: 'h2',
    secure: true,
    requestId: 'req-1',
  });
  ctx.path = '/orders/42';
  ctx.query = 'page=2&token=abc123secretvalue&email=alice@example.com';
  ctx.host = 'api.example.com';
  ctx.route = { id: 'orders', params: { id: '42' } };
  ctx.trace = { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', sampled: true };
  ctx.identity = {
    subject: 'alice',
    tenant: 'acme',
    roles: ['buyer'],
    scopes: ['orders:write'],
    claims: { sub: 'alice', email: 'alice@example.com', org: { id: 7, name: 'Acme' }, card: '4111111111111111' },
    provider: 'main',
    keyId: 'k1',
  };
  return ctx;
}

function mask(record: Record<string, unknown>, config: MaskingConfig): Record<string, unknown> {
  new Masker(compileMasking(config)).apply(record);
  return record;
}

describe('eventFromContext', () => {
  it('builds a request event: identity, trace, route, verdict from the first deny, every decision', () => {
    const ctx = context({ 'content-type': 'application/grpc+proto' });
    ctx.decisions.push({ stage: 'authn', outcome: 'allow', code: 'jwt.valid', detail: { provider: 'main', kid: 'k1' } });
    ctx.decisions.push({ stage: 'authz', outcome: 'shadow_deny', code: 'rbac.denied', detail: { policy: 'p2', rule: 'r9' } });
    ctx.decisions.push({
      stage: 'authz',
      outcome: 'deny',
      code: 'rbac.no_matching_rule',
      detail: { policy: 'orders', rule: 'r1' },
    });
    const event = eventFromContext(ctx, {
      status: 403,
      latencyMs: 1.2345,
      bytesIn: 10,
      bytesOut: 99,
      clientIp: '203.0.113.7',
      grpcStatus: 7,
    });
    expect(event).toMatchObject({
      kind: 'request',
      requestId: 'req-1',
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
      spanId: '00f067aa0ba902b7',
      subject: 'alice',
      tenant: 'acme',
      roles: ['buyer'],
      clientIp: '203.0.113.7',
      userAgent: 'curl/8.5',
      protocol: 'h2',
      method: 'POST',
      grpcMethod: '/orders/42',
      path: '/orders/42',
      route: 'orders',
      decision: 'deny',
      stage: 'authz',
      reason: 'rbac.no_matching_rule',
      policy: 'orders',
      rule: 'r1',
      status: 403,
      grpcStatus: 7,
      bytesIn: 10,
      bytesOut: 99,
    });
    expect(event.decisions.map((d) => `${d.stage}:${d.outcome}:${d.code}`)).toEqual([
      'authn:allow:jwt.valid',
      'authz:shadow_deny:rbac.denied',
      'authz:deny:rbac.no_matching_rule',
    ]);
    expect(event.claims).toBeUndefined();
  });

  it('an outcome error without a deny is decision error; no decisions at all is allow', () => {
    const ctx = context();
    const failed = eventFromContext(ctx, {
      status: 504,
      latencyMs: 30_000,
      bytesIn: 0,
      bytesOut: 0,
      clientIp: '1.2.3.4',
      error: { code: 'upstream.timeout', stage: 'forward' },
    });
    expect(failed).toMatchObject({ decision: 'error', stage: 'forward', reason: 'upstream.timeout', grpcMethod: null });
    // Refusals no stage recorded take their verdict from the code: deny by default is a deny.
    const verdict = (code: string, status: number) =>
      eventFromContext(ctx, { status, latencyMs: 1, bytesIn: 0, bytesOut: 0, clientIp: '1.2.3.4', error: { code } }).decision;
    expect(verdict('route.not_found', 404)).toBe('deny');
    expect(verdict('request.path_encoded_slash', 400)).toBe('deny');
    expect(verdict('request.http_version', 400)).toBe('deny');
    expect(verdict('issuer.invalid_client', 401)).toBe('deny');
    expect(verdict('issuer.store_unavailable', 503)).toBe('error');
    expect(verdict('issuer.no_signing_key', 503)).toBe('error');
    expect(verdict('revocation.store_unavailable', 503)).toBe('error');
    expect(verdict('ratelimit.overloaded', 503)).toBe('limit');
    expect(verdict('request.aborted', 499)).toBe('error');
    expect(verdict('gateway.internal', 500)).toBe('error');
    expect(verdict('audit.unavailable', 503)).toBe('error');
    const limited = context();
    limited.decisions.push({ stage: 'ratelimit', outcome: 'deny', code: 'ratelimit.exceeded', detail: { policy: 'per-client' } });
    expect(eventFromContext(limited, { status: 429, latencyMs: 1, bytesIn: 0, bytesOut: 0, clientIp: '1.2.3.4' })).toMatchObject({
      decision: 'limit',
      stage: 'ratelimit',
      reason: 'ratelimit.exceeded',
      policy: 'per-client',
    });
    const allowed = eventFromContext(ctx, {
      status: 200,
      latencyMs: 1,
      bytesIn: 0,
      bytesOut: 0,
      clientIp: '1.2.3.4',
      upstream: 'orders-pool',
    });
    expect(allowed).toMatchObject({ decision: 'allow', stage: null, reason: null, upstream: 'orders-pool' });
  });

  it('picks configured extras: nested claims (copied, not shared), headers, query parameters', () => {
    const ctx = context({ 'x-client-version': '4.2', authorization: `Bearer ${JWT}` });
    const extras = compileExtraFields({
      claims: ['email', 'org.id', 'missing'],
      headers: ['X-Client-Version', 'authorization'],
      query: ['page', 'token', 'absent'],
    });
    const event = eventFromContext(ctx, { status: 200, latencyMs: 1, bytesIn: 0, bytesOut: 0, clientIp: '1.2.3.4' }, extras);
    expect(event.claims).toEqual({ email: 'alice@example.com', org: { id: 7 } });
    expect(event.headers).toEqual({ 'x-client-version': '4.2', authorization: `Bearer ${JWT}` }); // raw until masked
    expect(event.query).toEqual({ page: '2', token: 'abc123secretvalue' });
    expect((ctx.identity?.claims['org'] as { name: string }).name).toBe('Acme');
  });
});

describe('masking', () => {
  it('redact, keyed hash (stable per key), partial (last N, never a short value whole)', () => {
    const record = () => ({
      subject: 'alice',
      clientIp: '203.0.113.7',
      claims: { email: 'alice@example.com', card: '4111111111111111', pin: '1234' },
      details: { items: [{ iban: 'DE89370400440532013000' }, { iban: 'FR1420041010050500013M02606' }] },
    });
    const config: MaskingConfig = {
      hmacKey: HMAC_KEY,
      fields: [
        { path: 'clientIp', action: 'redact' },
        { path: 'claims.email', action: 'hash' },
        { path: 'claims.card', action: 'partial', keep: 4 },
        { path: 'claims.pin', action: 'partial', keep: 4 },
        { path: 'details.items.*.iban', action: 'partial', keep: 4 },
      ],
      headers: {},
      query: {},
    };
    const a = mask(record(), config);
    const b = mask(record(), config);
    const other = mask(record(), { ...config, hmacKey: 'another-key-of-32-characters-xyz' });
    expect(a['clientIp']).toBe(REDACTED);
    const claims = a['claims'] as Record<string, string>;
    expect(claims['email']).toMatch(/^hmac:[A-Za-z0-9_-]{22}$/);
    expect(claims['email']).toBe((b['claims'] as Record<string, string>)['email']); // a pseudonym: stable
    expect(claims['email']).not.toBe((other['claims'] as Record<string, string>)['email']); // keyed
    expect(claims['card']).toBe('************1111');
    expect(claims['pin']).toBe(REDACTED); // shorter than 2×keep: showing 4 would show it all
    expect(a['details']).toEqual({ items: [{ iban: '******************3000' }, { iban: '***********************2606' }] });
    expect(a['subject']).toBe('alice');
  });

  it("never masks the record's own fields, even in a config that skipped auditChecks (library callers)", () => {
    const record = {
      chain: 'c',
      hash: 'h',
      id: '0190a0b0-0000-7000-8000-000000000000',
      kind: 'event',
      n: 3,
      prev: 'p',
      seq: 7,
      subject: 'alice',
      ts: 't',
      v: 1,
    };
    const fields = ['chain', 'hash', 'id', 'kind', 'n', 'prev', 'seq', 'ts', 'v'].map((path) => ({
      path,
      action: 'redact' as const,
    }));
    expect(mask({ ...record }, { headers: {}, query: {}, fields: [...fields, { path: 'subject', action: 'redact' }] })).toEqual({
      ...record,
      subject: REDACTED,
    });
  });

  it('an absent value stays absent: an anonymous request is not "[redacted]"', () => {
    const config: MaskingConfig = {
      hmacKey: HMAC_KEY,
      fields: [
        { path: 'subject', action: 'hash' },
        { path: 'tenant', action: 'redact' },
        { path: 'claims.email', action: 'partial', keep: 2 },
      ],
      headers: {},
      query: {},
    };
    expect(mask({ subject: null, tenant: null, claims: { email: null } }, config)).toEqual({
      subject: null,
      tenant: null,
      claims: { email: null },
    });
    const masked = mask({ subject: 'alice', tenant: 'acme', claims: { email: 'a@b.example' } }, config);
    expect(masked['subject']).toMatch(/^hmac:/);
    expect(masked['tenant']).toBe(REDACTED);
  });

  it('header and query rules by name (headers case-insensitive)', () => {
    const masked = mask(
      { headers: { 'x-api-key': 'abcd1234efgh5678', 'x-tenant-hint': 'acme' }, query: { email: 'alice@example.com', page: '2' } },
      { hmacKey: HMAC_KEY, fields: [], headers: { 'X-Api-Key': { action: 'partial', keep: 4 } }, query: { email: 'hash' } },
    );
    expect(masked['headers']).toEqual({ 'x-api-key': REDACTED, 'x-tenant-hint': 'acme' }); // *-key is a credential: never partial
    expect((masked['query'] as Record<string, string>)['email']).toMatch(/^hmac:/);
    expect((masked['query'] as Record<string, string>)['page']).toBe('2');
  });

  it('never raw, whatever the config: Authorization, Proxy-Authorization, Cookie, Set-Cookie, credential-named keys', () => {
    const record = {
      headers: {
        authorization: `Bearer ${JWT}`,
        'proxy-authorization': 'Basic dXNlcjpwYXNzd29yZA==',
        cookie: 'session=s3cr3t-session-value',
        'set-cookie': ['sid=abc; HttpOnly', 'x=y'],
        'x-request-source': 'mobile',
      },
      query: { access_token: 'opaque-token-value-1', page: '2' },
      details: {
        password: 'hunter2hunter2',
        nested: { client_secret: 'cs-123', apiKey: 'k-1', note: 'ok' },
        tokens_remaining: 5,
      },
    };
    // Rules that try to let them through: partial on Authorization, a field rule on cookie.
    const masked = mask(record, {
      fields: [{ path: 'headers.cookie', action: 'partial', keep: 8 }],
      headers: { authorization: { action: 'partial', keep: 10 } },
      query: {},
    });
    expect(masked['headers']).toEqual({
      authorization: REDACTED,
      'proxy-authorization': REDACTED,
      cookie: REDACTED,
      'set-cookie': REDACTED,
      'x-request-source': 'mobile',
    });
    expect(masked['query']).toEqual({ access_token: REDACTED, page: '2' });
    expect(masked['details']).toEqual({
      password: REDACTED,
      nested: { client_secret: REDACTED, apiKey: REDACTED, note: 'ok' },
      tokens_remaining: 5,
    });
    // A hash rule on Authorization is allowed: a pseudonym is not the raw value.
    const hashed = mask(
      { headers: { authorization: `Bearer ${JWT}` } },
      { hmacKey: HMAC_KEY, fields: [], headers: { authorization: 'hash' }, query: {} },
    );
    expect((hashed['headers'] as Record<string, string>)['authorization']).toMatch(/^hmac:/);
  });

  it('credential names beyond the exact list: any *api-key, cookies, token/secret/password words', () => {
    const credentials = [
      'x-goog-api-key',
      'X-Goog-Api-Key',
      'googleApiKey',
      'ocp-apim-subscription-key',
      'cookies',
      'Cookies',
      'x-auth-token',
      'x-csrf-token',
      'x-amz-security-token',
      'authtoken',
      'tokenValue',
      'client_secret_hash',
      'secrets',
      'db.password',
      'passwords',
      'x-session-id',
      'session',
      'PHPSESSID',
      'credentials',
      'x-auth',
      'proxy-authorization',
      'private_key',
    ];
    const ordinary = [
      'x-request-id',
      'x-client-version',
      'user-agent',
      'keyId',
      'tokens_remaining',
      'max_tokens',
      'tokenizer',
      'token_type',
      'password_length',
      'cookie_count',
      'secret_name',
      'api_key_id',
      'author',
      'session_count',
    ];
    expect(credentials.filter((name) => !isSensitiveKey(name))).toEqual([]);
    expect(ordinary.filter((name) => isSensitiveKey(name))).toEqual([]);
    const masked = mask(
      {
        headers: { 'x-goog-api-key': 'AIzaSyA-raw-key', 'x-request-id': 'req-9' },
        details: { cookies: { sid: 'abc' }, usage: { max_tokens: 5 } },
      },
      { fields: [], headers: {}, query: {} },
    );
    expect(masked).toEqual({
      headers: { 'x-goog-api-key': REDACTED, 'x-request-id': 'req-9' },
      details: { cookies: REDACTED, usage: { max_tokens: 5 } },
    });
  });

  it('plural credential names: their text is redacted, their counts stay', () => {
    const masked = mask(
      {
        details: {
          refresh_tokens: ['opaque-refresh-1', 'opaque-refresh-2'],
          apiKeys: 'k-123 k-456',
          sessionIds: { web: 's1' },
          tokens: [3, 'opaque-3', { access: 'opaque-4' }, true],
          usage: { max_tokens: 5, input_tokens: 12, tokens_remaining: 'few' },
        },
        headers: { 'x-api-keys': 'k-789' },
        query: { access_tokens: 'opaque-5' },
      },
      { fields: [{ path: 'details.apiKeys', action: 'partial', keep: 2 }], headers: {}, query: {} },
    );
    expect(masked).toEqual({
      details: {
        refresh_tokens: [REDACTED, REDACTED],
        // A partial rule cannot show part of one either.
        apiKeys: REDACTED,
        sessionIds: REDACTED,
        tokens: [3, REDACTED, REDACTED, true],
        usage: { max_tokens: 5, input_tokens: 12, tokens_remaining: 'few' },
      },
      headers: { 'x-api-keys': REDACTED },
      query: { access_tokens: REDACTED },
    });
    const listed = mask(
      { details: { tokens: [3, 'opaque-3', { access: 'opaque-4' }, true] } },
      { fields: [], headers: {}, query: {} },
    );
    expect(listed).toEqual({ details: { tokens: [3, REDACTED, REDACTED, true] } });
  });

  it('any Bearer token in free text, however short', () => {
    expect(scrubTokens('Bearer x')).toBe('Bearer [redacted]');
    expect(scrubTokens('upstream said: bearer abc123 rejected')).toBe('upstream said: bearer [redacted] rejected');
    expect(scrubTokens('Authorization: Bearer s3cr3t')).toBe('Authorization: Bearer [redacted]');
    // The other scheme names are ordinary words too: a short word after them stays.
    expect(scrubTokens('Basic usage of the Token API')).toBe('Basic usage of the Token API');
    expect(
      JSON.stringify(mask({ details: { note: 'login with Bearer ab12' } }, { fields: [], headers: {}, query: {} })),
    ).not.toContain('ab12');
  });

  it('cuts token-shaped text out of any string: JWTs and HTTP credentials', () => {
    expect(scrubTokens(`/reset/${JWT}/confirm`)).toBe('/reset/[redacted:jwt]/confirm');
    expect(scrubTokens('upstream said: Authorization: Bearer abcdefghijklmnop rejected')).toBe(
      'upstream said: Authorization: Bearer [redacted] rejected',
    );
    expect(scrubTokens('basic   dXNlcjpwYXNzd29yZA==')).toBe('basic   [redacted]');
    expect(scrubTokens('nothing to see here, an ordinary sentence')).toBe('nothing to see here, an ordinary sentence');
    const masked = mask(
      { path: `/x/${JWT}`, userAgent: `tool Bearer ${JWT}`, details: { text: [`id_token was ${JWT}`] } },
      { fields: [], headers: {}, query: {} },
    );
    expect(JSON.stringify(masked)).not.toContain('eyJhbGci');
  });

  it('toJsonData makes any input writable: cycles, bigint, NaN, Dates, lone surrogates, huge strings', () => {
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic['self'] = cyclic;
    const out = toJsonData({
      cyclic,
      big: 10n,
      nan: Number.NaN,
      date: new Date(0),
      fn: () => 1,
      lone: 'x\ud800y',
      long: 'z'.repeat(10_000),
      buf: Buffer.from('hi'),
    }) as Record<string, unknown>;
    expect(out['big']).toBe('10');
    expect(out['nan']).toBeNull();
    expect(out['date']).toBe('1970-01-01T00:00:00.000Z');
    expect('fn' in out).toBe(false);
    expect(out['lone']).toBe('x\ufffdy');
    expect((out['long'] as string).length).toBeLessThan(4200);
    expect(out['buf']).toBe('[binary]');
    expect(JSON.stringify(out)).toContain('[too deep]');
  });
});

describe('canonical-ready records', () => {
  // The writer hashes JSON.stringify of a masked record instead of running the general
  // canonicalizer; verify recomputes with the canonicalizer. They must never differ.
  it('JSON.stringify of any masked record equals its RFC 8785 canonical form', () => {
    let seed = 42;
    const random = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    const pieces = [
      'a',
      'B',
      'é',
      '€',
      '\ud83d\ude00',
      '\ud800',
      '"',
      '\\',
      '\n',
      '\u0000',
      '\u007f',
      '\u2028',
      '10',
      '1',
      'Z',
      '_',
      'token',
      'eyJhbGciOiJIUzI1NiJ9',
    ];
    const text = () =>
      Array.from({ length: 1 + Math.floor(random() * 4) }, () => pieces[Math.floor(random() * pieces.length)]).join('');
    const value = (depth: number): unknown => {
      const r = random();
      if (depth > 3 || r < 0.3) return text();
      if (r < 0.45)
        return [0, -0, 1.5, 1e21, 1e-7, Number('333333333.33333329'), Number.NaN, Infinity, 2 ** 53][Math.floor(random() * 9)];
      if (r < 0.5) return random() < 0.5 ? null : random() < 0.5;
      if (r < 0.6) return [undefined, value(depth + 1), value(depth + 1)];
      const out: Record<string, unknown> = {};
      for (let i = 0; i < 1 + Math.floor(random() * 5); i++) out[text()] = value(depth + 1);
      return out;
    };
    const masker = new Masker(
      compileMasking({
        hmacKey: HMAC_KEY,
        // A partial mask keeps its tail: a lone surrogate there must not survive into the record.
        fields: [
          { path: 'details.*.é', action: 'hash' },
          { path: 'subject', action: 'partial', keep: 1 },
        ],
        headers: {},
        query: {},
      }),
    );
    let readyNot = 0;
    for (let i = 0; i < 2000; i++) {
      const record: Record<string, unknown> = { details: toJsonData(value(0)), kind: 'event', subject: text(), v: 1 };
      const ready = masker.apply(record);
      if (ready) expect(JSON.stringify(record)).toBe(canonicalize(record));
      else readyNot++;
    }
    // Objects with integer-like keys ("1", "10") are reported not ready: they take the canonicalizer.
    expect(readyNot).toBeGreaterThan(0);
    expect(readyNot).toBeLessThan(2000);
  });
});

describe('masking through the pipeline: nothing secret reaches the file', () => {
  const dirs: (() => void)[] = [];
  afterEach(() => dirs.splice(0).forEach((cleanup) => cleanup()));

  it('request and business events with secrets in every place', async () => {
    const { dir, cleanup } = tempDir();
    dirs.push(cleanup);
    const log = await createAuditLog(
      auditConfig(dir, {
        masking: {
          hmacKey: HMAC_KEY,
          fields: [
            { path: 'claims.email', action: 'hash' },
            { path: 'claims.card', action: 'partial', keep: 4 },
            { path: 'details.card', action: 'partial', keep: 4 },
          ],
          headers: {},
          query: { email: 'hash' },
        },
        extraFields: {
          claims: ['email', 'card'],
          headers: ['authorization', 'cookie', 'x-client-version'],
          query: ['token', 'email', 'page'],
        },
      }),
      { logger: silentLogger() },
    );
    const ctx = context({ authorization: `Bearer ${JWT}`, cookie: 'session=s3cr3t-session-value', 'x-client-version': '4.2' });
    log.record(log.fromContext(ctx, { status: 200, latencyMs: 3, bytesIn: 1, bytesOut: 2, clientIp: '203.0.113.7' }));
    log.record({
      action: 'payment.refund',
      subject: 'alice',
      tenant: 'acme',
      resource: 'order:42',
      details: { card: '4111111111111111', password: 'hunter2hunter2', memo: `customer pasted ${JWT}` },
    });
    // Integer-like keys cannot be ordered canonically by a JS object: the writer must still hash the canonical form.
    log.record({ action: 'ledger.adjust', details: { '10': 'ten', '9': 'nine', b: { '0': 'zero', a: 1 } } });
    await log.close();
    const text = readFileSync(join(dir, 'audit.jsonl'), 'utf8');
    expect((await verifyAudit({ file: join(dir, 'audit.jsonl') }, { sealed: true })).ok).toBe(true);
    for (const secret of [
      JWT.slice(0, 40),
      's3cr3t-session-value',
      'abc123secretvalue',
      'alice@example.com',
      '4111111111111111',
      'hunter2hunter2',
    ])
      expect(text).not.toContain(secret);
    const [request, business] = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r['kind'] === 'request' || r['kind'] === 'event');
    expect(request).toMatchObject({
      headers: { authorization: REDACTED, cookie: REDACTED, 'x-client-version': '4.2' },
      query: { token: REDACTED, page: '2' },
      claims: { card: '************1111' },
    });
    expect((request?.['claims'] as Record<string, string>)['email']).toMatch(/^hmac:/);
    expect((request?.['query'] as Record<string, string>)['email']).toMatch(/^hmac:/);
    expect(business).toMatchObject({
      action: 'payment.refund',
      details: { card: '************1111', password: REDACTED, memo: 'customer pasted [redacted:jwt]' },
    });
  });

  it('a lone surrogate in a header or query NAME of a request event: cleaned like values, the record verifies', async () => {
    const { dir, cleanup } = tempDir();
    dirs.push(cleanup);
    const path = join(dir, 'audit.jsonl');
    const log = await createAuditLog(auditConfig(dir), { logger: silentLogger() });
    const event = eventFromContext(context(), { status: 200, latencyMs: 1, bytesIn: 0, bytesOut: 0, clientIp: '10.0.0.9' });
    log.record({ ...event, headers: { 'x-\ud800': 'v', 'x-b': 'w' }, query: { ['\udc00q']: '1', a: '2' } });
    // Two names that clean to the same text: one of them is kept, deterministically; still verifiable.
    log.record({ ...event, headers: { 'x-\ud800': 'first', 'x-\udbff': 'second' } });
    await log.close();
    const report = await verifyAudit({ file: path }, { sealed: true });
    expect(report.issues.filter((i) => i.severity === 'error').map((i) => i.code)).toEqual([]);
    expect(report.ok).toBe(true);
    const requests = readFileSync(path, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r['kind'] === 'request');
    expect(requests[0]!['headers']).toEqual({ 'x-\ufffd': 'v', 'x-b': 'w' });
    expect(requests[0]!['query']).toEqual({ a: '2', '\ufffdq': '1' });
    expect(Object.keys(requests[1]!['headers'] as object)).toEqual(['x-\ufffd']);
  });

  it('hostile business events: refused at record() or written safely, never a crash, never raw, always verifiable', async () => {
    const { dir, cleanup } = tempDir();
    dirs.push(cleanup);
    const log = await createAuditLog(auditConfig(dir), { logger: silentLogger() });
    // Read at record(): a throwing getter or Proxy is the caller's TypeError now, not a crash later.
    const throwing = {
      action: 'x.y',
      get subject(): string {
        throw new Error('boom');
      },
    };
    expect(() => log.record(throwing)).toThrow(TypeError);
    const trap = new Proxy(
      {},
      {
        ownKeys: () => {
          throw new Error('trap');
        },
      },
    );
    expect(() => log.record({ action: 'x.y', details: trap })).toThrow(TypeError);
    // Top-level fields are strings or null: an object (with a toJSON) would bypass masking.
    const sneaky = { toJSON: () => ({ password: 'hunter2hunter2' }) };
    expect(() => log.record({ action: 'x.y', subject: sneaky as unknown as string })).toThrow(TypeError);
    // Snapshotted at record(): a later change by the caller does not reach the log.
    const details: Record<string, unknown> = { amount: 120 };
    log.record({ action: 'payment.refund', details });
    details['amount'] = 999_999;
    // Numbers under credential names, camelCase credential names, a __proto__ key, a cycle.
    const cyclic: Record<string, unknown> = {};
    for (let i = 0; i < 8; i++) cyclic[`k${i}`] = cyclic;
    const started = Date.now();
    log.record({
      action: 'x.secrets',
      details: JSON.parse(
        '{"pin": 1234, "password": 987654, "accessToken": "opaque-value-1", "clientSecret": "s3", "__proto__": {"a": 1}}',
      ) as Record<string, unknown>,
    });
    log.record({ action: 'x.cycle', details: { cyclic } });
    expect(Date.now() - started).toBeLessThan(2000);
    await log.close();
    const text = readFileSync(join(dir, 'audit.jsonl'), 'utf8');
    expect((await verifyAudit({ file: join(dir, 'audit.jsonl') }, { sealed: true })).ok).toBe(true);
    expect(text).not.toContain('hunter2hunter2');
    expect(text).not.toContain('987654');
    expect(text).not.toContain('opaque-value-1');
    const events = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r['kind'] === 'event');
    expect(events.map((e) => e['action'])).toEqual(['payment.refund', 'x.secrets', 'x.cycle']);
    expect(events[0]!['details']).toEqual({ amount: 120 });
    expect(events[1]!['details']).toMatchObject({ password: REDACTED, accessToken: REDACTED, clientSecret: REDACTED });
    expect(Object.keys(events[1]!['details'] as object)).toContain('__proto__');
  });
});
