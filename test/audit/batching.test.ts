/**
 * How records reach the disk: serialized straight into byte chunks, a commit
 * is one `writev` (+ one fdatasync in durable mode) whatever the number of
 * records, and a file sink writes a batch as the WAL's bytes. Counts of calls,
 * never timings.
 */
import { constants, readFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ChainWriter, storedLine, storedLineMaxBytes, writeStoredLine } from '../../src/audit/chain.js';
import { AuditClock, UuidV7 } from '../../src/audit/clock.js';
import { createAuditLog, type DurableResult } from '../../src/audit/log.js';
import { openSqlite } from '../../src/audit/drivers.js';
import { FileSink } from '../../src/audit/sinks/file.js';
import type { AuditSink } from '../../src/audit/sinks/sink.js';
import { SqliteSink } from '../../src/audit/sinks/sqlite.js';
import { entryBytes, LineChunks, Wal, type WalEntry } from '../../src/audit/wal.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { auditConfig, silentLogger, tempDir } from './helpers.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function dir(): string {
  const t = tempDir();
  cleanups.push(t.cleanup);
  return t.dir;
}

/** FileHandle's prototype (the class is not exported): spying on it counts every handle's calls. */
async function fileHandlePrototype(d: string): Promise<FileHandle> {
  const handle = await open(join(d, 'probe'), 'w');
  await handle.close();
  return Object.getPrototypeOf(handle) as FileHandle;
}

async function countFileCalls(d: string) {
  const proto = await fileHandlePrototype(d);
  return {
    writev: vi.spyOn(proto, 'writev'),
    write: vi.spyOn(proto, 'write'),
    datasync: vi.spyOn(proto, 'datasync'),
  };
}

/** A sink that keeps what it is given and touches no file (so every file call counted is the WAL's). */
function memorySink(): AuditSink & { batches: number[]; lines: string[] } {
  const sink = {
    name: 'memory',
    batchSize: 100_000,
    exactCursor: false,
    batches: [] as number[],
    lines: [] as string[],
    open: async () => {},
    write: async (batch: readonly WalEntry[]) => {
      sink.batches.push(batch.length);
      for (const entry of batch) sink.lines.push(entry.line);
    },
    close: async () => {},
  };
  return sink;
}

const event = (i: number) => ({ action: 'payment.refund', subject: `user${i}`, details: { amount: i, note: 'é€😀' } });

describe('stored lines as bytes', () => {
  it('writeStoredLine writes exactly the UTF-8 of storedLine, newline at the offset it returns', () => {
    const chain = new ChainWriter({
      id: 'host:1:20260101T000000000Z:abcdef',
      key: null,
      clock: new AuditClock(),
      uuid: new UuidV7(),
    });
    const chunks = new LineChunks(4096);
    for (const note of ['plain', 'é€ and 😀 (a surrogate pair)', '"quoted" \\ \u0001 control']) {
      const chained = chain.append({ chain: '', kind: 'event', n: 0, note, prev: '', v: 1 });
      const buffer = chunks.room(storedLineMaxBytes(chained));
      const start = chunks.offset;
      const newline = writeStoredLine(buffer, start, chained);
      const entry = chunks.take(newline, undefined);
      expect(buffer.subarray(start, newline + 1)).toEqual(Buffer.from(`${storedLine(chained)}\n`, 'utf8'));
      expect(entry.line).toBe(storedLine(chained));
      expect(JSON.parse(entry.line)).toMatchObject({ note, hash: chained.hash });
    }
  });

  it('entryBytes: adjacent lines of a chunk are one view; lines without bytes are encoded in order', () => {
    const chunks = new LineChunks(1024);
    const a = chunks.line('{"a":1}');
    const b = chunks.line('{"b":"é"}');
    const plain: WalEntry = { index: 2, line: '{"c":3}', record: undefined };
    const d = chunks.line('{"d":4}');
    const parts = entryBytes([a, b, plain, d]);
    expect(parts).toHaveLength(3);
    expect(Buffer.concat(parts).toString('utf8')).toBe('{"a":1}\n{"b":"é"}\n{"c":3}\n{"d":4}\n');
  });
});

describe('few write calls for many records', () => {
  it('the WAL appends a 5,000-line batch with one writev and one fdatasync', async () => {
    const d = dir();
    const calls = await countFileCalls(d);
    const wal = await Wal.open(d, 64 * 1024 * 1024);
    const lines = Array.from({ length: 5000 }, (_, i) => JSON.stringify({ id: `id-${i}`, n: i, pad: 'x'.repeat(200) }));
    expect(await wal.write(lines, true)).toBe(0);
    expect(calls.writev).toHaveBeenCalledTimes(1);
    expect(calls.write).not.toHaveBeenCalled();
    expect(calls.datasync).toHaveBeenCalledTimes(1);
    expect(wal.nextIndex).toBe(5000);
    await wal.close();
    const [segment] = (await import('node:fs')).readdirSync(d).filter((n) => n.startsWith('wal-'));
    expect(readFileSync(join(d, segment as string), 'utf8')).toBe(lines.map((l) => `${l}\n`).join(''));
  });

  it('a file sink writes a batch (bytes and plain lines mixed) with one writev', async () => {
    const d = dir();
    const path = join(d, 'audit.jsonl');
    const sink = new FileSink({ path, rotateBytes: 0, rotateIntervalMs: 0, batchSize: 10_000, sync: true });
    await sink.open();
    const chunks = new LineChunks(64 * 1024);
    const batch: WalEntry[] = Array.from({ length: 3000 }, (_, i) =>
      i % 1000 === 999 ? { index: i, line: `{"id":"e${i}"}`, record: undefined } : chunks.line(`{"id":"e${i}"}`),
    );
    const calls = await countFileCalls(d);
    await sink.write(batch);
    expect(calls.writev).toHaveBeenCalledTimes(1);
    expect(calls.write).not.toHaveBeenCalled();
    expect(calls.datasync).toHaveBeenCalledTimes(1);
    await sink.close();
    expect(readFileSync(path, 'utf8')).toBe(batch.map((e) => `${e.line}\n`).join(''));
  });

  it('group commit: a burst of durable records is one synced WAL write, and releases every waiter after it', async () => {
    const d = dir();
    const sink = memorySink();
    // The commit window (1 s) outlasts the burst's drain by far: every record of it is in the one commit.
    const log = await createAuditLog(
      auditConfig(d, {
        durability: 'durable',
        chain: { checkpointEvery: 100_000, checkpointIntervalMs: 600_000 },
        wal: { dir: join(d, 'wal'), segmentBytes: 64 * 1024 * 1024, fsyncIntervalMs: 1000, maxBytes: 256 * 1024 * 1024 },
      }),
      { logger: silentLogger(), sinks: [sink] },
    );
    cleanups.push(() => log.close());
    const calls = await countFileCalls(d);
    const syncsWhenReleased: number[] = [];
    const waits: Promise<DurableResult>[] = [];
    for (let i = 0; i < 3000; i++)
      waits.push(
        log.recordDurable(event(i)).then((result) => {
          syncsWhenReleased.push(calls.writev.mock.calls.length + calls.datasync.mock.calls.length);
          return result;
        }),
      );
    const results = await Promise.all(waits);
    expect(results.every((r) => r.status === 'accepted')).toBe(true);
    expect(calls.writev).toHaveBeenCalledTimes(1);
    expect(calls.write).not.toHaveBeenCalled();
    // The WAL is O_DSYNC in durable mode (where the platform has it): the write is the sync.
    const dsync = typeof constants.O_DSYNC === 'number' && constants.O_DSYNC !== 0;
    expect(calls.datasync).toHaveBeenCalledTimes(dsync ? 0 : 1);
    // Released together, after that one synced write.
    expect(new Set(syncsWhenReleased)).toEqual(new Set([dsync ? 1 : 2]));
    await log.flush();
    expect(sink.lines.filter((l) => l.includes('"kind":"event"'))).toHaveLength(3000);
    expect(Math.max(...sink.batches)).toBeGreaterThanOrEqual(3000);
  });

  it('fast mode: a 20,000-event burst takes far fewer writes than events, and the file verifies', async () => {
    const d = dir();
    const path = join(d, 'audit.jsonl');
    const log = await createAuditLog(
      auditConfig(d, {
        durability: 'fast',
        queue: { maxEvents: 100_000 },
        chain: { checkpointEvery: 1000, checkpointIntervalMs: 600_000 },
        sinks: [{ file: { path, rotateBytes: 0, rotateIntervalMs: 0, batchSize: 4096 } }],
      }),
      { logger: silentLogger() },
    );
    cleanups.push(() => log.close());
    const calls = await countFileCalls(d);
    for (let i = 0; i < 20_000; i++) expect(log.record(event(i)).status).toBe('accepted');
    await log.flush();
    // Each drain tick builds at least 32 records and each commit or sink batch takes whole ticks: at
    // most one WAL write and one file write per 32 events (in practice a few hundred events each).
    const writes = calls.writev.mock.calls.length + calls.write.mock.calls.length;
    expect(writes).toBeGreaterThan(0);
    expect(writes).toBeLessThanOrEqual((2 * 20_000) / 32);
    await log.close();
    const report = await verifyAudit({ file: path }, { sealed: true });
    expect(report.ok).toBe(true);
    expect(report.records).toBe(20_000 + 20 + 2); // events, periodic checkpoints, start and the final one
  });
});

describe('fast mode pacing', () => {
  it('events from many loop turns share one WAL write per window, and a flush does not wait the window out', async () => {
    const d = dir();
    const sink = memorySink();
    const log = await createAuditLog(auditConfig(d, { durability: 'fast' }), { logger: silentLogger(), sinks: [sink] });
    cleanups.push(() => log.close());
    // Frozen clock, real loop turns: the window never ends on its own, so any write seen is one per turn.
    // Frozen before the first commit: that commit's time is then the clock's, and the window stays open
    // however long this machine takes to get to the loop.
    vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
    try {
      log.record(event(0));
      await log.flush();
      const calls = await countFileCalls(d);
      for (let i = 1; i <= 50; i++) {
        expect(log.record(event(i)).status).toBe('accepted');
        await tick();
      }
      expect(calls.writev).not.toHaveBeenCalled();
      await log.flush();
      expect(calls.writev).toHaveBeenCalledTimes(1);
    } finally {
      vi.useRealTimers();
    }
    expect(sink.lines.filter((l) => l.includes('"kind":"event"'))).toHaveLength(51);
  });
});

describe('SQLite sink', () => {
  const entry = (i: number, n: unknown = i): WalEntry => ({
    index: i,
    line: JSON.stringify({ chain: 'c', id: `id-${String(i).padStart(5, '0')}`, kind: 'event', n, ts: 't', v: 1 }),
    record: undefined,
  });
  const stored = (path: string): string[] => {
    const db = openSqlite(path, { readonly: true });
    try {
      return db
        .prepare<{ id: string }>('SELECT id FROM audit_events ORDER BY pos')
        .all()
        .map((r) => r.id);
    } finally {
      db.close();
    }
  };

  it('a batch goes in slices but commits as one: a failure in any slice leaves none of it, and the next batch is written', async () => {
    const d = dir();
    const path = join(d, 'audit.db');
    const sink = new SqliteSink({ path, table: 'audit_events', batchSize: 5000, sync: false });
    await sink.open();
    cleanups.push(() => sink.close());
    const batch = Array.from({ length: 1000 }, (_, i) => entry(i));

    // A line that does not parse, in the third slice: built on this thread, after two slices were posted.
    const unparseable = [...batch];
    unparseable[700] = { index: 700, line: '{"id": torn', record: undefined };
    await expect(sink.write(unparseable)).rejects.toThrow();
    expect(stored(path)).toEqual([]);

    // A row SQLite refuses (n NOT NULL), in the second slice: the worker rolls back and ignores the rest.
    const refused = [...batch];
    refused[300] = entry(300, 'not a number');
    await expect(sink.write(refused)).rejects.toThrow(/sqlite sink/);
    expect(stored(path)).toEqual([]);

    await sink.write(batch);
    expect(stored(path)).toEqual(batch.map((e) => JSON.parse(e.line).id as string));
    // A replay of the same rows is a no-op (ON CONFLICT DO NOTHING), across slices too.
    await sink.write(batch.slice(500));
    expect(stored(path)).toHaveLength(1000);
  });
});
