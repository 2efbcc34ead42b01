// The competitor of the `auth` scenario: what a Node team would write for "JWT +
// role check + reverse proxy" with the usual libraries. fastify 5 + @fastify/jwt
// (RS256, verify-only with the public key PEM; fast-jwt underneath) +
// @fastify/http-proxy (@fastify/reply-from over undici) to the benchmark upstream.
// It checks what the Bulwark route checks: signature, alg RS256, iss, aud, exp, a
// role, and forwards the subject as `x-user-id` (overwriting any client copy).
//
//   node bench/competitors/fastify-jwt-proxy.js --upstream-port N --public-key FILE
//        [--issuer I] [--audience A] [--role R] [--cache] [--port P] [--exit-with-stdin]
//
// prints {"port":P} on stdout once listening. `--cache` turns on fast-jwt's
// verified-token cache (off by default in @fastify/jwt), the closest thing to
// Bulwark's own cache.
import fastifyJwt from '@fastify/jwt';
import fastifyHttpProxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import { readFileSync } from 'node:fs';
import { argValue, exitWithParent } from '../upstream.js';

const argv = process.argv;
const upstreamPort = Number(argValue(argv, '--upstream-port'));
const publicKeyFile = argValue(argv, '--public-key');
if (!Number.isInteger(upstreamPort) || upstreamPort <= 0 || !publicKeyFile) {
  process.stderr.write('usage: node bench/competitors/fastify-jwt-proxy.js --upstream-port N --public-key FILE [--cache]\n');
  process.exit(2);
}
const issuer = argValue(argv, '--issuer') ?? 'https://idp.bench.local';
const audience = argValue(argv, '--audience') ?? 'bench-api';
const role = argValue(argv, '--role') ?? 'bench-reader';
const cache = argv.includes('--cache');

const app = Fastify({ logger: false, keepAliveTimeout: 65_000 });

await app.register(fastifyJwt, {
  secret: { public: readFileSync(publicKeyFile, 'utf8') },
  verify: {
    algorithms: ['RS256'],
    allowedIss: issuer,
    allowedAud: audience,
    // @fastify/jwt's default verify options (kept), plus the cache when asked.
    errorCacheTTL: 600_000,
    ...(cache ? { cache: true } : {}),
  },
});

app.addHook('onRequest', async (request, reply) => {
  try {
    await request.jwtVerify();
  } catch {
    return reply.code(401).header('www-authenticate', 'Bearer error="invalid_token"').send({ error: 'unauthorized' });
  }
  const roles = request.user?.roles;
  if (!Array.isArray(roles) || !roles.includes(role)) return reply.code(403).send({ error: 'forbidden' });
  return undefined;
});

await app.register(fastifyHttpProxy, {
  upstream: `http://127.0.0.1:${upstreamPort}`,
  replyOptions: {
    rewriteRequestHeaders: (request, headers) => ({ ...headers, 'x-user-id': String(request.user?.sub ?? '') }),
  },
});

const address = await app.listen({ port: Number(argValue(argv, '--port') ?? 0), host: '127.0.0.1' });
process.stdout.write(JSON.stringify({ port: Number(new URL(address).port) }) + '\n');
exitWithParent(() => app.close(), argv);
