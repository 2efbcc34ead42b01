/**
 * WAL slots: each process writing audit events owns one `slot-N` directory
 * under `wal.dir` (its WAL segments, its sink cursors), so workers never share
 * a WAL and each has its own chain. Cluster workers get a new id on every
 * restart, so slots are claimed by lock file instead: the first slot whose lock
 * is absent or held by a dead process. A restarted worker therefore picks up the
 * slot its crashed predecessor left — and replays it.
 *
 * The lock holds the owner's pid; "dead" is `kill(pid, 0)` failing with ESRCH,
 * which is only meaningful on one host: keep `wal.dir` on a local disk.
 */
import { link, mkdir, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

export interface ClaimedSlot {
  readonly slot: number;
  readonly dir: string;
  release(): Promise<void>;
}

const MAX_SLOTS = 1024;

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

async function readPid(path: string): Promise<number | null> {
  try {
    // An empty or garbled lock (its owner died while writing it) reads as -1: not alive, so stale.
    const pid = Number.parseInt((await readFile(path, 'utf8')).split('\n', 1)[0] ?? '', 10);
    return Number.isNaN(pid) ? -1 : pid;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
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
    await handle.writeFile(`${process.pid}\n${new Date().toISOString()}\n`);
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
async function takeOver(lockPath: string, stalePid: number): Promise<boolean> {
  const aside = `${lockPath}.stale-${process.pid}-${Date.now()}`;
  try {
    await rename(lockPath, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
  const moved = await readPid(aside);
  if (moved !== stalePid) {
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
    const pid = await readPid(lockPath);
    if (pid === null) claimed = await tryCreate(lockPath);
    else if (pid !== process.pid && !alive(pid)) claimed = await takeOver(lockPath, pid);
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
    const pid = await readPid(join(dir, 'lock'));
    if (pid === null || (pid !== process.pid && !alive(pid))) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}
