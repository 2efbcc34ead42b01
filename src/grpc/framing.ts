/**
 * gRPC message framing on the wire: each message is a 5-byte prefix (1 byte
 * Compressed-Flag, 4 bytes big-endian Message-Length) and the message. The proxy
 * never reassembles messages: it checks each prefix as it passes and streams the
 * bytes through, so a 1 GiB announcement costs 5 bytes of memory, not 1 GiB.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { BulwarkError } from '../core/errors.js';
import { GrpcStatus } from './status.js';

export const GRPC_PREFIX_BYTES = 5;

/** Encodings a gRPC peer may name; the proxy relays compressed bytes without reading them. */
export const DEFAULT_GRPC_ENCODINGS: ReadonlySet<string> = new Set(['gzip', 'deflate']);

/**
 * Checks a `grpc-encoding` header against the allowed set. `identity` (or no header)
 * is always fine; an unknown encoding is UNIMPLEMENTED per the compression spec (the
 * caller should send `grpc-accept-encoding` with the set it accepts).
 */
export function checkGrpcEncoding(header: string | string[] | undefined, allowed: ReadonlySet<string>): BulwarkError | null {
  if (header === undefined || header === 'identity') return null;
  if (typeof header === 'string' && allowed.has(header)) return null;
  return new BulwarkError('grpc.unsupported_encoding', undefined, { context: { reason: 'grpc-encoding' } });
}

/** The encoding messages may be compressed with, or null when the compressed flag is not allowed. */
export function effectiveEncoding(header: string | string[] | undefined): string | null {
  return typeof header === 'string' && header !== 'identity' ? header : null;
}

export type FrameDirection = 'request' | 'response';

export interface FrameGuardOptions {
  /** Largest message (its length prefix, i.e. as sent on the wire, compressed or not). */
  maxMessageBytes: number;
  /** The stream's grpc-encoding, already checked; null when messages must not be compressed. */
  encoding: string | null;
  /**
   * Whose bytes these are. A bad request frame is the client's fault (a `grpc.*` code);
   * a bad response frame is the upstream's (`upstream.bad_response`).
   */
  direction: FrameDirection;
}

/**
 * Validates message prefixes on a byte stream and passes bytes through unchanged.
 *
 * A violation does not error the stream (that would discard bytes already pushed
 * and leave the reader mid-message): the guard reports it once through `onViolation`
 * and drops everything after it. Because a prefix is only emitted once it has been
 * checked, the bytes emitted always end on a message boundary at that point, so the
 * caller can end the stream cleanly and send status trailers.
 */
export class GrpcFrameGuard extends Transform {
  private readonly maxMessageBytes: number;
  private readonly compressionAllowed: boolean;
  private readonly direction: FrameDirection;
  private readonly onViolation: (error: BulwarkError) => void;
  /** A prefix split across chunks collects here. */
  private readonly prefix: Buffer;
  private prefixFill: number;
  /** Bytes of the current message still to pass. */
  private remaining: number;
  private violated: boolean;
  private abandoned: boolean;
  /** Messages whose prefix has passed (for statistics and tests). */
  messages: number;

  constructor(options: FrameGuardOptions, onViolation: (error: BulwarkError) => void) {
    super();
    this.maxMessageBytes = options.maxMessageBytes;
    this.compressionAllowed = options.encoding !== null;
    this.direction = options.direction;
    this.onViolation = onViolation;
    this.prefix = Buffer.allocUnsafe(GRPC_PREFIX_BYTES);
    this.prefixFill = 0;
    this.remaining = 0;
    this.violated = false;
    this.abandoned = false;
    this.messages = 0;
  }

  /** True when everything emitted so far ends on a message boundary. */
  get atBoundary(): boolean {
    return this.remaining === 0;
  }

  /** The sender is being cut off on purpose: flush what was emitted, do not report a truncated tail. */
  abandon(): void {
    this.abandoned = true;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.violated || this.abandoned) return callback();
    const n = chunk.length;
    let i = 0;
    let emitFrom = 0;
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i);
        this.remaining -= take;
        i += take;
        continue;
      }
      if (this.prefixFill === 0 && n - i >= GRPC_PREFIX_BYTES) {
        // Fast path: the whole prefix is in this chunk and is emitted as part of it.
        if (!this.accept(chunk[i]!, chunk.readUInt32BE(i + 1))) {
          if (i > emitFrom) this.push(chunk.subarray(emitFrom, i));
          return callback();
        }
        i += GRPC_PREFIX_BYTES;
        continue;
      }
      // A prefix split across chunks: emit what precedes it, hold its bytes until complete.
      if (i > emitFrom) this.push(chunk.subarray(emitFrom, i));
      const take = Math.min(GRPC_PREFIX_BYTES - this.prefixFill, n - i);
      chunk.copy(this.prefix, this.prefixFill, i, i + take);
      this.prefixFill += take;
      i += take;
      emitFrom = i;
      if (this.prefixFill === GRPC_PREFIX_BYTES) {
        this.prefixFill = 0;
        if (!this.accept(this.prefix[0]!, this.prefix.readUInt32BE(1))) return callback();
        this.push(Buffer.from(this.prefix));
      }
    }
    if (n > emitFrom) this.push(emitFrom === 0 ? chunk : chunk.subarray(emitFrom));
    callback();
  }

  override _flush(callback: TransformCallback): void {
    if (!this.violated && !this.abandoned && (this.remaining > 0 || this.prefixFill > 0)) {
      this.violate('truncated', 'stream ended inside a message');
    }
    callback();
  }

  /** Checks one prefix; on success the message's bytes are expected next. */
  private accept(flag: number, length: number): boolean {
    if (flag > 1) return this.violate('bad_flag', 'invalid compressed flag');
    if (flag === 1 && !this.compressionAllowed)
      return this.violate('compressed_without_encoding', 'compressed message without grpc-encoding');
    if (length > this.maxMessageBytes) return this.violate('too_large', 'message larger than allowed', length);
    this.remaining = length;
    this.messages++;
    return true;
  }

  private violate(reason: string, detail: string, length?: number): false {
    this.violated = true;
    const context: Record<string, unknown> = { reason, direction: this.direction };
    if (length !== undefined) {
      context['length'] = length;
      context['limit'] = this.maxMessageBytes;
    }
    let error: BulwarkError;
    if (this.direction === 'response') {
      // The client did nothing wrong; still, an oversized message is RESOURCE_EXHAUSTED to it, as
      // a gRPC client enforcing its own receive limit would say.
      if (reason === 'too_large') context['grpcStatus'] = GrpcStatus.RESOURCE_EXHAUSTED;
      error = new BulwarkError('upstream.bad_response', undefined, { context });
    } else if (reason === 'too_large') {
      error = new BulwarkError('grpc.message_too_large', undefined, { context });
    } else {
      error = new BulwarkError('grpc.malformed_frame', detail, { context });
    }
    this.onViolation(error);
    return false;
  }
}

/** One message with its prefix (tests, the health service, tools). */
export function encodeGrpcFrame(message: Uint8Array, compressed = false): Buffer {
  const frame = Buffer.allocUnsafe(GRPC_PREFIX_BYTES + message.length);
  frame[0] = compressed ? 1 : 0;
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, GRPC_PREFIX_BYTES);
  return frame;
}
