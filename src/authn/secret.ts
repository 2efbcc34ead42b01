/**
 * A shared secret for HS256/384/512. Only ever used for the HS algorithms the
 * provider allows (and config checks allow HS only with a secret, a secret only
 * with HS), so an RSA public key can never end up used as an HMAC secret.
 */
import { webcrypto } from 'node:crypto';
import type { CryptoKey, JWSHeaderParameters } from 'jose';
import { KeyLookupError } from './failures.js';
import type { KeyCandidate, KeyResolution, KeySource, SourceHooks, VerificationKey } from './key-source.js';

export const MIN_SECRET_BYTES = 32;
const SECRET_REF = 'secret';

export class SecretKeySource implements KeySource {
  readonly kind = 'secret' as const;
  readonly generation = 0;
  readonly ready: Promise<void>;
  private byAlg: ReadonlyMap<string, readonly KeyCandidate[]> = new Map();
  private loaded = false;

  constructor(secret: string, algorithms: readonly string[], hooks: SourceHooks) {
    this.ready = this.load(secret, algorithms, hooks);
    this.ready.catch(() => undefined);
  }

  resolve(header: JWSHeaderParameters): KeyResolution {
    if (!this.loaded) return this.ready.catch(() => undefined).then(() => this.select(header));
    return this.select(header);
  }

  private select(header: JWSHeaderParameters): readonly KeyCandidate[] {
    const found = header.alg === undefined ? undefined : this.byAlg.get(header.alg);
    if (found === undefined) throw new KeyLookupError('jwt.unknown_kid', 'no secret for this algorithm');
    return found;
  }

  async getKey(header: JWSHeaderParameters): Promise<VerificationKey> {
    return (await this.resolve(header))[0]!.key;
  }

  has(ref: string): boolean {
    return ref === SECRET_REF;
  }

  onChange(): () => void {
    return () => undefined;
  }

  close(): void {}

  private async load(secret: string, algorithms: readonly string[], hooks: SourceHooks): Promise<void> {
    const bytes = Buffer.from(secret, 'utf8');
    if (bytes.length < MIN_SECRET_BYTES) {
      const error = `secret has ${bytes.length} bytes; at least ${MIN_SECRET_BYTES} are required`;
      hooks.emit({ type: 'keys_error', provider: hooks.provider, source: this.kind, error });
      throw new Error(error);
    }
    const byAlg = new Map<string, readonly KeyCandidate[]>();
    for (const alg of algorithms) {
      if (!/^HS(256|384|512)$/.test(alg)) continue;
      // Imported once as a non-extractable CryptoKey: jose would otherwise import raw bytes on every verification.
      const key = await webcrypto.subtle.importKey('raw', bytes, { name: 'HMAC', hash: `SHA-${alg.slice(2)}` }, false, [
        'verify',
      ]);
      byAlg.set(alg, Object.freeze([{ key: key as unknown as CryptoKey, ref: SECRET_REF, kid: undefined }]));
    }
    bytes.fill(0);
    this.byAlg = byAlg;
    this.loaded = true;
    hooks.emit({
      type: 'keys_loaded',
      provider: hooks.provider,
      source: this.kind,
      keys: byAlg.size,
      skipped: 0,
      generation: 0,
      changed: true,
    });
  }
}
