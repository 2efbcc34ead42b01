/**
 * A listener's certificate, key and CA as one unit that can be swapped while the listener runs:
 * certificates are renewed far more often than gateways are restarted (ACME every 60 days,
 * cert-manager's mounted secrets), and a renewal must neither need a restart nor, when the files
 * are caught half-written, take a working certificate away.
 */
import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import { watchDirectories } from '../core/watch.js';

type TlsConfig = NonNullable<ListenerConfig['tls']>;

export type TlsErrorCode = 'tls.file_unreadable' | 'tls.invalid' | 'tls.outside_validity';

/** Files that cannot serve: which one (when known), and why, as a stable code. */
export class TlsMaterialError extends Error {
  readonly code: TlsErrorCode;
  readonly file: string | null;

  constructor(code: TlsErrorCode, file: string | null, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TlsMaterialError';
    this.code = code;
    this.file = file;
  }
}

export interface TlsMaterial {
  /** SHA-256 over the files' bytes: a reload re-reading unchanged files swaps nothing. */
  readonly fingerprint: string;
  readonly options: SecureContextOptions;
  /** The leaf certificate's expiry (epoch ms). */
  readonly notAfter: number;
}

function read(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new TlsMaterialError('tls.file_unreadable', file, `cannot read ${file} (${code})`, { cause: err });
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** Each check names the file it read, so an operator knows which one a renewal left broken. */
function check<T>(file: string | null, what: string, work: () => T): T {
  try {
    return work();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new TlsMaterialError('tls.invalid', file, `${file ?? what}: ${what}: ${message}`, { cause: err });
  }
}

/**
 * Reads and checks the files: a certificate and a key that parse and match (what
 * `createSecureContext` verifies), a CA bundle of certificates that parse (OpenSSL itself
 * skips what it cannot read, so a bundle caught mid-write would pass). `swap`: the material
 * replaces a running certificate, which an expired or not yet valid one must not do.
 * Throws TlsMaterialError.
 */
export function loadTlsMaterial(tls: TlsConfig, options: { swap?: boolean; now?: number } = {}): TlsMaterial {
  const cert = read(tls.cert);
  const key = read(tls.key);
  const ca = tls.ca === undefined ? undefined : read(tls.ca);
  const leaf = check(tls.cert, 'certificate', () => new X509Certificate(cert));
  check(tls.key, 'private key', () => createPrivateKey(key));
  if (ca !== undefined) {
    const blocks = ca.toString('latin1').match(PEM_CERTIFICATE) ?? [];
    check(tls.ca!, 'CA bundle', () => {
      if (blocks.length === 0) throw new Error('no PEM certificate');
      for (const block of blocks) new X509Certificate(block);
    });
  }
  const context: SecureContextOptions = ca === undefined ? { cert, key } : { cert, key, ca };
  // Both parse: what is left is the pair itself, the usual half-renewed state (a new certificate, the old key).
  check(null, `${tls.cert} / ${tls.key}`, () => createSecureContext(context));
  const notAfter = Date.parse(leaf.validTo);
  const now = options.now ?? Date.now();
  if (options.swap === true && (notAfter <= now || Date.parse(leaf.validFrom) > now))
    throw new TlsMaterialError(
      'tls.outside_validity',
      tls.cert,
      `${tls.cert}: valid from ${leaf.validFrom} to ${leaf.validTo}, not now: the running certificate stays`,
    );
  const hash = createHash('sha256').update(cert).update('\0').update(key);
  if (ca !== undefined) hash.update('\0').update(ca);
  return { fingerprint: hash.digest('hex'), options: context, notAfter };
}

/** What identifies a file's content without reading it (through symlinks: a relinked target shows). */
function signature(file: string): string {
  try {
    const st = statSync(file);
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'error';
  }
}

/**
 * Calls `onChange` when the files may have changed. Change events on their directories make it
 * prompt; they are not filtered by name (Kubernetes swaps a mounted secret by relinking `..data`,
 * so the file names never show up; the fingerprint tells a real change). Events alone miss
 * cases — a directory deleted and recreated or relinked leaves its watch on the old one, a busy
 * directory keeps a debounce waiting — so the files are also checked every `pollMs` (a stat
 * each), and a change found that way re-arms the watches.
 */
export function watchTlsFiles(
  tls: TlsConfig,
  onChange: () => void,
  options: { debounceMs?: number; pollMs?: number } = {},
): () => void {
  const files = [tls.cert, tls.key, ...(tls.ca === undefined ? [] : [tls.ca])];
  const debounceMs = options.debounceMs ?? 200;
  const arm = () =>
    watchDirectories(
      files.map((f) => dirname(f)),
      onChange,
      { debounceMs },
    );
  let unwatch = arm();
  let seen = files.map(signature).join('|');
  const poll = setInterval(() => {
    const now = files.map(signature).join('|');
    if (now === seen) return;
    seen = now;
    unwatch();
    unwatch = arm();
    onChange();
  }, options.pollMs ?? 5_000);
  poll.unref();
  return () => {
    clearInterval(poll);
    unwatch();
  };
}
