/**
 * The issuer's signing keys, kept as files so that several instances can share one
 * directory (a volume, a Secret mount) and restarts keep the keys that signed live tokens.
 *
 * Nothing about a key's lifecycle is stored except when it was written and when it
 * starts signing; the rest (which key signs, which are published, when a key may be
 * deleted) is derived from the files and the clock. So every process reading the
 * same directory agrees without talking to the others, and a process that missed a
 * rotation catches up by reading the directory, not by replaying anything.
 *
 * Per key: `<kid>.key.pem` (PKCS#8, 0600) and `<kid>.json` (`{ kid, alg, createdAt,
 * activatesAt }`), each written to a temp file and renamed, metadata last: a reader
 * never sees a key's metadata without its key. The kid is the RFC 7638 thumbprint,
 * so a key cannot be renamed into another's identity unnoticed.
 *
 * Lifecycle of a key of algorithm A, keys of A sorted by (activatesAt, kid):
 * - published from `createdAt`: verifiers fetch it during the publish-ahead period,
 *   before it signs anything;
 * - signs while it is the latest of A with `activatesAt <= now`;
 * - retired when the next key of A activates;
 * - published until `retiredAt + maxTokenLifetime + skew` (every token it signed has
 *   expired), and deleted a skew later.
 *
 * Writes (new keys, deletions) take a lock file in the directory; whoever holds it
 * writes, the others skip the round and read the result on their next reload.
 */
import { createHash, createPublicKey, KeyObject, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { calculateJwkThumbprint, exportJWK, exportPKCS8, generateKeyPair, importPKCS8, type JWK } from 'jose';
import type { KeyState, SigningAlgorithm, SigningKey } from './types.js';

export type KeyRingEventType = 'key_created' | 'key_removed' | 'key_invalid' | 'rotation_skipped_locked' | 'tick_failed';

/** What the ring did or found; the ring itself never logs. */
export interface KeyRingEvent {
  readonly type: KeyRingEventType;
  readonly kid?: string;
  readonly alg?: string;
  readonly reason?: string;
}

export interface KeyRingOptions {
  dir: string;
  /** The algorithms that sign; the first is the default signer. */
  algorithms: readonly SigningAlgorithm[];
  /** How long a key is the newest before its successor takes over; 0 = never rotate automatically. */
  rotateEveryMs: number;
  /** How long a new key is published before it signs (longer than any verifier caches the JWKS). */
  publishAheadMs: number;
  /** Longest lifetime of a token the ring signs. */
  maxTokenLifetimeMs: number;
  /** Allowed clock difference with verifiers (default 60 s). */
  skewMs?: number;
  /** Background interval (default 30 s, never more than a quarter of `publishAheadMs`). */
  tickMs?: number;
  /** Epoch ms (tests inject one). */
  now?: () => number;
  onEvent?: (event: KeyRingEvent) => void;
}

/** `issuer.no_signing_key`: no key of the algorithm signs now. `issuer.key_dir`: the directory is unusable. */
export class KeyRingError extends Error {
  override readonly name = 'KeyRingError';
  readonly code: 'issuer.no_signing_key' | 'issuer.key_dir';

  constructor(code: 'issuer.no_signing_key' | 'issuer.key_dir', message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

const SUPPORTED: readonly SigningAlgorithm[] = ['ES256', 'EdDSA', 'RS256', 'PS256'];
const RSA_MODULUS_BITS = 2048;
/** Base64url SHA-256: also what keeps a kid from naming a path outside the directory. */
const KID_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const LOCK_FILE = '.rotate.lock';
/**
 * A lock older than this belongs to a process that died while holding it. Judged by the
 * real clock against the file's mtime, not the injected one: it is about processes, not
 * about the key schedule.
 */
const STALE_LOCK_MS = 60_000;
/** At startup a missing key is worth waiting for: the lock holder is most likely creating it. */
const OPEN_LOCK_WAIT_MS = 2_000;
const OPEN_LOCK_POLL_MS = 50;
const DEFAULT_SKEW_MS = 60_000;
const DEFAULT_TICK_MS = 30_000;
const MIN_TICK_MS = 1_000;

/** What a PEM yields, computed once per kid. */
interface Material {
  readonly alg: SigningAlgorithm;
  readonly privateKey: KeyObject;
  /** Public members only. */
  readonly publicJwk: JWK;
  readonly kid: string;
}

/** A key as loaded, with what the sort order tells about it. */
interface RingKey {
  readonly kid: string;
  readonly alg: SigningAlgorithm;
  readonly createdAt: number;
  readonly activatesAt: number;
  readonly signing: SigningKey;
  readonly jwk: Readonly<JWK>;
  /** activatesAt of the next key of its algorithm: when it retires (null: no successor yet). */
  readonly successorAt: number | null;
  /** Leaves the JWKS at (null: no successor yet). */
  readonly unpublishAt: number | null;
}

interface Metadata {
  readonly kid: string;
  readonly alg: SigningAlgorithm;
  readonly createdAt: number;
  readonly activatesAt: number;
}

/** A key file that will not do; reported, not fatal. */
class InvalidKeyFile extends Error {}

const LOCKED = Symbol('locked');

const isAlgorithm = (value: unknown): value is SigningAlgorithm =>
  typeof value === 'string' && (SUPPORTED as readonly string[]).includes(value);

const isRsa = (alg: SigningAlgorithm): boolean => alg === 'RS256' || alg === 'PS256';

const errorCode = (err: unknown): string | undefined =>
  typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;

const reasonOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

function parseMetadata(text: string, kid: string): Metadata {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new InvalidKeyFile('metadata is not JSON');
  }
  if (typeof value !== 'object' || value === null) throw new InvalidKeyFile('metadata is not an object');
  const v = value as Record<string, unknown>;
  if (v['kid'] !== kid) throw new InvalidKeyFile('metadata kid does not match its file name');
  if (!isAlgorithm(v['alg'])) throw new InvalidKeyFile('unsupported alg');
  const createdAt = v['createdAt'];
  const activatesAt = v['activatesAt'];
  if (typeof createdAt !== 'number' || !Number.isSafeInteger(createdAt)) throw new InvalidKeyFile('bad createdAt');
  if (typeof activatesAt !== 'number' || !Number.isSafeInteger(activatesAt)) throw new InvalidKeyFile('bad activatesAt');
  // A key that signed before it was published would defeat the point of publishing ahead.
  if (activatesAt < createdAt) throw new InvalidKeyFile('activatesAt is before createdAt');
  return { kid, alg: v['alg'], createdAt, activatesAt };
}

/** Imports a PEM for `alg` (jose rejects a key of the wrong type or curve) and derives its kid. */
async function materialFromPem(pem: string, alg: SigningAlgorithm): Promise<Material> {
  let privateKey: KeyObject;
  try {
    privateKey = KeyObject.from(await importPKCS8(pem, alg, { extractable: true }));
  } catch (err) {
    throw new InvalidKeyFile(`not a PKCS#8 ${alg} private key: ${reasonOf(err)}`);
  }
  if (isRsa(alg) && (privateKey.asymmetricKeyDetails?.modulusLength ?? 0) < RSA_MODULUS_BITS)
    throw new InvalidKeyFile(`RSA key shorter than ${RSA_MODULUS_BITS} bits`);
  const publicJwk = await exportJWK(createPublicKey(privateKey));
  const kid = await calculateJwkThumbprint(publicJwk);
  return { alg, privateKey, publicJwk, kid };
}

/** Temp file + rename: readers see the whole file or none. */
async function writeAtomic(path: string, dir: string, name: string, data: string): Promise<void> {
  const temp = join(dir, `.${name}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const handle = await open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw err;
  }
}

async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if (errorCode(err) !== 'ENOENT') throw err;
  }
}

const deepFreeze = <T extends object>(value: T): T => {
  for (const inner of Object.values(value)) if (typeof inner === 'object' && inner !== null) deepFreeze(inner);
  return Object.freeze(value);
};

export class KeyRing {
  readonly dir: string;
  readonly algorithms: readonly SigningAlgorithm[];
  readonly rotateEveryMs: number;
  readonly publishAheadMs: number;
  readonly maxTokenLifetimeMs: number;
  readonly skewMs: number;
  readonly tickMs: number;
  private readonly now: () => number;
  private readonly onEvent: (event: KeyRingEvent) => void;

  /** Per kid, imported once. */
  private readonly material = new Map<string, Material>();
  /** Per algorithm, sorted by (activatesAt, kid). */
  private byAlg = new Map<SigningAlgorithm, readonly RingKey[]>();
  private keys: readonly RingKey[] = [];
  /** Identity of the loaded set: a reload that finds the same files changes nothing. */
  private signature = '';
  /** Invalid files already reported (name → reason), so each is reported once, not every tick. */
  private reported = new Map<string, string>();

  private jwksValue: { keys: JWK[] } = { keys: [] };
  private jwksText = '{"keys":[]}';
  private version = '';
  /** The published set changes by itself at the next createdAt/unpublishAt; recomputed then. */
  private jwksValidUntil = -Infinity;

  /** Reloads and writes run one after another, never interleaved. */
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(options: KeyRingOptions) {
    if (options.algorithms.length === 0) throw new TypeError('KeyRing needs at least one algorithm');
    for (const alg of options.algorithms)
      if (!isAlgorithm(alg)) throw new TypeError(`unsupported signing algorithm ${String(alg)}`);
    for (const name of ['rotateEveryMs', 'publishAheadMs', 'maxTokenLifetimeMs', 'skewMs', 'tickMs'] as const) {
      const value = options[name];
      if (value !== undefined && (!Number.isFinite(value) || value < 0))
        throw new RangeError(`${name} must be a non-negative number`);
    }
    this.dir = options.dir;
    this.algorithms = Object.freeze([...new Set(options.algorithms)]);
    this.rotateEveryMs = options.rotateEveryMs;
    this.publishAheadMs = options.publishAheadMs;
    this.maxTokenLifetimeMs = options.maxTokenLifetimeMs;
    this.skewMs = options.skewMs ?? DEFAULT_SKEW_MS;
    // A tick must come several times within publish-ahead, or a successor could be published too late.
    const ceiling = options.publishAheadMs > 0 ? options.publishAheadMs / 4 : Infinity;
    this.tickMs = Math.max(MIN_TICK_MS, Math.min(options.tickMs ?? DEFAULT_TICK_MS, ceiling));
    this.now = options.now ?? Date.now;
    this.onEvent = options.onEvent ?? (() => undefined);
  }

  /** Creates the directory if missing, loads it, creates a key for each algorithm that has none, cleans up. */
  static async open(options: KeyRingOptions): Promise<KeyRing> {
    const ring = new KeyRing(options);
    try {
      await mkdir(ring.dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new KeyRingError('issuer.key_dir', `cannot create key directory ${ring.dir}`, { cause: err });
    }
    await ring.enqueue(async () => {
      await ring.load();
      await ring.maintain(true);
    });
    return ring;
  }

  /** Background ticks (unref'd: they never keep the process alive). */
  start(): void {
    if (this.timer !== null || this.closed) return;
    this.timer = setInterval(() => {
      this.tick().catch((err: unknown) => this.emit({ type: 'tick_failed', reason: reasonOf(err) }));
    }, this.tickMs);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** The key that signs for `alg` (default: the first configured) now. Request path: no I/O. */
  signer(alg: SigningAlgorithm = this.algorithms[0]!): SigningKey {
    if (!this.algorithms.includes(alg)) throw new KeyRingError('issuer.no_signing_key', `${alg} is not a configured algorithm`);
    const list = this.byAlg.get(alg);
    if (list !== undefined) {
      const t = this.now();
      // Chosen by the clock at call time: a key due at T signs from T whether or not a tick ran.
      for (let i = list.length - 1; i >= 0; i--) {
        const key = list[i]!;
        if (key.activatesAt <= t) return key.signing;
      }
    }
    throw new KeyRingError('issuer.no_signing_key', `no active ${alg} key in ${this.dir}`);
  }

  /** The published public keys. Request path: the same frozen object until the set changes. */
  jwks(): { keys: JWK[] } {
    this.refreshJwks();
    return this.jwksValue;
  }

  /** `jwks()` serialized, computed with it. */
  jwksJson(): string {
    this.refreshJwks();
    return this.jwksText;
  }

  /** Changes whenever the published set does (an ETag). */
  get jwksVersion(): string {
    this.refreshJwks();
    return this.version;
  }

  /** Every key in the directory and where it is in its lifecycle now, by algorithm then age. */
  states(): KeyState[] {
    const t = this.now();
    return this.ordered().map((key) => this.stateOf(key, t));
  }

  /** Creates a new key per configured algorithm, signing after publish-ahead. `[]` when another process holds the lock. */
  rotate(): Promise<KeyState[]> {
    return this.enqueue(async () => {
      const created = await this.locked(async () => {
        await this.load();
        const t = this.now();
        const states: KeyState[] = [];
        for (const alg of this.algorithms) states.push(await this.create(alg, t, t + this.publishAheadMs));
        await this.load();
        return states;
      });
      if (created === LOCKED) {
        this.emit({ type: 'rotation_skipped_locked' });
        return [];
      }
      return created;
    });
  }

  /** Reload, then rotate what is due, create what is missing and delete what has expired. */
  tick(): Promise<void> {
    return this.enqueue(async () => {
      await this.load();
      await this.maintain(false);
    });
  }

  /** Re-reads the directory (another process may have written). */
  reload(): Promise<void> {
    return this.enqueue(() => this.load());
  }

  // ---------------------------------------------------------------------------

  private enqueue<T>(task: () => Promise<T>): Promise<T> {
    const next = this.chain.then(task);
    this.chain = next.then(
      () => undefined,
      () => undefined,
    );
    return next;
  }

  private emit(event: KeyRingEvent): void {
    try {
      this.onEvent(event);
    } catch {
      // A failing listener must not break key handling.
    }
  }

  /** Configured algorithms in their order, then the others. */
  private rank(alg: SigningAlgorithm): number {
    const i = this.algorithms.indexOf(alg);
    return i === -1 ? this.algorithms.length + SUPPORTED.indexOf(alg) : i;
  }

  /** By algorithm, then oldest first. */
  private ordered(): RingKey[] {
    return [...this.keys].sort(
      (a, b) => this.rank(a.alg) - this.rank(b.alg) || a.activatesAt - b.activatesAt || (a.kid < b.kid ? -1 : 1),
    );
  }

  private stateOf(key: RingKey, t: number): KeyState {
    const retiredAt = key.successorAt !== null && key.successorAt <= t ? key.successorAt : null;
    return {
      kid: key.kid,
      alg: key.alg,
      createdAt: key.createdAt,
      activatesAt: key.activatesAt,
      retiredAt,
      expiresAt: retiredAt === null ? null : retiredAt + this.maxTokenLifetimeMs + this.skewMs,
    };
  }

  /** Reads the directory; on failure the previous keys stay (a broken mount must not stop signing). */
  private async load(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      throw new KeyRingError('issuer.key_dir', `cannot read key directory ${this.dir}`, { cause: err });
    }
    const present = new Set(names);
    const invalid = new Map<string, { kid: string; reason: string }>();
    const found = await Promise.all(
      names
        .filter((name) => name.endsWith('.json') && !name.startsWith('.'))
        .map(async (name) => {
          const kid = name.slice(0, -'.json'.length);
          try {
            return await this.loadKey(kid, present);
          } catch (err) {
            if (!(err instanceof InvalidKeyFile)) throw err;
            invalid.set(name, { kid, reason: err.message });
            return null;
          }
        }),
    );
    const next = new Map<string, string>();
    for (const [name, { kid, reason }] of invalid) {
      next.set(name, reason);
      if (this.reported.get(name) !== reason) this.emit({ type: 'key_invalid', kid, reason });
    }
    this.reported = next;
    this.install(found.filter((key): key is Metadata & { material: Material } => key !== null));
  }

  /** One key: metadata, then its PEM (imported only the first time a kid is seen). Null: it vanished meanwhile. */
  private async loadKey(kid: string, present: ReadonlySet<string>): Promise<(Metadata & { material: Material }) | null> {
    if (!KID_PATTERN.test(kid)) throw new InvalidKeyFile('file name is not a key id');
    const metaPath = join(this.dir, `${kid}.json`);
    let text: string;
    try {
      text = await readFile(metaPath, 'utf8');
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return null; // deleted by a cleanup since readdir
      throw new InvalidKeyFile(`cannot read metadata: ${reasonOf(err)}`);
    }
    const meta = parseMetadata(text, kid);
    const cached = this.material.get(kid);
    if (cached !== undefined && cached.alg === meta.alg && present.has(`${kid}.key.pem`)) return { ...meta, material: cached };
    let pem: string;
    try {
      pem = await readFile(join(this.dir, `${kid}.key.pem`), 'utf8');
    } catch (err) {
      if (errorCode(err) !== 'ENOENT') throw new InvalidKeyFile(`cannot read private key: ${reasonOf(err)}`);
      // Cleanup deletes the metadata first; if it is gone too, this is a deletion in progress.
      const stillThere = await stat(metaPath).then(
        () => true,
        () => false,
      );
      if (!stillThere) return null;
      throw new InvalidKeyFile('private key file missing');
    }
    const material = await materialFromPem(pem, meta.alg);
    if (material.kid !== kid) throw new InvalidKeyFile('private key does not match its kid');
    this.material.set(kid, material);
    return { ...meta, material };
  }

  private install(found: readonly (Metadata & { material: Material })[]): void {
    const signature = found
      .map((k) => `${k.kid}:${k.alg}:${k.createdAt}:${k.activatesAt}`)
      .sort()
      .join(',');
    if (signature === this.signature) return;
    this.signature = signature;
    const seen = new Set(found.map((k) => k.kid));
    for (const kid of this.material.keys()) if (!seen.has(kid)) this.material.delete(kid);

    const grouped = new Map<SigningAlgorithm, (Metadata & { material: Material })[]>();
    for (const key of found) {
      const list = grouped.get(key.alg) ?? [];
      list.push(key);
      grouped.set(key.alg, list);
    }
    const byAlg = new Map<SigningAlgorithm, readonly RingKey[]>();
    const all: RingKey[] = [];
    for (const [alg, list] of grouped) {
      list.sort((a, b) => a.activatesAt - b.activatesAt || (a.kid < b.kid ? -1 : 1));
      const keys = list.map((key, i): RingKey => {
        const successorAt = list[i + 1]?.activatesAt ?? null;
        return {
          kid: key.kid,
          alg,
          createdAt: key.createdAt,
          activatesAt: key.activatesAt,
          signing: Object.freeze({ kid: key.kid, alg, privateKey: key.material.privateKey }),
          jwk: deepFreeze({ ...key.material.publicJwk, kid: key.kid, alg, use: 'sig' }),
          successorAt,
          unpublishAt: successorAt === null ? null : successorAt + this.maxTokenLifetimeMs + this.skewMs,
        };
      });
      byAlg.set(alg, Object.freeze(keys));
      all.push(...keys);
    }
    this.byAlg = byAlg;
    this.keys = Object.freeze(all);
    this.jwksValidUntil = -Infinity;
  }

  /**
   * Published at t: created by t and not yet unpublished. The retirement instant does not
   * matter here: a key is unpublished only long after its successor activated.
   */
  private refreshJwks(): void {
    const t = this.now();
    if (t < this.jwksValidUntil) return;
    let validUntil = Infinity;
    const published: RingKey[] = [];
    for (const key of this.keys) {
      if (key.createdAt > t) {
        validUntil = Math.min(validUntil, key.createdAt);
        continue;
      }
      if (key.unpublishAt !== null && key.unpublishAt <= t) continue;
      if (key.unpublishAt !== null) validUntil = Math.min(validUntil, key.unpublishAt);
      published.push(key);
    }
    // Newest first within an algorithm: verifiers that try keys in order find the signer sooner.
    published.sort((a, b) => this.rank(a.alg) - this.rank(b.alg) || b.activatesAt - a.activatesAt || (a.kid < b.kid ? 1 : -1));
    const value = { keys: published.map((key) => key.jwk) };
    const text = JSON.stringify(value);
    this.jwksValue = deepFreeze(value);
    this.jwksText = text;
    this.version = createHash('sha256').update(text).digest('base64url').slice(0, 22);
    this.jwksValidUntil = validUntil;
  }

  /** Is there anything to write at t? (Checked before taking the lock, so an idle tick takes none.) */
  private due(t: number): boolean {
    for (const alg of this.algorithms) {
      const list = this.byAlg.get(alg);
      const newest = list?.[list.length - 1];
      if (newest === undefined) return true;
      if (this.rotationDue(newest, t)) return true;
    }
    return this.keys.some((key) => this.deletable(key, t));
  }

  /** The successor is published publish-ahead before the newest key has been newest for rotateEvery. */
  private rotationDue(newest: RingKey, t: number): boolean {
    return this.rotateEveryMs > 0 && t >= newest.activatesAt + this.rotateEveryMs - this.publishAheadMs;
  }

  /** A skew after it left the JWKS, so a process whose clock lags does not lose a key it still publishes. */
  private deletable(key: RingKey, t: number): boolean {
    return key.unpublishAt !== null && key.unpublishAt + this.skewMs <= t;
  }

  private async maintain(opening: boolean): Promise<void> {
    for (let waited = 0; ; waited += OPEN_LOCK_POLL_MS) {
      if (!this.due(this.now())) return;
      const result = await this.locked(async () => {
        // Another process may have written between our read and the lock.
        await this.load();
        if (await this.writeRound(this.now())) await this.load();
      });
      if (result !== LOCKED) return;
      const missing = this.algorithms.some((alg) => !this.byAlg.has(alg));
      if (!opening || !missing || waited >= OPEN_LOCK_WAIT_MS) {
        this.emit({ type: 'rotation_skipped_locked' });
        return;
      }
      await sleep(OPEN_LOCK_POLL_MS);
      await this.load();
    }
  }

  /** Under the lock: bootstrap, scheduled rotation, cleanup. True if it changed the directory. */
  private async writeRound(t: number): Promise<boolean> {
    let changed = false;
    for (const alg of this.algorithms) {
      const list = this.byAlg.get(alg);
      const newest = list?.[list.length - 1];
      if (newest === undefined) {
        // Nothing can have cached a JWKS without this algorithm's key yet: it may sign at once.
        await this.create(alg, t, t);
        changed = true;
      } else if (this.rotationDue(newest, t)) {
        await this.create(alg, t, t + this.publishAheadMs);
        changed = true;
      }
    }
    for (const key of this.keys) {
      if (!this.deletable(key, t)) continue;
      // Metadata first: a reader that still sees the PEM without it ignores it.
      await unlinkIfPresent(join(this.dir, `${key.kid}.json`));
      await unlinkIfPresent(join(this.dir, `${key.kid}.key.pem`));
      this.emit({ type: 'key_removed', kid: key.kid, alg: key.alg, reason: 'expired' });
      changed = true;
    }
    await this.removeLeftovers();
    return changed;
  }

  /** PEMs without metadata and temp files left by a writer that died mid-write. */
  private async removeLeftovers(): Promise<void> {
    const names = await readdir(this.dir);
    const present = new Set(names);
    const cutoff = Date.now() - STALE_LOCK_MS;
    for (const name of names) {
      const orphan = name.endsWith('.key.pem') && !present.has(`${name.slice(0, -'.key.pem'.length)}.json`);
      const temp = name.startsWith('.') && name.endsWith('.tmp');
      if (!orphan && !temp) continue;
      const path = join(this.dir, name);
      const info = await stat(path).catch(() => null);
      if (info === null || info.mtimeMs > cutoff) continue;
      await unlinkIfPresent(path);
      if (orphan) this.emit({ type: 'key_removed', kid: name.slice(0, -'.key.pem'.length), reason: 'orphan' });
    }
  }

  private async create(alg: SigningAlgorithm, createdAt: number, activatesAt: number): Promise<KeyState> {
    const { privateKey } = await generateKeyPair(alg, {
      extractable: true,
      ...(isRsa(alg) ? { modulusLength: RSA_MODULUS_BITS } : {}),
      ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}),
    });
    const pem = await exportPKCS8(privateKey);
    // The kid comes from the same import path a reader uses, so writer and readers agree on it.
    const material = await materialFromPem(pem, alg);
    const { kid } = material;
    await writeAtomic(join(this.dir, `${kid}.key.pem`), this.dir, `${kid}.key.pem`, pem);
    const meta: Metadata = { kid, alg, createdAt, activatesAt };
    await writeAtomic(join(this.dir, `${kid}.json`), this.dir, `${kid}.json`, `${JSON.stringify(meta)}\n`);
    this.material.set(kid, material);
    this.emit({ type: 'key_created', kid, alg });
    return { kid, alg, createdAt, activatesAt, retiredAt: null, expiresAt: null };
  }

  /** Runs `task` holding `dir/.rotate.lock`; LOCKED if another process holds it. */
  private async locked<T>(task: () => Promise<T>): Promise<T | typeof LOCKED> {
    const path = join(this.dir, LOCK_FILE);
    const token = `${process.pid}:${randomUUID()}`;
    if (!(await this.acquire(path, token))) return LOCKED;
    try {
      return await task();
    } finally {
      // Only our own lock: if ours was broken as stale, the file is someone else's now.
      const holder = await readFile(path, 'utf8').catch(() => null);
      if (holder === token) await unlinkIfPresent(path).catch(() => undefined);
    }
  }

  private async acquire(path: string, token: string): Promise<boolean> {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await writeFile(path, token, { flag: 'wx', mode: 0o600 });
        return true;
      } catch (err) {
        if (errorCode(err) !== 'EEXIST')
          throw new KeyRingError('issuer.key_dir', `cannot create lock in ${this.dir}`, { cause: err });
      }
      if (attempt > 0) return false;
      const info = await stat(path).catch(() => null);
      if (info !== null && Date.now() - info.mtimeMs <= STALE_LOCK_MS) return false;
      // If two processes break the same stale lock at once, the later unlink can remove the
      // other's fresh lock and both write. The worst outcome is one extra key per algorithm,
      // which the lifecycle handles like any other (the later of the two signs).
      await unlinkIfPresent(path);
    }
    return false;
  }
}
