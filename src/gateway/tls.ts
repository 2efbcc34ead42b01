/**
 * A listener's certificate, key and CA as one unit that can be swapped while the listener runs:
 * certificates are renewed far more often than gateways are restarted (ACME every 60 days,
 * cert-manager's mounted secrets), and a renewal must neither need a restart nor, when the files
 * are caught half-written, take a working certificate away.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import { watchDirectories } from '../core/watch.js';

type TlsConfig = NonNullable<ListenerConfig['tls']>;

export type TlsErrorCode = 'tls.file_unreadable' | 'tls.invalid';

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

/**
 * Reads and checks the files: PEM that parses, a key that matches the certificate (what
 * `createSecureContext` verifies), a leaf certificate that is readable. Throws TlsMaterialError.
 */
export function loadTlsMaterial(tls: TlsConfig): TlsMaterial {
  const cert = read(tls.cert);
  const key = read(tls.key);
  const ca = tls.ca === undefined ? undefined : read(tls.ca);
  const options: SecureContextOptions = ca === undefined ? { cert, key } : { cert, key, ca };
  let notAfter: number;
  try {
    createSecureContext(options);
    notAfter = Date.parse(new X509Certificate(cert).validTo);
  } catch (err) {
    // OpenSSL names no file: a key that does not match its certificate is the usual half-renewed state.
    const message = err instanceof Error ? err.message : String(err);
    throw new TlsMaterialError('tls.invalid', null, `${tls.cert} / ${tls.key}: ${message}`, { cause: err });
  }
  const hash = createHash('sha256').update(cert).update('\0').update(key);
  if (ca !== undefined) hash.update('\0').update(ca);
  return { fingerprint: hash.digest('hex'), options, notAfter };
}

/**
 * Calls `onChange` (debounced) when anything changes in the directories holding the files.
 * Not filtered by name: Kubernetes swaps a mounted secret by relinking `..data`, so the file
 * names themselves never show up in the events; the fingerprint tells a real change.
 */
export function watchTlsFiles(tls: TlsConfig, onChange: () => void, debounceMs = 200): () => void {
  const files = [tls.cert, tls.key, ...(tls.ca === undefined ? [] : [tls.ca])];
  return watchDirectories(
    files.map((f) => dirname(f)),
    onChange,
    { debounceMs },
  );
}
