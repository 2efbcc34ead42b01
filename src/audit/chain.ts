/**
 * The hash chain. Every record carries `prev` (the previous record's hash) and
 * `hash` = SHA-256 (hex) over the RFC 8785 canonical JSON of the record without
 * `hash`. The stored line is that canonical JSON with `"hash"` appended as the
 * last member, so writing costs one serialization (written straight into the
 * WAL's bytes, `writeStoredLine`), and any store that keeps the JSON (a file
 * line, a TEXT column) keeps exactly what was hashed.
 *
 * Checkpoints are records too: `count` (= n, the records before it) and `head`
 * (= prev, the hash of the last of them), signed with Ed25519 over the canonical
 * JSON without `sig` and `hash`. A signature thus vouches for the whole chain
 * prefix it closes. The last checkpoint of a chain is `final`: written on close,
 * or by the next process on the same WAL slot when this one died (`recovered`).
 */
import { hash as digest, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { canonicalize } from './canonical.js';
import type { AuditClock, UuidV7 } from './clock.js';
import { formatTimestamp } from './clock.js';
import type { AuditRecord, CheckpointRecord, RecordBase, StartRecord } from './event.js';
import { signBytes, type SigningKey } from './keys.js';

export const GENESIS_HASH = '0'.repeat(64);

export function sha256Hex(text: string): string {
  return digest('sha256', text, 'hex');
}

/** The canonical form a record's hash covers: everything but `hash`. */
export function hashInput(record: Readonly<Record<string, unknown>>): string {
  if (!('hash' in record)) return canonicalize(record);
  const { hash: _hash, ...rest } = record;
  return canonicalize(rest);
}

/** What a checkpoint's signature covers: everything but `sig` and `hash`. */
export function signatureInput(record: Readonly<Record<string, unknown>>): string {
  const { hash: _hash, sig: _sig, ...rest } = record;
  return canonicalize(rest);
}

/** `<hostname>:<pid>:<UTC start, ms>:<6 hex>` — unique per process start, readable in reports. */
export function newChainId(now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:.]/g, '');
  return `${hostname()}:${process.pid}:${stamp}:${randomBytes(3).toString('hex')}`;
}

export interface ChainedRecord {
  readonly record: AuditRecord;
  /** RFC 8785 JSON of the record without `hash`: what `hash` covers. */
  readonly canonical: string;
  readonly hash: string;
}

/** The stored JSON line (no trailing newline): the canonical JSON with `"hash"` appended as its last member. */
export function storedLine(chained: ChainedRecord): string {
  return storedLineOf(chained.canonical, chained.hash);
}

/** The stored line of a record from its canonical form (without `hash`) and its hash: what verify expects to read back. */
export function storedLineOf(canonical: string, hash: string): string {
  // Canonical JSON always ends in `}` and, with members present, needs a comma before the new one.
  return `${canonical.slice(0, -1)},"hash":"${hash}"}`;
}

/** Most bytes `writeStoredLine` may write for a record (UTF-8 is at most 3 bytes per UTF-16 unit). */
export function storedLineMaxBytes(chained: ChainedRecord): number {
  return chained.canonical.length * 3 + 80;
}

/**
 * Writes the stored line and its newline into `buffer` at `offset` (room for
 * `storedLineMaxBytes` is the caller's job); returns the newline's offset. The
 * same bytes as `storedLine` encoded, without building that string.
 */
export function writeStoredLine(buffer: Buffer, offset: number, chained: ChainedRecord): number {
  // The canonical form ends in `}` (one byte): overwrite it with the comma, then the hash member closes the object.
  const end = offset + buffer.write(chained.canonical, offset, 'utf8') - 1;
  return end + buffer.write(`,"hash":"${chained.hash}"}\n`, end, 'latin1') - 1;
}

/**
 * Appends records to one chain. Callers hand it a body that already has every
 * field, including placeholder `chain`/`n`/`prev`/`v` in key order (so the
 * canonicalizer's already-sorted fast path applies); it fills them, hashes, and
 * returns the line. Not re-entrant: one writer per chain, by construction.
 */
export class ChainWriter {
  readonly id: string;
  #n: number;
  #prev: string;
  #sinceCheckpoint = 0;
  #lastCheckpointAt: number;
  readonly #key: SigningKey | null;
  readonly #clock: AuditClock;
  readonly #uuid: UuidV7;

  constructor(options: { id: string; key: SigningKey | null; clock: AuditClock; uuid: UuidV7; n?: number; prev?: string }) {
    this.id = options.id;
    this.#key = options.key;
    this.#clock = options.clock;
    this.#uuid = options.uuid;
    this.#n = options.n ?? 0;
    this.#prev = options.prev ?? GENESIS_HASH;
    this.#lastCheckpointAt = Date.now();
  }

  /** Records appended since the last checkpoint (0 right after one). */
  get sinceCheckpoint(): number {
    return this.#sinceCheckpoint;
  }

  get lastCheckpointAt(): number {
    return this.#lastCheckpointAt;
  }

  /** Position the next record will take. */
  get n(): number {
    return this.#n;
  }

  get head(): string {
    return this.#prev;
  }

  /**
   * `canonicalReady`: the body went through `Masker.apply`, which guarantees
   * JSON.stringify yields its canonical form — half the cost of the general
   * canonicalizer on the hot path. Anything else is canonicalized properly.
   */
  append(body: Record<string, unknown>, canonicalReady = false): ChainedRecord {
    body['chain'] = this.id;
    body['n'] = this.#n;
    body['prev'] = this.#prev;
    body['v'] = 1;
    const canonical = canonicalReady ? JSON.stringify(body) : canonicalize(body);
    const hash = sha256Hex(canonical);
    body['hash'] = hash;
    this.#n++;
    this.#prev = hash;
    if (body['kind'] === 'checkpoint') {
      this.#sinceCheckpoint = 0;
      this.#lastCheckpointAt = Date.now();
    } else {
      this.#sinceCheckpoint++;
    }
    return { record: body as unknown as AuditRecord, canonical, hash };
  }

  checkpoint(reason: CheckpointRecord['reason'], final: boolean): ChainedRecord {
    const ns = this.#clock.now();
    const body: Record<string, unknown> = {
      chain: '',
      count: this.#n,
      final,
      head: this.#prev,
      id: this.#uuid.next(ns),
      keyId: this.#key?.keyId ?? null,
      kind: 'checkpoint',
      n: 0,
      prev: '',
      reason,
      sig: null,
      ts: formatTimestamp(ns),
      v: 1,
    };
    if (this.#key !== null) {
      body['chain'] = this.id;
      body['n'] = this.#n;
      body['prev'] = this.#prev;
      body['sig'] = signBytes(this.#key, signatureInput(body));
    }
    return this.append(body);
  }

  start(info: Omit<StartRecord, keyof RecordBase | 'kind' | 'publicKey' | 'keyId'>): ChainedRecord {
    const ns = this.#clock.now();
    const body: Record<string, unknown> = {
      after: info.after,
      chain: '',
      checkpoint:
        info.checkpoint === undefined ? undefined : { every: info.checkpoint.every, intervalMs: info.checkpoint.intervalMs },
      host: info.host,
      id: this.#uuid.next(ns),
      keyId: this.#key?.keyId ?? null,
      kind: 'start',
      n: 0,
      pid: info.pid,
      prev: '',
      publicKey: this.#key?.publicKeyPem ?? null,
      slot: info.slot,
      software: info.software,
      ts: formatTimestamp(ns),
      v: 1,
      wal: info.wal,
    };
    return this.append(body);
  }
}
