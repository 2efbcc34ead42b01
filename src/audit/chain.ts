/**
 * The hash chain. Every record carries `prev` (the previous record's hash) and
 * `hash` = SHA-256 (hex) over the RFC 8785 canonical JSON of the record without
 * `hash`. The stored line is that canonical JSON with `"hash"` appended as the
 * last member, so writing costs one serialization, and any store that keeps the
 * JSON (a file line, a TEXT column) keeps exactly what was hashed.
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
  /** The stored JSON line (no trailing newline). */
  readonly line: string;
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
    // Canonical JSON always ends in `}` and, with members present, needs a comma before the new one.
    const line = `${canonical.slice(0, -1)},"hash":"${hash}"}`;
    body['hash'] = hash;
    this.#n++;
    this.#prev = hash;
    if (body['kind'] === 'checkpoint') {
      this.#sinceCheckpoint = 0;
      this.#lastCheckpointAt = Date.now();
    } else {
      this.#sinceCheckpoint++;
    }
    return { record: body as unknown as AuditRecord, line };
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
    };
    return this.append(body);
  }
}
