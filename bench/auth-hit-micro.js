#!/usr/bin/env node
// Micro-benchmark of the authenticated + authorized route on a verified-token cache HIT
// (issue #3, bench/scenarios/auth.js), on the compiled code:
//
//   npm run build && node bench/auth-hit-micro.js
//   AUTH_HIT_OPS=500000 AUTH_HIT_ROUNDS=7 node bench/auth-hit-micro.js --json
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/auth-hit-micro.js --only auth
//   AUTH_HIT_DIST=/path/to/other/dist node bench/auth-hit-micro.js   # another build
//
// The config is the scenario's own (bench/auth-fixtures.js authGatewayConfig: RS256 provider
// from a jwksFile, RBAC policy, `sub` forwarded as x-user-id), parsed with parseConfig and
// compiled with compileRuntime, so the stages are exactly those a gateway builds. Per op:
//   context      contextFor + admit on a prepared request (what every route pays)
//   public       + the pass-through route's pipeline (none) + upstreamRequestHeaders
//   auth         + the auth route's pipeline (authn cache hit + authz) + upstreamRequestHeaders
//   pipeline     the auth route's pipeline alone, on a fresh RequestContext (no admit)
//   headers      upstreamRequestHeaders alone, without / with the identity header and strip set
// `auth - public` is what authentication + authorization add per request.
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { authGatewayConfig, setupKeys, mintOne } from './auth-fixtures.js';
import { passthroughConfig } from './scenarios/passthrough.js';

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const only = argv.includes('--only') ? argv[argv.indexOf('--only') + 1].split(',') : null;
const OPS = Number(process.env.AUTH_HIT_OPS ?? 200_000);
const ROUNDS = Number(process.env.AUTH_HIT_ROUNDS ?? 5);

const rootDir = path.resolve(new URL('..', import.meta.url).pathname);
const distDir = path.resolve(process.env.AUTH_HIT_DIST ?? path.join(rootDir, 'dist'));
const fromDist = (file) => import(pathToFileURL(path.join(distDir, file)).href);
const { parseConfig } = await fromDist('config/load.js');
const { compileRuntime } = await fromDist('gateway/runtime.js');
const { contextFor, admit } = await fromDist('engine/admission.js');
const { upstreamRequestHeaders } = await fromDist('gateway/headers.js');
const { RequestContext } = await fromDist('core/context.js');

const tmpDir = mkdtempSync(path.join(tmpdir(), 'bulwark-auth-hit-'));
process.on('exit', () => rmSync(tmpDir, { recursive: true, force: true }));
const ctx = {
  rootDir,
  tmpDir,
  workers: 1,
  listenPort: 18080,
  adminPort: 18081,
  upstreamUrl: 'http://127.0.0.1:18082',
  variant: { telemetry: false },
};
Object.assign(ctx, await setupKeys(ctx, 'keys'));
const token = await mintOne(ctx, ctx.privateKeyFile);

async function runtimeFor(config) {
  const loaded = parseConfig(JSON.stringify(config), 'bench.json');
  return compileRuntime(loaded.config, loaded.hash, null, { issuer: false });
}
const authRuntime = await runtimeFor(authGatewayConfig(ctx));
const publicRuntime = await runtimeFor(passthroughConfig(ctx));
const settingsOf = (runtime) => [...runtime.listeners.values()][0];

function requestLike(headers) {
  const rawHeaders = [];
  for (const [name, value] of Object.entries(headers)) rawHeaders.push(name, value);
  const lower = {};
  for (const [name, value] of Object.entries(headers)) lower[name.toLowerCase()] = value;
  return {
    method: 'GET',
    url: '/',
    headers: lower,
    rawHeaders,
    httpVersionMajor: 1,
    httpVersionMinor: 1,
    socket: { remoteAddress: '127.0.0.1', remotePort: 40000 },
  };
}
// What autocannon-like clients send (bench/run.js): host, connection, the token.
const baseHeaders = { host: '127.0.0.1:18080', connection: 'keep-alive', 'x-request-id': 'bench-1' };
const authReq = requestLike({ ...baseHeaders, authorization: `Bearer ${token}` });
const publicReq = requestLike(baseHeaders);

function forwarding(c) {
  return {
    host: '127.0.0.1:18080',
    requestId: c.requestId,
    xForwardedFor: c.peerAddress,
    xForwardedProto: 'http',
    xForwardedHost: '127.0.0.1:18080',
  };
}

let sink = 0;
function throughRoute(req, runtime) {
  const settings = settingsOf(runtime);
  return () => {
    const c = contextFor(req, false);
    const route = admit(req, c, settings, runtime);
    c.stripHeaders = runtime.ownedHeaders;
    const decision = route.pipeline === null ? null : route.pipeline.run(c);
    if (decision !== null) throw new Error(`not a synchronous allow: ${decision?.code ?? decision}`);
    const out = upstreamRequestHeaders(req.rawHeaders, req.headers.connection, forwarding(c), c.stripHeaders, c.upstreamHeaders);
    sink += out.length;
  };
}

const authRoute = authRuntime.router.match('127.0.0.1', 'GET', '/').route;
const cases = {
  context: () => {
    const settings = settingsOf(authRuntime);
    return () => {
      const c = contextFor(authReq, false);
      admit(authReq, c, settings, authRuntime);
      sink += c.path.length;
    };
  },
  public: () => throughRoute(publicReq, publicRuntime),
  auth: () => throughRoute(authReq, authRuntime),
  pipeline: () => () => {
    const c = new RequestContext({
      method: 'GET',
      rawTarget: '/',
      headers: authReq.headers,
      peerAddress: '127.0.0.1',
      peerPort: 40000,
      protocol: 'http/1.1',
      secure: false,
      requestId: 'bench-1',
    });
    c.path = '/';
    c.host = '127.0.0.1';
    c.route = { id: authRoute.id, params: {} };
    const decision = authRoute.pipeline.run(c);
    if (decision !== null) throw new Error('not a synchronous allow');
    sink += c.decisions.length;
  },
  'headers(plain)': () => {
    const f = forwarding({ requestId: 'bench-1', peerAddress: '127.0.0.1' });
    return () => {
      sink += upstreamRequestHeaders(authReq.rawHeaders, 'keep-alive', f, null, null).length;
    };
  },
  'headers(identity)': () => {
    const f = forwarding({ requestId: 'bench-1', peerAddress: '127.0.0.1' });
    const strip = authRuntime.ownedHeaders;
    const extra = ['x-user-id', 'bench-user'];
    return () => {
      sink += upstreamRequestHeaders(authReq.rawHeaders, 'keep-alive', f, strip, extra).length;
    };
  },
};

// The first auth request verifies (async) and fills the cache; every later one is a hit.
{
  const c = contextFor(authReq, false);
  const route = admit(authReq, c, settingsOf(authRuntime), authRuntime);
  c.stripHeaders = authRuntime.ownedHeaders;
  const decision = await route.pipeline.run(c);
  if (decision !== null) throw new Error(`first request refused: ${decision.code}`);
}

const names = Object.keys(cases).filter((n) => only === null || only.includes(n));
const fns = Object.fromEntries(names.map((n) => [n, cases[n]()]));
for (const n of names) for (let i = 0; i < 20_000; i++) fns[n](); // warm-up
const results = Object.fromEntries(names.map((n) => [n, []]));
for (let r = 0; r < ROUNDS; r++) {
  for (const n of names) {
    const fn = fns[n];
    const t0 = performance.now();
    for (let i = 0; i < OPS; i++) fn();
    results[n].push(((performance.now() - t0) * 1e6) / OPS);
  }
}
const summary = Object.fromEntries(
  names.map((n) => {
    const sorted = [...results[n]].sort((a, b) => a - b);
    return [n, { bestNs: Math.round(sorted[0]), medianNs: Math.round(sorted[Math.floor(sorted.length / 2)]) }];
  }),
);
if (summary.auth && summary.public) {
  summary['auth - public'] = {
    bestNs: summary.auth.bestNs - summary.public.bestNs,
    medianNs: summary.auth.medianNs - summary.public.medianNs,
  };
}
if (json) console.log(JSON.stringify({ ops: OPS, rounds: ROUNDS, load: loadavg()[0], summary }));
else {
  console.log(`ns/op, ${OPS} ops x ${ROUNDS} rounds, load ${loadavg()[0].toFixed(2)}`);
  for (const [n, s] of Object.entries(summary))
    console.log(`  ${n.padEnd(20)} best ${String(s.bestNs).padStart(6)}  median ${String(s.medianNs).padStart(6)}`);
}
const stats = authRuntime.authn.cache.stats();
if (!json) console.log(`cache: ${stats.hits} hits, ${stats.misses} misses (sink ${sink > 0})`);
authRuntime.authn.close();
process.exit(0);
