import { afterEach, describe, expect, it } from 'vitest';
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, SignJWT } from 'jose';
import { KeyRing, KeyRingError, type KeyRingEvent, type KeyRingOptions } from '../../src/issuer/keys.js';
import type { SigningAlgorithm } from '../../src/issuer/types.js';

const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const PUBLISH_AHEAD = HOUR;
const LIFETIME = 10 * 60_000;
const SKEW = 60_000;

const dirs: string[] = [];
const rings: KeyRing[] = [];

afterEach(() => {
  for (const ring of rings.splice(0)) ring.close();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-keys-'));
  dirs.push(dir);
  return dir;
}

/** A clock the test moves by hand. */
function clock(start = T0): { now: () => number; t: number } {
  const c = { t: start, now: () => c.t };
  return c;
}

async function ring(
  dir: string,
  now: () => number,
  overrides: Partial<KeyRingOptions> = {},
): Promise<{ ring: KeyRing; events: KeyRingEvent[] }> {
  const events: KeyRingEvent[] = [];
  const opened = await KeyRing.open({
    dir,
    algorithms: ['ES256', 'EdDSA'],
    rotateEveryMs: 0,
    publishAheadMs: PUBLISH_AHEAD,
    maxTokenLifetimeMs: LIFETIME,
    skewMs: SKEW,
    now,
    onEvent: (event) => events.push(event),
    ...overrides,
  });
  rings.push(opened);
  return { ring: opened, events };
}

const kids = (r: KeyRing): string[] => r.jwks().keys.map((k) => k.kid!);
const keyFiles = (dir: string): string[] => readdirSync(dir).filter((name) => !name.startsWith('.'));

async function signAndVerify(r: KeyRing, alg?: SigningAlgorithm): Promise<string> {
  const key = r.signer(alg);
  const token = await new SignJWT({ scope: 'x' })
    .setProtectedHeader({ alg: key.alg, kid: key.kid })
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(key.privateKey);
  const { protectedHeader } = await jwtVerify(token, createLocalJWKSet(r.jwks()));
  expect(protectedHeader.kid).toBe(key.kid);
  return token;
}

describe('KeyRing', () => {
  it('bootstraps one key per algorithm, signing at once, with private files', async () => {
    const c = clock();
    const dir = join(tempDir(), 'keys');
    const { ring: r, events } = await ring(dir, c.now);

    const states = r.states();
    expect(states.map((s) => s.alg)).toEqual(['ES256', 'EdDSA']);
    for (const s of states) {
      expect(s).toMatchObject({ createdAt: T0, activatesAt: T0, retiredAt: null, expiresAt: null });
      expect(s.kid).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(statSync(join(dir, `${s.kid}.key.pem`)).mode & 0o777).toBe(0o600);
      expect(JSON.parse(readFileSync(join(dir, `${s.kid}.json`), 'utf8'))).toEqual({
        kid: s.kid,
        alg: s.alg,
        createdAt: T0,
        activatesAt: T0,
      });
    }
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(events.filter((e) => e.type === 'key_created').map((e) => e.alg)).toEqual(['ES256', 'EdDSA']);

    expect(r.signer().kid).toBe(states[0]!.kid);
    expect(r.signer('EdDSA').kid).toBe(states[1]!.kid);
    expect(r.jwks().keys).toHaveLength(2);
    for (const jwk of r.jwks().keys) {
      expect(jwk.use).toBe('sig');
      expect(jwk.d).toBeUndefined();
      expect(states.find((s) => s.kid === jwk.kid)?.alg).toBe(jwk.alg);
    }
    // Lock released, no temp files left.
    expect(readdirSync(dir).filter((name) => name.startsWith('.'))).toEqual([]);
  });

  it('reopening a directory loads its keys instead of creating new ones', async () => {
    const c = clock();
    const dir = tempDir();
    const { ring: first } = await ring(dir, c.now);
    const before = first.states().map((s) => s.kid);
    first.close();
    c.t += DAY;
    const { ring: second, events } = await ring(dir, c.now);
    expect(second.states().map((s) => s.kid)).toEqual(before);
    expect(events.filter((e) => e.type === 'key_created')).toEqual([]);
  });

  it('tokens from signer() verify against jwks(), for every algorithm', async () => {
    const c = clock(Date.now()); // real `iat`/`exp` for jwtVerify's own clock
    const { ring: r } = await ring(tempDir(), c.now);
    await signAndVerify(r);
    await signAndVerify(r, 'EdDSA');
    expect(decodeProtectedHeader(await signAndVerify(r, 'EdDSA')).alg).toBe('EdDSA');
  });

  it('RS256 and PS256 keys are 2048-bit RSA and verify', { timeout: 30_000 }, async () => {
    const c = clock(Date.now());
    const { ring: r } = await ring(tempDir(), c.now, { algorithms: ['RS256', 'PS256'] });
    expect(r.jwks().keys.map((k) => [k.alg, k.kty])).toEqual([
      ['RS256', 'RSA'],
      ['PS256', 'RSA'],
    ]);
    for (const jwk of r.jwks().keys) expect(Buffer.from(jwk.n!, 'base64url').length).toBe(256);
    expect(r.signer().alg).toBe('RS256');
    await signAndVerify(r);
    await signAndVerify(r, 'PS256');
  });

  it('refuses to sign with an algorithm that is not configured', async () => {
    const { ring: r } = await ring(tempDir(), clock().now, { algorithms: ['ES256'] });
    expect(() => r.signer('RS256')).toThrow(KeyRingError);
    try {
      r.signer('EdDSA');
    } catch (err) {
      expect((err as KeyRingError).code).toBe('issuer.no_signing_key');
    }
    expect.assertions(2);
  });

  it('a rotated key is published at once, signs after publish-ahead; the old one is unpublished after the last token expired', async () => {
    const c = clock();
    const dir = tempDir();
    const { ring: r, events } = await ring(dir, c.now);
    const oldEs = r.signer('ES256').kid;
    const oldEd = r.signer('EdDSA').kid;
    const version0 = r.jwksVersion;

    c.t += 10 * 60_000;
    const rotatedAt = c.t;
    const created = await r.rotate();
    expect(created.map((s) => s.alg)).toEqual(['ES256', 'EdDSA']);
    for (const s of created)
      expect(s).toMatchObject({ createdAt: rotatedAt, activatesAt: rotatedAt + PUBLISH_AHEAD, retiredAt: null });
    const newEs = created[0]!.kid;
    const newEd = created[1]!.kid;

    // Published ahead: in the JWKS right away, not signing yet.
    expect(kids(r)).toEqual(expect.arrayContaining([oldEs, oldEd, newEs, newEd]));
    expect(r.jwksVersion).not.toBe(version0);
    expect(r.signer().kid).toBe(oldEs);
    c.t = rotatedAt + PUBLISH_AHEAD - 1;
    expect(r.signer().kid).toBe(oldEs);
    expect(r.signer('EdDSA').kid).toBe(oldEd);

    // Signs from activatesAt, with no tick in between.
    c.t = rotatedAt + PUBLISH_AHEAD;
    expect(r.signer().kid).toBe(newEs);
    expect(r.signer('EdDSA').kid).toBe(newEd);
    const retiredAt = rotatedAt + PUBLISH_AHEAD;
    expect(r.states().find((s) => s.kid === oldEs)).toMatchObject({ retiredAt, expiresAt: retiredAt + LIFETIME + SKEW });

    // Still published while a token it signed may be alive.
    c.t = retiredAt + LIFETIME + SKEW - 1;
    expect(kids(r)).toEqual(expect.arrayContaining([oldEs, oldEd]));
    const versionBoth = r.jwksVersion;

    // Unpublished exactly at expiresAt, again without a tick.
    c.t = retiredAt + LIFETIME + SKEW;
    expect(kids(r).sort()).toEqual([newEs, newEd].sort());
    expect(r.jwksVersion).not.toBe(versionBoth);

    // Files stay for one more skew, then a tick deletes them.
    await r.tick();
    expect(existsSync(join(dir, `${oldEs}.key.pem`))).toBe(true);
    c.t += SKEW;
    await r.tick();
    expect(keyFiles(dir).sort()).toEqual([`${newEd}.json`, `${newEd}.key.pem`, `${newEs}.json`, `${newEs}.key.pem`].sort());
    expect(r.states().map((s) => s.kid)).toEqual([newEs, newEd]);
    expect(events.filter((e) => e.type === 'key_removed').map((e) => e.kid)).toEqual(expect.arrayContaining([oldEs, oldEd]));
    expect(r.signer().kid).toBe(newEs);
  });

  it('jwks() returns the same object until the published set changes', async () => {
    const c = clock();
    const { ring: r } = await ring(tempDir(), c.now);
    const first = r.jwks();
    const version = r.jwksVersion;
    c.t += DAY;
    await r.reload();
    expect(r.jwks()).toBe(first);
    expect(r.jwksVersion).toBe(version);
    expect(JSON.parse(r.jwksJson())).toEqual(first);
  });

  it('rotates automatically, publishing the successor publish-ahead before the rotation moment', async () => {
    const c = clock();
    const dir = tempDir();
    const rotateEvery = 7 * DAY;
    const { ring: r } = await ring(dir, c.now, { rotateEveryMs: rotateEvery });
    const first = r.signer().kid;

    c.t = T0 + rotateEvery - PUBLISH_AHEAD - 1;
    await r.tick();
    expect(r.states()).toHaveLength(2);

    c.t = T0 + rotateEvery - PUBLISH_AHEAD;
    await r.tick();
    const es = r.states().filter((s) => s.alg === 'ES256');
    expect(es).toHaveLength(2);
    expect(es[1]).toMatchObject({ createdAt: c.t, activatesAt: T0 + rotateEvery });
    expect(kids(r)).toContain(es[1]!.kid);
    expect(r.signer().kid).toBe(first);

    // Not again while the successor waits, nor right after it took over.
    await r.tick();
    c.t = T0 + rotateEvery;
    await r.tick();
    expect(r.states().filter((s) => s.alg === 'ES256')).toHaveLength(2);
    expect(r.signer().kid).toBe(es[1]!.kid);

    // The next one is due rotateEvery after the successor activated (the first key is long gone by then).
    const newest = () =>
      r
        .states()
        .filter((s) => s.alg === 'ES256')
        .at(-1)!;
    c.t = T0 + 2 * rotateEvery - PUBLISH_AHEAD - 1;
    await r.tick();
    expect(r.states().map((s) => s.kid)).not.toContain(first);
    expect(newest().kid).toBe(es[1]!.kid);
    c.t += 1;
    await r.tick();
    expect(newest()).toMatchObject({ createdAt: c.t, activatesAt: T0 + 2 * rotateEvery });
  });

  it('two rings on one directory agree on signer and JWKS after a reload', async () => {
    const c = clock();
    const dir = tempDir();
    const { ring: a } = await ring(dir, c.now);
    const { ring: b, events: bEvents } = await ring(dir, c.now);
    expect(bEvents.filter((e) => e.type === 'key_created')).toEqual([]);
    expect(kids(b)).toEqual(kids(a));
    expect(b.jwksVersion).toBe(a.jwksVersion);

    const created = await a.rotate();
    expect(kids(b)).not.toContain(created[0]!.kid);
    await b.reload();
    expect(kids(b)).toEqual(kids(a));
    expect(b.jwksVersion).toBe(a.jwksVersion);
    for (const t of [c.t, c.t + PUBLISH_AHEAD - 1, c.t + PUBLISH_AHEAD, c.t + PUBLISH_AHEAD + LIFETIME + SKEW]) {
      c.t = t;
      expect(b.signer().kid).toBe(a.signer().kid);
      expect(b.signer('EdDSA').kid).toBe(a.signer('EdDSA').kid);
      expect(kids(b)).toEqual(kids(a));
    }
    expect(b.states()).toEqual(a.states());
  });

  it('concurrent ticks of two rings create one successor per algorithm', async () => {
    const c = clock();
    const dir = tempDir();
    const rotateEvery = 7 * DAY;
    const { ring: a } = await ring(dir, c.now, { rotateEveryMs: rotateEvery });
    const { ring: b } = await ring(dir, c.now, { rotateEveryMs: rotateEvery });
    c.t = T0 + rotateEvery - PUBLISH_AHEAD;
    await Promise.all([a.tick(), b.tick()]);
    await Promise.all([a.reload(), b.reload()]);
    for (const alg of ['ES256', 'EdDSA']) expect(a.states().filter((s) => s.alg === alg)).toHaveLength(2);
    expect(b.states()).toEqual(a.states());
  });

  it('skips a round while another process holds the lock', async () => {
    const c = clock();
    const dir = tempDir();
    const rotateEvery = 7 * DAY;
    const { ring: a, events: aEvents } = await ring(dir, c.now, { rotateEveryMs: rotateEvery });
    const { ring: b, events: bEvents } = await ring(dir, c.now, { rotateEveryMs: rotateEvery });
    const lock = join(dir, '.rotate.lock');
    writeFileSync(lock, 'someone else');

    expect(await a.rotate()).toEqual([]);
    c.t = T0 + rotateEvery - PUBLISH_AHEAD;
    await b.tick();
    expect(aEvents.some((e) => e.type === 'rotation_skipped_locked')).toBe(true);
    expect(bEvents.some((e) => e.type === 'rotation_skipped_locked')).toBe(true);
    expect(keyFiles(dir)).toHaveLength(4);
    expect(readFileSync(lock, 'utf8')).toBe('someone else');

    // The holder is done; the next round writes exactly once.
    rmSync(lock);
    await b.tick();
    await a.tick();
    await a.reload();
    for (const alg of ['ES256', 'EdDSA']) expect(a.states().filter((s) => s.alg === alg)).toHaveLength(2);
    expect(keyFiles(dir)).toHaveLength(8);
    expect(existsSync(lock)).toBe(false);
  });

  it('at startup, waits for the lock holder instead of starting without keys', async () => {
    const dir = tempDir();
    const lock = join(dir, '.rotate.lock');
    writeFileSync(lock, 'another instance, starting');
    setTimeout(() => rmSync(lock), 100);
    const { ring: r } = await ring(dir, clock().now);
    expect(r.states().map((s) => s.alg)).toEqual(['ES256', 'EdDSA']);
  });

  it('breaks a stale lock', async () => {
    const c = clock();
    const dir = tempDir();
    const { ring: r } = await ring(dir, c.now);
    const lock = join(dir, '.rotate.lock');
    writeFileSync(lock, 'a dead process');
    const old = new Date(Date.now() - 5 * 60_000);
    utimesSync(lock, old, old);
    const created = await r.rotate();
    expect(created.map((s) => s.alg)).toEqual(['ES256', 'EdDSA']);
    expect(existsSync(lock)).toBe(false);
  });

  it('ignores and reports (once) corrupt metadata, metadata without a key, and a key under the wrong kid', async () => {
    const c = clock();
    const dir = tempDir();
    const { ring: r, events } = await ring(dir, c.now);
    const good = r.signer().kid;
    const version = r.jwksVersion;

    const corrupt = 'A'.repeat(43);
    const noPem = 'B'.repeat(43);
    const wrongKid = 'C'.repeat(43);
    writeFileSync(join(dir, `${corrupt}.json`), '{"kid": ');
    writeFileSync(join(dir, `${noPem}.json`), JSON.stringify({ kid: noPem, alg: 'ES256', createdAt: T0, activatesAt: T0 + 1 }));
    copyFileSync(join(dir, `${good}.key.pem`), join(dir, `${wrongKid}.key.pem`));
    writeFileSync(
      join(dir, `${wrongKid}.json`),
      JSON.stringify({ kid: wrongKid, alg: 'ES256', createdAt: T0, activatesAt: T0 + 2 }),
    );
    writeFileSync(join(dir, 'notes.json'), '{}');

    c.t += 1_000;
    await r.reload();
    const invalid = events.filter((e) => e.type === 'key_invalid').map((e) => e.kid);
    expect(invalid.sort()).toEqual([corrupt, noPem, wrongKid, 'notes'].sort());
    expect(r.signer().kid).toBe(good);
    expect(r.jwksVersion).toBe(version);
    expect(r.states()).toHaveLength(2);

    await r.tick();
    expect(events.filter((e) => e.type === 'key_invalid')).toHaveLength(4);
  });

  it('keeps keys of an algorithm no longer configured published, but does not sign with them', async () => {
    const c = clock();
    const dir = tempDir();
    const { ring: both } = await ring(dir, c.now);
    const ed = both.signer('EdDSA').kid;
    const { ring: esOnly } = await ring(dir, c.now, { algorithms: ['ES256'] });
    expect(kids(esOnly)).toContain(ed);
    expect(() => esOnly.signer('EdDSA')).toThrow(KeyRingError);
    expect(esOnly.signer().kid).toBe(both.signer().kid);
  });

  it('does not publish a key created later by a writer whose clock is ahead until its createdAt', async () => {
    const ahead = clock(T0 + 60_000);
    const behind = clock(T0);
    const dir = tempDir();
    const { ring: writer } = await ring(dir, ahead.now);
    const { ring: reader } = await ring(dir, behind.now);
    const [created] = await writer.rotate();
    await reader.reload();
    expect(kids(reader)).not.toContain(created!.kid);
    behind.t = created!.createdAt;
    expect(kids(reader)).toContain(created!.kid);
  });

  it('fails with issuer.key_dir when the directory cannot be created', async () => {
    const file = join(tempDir(), 'file');
    writeFileSync(file, '');
    await expect(ring(join(file, 'keys'), clock().now)).rejects.toMatchObject({ code: 'issuer.key_dir' });
  });

  it('clamps the tick interval to a quarter of publish-ahead', async () => {
    const { ring: r } = await ring(tempDir(), clock().now, { publishAheadMs: 40_000, tickMs: 30_000 });
    expect(r.tickMs).toBe(10_000);
  });
});
