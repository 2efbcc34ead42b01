#!/usr/bin/env node
// Makes the example's demo signing key (once, into examples/grpc/.keys/, git-ignored) and prints
// tokens to call the Greeter through the gateway with. A development convenience only:
// production tokens come from your identity provider. Needs `npm run build` first.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { generateKeys, mintToken, writeKeys } from '../../dist/cli/dev-tokens.js';

const dir = fileURLToPath(new URL('./.keys/', import.meta.url));
const keyFile = `${dir}demo.private.jwk.json`;
if (!existsSync(keyFile)) writeKeys(dir, await generateKeys('ES256', 'demo'));

const common = { keyFile, issuer: 'https://demo.bulwark.local', audience: ['greeter'], ttlSeconds: 3600 };
const ada = await mintToken({ ...common, subject: 'ada', roles: ['greeter'] });
const bob = await mintToken({ ...common, subject: 'bob', roles: [] });
process.stdout.write(`export TOKEN_ADA=${ada}   # role greeter: every method
export TOKEN_BOB=${bob}   # no role: SayHello and StreamGreetings only
`);
