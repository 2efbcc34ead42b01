import { describe, expect, it } from 'vitest';
import { PathPolicySchema, type PathPolicyConfig } from '../../src/config/schema.js';
import { BulwarkError, type ErrorCode } from '../../src/core/errors.js';
import {
  STRICT_PATH_POLICY,
  canonicalizeTarget,
  compilePathPolicy,
  type CanonicalTarget,
  type PathPolicy,
} from '../../src/core/target.js';

interface Row {
  target: string;
  hosts?: readonly string[];
  method?: string;
  scheme?: 'http' | 'https';
  requireHost?: boolean;
  policy?: Partial<PathPolicyConfig>;
  /** Expected canonical path, or… */
  path?: string;
  /** …expected error code. */
  code?: ErrorCode;
  query?: string;
  host?: string;
  port?: number | null;
}

const KEEP_BACKSLASH: Partial<PathPolicyConfig> = { backslash: 'keep', encodedSlash: 'keep' };

const TABLE: Row[] = [
  // plain and fast path
  { target: '/', path: '/' },
  { target: '/a/b/c', path: '/a/b/c' },
  { target: '/a/b/', path: '/a/b/' },
  { target: '/ADMIN', path: '/ADMIN' },
  { target: '/.well-known/x', path: '/.well-known/x' },
  { target: '/...', path: '/...' },
  { target: '/a/..b/c.', path: '/a/..b/c.' },
  { target: "/a-b_c~d!$&'()*+,=:@", path: "/a-b_c~d!$&'()*+,=:@" },
  // rule 1: length
  { target: '/' + 'a'.repeat(8191), path: '/' + 'a'.repeat(8191) },
  { target: '/' + 'a'.repeat(8192), code: 'request.path_too_long' },
  { target: '/abcdefghi', policy: { maxLength: 10 }, path: '/abcdefghi' },
  { target: '/abcdefghij', policy: { maxLength: 10 }, code: 'request.path_too_long' },
  // rule 2: forms
  { target: '*', method: 'OPTIONS', code: 'request.asterisk_form' },
  { target: 'example.com:443', code: 'request.authority_form' },
  { target: '[::1]:8443', code: 'request.authority_form' },
  { target: 'example.com:443', method: 'CONNECT', code: 'request.authority_form' },
  { target: '/x', method: 'CONNECT', code: 'request.authority_form' },
  { target: 'admin', code: 'request.bad_target' },
  { target: '', code: 'request.bad_target' },
  { target: 'mailto:x', code: 'request.bad_target' },
  { target: 'ftp://good.com/x', code: 'request.bad_target' },
  { target: 'http:/good.com/x', code: 'request.bad_target' },
  { target: 'http://evil.com/admin', hosts: ['good.com'], code: 'request.host_mismatch' },
  { target: 'HTTP://GOOD.com:80/x', hosts: ['good.com'], path: '/x', host: 'good.com', port: null },
  { target: 'http://good.com/x', hosts: ['good.com:80'], path: '/x', host: 'good.com', port: 80 },
  { target: 'https://good.com:443/x', scheme: 'https', hosts: ['good.com'], path: '/x', host: 'good.com', port: null },
  { target: 'http://good.com:8080/x', hosts: ['good.com'], code: 'request.host_mismatch' },
  { target: 'http://good.com/x', hosts: ['good.com:8080'], code: 'request.host_mismatch' },
  { target: 'https://good.com/x', scheme: 'http', hosts: ['good.com'], code: 'request.bad_target' },
  // Absolute form without Host: the target names the host only where no Host is required (HTTP/1.0).
  {
    target: 'http://Good.com:8080/a/../admin?q=1',
    hosts: [],
    requireHost: false,
    path: '/admin',
    query: 'q=1',
    host: 'good.com',
    port: 8080,
  },
  { target: 'http://good.com', hosts: [], requireHost: false, path: '/', host: 'good.com' },
  { target: 'http://good.com?q=1#f', hosts: [], requireHost: false, path: '/', query: 'q=1', host: 'good.com' },
  { target: 'http://good.com/x', hosts: [], code: 'request.host_missing' },
  { target: 'https://good.com/x', scheme: 'https', hosts: [], code: 'request.host_missing' },
  { target: 'http://user@good.com/x', hosts: ['good.com'], code: 'request.bad_target' },
  { target: 'http://good.com\\@evil.com/x', hosts: [], code: 'request.bad_target' },
  { target: 'http:///x', hosts: ['good.com'], code: 'request.bad_target' },
  { target: 'http://good.com:99999/x', hosts: [], code: 'request.bad_target' },
  // rule 3: Host
  { target: '/x', hosts: [], code: 'request.host_missing' },
  { target: '/x', hosts: [], requireHost: false, path: '/x', host: '', port: null },
  { target: '/x', hosts: ['good.com', 'good.com'], code: 'request.host_duplicate' },
  { target: '/x', hosts: ['good.com', 'evil.com'], code: 'request.host_mismatch' },
  { target: '/x', hosts: ['Good.COM:8080'], path: '/x', host: 'good.com', port: 8080 },
  { target: '/x', hosts: ['under_score.local~1'], path: '/x', host: 'under_score.local~1' },
  { target: '/x', hosts: ['127.0.0.1:65535'], path: '/x', host: '127.0.0.1', port: 65535 },
  { target: '/x', hosts: ['[::1]:8443'], path: '/x', host: '[::1]', port: 8443 },
  { target: '/x', hosts: ['[2001:DB8::1]'], path: '/x', host: '[2001:db8::1]', port: null },
  { target: '/x', hosts: ['[::ffff:10.0.0.1]'], path: '/x', host: '[::ffff:10.0.0.1]' },
  { target: '/x', hosts: [''], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com:0'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com:65536'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com:123456'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com:'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com:8o'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good .com'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['user@good.com'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com/x'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com\x00'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good!.com'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['gööd.com'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['a..b'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['.a'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['good.com.'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['256.1.1.1'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['2130706433'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['0x7f.1'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['0177.0.0.1'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['1.2.3'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['::1'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['[::1'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['[::1]x'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['[fe80::1%25eth0]'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['[v1.fe]'], code: 'request.host_invalid' },
  { target: '/x', hosts: ['[1:2:3:4:5:6:7:8:9]'], code: 'request.host_invalid' },
  // rule 4: fragment and query
  { target: '/admin#frag', path: '/admin', query: '' },
  { target: '/admin#frag?x=1', path: '/admin', query: '' },
  { target: '/admin?x=/../y', path: '/admin', query: 'x=/../y' },
  { target: '/a/../b?q=%2F%00#f', path: '/b', query: 'q=%2F%00' },
  { target: '/a?', path: '/a', query: '' },
  { target: '/admin?x=\x01', code: 'request.bad_target' },
  { target: '/admin?x=\x7f', code: 'request.bad_target' },
  { target: '/admin?x=\xe9', code: 'request.bad_target' },
  // rule 5: raw path characters
  { target: '/a\x01b', code: 'request.path_control_char' },
  { target: '/a\x7fb', code: 'request.path_control_char' },
  { target: '/a\tb', code: 'request.path_control_char' },
  { target: '/caf\xc3\xa9', code: 'request.path_non_ascii' },
  { target: '/a\u2215b', code: 'request.path_non_ascii' },
  { target: '/a\\..\\admin', code: 'request.path_backslash' },
  { target: '/a\\..\\admin', policy: KEEP_BACKSLASH, path: '/a%5C..%5Cadmin' },
  { target: '/a/..\\admin', policy: KEEP_BACKSLASH, path: '/a/..%5Cadmin' },
  { target: '/admin;jsessionid=x', code: 'request.path_semicolon' },
  { target: '/admin;jsessionid=x', policy: { semicolon: 'keep' }, path: '/admin;jsessionid=x' },
  { target: '/a;/../admin', policy: { semicolon: 'keep' }, path: '/admin' },
  { target: '/a b"<>', path: '/a%20b%22%3C%3E' },
  { target: '/[x]^`{|}', path: '/%5Bx%5D%5E%60%7B%7C%7D' },
  // rule 6: percent-encoding
  { target: '/%', code: 'request.path_invalid_escape' },
  { target: '/%4', code: 'request.path_invalid_escape' },
  { target: '/%zz', code: 'request.path_invalid_escape' },
  { target: '/%4?x', code: 'request.path_invalid_escape' },
  { target: '/%%41', code: 'request.path_invalid_escape' },
  { target: '/%7e%41%2d%5f', path: '/~A-_' },
  { target: '/%7e%41%2d%5f', policy: { decodeUnreserved: false }, path: '/%7E%41%2D%5F' },
  { target: '/a%2Eb', path: '/a.b' },
  { target: '/a%2eb', policy: { decodeUnreserved: false }, path: '/a%2Eb' },
  { target: '/%21%24%3a%40%3d', path: '/%21%24%3A%40%3D' },
  { target: '/%25', path: '/%25' },
  { target: '/%252e%252e/admin', path: '/%252e%252e/admin' },
  { target: '/%3F%23', path: '/%3F%23' },
  { target: '/caf%c3%a9', path: '/caf%C3%A9' },
  { target: '/%e2%82%ac%F0%9F%98%80', path: '/%E2%82%AC%F0%9F%98%80' },
  { target: '/%F4%8F%BF%BF', path: '/%F4%8F%BF%BF' },
  { target: '/%C0%AE%C0%AE/', code: 'request.path_invalid_utf8' },
  { target: '/%E0%80%AE', code: 'request.path_invalid_utf8' },
  { target: '/%F0%80%80%AE', code: 'request.path_invalid_utf8' },
  { target: '/%ED%A0%80', code: 'request.path_invalid_utf8' },
  { target: '/%F4%90%80%80', code: 'request.path_invalid_utf8' },
  { target: '/%F5%80%80%80', code: 'request.path_invalid_utf8' },
  { target: '/%C3', code: 'request.path_invalid_utf8' },
  { target: '/%C3x', code: 'request.path_invalid_utf8' },
  { target: '/%C3/', code: 'request.path_invalid_utf8' },
  { target: '/%E2%82', code: 'request.path_invalid_utf8' },
  { target: '/%80', code: 'request.path_invalid_utf8' },
  { target: '/%FF', code: 'request.path_invalid_utf8' },
  { target: '/admin%00.json', code: 'request.path_control_char' },
  { target: '/admin%0d%0aX:1', code: 'request.path_control_char' },
  { target: '/admin%7F', code: 'request.path_control_char' },
  { target: '/public/..%2Fadmin', code: 'request.path_encoded_slash' },
  { target: '/public%2F..%2Fadmin', code: 'request.path_encoded_slash' },
  { target: '/a%2fb', code: 'request.path_encoded_slash' },
  { target: '/a%5cb', code: 'request.path_encoded_slash' },
  { target: '/public/..%2Fadmin', policy: { encodedSlash: 'keep' }, path: '/public/..%2Fadmin' },
  { target: '/public%2f..%2fadmin', policy: { encodedSlash: 'keep' }, path: '/public%2F..%2Fadmin' },
  { target: '/a%5cb', policy: { encodedSlash: 'keep' }, path: '/a%5Cb' },
  { target: '/a%2f%2fb', policy: { encodedSlash: 'keep' }, path: '/a%2F%2Fb' },
  { target: '/admin%3Bx', code: 'request.path_semicolon' },
  { target: '/admin%3bx', policy: { semicolon: 'keep' }, path: '/admin%3Bx' },
  // rule 7: dot segments
  { target: '/admin/../admin', path: '/admin' },
  { target: '/%2e%2e/admin', path: '/admin' },
  { target: '/public/%2e%2e/admin', path: '/admin' },
  { target: '/public/%2E%2e/admin', policy: { decodeUnreserved: false }, path: '/admin' },
  { target: '/public/.%2E/admin', path: '/admin' },
  { target: '/public/%2e./admin', policy: { decodeUnreserved: false }, path: '/admin' },
  { target: '/public/%2e/admin', path: '/public/admin' },
  { target: '/./admin', path: '/admin' },
  { target: '/admin/.', path: '/admin/' },
  { target: '/a/b/..', path: '/a/' },
  { target: '/a/b/%2e%2e', path: '/a/' },
  { target: '/..', path: '/' },
  { target: '/.', path: '/' },
  { target: '/../../etc/passwd', path: '/etc/passwd' },
  { target: '/a/b/../../../../c/./d/', path: '/c/d/' },
  { target: '/%2e%2e%2e/x', path: '/.../x' },
  // rule 8: slashes
  { target: '//admin', path: '/admin' },
  { target: '//a///b', path: '/a/b' },
  { target: '/a//b//', path: '/a/b/' },
  { target: '//', path: '/' },
  { target: '/a//../b', path: '/b' },
  { target: '//admin', policy: { mergeSlashes: false }, path: '//admin' },
  { target: '//a///b', policy: { mergeSlashes: false }, path: '//a///b' },
  { target: '/a//../b', policy: { mergeSlashes: false }, path: '/a/b' },
  { target: '/a//b/..', policy: { mergeSlashes: false }, path: '/a//' },
];

function run(row: Row, target = row.target): CanonicalTarget | BulwarkError {
  return canonicalizeTarget(
    {
      method: row.method ?? 'GET',
      target,
      hosts: row.hosts ?? ['good.com'],
      requireHost: row.requireHost ?? true,
      scheme: row.scheme ?? 'http',
    },
    compilePathPolicy(row.policy),
  );
}

function label(row: Row): string {
  const t = JSON.stringify(row.target.length > 60 ? row.target.slice(0, 20) + '…' : row.target);
  const extra = [row.method, row.hosts && JSON.stringify(row.hosts), row.policy && JSON.stringify(row.policy)]
    .filter(Boolean)
    .join(' ');
  return `${t} ${extra} → ${row.code ?? JSON.stringify(row.path)}`;
}

describe('canonicalizeTarget table', () => {
  it('is large enough to matter', () => {
    expect(TABLE.length).toBeGreaterThanOrEqual(45);
  });

  for (const row of TABLE) {
    it(label(row), () => {
      const result = run(row);
      if (row.code !== undefined) {
        expect(result).toBeInstanceOf(BulwarkError);
        expect((result as BulwarkError).code).toBe(row.code);
        return;
      }
      expect(result).not.toBeInstanceOf(BulwarkError);
      const ok = result as CanonicalTarget;
      expect(ok.path).toBe(row.path);
      if (row.query !== undefined) expect(ok.query).toBe(row.query);
      if (row.host !== undefined) expect(ok.host).toBe(row.host);
      if (row.port !== undefined) expect(ok.port).toBe(row.port);
    });
  }

  it('every successful canonical path is a fixed point under the same policy', () => {
    for (const row of TABLE) {
      if (row.code !== undefined) continue;
      const first = run(row) as CanonicalTarget;
      const again = run({ ...row, hosts: ['good.com'], requireHost: true }, first.path);
      expect(again, label(row)).not.toBeInstanceOf(BulwarkError);
      expect((again as CanonicalTarget).path, label(row)).toBe(first.path);
    }
  });

  it('with backslash=keep but encodedSlash=reject, the kept %5C is refused on a second pass', () => {
    // Documented interaction of the two knobs: the output for a raw `\` is an
    // encoded backslash, which that policy rejects. Not a fixed point.
    const policy = compilePathPolicy({ backslash: 'keep' });
    const input = { method: 'GET', hosts: ['good.com'], requireHost: true, scheme: 'http' as const };
    const first = canonicalizeTarget({ ...input, target: '/a\\b' }, policy) as CanonicalTarget;
    expect(first.path).toBe('/a%5Cb');
    expect((canonicalizeTarget({ ...input, target: first.path }, policy) as BulwarkError).code).toBe(
      'request.path_encoded_slash',
    );
  });

  it('returns the untouched target string on the fast path', () => {
    const target = '/api/v1/users/42';
    const result = canonicalizeTarget(
      { method: 'GET', target, hosts: ['h'], requireHost: true, scheme: 'http' },
      STRICT_PATH_POLICY,
    );
    expect(result).toEqual({ path: target, query: '', host: 'h', port: null });
  });
});

describe('path policy', () => {
  it('STRICT_PATH_POLICY matches the schema defaults', () => {
    const defaults: Record<string, unknown> = {};
    for (const [key, schema] of Object.entries(PathPolicySchema.properties))
      defaults[key] = (schema as { default: unknown }).default;
    expect({ ...STRICT_PATH_POLICY }).toEqual(defaults);
    expect(Object.isFrozen(STRICT_PATH_POLICY)).toBe(true);
  });

  it('compilePathPolicy fills defaults and freezes', () => {
    expect(compilePathPolicy()).toEqual(STRICT_PATH_POLICY);
    expect(compilePathPolicy({})).toEqual(STRICT_PATH_POLICY);
    const p = compilePathPolicy({ semicolon: 'keep', maxLength: 100 });
    expect(p).toEqual({ ...STRICT_PATH_POLICY, semicolon: 'keep', maxLength: 100 });
    expect(Object.isFrozen(p)).toBe(true);
  });

  it('compilePathPolicy refuses values the schema would refuse', () => {
    expect(() => compilePathPolicy({ maxLength: 0 })).toThrow(TypeError);
    expect(() => compilePathPolicy({ maxLength: 1.5 })).toThrow(TypeError);
    expect(() => compilePathPolicy({ semicolon: 'allow' as 'keep' })).toThrow(TypeError);
  });
});

// ---------------------------------------------------------------------------
// Property-style: deterministic PRNG so a failure reproduces.

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPHABET = [
  '/',
  '/',
  '/',
  '.',
  '.',
  '.',
  '%',
  '%',
  '2',
  'e',
  'E',
  'f',
  'F',
  '5',
  'c',
  'C',
  ';',
  'a',
  'A',
  '?',
  '#',
  '\\',
  '0',
  '8',
  'D',
  ' ',
  '~',
  '\x00',
  '\x0a',
  '\x7f',
  '\xc3',
  '\xa9',
  '\u2028',
];

function randomTargets(count: number, seed: number): string[] {
  const rnd = mulberry32(seed);
  const out: string[] = [];
  for (let n = 0; n < count; n++) {
    const len = 1 + Math.floor(rnd() * 24);
    let s = '/';
    for (let i = 0; i < len; i++) {
      // Bias towards escape-shaped runs so the decoder is exercised, not just the `%` error.
      if (rnd() < 0.15)
        s +=
          '%' +
          ['2e', '2E', '2f', '2F', '5c', '5C', '3b', 'C0', 'AE', 'c3', 'a9', '41', '7e', '00', 'e0', '80'][
            Math.floor(rnd() * 16)
          ];
      else s += ALPHABET[Math.floor(rnd() * ALPHABET.length)];
    }
    out.push(s);
  }
  return out;
}

function isDotSegment(segment: string): boolean {
  const s = segment.replace(/%2e/gi, '.');
  return s === '.' || s === '..';
}

/** A raw character that must never survive canonicalization (controls, non-ASCII, space, gen-delims, `\\`…). */
function hasRawOutsidePchar(path: string): boolean {
  for (const ch of path) {
    const c = ch.charCodeAt(0);
    if (c <= 0x20 || c >= 0x7f || '?#\\"<>[]^`{|}'.includes(ch)) return true;
  }
  return false;
}

function canon(target: string, policy: PathPolicy): CanonicalTarget | BulwarkError {
  return canonicalizeTarget({ method: 'GET', target, hosts: ['good.com'], requireHost: true, scheme: 'http' }, policy);
}

describe('canonicalizeTarget properties', () => {
  const targets = randomTargets(5000, 0xb01a);

  const policies: Array<[string, PathPolicy]> = [
    ['strict', STRICT_PATH_POLICY],
    ['lenient', compilePathPolicy({ encodedSlash: 'keep', backslash: 'keep', semicolon: 'keep' })],
    ['no-decode', compilePathPolicy({ decodeUnreserved: false })],
    ['no-merge', compilePathPolicy({ mergeSlashes: false, encodedSlash: 'keep', backslash: 'keep', semicolon: 'keep' })],
  ];

  for (const [name, policy] of policies) {
    it(`${name}: never throws; any path is canonical and a fixed point`, () => {
      let accepted = 0;
      for (const target of targets) {
        let result: CanonicalTarget | BulwarkError;
        try {
          result = canon(target, policy);
        } catch (err) {
          throw new Error(`threw for ${JSON.stringify(target)}: ${String(err)}`);
        }
        if (result instanceof BulwarkError) continue;
        accepted++;
        const { path } = result;
        const why = `${JSON.stringify(target)} → ${JSON.stringify(path)}`;
        expect(path.startsWith('/'), why).toBe(true);
        expect(path.split('/').some(isDotSegment), why).toBe(false);
        expect(hasRawOutsidePchar(path), why).toBe(false);
        expect(/%(?![0-9A-F]{2})/.test(path), why).toBe(false);
        if (policy.mergeSlashes) expect(path.includes('//'), why).toBe(false);
        if (policy.encodedSlash === 'reject') expect(/%2F|%5C/i.test(path), why).toBe(false);
        if (policy.semicolon === 'reject') expect(/;|%3B/i.test(path), why).toBe(false);
        if (policy.decodeUnreserved) expect(/%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2D|2E|5F|7E)/.test(path), why).toBe(false);
        const again = canon(path, policy);
        expect(again, why).not.toBeInstanceOf(BulwarkError);
        expect((again as CanonicalTarget).path, why).toBe(path);
      }
      // Guard against a generator that only ever produces rejects.
      expect(accepted).toBeGreaterThan(200);
    });
  }

  it('the query never influences the path', () => {
    const rnd = mulberry32(7);
    for (const target of targets.slice(0, 2000)) {
      const bare = target.replace(/[?#].*$/s, '');
      const query = [...randomTargets(1, Math.floor(rnd() * 1e9))[0]!]
        .filter((ch) => ch > '\x1f' && ch < '\x7f' && ch !== '#')
        .join('');
      const withQuery = canon(`${bare}?${query}`, STRICT_PATH_POLICY);
      const alone = canon(bare, STRICT_PATH_POLICY);
      if (alone instanceof BulwarkError) {
        expect(withQuery).toBeInstanceOf(BulwarkError);
        expect((withQuery as BulwarkError).code).toBe(alone.code);
      } else {
        expect(withQuery).not.toBeInstanceOf(BulwarkError);
        expect((withQuery as CanonicalTarget).path).toBe(alone.path);
        expect((withQuery as CanonicalTarget).query).toBe(query);
      }
    }
  });

  it('never throws on arbitrary hosts, methods and absolute forms', () => {
    const rnd = mulberry32(99);
    const pieces = [
      'http://',
      'HTTPS://',
      'good.com',
      ':',
      '80',
      '443',
      '@',
      '[',
      ']',
      '::1',
      '/',
      '?',
      '#',
      '.',
      '%',
      'a',
      ' ',
      '\x00',
      '0x7f',
      '999',
    ];
    const pick = (): string => {
      let s = '';
      const len = Math.floor(rnd() * 8);
      for (let i = 0; i < len; i++) s += pieces[Math.floor(rnd() * pieces.length)];
      return s;
    };
    for (let n = 0; n < 3000; n++) {
      const hosts = Array.from({ length: Math.floor(rnd() * 3) }, pick);
      const input = {
        method: rnd() < 0.05 ? 'CONNECT' : 'GET',
        target: pick(),
        hosts,
        requireHost: rnd() < 0.5,
        scheme: rnd() < 0.5 ? ('http' as const) : ('https' as const),
      };
      const result = canonicalizeTarget(input, STRICT_PATH_POLICY);
      if (!(result instanceof BulwarkError)) {
        expect(result.path.startsWith('/')).toBe(true);
        expect(result.host).toBe(result.host.toLowerCase());
      }
    }
  });
});
