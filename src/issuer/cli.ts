/**
 * `bulwark issuer`: run the token service alone, hash client secrets, manage stored
 * clients and signing keys. Exit codes as everywhere: 0 ok, 1 failure, 2 usage.
 */
import { parseArgs } from 'node:util';
import { loadConfigFile, ConfigError, formatIssues } from '../config/load.js';
import { LIBRARY_CHECKS } from '../server/config-source.js';
import { createIssuerStore } from './issuer.js';
import { KeyRing } from './keys.js';
import { GRANTS, keyRingOptions, type IssuerConfig } from './schema.js';
import { generateSecret, hashSecret } from './secret.js';
import type { ClientRecord } from './types.js';

export interface IssuerCliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Reads stdin to the end (hash-secret without an argument). */
  stdin(): Promise<string>;
  /** `bulwark issuer serve`: the gateway's serve with issuer-only routes. */
  serve(options: { configFile: string; port: number | undefined; adminPort: number | undefined }): Promise<number>;
}

export const ISSUER_USAGE = `Usage: bulwark issuer <command> [options]

Commands:
  serve --config FILE [--port N] [--admin-port N]
        run only the token service: its endpoints on the config's listeners
  hash-secret [--generate]
        read a client secret from stdin (or generate one) and print its hash
        for issuer.clients[].secretHash
  client add --config FILE --id ID --audience A[,B] [--scope "a b"] [--grant G[,G]] [--ttl SECONDS]
        register a client in the store; prints its secret once
  client list --config FILE
  client remove --config FILE --id ID
  keys list --config FILE
  keys rotate --config FILE
        publish a new key per algorithm now; it signs after keys.publishAheadSec

Exit codes: 0 ok, 1 failure, 2 usage error.
`;

const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

function usage(io: IssuerCliIo, message: string): number {
  io.stderr(`bulwark issuer: ${message}\n\n${ISSUER_USAGE}`);
  return EXIT.usage;
}

async function issuerConfig(file: string, io: IssuerCliIo): Promise<IssuerConfig | null> {
  try {
    const { config } = await loadConfigFile(file, { checks: LIBRARY_CHECKS });
    if (config.issuer === undefined) {
      io.stderr(`bulwark issuer: ${file} has no \`issuer\` section\n`);
      return null;
    }
    return config.issuer;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    io.stderr(formatIssues(err.issues) + '\n');
    return null;
  }
}

function port(value: string | undefined): number | undefined | null {
  if (value === undefined) return undefined;
  return /^\d+$/.test(value) && Number(value) <= 65535 ? Number(value) : null;
}

export async function issuerCli(argv: string[], io: IssuerCliIo): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help') {
    io.stdout(ISSUER_USAGE);
    return command === undefined ? EXIT.usage : EXIT.ok;
  }
  const sub = command === 'client' || command === 'keys' ? rest.shift() : undefined;
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        help: { type: 'boolean', short: 'h' },
        config: { type: 'string', short: 'c' },
        port: { type: 'string', short: 'p' },
        'admin-port': { type: 'string' },
        generate: { type: 'boolean' },
        id: { type: 'string' },
        audience: { type: 'string' },
        scope: { type: 'string' },
        grant: { type: 'string' },
        ttl: { type: 'string' },
      },
      strict: true,
    }));
  } catch (err) {
    return usage(io, (err as Error).message);
  }
  if (values['help'] === true) {
    io.stdout(ISSUER_USAGE);
    return EXIT.ok;
  }
  const configFile = typeof values['config'] === 'string' ? values['config'] : undefined;

  if (command === 'hash-secret') {
    const secret = values['generate'] === true ? generateSecret() : (await io.stdin()).replace(/\r?\n$/, '');
    if (secret.length < 16) {
      io.stderr('bulwark issuer: a client secret needs at least 16 characters\n');
      return EXIT.failure;
    }
    if (values['generate'] === true) io.stdout(`secret: ${secret}\n`);
    io.stdout(`${values['generate'] === true ? 'secretHash: ' : ''}${await hashSecret(secret)}\n`);
    return EXIT.ok;
  }
  if (configFile === undefined) return usage(io, `${command}${sub === undefined ? '' : ` ${sub}`} needs --config FILE`);

  if (command === 'serve') {
    const listenPort = port(values['port'] as string | undefined);
    const adminPort = port(values['admin-port'] as string | undefined);
    if (listenPort === null || adminPort === null) return usage(io, '--port and --admin-port expect a port number');
    return io.serve({ configFile, port: listenPort, adminPort });
  }
  if (command === 'client' && sub !== undefined && ['add', 'list', 'remove'].includes(sub)) {
    const config = await issuerConfig(configFile, io);
    if (config === null) return EXIT.failure;
    return clientCommand(sub, config, values, io);
  }
  if (command === 'keys' && (sub === 'list' || sub === 'rotate')) {
    const config = await issuerConfig(configFile, io);
    if (config === null) return EXIT.failure;
    const ring = await KeyRing.open(keyRingOptions(config));
    try {
      if (sub === 'rotate') {
        const created = await ring.rotate();
        if (created.length === 0) {
          io.stderr('bulwark issuer: another process holds the key directory lock; retry in a moment\n');
          return EXIT.failure;
        }
        for (const key of created)
          io.stdout(`created ${key.alg} ${key.kid}: published now, signs from ${new Date(key.activatesAt).toISOString()}\n`);
        return EXIT.ok;
      }
      const now = Date.now();
      for (const key of ring.states()) {
        const state =
          key.activatesAt > now
            ? 'published'
            : key.retiredAt === null
              ? 'signing'
              : `retired, unpublished at ${new Date(key.expiresAt ?? 0).toISOString()}`;
        io.stdout(`${key.alg.padEnd(6)} ${key.kid}  ${state}\n`);
      }
      return EXIT.ok;
    } finally {
      ring.close();
    }
  }
  return usage(io, `unknown command "${[command, sub].filter((s) => s !== undefined).join(' ')}"`);
}

async function clientCommand(
  sub: string,
  config: IssuerConfig,
  values: Record<string, string | boolean | undefined>,
  io: IssuerCliIo,
): Promise<number> {
  const store = createIssuerStore(config);
  try {
    await store.init();
    const id = typeof values['id'] === 'string' ? values['id'] : undefined;
    if (sub === 'list') {
      for (const client of await store.listClients())
        io.stdout(
          `${client.id}  audiences=${client.audiences.join(',')}  scopes=${client.scopes.join(' ')}  grants=${client.grants.join(',')}${client.disabled ? '  (disabled)' : ''}\n`,
        );
      for (const client of config.clients) io.stdout(`${client.id}  (config file)\n`);
      return EXIT.ok;
    }
    if (id === undefined || !/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(id))
      return usage(io, `client ${sub} needs --id ID (letters, digits, _ . : -)`);
    if (sub === 'remove') {
      const removed = await store.deleteClient(id);
      io.stdout(removed ? `removed ${id}\n` : `no client ${id}\n`);
      return removed ? EXIT.ok : EXIT.failure;
    }
    const audience = typeof values['audience'] === 'string' ? values['audience'].split(',').filter((a) => a !== '') : [];
    if (audience.length === 0) return usage(io, 'client add needs --audience A[,B]');
    const grants = typeof values['grant'] === 'string' ? values['grant'].split(',') : ['client_credentials'];
    if (grants.some((g) => !(GRANTS as readonly string[]).includes(g))) return usage(io, `--grant: one of ${GRANTS.join(', ')}`);
    const ttl = typeof values['ttl'] === 'string' ? Number(values['ttl']) : null;
    if (ttl !== null && (!Number.isInteger(ttl) || ttl < 1 || ttl > 86_400)) return usage(io, '--ttl: 1..86400 seconds');
    const scopes = typeof values['scope'] === 'string' ? values['scope'].split(' ').filter((s) => s !== '') : [];
    const secret = generateSecret();
    const record: ClientRecord = {
      id,
      secretHash: await hashSecret(secret),
      audiences: audience,
      scopes,
      grants,
      tokenTtlSec: ttl,
      createdAt: Date.now(),
      disabled: false,
    };
    await store.putClient(record);
    io.stdout(`client_id: ${id}\nclient_secret: ${secret}\n(the secret is shown once; only its hash is stored)\n`);
    return EXIT.ok;
  } catch (err) {
    io.stderr(`bulwark issuer: store: ${(err as Error).message}\n`);
    return EXIT.failure;
  } finally {
    await store.close().catch(() => {});
  }
}
