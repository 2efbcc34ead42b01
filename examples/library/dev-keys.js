// Development keys and tokens for the library examples (examples/node-http, express, fastify). Not for
// production: there your identity provider signs the tokens and the provider reads its JWKS (`jwksUrl` or
// `discovery`) instead of a local file.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
// Inside this repository: the CLI's development tooling, from the build (`npm run build`). Installed users
// have the same as commands: `npx bulwark keys generate --alg ES256 --kid dev-1 --out .keys` and
// `npx bulwark token mint --key .keys/dev-1.private.jwk.json --iss … --aud … --sub alice --roles viewer`.
import { generateKeys, mintToken, writeKeys } from '../../dist/cli/dev-tokens.js';

/** The config every library example loads. */
export const CONFIG = fileURLToPath(new URL('./bulwark.yaml', import.meta.url));
/** Where bulwark.yaml's `jwksFile` points: `${BULWARK_EXAMPLE_KEYS:-.keys}`, relative to the config. */
export const KEYS_DIR = path.resolve(path.dirname(CONFIG), process.env.BULWARK_EXAMPLE_KEYS || '.keys');
export const KEY_FILE = path.join(KEYS_DIR, 'dev-1.private.jwk.json');
export const ISSUER = 'https://dev.bulwark.local';
export const AUDIENCE = 'orders-service';

/** Makes a development key pair on first start (private JWK + the public JWKS bulwark.yaml reads). */
export async function ensureDevKeys() {
  if (existsSync(path.join(KEYS_DIR, 'jwks.json'))) return;
  writeKeys(KEYS_DIR, await generateKeys('ES256', 'dev-1'));
}

/** A token as the identity provider would issue it, valid for an hour. */
export function mint(subject, roles) {
  return mintToken({ keyFile: KEY_FILE, issuer: ISSUER, audience: [AUDIENCE], subject, roles, ttlSeconds: 3600 });
}

/** The first line is what scripts and tests wait for: `… listening on http://host:port`. */
export async function printHowToCall(name, url) {
  const lines = [`orders service (${name}) listening on ${url}`];
  if (existsSync(KEY_FILE)) {
    const [viewer, clerk, nobody] = await Promise.all([mint('alice', ['viewer']), mint('carl', ['clerk']), mint('nina', [])]);
    lines.push(
      'development tokens (valid 1 h; alice is a viewer, carl a clerk, nina has no role):',
      `  export VIEWER=${viewer}`,
      `  export CLERK=${clerk}`,
      `  export NOBODY=${nobody}`,
      `  curl -i ${url}/healthz                                             # 200: public route`,
      `  curl -i ${url}/orders                                              # 401: no token`,
      `  curl -i -H "Authorization: Bearer $VIEWER" ${url}/orders           # 200`,
      `  curl -i -H "Authorization: Bearer $NOBODY" ${url}/orders           # 403: no role`,
      `  curl -i -X POST -H "Authorization: Bearer $VIEWER" ${url}/orders   # 403: writing needs clerk`,
      `  curl -i -X POST -H "Authorization: Bearer $CLERK" ${url}/orders    # 201`,
      `  curl -i ${url}/admin                                               # 404: no Bulwark route, denied before your code`,
    );
  } else {
    lines.push(`(no ${KEY_FILE}: mint tokens with the private key that signed ${path.join(KEYS_DIR, 'jwks.json')})`);
  }
  console.log(lines.join('\n'));
}
