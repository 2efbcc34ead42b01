/**
 * `bulwark audit …` — the lead's CLI routes here with the arguments after `audit`.
 *
 *   verify   exit 0 intact, 1 tampered (or truncated), 2 usage / store unreadable
 *   query    exit 0, 2 usage / store unreadable
 *   keygen   exit 0, 2 usage
 */
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError, formatIssues, loadConfigFile } from '../config/load.js';
import { loadPublicKey } from './keys.js';
import { compileMasking, Masker, REDACTED } from './mask.js';
import type { MaskingConfig } from './schema.js';
import { AUDIT_DECISIONS } from './event.js';
import { parseSince, queryAudit, type AuditQuery } from './query.js';
import type { AuditSource } from './sources.js';
import { verifyAudit, type VerifyIssue, type VerifyReport } from './verify.js';

export const AUDIT_EXIT = { intact: 0, tampered: 1, usage: 2 } as const;

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const DEFAULT_IO: CliIo = {
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
};

const SOURCE_HELP = `Store (exactly one):
      --file F          JSON lines file (repeatable); its rotated files are read first
      --sqlite F        SQLite database
      --postgres URL    PostgreSQL connection URL
      --table T         table for --sqlite / --postgres (default audit_events)`;

export const AUDIT_HELP: Record<string, string> = {
  audit: `Usage: bulwark audit <command> [options]

Commands:
  verify   check the hash chains, checkpoint signatures and truncation of an audit store
  query    list audit records matching filters
  keygen   create an Ed25519 key pair for checkpoint signatures

Run \`bulwark audit <command> --help\` for its options.
`,
  verify: `Usage: bulwark audit verify (--file F | --sqlite F | --postgres URL [--table T])
                            [--public-key PEM]... [--sealed] [--require-signed]
                            [--allow-partial] [--anchor CHAIN:N:HASH]... [--json]

Checks every chain in the store: each record's hash (RFC 8785 canonical JSON,
SHA-256), the links between records, checkpoint signatures, and truncation
(against final checkpoints, successor chains and anchors). Names the first bad
record. Reports gaps (events dropped under whenFull: drop).

${SOURCE_HELP}

Options:
      --public-key PEM  trusted Ed25519 public key: a PEM file or PEM text
                        (repeatable, e.g. across a key rotation). Without one,
                        signatures are checked against the key each chain
                        declares, which a rewrite of the whole store can forge.
      --sealed          every chain must end in a final checkpoint (use on stores
                        whose writers are all stopped): an open chain is an error
      --require-signed  every chain must hold a checkpoint signed by a --public-key
                        key: a chain made up whole is an error (needs --public-key;
                        young chains, before their first checkpoint, fail too)
      --allow-partial   chains may begin after their first record (older records
                        pruned, or rotated files not given)
      --anchor C:N:H    the store must hold record N of chain C with hash H
                        (repeatable; e.g. from the gateway's "audit chain sealed" logs)
      --no-rotated      read only the files given, not their rotated predecessors
      --json            print the full report as JSON
  -h, --help            show this help

Exit codes: 0 intact, 1 tampered or truncated, 2 usage error or unreadable store.
`,
  query: `Usage: bulwark audit query (--file F | --sqlite F | --postgres URL [--table T])
                           [--since 1h|TIME] [--until TIME] [--subject S] [--tenant T]
                           [--decision allow|deny|limit|error] [--route R] [--action A]
                           [--kind request|event|gap|checkpoint|start] [--request-id ID]
                           [--config FILE] [--limit N] [--json]

Lists matching records (the newest --limit, default 100), oldest first.
Records are shown as stored; run \`bulwark audit verify\` to know they are genuine.

      --config FILE     the gateway config that wrote the store: --subject and --tenant
                        are masked by its audit.masking rules before they are compared,
                        so \`--subject alice\` finds alice's records under a hash rule
                        (her hmac: pseudonym); under a partial rule it matches every value
                        with the same length and tail; a redacted field cannot be searched

${SOURCE_HELP}
`,
  keygen: `Usage: bulwark audit keygen [--out FILE]

Creates an Ed25519 key pair for chain.signingKey. With --out, writes the private
key to FILE (mode 0600) and the public key to FILE.pub; without, prints both.
Give verifiers the public key: bulwark audit verify --public-key FILE.pub …
`,
};

class UsageError extends Error {}

function sourceFrom(values: Record<string, unknown>): AuditSource {
  const files = (values['file'] as string[] | undefined) ?? [];
  const sqlite = values['sqlite'] as string | undefined;
  const postgres = values['postgres'] as string | undefined;
  const table = values['table'] as string | undefined;
  const kinds = (files.length > 0 ? 1 : 0) + (sqlite === undefined ? 0 : 1) + (postgres === undefined ? 0 : 1);
  if (kinds !== 1) throw new UsageError('give exactly one of --file, --sqlite, --postgres');
  if (table !== undefined && !/^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(table))
    throw new UsageError(`invalid --table "${table}"`);
  if (table !== undefined && files.length > 0) throw new UsageError('--table applies to --sqlite and --postgres');
  if (files.length > 0) return { file: files, rotated: values['no-rotated'] !== true };
  if (sqlite !== undefined) return table === undefined ? { sqlite } : { sqlite, table };
  return table === undefined ? { postgres: postgres as string } : { postgres: postgres as string, table };
}

const SOURCE_OPTIONS = {
  file: { type: 'string', multiple: true },
  sqlite: { type: 'string' },
  postgres: { type: 'string' },
  table: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseAnchor(text: string): { chain: string; n: number; hash: string } {
  // Chain ids contain ':' themselves: take n and hash from the right.
  const parts = text.split(':');
  const hash = parts.pop();
  const n = parts.pop();
  const chain = parts.join(':');
  if (chain === '' || n === undefined || !/^\d+$/.test(n) || hash === undefined || !/^[0-9a-f]{64}$/.test(hash))
    throw new UsageError(`--anchor expects CHAIN:N:HASH (got "${text}")`);
  return { chain, n: Number(n), hash };
}

function formatIssue(issue: VerifyIssue): string {
  const where = [
    issue.position,
    issue.chain === undefined ? undefined : `chain ${issue.chain}`,
    issue.n === undefined ? undefined : `n=${issue.n}`,
    issue.id === undefined ? undefined : `id=${issue.id}`,
  ]
    .filter((part) => part !== undefined && part !== '')
    .join(' ');
  return `${issue.severity === 'error' ? 'ERROR' : 'warning'} ${issue.code}: ${issue.message}${where === '' ? '' : `\n    at ${where}`}`;
}

export function formatVerifyReport(report: VerifyReport): string {
  const lines: string[] = [];
  lines.push(`audit verify: ${report.source}`);
  lines.push(
    `  ${report.records} record${report.records === 1 ? '' : 's'}, ${report.chains.length} chain${report.chains.length === 1 ? '' : 's'}, signatures: ${report.signatures}${report.duplicates > 0 ? `, ${report.duplicates} exact duplicate(s)` : ''}`,
  );
  for (const chain of report.chains) {
    const state =
      chain.sealed === 'close'
        ? 'sealed'
        : chain.sealed === 'recovered'
          ? 'sealed after a crash'
          : `open, ${chain.unsignedTail} unsigned`;
    lines.push(
      `  ${chain.intact ? 'ok ' : 'BAD'} ${chain.chain}: n=${chain.firstN}..${chain.lastN}, ${chain.checkpoints} checkpoint${chain.checkpoints === 1 ? '' : 's'}, ${state}${chain.droppedEvents > 0 ? `, ${chain.droppedEvents} dropped` : ''}`,
    );
  }
  for (const gap of report.gaps)
    lines.push(
      `  GAP chain ${gap.chain} n=${gap.n}: ${gap.dropped} event(s) dropped (seq ${gap.fromSeq}..${gap.toSeq}, ${gap.firstTs} .. ${gap.lastTs})`,
    );
  for (const issue of report.issues) lines.push(`  ${formatIssue(issue).replace(/\n/g, '\n  ')}`);
  if (report.issues.length < report.errors + report.warnings)
    lines.push(`  … ${report.errors + report.warnings - report.issues.length} more issue(s) not shown`);
  if (report.ok)
    lines.push(`INTACT${report.warnings > 0 ? ` (${report.warnings} warning${report.warnings === 1 ? '' : 's'})` : ''}`);
  else {
    const first = report.firstBad as VerifyIssue;
    lines.push(
      `TAMPERED: ${report.errors} error${report.errors === 1 ? '' : 's'}; first bad record: ${first.id ?? '?'} (${[first.position, first.chain === undefined ? '' : `chain ${first.chain}`, first.n === undefined ? '' : `n=${first.n}`].filter((p) => p !== undefined && p !== '').join(', ')}): ${first.code}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

async function verifyCommand(argv: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      ...SOURCE_OPTIONS,
      'public-key': { type: 'string', multiple: true },
      sealed: { type: 'boolean' },
      'require-signed': { type: 'boolean' },
      'allow-partial': { type: 'boolean' },
      anchor: { type: 'string', multiple: true },
      'no-rotated': { type: 'boolean' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help === true) {
    io.stdout(AUDIT_HELP['verify'] as string);
    return AUDIT_EXIT.intact;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const source = sourceFrom(values);
  const anchors = (values.anchor ?? []).map(parseAnchor);
  const publicKeys = (values['public-key'] ?? []).map((spec) => {
    try {
      return loadPublicKey(spec).key;
    } catch (error) {
      throw new UsageError(`--public-key ${spec.startsWith('-----') ? '(PEM text)' : spec}: ${(error as Error).message}`);
    }
  });
  if (values['require-signed'] === true && publicKeys.length === 0)
    throw new UsageError('--require-signed needs the trusted key: --public-key');
  let report: VerifyReport;
  try {
    report = await verifyAudit(source, {
      publicKeys,
      sealed: values.sealed === true,
      requireSigned: values['require-signed'] === true,
      allowPartial: values['allow-partial'] === true,
      anchors,
    });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    io.stderr(
      `bulwark audit verify: cannot read the store: ${(error as Error).message}${code === undefined ? '' : ` (${code})`}\n`,
    );
    return AUDIT_EXIT.usage;
  }
  io.stdout(values.json === true ? `${JSON.stringify(report, null, 2)}\n` : formatVerifyReport(report));
  return report.ok ? AUDIT_EXIT.intact : AUDIT_EXIT.tampered;
}

function formatRecord(r: Record<string, unknown>): string {
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : String(v));
  switch (r['kind']) {
    case 'request':
      return [
        r['ts'],
        'request',
        cell(r['decision']),
        cell(r['status']),
        cell(r['subject']),
        `${cell(r['method'])} ${cell(r['path'])}`,
        cell(r['reason']),
        cell(r['requestId']),
      ].join('  ');
    case 'event':
      return [r['ts'], 'event', cell(r['action']), cell(r['outcome']), cell(r['subject']), cell(r['resource'])].join('  ');
    case 'gap':
      return [r['ts'], 'GAP', `${cell(r['dropped'])} dropped`, `seq ${cell(r['fromSeq'])}..${cell(r['toSeq'])}`].join('  ');
    default:
      return [r['ts'], cell(r['kind']), `chain ${cell(r['chain'])}`, `n=${cell(r['n'])}`].join('  ');
  }
}

/** `--subject` / `--tenant` as the config's masking rules wrote them into the store. */
async function maskQuery(query: AuditQuery, configFile: string): Promise<void> {
  let masking: MaskingConfig | undefined;
  try {
    masking = (await loadConfigFile(configFile)).config.audit?.masking;
  } catch (error) {
    throw new UsageError(
      `--config ${configFile}: ${error instanceof ConfigError ? formatIssues(error.issues) : (error as Error).message}`,
    );
  }
  const masker = new Masker(compileMasking(masking));
  for (const field of ['subject', 'tenant'] as const) {
    const value = query[field];
    if (value === undefined) continue;
    const masked = masker.field(field, value);
    if (masked === REDACTED)
      throw new UsageError(
        `--${field}: the config's masking writes this ${field} as ${REDACTED} in the audit log: it cannot be searched`,
      );
    if (masked !== null) query[field] = masked;
  }
}

async function queryCommand(argv: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      ...SOURCE_OPTIONS,
      since: { type: 'string' },
      until: { type: 'string' },
      subject: { type: 'string' },
      tenant: { type: 'string' },
      decision: { type: 'string' },
      route: { type: 'string' },
      action: { type: 'string' },
      kind: { type: 'string' },
      'request-id': { type: 'string' },
      limit: { type: 'string' },
      config: { type: 'string' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help === true) {
    io.stdout(AUDIT_HELP['query'] as string);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const source = sourceFrom(values);
  const query: AuditQuery = {};
  for (const [flag, field] of [
    ['since', 'since'],
    ['until', 'until'],
  ] as const) {
    const text = values[flag];
    if (text === undefined) continue;
    const date = parseSince(text);
    if (date === null) throw new UsageError(`--${flag} expects a duration (1h, 30m, 2d) or an RFC 3339 time, got "${text}"`);
    query[field] = date;
  }
  if (values.decision !== undefined) {
    if (!(AUDIT_DECISIONS as readonly string[]).includes(values.decision))
      throw new UsageError('--decision expects allow, deny, limit or error');
    query.decision = values.decision as AuditQuery['decision'];
  }
  if (values.kind !== undefined) {
    if (!['request', 'event', 'gap', 'checkpoint', 'start'].includes(values.kind))
      throw new UsageError('--kind expects request, event, gap, checkpoint or start');
    query.kind = values.kind as AuditQuery['kind'];
  }
  if (values.limit !== undefined) {
    if (!/^[1-9]\d{0,6}$/.test(values.limit)) throw new UsageError('--limit expects a positive integer');
    query.limit = Number(values.limit);
  }
  if (values.subject !== undefined) query.subject = values.subject;
  if (values.tenant !== undefined) query.tenant = values.tenant;
  if (values.config !== undefined) await maskQuery(query, values.config);
  if (values.route !== undefined) query.route = values.route;
  if (values.action !== undefined) query.action = values.action;
  if (values['request-id'] !== undefined) query.requestId = values['request-id'];
  let records: Record<string, unknown>[];
  try {
    records = await queryAudit(source, query);
  } catch (error) {
    io.stderr(`bulwark audit query: cannot read the store: ${(error as Error).message}\n`);
    return 2;
  }
  if (values.json === true) for (const record of records) io.stdout(`${JSON.stringify(record)}\n`);
  else for (const record of records) io.stdout(`${formatRecord(record)}\n`);
  return 0;
}

function keygenCommand(argv: string[], io: CliIo): number {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { out: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help === true) {
    io.stdout(AUDIT_HELP['keygen'] as string);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const publicPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  if (values.out === undefined) {
    io.stdout(privatePem + publicPem);
    return 0;
  }
  writeFileSync(values.out, privatePem, { mode: 0o600, flag: 'wx' });
  writeFileSync(`${values.out}.pub`, publicPem, { mode: 0o644, flag: 'wx' });
  io.stdout(`wrote ${values.out} (private, 0600) and ${values.out}.pub\n`);
  return 0;
}

/** `bulwark audit <verify|query|keygen> …`; `argv` is what follows `audit`. Returns the exit code. */
export async function auditCli(argv: readonly string[], io: CliIo = DEFAULT_IO): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'verify':
        return await verifyCommand(rest, io);
      case 'query':
        return await queryCommand(rest, io);
      case 'keygen':
        return keygenCommand(rest, io);
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        io.stdout(AUDIT_HELP['audit'] as string);
        return command === undefined ? AUDIT_EXIT.usage : 0;
      default:
        throw new UsageError(`unknown audit command "${command}"`);
    }
  } catch (error) {
    const known = error instanceof UsageError || (error as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS');
    // A file system error (keygen --out into a missing or read-only directory, an existing file) is the
    // user's to fix: a message, not a stack trace.
    const fsError = typeof (error as NodeJS.ErrnoException).syscall === 'string';
    if (!known && !fsError) throw error;
    const help = AUDIT_HELP[command ?? 'audit'] ?? AUDIT_HELP['audit'];
    io.stderr(`bulwark audit: ${(error as Error).message}\n\n${help}`);
    return AUDIT_EXIT.usage;
  }
}
