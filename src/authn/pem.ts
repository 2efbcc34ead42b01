/**
 * Static PEM public keys (SPKI) or X.509 certificates from config, inline or from
 * files. Files are read when the config is compiled (load time, never per
 * request); each key is imported through jose once per allowed algorithm it
 * supports, so selection at request time is a Map lookup.
 */
import { readFileSync } from 'node:fs';
import { importSPKI, importX509, type CryptoKey, type JWSHeaderParameters } from 'jose';
import { KeyLookupError } from './failures.js';
import type { KeyCandidate, KeyResolution, KeySource, SourceHooks, VerificationKey } from './key-source.js';
import type { PublicKeyConfig } from './schema.js';

export interface PemKeyInput {
  readonly pem: string;
  readonly kid: string | undefined;
  /** Where it came from, for messages: `publicKeys[0]` or the file path. */
  readonly label: string;
}

export function isInlinePem(value: string): boolean {
  return value.trimStart().startsWith('-----BEGIN ');
}

/** Inline PEM text as-is; anything else is a file path (resolved against the config file by the loader). */
export function readPublicKeyInputs(keys: readonly PublicKeyConfig[]): PemKeyInput[] {
  return keys.map((entry, i) => {
    if (isInlinePem(entry.key)) return { pem: entry.key, kid: entry.kid, label: `publicKeys[${i}]` };
    return { pem: readFileSync(entry.key, 'utf8'), kid: entry.kid, label: entry.key };
  });
}

interface PemEntry {
  readonly kid: string | undefined;
  readonly ref: string;
  readonly byAlg: ReadonlyMap<string, CryptoKey>;
}

export class PemKeySource implements KeySource {
  readonly kind = 'public_keys' as const;
  readonly generation = 0;
  readonly ready: Promise<void>;
  private entries: readonly PemEntry[] = [];
  private byKid: ReadonlyMap<string, readonly PemEntry[]> = new Map();
  private withoutKid: readonly PemEntry[] = [];
  /** `alg` → `kid` (undefined: none) → candidates (see `select`). */
  private readonly memo = new Map<string, Map<string | undefined, readonly KeyCandidate[]>>();
  private loaded = false;

  constructor(inputs: readonly PemKeyInput[], algorithms: readonly string[], hooks: SourceHooks) {
    this.ready = this.load(inputs, algorithms, hooks);
    // compile's ready() reports a failure; this keeps it from being an unhandled rejection meanwhile.
    this.ready.catch(() => undefined);
  }

  resolve(header: JWSHeaderParameters): KeyResolution {
    if (!this.loaded) return this.ready.catch(() => undefined).then(() => this.select(header));
    return this.select(header);
  }

  /** The keys for this `alg` and `kid`, answered once per pair (both come from the configured keys). */
  private select(header: JWSHeaderParameters): readonly KeyCandidate[] {
    const { alg, kid } = header;
    const known = typeof alg === 'string' ? this.memo.get(alg)?.get(kid) : undefined;
    if (known !== undefined) return known;
    // A token naming a kid uses the key with that kid; keys configured without one serve any token.
    const pool = kid === undefined ? this.entries : (this.byKid.get(kid) ?? this.withoutKid);
    const out: KeyCandidate[] = [];
    for (const entry of pool) {
      const key = alg === undefined ? undefined : entry.byAlg.get(alg);
      if (key !== undefined) out.push(Object.freeze({ key, ref: entry.ref, kid: entry.kid }));
    }
    if (out.length === 0) {
      if (this.entries.length === 0) throw new KeyLookupError('jwt.jwks_unavailable', 'no public key could be loaded');
      throw new KeyLookupError('jwt.unknown_kid', 'no configured public key matches');
    }
    const candidates = Object.freeze(out);
    // Kept only for a kid of the configured keys (or none), with an alg they serve: bounded by the config.
    if (typeof alg === 'string' && (kid === undefined || (typeof kid === 'string' && this.byKid.has(kid)))) {
      let byKid = this.memo.get(alg);
      if (byKid === undefined) this.memo.set(alg, (byKid = new Map()));
      byKid.set(kid, candidates);
    }
    return candidates;
  }

  async getKey(header: JWSHeaderParameters): Promise<VerificationKey> {
    return (await this.resolve(header))[0]!.key;
  }

  has(ref: string): boolean {
    return this.entries.some((e) => e.ref === ref);
  }

  onChange(): () => void {
    // Static keys never change; a new config compiles a new source.
    return () => undefined;
  }

  close(): void {}

  private async load(inputs: readonly PemKeyInput[], algorithms: readonly string[], hooks: SourceHooks): Promise<void> {
    const entries: PemEntry[] = [];
    const problems: string[] = [];
    for (const [i, input] of inputs.entries()) {
      const isCertificate = input.pem.includes('-----BEGIN CERTIFICATE-----');
      const byAlg = new Map<string, CryptoKey>();
      for (const alg of algorithms) {
        try {
          byAlg.set(alg, isCertificate ? await importX509(input.pem, alg) : await importSPKI(input.pem, alg));
        } catch {
          // This key type cannot be used with this algorithm (an EC key and RS256…).
        }
      }
      if (byAlg.size === 0) problems.push(`${input.label}: not a public key usable with ${algorithms.join(', ')}`);
      else entries.push({ kid: input.kid, ref: `pem:${i}`, byAlg });
    }
    const byKid = new Map<string, PemEntry[]>();
    for (const entry of entries) {
      if (entry.kid === undefined) continue;
      const list = byKid.get(entry.kid);
      if (list) list.push(entry);
      else byKid.set(entry.kid, [entry]);
    }
    this.entries = entries;
    this.byKid = byKid;
    this.withoutKid = entries.filter((e) => e.kid === undefined);
    this.loaded = true;
    if (problems.length > 0) {
      const error = problems.join('; ');
      hooks.emit({ type: 'keys_error', provider: hooks.provider, source: this.kind, error });
      throw new Error(error);
    }
    hooks.emit({
      type: 'keys_loaded',
      provider: hooks.provider,
      source: this.kind,
      keys: entries.length,
      skipped: 0,
      generation: 0,
      changed: true,
    });
  }
}
