/**
 * The one outbound HTTP call authentication makes: GET a JSON document (JWKS or
 * OIDC discovery) from a URL that came from config, never from a token. Bounded
 * in time (whole exchange, body included) and in size (the body is streamed and
 * reading stops at the cap), and redirects are not followed.
 */
import { TextDecoder } from 'node:util';
import { request } from 'undici';

export type FetchFailureReason = 'timeout' | 'status' | 'too_large' | 'network' | 'invalid_json' | 'closed';

export class FetchError extends Error {
  override readonly name = 'FetchError';
  readonly reason: FetchFailureReason;

  constructor(reason: FetchFailureReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

export interface FetchLimits {
  readonly timeoutMs: number;
  readonly maxBytes: number;
}

const ignore = (): void => undefined;

// Fatal: a document that is not UTF-8 is refused rather than decoded with replacement characters.
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** GET `url` and parse it as JSON, within `limits`; `signal` aborts it (source closed). */
export async function fetchJson(url: string, limits: FetchLimits, signal?: AbortSignal): Promise<unknown> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, limits.timeoutMs);
  timer.unref();
  const onAbort = () => controller.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const res = await request(url, {
      method: 'GET',
      signal: controller.signal,
      headers: { accept: 'application/jwk-set+json, application/json' },
    });
    const chunks: Buffer[] = [];
    // Destroying the body early makes undici emit an abort error on it; that is expected here.
    res.body.on('error', ignore);
    try {
      if (res.statusCode !== 200) throw new FetchError('status', `HTTP ${res.statusCode}`);
      const declared = Number(res.headers['content-length']);
      if (declared > limits.maxBytes) throw new FetchError('too_large', `declared ${declared} bytes > ${limits.maxBytes}`);
      let total = 0;
      for await (const chunk of res.body) {
        const buf = chunk as Buffer;
        total += buf.length;
        if (total > limits.maxBytes) throw new FetchError('too_large', `more than ${limits.maxBytes} bytes`);
        chunks.push(buf);
      }
    } finally {
      // Leaving early (status, size) must not leave the socket streaming into nowhere.
      if (!res.body.destroyed) res.body.destroy();
    }
    try {
      return JSON.parse(utf8.decode(Buffer.concat(chunks)));
    } catch (cause) {
      throw new FetchError('invalid_json', 'response is not UTF-8 JSON', { cause });
    }
  } catch (err) {
    if (err instanceof FetchError) throw err;
    if (timedOut) throw new FetchError('timeout', `no complete response within ${limits.timeoutMs} ms`, { cause: err });
    if (signal?.aborted) throw new FetchError('closed', 'key source closed', { cause: err });
    throw new FetchError('network', err instanceof Error ? err.message : String(err), { cause: err });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}
