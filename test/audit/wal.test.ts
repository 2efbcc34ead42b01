import { spawn, spawnSync } from 'node:child_process';
import {
  appendFileSync,
  constants,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  truncateSync,
  writeFileSync,
  statSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { claimSlot, staleSlots } from '../../src/audit/slot.js';
import { FileSink, rotationSet } from '../../src/audit/sinks/file.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { Wal } from '../../src/audit/wal.js';
import { createAuditLog } from '../../src/audit/log.js';
import { auditConfig, silentLogger, tempDir } from './helpers.js';

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((c) => c()));
function dir(): string {
  const t = tempDir();
  cleanups.push(t.cleanup);
  return t.dir;
}
const line = (i: number) => JSON.stringify({ id: `id-${i}`, n: i, pad: 'x'.repeat(100) });

describe('WAL segments', () => {
  it('numbers entries across segments and restarts; reads them back from any index', async () => {
    const d = dir();
    let wal = await Wal.open(d, 1024);
    for (let i = 0; i < 40; i += 4) await wal.write([line(i), line(i + 1), line(i + 2), line(i + 3)], i % 8 === 0);
    expect(wal.nextIndex).toBe(40);
    expect(wal.segmentCount).toBeGreaterThan(3);
    await wal.close();
    wal = await Wal.open(d, 1024);
    expect(wal.nextIndex).toBe(40);
    expect(JSON.parse(wal.lastLineAtOpen as string)).toMatchObject({ n: 39 });
    for (const from of [0, 7, 13, 39]) {
      const reader = wal.reader(from);
      const got: number[] = [];
      for (;;) {
        const batch = await reader.read(5, 40);
        if (batch.length === 0) break;
        got.push(...batch.map((e) => (JSON.parse(e.line) as { n: number }).n));
        expect(batch.map((e) => e.index)).toEqual(batch.map((e) => (JSON.parse(e.line) as { n: number }).n));
      }
      expect(got).toEqual(Array.from({ length: 40 - from }, (_, k) => from + k));
    }
    await wal.close();
  });

  it('cuts a torn tail (partial line, or trailing garbage after a power loss) on open', async () => {
    const d = dir();
    const wal = await Wal.open(d, 1 << 20);
    await wal.write([line(0), line(1), line(2)], true);
    await wal.close();
    const [segment] = readdirSync(d).filter((n) => n.startsWith('wal-'));
    const path = join(d, segment as string);
    appendFileSync(path, `${line(3)}\n${line(4).slice(0, 30)}`); // one whole line, then half of one
    let reopened = await Wal.open(d, 1 << 20);
    expect(reopened.nextIndex).toBe(4);
    await reopened.close();
    appendFileSync(path, '\u0000\u0000\u0000\n');
    reopened = await Wal.open(d, 1 << 20);
    expect(reopened.nextIndex).toBe(4);
    expect(readFileSync(path, 'utf8').endsWith(`${line(3)}\n`)).toBe(true);
    await reopened.close();
  });

  it('deletes segments every reader is past; the last record survives in head.json', async () => {
    const d = dir();
    const wal = await Wal.open(d, 512);
    for (let i = 0; i < 20; i += 2) await wal.write([line(i), line(i + 1)], false);
    const before = wal.segmentCount;
    await wal.release(10);
    expect(wal.segmentCount).toBeLessThan(before);
    expect(wal.firstIndex).toBeLessThanOrEqual(10);
    // All delivered: even the active segment (past segmentBytes) is rotated away.
    await wal.release(20);
    expect(wal.segmentCount).toBe(1);
    expect(wal.bytes).toBe(0);
    expect(wal.nextIndex).toBe(20);
    await wal.close();
    const reopened = await Wal.open(d, 512);
    expect(reopened.nextIndex).toBe(20);
    expect(JSON.parse(reopened.lastLineAtOpen as string)).toMatchObject({ n: 19 });
    await reopened.write([line(20)], false);
    expect(reopened.nextIndex).toBe(21);
    await reopened.close();
  });
});

/** The open flags of this process's descriptors on `path` (Linux: /proc/self/fdinfo), one per descriptor. */
function openFlags(path: string): number[] {
  const flags: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed while we looked (readdir's own descriptor)
    }
    if (target !== path) continue;
    const info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    flags.push(parseInt(/^flags:\s+([0-7]+)/m.exec(info)![1]!, 8));
  }
  return flags;
}

/** A WAL directory's segment files, oldest first. */
function walSegments(d: string): string[] {
  return readdirSync(d)
    .filter((n) => n.startsWith('wal-'))
    .sort()
    .map((n) => join(d, n));
}

describe.runIf(process.platform === 'linux')('WAL sync on write (durable mode)', () => {
  it('a dsync WAL writes through O_DSYNC and needs no fdatasync; a plain one syncs when asked', async () => {
    const d = dir();
    const durable = await Wal.open(d, 512, { dsync: true });
    await durable.write([line(0)], true);
    // The handle (and every segment after a rotation) is O_DSYNC: the kernel syncs each write.
    expect(openFlags(walSegments(d)[0]!).map((f) => f & constants.O_DSYNC)).toEqual([constants.O_DSYNC]);
    const handleType = Object.getPrototypeOf(await open(walSegments(d)[0]!, 'r')) as { datasync: () => Promise<void> };
    const datasync = vi.spyOn(handleType, 'datasync');
    try {
      for (let i = 1; i < 12; i++) await durable.write([line(i)], true);
      expect(durable.segmentCount).toBeGreaterThan(1);
      expect(openFlags(walSegments(d).at(-1)!).map((f) => f & constants.O_DSYNC)).toEqual([constants.O_DSYNC]);
      const rotations = durable.segmentCount - 1;
      // Only a rotation syncs the segment it closes (a no-op under O_DSYNC); appends themselves never do.
      expect(datasync).toHaveBeenCalledTimes(rotations);
      await durable.close();
      datasync.mockClear();

      const e = dir();
      const fast = await Wal.open(e, 1 << 20);
      await fast.write([line(0)], false);
      expect(openFlags(walSegments(e)[0]!).map((f) => f & constants.O_DSYNC)).toEqual([0]);
      expect(datasync).not.toHaveBeenCalled();
      await fast.write([line(1)], true);
      expect(datasync).toHaveBeenCalledTimes(1);
      await fast.close();
    } finally {
      datasync.mockRestore();
    }
  });

  it('the audit log opens its WAL O_DSYNC in durable mode only', async () => {
    for (const durability of ['durable', 'fast'] as const) {
      const d = dir();
      const log = await createAuditLog(auditConfig(d, { durability }), { logger: silentLogger(), orphanDrainDelayMs: false });
      try {
        const walDir = join(d, 'wal');
        const slotDir = join(
          walDir,
          readdirSync(walDir).find((n) => statSync(join(walDir, n)).isDirectory())!,
        );
        expect(openFlags(walSegments(slotDir)[0]!).map((f) => f & constants.O_DSYNC)).toEqual([
          durability === 'durable' ? constants.O_DSYNC : 0,
        ]);
      } finally {
        await log.close();
      }
    }
  });
});

describe('WAL slots', () => {
  it("a live owner keeps its slot; a dead owner's slot is taken over", async () => {
    const d = dir();
    const a = await claimSlot(d);
    const b = await claimSlot(d);
    expect([a.slot, b.slot]).toEqual([0, 1]);
    await a.release();
    const c = await claimSlot(d);
    expect(c.slot).toBe(0);
    // A lock left by a process that has exited (a child we ran to completion): stale, so taken over.
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
    mkdirSync(join(d, 'slot-2'), { recursive: true });
    writeFileSync(join(d, 'slot-2', 'lock'), `${dead}\n`);
    const taken = await claimSlot(d, 2);
    expect(taken.slot).toBe(2);
    expect(readFileSync(join(d, 'slot-2', 'lock'), 'utf8').split('\n')[0]).toBe(String(process.pid));
    for (const s of [b, c, taken]) await s.release();
  });
});

describe('WAL slot locks and pid reuse', () => {
  const lockOf = (d: string, slot: number) => readFileSync(join(d, `slot-${slot}`, 'lock'), 'utf8');
  const writeLock = (d: string, slot: number, text: string) => {
    mkdirSync(join(d, `slot-${slot}`), { recursive: true });
    writeFileSync(join(d, `slot-${slot}`, 'lock'), text);
  };

  it('a lock with our pid that this process does not hold is a dead predecessor’s (restarted container, PID 1 again)', async () => {
    const d = dir();
    // An old-format lock (pid only) and a new-format one from another instance, both with our pid.
    writeLock(d, 0, `${process.pid}\n2024-01-01T00:00:00.000Z\n`);
    writeLock(d, 1, `${process.pid}\n2024-01-01T00:00:00.000Z\ninstance=0f0e0d0c-dead-beef-0000-000000000000\n`);
    expect(await staleSlots(d)).toEqual([0, 1]);
    const a = await claimSlot(d);
    const b = await claimSlot(d);
    expect([a.slot, b.slot]).toEqual([0, 1]);
    // Taken over: the lock now names this instance, and is not stale while we hold it.
    expect(lockOf(d, 0)).toMatch(/^\d+\n.*\ninstance=[0-9a-f-]{36}\n/);
    expect(lockOf(d, 0)).not.toContain('dead-beef');
    expect(await staleSlots(d)).toEqual([]);
    for (const s of [a, b]) await s.release();
  });

  it('a lock this process holds stays held, even read as a file (another copy of the module)', async () => {
    const d = dir();
    const a = await claimSlot(d);
    const text = lockOf(d, 0);
    // The same lock text in another slot, as a second module instance in this process would have written it.
    writeLock(d, 1, text);
    expect(await staleSlots(d)).toEqual([]);
    expect((await claimSlot(d)).slot).toBe(2);
    await a.release();
  });

  it.runIf(process.platform === 'linux')(
    'a live pid whose start time differs from the lock’s is a reused pid: stale',
    async () => {
      const d = dir();
      const parent = process.ppid;
      const stat = readFileSync(`/proc/${parent}/stat`, 'utf8');
      const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
      writeLock(d, 0, `${parent}\n2024-01-01T00:00:00.000Z\ninstance=x\nstart=${start}\n`);
      writeLock(d, 1, `${parent}\n2024-01-01T00:00:00.000Z\ninstance=x\nstart=1\n`);
      writeLock(d, 2, `${parent}\n2024-01-01T00:00:00.000Z\n`);
      expect(await staleSlots(d)).toEqual([1]);
    },
  );
});

describe('WAL slot races', () => {
  it('processes claiming the same slot at the same instant: exactly one gets it, every time', async () => {
    const slotModule = pathToFileURL(join(process.cwd(), 'dist', 'audit', 'slot.js')).href;
    const script = `
      const { tryClaim } = await import(${JSON.stringify(slotModule)});
      const [dir, at] = process.argv.slice(-2);
      while (Date.now() < Number(at)) {}
      const claimed = await tryClaim(dir, 0);
      process.stdout.write(claimed ? 'claimed\\n' : 'refused\\n');
      // Alive until every contender has answered: a live owner's lock is not stale (on a loaded
      // machine a contender may start after the others, and must still find the owner alive).
      process.stdin.resume();
      process.stdin.on('end', () => process.exit(0));
    `;
    for (let round = 0; round < 6; round++) {
      const d = dir();
      const at = Date.now() + 300;
      const spawned = Array.from({ length: 5 }, () =>
        spawn(process.execPath, ['--input-type=module', '-e', script, d, String(at)]),
      );
      const results = await Promise.all(
        spawned.map(
          (child) =>
            new Promise<string>((resolve) => {
              let out = '';
              child.stdout.on('data', (c: Buffer) => {
                out += c.toString();
                if (out.endsWith('\n')) resolve(out.trim());
              });
              child.on('close', () => resolve(out.trim()));
            }),
        ),
      );
      for (const child of spawned) child.stdin.end();
      expect([round, results.filter((r) => r === 'claimed').length]).toEqual([round, 1]);
    }
  });
});

describe('file sink', () => {
  it('rotates by size into names that sort before the live file; verify reads the whole set', async () => {
    const d = dir();
    const path = join(d, 'audit.jsonl');
    const log = await createAuditLog(auditConfig(d, { sinks: [{ file: { path, rotateBytes: 4096, batchSize: 8 } }] }), {
      logger: silentLogger(),
    });
    for (let i = 0; i < 100; i++) {
      log.record({ action: 'a.b', details: { i } });
      if (i % 10 === 0) await log.flush();
    }
    await log.close();
    const set = await rotationSet(path);
    expect(set.length).toBeGreaterThan(3);
    expect(set[set.length - 1]).toBe(path);
    expect(set.slice(0, -1).every((f) => /audit\.\d{8}T\d{9}Z\.jsonl$/.test(f))).toBe(true);
    const whole = await verifyAudit({ file: path }, { sealed: true });
    expect(whole.ok).toBe(true);
    expect(whole.chains[0]).toMatchObject({ firstN: 0, sealed: 'close' });
    // Only the live file: the chain starts mid-way, which is an error unless partial stores are allowed.
    expect((await verifyAudit({ file: path, rotated: false })).firstBad?.code).toBe('chain.head_missing');
    expect((await verifyAudit({ file: path, rotated: false }, { allowPartial: true })).ok).toBe(true);
  });

  it('a line torn by a crash is cut on open, and the resume point is the last whole record', async () => {
    const d = dir();
    const path = join(d, 'audit.jsonl');
    const entries = Array.from({ length: 6 }, (_, i) => ({
      index: i,
      line: JSON.stringify({ id: `e${i}`, n: i }),
      record: undefined,
    }));
    writeFileSync(path, `${entries[0]?.line}\n${entries[1]?.line}\n${entries[2]?.line.slice(0, 9)}`);
    const sink = new FileSink({ path, rotateBytes: 0, rotateIntervalMs: 0, batchSize: 10, sync: false });
    await sink.open();
    expect(statSync(path).size).toBe(`${entries[0]?.line}\n${entries[1]?.line}\n`.length);
    // The log starts the replay after the last whole record (given once).
    expect(sink.takeResumePoint()).toBe('e1');
    expect(sink.takeResumePoint()).toBeNull();
    await sink.write(entries.slice(2));
    await sink.close();
    expect(
      readFileSync(path, 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { id: string }).id),
    ).toEqual(['e0', 'e1', 'e2', 'e3', 'e4', 'e5']);
    truncateSync(path, 0);
  });
});
