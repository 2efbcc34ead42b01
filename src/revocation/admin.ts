/**
 * The revocation admin API, mounted on the admin listener:
 *
 * - `POST /revocations` `{ jti? | sub? | sid?, before?, expiresAt? }` → 201 (stored and
 *   propagating) or 202 (Redis down: enforced here, queued for Redis). In cluster mode this
 *   runs in the primary, whose store answers once every worker acknowledged (cluster.ts).
 *   `before` / `expiresAt`: epoch seconds or an RFC 3339 date.
 * - `GET /revocations` → `{ revocations: [...], store: {...} }`.
 * - `DELETE /revocations/:id` (id as listed, URL-encoded) → 204, 404, or 503 when Redis is down.
 *
 * Authenticated by a bearer token (`revocation.adminToken`, compared in constant
 * time); with no token configured, loopback peers only.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isLoopback } from '../telemetry/admin.js';
import {
  RevocationInputError,
  RevocationStoreUnavailableError,
  type RevocationEntry,
  type RevocationInput,
  type RevocationList,
} from './list.js';

export const REVOCATIONS_PATH = '/revocations';
const MAX_BODY = 16 * 1024;

export interface RevocationAdminOptions {
  /** `revocation.adminToken`; unset: loopback peers only. */
  token?: string | undefined;
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

const fail = (res: ServerResponse, status: number, code: string, detail: string, headers?: Record<string, string>) =>
  sendJson(res, status, { status, code, detail }, headers);

function authorized(req: IncomingMessage, res: ServerResponse, token: string | undefined): boolean {
  if (token === undefined || token === '') {
    if (isLoopback(req.socket.remoteAddress)) return true;
    fail(res, 403, 'admin.forbidden', 'the revocation API is loopback-only without revocation.adminToken');
    return false;
  }
  const header = req.headers.authorization;
  const challenge = { 'www-authenticate': 'Bearer realm="bulwark-admin"' };
  if (typeof header !== 'string' || !/^bearer /i.test(header)) {
    fail(res, 401, 'admin.unauthorized', 'a bearer token is required', challenge);
    return false;
  }
  // Digests first: equal lengths for timingSafeEqual, and no early exit on the token's length.
  const given = createHash('sha256').update(header.slice(7).trim()).digest();
  const wanted = createHash('sha256').update(token).digest();
  if (timingSafeEqual(given, wanted)) return true;
  fail(res, 401, 'admin.unauthorized', 'invalid token', challenge);
  return false;
}

async function readBody(req: IncomingMessage): Promise<string | null> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) return null;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Epoch seconds from a number or an RFC 3339 string; undefined when absent; NaN when unusable. */
export function parseTime(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'number') return value;
  if (typeof value === 'string') {
    if (/^[0-9]+(\.[0-9]+)?$/.test(value)) return Number(value);
    if (/^\d{4}-\d{2}-\d{2}T/.test(value)) {
      const ms = Date.parse(value);
      return Number.isNaN(ms) ? NaN : ms / 1000;
    }
  }
  return NaN;
}

function toInput(body: unknown): RevocationInput {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new RevocationInputError('body must be a JSON object');
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) {
    if (!['jti', 'sub', 'sid', 'before', 'expiresAt'].includes(key)) throw new RevocationInputError(`unknown field "${key}"`);
  }
  const input: RevocationInput = {};
  for (const key of ['jti', 'sub', 'sid'] as const) {
    const value = b[key];
    if (value === undefined) continue;
    if (typeof value !== 'string') throw new RevocationInputError(`${key} must be a string`);
    input[key] = value;
  }
  const before = parseTime(b['before']);
  const expiresAt = parseTime(b['expiresAt']);
  if (Number.isNaN(before)) throw new RevocationInputError('before must be epoch seconds or an RFC 3339 date');
  if (Number.isNaN(expiresAt)) throw new RevocationInputError('expiresAt must be epoch seconds or an RFC 3339 date');
  if (before !== undefined) input.before = before;
  if (expiresAt !== undefined) input.expiresAt = expiresAt;
  return input;
}

/** The wire form of an entry. */
export function entryJson(entry: RevocationEntry): Record<string, unknown> {
  return {
    id: entry.id,
    kind: entry.kind,
    value: entry.value,
    ...(entry.before === undefined ? {} : { before: entry.before }),
    expiresAt: new Date(entry.expiresAtMs).toISOString(),
    createdAt: new Date(entry.createdAtMs).toISOString(),
  };
}

/** Whether a request target is this API's (sync, for a listener that dispatches before reading anything). */
export function isRevocationAdminPath(target: string | undefined): boolean {
  const path = (target ?? '/').split('?')[0]!;
  return path === REVOCATIONS_PATH || path.startsWith(`${REVOCATIONS_PATH}/`);
}

/**
 * Serves `/revocations` and `/revocations/:id`. Returns false (untouched response)
 * for any other path, so the admin listener can try its other handlers.
 */
export async function handleRevocationAdmin(
  req: IncomingMessage,
  res: ServerResponse,
  list: RevocationList,
  options: RevocationAdminOptions = {},
): Promise<boolean> {
  // The raw path, exactly as isRevocationAdminPath saw it: `new URL` would resolve dot segments
  // (`/revocations/../healthz`, `%2e%2e`), so the listener would route here a request this
  // handler then disowns, and nothing would ever answer it.
  const path = (req.url ?? '/').split('?')[0]!;
  if (!isRevocationAdminPath(path)) return false;
  if (!authorized(req, res, options.token)) return true;
  try {
    if (path === REVOCATIONS_PATH) {
      if (req.method === 'GET' || req.method === 'HEAD') {
        const store = list.store;
        sendJson(res, 200, {
          revocations: list.entries().map(entryJson),
          store: {
            kind: store.kind,
            available: store.available,
            lastSyncAt: store.lastSyncAt === null ? null : new Date(store.lastSyncAt).toISOString(),
            onStoreFailure: list.onStoreFailure,
          },
        });
        return true;
      }
      if (req.method !== 'POST') {
        fail(res, 405, 'admin.method_not_allowed', 'GET or POST', { allow: 'GET, HEAD, POST' });
        return true;
      }
      const text = await readBody(req);
      if (text === null) {
        fail(res, 413, 'admin.body_too_large', `at most ${MAX_BODY} bytes`);
        return true;
      }
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        fail(res, 400, 'admin.bad_request', 'body is not JSON');
        return true;
      }
      const { entry, write } = await list.revoke(toInput(body));
      sendJson(res, write === 'stored' ? 201 : 202, { revocation: entryJson(entry), propagated: write === 'stored' });
      return true;
    }
    if (req.method !== 'DELETE') {
      fail(res, 405, 'admin.method_not_allowed', 'DELETE', { allow: 'DELETE' });
      return true;
    }
    let id: string;
    try {
      id = decodeURIComponent(path.slice(REVOCATIONS_PATH.length + 1));
    } catch {
      fail(res, 400, 'admin.bad_request', 'bad id encoding');
      return true;
    }
    if (await list.unrevoke(id)) {
      res.writeHead(204, { 'cache-control': 'no-store' });
      res.end();
    } else fail(res, 404, 'revocation.not_found', `no revocation ${id}`);
    return true;
  } catch (err) {
    if (err instanceof RevocationInputError) fail(res, 400, 'admin.bad_request', err.message);
    else if (err instanceof RevocationStoreUnavailableError) fail(res, 503, 'revocation.store_unavailable', err.message);
    else fail(res, 500, 'admin.internal', err instanceof Error ? err.message : String(err));
    return true;
  }
}
