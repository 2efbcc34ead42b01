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

/** Where a GrpcFrameChecker sends the bytes that may pass. */
export interface GrpcFrameSink {
  /** Bytes that passed the checks, in order: whole chunks (the common case) or pieces of them. */
  pass(bytes: Buffer): void;
}

/**
 * Validates message prefixes on a byte stream fed chunk by chunk, passing the bytes on
 * unchanged; no stream machinery of its own, so the proxy relays through it at the cost
 * of a few compares per message (GrpcFrameGuard wraps it as a Transform).
 *
 * A violation is reported once through `onViolation`, after every byte before the bad
 * prefix has been passed; nothing after it is. Because a prefix is only passed once it
 * has been checked, the bytes passed always end on a message boundary at that point, so
 * the caller can end the stream cleanly and send status trailers.
 */
export class GrpcFrameChecker {
  private readonly maxMessageBytes: number;
  private readonly compressionAllowed: boolean;
  private readonly direction: FrameDirection;
  private readonly onViolation: ((error: BulwarkError) => void) | null;
  /** A prefix split across chunks collects here (allocated on first need: unary calls rarely split one). */
  private prefix: Buffer | null;
  private prefixFill: number;
  /** Bytes of the current message still to pass. */
  private remaining: number;
  private violation: BulwarkError | null;
  private stopped: boolean;
  /** Messages whose prefix has passed (for statistics and tests). */
  messages: number;

  /** Without `onViolation`, a subclass overrides `violated()`. */
  constructor(options: FrameGuardOptions, onViolation: ((error: BulwarkError) => void) | null) {
    this.maxMessageBytes = options.maxMessageBytes;
    this.compressionAllowed = options.encoding !== null;
    this.direction = options.direction;
    this.onViolation = onViolation;
    this.prefix = null;
    this.prefixFill = 0;
    this.remaining = 0;
    this.violation = null;
    this.stopped = false;
    this.messages = 0;
  }

  /** True when everything passed so far ends on a message boundary. */
  get atBoundary(): boolean {
    return this.remaining === 0;
  }

  /** False once a violation was found or the sender abandoned: nothing more passes. */
  get open(): boolean {
    return !this.stopped;
  }

  /** The sender is being cut off on purpose: pass nothing more, do not report a truncated tail. */
  abandon(): void {
    this.stopped = true;
  }

  /** Checks one chunk and passes what may pass to `sink`; false once the stream is stopped. */
  feed(chunk: Buffer, sink: GrpcFrameSink): boolean {
    if (this.stopped) return false;
    const n = chunk.length;
    let i = 0;
    let emitFrom = 0;
    while (i < n) {
      const remaining = this.remaining;
      if (remaining > 0) {
        const take = remaining < n - i ? remaining : n - i;
        this.remaining = remaining - take;
        i += take;
        continue;
      }
      if (this.prefixFill === 0 && n - i >= GRPC_PREFIX_BYTES) {
        // Fast path: the whole prefix is in this chunk and is passed as part of it.
        if (!this.accept(chunk[i]!, chunk.readUInt32BE(i + 1))) {
          if (i > emitFrom) sink.pass(chunk.subarray(emitFrom, i));
          return this.report();
        }
        i += GRPC_PREFIX_BYTES;
        continue;
      }
      // A prefix split across chunks: pass what precedes it, hold its bytes until complete.
      if (i > emitFrom) sink.pass(chunk.subarray(emitFrom, i));
      const prefix = (this.prefix ??= Buffer.allocUnsafe(GRPC_PREFIX_BYTES));
      const take = Math.min(GRPC_PREFIX_BYTES - this.prefixFill, n - i);
      chunk.copy(prefix, this.prefixFill, i, i + take);
      this.prefixFill += take;
      i += take;
      emitFrom = i;
      if (this.prefixFill === GRPC_PREFIX_BYTES) {
        this.prefixFill = 0;
        if (!this.accept(prefix[0]!, prefix.readUInt32BE(1))) return this.report();
        sink.pass(Buffer.from(prefix));
      }
    }
    if (n > emitFrom) sink.pass(emitFrom === 0 ? chunk : chunk.subarray(emitFrom));
    return true;
  }

  /** The stream ended: false (and a violation reported) when it ended inside a message. */
  finish(): boolean {
    if (this.stopped) return false;
    if (this.remaining > 0 || this.prefixFill > 0) {
      this.violate('truncated', 'stream ended inside a message');
      return this.report();
    }
    return true;
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
    this.stopped = true;
    const context: Record<string, unknown> = { reason, direction: this.direction };
    if (length !== undefined) {
      context['length'] = length;
      context['limit'] = this.maxMessageBytes;
    }
    if (this.direction === 'response') {
      // The client did nothing wrong; still, an oversized message is RESOURCE_EXHAUSTED to it, as
      // a gRPC client enforcing its own receive limit would say.
      if (reason === 'too_large') context['grpcStatus'] = GrpcStatus.RESOURCE_EXHAUSTED;
      this.violation = new BulwarkError('upstream.bad_response', undefined, { context });
    } else if (reason === 'too_large') {
      this.violation = new BulwarkError('grpc.message_too_large', undefined, { context });
    } else {
      this.violation = new BulwarkError('grpc.malformed_frame', detail, { context });
    }
    return false;
  }

  /** Reports the violation, once the bytes before it have been passed. */
  private report(): false {
    const violation = this.violation;
    if (violation !== null) {
      this.violation = null;
      this.violated(violation);
    }
    return false;
  }

  /** The one violation of this stream (after it, nothing passes). */
  protected violated(error: BulwarkError): void {
    this.onViolation?.(error);
  }
}

/**
 * GrpcFrameChecker as a Transform: validates message prefixes on a byte stream and
 * passes bytes through unchanged (tools and tests; the proxy feeds a checker directly).
 *
 * A violation does not error the stream (that would discard bytes already pushed
 * and leave the reader mid-message): the guard reports it once through `onViolation`
 * and drops everything after it, so the bytes emitted end on a message boundary.
 */
export class GrpcFrameGuard extends Transform implements GrpcFrameSink {
  private readonly checker: GrpcFrameChecker;

  constructor(options: FrameGuardOptions, onViolation: (error: BulwarkError) => void) {
    super();
    this.checker = new GrpcFrameChecker(options, onViolation);
  }

  /** Messages whose prefix has passed (for statistics and tests). */
  get messages(): number {
    return this.checker.messages;
  }

  /** True when everything emitted so far ends on a message boundary. */
  get atBoundary(): boolean {
    return this.checker.atBoundary;
  }

  /** The sender is being cut off on purpose: flush what was emitted, do not report a truncated tail. */
  abandon(): void {
    this.checker.abandon();
  }

  pass(bytes: Buffer): void {
    this.push(bytes);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.checker.feed(chunk, this);
    callback();
  }

  override _flush(callback: TransformCallback): void {
    this.checker.finish();
    callback();
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
