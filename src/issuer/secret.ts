/**
 * Client secrets: only a scrypt hash is ever stored (config file or store), in a
 * self-describing string `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` so the cost can be
 * raised later without breaking existing hashes. The parameters come from the string
 * being verified, so they are bounded: a hostile or corrupted hash must not make one
 * verification cost gigabytes or minutes.
 */
import { createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

const LN = 15;
const R = 8;
const P = 1;
const SALT_BYTES = 16;
const KEY_BYTES = 32;

/** Largest scrypt working set a stored hash may ask for (bytes): 8× the default cost. */
const MAX_WORKING_SET = 256 * 1024 * 1024;
const BOUNDS = { ln: [10, 20], r: [1, 16], p: [1, 4], salt: [8, 64], key: [16, 64] } as const;

const ENCODED = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)$/;

interface ScryptParams {
  readonly ln: number;
  readonly r: number;
  readonly p: number;
  readonly salt: Buffer;
  readonly key: Buffer;
}

function within(value: number, [min, max]: readonly [number, number]): boolean {
  return Number.isInteger(value) && value >= min && value <= max;
}

/** Strict base64url: Buffer.from is lenient, so a string that does not round-trip is refused. */
function decode(text: string): Buffer | null {
  const bytes = Buffer.from(text, 'base64url');
  return bytes.toString('base64url') === text ? bytes : null;
}

function parse(encoded: string): ScryptParams | null {
  if (typeof encoded !== 'string' || encoded.length > 512) return null;
  const m = ENCODED.exec(encoded);
  if (m === null) return null;
  const [ln, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const salt = decode(m[4]!);
  const key = decode(m[5]!);
  if (!within(ln, BOUNDS.ln) || !within(r, BOUNDS.r) || !within(p, BOUNDS.p)) return null;
  // Each bound alone still allows ln=20,r=16: 2 GiB for one verification. Cap the working set.
  if (128 * r * 2 ** ln > MAX_WORKING_SET) return null;
  if (salt === null || key === null || !within(salt.length, BOUNDS.salt) || !within(key.length, BOUNDS.key)) return null;
  return { ln, r, p, salt, key };
}

function derive(secret: string, salt: Buffer, keyLength: number, ln: number, r: number, p: number): Promise<Buffer> {
  const N = 2 ** ln;
  // Node's default ceiling (32 MiB) is exactly ln=15,r=8's working set, which OpenSSL then refuses.
  const maxmem = 128 * r * (N + p + 2) + 1024 * 1024;
  return new Promise((resolve, reject) => {
    scrypt(secret, salt, keyLength, { N, r, p, maxmem }, (error, key) => (error === null ? resolve(key) : reject(error)));
  });
}

/** Hashes a client secret for storage (~50 ms by design). */
export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(secret, salt, KEY_BYTES, LN, R, P);
  return `$scrypt$ln=${LN},r=${R},p=${P}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

/** True when `secret` matches `encoded`; false for a wrong secret or any malformed or out-of-bounds hash. Never throws. */
export async function verifySecret(secret: string, encoded: string): Promise<boolean> {
  const params = parse(encoded);
  if (params === null || typeof secret !== 'string') return false;
  try {
    const key = await derive(secret, params.salt, params.key.length, params.ln, params.r, params.p);
    return timingSafeEqual(key, params.key);
  } catch {
    return false;
  }
}

/** A new client secret: 32 random bytes, base64url (43 characters). */
export function generateSecret(): string {
  return randomBytes(32).toString('base64url');
}

/** Whether `s` is a hash `verifySecret` accepts (config validation: catches a secret pasted in place of its hash). */
export function isSecretHash(s: string): boolean {
  return parse(s) !== null;
}

export interface SecretVerifierOptions {
  /** Successful verifications remembered (oldest dropped first). Default 1000. */
  maxEntries?: number;
  /** How long one is remembered (ms). Default 300,000. */
  ttlMs?: number;
  /** Clock (ms), for tests. */
  now?: () => number;
}

/**
 * `verifySecret` with a small memory of recent successes. scrypt costs ~50 ms by
 * design, which is right against offline guessing but would cap `client_credentials`
 * at ~20 tokens/s per core for a legitimate client that asks often. So a success is
 * remembered for a while, keyed by client id, a digest of the secret and the stored
 * hash itself: rotating a client's secret changes the hash and so misses the cache,
 * and a wrong secret never matches a remembered digest. Failures are never cached
 * (a guesser always pays full price). The digest is an HMAC under a per-process
 * random key, so memory never holds a fast, unkeyed hash of a secret.
 */
export class SecretVerifier {
  private readonly maxEntries: number;
  private readonly ttlMs: number;
  private readonly now: () => number;
  private readonly digestKey = randomBytes(32);
  /** key → expiry (ms); Map order is insertion order, so the first entry is the oldest. */
  private readonly cache = new Map<string, number>();
  /** A burst of identical requests shares one scrypt run. */
  private readonly inflight = new Map<string, Promise<boolean>>();
  /** Verifications answered from memory (stats, tests). */
  hits = 0;

  constructor(options: SecretVerifierOptions = {}) {
    this.maxEntries = Math.max(1, options.maxEntries ?? 1000);
    this.ttlMs = Math.max(0, options.ttlMs ?? 300_000);
    this.now = options.now ?? Date.now;
  }

  /** Remembered successes (for tests and stats). */
  get size(): number {
    return this.cache.size;
  }

  async verify(clientId: string, secret: string, encoded: string): Promise<boolean> {
    if (typeof secret !== 'string' || typeof encoded !== 'string') return false;
    const digest = createHmac('sha256', this.digestKey).update(secret).digest('base64url');
    const key = `${clientId}\0${digest}\0${encoded}`;
    const expires = this.cache.get(key);
    if (expires !== undefined) {
      if (expires > this.now()) {
        this.hits++;
        return true;
      }
      this.cache.delete(key);
    }
    const running = this.inflight.get(key);
    if (running !== undefined) return running;
    const check = verifySecret(secret, encoded)
      .then((ok) => {
        if (ok && this.ttlMs > 0) this.remember(key);
        return ok;
      })
      .finally(() => this.inflight.delete(key));
    this.inflight.set(key, check);
    return check;
  }

  /** Forgets every remembered success (e.g. after clients were reloaded). */
  clear(): void {
    this.cache.clear();
  }

  private remember(key: string): void {
    this.cache.delete(key);
    this.cache.set(key, this.now() + this.ttlMs);
    while (this.cache.size > this.maxEntries) {
      const oldest = this.cache.keys().next();
      if (oldest.done === true) break;
      this.cache.delete(oldest.value);
    }
  }
}
