/**
 * The durability promise: an event whose `recordDurable` resolved (in the
 * gateway: a completed request) survives kill -9. A child process from the
 * build records events in durable mode and prints each id once accepted; it is
 * killed mid-stream; a second process replays the WAL; every printed id must be
 * in the sinks, and every chain must verify.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSqlite } from '../../src/audit/drivers.js';
import { createAuditLog } from '../../src/audit/log.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { auditConfig, ed25519Keys, silentLogger, tempDir, writeKey } from './helpers.js';

const ROOT = resolve(import.meta.dirname, '../..');
const FIXTURE = join(import.meta.dirname, 'fixtures', 'durable-writer.mjs');

beforeAll(() => {
  // The child runs the build (test/setup/build.ts makes it).
  expect(existsSync(join(ROOT, 'dist', 'audit', 'index.js'))).toBe(true);
});

let dir: string;
let cleanup: () => void;
beforeAll(() => ({ dir, cleanup } = tempDir()));
afterAll(() => (process.env['KEEP'] ? undefined : cleanup()));

function run(
  mode: 'write' | 'replay',
  config: unknown,
  env: NodeJS.ProcessEnv = {},
): { child: ChildProcess; lines: string[]; closed: Promise<number | null> } {
  const child = spawn(process.execPath, [FIXTURE, mode, JSON.stringify(config)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
  });
  const lines: string[] = [];
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => lines.push(line));
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  return { child, lines, closed };
}

describe('kill -9 in durable mode', () => {
  it('every event acknowledged before the kill is in every sink after replay, and the chains verify', async () => {
    const keys = ed25519Keys();
    const config = auditConfig(dir, {
      durability: 'durable',
      chain: { checkpointEvery: 100, checkpointIntervalMs: 60_000, signingKey: writeKey(dir, keys) },
      wal: { dir: join(dir, 'wal'), segmentBytes: 262_144, fsyncIntervalMs: 2, maxBytes: 64 * 1_048_576 },
      sinks: [{ sqlite: { path: join(dir, 'audit.db') } }, { file: { path: join(dir, 'audit.jsonl') } }],
    });

    const writer = run('write', config);
    const deadline = Date.now() + 20_000;
    // Kill once well into the stream (several WAL segments and sink batches in): 1,500 ids after the `ready` line.
    while (writer.lines.length < 1501 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    writer.child.kill('SIGKILL');
    expect(await writer.closed).toBeNull();
    const [ready, ...ids] = writer.lines;
    expect(ready).toMatch(/^ready /);
    expect(ids.length).toBeGreaterThanOrEqual(1500);

    const replayer = run('replay', config);
    expect(await replayer.closed).toBe(0);
    expect(replayer.lines.at(-1)).toMatch(/^replayed /);
    // The replayer took over the WAL: its sinks got at least its own start, seal and final checkpoint.
    const replayStats = JSON.parse(String(replayer.lines.at(-1)).slice('replayed '.length)) as {
      written: number;
      sinks: { delivered: number }[];
    };
    expect(replayStats.written).toBe(3);
    for (const sink of replayStats.sinks) expect(sink.delivered).toBeGreaterThanOrEqual(3);

    const db = openSqlite(join(dir, 'audit.db'), { readonly: true });
    const stored = new Set(
      db
        .prepare<{ id: string }>('SELECT id FROM audit_events')
        .all()
        .map((r) => r.id),
    );
    db.close();
    const missing = ids.filter((id) => !stored.has(id));
    expect(missing).toEqual([]);
    const fileIds = new Set(
      readFileSync(join(dir, 'audit.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { id: string }).id),
    );
    expect(ids.filter((id) => !fileIds.has(id))).toEqual([]);

    for (const source of [{ sqlite: join(dir, 'audit.db') }, { file: join(dir, 'audit.jsonl') }]) {
      const report = await verifyAudit(source, { publicKeys: [keys.publicPem], sealed: true });
      expect(report.issues).toEqual([]);
      // The killed process's chain was sealed by the replayer; the replayer's own chain closed cleanly.
      expect(report.chains.map((c) => c.sealed)).toEqual(['recovered', 'close']);
      expect(report.duplicates, `${JSON.stringify(source)} ${JSON.stringify(report.issues)} ${dir}`).toBe(0);
    }
  }, 90_000);
});

describe('orphaned WAL slots', () => {
  const fileIds = (path: string) =>
    readFileSync(path, 'utf8')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { id: string }).id);

  it('two writers killed, one process comes back: it delivers the slot no process claims any more', async () => {
    const keys = ed25519Keys();
    const base = join(dir, 'shrink');
    mkdirSync(base);
    const config = auditConfig(base, {
      durability: 'durable',
      chain: { checkpointEvery: 100, checkpointIntervalMs: 60_000, signingKey: writeKey(base, keys) },
      wal: { dir: join(base, 'wal'), segmentBytes: 262_144, fsyncIntervalMs: 2, maxBytes: 64 * 1_048_576 },
      sinks: [{ file: { path: join(base, 'audit-{slot}.jsonl') } }],
    });
    // "workers: 2": two processes, slot-0 and slot-1; both die mid-stream.
    const writers = [run('write', config), run('write', config)];
    const deadline = Date.now() + 20_000;
    while (writers.some((w) => w.lines.length < 401) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const w of writers) w.child.kill('SIGKILL');
    for (const w of writers) expect(await w.closed).toBeNull();
    const acknowledged = writers.flatMap((w) => w.lines.slice(1));
    expect(acknowledged.length).toBeGreaterThanOrEqual(800);

    // "workers: 1" now: one process claims slot-0 and replays it; slot-1 is nobody's.
    const replayer = run('replay', config, { BULWARK_TEST_ORPHANS: '1' });
    expect(await replayer.closed).toBe(0);
    const delivered = new Set([...fileIds(join(base, 'audit-0.jsonl')), ...fileIds(join(base, 'audit-1.jsonl'))]);
    expect(acknowledged.filter((id) => !delivered.has(id))).toEqual([]);
    // The orphan's lock is released again: the next process to need a slot can take it.
    expect(existsSync(join(base, 'wal', 'slot-1', 'lock'))).toBe(false);
    for (const slot of [0, 1]) {
      const report = await verifyAudit(
        { file: join(base, `audit-${slot}.jsonl`) },
        { publicKeys: [keys.publicPem], sealed: true },
      );
      expect(report.issues).toEqual([]);
      // Each killed writer's chain sealed by whoever took its slot over; that taker's own chain closed cleanly.
      expect(report.chains.map((c) => c.sealed)).toEqual(['recovered', 'close']);
      expect(report.duplicates).toBe(0);
    }

    // Nothing left to deliver: a second start only looks (no new chain in slot-1's file).
    const before = readFileSync(join(base, 'audit-1.jsonl'), 'utf8');
    const again = run('replay', config, { BULWARK_TEST_ORPHANS: '1' });
    expect(await again.closed).toBe(0);
    expect(readFileSync(join(base, 'audit-1.jsonl'), 'utf8')).toBe(before);
  }, 90_000);
});

describe('restart with the same pid (a container gateway is PID 1 again)', () => {
  it('the dead predecessor’s lock carries our pid: its slot is still taken over, replayed and sealed', async () => {
    const keys = ed25519Keys();
    const base = join(dir, 'same-pid');
    mkdirSync(base);
    const config = auditConfig(base, {
      durability: 'durable',
      chain: { checkpointEvery: 100, checkpointIntervalMs: 60_000, signingKey: writeKey(base, keys) },
      sinks: [{ file: { path: join(base, 'audit-{slot}.jsonl') } }],
    });
    const writer = run('write', config);
    const deadline = Date.now() + 20_000;
    while (writer.lines.length < 51 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    writer.child.kill('SIGKILL');
    expect(await writer.closed).toBeNull();
    const acknowledged = writer.lines.slice(1);
    expect(acknowledged.length).toBeGreaterThanOrEqual(50);
    // The predecessor had the pid this process has now; its lock is in the format before instance tokens.
    writeFileSync(join(base, 'wal', 'slot-0', 'lock'), `${process.pid}\n`);

    const log = await createAuditLog(config, { logger: silentLogger(), orphanDrainDelayMs: false });
    expect(log.stats().slot).toBe(0);
    await log.flush({ timeoutMs: 30_000 });
    await log.close();
    expect(existsSync(join(base, 'wal', 'slot-1'))).toBe(false);
    const path = join(base, 'audit-0.jsonl');
    const delivered = new Set(
      readFileSync(path, 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { id: string }).id),
    );
    expect(acknowledged.filter((id) => !delivered.has(id))).toEqual([]);
    const report = await verifyAudit({ file: path }, { publicKeys: [keys.publicPem], sealed: true });
    expect(report.issues).toEqual([]);
    expect(report.chains.map((c) => c.sealed)).toEqual(['recovered', 'close']);
  }, 60_000);
});
