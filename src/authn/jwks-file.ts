/**
 * A JWKS read from a local file and reloaded when it changes. The directory is
 * watched rather than the file: editors and Kubernetes ConfigMaps replace files by
 * rename or by swapping a symlink, which a watch on the file itself would miss.
 * When the path is a symlink into another directory, that directory is watched too
 * (changes to the target itself happen there). Events are debounced; a reload that
 * reads the same bytes is a no-op, and a file that is not a usable JWKS keeps the
 * previous keys.
 */
import { watch, type FSWatcher } from 'node:fs';
import { readFile, realpath, stat } from 'node:fs/promises';
import { hash } from 'node:crypto';
import { dirname } from 'node:path';
import type { JWSHeaderParameters } from 'jose';
import { KeyLookupError } from './failures.js';
import {
  JwkKeySet,
  JwksBackedSource,
  thenCandidates,
  type KeyCandidate,
  type KeyResolution,
  type SourceHooks,
} from './key-source.js';

/** A JWKS file is config, not traffic; this only guards against pointing at the wrong file. */
const MAX_FILE_BYTES = 16 * 1024 * 1024;
export const FILE_RELOAD_DEBOUNCE_MS = 100;

function found(candidates: readonly KeyCandidate[]): readonly KeyCandidate[] {
  if (candidates.length === 0) throw new KeyLookupError('jwt.unknown_kid', 'no matching key in the JWKS file');
  return candidates;
}

export class FileJwksKeySource extends JwksBackedSource {
  readonly kind = 'jwks_file' as const;
  readonly ready: Promise<void>;
  readonly path: string;
  private readonly hooks: SourceHooks;
  private readonly debounceMs: number;
  private watcher: FSWatcher | null = null;
  /** The directory of the file the path resolves to, when that is elsewhere, and its watcher. */
  private targetDir: string | null = null;
  private targetWatcher: FSWatcher | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private contentHash: string | null = null;
  /** Reloads run one after another, never interleaved. */
  private chain: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(path: string, hooks: SourceHooks, debounceMs = FILE_RELOAD_DEBOUNCE_MS) {
    super();
    this.path = path;
    this.hooks = hooks;
    this.debounceMs = debounceMs;
    this.ready = this.enqueue(true);
    // Awaited by compile's ready(); this keeps a failed first load from being an unhandled rejection.
    this.ready.catch(() => undefined);
    try {
      this.watcher = watch(dirname(path), { persistent: false }, () => this.schedule());
      this.watcher.on('error', (err) => this.reportError(err));
    } catch (err) {
      this.reportError(err);
    }
  }

  resolve(header: JWSHeaderParameters): KeyResolution {
    const keys = this.keys;
    if (keys === null) return this.resolveWhenLoaded(header);
    // No refetch here: a new key arrives by the file changing, which the watcher sees.
    return thenCandidates(keys.select(header), found);
  }

  /** Before the first load settled: wait for it (a failed one leaves no keys). */
  private async resolveWhenLoaded(header: JWSHeaderParameters): Promise<readonly KeyCandidate[]> {
    await this.ready.catch(() => undefined);
    const keys = this.keys;
    if (keys === null) throw new KeyLookupError('jwt.jwks_unavailable', `no usable JWKS in ${this.path}`);
    return found(await keys.select(header));
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = null;
    this.targetWatcher?.close();
    this.targetWatcher = null;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = null;
    this.clearListeners();
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = null;
      this.enqueue(false).catch(() => undefined);
    }, this.debounceMs);
    this.debounce.unref();
  }

  private enqueue(initial: boolean): Promise<void> {
    const next = this.chain.then(() => this.reload(initial));
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Watches the directory the path resolves into, if it is not the path's own (a symlink elsewhere). */
  private async followTarget(): Promise<void> {
    const real = await realpath(this.path).catch(() => null);
    const dir = real === null ? null : dirname(real);
    if (this.closed || dir === this.targetDir) return;
    this.targetWatcher?.close();
    this.targetWatcher = null;
    this.targetDir = dir;
    if (dir === null || dir === dirname(this.path)) return;
    try {
      this.targetWatcher = watch(dir, { persistent: false }, () => this.schedule());
      this.targetWatcher.on('error', (err) => this.reportError(err));
    } catch (err) {
      this.reportError(err);
    }
  }

  private async reload(initial: boolean): Promise<void> {
    if (this.closed) return;
    await this.followTarget();
    try {
      const info = await stat(this.path);
      if (info.size > MAX_FILE_BYTES) throw new Error(`${this.path} is larger than ${MAX_FILE_BYTES} bytes`);
      const text = await readFile(this.path, 'utf8');
      const digest = hash('sha256', text, 'base64');
      if (digest === this.contentHash) return;
      const set = await JwkKeySet.from(JSON.parse(text));
      if (this.closed) return;
      this.contentHash = digest;
      const changed = this.install(set);
      this.hooks.emit({
        type: 'keys_loaded',
        provider: this.hooks.provider,
        source: this.kind,
        keys: set.size,
        skipped: set.skipped,
        generation: this.generation,
        changed,
      });
    } catch (err) {
      // Keep serving the previous keys: a half-written or broken file must not lock everyone out.
      this.reportError(err);
      if (initial) throw err;
    }
  }

  private reportError(err: unknown): void {
    if (this.closed) return;
    this.hooks.emit({
      type: 'keys_error',
      provider: this.hooks.provider,
      source: this.kind,
      error: err instanceof Error ? err.message : String(err),
    });
  }
}
