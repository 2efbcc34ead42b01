import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import cluster from 'node:cluster';
import type { DevAlgorithm } from './dev-tokens.js';

// Commands load what they need on demand: `bulwark --version` or `validate` must not pay for
// the gateway, gRPC and OpenTelemetry modules.
const load = {
  config: () => import('../config/load.js'),
  checks: () => import('../server/config-source.js'),
  serve: () => import('../server/serve.js'),
  logger: () => import('../telemetry/logger.js'),
  explain: () => import('./explain.js'),
  tokens: () => import('./dev-tokens.js'),
  audit: () => import('../audit/index.js'),
  revoke: () => import('../revocation/index.js'),
  issuer: () => import('../issuer/cli.js'),
};

/** Exit codes, documented in `bulwark --help` and the README. */
export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

const HELP: Record<string, string> = {
  main: `Usage: bulwark <command> [options]

Zero-trust gateway: authentication, authorization, limits, audit and telemetry
in front of (or inside) your services.

Commands:
  serve         run the gateway
  validate      check a configuration file
  explain       show how a config decides one request (exit 0 allow, 1 deny)
  audit verify  check an audit log's hash chains and signed checkpoints (exit 0 intact, 1 tampered)
  revoke        revoke tokens now, on every instance (--jti, --sub [--before T], --sid)
  issuer        the built-in token service: serve, hash-secret, client add|list|remove, keys list|rotate
  keys generate create a signing key pair (private JWK + public JWKS) for development
  token mint    sign a development token with such a key

Options:
  -h, --help     show help (also: bulwark <command> --help)
  -v, --version  print the version

Exit codes: 0 ok, 1 failure (invalid config, runtime error), 2 usage error.
`,
  serve: `Usage: bulwark serve [--config FILE] [--port N] [--admin-port N]

Runs the gateway. Reloads the configuration on file change and on SIGHUP (an
invalid configuration is refused and the running one keeps serving). SIGTERM or
SIGINT drains in-flight requests, then exits 0.

Options:
  -c, --config FILE     configuration file (default: bulwark.yaml, or $BULWARK_CONFIG)
  -p, --port N          override the first listener's port
      --admin-port N    override the admin listener's port
  -h, --help            show this help
`,
  explain: `Usage: bulwark explain --config FILE --method M --path P
                       [--token T | --claims JSON] [--host H] [--header 'Name: value']... [--json]

Runs one request through the config's real engine (canonicalization, routing,
authentication, authorization) and prints every decision: stage, outcome, reason
code, provider and key id, policy and rule. With --claims, authentication is
skipped and the claims are taken as verified.

Exit codes: 0 allow, 1 deny, 2 usage error.
`,
  keys: `Usage: bulwark keys generate [--alg ES256] [--kid ID] [--out DIR]

Creates a key pair for local development and tests. With --out, writes
DIR/<kid>.private.jwk.json (mode 0600) and DIR/jwks.json (public keys, for a
provider's \`jwksFile\`); without it, prints both as JSON.

Algorithms: ES256 ES384 ES512 RS256 RS384 RS512 PS256 PS384 PS512 EdDSA.
`,
  token: `Usage: bulwark token mint --key FILE [--sub S] [--iss I] [--aud A[,B]]
                          [--roles R[,R]] [--scope "a b"] [--tenant T]
                          [--ttl SECONDS] [--typ T] [--claim NAME=JSON]...

Signs a token with a private JWK from \`bulwark keys generate\`, for local
development and tests. Prints the token.
`,
  validate: `Usage: bulwark validate FILE

Validates a configuration file: every error with file:line:column, the field
and what was expected. Warnings (e.g. shadowed routes) do not fail validation.

Exit codes: 0 valid, 1 invalid, 2 usage error.
`,
};

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function usageError(command: string, message: string): number {
  process.stderr.write(`bulwark: ${message}\n\n${HELP[command] ?? HELP['main']}`);
  return EXIT.usage;
}

function port(value: string | undefined, flag: string): number | undefined | Error {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) return new Error(`${flag} expects a port number (0-65535), got "${value}"`);
  return n;
}

export async function main(argv: string[]): Promise<number> {
  if (cluster.isWorker && process.env['BULWARK_WORKER'] === '1') {
    const [{ runWorker }, { createLogger }] = await Promise.all([load.serve(), load.logger()]);
    await runWorker(createLogger());
    return EXIT.ok;
  }
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(HELP['main']!);
    return command === undefined ? EXIT.usage : EXIT.ok;
  }
  if (command === '-v' || command === '--version' || command === 'version') {
    process.stdout.write(`bulwark ${version()}\n`);
    return EXIT.ok;
  }
  try {
    switch (command) {
      case 'serve':
        return await serveCommand(rest);
      case 'validate':
        return await validateCommand(rest);
      case 'explain':
        return await explainCommand(rest);
      case 'audit':
        return await (await load.audit()).auditCli(rest);
      case 'revoke':
        return await (await load.revoke()).revokeCli(rest);
      case 'issuer':
        return await issuerCommand(rest);
      case 'keys':
        return await keysCommand(rest);
      case 'token':
        return await tokenCommand(rest);
      default:
        return usageError('main', `unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'))
      return usageError(command, err.message);
    throw err;
  }
}

async function serveCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: 'boolean', short: 'h' },
      config: { type: 'string', short: 'c' },
      port: { type: 'string', short: 'p' },
      'admin-port': { type: 'string' },
    },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(HELP['serve']!);
    return EXIT.ok;
  }
  const listenPort = port(values.port, '--port');
  const adminPort = port(values['admin-port'], '--admin-port');
  if (listenPort instanceof Error) return usageError('serve', listenPort.message);
  if (adminPort instanceof Error) return usageError('serve', adminPort.message);
  const configFile = values.config ?? process.env['BULWARK_CONFIG'] ?? 'bulwark.yaml';
  const [{ serve }, { createLogger }] = await Promise.all([load.serve(), load.logger()]);
  return serve({ configFile, port: listenPort, adminPort, logger: createLogger() });
}

async function issuerCommand(args: string[]): Promise<number> {
  const { issuerCli } = await load.issuer();
  return issuerCli(args, {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    stdin: async () => {
      const chunks: Buffer[] = [];
      for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    },
    serve: async ({ configFile, port: listenPort, adminPort }) => {
      const [{ serve }, { createLogger }] = await Promise.all([load.serve(), load.logger()]);
      return serve({ configFile, port: listenPort, adminPort, issuerOnly: true, logger: createLogger() });
    },
  });
}

async function validateCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(HELP['validate']!);
    return EXIT.ok;
  }
  if (positionals.length !== 1) return usageError('validate', 'validate expects exactly one FILE');
  const file = positionals[0]!;
  const [{ ConfigError, formatIssues, loadConfigFile }, { CONFIG_CHECKS }] = await Promise.all([load.config(), load.checks()]);
  try {
    const loaded = await loadConfigFile(file, { checks: CONFIG_CHECKS });
    if (loaded.warnings.length > 0) process.stderr.write(formatIssues(loaded.warnings) + '\n');
    process.stdout.write(`${file}: valid (sha256 ${loaded.hash.slice(0, 12)})\n`);
    return EXIT.ok;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(formatIssues(err.issues) + '\n');
    process.stderr.write(
      `${file}: invalid (${err.issues.filter((i) => !('severity' in i) || (i as { severity?: string }).severity !== 'warning').length} error(s))\n`,
    );
    return EXIT.failure;
  }
}

async function keysCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === '-h' || sub === '--help') {
    process.stdout.write(HELP['keys']!);
    return EXIT.ok;
  }
  if (sub !== 'generate') return usageError('keys', 'expected `keys generate`');
  const { values } = parseArgs({
    args: rest,
    options: { help: { type: 'boolean', short: 'h' }, alg: { type: 'string' }, kid: { type: 'string' }, out: { type: 'string' } },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(HELP['keys']!);
    return EXIT.ok;
  }
  const { DEV_ALGORITHMS, generateKeys, writeKeys } = await load.tokens();
  const alg = (values.alg ?? 'ES256') as DevAlgorithm;
  if (!DEV_ALGORITHMS.includes(alg)) return usageError('keys', `unsupported --alg "${values.alg}"`);
  const keys = await generateKeys(alg, values.kid);
  if (values.out === undefined) {
    process.stdout.write(JSON.stringify(keys, null, 2) + '\n');
  } else {
    const written = writeKeys(values.out, keys);
    process.stdout.write(`private key: ${written.privateKey}\npublic JWKS: ${written.jwks}\n`);
  }
  return EXIT.ok;
}

async function tokenCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === '-h' || sub === '--help') {
    process.stdout.write(HELP['token']!);
    return EXIT.ok;
  }
  if (sub !== 'mint') return usageError('token', 'expected `token mint`');
  const { values } = parseArgs({
    args: rest,
    options: {
      help: { type: 'boolean', short: 'h' },
      key: { type: 'string' },
      sub: { type: 'string' },
      iss: { type: 'string' },
      aud: { type: 'string' },
      roles: { type: 'string' },
      scope: { type: 'string' },
      tenant: { type: 'string' },
      ttl: { type: 'string' },
      typ: { type: 'string' },
      claim: { type: 'string', multiple: true },
    },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(HELP['token']!);
    return EXIT.ok;
  }
  if (values.key === undefined) return usageError('token', '--key FILE is required');
  const ttl = values.ttl === undefined ? undefined : Number(values.ttl);
  if (ttl !== undefined && (!Number.isInteger(ttl) || ttl <= 0))
    return usageError('token', '--ttl expects a positive number of seconds');
  const claims: Record<string, unknown> = {};
  for (const entry of values.claim ?? []) {
    const eq = entry.indexOf('=');
    if (eq <= 0) return usageError('token', `--claim expects NAME=VALUE, got "${entry}"`);
    const raw = entry.slice(eq + 1);
    try {
      claims[entry.slice(0, eq)] = JSON.parse(raw);
    } catch {
      claims[entry.slice(0, eq)] = raw;
    }
  }
  const list = (v: string | undefined) =>
    v === undefined
      ? undefined
      : v
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
  const { mintToken } = await load.tokens();
  try {
    const token = await mintToken({
      keyFile: values.key,
      subject: values.sub,
      issuer: values.iss,
      audience: list(values.aud),
      roles: list(values.roles),
      scope: values.scope,
      tenant: values.tenant,
      ttlSeconds: ttl,
      typ: values.typ,
      claims,
    });
    process.stdout.write(token + '\n');
    return EXIT.ok;
  } catch (err) {
    process.stderr.write(`bulwark: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT.failure;
  }
}

async function explainCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: 'boolean', short: 'h' },
      config: { type: 'string', short: 'c' },
      method: { type: 'string', short: 'X' },
      path: { type: 'string' },
      host: { type: 'string' },
      token: { type: 'string' },
      claims: { type: 'string' },
      header: { type: 'string', short: 'H', multiple: true },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(HELP['explain']!);
    return EXIT.ok;
  }
  if (values.config === undefined || values.path === undefined) return usageError('explain', '--config and --path are required');
  if (values.token !== undefined && values.claims !== undefined)
    return usageError('explain', 'give --token or --claims, not both');
  let claims: Record<string, unknown> | undefined;
  if (values.claims !== undefined) {
    try {
      const parsed: unknown = JSON.parse(values.claims);
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
      claims = parsed as Record<string, unknown>;
    } catch {
      return usageError('explain', '--claims expects a JSON object');
    }
  }
  const headers: Record<string, string> = {};
  for (const h of values.header ?? []) {
    const colon = h.indexOf(':');
    if (colon <= 0) return usageError('explain', `--header expects "Name: value", got "${h}"`);
    headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
  }
  const [{ explain }, { ConfigError, formatIssues }] = await Promise.all([load.explain(), load.config()]);
  try {
    return await explain(
      {
        configFile: values.config,
        method: values.method ?? 'GET',
        path: values.path,
        host: values.host,
        token: values.token,
        claims,
        headers,
        json: values.json,
      },
      (text) => process.stdout.write(text.endsWith('\n') ? text : text + '\n'),
    );
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(formatIssues(err.issues) + '\n');
    return EXIT.failure;
  }
}
