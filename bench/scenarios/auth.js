// Authenticated + authorized route, the same valid RS256 token on every request
// (the common case: a client reuses its access token until it expires).
//
// Bulwark: one prefix route with `auth: { provider }` (RS256 keys from a jwksFile
// generated at setup with the CLI's dev tooling), an RBAC policy allowing the
// token's role, and the subject forwarded upstream as x-user-id. The verified-token
// cache is on (it is by default), so after the first request a hit costs a
// SHA-256 of the token and a Map lookup.
//
// Two gateway variants: Bulwark's telemetry defaults (metrics on), and the same with
// telemetry off (no metrics, no access log), like for like with the competitors. Compared, in the same run, with
// - fastify + @fastify/jwt (RS256) + @fastify/http-proxy doing the same checks
//   (bench/competitors/fastify-jwt-proxy.js) — as configured out of the box, and
//   with fast-jwt's own verified-token cache switched on (`--cache`);
// - Bulwark's pass-through route (the `passthrough` scenario, defaults), and the same public
//   route receiving the same request, token included (`auth:public`): what auth costs. The
//   second is like for like: the ~700-byte token is parsed and forwarded either way, so the
//   ratio is the price of verifying, authorizing and forwarding the identity.
// All variants and competitors are measured in the same rounds (see bench/README.md).
import { authGatewayConfig, AUDIENCE, ISSUER, mintOne, ROLE, setupKeys } from '../auth-fixtures.js';
import { passthroughConfig } from './passthrough.js';

const competitorCmd = (ctx, ...extra) => [
  'node',
  `${ctx.benchDir}/competitors/fastify-jwt-proxy.js`,
  '--upstream-port',
  ctx.upstreamPort,
  '--public-key',
  ctx.publicKeyPem,
  '--issuer',
  ISSUER,
  '--audience',
  AUDIENCE,
  '--role',
  ROLE,
  ...extra,
];

export default {
  name: 'auth',
  description: 'GET / with the same valid RS256 token on every request: JWT (jwksFile) + RBAC + identity header.',
  async setup(ctx) {
    const keys = await setupKeys(ctx, 'auth-keys');
    return { ...keys, token: await mintOne(ctx, keys.privateKeyFile) };
  },
  variants: [
    { id: '1', label: '1 worker', workers: 1 },
    // Like for like with the competitors, which log and count nothing: access log and metrics off.
    {
      id: 'lean',
      label: '1 worker, telemetry off',
      workers: 1,
      telemetry: false,
      compareTo: ['fastify-jwt-proxy', 'fastify-jwt-proxy-cache'],
    },
    // The pass-through route (public, defaults) receiving the same request, token and all.
    { id: 'public', label: '1 worker, public route, same request', workers: 1, public: true, compareTo: ['baseline'] },
  ],
  gatewayConfig: (ctx) => (ctx.variant.public ? passthroughConfig(ctx) : authGatewayConfig(ctx)),
  request: (ctx) => ({ method: 'GET', path: '/', headers: { authorization: `Bearer ${ctx.token}` } }),
  competitors: [
    { name: 'fastify-jwt-proxy', label: 'fastify+jwt+http-proxy', cmd: (ctx) => competitorCmd(ctx) },
    { name: 'fastify-jwt-proxy-cache', label: 'fastify+jwt(cache)+http-proxy', cmd: (ctx) => competitorCmd(ctx, '--cache') },
  ],
  compareTo: ['fastify-jwt-proxy', 'fastify-jwt-proxy-cache', 'auth:public', 'passthrough'],
  goals: { 'fastify-jwt-proxy': 2.0, 'auth:public': 0.9, passthrough: 0.9 },
};
