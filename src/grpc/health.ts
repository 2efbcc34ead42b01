/**
 * `grpc.health.v1.Health`, answered by the gateway about itself: service "" is
 * SERVING, NOT_SERVING once draining. Load balancers and Kubernetes gRPC probes ask
 * the gateway this, not an upstream. The two messages are tiny and fixed, so they are
 * encoded by hand here instead of loading a .proto per request:
 *
 *   message HealthCheckRequest  { string service = 1; }
 *   message HealthCheckResponse { ServingStatus status = 1; }
 */
import { constants as h2, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { GRPC_PREFIX_BYTES, encodeGrpcFrame } from './framing.js';
import { GRPC_CONTENT_TYPE, GrpcStatus, sendGrpcError, statusTrailers } from './status.js';

export const GRPC_HEALTH_CHECK_PATH = '/grpc.health.v1.Health/Check';
export const GRPC_HEALTH_WATCH_PATH = '/grpc.health.v1.Health/Watch';

export const ServingStatus = Object.freeze({ UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } as const);
export type ServingStatusCode = (typeof ServingStatus)[keyof typeof ServingStatus];

export interface GrpcHealthOptions {
  /** Largest request accepted (a service name and its framing); default 4 KiB. */
  maxRequestBytes?: number;
}

class Watcher {
  readonly stream: ServerHttp2Stream;
  readonly service: string;
  last: ServingStatusCode;

  constructor(stream: ServerHttp2Stream, service: string, last: ServingStatusCode) {
    this.stream = stream;
    this.service = service;
    this.last = last;
  }
}

const EMPTY = Buffer.alloc(0);
const utf8 = new TextDecoder('utf-8', { fatal: true });

export class GrpcHealthService {
  private readonly maxRequestBytes: number;
  private readonly services: Map<string, ServingStatusCode>;
  private readonly watchers: Set<Watcher>;
  private draining: boolean;
  private closed: boolean;

  constructor(options: GrpcHealthOptions = {}) {
    const max = options.maxRequestBytes ?? 4096;
    if (!Number.isInteger(max) || max < GRPC_PREFIX_BYTES)
      throw new TypeError('GrpcHealthService: maxRequestBytes must be an integer ≥ 5');
    this.maxRequestBytes = max;
    this.services = new Map();
    this.watchers = new Set();
    this.draining = false;
    this.closed = false;
  }

  /** Whether `path` (the request's `:path`, exactly) is a health method this service answers. */
  handles(path: string): boolean {
    return path === GRPC_HEALTH_CHECK_PATH || path === GRPC_HEALTH_WATCH_PATH;
  }

  /** The status of a service: "" is the gateway itself; null for a service nobody registered. */
  statusOf(service: string): ServingStatusCode | null {
    if (service === '') return this.draining ? ServingStatus.NOT_SERVING : ServingStatus.SERVING;
    const status = this.services.get(service);
    if (status === undefined) return null;
    return this.draining ? ServingStatus.NOT_SERVING : status;
  }

  /** Registers or updates a named service (e.g. one per upstream, once health checks land). */
  setStatus(service: string, status: ServingStatusCode): void {
    if (service === '') throw new TypeError('the gateway\'s own status ("") follows setDraining()');
    this.services.set(service, status);
    this.notify();
  }

  /** Draining: every service reports NOT_SERVING, so balancers move traffic away before the gateway stops. */
  setDraining(draining: boolean): void {
    this.draining = draining;
    this.notify();
  }

  /** Ends open Watch streams (UNAVAILABLE: the client reconnects elsewhere) and refuses new ones. */
  close(): void {
    this.closed = true;
    for (const watcher of this.watchers) endWith(watcher.stream, GrpcStatus.UNAVAILABLE, 'Gateway shutting down');
    this.watchers.clear();
  }

  /**
   * Answers one health call on a stream nothing has read or answered yet. `onDone`
   * gets the gRPC status once the stream has closed.
   */
  serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, onDone?: (status: number) => void): void {
    let status: number = GrpcStatus.CANCELLED;
    stream.on('error', () => {});
    stream.once('close', () => onDone?.(status));
    const path = headers[':path'];
    const watch = path === GRPC_HEALTH_WATCH_PATH;
    const fail = (code: number, message: string) => {
      status = code;
      sendGrpcError(stream, code, message);
    };
    if (headers[':method'] !== 'POST') return fail(GrpcStatus.UNIMPLEMENTED, 'gRPC requires POST');
    if (path !== GRPC_HEALTH_CHECK_PATH && !watch) return fail(GrpcStatus.UNIMPLEMENTED, 'Unknown method');
    const encoding = headers['grpc-encoding'];
    if (encoding !== undefined && encoding !== 'identity') {
      status = GrpcStatus.UNIMPLEMENTED;
      sendGrpcError(stream, GrpcStatus.UNIMPLEMENTED, 'Unsupported grpc-encoding', { 'grpc-accept-encoding': 'identity' });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      if (size < 0) return;
      size += chunk.length;
      if (size > this.maxRequestBytes) {
        size = -1;
        fail(GrpcStatus.RESOURCE_EXHAUSTED, 'Request too large');
        return;
      }
      chunks.push(chunk);
    });
    stream.once('end', () => {
      if (size < 0) return;
      const service = decodeRequest(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
      if (service === null) return fail(GrpcStatus.INTERNAL, 'Invalid health check request');
      const current = this.statusOf(service);
      if (!watch) {
        if (current === null) return fail(GrpcStatus.NOT_FOUND, 'Unknown service');
        status = GrpcStatus.OK;
        respondWithMessage(stream, current, true);
        return;
      }
      if (this.closed) return fail(GrpcStatus.UNAVAILABLE, 'Gateway shutting down');
      // Watch: the current status now, then every change, until the client leaves.
      const first = current ?? ServingStatus.SERVICE_UNKNOWN;
      if (!respondWithMessage(stream, first, false)) return;
      status = GrpcStatus.OK;
      const watcher = new Watcher(stream, service, first);
      this.watchers.add(watcher);
      stream.once('close', () => this.watchers.delete(watcher));
    });
  }

  private notify(): void {
    for (const watcher of this.watchers) {
      const now = this.statusOf(watcher.service) ?? ServingStatus.SERVICE_UNKNOWN;
      if (now === watcher.last || watcher.stream.destroyed) continue;
      watcher.last = now;
      watcher.stream.write(encodeGrpcFrame(encodeResponse(now)));
    }
  }
}

/** Headers, one HealthCheckResponse, and (for Check) OK trailers. False if the stream is gone. */
function respondWithMessage(stream: ServerHttp2Stream, status: ServingStatusCode, end: boolean): boolean {
  if (stream.destroyed || stream.closed || stream.headersSent) return false;
  const headers: OutgoingHttpHeaders = { ':status': 200, 'content-type': GRPC_CONTENT_TYPE, 'grpc-accept-encoding': 'identity' };
  stream.respond(headers, { waitForTrailers: true });
  // The HTTP/2 compatibility response, if one wraps this stream, would send its own empty trailers.
  stream.removeAllListeners('wantTrailers');
  stream.once('wantTrailers', () => stream.sendTrailers(statusTrailers(GrpcStatus.OK, '')));
  stream.write(encodeGrpcFrame(encodeResponse(status)));
  if (end) stream.end();
  return true;
}

function endWith(stream: ServerHttp2Stream, code: number, message: string): void {
  if (stream.destroyed || stream.closed) return;
  stream.removeAllListeners('wantTrailers');
  stream.once('wantTrailers', () => stream.sendTrailers(statusTrailers(code, message)));
  if (!stream.writableEnded) stream.end();
  else stream.close(h2.NGHTTP2_CANCEL);
}

function encodeResponse(status: ServingStatusCode): Buffer {
  // proto3 leaves a zero enum out; anything else is field 1, varint (tag 0x08), one byte.
  return status === ServingStatus.UNKNOWN ? EMPTY : Buffer.from([0x08, status]);
}

/**
 * The `service` of exactly one uncompressed HealthCheckRequest frame, or null when the
 * body is anything else. Unknown fields are skipped, as protobuf requires.
 */
export function decodeRequest(body: Buffer): string | null {
  if (body.length < GRPC_PREFIX_BYTES || body[0] !== 0) return null;
  const length = body.readUInt32BE(1);
  if (length !== body.length - GRPC_PREFIX_BYTES) return null;
  const msg = body.subarray(GRPC_PREFIX_BYTES);
  let service = '';
  let i = 0;
  while (i < msg.length) {
    const tag = readVarint(msg, i);
    if (tag === null) return null;
    i = tag.next;
    const field = Math.floor(tag.value / 8);
    const wire = tag.value % 8;
    if (field === 0) return null;
    switch (wire) {
      case 0: {
        const v = readVarint(msg, i);
        if (v === null) return null;
        i = v.next;
        break;
      }
      case 1:
        i += 8;
        break;
      case 5:
        i += 4;
        break;
      case 2: {
        const len = readVarint(msg, i);
        if (len === null || len.next + len.value > msg.length) return null;
        if (field === 1) {
          try {
            service = utf8.decode(msg.subarray(len.next, len.next + len.value));
          } catch {
            return null; // proto3 strings are valid UTF-8
          }
        }
        i = len.next + len.value;
        break;
      }
      default:
        return null;
    }
    if (i > msg.length) return null;
  }
  return service;
}

function readVarint(buf: Buffer, start: number): { value: number; next: number } | null {
  let value = 0;
  let scale = 1;
  // At most ten bytes (a 64-bit value); precision past 2^53 does not matter for skipped fields.
  for (let i = start; i < buf.length && i < start + 10; i++) {
    const b = buf[i]!;
    value += (b & 0x7f) * scale;
    if ((b & 0x80) === 0) return { value, next: i + 1 };
    scale *= 128;
  }
  return null;
}
