/**
 * HTTP webhook sink (undici): `POST {"events":[<record>,…]}` with the records
 * exactly as stored (the body is built from the lines, no re-serialization).
 *
 * Signature (when `hmacSecret` is set), Stripe-style so a replayed body is
 * stale: `bulwark-signature: t=<unix seconds>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>`.
 * `bulwark-batch` names the first and last event id, for receivers' logs.
 *
 * Any non-2xx, timeout or network error fails the batch, and so does a 2xx
 * whose response body does not arrive whole (the receiver died answering); the
 * pipeline retries with backoff, forever, and the WAL keeps the events. Delivery
 * is at-least-once: receivers must deduplicate by event `id`.
 */
import { createHmac } from 'node:crypto';
import { Agent, request } from 'undici';
import type { WalEntry } from '../wal.js';
import { recordOf, type AuditSink } from './sink.js';

export interface WebhookSinkOptions {
  url: string;
  batchSize: number;
  timeoutMs: number;
  headers: Record<string, string>;
  hmacSecret?: string | undefined;
  userAgent: string;
}

export class WebhookError extends Error {
  override readonly name = 'WebhookError';
  readonly status: number | undefined;
  constructor(message: string, status?: number) {
    super(message);
    this.status = status;
  }
}

export function signWebhookBody(secret: string, timestamp: number, body: string): string {
  const mac = createHmac('sha256', secret).update(`${timestamp}.`).update(body).digest('hex');
  return `t=${timestamp},v1=${mac}`;
}

export class WebhookSink implements AuditSink {
  readonly name: string;
  readonly batchSize: number;
  readonly exactCursor = false;
  readonly #options: WebhookSinkOptions;
  #agent: Agent | null = null;

  constructor(options: WebhookSinkOptions) {
    this.#options = options;
    const u = new URL(options.url);
    this.name = `webhook:${u.origin}${u.pathname}`;
    this.batchSize = options.batchSize;
  }

  async open(): Promise<void> {
    this.#agent ??= new Agent({ connections: 2, keepAliveTimeout: 10_000, connectTimeout: this.#options.timeoutMs });
  }

  async write(batch: readonly WalEntry[]): Promise<void> {
    if (batch.length === 0) return;
    if (this.#agent === null) await this.open();
    let body = '{"events":[';
    for (let i = 0; i < batch.length; i++) body += (i === 0 ? '' : ',') + (batch[i] as WalEntry).line;
    body += ']}';
    const headers: Record<string, string> = {
      ...this.#options.headers,
      'content-type': 'application/json',
      'user-agent': this.#options.userAgent,
      'bulwark-batch': `${idOf(batch[0] as WalEntry)}..${idOf(batch[batch.length - 1] as WalEntry)}`,
    };
    if (this.#options.hmacSecret !== undefined)
      headers['bulwark-signature'] = signWebhookBody(this.#options.hmacSecret, Math.floor(Date.now() / 1000), body);
    const response = await request(this.#options.url, {
      method: 'POST',
      headers,
      body,
      dispatcher: this.#agent as Agent,
      headersTimeout: this.#options.timeoutMs,
      bodyTimeout: this.#options.timeoutMs,
      signal: AbortSignal.timeout(this.#options.timeoutMs),
    });
    if (response.statusCode < 200 || response.statusCode > 299) {
      // Drain the body (an unread body pins the connection); the attempt failed anyway.
      await response.body.dump();
      throw new WebhookError(`webhook answered ${response.statusCode}`, response.statusCode);
    }
    // A 2xx counts once its whole body is in: a receiver that dies mid-answer (connection cut, body
    // shorter than announced, timeout) may not have kept the batch. `dump()` would swallow that error.
    try {
      for await (const _chunk of response.body) {
        // discarded: only the body's complete arrival matters
      }
    } catch (error) {
      throw new WebhookError(
        `webhook answered ${response.statusCode} but its response did not complete (${error instanceof Error ? error.message : String(error)})`,
      );
    }
  }

  async close(): Promise<void> {
    const agent = this.#agent;
    this.#agent = null;
    if (agent !== null) await agent.close();
  }
}

function idOf(entry: WalEntry): string {
  return String(recordOf(entry)['id']);
}
