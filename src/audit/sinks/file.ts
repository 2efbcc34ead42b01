/**
 * JSON lines file sink, the embedded default. Each line is a record exactly as
 * hashed. Rotation by size and/or age renames the live file to
 * `<name>.<UTC timestamp><ext>` (`audit.20261124T022301123Z.jsonl`), a name that
 * sorts before the live `audit.jsonl`, so `ls` order is chain order and
 * `audit verify --file audit.jsonl` finds the rotated files by itself.
 *
 * Idempotency: a file cannot `ON CONFLICT`, so on open the sink reads its last
 * line and hands that record's id to the log (`takeResumePoint`), which starts
 * the replay after it.
 */
import { access, mkdir, open, readdir, rename, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { entryBytes, writeAll, type WalEntry } from '../wal.js';
import type { AuditSink } from './sink.js';

export interface FileSinkOptions {
  path: string;
  rotateBytes: number;
  rotateIntervalMs: number;
  batchSize: number;
  /** fdatasync each batch before acknowledging it (durable mode). */
  sync: boolean;
}

const ROTATED_STAMP = /^\d{8}T\d{9}Z$/;

function stamp(date: Date): string {
  return date.toISOString().replace(/[-:.]/g, ''); // 20261124T022301123Z
}

function rotatedName(path: string, date: Date): string {
  const ext = extname(path);
  const base = ext === '' ? path : path.slice(0, -ext.length);
  return `${base}.${stamp(date)}${ext}`;
}

/** The rotated files of `path` (oldest first) followed by `path` itself when it exists. */
export async function rotationSet(path: string): Promise<string[]> {
  const dir = dirname(path);
  const ext = extname(path);
  const stem = basename(path).slice(0, ext === '' ? undefined : -ext.length);
  let names: string[] = [];
  try {
    names = await readdir(dir);
  } catch {
    return [path];
  }
  const rotated = names
    .filter((name) => {
      if (!name.startsWith(`${stem}.`) || (ext !== '' && !name.endsWith(ext))) return false;
      const middle = name.slice(stem.length + 1, ext === '' ? undefined : name.length - ext.length);
      return ROTATED_STAMP.test(middle);
    })
    .sort()
    .map((name) => join(dir, name));
  return names.includes(basename(path)) ? [...rotated, path] : rotated;
}

/** The last complete line of a file, or null (reads only the tail). */
async function lastLine(path: string): Promise<string | null> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch {
    return null;
  }
  try {
    const { size } = await handle.stat();
    let window = 64 * 1024;
    for (;;) {
      const start = Math.max(0, size - window);
      const buffer = Buffer.alloc(size - start);
      await handle.read(buffer, 0, buffer.length, start);
      const end = buffer.lastIndexOf(0x0a);
      if (end <= 0) return null;
      const begin = buffer.lastIndexOf(0x0a, end - 1) + 1;
      if (begin > 0 || start === 0) return buffer.toString('utf8', begin, end);
      window *= 4; // one line longer than the window
    }
  } finally {
    await handle.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

export class FileSink implements AuditSink {
  readonly name: string;
  readonly batchSize: number;
  readonly exactCursor = false;
  readonly #options: FileSinkOptions;
  #handle: FileHandle | null = null;
  #size = 0;
  #openedAt = 0;
  /** Inode of the open live file: a different one (or none) at the path means the file was removed or replaced. */
  #ino = 0;
  /** Stamp (ms) of the last rotated name: names are unique by it, so a rename never replaces a rotated file. */
  #rotatedAt = 0;
  /** Id of the last record already in the file when opened, until the log takes it. */
  #resumeAfter: string | null = null;

  constructor(options: FileSinkOptions) {
    this.#options = options;
    this.name = `file:${options.path}`;
    this.batchSize = options.batchSize;
  }

  async open(): Promise<void> {
    const path = this.#options.path;
    await mkdir(dirname(path), { recursive: true });
    const set = await rotationSet(path);
    // The live file may be empty right after a rotation: then the newest rotated file has the last record.
    for (let i = set.length - 1; i >= 0 && this.#resumeAfter === null; i--) {
      const line = await lastLine(set[i] as string);
      if (line === null) continue;
      try {
        const id = (JSON.parse(line) as { id?: unknown }).id;
        if (typeof id === 'string') this.#resumeAfter = id;
      } catch {
        // A torn last line (crash mid-append): nothing to resume after; it stays visible to verify.
      }
      break;
    }
    await this.#openLive();
  }

  async #openLive(): Promise<void> {
    const path = this.#options.path;
    // The directory may have been removed while running: recreate it rather than fail every retry.
    await mkdir(dirname(path), { recursive: true });
    this.#handle = await open(path, 'a', 0o640);
    const info = await this.#handle.stat();
    this.#ino = info.ino;
    this.#size = info.size;
    if (info.size > 0) {
      // A crash mid-append leaves a line without its newline: cut it (it was never acknowledged; the
      // WAL re-sends it) so the next record does not glue onto it.
      const last = Buffer.alloc(1);
      const reader = await open(path, 'r');
      try {
        await reader.read(last, 0, 1, info.size - 1);
        if (last[0] !== 0x0a) {
          const tail = Buffer.alloc(Math.min(info.size, 1 << 20));
          await reader.read(tail, 0, tail.length, info.size - tail.length);
          const cut = info.size - tail.length + tail.lastIndexOf(0x0a) + 1;
          await this.#handle.truncate(cut);
          this.#size = cut;
        }
      } finally {
        await reader.close();
      }
    }
    this.#openedAt = info.size === 0 ? Date.now() : Math.min(Date.now(), info.birthtimeMs || info.mtimeMs);
  }

  async #rotateIfDue(): Promise<void> {
    const { rotateBytes, rotateIntervalMs, path } = this.#options;
    const bySize = rotateBytes > 0 && this.#size >= rotateBytes;
    const byAge = rotateIntervalMs > 0 && this.#size > 0 && Date.now() - this.#openedAt >= rotateIntervalMs;
    if (!bySize && !byAge) return;
    const handle = this.#handle as FileHandle;
    await handle.datasync();
    await handle.close();
    this.#handle = null;
    // Two rotations within one millisecond (small rotateBytes, fast batches) would get the same name, and
    // rename() would silently replace the first rotated file: take the next free millisecond instead.
    let at = Math.max(Date.now(), this.#rotatedAt + 1);
    while (await exists(rotatedName(path, new Date(at)))) at++;
    await rename(path, rotatedName(path, new Date(at)));
    this.#rotatedAt = at;
    await this.#openLive();
  }

  /** Whether the open handle is still the file at the path (not removed, or renamed away by someone else). */
  async #stillLive(): Promise<boolean> {
    try {
      return (await stat(this.#options.path)).ino === this.#ino;
    } catch {
      return false;
    }
  }

  takeResumePoint(): string | null {
    const id = this.#resumeAfter;
    this.#resumeAfter = null;
    return id;
  }

  async write(batch: readonly WalEntry[]): Promise<void> {
    if (batch.length === 0) return;
    // Appending to a file that was deleted (or its directory) would acknowledge records nobody can read.
    if (this.#handle !== null && !(await this.#stillLive())) {
      await this.#handle.close().catch(() => {});
      this.#handle = null;
    }
    if (this.#handle === null) await this.#openLive();
    await this.#rotateIfDue();
    // The bytes the WAL wrote, as they are (a few views for a whole batch): one writev, no encoding.
    const data = entryBytes(batch);
    const handle = this.#handle as FileHandle;
    let written: number;
    try {
      written = await writeAll(handle, data);
      if (this.#options.sync) await handle.datasync();
    } catch (error) {
      // Keep lines whole: cut a partial append so the retry starts on a line boundary.
      await handle.truncate(this.#size).catch(() => {});
      throw error;
    }
    this.#size += written;
  }

  async close(): Promise<void> {
    if (this.#handle === null) return;
    await this.#handle.datasync().catch(() => {});
    await this.#handle.close();
    this.#handle = null;
  }
}
