// The ceiling for a unique-token storm: raw node:crypto RS256 verification in a
// tight synchronous loop on one core (the main thread), no HTTP, no JSON, no
// claim checks. Per token: split off the signature, base64url-decode it,
// crypto.verify('RSA-SHA256', signing input, public key, signature). Tokens are
// cycled in order (verification caches nothing, so repeats cost the same).
//
//   node bench/crypto-verify-loop.js --tokens FILE --public-key PEM [--duration S] [--warmup S]
//   node bench/crypto-verify-loop.js [--duration S]     # standalone: makes a key and 1,000 tokens itself
//
// prints one JSON line: {"opsPerSec":N,"ops":N,"seconds":S,"tokens":N}. Exits 1
// if any token fails to verify (then it measures nothing useful).
import { createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { argValue } from './upstream.js';

const argv = process.argv;
const duration = Number(argValue(argv, '--duration') ?? 5);
const warmup = Number(argValue(argv, '--warmup') ?? 0.5);
const tokensFile = argValue(argv, '--tokens');
const publicKeyFile = argValue(argv, '--public-key');

let tokens;
let publicKey;
if (tokensFile && publicKeyFile) {
  tokens = readFileSync(tokensFile, 'utf8').split('\n').filter(Boolean);
  publicKey = createPublicKey(readFileSync(publicKeyFile, 'utf8'));
} else {
  const pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
  publicKey = pair.publicKey;
  const header = Buffer.from(JSON.stringify({ alg: 'RS256', kid: 'loop' })).toString('base64url');
  tokens = Array.from({ length: 1_000 }, (_, i) => {
    const payload = Buffer.from(JSON.stringify({ sub: `user-${i}`, iat: 0, exp: 4102444800 })).toString('base64url');
    const input = `${header}.${payload}`;
    return `${input}.${sign('sha256', Buffer.from(input), pair.privateKey).toString('base64url')}`;
  });
}
if (tokens.length === 0) {
  process.stderr.write('crypto-verify-loop: no tokens\n');
  process.exit(2);
}

let failed = 0;
/** Verifies tokens for `seconds`; returns how many. Checks the clock every 64 tokens. */
function run(seconds) {
  const end = performance.now() + seconds * 1000;
  const n = tokens.length;
  let ops = 0;
  let i = 0;
  for (;;) {
    for (let k = 0; k < 64; k++) {
      const token = tokens[i];
      if (++i === n) i = 0;
      const dot = token.lastIndexOf('.');
      const ok = verify(
        'RSA-SHA256',
        Buffer.from(token.slice(0, dot)),
        publicKey,
        Buffer.from(token.slice(dot + 1), 'base64url'),
      );
      if (!ok) failed++;
    }
    ops += 64;
    if (performance.now() >= end) return ops;
  }
}

if (warmup > 0) run(warmup);
const start = performance.now();
const ops = run(duration);
const seconds = (performance.now() - start) / 1000;
if (failed > 0) {
  process.stderr.write(`crypto-verify-loop: ${failed} signature(s) did not verify\n`);
  process.exit(1);
}
process.stdout.write(
  JSON.stringify({
    opsPerSec: Math.round(ops / seconds),
    ops,
    seconds: Math.round(seconds * 1000) / 1000,
    tokens: tokens.length,
  }) + '\n',
);
