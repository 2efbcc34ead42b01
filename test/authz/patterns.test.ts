import { describe, expect, it } from 'vitest';
import { claimRef, readClaim, SubjectPattern, validateGrpcMethod, validateSubjectPattern } from '../../src/authz/patterns.js';
import { compileGlob } from '../../src/gateway/router.js';

function subject(pattern: string): SubjectPattern {
  const compiled = SubjectPattern.compile(pattern);
  if (typeof compiled === 'string') throw new Error(compiled);
  return compiled;
}

describe('SubjectPattern', () => {
  it.each([
    // exact
    ['user:alice', 'user:alice', true],
    ['user:alice', 'user:alicex', false],
    ['user:alice', 'User:alice', false],
    // `*`: one or more characters inside one segment
    ['user:*', 'user:bob', true],
    ['user:*', 'user:', false],
    ['user:*', 'user:a/b', false],
    ['*@example.com', 'bob@example.com', true],
    ['*@example.com', '@example.com', false],
    ['*@example.com', 'bob@example.com.evil', false],
    ['a*b*c', 'axbyc', true],
    ['a*b*c', 'abc', false],
    ['a*b*c', 'axbc', false],
    ['a*b*c', 'axbbyc', true],
    ['a*a', 'aa', false],
    ['a*a', 'aaa', true],
    // `**`: any number of whole segments, including none (like router globs)
    ['spiffe://td/ns/billing/**', 'spiffe://td/ns/billing/sa/invoicer', true],
    ['spiffe://td/ns/billing/**', 'spiffe://td/ns/billing', true],
    ['spiffe://td/ns/billing/**', 'spiffe://td/ns/billing/', true],
    ['spiffe://td/ns/billing/**', 'spiffe://td/ns/billingx/sa', false],
    ['spiffe://td/ns/billing/**', 'spiffe://td/ns', false],
    ['spiffe://td/ns/billing/**', 'spiffe://tdx/ns/billing/sa', false],
    ['spiffe://td/ns/*/sa/web', 'spiffe://td/ns/shop/sa/web', true],
    ['spiffe://td/ns/*/sa/web', 'spiffe://td/ns//sa/web', false],
    ['spiffe://td/ns/*/sa/web', 'spiffe://td/ns/a/b/sa/web', false],
    ['spiffe://td/**/sa/web', 'spiffe://td/ns/a/b/sa/web', true],
    // wildcards stand for names: never a dot segment or a control character
    ['spiffe://td/ns/billing/**', 'spiffe://td/ns/billing/../../admin', false],
    ['spiffe://td/ns/*/sa/web', 'spiffe://td/ns/../sa/web', false],
    ['spiffe://td/ns/*/sa/web', 'spiffe://td/ns/./sa/web', false],
    ['user:*', 'user:bob\u0000', false],
    ['user:*', 'user:b\nob', false],
    ['spiffe://td/ns/*/sa/web', 'spiffe://td/ns/.well/sa/web', true],
    ['spiffe://td/**/sa/web', 'spiffe://td/sa/web', true],
    ['spiffe://td/**/sa/web', 'spiffe://td/sa/webx', false],
    ['**/admin', '/admin', true],
    ['**/admin', 'admin', true],
    ['**/admin', 'x', false],
    ['**', '', true],
    ['**', 'anything/at/all', true],
    // the tail never reuses a segment the head matched
    ['a/**/a', 'a', false],
    ['a/**/a', 'a/a', true],
  ])('%s ~ %s → %s', (pattern, value, expected) => {
    expect(subject(pattern).match(value)).toBe(expected);
  });

  it('refuses ambiguous or malformed patterns', () => {
    expect(validateSubjectPattern('a/**/b/**')).toMatch(/only once/);
    expect(validateSubjectPattern('a**')).toMatch(/whole segment/);
    expect(validateSubjectPattern('')).toMatch(/empty/);
    expect(validateSubjectPattern('spiffe://td/**')).toBeNull();
  });

  it('stays linear on adversarial input (no backtracking blow-up)', () => {
    const p = subject('*a*a*a*a*a*a*a*a*b');
    const t0 = performance.now();
    expect(p.match('a'.repeat(50_000))).toBe(false);
    expect(p.match('a'.repeat(50_000) + 'b')).toBe(true);
    expect(p.match('a'.repeat(50_000) + 'cb')).toBe(true);
    expect(subject('*a*a*a*a*a*a*a*a*').match('ab'.repeat(4) + 'c'.repeat(50_000))).toBe(false);
    expect(performance.now() - t0).toBeLessThan(200);
  });
});

describe('gRPC method patterns', () => {
  it.each([
    ['/shop.v1.Orders/Get', null],
    ['/Greeter/SayHello', null],
    ['/shop.Orders/*', null],
    ['/shop.Orders/Get*', 'bad'],
    ['/shop.Orders/**', 'bad'],
    ['/shop.Orders/{m}', 'bad'],
    ['/shop.Orders', 'bad'],
    ['shop.Orders/Get', 'bad'],
    ['/shop..Orders/Get', 'bad'],
    ['/*/Get', 'bad'],
  ])('%s', (pattern, expected) => {
    expect(validateGrpcMethod(pattern) === null ? null : 'bad').toBe(expected);
  });
});

describe('readClaim', () => {
  it('prefers an exact top-level name (URL-style claims), then walks own properties only', () => {
    const claims = { 'https://example.com/roles': ['a'], org: { id: 'acme', tags: ['x'] }, list: [{ id: 1 }] };
    expect(readClaim(claims, claimRef('https://example.com/roles'))).toEqual(['a']);
    expect(readClaim(claims, claimRef('org.id'))).toBe('acme');
    expect(readClaim(claims, claimRef('org.missing'))).toBeUndefined();
    expect(readClaim(claims, claimRef('org.id.length'))).toBeUndefined();
    expect(readClaim(claims, claimRef('list.0.id'))).toBeUndefined();
    expect(readClaim(claims, claimRef('constructor'))).toBeUndefined();
    expect(readClaim(claims, claimRef('org.__proto__'))).toBeUndefined();
    expect(readClaim(claims, claimRef('org.toString'))).toBeUndefined();
  });
});

describe('compileGlob (router export)', () => {
  it('matches like the router and exposes capture bounds without allocating', () => {
    const glob = compileGlob('/tenants/{tenant}/orders/**');
    expect(glob.names).toEqual(['tenant']);
    const path = '/tenants/acme/orders/1';
    expect(glob.match(path)).toBe(true);
    expect(path.slice(glob.captureStart(0), glob.captureEnd(0))).toBe('acme');
    expect(glob.match('/tenants//orders/1')).toBe(false);
    expect(glob.match('/tenants/acme/orders')).toBe(true);
    expect(glob.match('/Tenants/acme/orders')).toBe(false);
    expect(() => compileGlob('/a/**/b/**')).toThrow(TypeError);
  });
});
