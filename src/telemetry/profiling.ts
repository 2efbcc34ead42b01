/**
 * On-demand CPU profiles and heap snapshots through `node:inspector`, the Node
 * counterpart of Go's /debug/pprof. Outputs open as they are in Chrome DevTools
 * (Performance / Memory tabs) and in speedscope:
 *
 *   curl -o cpu.cpuprofile 'http://127.0.0.1:9901/debug/pprof/profile?seconds=10'
 *   curl -o heap.heapsnapshot http://127.0.0.1:9901/debug/pprof/heap
 *
 * One capture at a time per process: a second one would distort the first, and
 * a heap snapshot stops the world for seconds and needs about the heap's size
 * again in memory. In a cluster the admin listener lives on the primary, which
 * serves no traffic, so captures run in a worker (`?worker=<id>`, default the
 * lowest id; `worker=0` is the primary itself) that writes the result to a
 * private temp file the primary streams and deletes.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { getHeapSnapshot, writeHeapSnapshot } from 'node:v8';
import { BusyError } from './cluster.js';

export { BusyError };

/** V8's default is 1000 µs; the same here, stated so a profile's resolution does not depend on the Node version. */
const SAMPLING_INTERVAL_US = 1000;

export interface Capture {
  /** The bytes to send. */
  stream: Readable;
  /** Called once the response is over, sent or not (deletes temp files). */
  cleanup(): void;
}

/** One process's own profiler. */
export class LocalProfiler {
  private busy = false;

  get isBusy(): boolean {
    return this.busy;
  }

  /** A `.cpuprofile` (JSON) of this process over `seconds`; `signal` ends it early (the caller left). */
  async cpuProfile(seconds: number, signal?: AbortSignal): Promise<string> {
    this.acquire();
    const session = new Session();
    session.connect();
    try {
      await session.post('Profiler.enable');
      await session.post('Profiler.setSamplingInterval', { interval: SAMPLING_INTERVAL_US });
      await session.post('Profiler.start');
      await sleep(seconds * 1000, signal);
      const { profile } = await session.post('Profiler.stop');
      return JSON.stringify(profile);
    } finally {
      await session.post('Profiler.disable').catch(() => {});
      session.disconnect();
      this.busy = false;
    }
  }

  /** A heap snapshot of this process as a stream (V8 serializes it as the stream is read). */
  heapSnapshot(): Capture {
    this.acquire();
    let stream: Readable;
    try {
      stream = getHeapSnapshot();
    } catch (err) {
      this.busy = false;
      throw err;
    }
    return { stream, cleanup: () => void (this.busy = false) };
  }

  /** For a worker answering the primary: the profile in a private temp file. */
  async cpuProfileFile(seconds: number): Promise<string> {
    const text = await this.cpuProfile(seconds);
    const dir = await privateDir();
    const file = join(dir, 'cpu.cpuprofile');
    await writeFile(file, text, { mode: 0o600 });
    return file;
  }

  /** For a worker answering the primary: the snapshot written to a private temp file. */
  async heapSnapshotFile(): Promise<string> {
    this.acquire();
    try {
      const dir = await privateDir();
      // Synchronous by nature: V8 stops the world to take it, whichever API we use.
      return writeHeapSnapshot(join(dir, 'heap.heapsnapshot'));
    } finally {
      this.busy = false;
    }
  }

  private acquire(): void {
    if (this.busy) throw new BusyError('a profile or heap snapshot is already being taken');
    this.busy = true;
  }
}

/** A file a worker wrote, as a capture: streamed, then the file and its private directory removed. */
export function fileCapture(file: string): Capture {
  const stream = createReadStream(file);
  let cleaned = false;
  return {
    stream,
    cleanup: () => {
      if (cleaned) return;
      cleaned = true;
      stream.destroy();
      void rm(join(file, '..'), { recursive: true, force: true });
    },
  };
}

async function privateDir(): Promise<string> {
  // mkdtemp creates the directory 0700: other local users cannot read a heap full of secrets.
  return mkdtemp(join(tmpdir(), 'bulwark-profile-'));
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
