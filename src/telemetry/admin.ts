/**
 * The telemetry endpoints of the admin listener:
 *
 *   GET /metrics                              Prometheus text (the whole instance in a cluster)
 *   GET /debug/pprof/profile?seconds=N        CPU profile (.cpuprofile JSON)   [&worker=<id>]
 *   GET /debug/pprof/heap                     heap snapshot (.heapsnapshot)    [?worker=<id>]
 *
 * `/metrics` is open like `/healthz` (the admin listener binds loopback by
 * default; metrics carry no secrets). The profiling endpoints expose memory
 * contents (tokens, keys), so they take `profiling.allow`: loopback callers
 * only, or a bearer token compared in constant time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { BusyError, type WorkerRequests } from './cluster.js';
import { fileCapture, type Capture, type LocalProfiler } from './profiling.js';
import type { ResolvedTelemetryConfig } from './schema.js';

/** A refusal with its HTTP status and stable code. */
export class AdminError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export interface CaptureResult {
  capture: Capture;
  /** The process profiled: '0' the primary or single process, else a cluster worker id. */
  worker: string;
}

/** Where profiles come from: this process, or (on a cluster primary) one of its workers. */
export interface ProfileSource {
  cpuProfile(seconds: number, worker: string | null, signal: AbortSignal): Promise<CaptureResult>;
  heapSnapshot(worker: string | null): Promise<CaptureResult>;
}

export interface AdminTelemetryOptions {
  /** The instance's metrics; null when metrics are disabled (then `/metrics` is 404). */
  metrics: (() => Promise<{ contentType: string; body: string }>) | null;
  profiling: ResolvedTelemetryConfig['profiling'];
  profiles: ProfileSource;
}

const PROFILE_PATH = '/debug/pprof/profile';
const HEAP_PATH = '/debug/pprof/heap';
const DEFAULT_SECONDS = 10;

/**
 * Handles `/metrics` and `/debug/pprof/*`; returns false for any other path so
 * the admin server carries on with its own routes. Call it first in the
 * admin request handler.
 */
export function handleAdminTelemetry(req: IncomingMessage, res: ServerResponse, options: AdminTelemetryOptions): boolean {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (path === '/metrics') {
    if (options.metrics === null) return false;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJson(res, 405, { status: 405, code: 'admin.method_not_allowed' }, { allow: 'GET, HEAD' });
      return true;
    }
    options.metrics().then(
      ({ contentType, body }) => {
        res.writeHead(200, {
          'content-type': contentType,
          'content-length': Buffer.byteLength(body),
          'cache-control': 'no-store',
        });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => sendJson(res, 500, { status: 500, code: 'admin.metrics_failed', detail: message(err) }),
    );
    return true;
  }
  if (path !== PROFILE_PATH && path !== HEAP_PATH) return false;
  const profiling = options.profiling;
  // Disabled: the endpoints do not exist, as on a build without them.
  if (!profiling.enabled) return false;
  const refusal = checkAccess(req, profiling);
  if (refusal !== null) {
    sendJson(
      res,
      refusal.status,
      { status: refusal.status, code: refusal.code, detail: refusal.message },
      refusal.status === 401 ? { 'www-authenticate': 'Bearer realm="bulwark-admin"' } : {},
    );
    return true;
  }
  if (req.method !== 'GET') {
    // A capture is an action: never on HEAD, never twice because a client probed it.
    sendJson(res, 405, { status: 405, code: 'admin.method_not_allowed' }, { allow: 'GET' });
    return true;
  }
  const params = new URLSearchParams(q === -1 ? '' : url.slice(q + 1));
  const worker = params.get('worker');
  if (worker !== null && !/^[0-9]{1,6}$/.test(worker)) {
    sendJson(res, 400, { status: 400, code: 'admin.bad_request', detail: 'worker must be a worker id' });
    return true;
  }
  if (path === PROFILE_PATH) {
    const seconds = parseSeconds(params.get('seconds'), profiling.maxSeconds);
    if (seconds === null) {
      sendJson(res, 400, {
        status: 400,
        code: 'admin.bad_request',
        detail: `seconds must be an integer from 1 to ${profiling.maxSeconds}`,
      });
      return true;
    }
    // The caller leaving ends the profile early and frees the profiler.
    const abort = new AbortController();
    res.once('close', () => abort.abort());
    void send(res, options.profiles.cpuProfile(seconds, worker, abort.signal), 'cpuprofile');
  } else {
    void send(res, options.profiles.heapSnapshot(worker), 'heapsnapshot');
  }
  return true;
}

async function send(res: ServerResponse, pending: Promise<CaptureResult>, extension: string): Promise<void> {
  let result: CaptureResult;
  try {
    result = await pending;
  } catch (err) {
    if (err instanceof BusyError) sendJson(res, 409, { status: 409, code: 'admin.profiler_busy', detail: err.message });
    else if (err instanceof AdminError) sendJson(res, err.status, { status: err.status, code: err.code, detail: err.message });
    else sendJson(res, 500, { status: 500, code: 'admin.profile_failed', detail: message(err) });
    return;
  }
  const { capture, worker } = result;
  if (res.destroyed) {
    capture.cleanup();
    return;
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-disposition': `attachment; filename="bulwark-${worker}-${stamp}.${extension}"`,
    'cache-control': 'no-store',
    'x-bulwark-worker': worker,
  });
  res.once('close', capture.cleanup);
  capture.stream.once('error', (err) => {
    capture.cleanup();
    res.destroy(err);
  });
  capture.stream.pipe(res);
}

/** Loopback peers: 127.0.0.0/8, ::1 and their IPv4-mapped forms. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  if (address === '::1') return true;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') && /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}

function checkAccess(req: IncomingMessage, profiling: ResolvedTelemetryConfig['profiling']): AdminError | null {
  if (profiling.allow === 'loopback') {
    return isLoopback(req.socket.remoteAddress)
      ? null
      : new AdminError(403, 'admin.forbidden', 'profiling is allowed from loopback only');
  }
  const expected = profiling.token;
  const header = req.headers.authorization;
  if (expected === null || typeof header !== 'string' || !/^bearer /i.test(header))
    return new AdminError(401, 'admin.unauthorized', 'a bearer token is required');
  // Digests first: equal lengths for timingSafeEqual, and no early exit on the token's length.
  const given = createHash('sha256').update(header.slice(7).trim()).digest();
  const wanted = createHash('sha256').update(expected).digest();
  return timingSafeEqual(given, wanted) ? null : new AdminError(401, 'admin.unauthorized', 'invalid token');
}

function parseSeconds(value: string | null, max: number): number | null {
  if (value === null) return Math.min(DEFAULT_SECONDS, max);
  if (!/^[0-9]{1,4}$/.test(value)) return null;
  const n = Number(value);
  return n >= 1 && n <= max ? n : null;
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

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------
// Profile sources

/** A single process (or a worker profiling itself): captures happen here. */
export class LocalProfileSource implements ProfileSource {
  private readonly profiler: LocalProfiler;
  constructor(profiler: LocalProfiler) {
    this.profiler = profiler;
  }

  async cpuProfile(seconds: number, worker: string | null, signal: AbortSignal): Promise<CaptureResult> {
    if (worker !== null && worker !== '0') throw new AdminError(404, 'admin.no_such_worker', 'this process runs no workers');
    const text = await this.profiler.cpuProfile(seconds, signal);
    return { capture: textCapture(text), worker: '0' };
  }

  async heapSnapshot(worker: string | null): Promise<CaptureResult> {
    if (worker !== null && worker !== '0') throw new AdminError(404, 'admin.no_such_worker', 'this process runs no workers');
    return { capture: this.profiler.heapSnapshot(), worker: '0' };
  }
}

/** The cluster primary: captures run in a worker (default the lowest id), `worker=0` profiles the primary. */
export class ClusterProfileSource implements ProfileSource {
  private readonly local: LocalProfileSource;
  private readonly requests: WorkerRequests;
  private busy = false;

  constructor(local: LocalProfiler, requests: WorkerRequests) {
    this.local = new LocalProfileSource(local);
    this.requests = requests;
  }

  cpuProfile(seconds: number, worker: string | null, signal: AbortSignal): Promise<CaptureResult> {
    if (worker === '0') return this.local.cpuProfile(seconds, null, signal);
    // A worker cannot be told the caller left; the deadline covers its whole profile plus writing it.
    return this.remote(worker, 'cpu_profile', seconds * 1000 + 30_000, seconds);
  }

  heapSnapshot(worker: string | null): Promise<CaptureResult> {
    if (worker === '0') return this.local.heapSnapshot(null);
    return this.remote(worker, 'heap_snapshot', 300_000);
  }

  private async remote(
    worker: string | null,
    op: 'cpu_profile' | 'heap_snapshot',
    timeoutMs: number,
    seconds?: number,
  ): Promise<CaptureResult> {
    const workers = this.requests.workers();
    const target = worker === null ? workers[0] : workers.find((w) => String(w.id) === worker);
    if (target === undefined)
      throw new AdminError(
        worker === null ? 503 : 404,
        'admin.no_such_worker',
        worker === null
          ? 'no worker is running'
          : `no running worker ${worker} (running: ${workers.map((w) => w.id).join(', ') || 'none'})`,
      );
    if (this.busy) throw new BusyError('a profile or heap snapshot is already being taken');
    this.busy = true;
    try {
      const reply = await this.requests.ask(target, op, timeoutMs, seconds);
      if (!reply.ok || reply.file === undefined) {
        if (reply.busy === true) throw new BusyError(reply.error ?? 'worker busy');
        throw new Error(reply.error ?? 'worker failed to capture');
      }
      return { capture: fileCapture(reply.file), worker: String(target.id) };
    } finally {
      this.busy = false;
    }
  }
}

function textCapture(text: string): Capture {
  // A one-chunk stream, so text and file captures take the same path to the socket.
  return { stream: Readable.from([Buffer.from(text)]), cleanup: () => {} };
}
