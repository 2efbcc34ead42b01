import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError, formatIssues, loadConfigFile } from '../config/load.js';
import { CONFIG_CHECKS } from '../server/config-source.js';
import { isWorkerProcess, runWorker, serve } from '../server/serve.js';
import { createLogger } from '../telemetry/logger.js';

/** Exit codes, documented in `bulwark --help` and the README. */
export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

const HELP: Record<string, string> = {
  main: `Usage: bulwark <command> [options]

Zero-trust gateway: authentication, authorization, limits, audit and telemetry
in front of (or inside) your services.

Commands:
  serve       run the gateway
  validate    check a configuration file

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
  if (isWorkerProcess()) {
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
  return serve({ configFile, port: listenPort, adminPort, logger: createLogger() });
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
