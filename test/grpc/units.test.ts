import { describe, expect, it } from 'vitest';
import { BulwarkError, type ErrorCode } from '../../src/core/errors.js';
import {
  checkGrpcEncoding,
  encodeGrpcFrame,
  GrpcFrameChecker,
  GrpcFrameGuard,
  type FrameDirection,
} from '../../src/grpc/framing.js';
import { isGrpcContentType, isGrpcMethodPath } from '../../src/grpc/proxy.js';
import { decodeGrpcMessage, encodeGrpcMessage, grpcMessageFor, GrpcStatus, grpcStatusFor } from '../../src/grpc/status.js';
import {
  DeadlineQueue,
  formatGrpcTimeout,
  parseGrpcTimeout,
  resolveGrpcTimeout,
  type DeadlineEntry,
} from '../../src/grpc/timeout.js';

describe('grpcStatusFor', () => {
  const table: [ErrorCode, number][] = [
    ['jwt.missing', GrpcStatus.UNAUTHENTICATED],
    ['jwt.expired', GrpcStatus.UNAUTHENTICATED],
    ['rbac.unauthenticated', GrpcStatus.UNAUTHENTICATED],
    ['jwt.insufficient_scope', GrpcStatus.PERMISSION_DENIED],
    ['rbac.no_matching_rule', GrpcStatus.PERMISSION_DENIED],
    ['ratelimit.exceeded', GrpcStatus.RESOURCE_EXHAUSTED],
    ['request.body_too_large', GrpcStatus.RESOURCE_EXHAUSTED],
    ['request.headers_too_large', GrpcStatus.RESOURCE_EXHAUSTED],
    ['grpc.message_too_large', GrpcStatus.RESOURCE_EXHAUSTED],
    ['upstream.unreachable', GrpcStatus.UNAVAILABLE],
    ['upstream.reset', GrpcStatus.UNAVAILABLE],
    ['upstream.no_healthy_endpoint', GrpcStatus.UNAVAILABLE],
    ['gateway.shutting_down', GrpcStatus.UNAVAILABLE],
    ['upstream.timeout', GrpcStatus.DEADLINE_EXCEEDED],
    ['request.malformed', GrpcStatus.INVALID_ARGUMENT],
    ['request.duplicate_authorization', GrpcStatus.INVALID_ARGUMENT],
    ['grpc.bad_timeout', GrpcStatus.INVALID_ARGUMENT],
    ['route.not_found', GrpcStatus.UNIMPLEMENTED],
    ['grpc.unsupported_encoding', GrpcStatus.UNIMPLEMENTED],
    ['grpc.malformed_frame', GrpcStatus.INTERNAL],
    ['upstream.bad_response', GrpcStatus.INTERNAL],
    ['gateway.internal', GrpcStatus.INTERNAL],
    ['request.aborted', GrpcStatus.CANCELLED],
  ];
  it.each(table)('%s → %i', (code, status) => {
    expect(grpcStatusFor(new BulwarkError(code))).toBe(status);
  });

  it('an explicit grpcStatus in the context wins; a nonsense one is ignored', () => {
    expect(grpcStatusFor(new BulwarkError('upstream.reset', undefined, { context: { grpcStatus: 1 } }))).toBe(1);
    expect(grpcStatusFor(new BulwarkError('upstream.reset', undefined, { context: { grpcStatus: 0 } }))).toBe(14);
    expect(grpcStatusFor(new BulwarkError('upstream.reset', undefined, { context: { grpcStatus: '7' } }))).toBe(14);
  });

  it('a status override on the error maps by its HTTP status', () => {
    expect(grpcStatusFor(new BulwarkError('request.malformed', undefined, { status: 429 }))).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
  });

  it('the message is the client-safe detail or the title, never the cause', () => {
    const e = new BulwarkError('gateway.internal', undefined, { cause: new Error('db password wrong') });
    expect(grpcMessageFor(e)).toBe('Internal error');
    expect(grpcMessageFor(new BulwarkError('jwt.expired'))).toBe('Invalid token');
    expect(grpcMessageFor(new BulwarkError('upstream.timeout', 'Deadline exceeded'))).toBe('Deadline exceeded');
  });
});

describe('grpc-message percent-encoding', () => {
  it.each([
    ['plain text', 'plain text'],
    ['100%', '100%25'],
    ['ünïcödé ✓', '%C3%BCn%C3%AFc%C3%B6d%C3%A9 %E2%9C%93'],
    ['line\nbreak\ttab', 'line%0Abreak%09tab'],
    ['', ''],
  ])('%j ↔ %j', (message, encoded) => {
    expect(encodeGrpcMessage(message)).toBe(encoded);
    expect(decodeGrpcMessage(encoded)).toBe(message);
  });

  it('malformed escapes are kept literally when decoding', () => {
    expect(decodeGrpcMessage('50%zz done %4')).toBe('50%zz done %4');
  });
});

describe('grpc-timeout', () => {
  it.each([
    ['1H', 3_600_000],
    ['2M', 120_000],
    ['8S', 8_000],
    ['100m', 100],
    ['1500u', 1.5],
    ['2000000n', 2],
    ['0S', 0],
    ['99999999H', 99_999_999 * 3_600_000],
    ['00000001S', 1000],
  ])('%s = %d ms', (value, ms) => {
    expect(parseGrpcTimeout(value)).toBe(ms);
  });

  it.each(['1', '123456789S', '10x', '-1S', '1.5S', ' 1S', '1S ', '', 'S', '1SS', '1s', '+1S', '1 S', '１S', 'ＳS', '1h'])(
    '%j is invalid',
    (value) => {
      expect(parseGrpcTimeout(value)).toBeNull();
    },
  );

  it('clamps to the route maximum, defaults to it, and refuses an invalid or repeated header', () => {
    expect(resolveGrpcTimeout('10S', 2000)).toBe(2000);
    expect(resolveGrpcTimeout('1S', 2000)).toBe(1000);
    expect(resolveGrpcTimeout(undefined, 2000)).toBe(2000);
    expect(resolveGrpcTimeout(undefined, null)).toBeNull();
    expect(resolveGrpcTimeout('10S', null)).toBe(10_000);
    expect((resolveGrpcTimeout('10x', null) as BulwarkError).code).toBe('grpc.bad_timeout');
    expect((resolveGrpcTimeout(['1S', '2S'], null) as BulwarkError).code).toBe('grpc.bad_timeout');
  });

  it('formats the remaining time in the finest unit that fits 8 digits, rounding down', () => {
    expect(formatGrpcTimeout(0.5)).toBe('500000n');
    expect(formatGrpcTimeout(99.9)).toBe('99900000n');
    expect(formatGrpcTimeout(250.7)).toBe('250700u');
    expect(formatGrpcTimeout(123_456.9)).toBe('123456m');
    expect(formatGrpcTimeout(100_000_000)).toBe('100000S');
    expect(formatGrpcTimeout(99_999_999 * 3_600_000 * 2)).toBe('99999999H');
    expect(formatGrpcTimeout(0)).toBe('0n');
    expect(formatGrpcTimeout(-5)).toBe('0n');
    for (const ms of [0.001, 1, 59_999, 86_400_000, 10 ** 11]) {
      const formatted = formatGrpcTimeout(ms);
      expect(formatted).toMatch(/^[0-9]{1,8}[HMSmun]$/);
      const back = parseGrpcTimeout(formatted)!;
      expect(back).toBeLessThanOrEqual(ms);
      expect(back).toBeGreaterThan(ms * 0.999);
    }
  });
});

describe('content type and method path', () => {
  it.each([
    ['application/grpc', true],
    ['application/grpc+proto', true],
    ['application/grpc+json', true],
    ['Application/GRPC', true],
    ['application/grpc;charset=utf-8', true],
    ['application/grpc-web', false],
    ['application/grpc-web+proto', false],
    ['application/grpcx', false],
    ['application/json', false],
    ['', false],
  ])('%j → %s', (value, expected) => {
    expect(isGrpcContentType(value)).toBe(expected);
  });

  it.each([
    ['/pkg.Service/Method', true],
    ['/grpc.health.v1.Health/Check', true],
    ['/S/M', true],
    ['/pkg.Service/', false],
    ['/pkg.Service', false],
    ['//Method', false],
    ['/a/b/c', false],
    ['pkg.Service/Method', false],
  ])('%j is a method path: %s', (path, expected) => {
    expect(isGrpcMethodPath(path)).toBe(expected);
  });
});

describe('GrpcFrameGuard', () => {
  function run(chunks: Buffer[], options: { max?: number; encoding?: string | null; direction?: FrameDirection } = {}) {
    const violations: BulwarkError[] = [];
    const guard = new GrpcFrameGuard(
      { maxMessageBytes: options.max ?? 1024, encoding: options.encoding ?? null, direction: options.direction ?? 'request' },
      (e) => violations.push(e),
    );
    const out: Buffer[] = [];
    guard.on('data', (c: Buffer) => out.push(c));
    return new Promise<{ out: Buffer; violations: BulwarkError[]; messages: number; atBoundary: boolean }>((resolve) => {
      guard.on('end', () =>
        resolve({ out: Buffer.concat(out), violations, messages: guard.messages, atBoundary: guard.atBoundary }),
      );
      for (const c of chunks) guard.write(c);
      guard.end();
    });
  }

  const frames = Buffer.concat([
    encodeGrpcFrame(Buffer.from('hello')),
    encodeGrpcFrame(Buffer.alloc(0)),
    encodeGrpcFrame(Buffer.alloc(300, 1)),
  ]);

  it('passes bytes through unchanged, however the stream is split', async () => {
    for (const size of [1, 2, 3, 4, 5, 6, 7, 64, frames.length]) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < frames.length; i += size) chunks.push(frames.subarray(i, i + size));
      const { out, violations, messages } = await run(chunks);
      expect(violations, `chunk size ${size}`).toEqual([]);
      expect(out.equals(frames), `chunk size ${size}`).toBe(true);
      expect(messages).toBe(3);
    }
  });

  it('refuses an oversized length from the prefix alone, even split byte by byte, emitting nothing of it', async () => {
    const prefix = Buffer.from([0, 0x40, 0, 0, 0]); // 1 GiB
    const good = encodeGrpcFrame(Buffer.from('ok'));
    const { out, violations } = await run([good, ...[...prefix].map((b) => Buffer.from([b]))]);
    expect(violations.map((v) => v.code)).toEqual(['grpc.message_too_large']);
    expect(violations[0]!.context).toMatchObject({ reason: 'too_large', length: 1 << 30, limit: 1024 });
    expect(out.equals(good)).toBe(true);
  });

  it('the limit is inclusive', async () => {
    expect((await run([encodeGrpcFrame(Buffer.alloc(1024))])).violations).toEqual([]);
    expect((await run([encodeGrpcFrame(Buffer.alloc(1025))])).violations.map((v) => v.code)).toEqual(['grpc.message_too_large']);
  });

  it('a compressed flag needs an encoding; flags above 1 are malformed', async () => {
    const compressed = encodeGrpcFrame(Buffer.from('zz'), true);
    expect((await run([compressed])).violations.map((v) => v.context?.['reason'])).toEqual(['compressed_without_encoding']);
    expect((await run([compressed], { encoding: 'gzip' })).violations).toEqual([]);
    const bad = encodeGrpcFrame(Buffer.from('zz'));
    bad[0] = 0x80;
    expect((await run([bad])).violations.map((v) => [v.code, v.context?.['reason']])).toEqual([
      ['grpc.malformed_frame', 'bad_flag'],
    ]);
  });

  it('a stream ending inside a prefix or a message is truncated', async () => {
    expect((await run([frames.subarray(0, 3)])).violations.map((v) => v.context?.['reason'])).toEqual(['truncated']);
    expect((await run([frames.subarray(0, 8)])).violations.map((v) => v.context?.['reason'])).toEqual(['truncated']);
  });

  it('abandon() ends quietly: what was emitted ends on a message boundary', async () => {
    const guard = new GrpcFrameGuard({ maxMessageBytes: 1024, encoding: null, direction: 'response' }, () => {
      throw new Error('no violation expected');
    });
    guard.resume();
    guard.write(frames.subarray(0, frames.length - 2));
    expect(guard.atBoundary).toBe(false);
    guard.abandon();
    guard.end();
    await new Promise((r) => guard.on('end', r));
  });

  it('response-side violations are the upstream’s fault', async () => {
    const { violations } = await run([Buffer.from([0, 0, 0, 8, 0])], { direction: 'response' });
    expect(violations[0]!.code).toBe('upstream.bad_response');
    expect(grpcStatusFor(violations[0]!)).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
  });

  it('checks grpc-encoding against the allowed set', () => {
    const allowed = new Set(['gzip']);
    expect(checkGrpcEncoding(undefined, allowed)).toBeNull();
    expect(checkGrpcEncoding('identity', allowed)).toBeNull();
    expect(checkGrpcEncoding('gzip', allowed)).toBeNull();
    expect(checkGrpcEncoding('br', allowed)!.code).toBe('grpc.unsupported_encoding');
    expect(checkGrpcEncoding(['gzip', 'gzip'], allowed)!.code).toBe('grpc.unsupported_encoding');
  });
});

describe('GrpcFrameChecker (what the proxy relays through)', () => {
  const frames = Buffer.concat([encodeGrpcFrame(Buffer.from('hello')), encodeGrpcFrame(Buffer.alloc(300, 1))]);

  function checker(max = 1024) {
    const events: string[] = [];
    const passed: Buffer[] = [];
    const c = new GrpcFrameChecker({ maxMessageBytes: max, encoding: null, direction: 'request' }, (e) => {
      events.push(`violation ${e.code} after ${Buffer.concat(passed).length} bytes`);
    });
    const sink = { pass: (b: Buffer) => passed.push(b) };
    return { c, sink, events, passed: () => Buffer.concat(passed) };
  }

  it('passes a chunk of whole messages as the chunk itself (no copy, no slicing)', () => {
    const { c, sink, passed } = checker();
    const seen: Buffer[] = [];
    expect(c.feed(frames, { pass: (b) => (seen.push(b), sink.pass(b)) })).toBe(true);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toBe(frames);
    expect(c.finish()).toBe(true);
    expect(passed().equals(frames)).toBe(true);
    expect(c.messages).toBe(2);
  });

  it('reports a violation only after the bytes before it were passed, then passes nothing more', () => {
    const { c, sink, events, passed } = checker(16);
    const good = encodeGrpcFrame(Buffer.from('ok'));
    const big = encodeGrpcFrame(Buffer.alloc(17));
    expect(c.feed(Buffer.concat([good, big]), sink)).toBe(false);
    expect(events).toEqual([`violation grpc.message_too_large after ${good.length} bytes`]);
    expect(passed().equals(good)).toBe(true);
    expect(c.open).toBe(false);
    expect(c.feed(good, sink)).toBe(false);
    expect(c.finish()).toBe(false);
    expect(events).toHaveLength(1);
  });

  it('a split prefix is held back until checked; a truncated stream is reported at finish', () => {
    const { c, sink, events, passed } = checker();
    expect(c.feed(frames.subarray(0, 3), sink)).toBe(true);
    expect(passed().length).toBe(0);
    // The first message whole (its prefix once complete), then 2 bytes of the next prefix, held.
    expect(c.feed(frames.subarray(3, 12), sink)).toBe(true);
    expect(passed().equals(frames.subarray(0, 10))).toBe(true);
    expect(c.atBoundary).toBe(true);
    expect(c.finish()).toBe(false);
    expect(events).toEqual(['violation grpc.malformed_frame after 10 bytes']);
  });

  it('abandon(): nothing more passes and no truncation is reported', () => {
    const { c, sink, events } = checker();
    c.feed(frames.subarray(0, 8), sink);
    c.abandon();
    expect(c.feed(frames.subarray(8), sink)).toBe(false);
    expect(c.finish()).toBe(false);
    expect(events).toEqual([]);
  });
});

describe('DeadlineQueue', () => {
  function entry(name: string, fired: string[]): DeadlineEntry {
    return { deadlineAt: 0, deadlineIndex: -1, onDeadline: () => fired.push(name) };
  }

  it('fires each queued entry once, in deadline order, whatever order they were added in', async () => {
    const q = new DeadlineQueue();
    const fired: string[] = [];
    const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((n) => entry(n, fired));
    // Deadlines far apart: on a loaded machine a timer can be late by tens of milliseconds.
    q.add(a!, 800);
    q.add(b!, 50);
    q.add(c!, 500);
    q.add(d!, 300);
    q.remove(d!);
    q.remove(d!); // twice is fine
    expect(q.size).toBe(3);
    const started = performance.now();
    await new Promise((r) => setTimeout(r, 250));
    expect(fired).toEqual(['b']);
    await new Promise((r) => setTimeout(r, 700));
    expect(fired).toEqual(['b', 'c', 'a']);
    expect(performance.now() - started).toBeGreaterThanOrEqual(799);
    expect(q.size).toBe(0);
    expect(a!.deadlineIndex).toBe(-1);
  });

  it('a removed entry never fires; a later, shorter deadline still fires on time', async () => {
    const q = new DeadlineQueue();
    const fired: string[] = [];
    const long = entry('long', fired);
    const gone = entry('gone', fired);
    q.add(gone, 10);
    q.add(long, 5_000);
    q.remove(gone);
    const short = entry('short', fired);
    q.add(short, 30);
    await new Promise((r) => setTimeout(r, 60));
    expect(fired).toEqual(['short']);
    q.remove(long);
    expect(q.size).toBe(0);
  });

  it('keeps heap order through many adds and removes', () => {
    const q = new DeadlineQueue();
    const fired: string[] = [];
    const entries = Array.from({ length: 200 }, (_, i) => entry(String(i), fired));
    entries.forEach((e, i) => q.add(e, 10_000 + ((i * 7919) % 200)));
    for (let i = 0; i < 200; i += 3) q.remove(entries[i]!);
    const heap = (q as unknown as { heap: DeadlineEntry[] }).heap;
    heap.forEach((e, i) => {
      expect(e.deadlineIndex).toBe(i);
      if (i > 0) expect(heap[(i - 1) >> 1]!.deadlineAt).toBeLessThanOrEqual(e.deadlineAt);
    });
    for (const e of entries) q.remove(e);
    expect(q.size).toBe(0);
    expect(fired).toEqual([]);
  });
});
