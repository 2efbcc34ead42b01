/**
 * Faults injected under the pipeline: lost or corrupted WAL state, corrupted
 * WAL bytes, file sink directory removed, rotations within one millisecond, a
 * PostgreSQL table dropped while running, and non-audit input to the CLI.
 * Each case once lost accepted events, wedged a sink, or crashed.
 */
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { auditCli } from '../../src/audit/cli.js';
import { createAuditLog, type AuditLog } from '../../src/audit/log.js';
import { parseSince } from '../../src/audit/query.js';
import { FileSink, rotationSet } from '../../src/audit/sinks/file.js';
import { PostgresSink } from '../../src/audit/sinks/postgres.js';
import { recordOf, type AuditSink } from '../../src/audit/sinks/sink.js';
import { verifyAudit } from '../../src/audit/verify.js';
import type { WalEntry } from '../../src/audit/wal.js';
import { auditConfig, dropTable, PG_URL, silentLogger, tempDir, uniqueTable, withPg } from './helpers.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function setup(): string {
  const { dir, cleanup } = tempDir();
  cleanups.push(cleanup);
  return dir;
}

/** A sink that keeps what it is given; parses every record, as the SQL sinks do. */
class CollectingSink implements AuditSink {
  readonly name = 'collect';
  readonly batchSize = 64;
  readonly exactCursor = false;
  failing = false;
  readonly ids: string[] = [];
  async open(): Promise<void> {}
  async write(batch: readonly WalEntry[]): Promise<void> {
    if (this.failing) throw new Error('sink down');
    for (const entry of batch) this.ids.push(String(recordOf(entry)['id']));
  }
  async close(): Promise<void> {}
}

/** A file sink that can be down. */
class FlakyFileSink extends FileSink {
  failing = false;
  override async write(batch: readonly WalEntry[]): Promise<void> {
    if (this.failing) throw new Error('sink down');
    return super.write(batch);
  }
}

function flakyFile(path: string, failing: boolean): FlakyFileSink {
  const sink = new FlakyFileSink({ path, rotateBytes: 0, rotateIntervalMs: 0, batchSize: 8, sync: false });
  sink.failing = failing;
  return sink;
}

/** Records `count` events with sinks that never take them; returns their ids (all left in the WAL). */
async function leaveInWal(dir: string, count: number, sinks: AuditSink[] = []): Promise<string[]> {
  const down = new CollectingSink();
  down.failing = true;
  const log = await createAuditLog(
    { ...auditConfig(dir), closeTimeoutMs: 200 },
    { logger: silentLogger(), sinks: [down, ...sinks] },
  );
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const r = log.record({ action: 'probe.fault', subject: `u${i}` });
    if (r.status === 'accepted') ids.push(r.id);
  }
  await log.close();
  return ids;
}

async function reopen(dir: string, sink: AuditSink): Promise<AuditLog> {
  const log = await createAuditLog(auditConfig(dir), { logger: silentLogger(), sinks: [sink] });
  cleanups.push(() => log.close());
  return log;
}

/** Leaves `count` events undelivered, damages the cursor file, reopens: the ids a fresh sink then missed. */
async function missedAfter(count: number, damage: (cursorFile: string) => void): Promise<string[]> {
  const dir = setup();
  const ids = await leaveInWal(dir, count);
  damage(join(dir, 'wal', 'slot-0', 'cursors.json'));
  const sink = new CollectingSink();
  const log = await reopen(dir, sink);
  await log.flush({ timeoutMs: 5_000 });
  return ids.filter((id) => !sink.ids.includes(id));
}

describe('WAL cursor file lost or corrupted', () => {
  it('cursors.json deleted: the next start replays the WAL instead of skipping to the new chain', async () => {
    expect(await missedAfter(30, (file) => rmSync(file))).toEqual([]);
  });

  it('a cursor past the end of the WAL (corrupted) replays rather than skips', async () => {
    expect(await missedAfter(30, (file) => writeFileSync(file, JSON.stringify({ v: 1, sinks: { collect: 1e9 } })))).toEqual([]);
  });

  it('garbage in cursors.json replays too', async () => {
    expect(await missedAfter(10, (file) => writeFileSync(file, '\u0000\u0001garbage'))).toEqual([]);
  });
});

describe('sink outage under load', () => {
  it('a failing sink is retried with backoff, not on every commit of new events', async () => {
    const dir = setup();
    let attempts = 0;
    const down = new CollectingSink();
    down.failing = true;
    const write = down.write.bind(down);
    down.write = (batch) => {
      attempts++;
      return write(batch);
    };
    const log = await createAuditLog(
      { ...auditConfig(dir), durability: 'fast', retry: { initialMs: 20, maxMs: 200 }, closeTimeoutMs: 200 },
      { logger: silentLogger(), sinks: [down] },
    );
    cleanups.push(() => log.close());
    // 600 ms of steady traffic: a commit every millisecond or so.
    const until = Date.now() + 600;
    while (Date.now() < until) {
      log.record({ action: 'probe.fault' });
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    // Backoff 20, 40, 80, 160, 200, 200… (with jitter) allows about 6 attempts in 600 ms; a retry per commit, hundreds.
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(attempts).toBeLessThanOrEqual(12);
  });
});

describe('sink pacing', () => {
  it('a caught-up sink takes steady traffic in a few batches, not one per commit', async () => {
    const dir = setup();
    let writes = 0;
    const sink = new CollectingSink();
    const write = sink.write.bind(sink);
    sink.write = (batch) => {
      writes++;
      return write(batch);
    };
    const log = await createAuditLog({ ...auditConfig(dir), durability: 'fast' }, { logger: silentLogger(), sinks: [sink] });
    cleanups.push(() => log.close());
    const ids: string[] = [];
    const until = Date.now() + 300;
    while (Date.now() < until) {
      const r = log.record({ action: 'probe.pace' });
      if (r.status === 'accepted') ids.push(r.id);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await log.flush();
    expect(ids.filter((id) => !sink.ids.includes(id))).toEqual([]);
    // ~200 commits in 300 ms; paced at 10 ms, about 30 writes (the start record's one too).
    expect(ids.length).toBeGreaterThan(100);
    expect(writes).toBeLessThanOrEqual(45);
  });
});

describe('file sink replay after its cursor lagged or was lost', () => {
  /** A chain of `count` events in the file (small batches), then the cursor file damaged, then a restart. */
  async function replayed(damage: (cursorFile: string) => void): Promise<{ ids: string[]; path: string }> {
    const dir = setup();
    const path = join(dir, 'audit.jsonl');
    const config = auditConfig(dir, { sinks: [{ file: { path, rotateBytes: 0, rotateIntervalMs: 0, batchSize: 8 } }] });
    const first = await createAuditLog(config, { logger: silentLogger() });
    const ids: string[] = [];
    for (let i = 0; i < 100; i++) {
      const r = first.record({ action: 'probe.fault', subject: `u${i}` });
      if (r.status === 'accepted') ids.push(r.id);
      if (i % 10 === 9) await first.flush();
    }
    await first.close();
    damage(join(dir, 'wal', 'slot-0', 'cursors.json'));
    const second = await createAuditLog(config, { logger: silentLogger() });
    const r = second.record({ action: 'probe.fault', subject: 'after' });
    if (r.status === 'accepted') ids.push(r.id);
    await second.close();
    return { ids, path };
  }

  async function expectWholeOnce({ ids, path }: { ids: string[]; path: string }): Promise<void> {
    const stored = readFileSync(path, 'utf8')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { id: string }).id);
    expect(new Set(stored).size).toBe(stored.length);
    expect(ids.filter((id) => !stored.includes(id))).toEqual([]);
    const report = await verifyAudit({ file: path }, { sealed: true });
    expect(report.ok).toBe(true);
    expect(report.duplicates).toBe(0);
  }

  // The cursor is saved once a second, not per batch: a crash leaves it behind what the file holds.
  it("a cursor far behind the file: the replay starts after the file's last record", async () => {
    const result = await replayed((file) => {
      const saved = JSON.parse(readFileSync(file, 'utf8')) as { v: number; sinks: Record<string, number> };
      for (const key of Object.keys(saved.sinks)) saved.sinks[key] = 3;
      writeFileSync(file, JSON.stringify(saved));
    });
    await expectWholeOnce(result);
  });

  it('cursors.json lost: the whole-WAL replay writes nothing twice', async () => {
    await expectWholeOnce(await replayed((file) => rmSync(file)));
  });
});

describe('corrupted bytes inside a WAL segment', () => {
  it('an unparseable line is skipped (and shows in verify as missing); it does not wedge the sink', async () => {
    const dir = setup();
    const file = join(dir, 'audit.jsonl');
    const ids = await leaveInWal(dir, 30, [flakyFile(file, true)]);
    const slot = join(dir, 'wal', 'slot-0');
    const segment = join(
      slot,
      readdirSync(slot)
        .filter((n) => n.startsWith('wal-'))
        .sort()[0] as string,
    );
    const lines = readFileSync(segment, 'utf8').split('\n');
    const victim = lines.findIndex((l) => l.includes('"u5"'));
    const victimId = (JSON.parse(lines[victim] as string) as { id: string }).id;
    lines[victim] = (lines[victim] as string).replace('"kind":', '"ki\u0001nd'); // a flipped byte breaks the JSON
    writeFileSync(segment, lines.join('\n'));

    const sink = new CollectingSink();
    const log = await createAuditLog(auditConfig(dir), { logger: silentLogger(), sinks: [sink, flakyFile(file, false)] });
    cleanups.push(() => log.close());
    await log.flush({ timeoutMs: 5_000 });
    expect(ids.filter((id) => id !== victimId && !sink.ids.includes(id))).toEqual([]);
    expect(sink.ids).not.toContain(victimId);
    await log.close();
    const report = await verifyAudit({ file, rotated: false });
    expect(report.firstBad).toMatchObject({ code: 'record.missing' });
    expect(report.errors).toBe(1);
  });
});

function entries(from: number, count: number): WalEntry[] {
  return Array.from({ length: count }, (_, k) => {
    const i = from + k;
    return { index: i, line: JSON.stringify({ id: `id-${i}`, i }), record: undefined };
  });
}

async function linesOf(path: string): Promise<string[]> {
  const out: string[] = [];
  for (const file of await rotationSet(path))
    out.push(
      ...readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l !== ''),
    );
  return out;
}

describe('file sink faults', () => {
  it('rotations within one millisecond keep every rotated file (no rename over the previous one)', async () => {
    const dir = setup();
    const path = join(dir, 'audit.jsonl');
    vi.useFakeTimers({ toFake: ['Date'], now: new Date('2026-11-24T02:23:01.123Z') });
    const sink = new FileSink({ path, rotateBytes: 1, rotateIntervalMs: 0, batchSize: 2, sync: false });
    await sink.open();
    for (let b = 0; b < 6; b++) await sink.write(entries(b * 2, 2));
    await sink.close();
    vi.useRealTimers();
    expect((await linesOf(path)).length).toBe(12);
    // Still in writing order, oldest rotated file first.
    expect((await linesOf(path)).map((l) => (JSON.parse(l) as { i: number }).i)).toEqual([...Array(12).keys()]);
  });

  it('directory removed while running: later batches go to a recreated file, not an unlinked one', async () => {
    const dir = setup();
    const path = join(dir, 'logs', 'audit.jsonl');
    const sink = new FileSink({ path, rotateBytes: 0, rotateIntervalMs: 0, batchSize: 4, sync: false });
    await sink.open();
    await sink.write(entries(0, 4));
    rmSync(join(dir, 'logs'), { recursive: true, force: true });
    await sink.write(entries(4, 4));
    await sink.close();
    expect(await linesOf(path)).toEqual(entries(4, 4).map((e) => e.line));
  });
});

describe('postgres sink faults', () => {
  it('table dropped while running: the next write creates it again', async () => {
    const table = uniqueTable();
    cleanups.push(() => dropTable(table));
    const sink = new PostgresSink({ url: PG_URL, table, poolSize: 1, batchSize: 10, label: 'test' });
    cleanups.push(() => sink.close());
    const row = (i: number): WalEntry => {
      const id = `01a20cd2-4588-7365-8000-${String(i).padStart(12, '0')}`;
      const record = { id, chain: 'c', n: i, ts: '2026-11-24T00:00:00.000000000Z', kind: 'event' };
      return { index: i, line: JSON.stringify(record), record };
    };
    await sink.open();
    await sink.write([row(0)]);
    await dropTable(table);
    await sink.write([row(1)]).catch(() => {}); // the write that meets the missing table may fail once
    await sink.write([row(1), row(2)]);
    const count = await withPg((pool) => pool.query<{ c: string }>(`SELECT count(*) AS c FROM "${table}"`));
    expect(Number(count.rows[0]?.c)).toBe(2);
  });
});

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await auditCli(argv, { stdout: (t) => void (out += t), stderr: (t) => void (err += t) });
  return { code, out, err };
}

describe('CLI on inputs that are not audit data', () => {
  it('verify on an empty file is an error (store.empty), not INTACT', async () => {
    const dir = setup();
    const file = join(dir, 'empty.jsonl');
    writeFileSync(file, '');
    const { code, out } = await cli('verify', '--file', file, '--json');
    expect(code).toBe(1);
    expect((JSON.parse(out) as { issues: { code: string }[] }).issues.map((i) => i.code)).toContain('store.empty');
  });

  it('query over JSON lines that are not objects reads past them', async () => {
    const dir = setup();
    const file = join(dir, 'scalars.jsonl');
    writeFileSync(file, '[1,2]\n"str"\nnull\n42\n');
    expect((await cli('query', '--file', file)).code).toBe(0);
  });

  it('query --since beyond the date range is a usage error (not an unreadable store)', async () => {
    expect(parseSince('99999999999999d')).toBeNull();
    const dir = setup();
    const file = join(dir, 'a.jsonl');
    writeFileSync(file, '');
    expect((await cli('query', '--file', file, '--since', '99999999999999d')).code).toBe(2);
  });

  it('keygen --out into a missing directory is an error message, not a throw', async () => {
    const dir = setup();
    await expect(cli('keygen', '--out', join(dir, 'missing', 'key.pem'))).resolves.toMatchObject({ code: 2 });
  });
});
