// Shared by bench/scenarios/auth.js and auth-unique.js (not a scenario itself:
// it lives outside bench/scenarios/ so the runner does not load it as one).
//
// - an RS256 key pair made with the CLI's own dev tooling (dist/cli/dev-tokens.js),
//   written into the scenario's temp dir: `jwks.json` for Bulwark's `jwksFile`,
//   `public.pem` for the competitors;
// - the gateway config: the pass-through config + an authn provider + an RBAC policy;
// - `mintPool`: many distinct RS256 tokens, fast (async node:crypto signs, which run
//   in libuv's thread pool, so every core signs).
import { createPrivateKey, createPublicKey, randomUUID, sign } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { passthroughConfig } from './scenarios/passthrough.js';

export const ISSUER = 'https://idp.bench.local';
export const AUDIENCE = 'bench-api';
export const ROLE = 'bench-reader';
export const KID = 'bench-rs256';

/** dist/cli/dev-tokens.js, imported lazily so a run without auth scenarios does not need a build. */
export async function devTokens(rootDir) {
  const file = path.join(rootDir, 'dist', 'cli', 'dev-tokens.js');
  if (!existsSync(file))
    throw new Error(`${path.relative(rootDir, file)} not found: run \`npx tsc -p tsconfig.build.json\` first`);
  return import(pathToFileURL(file).href);
}

/**
 * RS256 keys in `<tmpDir>/<name>/`: `<kid>.private.jwk.json`, `jwks.json` (public) and `public.pem`.
 * Returns their paths and the private key as a KeyObject.
 */
export async function setupKeys(ctx, name) {
  const { generateKeys, writeKeys } = await devTokens(ctx.rootDir);
  const dir = path.join(ctx.tmpDir, name);
  const keys = await generateKeys('RS256', KID);
  const written = writeKeys(dir, keys);
  const publicKeyPem = path.join(dir, 'public.pem');
  const publicKey = createPublicKey({ key: keys.publicJwks.keys[0], format: 'jwk' });
  await writeFile(publicKeyPem, publicKey.export({ type: 'spki', format: 'pem' }));
  return {
    keyDir: dir,
    privateKeyFile: written.privateKey,
    jwksFile: written.jwks,
    publicKeyPem,
    privateKey: createPrivateKey({ key: keys.privateJwk, format: 'jwk' }),
  };
}

/** One token from the CLI's `mintToken` (the same code as `bulwark token mint`). */
export async function mintOne(ctx, keyFile, subject = 'bench-user') {
  const { mintToken } = await devTokens(ctx.rootDir);
  return mintToken({ keyFile, subject, issuer: ISSUER, audience: [AUDIENCE], roles: [ROLE], ttlSeconds: 6 * 3600 });
}

/**
 * Telemetry off: no access log and no metrics per request. For the variants that
 * compare like for like with a competitor that logs and counts nothing; the default
 * variants keep Bulwark's telemetry defaults (whatever they are: metrics on, access
 * log off at the time of writing), as users run it.
 */
export const NO_TELEMETRY = { logs: { accessLog: { enabled: false } }, metrics: { enabled: false } };

/**
 * The pass-through config with a JWT provider (RS256 from a jwksFile), an RBAC
 * policy that lets ROLE read everything, and the subject forwarded upstream as
 * `x-user-id` (the competitor does the same). A variant with `telemetry: false`
 * also switches the access log and metrics off.
 */
export function authGatewayConfig(ctx) {
  const config = passthroughConfig(ctx);
  config.authn = {
    providers: {
      bench: {
        issuer: ISSUER,
        audiences: [AUDIENCE],
        algorithms: ['RS256'],
        jwksFile: ctx.jwksFile,
        rolesClaim: 'roles',
        forward: { claims: { sub: 'x-user-id' } },
      },
    },
  };
  config.authz = {
    roles: { [ROLE]: { permissions: ['read-all'] } },
    permissions: { 'read-all': { resources: ['/**'], actions: ['GET', 'HEAD'] } },
    policies: [{ id: 'bench', rules: [{ id: 'readers', effect: 'allow', permissions: ['read-all'] }] }],
  };
  config.routes = [
    { id: 'authenticated', match: { path: { prefix: '/' } }, upstream: 'bench', auth: { provider: 'bench' }, authz: 'bench' },
  ];
  if (ctx.variant?.telemetry === false) config.telemetry = NO_TELEMETRY;
  return config;
}

/**
 * `count` distinct RS256 tokens signed with `privateKey`: same header and claims as
 * `mintToken` (alg, kid; iss, aud, sub, roles, iat, exp, a random jti), so every one
 * verifies like a token from `bulwark token mint`. About 1,500 signs/s per core for
 * a 2048-bit key.
 */
export async function mintPool(privateKey, count, { ttlSeconds = 6 * 3600, concurrency = 64, onProgress } = {}) {
  const header = Buffer.from(JSON.stringify({ alg: 'RS256', kid: KID })).toString('base64url');
  const iat = Math.floor(Date.now() / 1000);
  const tokens = new Array(count);
  let next = 0;
  let done = 0;
  const one = (i) =>
    new Promise((resolve, reject) => {
      const payload = Buffer.from(
        JSON.stringify({
          roles: [ROLE],
          iat,
          jti: randomUUID(),
          exp: iat + ttlSeconds,
          sub: `user-${i}`,
          iss: ISSUER,
          aud: [AUDIENCE],
        }),
      ).toString('base64url');
      const input = `${header}.${payload}`;
      sign('sha256', Buffer.from(input), privateKey, (error, signature) => {
        if (error) return reject(error);
        tokens[i] = `${input}.${signature.toString('base64url')}`;
        if (++done % 10_000 === 0) onProgress?.(done);
        resolve();
      });
    });
  const lane = async () => {
    while (next < count) await one(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  return tokens;
}
