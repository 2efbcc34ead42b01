/**
 * WAL slots: each process writing audit events owns one `slot-N` directory
 * under `wal.dir` (its WAL segments, its sink cursors), so workers never share
 * a WAL and each has its own chain. Cluster workers get a new id on every
 * restart, so slots are claimed by lock file instead: the first slot whose lock
 * is absent or held by a dead process. A restarted worker therefore picks up the
 * slot its crashed predecessor left — and replays it.
 *
 * The lock holds the owner's pid and an instance token (random, one per process);
 * "dead" is `kill(pid, 0)` failing with ESRCH, which is only meaningful on one host:
 * keep `wal.dir` on a local disk. The pid alone does not identify a process: a
 * restarted container's gateway is often PID 1 again, like its dead predecessor. So a
 * lock carrying our own pid but not our token (or no token: a lock from before tokens)
 * is a dead predecessor's, hence stale, and one whose pid is alive but whose recorded
 * process start time (Linux) differs from that pid's is a reused pid, hence stale too.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

export interface ClaimedSlot {
  readonly slot: number;
  readonly dir: string;
  release(): Promise<void>;
}

const MAX_SLOTS = 1024;

/**
 * This process's instance token. Kept on `process` so that two copies of this module in one
 * process (a bundle and its source, say) agree on it: a lock one copy holds is held here.
 */
const INSTANCE: string = (() => {
  const key = Symbol.for('bulwark.audit.slotInstance');
  const holder = process as unknown as Record<symbol, string | undefined>;
  return (holder[key] ??= randomUUID());
})();

/** A process's start time in clock ticks since boot (Linux), null where unknown. */
function startTime(pid: number | 'self'): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) is in parentheses and may hold spaces; starttime is field 22.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

const SELF_START = startTime('self');

function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, it is just not ours to signal.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Slots held by this process (several audit logs in one process, e.g. tests): never "stale". */
const heldHere = new Set<string>();

/** What a lock file says about its owner; `raw` is the whole text (to recognise the same file again). */
interface LockOwner {
  /** -1 for an empty or garbled lock (its owner died while writing it): not alive, so stale. */
  pid: number;
  /** Absent in locks written before instance tokens. */
  instance: string | null;
  start: string | null;
  raw: string;
}

function parseLock(raw: string): LockOwner {
  const lines = raw.split('\n');
  const pid = Number.parseInt(lines[0] ?? '', 10);
  const field = (name: string) => {
    const line = lines.find((l) => l.startsWith(`${name}=`));
    return line === undefined ? null : line.slice(name.length + 1);
  };
  return { pid: Number.isNaN(pid) ? -1 : pid, instance: field('instance'), start: field('start'), raw };
}

async function readLock(path: string): Promise<LockOwner | null> {
  try {
    return parseLock(await readFile(path, 'utf8'));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

/**
 * Whether the lock's owner is gone. Our own pid is ours only with our token: otherwise the
 * lock is a predecessor's that had the same pid (a restarted container's PID 1). Another pid
 * is gone when no process has it, or (Linux) when the one that has it started at another time.
 */
function stale(owner: LockOwner): boolean {
  if (owner.pid === process.pid) return owner.instance !== INSTANCE;
  if (!alive(owner.pid)) return true;
  if (owner.start === null) return false;
  const now = startTime(owner.pid);
  return now !== null && now !== owner.start;
}

function lockText(): string {
  const start = SELF_START === null ? '' : `start=${SELF_START}\n`;
  return `${process.pid}\n${new Date().toISOString()}\ninstance=${INSTANCE}\n${start}`;
}

/**
 * Creates the lock with its pid already in it: written to a private file first, then linked
 * into place (atomic, and EEXIST when taken). A lock created empty and filled after would,
 * for a moment, read as "owner died while writing it" to a racing process, which would then
 * take it over: two writers on one WAL.
 */
async function tryCreate(lockPath: string): Promise<boolean> {
  const draft = `${lockPath}.draft-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const handle = await open(draft, 'wx', 0o600);
  try {
    await handle.writeFile(lockText());
  } finally {
    await handle.close();
  }
  try {
    await link(draft, lockPath);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    await unlink(draft).catch(() => {});
  }
}

/**
 * Takes over a lock whose owner is dead. The rename is atomic, so of two
 * processes racing for the same stale lock one gets ENOENT; the other checks it
 * renamed the stale lock it inspected (not a fresh one a third process just
 * created) and puts a fresh one back if not.
 */
async function takeOver(lockPath: string, staleLock: LockOwner): Promise<boolean> {
  const aside = `${lockPath}.stale-${process.pid}-${Date.now()}`;
  try {
    await rename(lockPath, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
  const moved = await readLock(aside);
  if (moved?.raw !== staleLock.raw) {
    await link(aside, lockPath).catch(() => {});
    await unlink(aside).catch(() => {});
    return false;
  }
  await unlink(aside).catch(() => {});
  return tryCreate(lockPath);
}

export async function claimSlot(baseDir: string, startAt = 0): Promise<ClaimedSlot> {
  await mkdir(baseDir, { recursive: true });
  for (let slot = startAt; slot < MAX_SLOTS; slot++) {
    const claimed = await tryClaim(baseDir, slot);
    if (claimed !== null) return claimed;
  }
  throw new Error(`no free audit WAL slot under ${baseDir} (${MAX_SLOTS} in use)`);
}

/** Claims `slot-<slot>` if it is free or its owner is dead; null when someone holds it. */
export async function tryClaim(baseDir: string, slot: number): Promise<ClaimedSlot | null> {
  const dir = join(baseDir, `slot-${slot}`);
  if (heldHere.has(dir)) return null;
  await mkdir(dir, { recursive: true });
  const lockPath = join(dir, 'lock');
  let claimed = await tryCreate(lockPath);
  if (!claimed) {
    const owner = await readLock(lockPath);
    if (owner === null) claimed = await tryCreate(lockPath);
    else if (stale(owner)) claimed = await takeOver(lockPath, owner);
  }
  if (!claimed) return null;
  heldHere.add(dir);
  return {
    slot,
    dir,
    release: async () => {
      heldHere.delete(dir);
      await unlink(lockPath).catch(() => {});
    },
  };
}

/** Slots under `baseDir` whose owner is gone (for draining orphans left by a worker count that shrank). */
export async function staleSlots(baseDir: string): Promise<number[]> {
  let names: string[];
  try {
    names = await readdir(baseDir);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const name of names) {
    const m = /^slot-(\d+)$/.exec(name);
    if (m === null) continue;
    const dir = join(baseDir, name);
    if (heldHere.has(dir)) continue;
    const owner = await readLock(join(dir, 'lock'));
    if (owner === null || stale(owner)) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}
