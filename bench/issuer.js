// Token issuer throughput, one process (= one core for the JS; SQLite and scrypt run
// in the same process). From the build: `npm run build` first.
//
//   node bench/issuer.js                      # every scenario, 5 s each
//   ISSUER_BENCH_SECONDS=2 node bench/issuer.js
//   ISSUER_BENCH_ONLY=client_credentials:ES256 node bench/issuer.js
//
// Each scenario runs CONCURRENCY operations at once (as an HTTP server would) for the
// duration and reports operations/s and the process CPU time per operation (user +
// system, all threads) — on a shared 2-core machine the CPU figure is the better guide
// to what one core sustains: tokens/s per core = 1e6 / cpu µs per token.
//
//   client_credentials:<alg>  a registered client asks for a token (secret verification
//                             cached after the first, as for a service refreshing its token)
//   session                   the application mints a session: access token + a stored refresh token
//   refresh                   the refresh_token grant: atomic rotation in the store + a new access token
//   http:client_credentials   the same grant through IssuerHttp (form parsing, Basic auth, JSON)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Issuer, IssuerHttp, hashSecret } from '../dist/issuer/index.js';

const SECONDS = Number(process.env.ISSUER_BENCH_SECONDS ?? 5);
const ONLY = process.env.ISSUER_BENCH_ONLY?.split(',');
const CONCURRENCY = Number(process.env.ISSUER_BENCH_CONCURRENCY ?? 32);
const SECRET = 'bench-secret-0123456789abcdef';

async function run(name, op) {
  if (ONLY !== undefined && !ONLY.includes(name)) return;
  for (let i = 0; i < 200; i++) await op(); // warm-up: JIT, caches, prepared statements
  let count = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const until = Date.now() + SECONDS * 1000;
  const worker = async () => {
    while (Date.now() < until) {
      await op();
      count++;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const cpuUs = (cpu.user + cpu.system) / count;
  console.log(
    `${name.padEnd(28)} ${String(Math.round(count / seconds)).padStart(7)} ops/s   ${cpuUs.toFixed(1).padStart(7)} cpu µs/op   ≈ ${String(Math.round(1e6 / cpuUs)).padStart(6)} /s per core`,
  );
}

const dir = mkdtempSync(join(tmpdir(), 'bulwark-issuer-bench-'));
const secretHash = await hashSecret(SECRET);
const issuer = await Issuer.create(
  {
    issuer: 'https://auth.bench',
    path: '/oauth',
    keys: { dir: join(dir, 'keys'), algorithms: ['ES256', 'EdDSA', 'RS256'], rotateEverySec: 0, publishAheadSec: 600 },
    accessTokenTtlSec: 300,
    refreshTokenTtlSec: 86_400,
    sessionTtlSec: 604_800,
    sessionAudiences: ['https://api.bench'],
    store: { sqlite: { path: join(dir, 'issuer.db') } },
    clients: ['ES256', 'EdDSA', 'RS256'].map((alg) => ({
      id: `svc-${alg}`,
      secretHash,
      audiences: ['https://api.bench'],
      scopes: ['read', 'write'],
      grants: ['client_credentials'],
      algorithm: alg,
      encrypt: false,
    })),
  },
  { rotate: false },
);

console.log(`issuer bench: ${SECONDS} s per scenario, ${CONCURRENCY} concurrent, node ${process.version}`);
for (const alg of ['ES256', 'EdDSA', 'RS256'])
  await run(`client_credentials:${alg}`, () => issuer.clientCredentials({ clientId: `svc-${alg}`, clientSecret: SECRET }));
await run('session', () => issuer.mintSession({ subject: 'user-1', claims: { roles: ['reader'] } }));
{
  // A pool of live sessions, one per concurrent call: each call takes a current refresh token and
  // puts back its successor, so every call is a real rotation.
  const tokens = [];
  for (let i = 0; i < CONCURRENCY; i++) tokens.push((await issuer.mintSession({ subject: `user-${i}` })).refreshToken);
  await run('refresh', async () => {
    const token = tokens.pop();
    if (token === undefined) throw new Error('refresh pool empty: more calls in flight than sessions');
    tokens.push((await issuer.refresh(token)).refreshToken);
  });
}
{
  const http = new IssuerHttp(issuer);
  const authorization = `Basic ${Buffer.from(`svc-ES256:${SECRET}`).toString('base64')}`;
  const body = Buffer.from('grant_type=client_credentials&scope=read');
  await run('http:client_credentials', async () => {
    const res = await http.serve({
      method: 'POST',
      path: '/oauth/token',
      headers: { authorization, 'content-type': 'application/x-www-form-urlencoded' },
      clientAddress: '127.0.0.1',
      body: Readable.from([body]),
    });
    if (res.status !== 200) throw new Error(`token endpoint answered ${res.status}: ${res.body}`);
  });
}
await issuer.close();
rmSync(dir, { recursive: true, force: true });
