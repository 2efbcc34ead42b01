#!/usr/bin/env node
// Runs before `npm start`: makes a demo signing key (once, into examples/quickstart/.keys/, git-ignored)
// and prints ready-to-use curl commands with freshly minted tokens for the protected route.
// A development convenience only: production tokens come from your identity provider.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { generateKeys, mintToken, writeKeys } from '../../dist/cli/dev-tokens.js';

const dir = fileURLToPath(new URL('./.keys/', import.meta.url));
const keyFile = `${dir}demo.private.jwk.json`;
if (!existsSync(keyFile)) writeKeys(dir, await generateKeys('ES256', 'demo'));

const common = { keyFile, issuer: 'https://demo.bulwark.local', audience: ['demo-api'], ttlSeconds: 3600 };
const alice = await mintToken({ ...common, subject: 'alice', roles: ['viewer'] });
const bob = await mintToken({ ...common, subject: 'bob', roles: [] });
const port = process.env.BULWARK_PORT ?? '8080';
process.stderr.write(`bulwark demo tokens (valid 1 h; signed by examples/quickstart/.keys/demo.private.jwk.json):
  curl -i -H "Authorization: Bearer ${alice}" http://127.0.0.1:${port}/api/orders/42   # 200: alice is a viewer
  curl -i -H "Authorization: Bearer ${bob}" http://127.0.0.1:${port}/api/orders/42   # 403: bob has no role
  curl -i http://127.0.0.1:${port}/api/orders/42                                   # 401: no token
  mint more: npm run -s bulwark -- token mint --key ${keyFile} --iss https://demo.bulwark.local --aud demo-api --sub you --roles viewer
`);
