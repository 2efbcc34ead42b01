/**
 * Encrypted tokens: a compact JWE (RFC 7516) wrapping a signed JWT (a nested JWT,
 * RFC 7519 §5.2, exactly one level). The issuer signs, then encrypts to the gateway's
 * public key; a provider with `decrypt` unwraps with its private key, then the inner
 * token goes through the provider's ordinary verification, unchanged.
 *
 * - The private key is read and imported once, when the config is compiled; the load
 *   checks (`checks.ts`) read it through the same function, so a bad file fails at load.
 * - Only asymmetric key management (ECDH-ES*, RSA-OAEP*), allow-listed per provider,
 *   as are the content encryptions. No `zip` (a decompression bomb behind a small
 *   token), no `crit`, and the protected header must say `cty: JWT`.
 * - Every envelope failure is `jwt.decrypt_failed`; what is wrong with the inner
 *   token (bad signature, claims, `alg: none`, another JWE inside…) keeps its own code.
 */
import { createPrivateKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { CompactEncrypt, compactDecrypt, type CompactJWEHeaderParameters, type DecryptOptions, type KeyInput } from 'jose';
import { DecryptRefusal, mapDecryptError, type AuthnFailureCode } from './failures.js';
import {
  DECRYPT_DEFAULTS,
  JWE_CONTENT_ENCRYPTIONS,
  JWE_KEY_ALGORITHMS,
  type DecryptConfig,
  type JweContentEncryption,
  type JweKeyAlgorithm,
} from './schema.js';
import { MAX_TOKEN_LENGTH } from './token.js';

// Compact JWE: protected header . encrypted key . iv . ciphertext . tag. The encrypted key is
// empty for direct key agreement (`ECDH-ES`); every other part is needed by the allowed algorithms.
const COMPACT_JWE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

// A signed compact JWS with a non-empty signature: what `encryptToken` agrees to wrap.
const SIGNED_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

const ECDH: readonly JweKeyAlgorithm[] = ['ECDH-ES', 'ECDH-ES+A128KW', 'ECDH-ES+A256KW'];
const RSA_OAEP: readonly JweKeyAlgorithm[] = ['RSA-OAEP', 'RSA-OAEP-256'];
const ECDH_CURVES: ReadonlySet<string> = new Set(['prime256v1', 'secp384r1', 'secp521r1']);
const MIN_RSA_BITS = 2048;
const MAX_KEY_FILE_BYTES = 1024 * 1024;

const utf8 = new TextDecoder();

/** `cty` of a nested JWT (RFC 7519 §5.2), compared case-insensitively, with or without `application/`. */
export function isNestedJwt(cty: unknown): boolean {
  if (typeof cty !== 'string') return false;
  const type = cty.toLowerCase();
  return type === 'jwt' || type === 'application/jwt';
}

/** Five segments: the token is meant as a JWE (judged by `jweShapeProblem`), not as a JWS. */
export function looksLikeJwe(token: string): boolean {
  let dots = 0;
  for (let i = token.indexOf('.'); i !== -1; i = token.indexOf('.', i + 1)) dots++;
  return dots === 4;
}

/**
 * Syntax gate before jose, as for a JWS: size, alphabet, and canonical base64url in every
 * decoded part (jose's decoder tolerates non-zero trailing bits, which would let one token
 * be spelled several ways). The protected header needs no such check: its text is the AAD.
 */
export function jweShapeProblem(token: string): string | null {
  if (token.length > MAX_TOKEN_LENGTH) return `token longer than ${MAX_TOKEN_LENGTH} characters`;
  if (!COMPACT_JWE.test(token)) return 'not a compact JWE';
  const parts = token.split('.');
  for (let i = 1; i < parts.length; i++) {
    const part = parts[i]!;
    if (part !== '' && Buffer.from(part, 'base64url').toString('base64url') !== part) {
      return 'non-canonical base64url in JWE';
    }
  }
  return null;
}

// ---------------------------------------------------------------------------
// The private key

export interface DecryptionKey {
  readonly key: KeyObject;
  /** `rsa`, `ec`, `x25519`: for messages. */
  readonly type: string;
  /** Key management algorithms this key can serve, before the provider's allow-list. */
  readonly usable: readonly JweKeyAlgorithm[];
}

export type DecryptionKeyLoad =
  { readonly ok: true; readonly key: DecryptionKey } | { readonly ok: false; readonly problem: string };

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException)?.code ?? (err instanceof Error ? err.message : String(err));
}

/**
 * Reads a private key file: a PEM private key (PKCS#8; PKCS#1 and SEC1 work too) or a
 * private JWK. A JWK's `alg` narrows the algorithms it serves and its `use`, if present,
 * must be `enc`. Never throws: a problem is a sentence for the config report.
 */
export function loadDecryptionKey(file: string): DecryptionKeyLoad {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return { ok: false, problem: `cannot read ${file}: ${errorCode(err)}` };
  }
  if (text.length > MAX_KEY_FILE_BYTES) return { ok: false, problem: `${file} is larger than ${MAX_KEY_FILE_BYTES} bytes` };
  let key: KeyObject;
  let narrowTo: string | undefined;
  if (text.trimStart().startsWith('{')) {
    let jwk: unknown;
    try {
      jwk = JSON.parse(text);
    } catch {
      return { ok: false, problem: `${file} is neither a PEM key nor JSON` };
    }
    if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) return { ok: false, problem: `${file} is not a JWK` };
    const fields = jwk as Record<string, unknown>;
    if (Array.isArray(fields['keys'])) return { ok: false, problem: `${file} is a JWKS; give one private JWK` };
    if (fields['kty'] === 'oct') return { ok: false, problem: 'symmetric keys are not supported; use an EC or RSA private key' };
    if (fields['d'] === undefined) {
      return { ok: false, problem: 'this is a public key; decryption needs the private key' };
    }
    if (fields['use'] !== undefined && fields['use'] !== 'enc') {
      return { ok: false, problem: `this JWK is for "use": ${JSON.stringify(fields['use'])}; a decryption key needs "enc"` };
    }
    if (fields['alg'] !== undefined) {
      if (typeof fields['alg'] !== 'string') return { ok: false, problem: 'the JWK "alg" is not a string' };
      narrowTo = fields['alg'];
    }
    try {
      key = createPrivateKey({ key: fields as JsonWebKey, format: 'jwk' });
    } catch {
      return { ok: false, problem: `${file} is not a usable private JWK` };
    }
  } else {
    if (!text.includes('PRIVATE KEY') && (text.includes('PUBLIC KEY') || text.includes('CERTIFICATE'))) {
      return { ok: false, problem: 'this is a public key or certificate; decryption needs the private key' };
    }
    if (text.includes('ENCRYPTED PRIVATE KEY')) {
      return { ok: false, problem: 'passphrase-protected keys are not supported' };
    }
    try {
      key = createPrivateKey(text);
    } catch {
      return { ok: false, problem: `${file} is not a PEM private key or a private JWK` };
    }
  }

  const type = key.asymmetricKeyType ?? 'unknown';
  let usable: readonly JweKeyAlgorithm[];
  if (type === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) return { ok: false, problem: `RSA keys need at least ${MIN_RSA_BITS} bits (this one has ${bits})` };
    usable = RSA_OAEP;
  } else if ((type === 'ec' && ECDH_CURVES.has(key.asymmetricKeyDetails?.namedCurve ?? '')) || type === 'x25519') {
    usable = ECDH;
  } else {
    return { ok: false, problem: `a ${type} key cannot decrypt tokens (use an RSA, P-256/384/521 or X25519 key)` };
  }
  if (narrowTo !== undefined) {
    if (!usable.includes(narrowTo as JweKeyAlgorithm)) {
      return { ok: false, problem: `the JWK "alg" ${JSON.stringify(narrowTo)} is not one a ${type} key can decrypt with here` };
    }
    usable = [narrowTo as JweKeyAlgorithm];
  }
  return { ok: true, key: { key, type, usable } };
}

/** The allowed algorithms a key cannot serve at all: a config problem when that is all of them. */
export function decryptKeyProblem(config: DecryptConfig, loaded: DecryptionKeyLoad): string | null {
  if (!loaded.ok) return loaded.problem;
  const { type, usable } = loaded.key;
  const algorithms: readonly JweKeyAlgorithm[] = config.algorithms ?? DECRYPT_DEFAULTS.algorithms;
  if (algorithms.some((alg) => usable.includes(alg))) return null;
  return `a ${type} key cannot serve ${algorithms.join(', ')} (it can: ${usable.join(', ')})`;
}

// ---------------------------------------------------------------------------
// Unwrapping

export type UnwrapResult =
  { readonly ok: true; readonly jws: string } | { readonly ok: false; readonly code: AuthnFailureCode; readonly reason: string };

/** A provider's `decrypt`, compiled: the imported key and jose's allow-lists. */
export class TokenDecrypter {
  readonly required: boolean;
  private readonly key: KeyObject;
  /** Allowed and servable by the key: a token naming another allowed alg fails before any crypto. */
  private readonly servable: ReadonlySet<string>;
  private readonly options: DecryptOptions;

  constructor(config: DecryptConfig, key: DecryptionKey) {
    // Defaults again: a programmatic config may not have been through the schema.
    const algorithms = config.algorithms ?? DECRYPT_DEFAULTS.algorithms;
    this.required = config.required ?? DECRYPT_DEFAULTS.required;
    this.key = key.key;
    this.servable = new Set(algorithms.filter((alg) => key.usable.includes(alg)));
    this.options = {
      keyManagementAlgorithms: [...algorithms],
      contentEncryptionAlgorithms: [...(config.encryptions ?? DECRYPT_DEFAULTS.encryptions)],
      // 0: a `zip` header is refused (also refused in getKey, before any crypto).
      maxDecompressedLength: 0,
    };
  }

  /** Never throws: the inner compact JWS, or a failure with a code. */
  async unwrap(token: string): Promise<UnwrapResult> {
    const shape = jweShapeProblem(token);
    if (shape !== null) return { ok: false, code: 'jwt.malformed', reason: shape };
    try {
      const { plaintext } = await compactDecrypt(token, this.getKey, this.options);
      // Invalid UTF-8 becomes U+FFFD, which the inner shape check refuses.
      return { ok: true, jws: utf8.decode(plaintext) };
    } catch (err) {
      const mapped = mapDecryptError(err);
      return { ok: false, code: mapped.code, reason: mapped.reason };
    }
  }

  // jose calls this after the `crit` check and the alg/enc allow-lists, before any key unwrap.
  private readonly getKey = (header: CompactJWEHeaderParameters): KeyObject => {
    if (header.zip !== undefined) throw new DecryptRefusal('zip (compressed plaintext) not accepted');
    if (!isNestedJwt(header.cty)) throw new DecryptRefusal('cty is not JWT');
    if (!this.servable.has(header.alg)) throw new DecryptRefusal(`the decryption key cannot serve ${header.alg}`);
    return this.key;
  };
}

/** Compiles a provider's `decrypt`. Throws TypeError for what the load checks refuse. */
export function compileDecrypter(config: DecryptConfig, provider: string): TokenDecrypter {
  const loaded = loadDecryptionKey(config.keyFile);
  const problem = decryptKeyProblem(config, loaded);
  if (problem !== null || !loaded.ok) throw new TypeError(`provider "${provider}": decrypt.keyFile: ${problem ?? ''}`);
  return new TokenDecrypter(config, loaded.key);
}

// ---------------------------------------------------------------------------
// Issuer side

/**
 * `alg`/`enc` are plain strings so config values can be passed as they are; anything
 * outside JWE_KEY_ALGORITHMS / JWE_CONTENT_ENCRYPTIONS is a TypeError at call time.
 */
export interface EncryptTokenOptions {
  /** Key management algorithm, one a gateway `decrypt` can allow (a `JweKeyAlgorithm`). */
  alg: JweKeyAlgorithm | string;
  /** Content encryption (a `JweContentEncryption`). */
  enc: JweContentEncryption | string;
  /** Key id of the recipient's key, when it has one. */
  kid?: string;
}

/**
 * Wraps a signed compact JWS in a compact JWE (`cty: JWT`) for `key`, the recipient's
 * public key (CryptoKey, KeyObject or public JWK, as jose takes them). Throws TypeError
 * for anything but a signed compact JWS (an unsigned or already encrypted token is never
 * wrapped), an alg/enc a gateway could not allow, or a key unfit for `alg` (from jose).
 */
export async function encryptToken(jws: string, key: KeyInput, { alg, enc, kid }: EncryptTokenOptions): Promise<string> {
  if (typeof jws !== 'string' || !SIGNED_JWS.test(jws)) throw new TypeError('encryptToken: not a signed compact JWS');
  if (!(JWE_KEY_ALGORITHMS as readonly string[]).includes(alg)) throw new TypeError(`encryptToken: unsupported alg ${alg}`);
  if (!(JWE_CONTENT_ENCRYPTIONS as readonly string[]).includes(enc)) throw new TypeError(`encryptToken: unsupported enc ${enc}`);
  const header: CompactJWEHeaderParameters = { alg, enc, cty: 'JWT' };
  if (kid !== undefined) header.kid = kid;
  return new CompactEncrypt(Buffer.from(jws, 'utf8')).setProtectedHeader(header).encrypt(key);
}
