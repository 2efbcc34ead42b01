/**
 * The write-ahead log of one slot: append-only segment files of JSON lines
 * (`wal-<first index, 20 digits>.jsonl`), the final records exactly as sinks
 * get them. Entries are numbered from 0 for the life of the slot (across
 * restarts); a segment covers [its first index, the next segment's first index).
 *
 * - `append()` writes a batch of entries with one `writev` (and one fdatasync
 *   when asked): group commit is the caller batching entries between calls.
 *   A WAL opened `dsync` (durable mode, where every append is synced) opens its
 *   segments O_DSYNC instead: the `writev` returns once its data is on disk, as
 *   write + fdatasync would, in one thread-pool round trip instead of two.
 *   Entries are serialized straight into byte chunks (`LineChunks`), so the
 *   batch goes from those bytes to the file, and on to byte-writing sinks,
 *   without a string per line held on the JS heap in between.
 * - A segment is deleted once every sink has taken all of it. A restart must
 *   still find the previous chain's last record (to seal it and link the new
 *   chain to it): when no segment would hold a record any more, that record is
 *   saved to `head.json` first.
 * - On open, a torn tail (a crash mid-write) is cut back to the last complete,
 *   parseable line: those bytes were never acknowledged (durable mode
 *   acknowledges after fdatasync, which covers whole batches).
 * - Segments are valid audit JSONL: `bulwark audit verify --file` reads them.
 */
import { constants } from 'node:fs';
import { open, readdir, readFile, rename, stat, truncate, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { IndexedColumns } from './sinks/sink.js';

export interface WalEntry {
  readonly index: number;
  readonly line: string;
  /** The parsed line, when something needed it (parsed lazily: most sinks only need the line). */
  record: Record<string, unknown> | undefined;
  /** The SQL stores' indexed columns, taken when the record was built (saves parsing the line again). */
  columns?: IndexedColumns | undefined;
  /**
   * Where the line's UTF-8 bytes already are, when it was built in this process: `buffer[start, end)`,
   * its newline at `end`. Sinks that write bytes copy these rather than encode `line` again.
   */
  readonly buffer?: Buffer | undefined;
  readonly start?: number | undefined;
  readonly end?: number | undefined;
}

/**
 * An entry whose line is bytes: serialized into a chunk of `LineChunks` (its
 * index set when the WAL takes it), or read back from a segment. The `line`
 * string is only made if a sink asks for it (a file sink writes the bytes).
 */
export class ChunkEntry implements WalEntry {
  index = -1;
  record: Record<string, unknown> | undefined = undefined;
  readonly columns: IndexedColumns | undefined;
  readonly buffer: Buffer;
  readonly start: number;
  readonly end: number;
  #line: string | undefined = undefined;

  constructor(buffer: Buffer, start: number, end: number, columns: IndexedColumns | undefined) {
    this.buffer = buffer;
    this.start = start;
    this.end = end;
    this.columns = columns;
  }

  get line(): string {
    this.#line ??= this.buffer.toString('utf8', this.start, this.end);
    return this.#line;
  }

  /** Bytes on disk, newline included. */
  get size(): number {
    return this.end - this.start + 1;
  }
}

interface Segment {
  readonly first: number;
  readonly path: string;
  bytes: number;
}

const SEGMENT = /^wal-(\d{20})\.jsonl$/;
const READ_CHUNK = 1 << 20;
/** The last record, saved when the last segment holding records is deleted. */
const HEAD_FILE = 'head.json';

function segmentName(first: number): string {
  return `wal-${String(first).padStart(20, '0')}.jsonl`;
}

function parseRecord(line: string): Record<string, unknown> | null {
  if (line.length === 0 || line.charCodeAt(0) !== 0x7b /* { */) return null;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** Chunk size: many records per chunk, so a commit is a handful of `writev` vectors. */
const CHUNK_BYTES = 1 << 20;

/**
 * Where records are serialized: append-only byte chunks. A chunk is never
 * reused — entries handed to sinks keep theirs alive and stay valid however long
 * a sink holds them; a chunk is freed by GC once no entry refers to it. Being
 * off the JS heap, the bytes cost the collector nothing while they wait for
 * the WAL and the sinks (a string per line did: long-lived young objects are
 * what makes scavenges expensive).
 */
export class LineChunks {
  readonly #size: number;
  #buffer: Buffer;
  #used = 0;

  constructor(size = CHUNK_BYTES) {
    this.#size = size;
    this.#buffer = Buffer.allocUnsafeSlow(size);
  }

  /** A buffer with at least `bytes` free from `offset`: the current chunk, or a fresh one. */
  room(bytes: number): Buffer {
    if (this.#used + bytes > this.#buffer.length) {
      this.#buffer = Buffer.allocUnsafeSlow(Math.max(this.#size, bytes));
      this.#used = 0;
    }
    return this.#buffer;
  }

  /** Where the next line starts in the buffer `room()` returned. */
  get offset(): number {
    return this.#used;
  }

  /** Takes the line written at `offset` up to its newline at `newline` (both in the buffer `room()` returned). */
  take(newline: number, columns: IndexedColumns | undefined): ChunkEntry {
    const entry = new ChunkEntry(this.#buffer, this.#used, newline, columns);
    this.#used = newline + 1;
    return entry;
  }

  /** A line given as text (no newline). */
  line(text: string): ChunkEntry {
    // Worst case 3 bytes per UTF-16 unit (a surrogate pair is 4 bytes for 2 units): never a partial write.
    const buffer = this.room(text.length * 3 + 1);
    const end = this.#used + buffer.write(text, this.#used, 'utf8');
    buffer[end] = 0x0a;
    return this.take(end, undefined);
  }
}

/**
 * The bytes of `entries`, newlines included, as few buffers as possible:
 * adjacent lines of one chunk are one view; lines without bytes (read back from
 * disk) are encoded.
 */
export function entryBytes(entries: readonly WalEntry[]): Buffer[] {
  const out: Buffer[] = [];
  let buffer: Buffer | undefined;
  let start = 0;
  let end = 0;
  let text = '';
  for (const entry of entries) {
    if (entry.buffer === undefined) {
      if (buffer !== undefined) out.push(buffer.subarray(start, end));
      buffer = undefined;
      text += `${entry.line}\n`;
      continue;
    }
    if (text !== '') {
      out.push(Buffer.from(text, 'utf8'));
      text = '';
    }
    if (entry.buffer === buffer && entry.start === end) {
      end = (entry.end as number) + 1;
      continue;
    }
    if (buffer !== undefined) out.push(buffer.subarray(start, end));
    buffer = entry.buffer;
    start = entry.start as number;
    end = (entry.end as number) + 1;
  }
  if (buffer !== undefined) out.push(buffer.subarray(start, end));
  if (text !== '') out.push(Buffer.from(text, 'utf8'));
  return out;
}

/** Linux's IOV_MAX: more vectors per call fail with EINVAL. */
const IOV_MAX = 1024;

/** Writes every buffer (a `writev` may be short: it continues where the last one stopped); returns the bytes written. */
export async function writeAll(handle: FileHandle, buffers: readonly Buffer[]): Promise<number> {
  let list = buffers.filter((b) => b.length > 0);
  let total = 0;
  while (list.length > 0) {
    const { bytesWritten } = await handle.writev(list.length > IOV_MAX ? list.slice(0, IOV_MAX) : list);
    if (bytesWritten <= 0) throw new Error('write made no progress');
    total += bytesWritten;
    let skip = bytesWritten;
    let i = 0;
    while (i < list.length && skip >= (list[i] as Buffer).length) skip -= (list[i++] as Buffer).length;
    list = list.slice(i);
    if (skip > 0) list[0] = (list[0] as Buffer).subarray(skip);
  }
  return total;
}

export class Wal {
  readonly dir: string;
  readonly segmentBytes: number;
  #segments: Segment[] = [];
  #handle: FileHandle | null = null;
  #next = 0;
  /** The last record line found on open (or in head.json): the previous chain's last word on restart. */
  #lastLine: string | null = null;
  #lastLineAtOpen: string | null = null;
  #lastSync = 0;
  /** The last entry appended, whose line is decoded only if `head.json` needs it. */
  #lastEntry: WalEntry | null = null;
  /** write, rotate, release, sync and close share one file handle: they run one at a time. */
  #queue: Promise<unknown> = Promise.resolve();

  /** Every write synced by the kernel (O_DSYNC): an append needs no fdatasync of its own. */
  readonly dsync: boolean;
  readonly #appendFlags: string | number;

  private constructor(dir: string, segmentBytes: number, dsync: boolean) {
    this.dir = dir;
    this.segmentBytes = segmentBytes;
    // Where the platform has no O_DSYNC (Windows), appends fdatasync as before.
    this.dsync = dsync && typeof constants.O_DSYNC === 'number' && constants.O_DSYNC !== 0;
    this.#appendFlags = this.dsync ? constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_DSYNC : 'a';
  }

  static async open(dir: string, segmentBytes: number, options: { dsync?: boolean } = {}): Promise<Wal> {
    const wal = new Wal(dir, segmentBytes, options.dsync === true);
    await wal.#load();
    return wal;
  }

  #exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(work, work);
    this.#queue = run.catch(() => {});
    return run;
  }

  /** Index the next appended entry gets. */
  get nextIndex(): number {
    return this.#next;
  }

  /** Oldest entry still on disk. */
  get firstIndex(): number {
    return this.#segments[0]?.first ?? this.#next;
  }

  get bytes(): number {
    let total = 0;
    for (const s of this.#segments) total += s.bytes;
    return total;
  }

  get segmentCount(): number {
    return this.#segments.length;
  }

  /** The last record found on open (previous process's last word), or null for a new WAL. */
  get lastLineAtOpen(): string | null {
    return this.#lastLineAtOpen;
  }

  async #load(): Promise<void> {
    const names = (await readdir(this.dir)).filter((n) => SEGMENT.test(n)).sort();
    for (const name of names) {
      const first = Number((SEGMENT.exec(name) as RegExpExecArray)[1]);
      const path = join(this.dir, name);
      this.#segments.push({ first, path, bytes: (await stat(path)).size });
    }
    // Walk back from the newest segment to the newest one holding a record.
    for (let i = this.#segments.length - 1; i >= 0; i--) {
      const segment = this.#segments[i] as Segment;
      const { count, lastLine, validBytes } = await this.#scan(segment);
      if (validBytes < segment.bytes) {
        await truncate(segment.path, validBytes);
        segment.bytes = validBytes;
      }
      if (i === this.#segments.length - 1) this.#next = segment.first + count;
      if (lastLine !== null) {
        this.#lastLine = lastLine;
        break;
      }
    }
    // Every segment was delivered and deleted: the last record was saved aside before the last deletion.
    if (this.#lastLine === null) {
      try {
        const head = JSON.parse(await readFile(join(this.dir, HEAD_FILE), 'utf8')) as { line?: unknown };
        if (typeof head.line === 'string') this.#lastLine = head.line;
      } catch {
        // a new WAL
      }
    }
    this.#lastLineAtOpen = this.#lastLine;
    if (this.#segments.length === 0) await this.#startSegment(0);
    else this.#handle = await open((this.#segments[this.#segments.length - 1] as Segment).path, this.#appendFlags);
  }

  /** Complete, parseable lines of a segment; what follows the last of them is a torn write. */
  async #scan(segment: Segment): Promise<{ count: number; lastLine: string | null; validBytes: number }> {
    if (segment.bytes === 0) return { count: 0, lastLine: null, validBytes: 0 };
    const handle = await open(segment.path, 'r');
    try {
      const buffer = Buffer.alloc(segment.bytes);
      await handle.read(buffer, 0, segment.bytes, 0);
      let end = buffer.lastIndexOf(0x0a) + 1; // bytes up to and including the last newline
      // A power loss can leave a complete-looking line of zeros or garbage: drop unparseable trailing lines.
      for (;;) {
        if (end === 0) return { count: 0, lastLine: null, validBytes: 0 };
        const start = buffer.lastIndexOf(0x0a, end - 2) + 1;
        const line = buffer.toString('utf8', start, end - 1);
        if (parseRecord(line) !== null) {
          let count = 0;
          for (let i = buffer.indexOf(0x0a); i !== -1 && i < end; i = buffer.indexOf(0x0a, i + 1)) count++;
          return { count, lastLine: line, validBytes: end };
        }
        end = start;
      }
    } finally {
      await handle.close();
    }
  }

  async #startSegment(first: number): Promise<void> {
    const path = join(this.dir, segmentName(first));
    this.#handle = await open(path, this.#appendFlags);
    this.#segments.push({ first, path, bytes: 0 });
  }

  /** Closes the active segment (synced: it is never written again) and starts the next. */
  async #rotate(): Promise<void> {
    const handle = this.#handle as FileHandle;
    await handle.datasync();
    await handle.close();
    this.#handle = null;
    await this.#startSegment(this.#next);
  }

  /** Appends lines (each one record, no newline) as entries `nextIndex…`; see `append`. */
  write(lines: readonly string[], sync: boolean): Promise<number> {
    const chunks = new LineChunks(64 * 1024);
    return this.append(
      lines.map((line) => chunks.line(line)),
      sync,
    );
  }

  /**
   * Appends entries as `nextIndex…` (setting their `index`): one `writev` of
   * their bytes, then one fdatasync when `sync`. On a failed write the segment
   * is cut back to where it was, so a retry never leaves half a batch behind
   * it; the error is rethrown and the entries keep `index` -1.
   */
  append(entries: readonly ChunkEntry[], sync: boolean): Promise<number> {
    return this.#exclusive(async () => {
      if (entries.length === 0) return this.#next;
      if ((this.#segments[this.#segments.length - 1] as Segment).bytes >= this.segmentBytes) await this.#rotate();
      const segment = this.#segments[this.#segments.length - 1] as Segment;
      const handle = this.#handle as FileHandle;
      const before = segment.bytes;
      let written: number;
      try {
        written = await writeAll(handle, entryBytes(entries));
        if (sync && !this.dsync) await handle.datasync();
      } catch (error) {
        await handle.truncate(before).catch(() => {});
        throw error;
      }
      if (sync || this.dsync) this.#lastSync = Date.now();
      segment.bytes += written;
      const first = this.#next;
      for (let i = 0; i < entries.length; i++) (entries[i] as ChunkEntry).index = first + i;
      this.#next += entries.length;
      this.#lastEntry = entries[entries.length - 1] as ChunkEntry;
      return first;
    });
  }

  /** ms since the last fdatasync (for `fast` mode's periodic sync). */
  get sinceSync(): number {
    return Date.now() - this.#lastSync;
  }

  sync(): Promise<void> {
    return this.#exclusive(async () => {
      if (this.#handle !== null) await this.#handle.datasync();
      this.#lastSync = Date.now();
    });
  }

  /**
   * Deletes segments every reader is past (`minCursor`: the lowest index any
   * reader still needs); returns the bytes freed. A fully delivered active
   * segment past `segmentBytes` is rotated first, so it can go too — otherwise
   * one large commit could pin the WAL at its quota. Before the last segment
   * holding records is deleted, its last record is saved to `head.json`.
   */
  release(minCursor: number): Promise<number> {
    return this.#exclusive(async () => {
      const active = this.#segments[this.#segments.length - 1] as Segment;
      if (minCursor >= this.#next && active.bytes >= this.segmentBytes) await this.#rotate();
      let freed = 0;
      while (this.#segments.length > 1) {
        const oldest = this.#segments[0] as Segment;
        if (minCursor < (this.#segments[1] as Segment).first) break;
        if (this.#segments.slice(1).every((s) => s.bytes === 0)) await this.#saveHead();
        await unlink(oldest.path).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'ENOENT') throw error;
        });
        freed += oldest.bytes;
        this.#segments.shift();
      }
      return freed;
    });
  }

  async #saveHead(): Promise<void> {
    const line = this.#lastEntry?.line ?? this.#lastLine;
    if (line === null) return;
    const path = join(this.dir, HEAD_FILE);
    const handle = await open(`${path}.tmp`, 'w');
    try {
      await handle.writeFile(JSON.stringify({ line }));
      await handle.datasync();
    } finally {
      await handle.close();
    }
    await rename(`${path}.tmp`, path);
  }

  /** A sequential reader from `index` (for sinks that fell behind the in-memory tail, and replay). */
  reader(index: number): WalReader {
    return new WalReader(this, index);
  }

  /** @internal Segment holding `index`, or null when it was deleted. */
  segmentFor(index: number): Segment | null {
    const segments = this.#segments;
    for (let i = segments.length - 1; i >= 0; i--) {
      const s = segments[i] as Segment;
      if (s.first <= index) return s;
    }
    return null;
  }

  close(): Promise<void> {
    return this.#exclusive(async () => {
      if (this.#handle === null) return;
      await this.#handle.datasync().catch(() => {});
      await this.#handle.close();
      this.#handle = null;
    });
  }
}

/**
 * Reads committed entries back in order. Keeps its byte position, so
 * catching up is one sequential pass; starting mid-segment costs one scan of
 * that segment's head.
 */
export class WalReader {
  readonly #wal: Wal;
  #index: number;
  /**
   * Indexes of lines passed over because they are not JSON records (bytes corrupted on disk). Their
   * content is gone; handing them on would fail every batch holding them, forever (SQL stores need the
   * id, a webhook body must stay JSON), and stall the sink — and so the WAL and the gateway — behind them.
   * The caller reports and clears these.
   */
  readonly skipped: number[] = [];
  #segment: Segment | null = null;
  #offset = 0;

  constructor(wal: Wal, index: number) {
    this.#wal = wal;
    this.#index = index;
  }

  get index(): number {
    return this.#index;
  }

  /** Up to `max` entries from the current position, none at or beyond `limit` (the committed end). */
  async read(max: number, limit: number): Promise<WalEntry[]> {
    const out: WalEntry[] = [];
    while (out.length < max && this.#index < limit) {
      const segment = this.#wal.segmentFor(this.#index);
      if (segment === null) throw new Error(`audit WAL entry ${this.#index} is no longer on disk`);
      if (segment !== this.#segment) {
        this.#segment = segment;
        this.#offset = 0;
        // Skip from the segment's start to our index.
        const skip = this.#index - segment.first;
        if (skip > 0) this.#offset = await this.#skipLines(segment, skip);
      }
      const consumed = await this.#readLines(segment, Math.min(max - out.length, limit - this.#index), out);
      if (consumed === 0) {
        // End of this segment: move to the next (its first is our index), or stop when there is none yet.
        const next = this.#wal.segmentFor(this.#index);
        if (next === segment) break;
      }
    }
    return out;
  }

  async #skipLines(segment: Segment, count: number): Promise<number> {
    const handle = await open(segment.path, 'r');
    try {
      const buffer = Buffer.alloc(READ_CHUNK);
      let offset = 0;
      let remaining = count;
      while (remaining > 0) {
        const { bytesRead } = await handle.read(buffer, 0, READ_CHUNK, offset);
        if (bytesRead === 0) throw new Error(`audit WAL segment ${segment.path} ends before entry ${segment.first + count}`);
        let i = -1;
        let consumed = 0;
        while (remaining > 0 && (i = buffer.indexOf(0x0a, i + 1)) !== -1 && i < bytesRead) {
          remaining--;
          consumed = i + 1;
        }
        offset += remaining === 0 ? consumed : bytesRead;
      }
      return offset;
    } finally {
      await handle.close();
    }
  }

  /** Reads up to `max` lines into `out` (leaving out unparseable ones, see `skipped`); returns the lines consumed. */
  async #readLines(segment: Segment, max: number, out: WalEntry[]): Promise<number> {
    const handle = await open(segment.path, 'r');
    try {
      let got = 0;
      let size = READ_CHUNK;
      while (got < max) {
        // Its own memory (never the shared pool): the entries made from it keep it.
        const buffer = Buffer.allocUnsafeSlow(size);
        const { bytesRead } = await handle.read(buffer, 0, size, this.#offset);
        if (bytesRead === 0) break;
        let start = 0;
        let nl = buffer.indexOf(0x0a, start);
        while (got < max && nl !== -1 && nl < bytesRead) {
          // The line stays bytes until a sink asks for the string (a file sink writes the bytes as they are).
          const entry = new ChunkEntry(buffer, start, nl, undefined);
          entry.index = this.#index;
          // Parsed once here (SQL sinks and the file sink's resume need the record anyway): a corrupted
          // line is found before any sink is handed it.
          const record = parseRecord(entry.line);
          if (record === null) this.skipped.push(this.#index);
          else {
            entry.record = record;
            out.push(entry);
          }
          this.#index++;
          got++;
          start = nl + 1;
          nl = buffer.indexOf(0x0a, start);
        }
        this.#offset += start;
        if (start === 0) {
          if (bytesRead < size) break; // only a partial line on disk: nothing more committed here
          size *= 2; // one line longer than the buffer
        }
      }
      return got;
    } finally {
      await handle.close();
    }
  }
}
