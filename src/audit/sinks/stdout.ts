/**
 * JSON lines on standard output, for containers whose log collector is the
 * audit store. No deduplication is possible: after a crash the replayed tail
 * appears twice (verify reports exact duplicates as such, not as tampering).
 */
import type { Writable } from 'node:stream';
import type { WalEntry } from '../wal.js';
import type { AuditSink } from './sink.js';

export class StdoutSink implements AuditSink {
  readonly name = 'stdout';
  readonly batchSize = 1024;
  readonly exactCursor = true;
  readonly #out: Writable;

  constructor(out: Writable = process.stdout) {
    this.#out = out;
  }

  async open(): Promise<void> {}

  write(batch: readonly WalEntry[]): Promise<void> {
    let text = '';
    for (const entry of batch) text += `${entry.line}\n`;
    // Resolve on the write callback: the data left this process (or the pipe is broken, which rejects).
    return new Promise((resolve, reject) => {
      this.#out.write(text, (error) => (error ? reject(error) : resolve()));
    });
  }

  async close(): Promise<void> {}
}
