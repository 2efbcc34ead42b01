import { createPublicKey, generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { canonicalize } from '../../src/audit/canonical.js';
import { GENESIS_HASH, sha256Hex, signatureInput } from '../../src/audit/chain.js';
import { openSqlite, createPgPool, type PgPool } from '../../src/audit/drivers.js';
import { keyFingerprint } from '../../src/audit/keys.js';
import type { AuditConfig } from '../../src/audit/schema.js';
import type { AuditSink, WalEntry } from '../../src/audit/index.js';
import { rowOf } from '../../src/audit/sinks/sink.js';
import { ensurePostgresTable } from '../../src/audit/sinks/postgres.js';
import { prepareSqlite, sqliteInsert } from '../../src/audit/sinks/sqlite.js';
import { createLogger } from '../../src/telemetry/logger.js';

export const PG_URL = process.env['BULWARK_TEST_PG'] ?? 'postgres://postgres@127.0.0.1:5432/test';

export const silentLogger = () => createLogger({ level: process.env['BULWARK_TEST_LOG'] ?? 'silent' });

export function tempDir(prefix = 'bulwark-audit-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface TestKeys {
  privatePem: string;
  publicPem: string;
  keyId: string;
}

export function ed25519Keys(): TestKeys {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyId: keyFingerprint(publicKey),
  };
}

export function writeKey(dir: string, keys: TestKeys): string {
  const path = join(dir, 'audit-ed25519.pem');
  writeFileSync(path, keys.privatePem, { mode: 0o600 });
  return path;
}

/** A config with schema defaults spelled out, as the loader would produce. */
export function auditConfig(dir: string, overrides: Partial<AuditConfig> = {}): AuditConfig {
  return {
    enabled: true,
    durability: 'durable',
    whenFull: 'block',
    closeTimeoutMs: 5_000,
    queue: { maxEvents: 65_536 },
    wal: { dir: join(dir, 'wal'), segmentBytes: 1_048_576, fsyncIntervalMs: 2, maxBytes: 64 * 1_048_576 },
    chain: { checkpointEvery: 5, checkpointIntervalMs: 60_000 },
    retry: { initialMs: 20, maxMs: 200 },
    sinks: [{ file: { path: join(dir, 'audit.jsonl'), rotateBytes: 0, rotateIntervalMs: 0, batchSize: 4096 } }],
    ...overrides,
  };
}

export function uniqueTable(): string {
  return `audit_t${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
}

export async function withPg<T>(fn: (pool: PgPool) => Promise<T>): Promise<T> {
  const pool = createPgPool(PG_URL, 2);
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

export async function dropTable(table: string): Promise<void> {
  await withPg((pool) => pool.query(`DROP TABLE IF EXISTS "${table}"`));
}

// ---------------------------------------------------------------------------
// Writing a list of record lines into each kind of store (for tamper tests)

export type StoreKind = 'file' | 'sqlite' | 'postgres';

export async function writeStore(
  kind: StoreKind,
  lines: readonly string[],
  dir: string,
): Promise<{ source: Record<string, string> }> {
  const name = `store-${Math.random().toString(36).slice(2, 10)}`;
  if (kind === 'file') {
    const path = join(dir, `${name}.jsonl`);
    writeFileSync(path, lines.map((l) => `${l}\n`).join(''));
    return { source: { file: path } };
  }
  if (kind === 'sqlite') {
    const path = join(dir, `${name}.db`);
    const db = openSqlite(path);
    prepareSqlite(db, 'audit_events', false);
    const insert = db.prepare(sqliteInsert('audit_events'));
    db.transaction(() => {
      for (const line of lines) {
        insert.run(...rowOf({ index: 0, line, record: JSON.parse(line) as Record<string, unknown> }));
      }
    })();
    db.close();
    return { source: { sqlite: path } };
  }
  const table = uniqueTable();
  await withPg(async (pool) => {
    await ensurePostgresTable(pool, table);
    for (const line of lines) {
      // Plain INSERT (no ON CONFLICT): a tampered store may hold two rows with one id only if the attacker
      // removed the constraint; our cases keep ids unique.
      await pool.query(
        `INSERT INTO "${table}" (id, chain, n, ts, kind, subject, tenant, decision, route, action, status, request_id, record)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)`,
        rowOf({ index: 0, line, record: JSON.parse(line) as Record<string, unknown> }),
      );
    }
  });
  return { source: { postgres: PG_URL, table } };
}

export async function dropStore(source: Record<string, string>): Promise<void> {
  if (source['postgres'] !== undefined && source['table'] !== undefined) await dropTable(source['table']);
}

// ---------------------------------------------------------------------------
// Rewriting a chain the way an attacker with the data (but maybe not the key) would

export type Rec = Record<string, unknown>;

export function parseLines(lines: readonly string[]): Rec[] {
  return lines.map((l) => JSON.parse(l) as Rec);
}

/** A record's stored line, hash recomputed (canonical JSON + hash last, as the writer does). */
export function lineOf(record: Rec): string {
  const { hash: _hash, ...rest } = record;
  const canonical = canonicalize(rest);
  const hash = sha256Hex(canonical);
  record['hash'] = hash;
  return `${canonical.slice(0, -1)},"hash":"${hash}"}`;
}

/** The line as-is: no recomputation (a naive edit). */
export function rawLine(record: Rec): string {
  return JSON.stringify(record);
}

/**
 * Recomputes prev/hash of every record in order (per chain), re-signs
 * checkpoints with `signer` (and declares its key in start records), fixes
 * successor links: a full rewrite.
 */
export function rechain(records: Rec[], signer: { privatePem: string; publicPem: string; keyId?: string } | null): string[] {
  const heads = new Map<string, string>();
  const byPosition = new Map<string, string>();
  const out: string[] = [];
  for (const record of records) {
    const chain = String(record['chain']);
    record['prev'] = heads.get(chain) ?? GENESIS_HASH;
    if (record['kind'] === 'start') {
      if (signer !== null) {
        record['publicKey'] = signer.publicPem;
        record['keyId'] = signer.keyId ?? keyFingerprint(createPublicKeyFrom(signer.publicPem));
      }
      const after = record['after'] as { chain: string; n: number; hash: string } | null;
      if (after !== null) {
        const hash = byPosition.get(`${after.chain}:${after.n}`);
        if (hash !== undefined) record['after'] = { ...after, hash };
      }
    }
    if (record['kind'] === 'checkpoint') {
      record['head'] = record['prev'];
      record['count'] = record['n'];
      if (signer !== null && record['sig'] !== null) {
        record['keyId'] = signer.keyId ?? keyFingerprint(createPublicKeyFrom(signer.publicPem));
        record['sig'] = sign(null, Buffer.from(signatureInput(record), 'utf8'), signer.privatePem).toString('base64url');
      }
    }
    const line = lineOf(record);
    heads.set(chain, String(record['hash']));
    byPosition.set(`${chain}:${String(record['n'])}`, String(record['hash']));
    out.push(line);
  }
  return out;
}

function createPublicKeyFrom(pem: string) {
  return createPublicKey(pem);
}

// ---------------------------------------------------------------------------
// A real HTTP webhook receiver

export interface Receiver {
  url: string;
  bodies: { headers: IncomingHttpHeaders; body: string }[];
  events: Rec[];
  /** Return a status for this request (default 200). */
  respond: (attempt: number) => number;
  attempts: number;
  close(): Promise<void>;
}

export async function startReceiver(): Promise<Receiver> {
  const receiver: Receiver = {
    url: '',
    bodies: [],
    events: [],
    respond: () => 200,
    attempts: 0,
    close: async () => {},
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const status = receiver.respond(++receiver.attempts);
      if (status === 200) {
        const body = Buffer.concat(chunks).toString('utf8');
        receiver.bodies.push({ headers: req.headers, body });
        receiver.events.push(...(JSON.parse(body) as { events: Rec[] }).events);
      }
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(String(status));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ingest`;
  receiver.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return receiver;
}

export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, stepMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out waiting for a condition');
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** An audit sink keeping each written record, parsed, in `records` (tests that read what was audited). */
export function memorySink(records: Record<string, unknown>[]): AuditSink {
  return {
    name: 'memory',
    batchSize: 1000,
    exactCursor: false,
    open: async () => {},
    write: async (batch: readonly WalEntry[]) =>
      void records.push(...batch.map((e) => JSON.parse(e.line) as Record<string, unknown>)),
    close: async () => {},
  };
}
