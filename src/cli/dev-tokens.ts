import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose';

/** Development tooling: key pairs and tokens for local testing. Not an issuer. */

export const DEV_ALGORITHMS = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'EdDSA'] as const;
export type DevAlgorithm = (typeof DEV_ALGORITHMS)[number];

export interface GeneratedKeys {
  privateJwk: JWK;
  publicJwks: { keys: JWK[] };
}

export async function generateKeys(alg: DevAlgorithm, kid: string = randomUUID()): Promise<GeneratedKeys> {
  const { publicKey, privateKey } = await generateKeyPair(alg, {
    extractable: true,
    ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}),
  });
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { privateJwk, publicJwks: { keys: [publicJwk] } };
}

/** Writes `<kid>.private.jwk.json` (mode 0600) and `jwks.json` into `dir`; returns their paths. */
export function writeKeys(dir: string, keys: GeneratedKeys): { privateKey: string; jwks: string } {
  mkdirSync(dir, { recursive: true });
  const privateKey = join(dir, `${keys.privateJwk.kid}.private.jwk.json`);
  const jwks = join(dir, 'jwks.json');
  writeFileSync(privateKey, JSON.stringify(keys.privateJwk, null, 2) + '\n', { mode: 0o600 });
  writeFileSync(jwks, JSON.stringify(keys.publicJwks, null, 2) + '\n');
  return { privateKey, jwks };
}

export interface MintOptions {
  keyFile: string;
  subject?: string | undefined;
  issuer?: string | undefined;
  audience?: string[] | undefined;
  roles?: string[] | undefined;
  scope?: string | undefined;
  tenant?: string | undefined;
  ttlSeconds?: number | undefined;
  claims?: Record<string, unknown> | undefined;
  typ?: string | undefined;
}

export async function mintToken(options: MintOptions): Promise<string> {
  const jwk = JSON.parse(readFileSync(options.keyFile, 'utf8')) as JWK;
  if (jwk.d === undefined) throw new TypeError(`${options.keyFile} is not a private JWK (no "d")`);
  const alg = jwk.alg ?? (jwk.kty === 'OKP' ? 'EdDSA' : undefined);
  if (alg === undefined) throw new TypeError(`${options.keyFile}: the JWK has no "alg"`);
  const key = await importJWK(jwk, alg);
  const payload: Record<string, unknown> = { ...options.claims };
  if (options.roles !== undefined) payload['roles'] = options.roles;
  if (options.scope !== undefined) payload['scope'] = options.scope;
  if (options.tenant !== undefined) payload['tenant'] = options.tenant;
  // One clock reading for both: jose reads the clock for each, so a second could tick between them (exp − iat = ttl + 1).
  const iat = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT(payload)
    .setProtectedHeader({
      alg,
      ...(jwk.kid === undefined ? {} : { kid: jwk.kid }),
      ...(options.typ === undefined ? {} : { typ: options.typ }),
    })
    .setIssuedAt(iat)
    .setJti(randomUUID())
    .setExpirationTime(iat + (options.ttlSeconds ?? 3600));
  if (options.subject !== undefined) jwt.setSubject(options.subject);
  if (options.issuer !== undefined) jwt.setIssuer(options.issuer);
  if (options.audience !== undefined) jwt.setAudience(options.audience);
  return jwt.sign(key);
}
