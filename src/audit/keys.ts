/**
 * Ed25519 keys for checkpoint signatures, through node:crypto (no hand-rolled
 * crypto). A key is named by its fingerprint — base64url SHA-256 of the public
 * key's SPKI DER, first 16 characters — which checkpoints carry as `keyId`, so
 * verify can tell "signed by another key" from "bad signature".
 */
import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readKeySpec } from './schema.js';

export interface SigningKey {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly publicKeyPem: string;
  readonly keyId: string;
}

export function keyFingerprint(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('base64url').slice(0, 16);
}

/** From PEM text or a PEM file path; TypeError when it is not an Ed25519 private key. */
export function loadSigningKey(spec: string): SigningKey {
  const privateKey = createPrivateKey(readKeySpec(spec));
  if (privateKey.asymmetricKeyType !== 'ed25519')
    throw new TypeError(`audit signing key must be Ed25519 (got ${privateKey.asymmetricKeyType ?? 'unknown'})`);
  const publicKey = createPublicKey(privateKey);
  return {
    privateKey,
    publicKey,
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyId: keyFingerprint(publicKey),
  };
}

/** A trusted public key for verify: PEM text, or a file holding a public (or private) PEM key. */
export function loadPublicKey(spec: string): { key: KeyObject; keyId: string } {
  const text = spec.trimStart().startsWith('-----BEGIN') ? spec : readFileSync(spec, 'utf8');
  // createPublicKey also derives the public half of a private key, so either file works.
  const key = createPublicKey(text);
  if (key.asymmetricKeyType !== 'ed25519')
    throw new TypeError(`audit public key must be Ed25519 (got ${key.asymmetricKeyType ?? 'unknown'})`);
  return { key, keyId: keyFingerprint(key) };
}

export function signBytes(key: SigningKey, data: string): string {
  return sign(null, Buffer.from(data, 'utf8'), key.privateKey).toString('base64url');
}

export function verifyBytes(key: KeyObject, data: string, signature: string): boolean {
  try {
    return verify(null, Buffer.from(data, 'utf8'), key, Buffer.from(signature, 'base64url'));
  } catch {
    return false;
  }
}
