#!/usr/bin/env node
// Micro-benchmark of JWT verification on a cache miss (issue #3, unique-token storm), on the
// compiled code, layer by layer, so the cost of each layer above the raw signature check shows:
//
//   npm run build && node bench/authn-micro.js
//   AUTHN_BENCH_OPS=4000 AUTHN_BENCH_ROUNDS=7 node bench/authn-micro.js --json
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/authn-micro.js --only stage
//   node bench/authn-micro.js --stub-signature     # the JavaScript around the signature check only
//   AUTHN_BENCH_DIST=/path/to/other/dist node bench/authn-micro.js   # another build
//
// Same provider as bench/scenarios/auth-unique.js (RS256 2048-bit from a `jwksFile`, iss/aud/exp
// checks, `roles` claim, `sub` forwarded as `x-user-id`), built through the public
// `compileAuthn` / `createAuthnStage`. A pool of unique tokens (more than the verified-token
// cache holds, so the stage misses every time) is minted first with jose's SignJWT.
//
// Layers, each in µs of CPU per token (process.cpuUsage: user + system of every thread, so the
// libuv threads WebCrypto verifies on and V8's GC threads count too) and of wall time, one token
// at a time (each awaited) unless marked "in flight". Every round runs each layer once, in turn,
// after a warm-up; the table shows the best round, the median one and the best wall time:
//   crypto.verify            node:crypto, RSA-SHA256, KeyObject, synchronous: the floor (what
//                            bench/crypto-verify-loop.js runs)
//   crypto.subtle.verify     WebCrypto with jose's parameters, signature decoded up front: what
//                            jose ends in (jose 6 has no other path; a KeyObject is turned into a
//                            CryptoKey once), alone and with AUTHN_BENCH_CONCURRENCY in flight
//   jose.compactVerify       + jose's parsing: header JSON, alg allow-list, base64url decoding
//   jose.jwtVerify           + the payload's JSON and the iss/aud/exp checks; with a CryptoKey,
//                            a KeyObject, and in flight
//   provider.verify          CompiledProvider.verify: shape check, key lookup (jose's key
//                            callback), jwtVerify, identity, upstream headers, cache entry
//   stage (cache miss)       the authn stage as a route runs it: extract, SHA-256 digest, cache
//                            lookup, verify, insert into a full cache (every insert evicts), allow;
//                            alone and in flight (as under HTTP load)
// With --stub-signature the signature check itself answers at once (see below): the columns are
// then the JavaScript each layer adds, without the thread-pool hop and its noise.
import { createPrivateKey, createPublicKey, randomUUID, verify as cryptoVerify, webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { compactVerify, importJWK, jwtVerify, SignJWT } from 'jose';
import { pathToFileURL } from 'node:url';

const ISSUER = 'https://idp.bench.local';
const AUDIENCE = 'bench-api';
const ROLE = 'bench-reader';
const KID = 'bench-rs256';
const CACHE_ENTRIES = 10_000;
/** What jose hands WebCrypto for RS256. */
const RS256 = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const only = argv.includes('--only') ? argv[argv.indexOf('--only') + 1].split(',') : null;
const OPS = Number(process.env.AUTHN_BENCH_OPS ?? 3000);
const ROUNDS = Number(process.env.AUTHN_BENCH_ROUNDS ?? 5);
const CONCURRENCY = Number(process.env.AUTHN_BENCH_CONCURRENCY ?? 32);
// More tokens than the cache holds: a token comes back only after the cache has dropped it.
const POOL = Math.max(Number(process.env.AUTHN_BENCH_TOKENS ?? 0), CACHE_ENTRIES + OPS + 1000);

// Another build to measure (a copy of an older `dist/`, to compare before and after a change).
const distDir = path.resolve(process.env.AUTHN_BENCH_DIST ?? new URL('../dist', import.meta.url).pathname);
const fromDist = (file) => import(pathToFileURL(path.join(distDir, file)).href);
const { compileAuthn, createAuthnStage } = await fromDist('authn/index.js');
const { generateKeys, writeKeys } = await fromDist('cli/dev-tokens.js');
const { RequestContext } = await fromDist('core/context.js');

const log = (line) => (json ? undefined : console.log(line));
// Diagnostic only: WebCrypto's verify answers `true` at once, so what is left is the JavaScript
// around the signature check (jose's parsing and claim checks, Bulwark's layers), free of the
// thread-pool hop and of the noise of other work on the machine. Never trust a token this way.
const stubSignature = argv.includes('--stub-signature');

// ---------------------------------------------------------------------------
// keys, provider, tokens

const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-authn-micro-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const keys = await generateKeys('RS256', KID);
const files = writeKeys(dir, keys);
const publicKeyObject = createPublicKey({ key: keys.publicJwks.keys[0], format: 'jwk' });
const publicCryptoKey = await importJWK(keys.publicJwks.keys[0], 'RS256');
const privateKey = createPrivateKey({ key: keys.privateJwk, format: 'jwk' });

const AUTHN_CONFIG = {
  providers: {
    bench: {
      issuer: ISSUER,
      audiences: [AUDIENCE],
      algorithms: ['RS256'],
      jwksFile: files.jwks,
      rolesClaim: 'roles',
      forward: { claims: { sub: 'x-user-id' } },
    },
  },
  cache: { maxEntries: CACHE_ENTRIES },
};
/** Every stage layer gets its own compiled authn (its own verified-token cache). */
const compiled = [];
async function compile() {
  const authn = compileAuthn(AUTHN_CONFIG);
  await authn.ready();
  compiled.push(authn);
  return authn;
}
const provider = (await compile()).providers.get('bench');
const stage = createAuthnStage({ provider: 'bench' }, await compile());
const stageConcurrent = createAuthnStage({ provider: 'bench' }, await compile());

const VERIFY_OPTIONS = {
  issuer: ISSUER,
  audience: [AUDIENCE],
  algorithms: ['RS256'],
  clockTolerance: 60,
  requiredClaims: ['exp'],
};

const started = performance.now();
const iat = Math.floor(Date.now() / 1000);
const tokens = new Array(POOL);
{
  // The claims of bench/auth-fixtures.js mintPool (what the auth-unique scenario sends).
  let next = 0;
  const lane = async () => {
    while (next < POOL) {
      const i = next++;
      tokens[i] = await new SignJWT({ roles: [ROLE], jti: randomUUID(), sub: `user-${i}`, aud: [AUDIENCE] })
        .setProtectedHeader({ alg: 'RS256', kid: KID })
        .setIssuedAt(iat)
        .setExpirationTime(iat + 6 * 3600)
        .setIssuer(ISSUER)
        .sign(privateKey);
    }
  };
  await Promise.all(Array.from({ length: 32 }, lane));
}
log(`minted ${POOL.toLocaleString('en-US')} RS256 tokens in ${((performance.now() - started) / 1000).toFixed(1)} s`);
if (stubSignature) {
  Object.defineProperty(webcrypto.subtle, 'verify', { value: async () => true, configurable: true });
  log('--stub-signature: crypto.subtle.verify is stubbed (diagnostic: JavaScript overhead only)');
}
const signatures = tokens.map((t) => Buffer.from(t.slice(t.lastIndexOf('.') + 1), 'base64url'));
const inputs = tokens.map((t) => Buffer.from(t.slice(0, t.lastIndexOf('.'))));

// ---------------------------------------------------------------------------
// measurement

/**
 * Token indexes in pool order, one cursor per layer: a stage sees a token again only after
 * every other token of the pool, long after the cache (10,000 entries) has dropped it.
 */
function cursor() {
  let i = 0;
  return () => {
    const at = i;
    if (++i === POOL) i = 0;
    return at;
  };
}

function context(token) {
  const ctx = new RequestContext({
    method: 'GET',
    rawTarget: '/',
    headers: { host: 'bench', authorization: `Bearer ${token}` },
    peerAddress: '127.0.0.1',
    peerPort: 40000,
    protocol: 'http/1.1',
    secure: false,
    requestId: 'bench',
  });
  ctx.path = '/';
  return ctx;
}

function expectAllowed(ctx, decision) {
  if (decision !== undefined && decision !== null && typeof decision === 'object' && 'code' in decision) {
    throw new Error(`stage denied a valid token: ${decision.code}`);
  }
  if (ctx.identity === null || ctx.upstreamHeaders?.[1] !== ctx.identity.subject)
    throw new Error('stage did not set the identity');
}

/** `op(i)` for `n` tokens, one at a time (sync ops) or awaited one by one. */
async function sequential(op, n, isAsync, nextIndex) {
  if (isAsync) for (let k = 0; k < n; k++) await op(nextIndex());
  else for (let k = 0; k < n; k++) op(nextIndex());
}

/** `op(i)` for `n` tokens with `width` in flight. */
async function concurrent(op, n, width, nextIndex) {
  let left = n;
  const lane = async () => {
    while (left > 0) {
      left--;
      await op(nextIndex());
    }
  };
  await Promise.all(Array.from({ length: width }, lane));
}

/** One round of a layer: µs of CPU and of wall time per token. */
async function round(run) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await run(OPS);
  const wall = ((performance.now() - t0) * 1000) / OPS;
  const used = process.cpuUsage(cpu0);
  return { cpu: (used.user + used.system) / OPS, wall };
}

const round1 = (x) => Math.round(x * 10) / 10;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Every layer once per round, in turn (so a burst of other work on the machine hits all of
 * them alike), after a warm-up of each; per layer the best round and the median.
 */
async function measureAll(specs) {
  const runners = specs.map(([name, { op, isAsync = true, width = 1, warmup = Math.min(OPS, 1000) }]) => {
    const next = cursor();
    return {
      name,
      warmup,
      run: (n) => (width > 1 ? concurrent(op, n, width, next) : sequential(op, n, isAsync, next)),
      rounds: [],
    };
  });
  for (const r of runners) await r.run(r.warmup); // JIT, key caches; the stages fill their cache
  for (let k = 0; k < ROUNDS; k++) for (const r of runners) r.rounds.push(await round(r.run));
  return runners.map(({ name, rounds }) => {
    const cpu = rounds.map((x) => x.cpu);
    const wall = rounds.map((x) => x.wall);
    const result = {
      name,
      cpuUsPerOp: round1(Math.min(...cpu)),
      cpuUsPerOpMedian: round1(median(cpu)),
      wallUsPerOp: round1(Math.min(...wall)),
    };
    log(
      `${name.padEnd(40)} ${result.cpuUsPerOp.toFixed(1).padStart(7)} ${result.cpuUsPerOpMedian.toFixed(1).padStart(7)}` +
        ` ${result.wallUsPerOp.toFixed(1).padStart(7)}`,
    );
    return result;
  });
}

const layers = [
  [
    'crypto.verify (node:crypto)',
    {
      isAsync: false,
      op: (i) => {
        if (!cryptoVerify('RSA-SHA256', inputs[i], publicKeyObject, signatures[i])) throw new Error('bad signature');
      },
    },
  ],
  [
    'crypto.subtle.verify (WebCrypto)',
    {
      op: async (i) => {
        if (!(await webcrypto.subtle.verify(RS256, publicCryptoKey, signatures[i], inputs[i]))) {
          throw new Error('bad signature');
        }
      },
    },
  ],
  [
    `crypto.subtle.verify (${CONCURRENCY} in flight)`,
    {
      width: CONCURRENCY,
      op: async (i) => {
        if (!(await webcrypto.subtle.verify(RS256, publicCryptoKey, signatures[i], inputs[i]))) {
          throw new Error('bad signature');
        }
      },
    },
  ],
  ['jose.compactVerify (CryptoKey)', { op: (i) => compactVerify(tokens[i], publicCryptoKey, { algorithms: ['RS256'] }) }],
  ['jose.compactVerify (KeyObject)', { op: (i) => compactVerify(tokens[i], publicKeyObject, { algorithms: ['RS256'] }) }],
  ['jose.jwtVerify (CryptoKey)', { op: (i) => jwtVerify(tokens[i], publicCryptoKey, VERIFY_OPTIONS) }],
  ['jose.jwtVerify (KeyObject)', { op: (i) => jwtVerify(tokens[i], publicKeyObject, VERIFY_OPTIONS) }],
  [
    `jose.jwtVerify (CryptoKey, ${CONCURRENCY} in flight)`,
    { width: CONCURRENCY, op: (i) => jwtVerify(tokens[i], publicCryptoKey, VERIFY_OPTIONS) },
  ],
  [
    'provider.verify',
    {
      op: async (i) => {
        const result = await provider.verify(tokens[i]);
        if (!result.ok) throw new Error(`provider refused a valid token: ${result.code} ${result.reason}`);
      },
    },
  ],
  [
    'stage (cache miss)',
    {
      // A full cache, as in a storm: every insert evicts.
      warmup: CACHE_ENTRIES,
      op: async (i) => {
        const ctx = context(tokens[i]);
        expectAllowed(ctx, await stage.run(ctx));
      },
    },
  ],
  [
    `stage (cache miss, ${CONCURRENCY} in flight)`,
    {
      width: CONCURRENCY,
      warmup: CACHE_ENTRIES,
      op: async (i) => {
        const ctx = context(tokens[i]);
        expectAllowed(ctx, await stageConcurrent.run(ctx));
      },
    },
  ],
];

const load = loadavg().map((l) => l.toFixed(2));
log(`${distDir}`);
log(`node ${process.version}, ${OPS} tokens per round, best of ${ROUNDS} rounds; load average ${load.join(' ')}`);
log(`${'µs per token'.padEnd(40)} ${'cpu'.padStart(7)} ${'cpu p50'.padStart(7)} ${'wall'.padStart(7)}`);
const results = await measureAll(layers.filter(([name]) => only === null || only.some((o) => name.includes(o))));
const hits = compiled.reduce((sum, authn) => sum + authn.cache.stats().hits, 0);
if (hits !== 0) throw new Error(`the stage hit the cache ${hits} times: not a miss benchmark`);
const loadAfter = loadavg().map((l) => l.toFixed(2));
log(`load average after: ${loadAfter.join(' ')}`);
for (const authn of compiled) authn.close();
if (json) {
  console.log(JSON.stringify({ node: process.version, ops: OPS, rounds: ROUNDS, pool: POOL, load, loadAfter, results }, null, 2));
}
