// Unique-token storm: every request to the gateway carries an RS256 token it has
// not seen, so the verified-token cache never helps and every request pays a full
// signature verification (jose, RSA-2048). Same route and config as `auth`.
//
// Tokens are minted before anything is measured (a pool of BENCH_UNIQUE_TOKENS,
// default sized for the run: see poolSize) and handed out in order by autocannon's
// setupRequest, one per request, to each gateway (a cursor per gateway process). The reference targets (upstream,
// baseline proxy) get the same kind of request built the same way (same cost for the
// load generator), cycling over the first 1,000 tokens: they do not look at them.
// Should the gateway use up the pool, it starts over; a token then comes back only
// after every other token of the pool, and the pool is kept well above the
// verified-token cache's 10,000 entries (LRU), so even then every request misses the
// cache. The run's notes say whether that happened.
//
// Compared with bench/crypto-verify-loop.js: raw node:crypto verification of the same
// tokens in a tight loop on one core (tokens/s), the ceiling for a single thread.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { authGatewayConfig, mintOne, mintPool, setupKeys } from '../auth-fixtures.js';

/** The verified-token cache's default size (authn.cache.maxEntries); the pool must be far larger. */
const CACHE_ENTRIES = 10_000;
const MIN_POOL = 4 * CACHE_ENTRIES;
/** Unique tokens/s the gateway could conceivably take on a small machine; sizes the default pool. */
const PLANNED_RATE = 6_000;

const state = { tokens: [], mintSeconds: 0, gateways: new Map() };

function poolSize(settings) {
  const fromEnv = Number(process.env.BENCH_UNIQUE_TOKENS);
  if (process.env.BENCH_UNIQUE_TOKENS && (!Number.isInteger(fromEnv) || fromEnv < MIN_POOL)) {
    throw new Error(`BENCH_UNIQUE_TOKENS=${process.env.BENCH_UNIQUE_TOKENS}: expected an integer >= ${MIN_POOL}`);
  }
  if (fromEnv) return fromEnv;
  // The gateway sees unique tokens during its warm-up and its measured runs.
  const seconds = settings.warmup + settings.rounds * settings.duration;
  return Math.max(MIN_POOL, Math.ceil((PLANNED_RATE * seconds) / 10_000) * 10_000);
}

export default {
  name: 'auth-unique',
  description: 'GET / with a new RS256 token on every request (no cache hits): full JWT verification + RBAC.',
  async setup(ctx) {
    const keys = await setupKeys(ctx, 'auth-unique-keys');
    const sampleToken = await mintOne(ctx, keys.privateKeyFile, 'probe-user');
    const count = poolSize(ctx.settings);
    const started = performance.now();
    process.stdout.write(`auth-unique: minting ${count.toLocaleString('en-US')} RS256 tokens (2048-bit key)…`);
    state.tokens = await mintPool(keys.privateKey, count, { onProgress: () => process.stdout.write('.') });
    state.mintSeconds = (performance.now() - started) / 1000;
    console.log(` ${state.mintSeconds.toFixed(1)} s`);
    // The verify loop gets a slice of the same tokens (it caches nothing; repeats cost the same).
    const tokensFile = path.join(keys.keyDir, 'tokens.txt');
    await writeFile(tokensFile, state.tokens.slice(0, 10_000).join('\n') + '\n');
    return { ...keys, sampleToken, tokensFile };
  },
  variants: [
    { id: '1', label: '1 worker', workers: 1 },
    { id: 'lean', label: '1 worker, telemetry off', workers: 1, telemetry: false, compareTo: ['crypto-verify-loop'] },
  ],
  gatewayConfig: authGatewayConfig,
  request: (ctx) => ({
    method: 'GET',
    path: '/',
    // Sent as is by the probes; autocannon replaces it on every request.
    headers: { authorization: `Bearer ${ctx.sampleToken}` },
    perRequestHeaders(target) {
      const tokens = state.tokens;
      if (target.kind === 'gateway') {
        // One cursor per gateway process (each has its own cache): a gateway never sees a token twice
        // while the pool lasts, whatever the other variants were sent.
        let g = state.gateways.get(target.name);
        if (!g) state.gateways.set(target.name, (g = { cursor: 0, handedOut: 0, wraps: 0 }));
        return () => {
          const token = tokens[g.cursor];
          g.handedOut++;
          if (++g.cursor === tokens.length) {
            g.cursor = 0;
            g.wraps++;
          }
          return { authorization: `Bearer ${token}` };
        };
      }
      const n = Math.min(1_000, tokens.length);
      let i = 0;
      return () => {
        const token = tokens[i];
        if (++i === n) i = 0;
        return { authorization: `Bearer ${token}` };
      };
    },
  }),
  competitors: [
    {
      name: 'crypto-verify-loop',
      label: 'node:crypto verify loop (1 core)',
      kind: 'loop',
      cmd: (ctx) => [
        'node',
        `${ctx.benchDir}/crypto-verify-loop.js`,
        '--tokens',
        ctx.tokensFile,
        '--public-key',
        ctx.publicKeyPem,
      ],
    },
  ],
  compareTo: ['crypto-verify-loop', 'auth', 'passthrough'],
  goals: { 'crypto-verify-loop': 0.8 },
  notes() {
    const fmt = (n) => n.toLocaleString('en-US');
    const lines = [`pool of ${fmt(state.tokens.length)} RS256 tokens minted in ${state.mintSeconds.toFixed(1)} s`];
    for (const [label, g] of state.gateways) {
      const name = `gateway ${label.slice(label.indexOf('('))}`; // "gateway (1 worker)"
      lines.push(
        g.wraps === 0
          ? `${name}: ${fmt(g.handedOut)} tokens handed out, none twice (every request a new token)`
          : `${name}: ${fmt(g.handedOut)} tokens handed out: the pool wrapped ${g.wraps} time(s), so tokens came back, each only ` +
              `after ${fmt(state.tokens.length - 1)} others (the verified-token cache holds ${fmt(CACHE_ENTRIES)}): still a cache ` +
              'miss every time. BENCH_UNIQUE_TOKENS sets the pool size.',
      );
    }
    return lines;
  },
};
