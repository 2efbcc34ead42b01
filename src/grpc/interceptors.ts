/**
 * The engine as @grpc/grpc-js interceptors, for Node gRPC services that protect
 * themselves. The server interceptor maps a call onto the same RequestLike the
 * gateway admits (`:path` = `/pkg.Service/Method`, POST, HTTP/2, metadata as
 * headers), so the same routes and stages decide, with the same reason codes; a
 * denial becomes the same gRPC status the gateway would send.
 */
import {
  InterceptingCall,
  Metadata,
  ServerInterceptingCall,
  ServerListenerBuilder,
  status as grpcStatus,
  type Interceptor,
  type InterceptorOptions,
  type NextCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type ServerMethodDefinition,
  type StatusObject,
} from '@grpc/grpc-js';
import { context as otelContext, propagation, type Context } from '@opentelemetry/api';
import type { IncomingHttpHeaders } from 'node:http';
import type { BulwarkRequestState, Evaluation } from '../adapters/bulwark.js';
import type { Identity, RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import type { RequestLike } from '../engine/admission.js';
import { afterCommit } from '../engine/audit.js';
import { GRPC_CONTENT_TYPE, grpcDenialMetadata, grpcMessageFor, GrpcStatus, grpcStatusFor } from './status.js';

/** What the interceptor needs of the engine: `Bulwark` from `createBulwark` satisfies it. */
export interface GrpcEngine {
  evaluate(req: RequestLike): Promise<Evaluation>;
  /**
   * Once per call, when its status is sent (or the client cancelled): frees its concurrency
   * slots, ends its span, records its audit event. `status` is the HTTP status (200).
   */
  complete?(evaluation: Evaluation, status: number, info: { grpcStatus: number; code?: string }): void;
  /** Durable audit: true when a call's status must wait for its event's commit (`commitAudit`). */
  readonly holdsResponses?: boolean;
  /** Records the call's event now, as `complete` would, and settles once it is committed. */
  commitAudit?(evaluation: Evaluation, status: number, info: { grpcStatus: number; code?: string }): Promise<void>;
}

export interface BulwarkGrpcInterceptorOptions {
  /** Whether clients reach this server over TLS (the `:scheme` the engine sees). */
  secure?: boolean;
  /** Every verdict, allowed (`error` null) or denied, for logs and metrics; must not throw. */
  onDecision?(ctx: RequestContext, error: BulwarkError | null): void;
}

/**
 * Handler-side state, keyed by the call's Metadata object: grpc-js hands the handler
 * (`call.metadata`) exactly the object this interceptor passed on, and nothing a client
 * sends can reach a WeakMap, so the identity cannot be forged through metadata.
 */
const states = new WeakMap<Metadata, BulwarkRequestState>();

/** The verified identity of an allowed call (null when its route needs none), from inside a handler. */
export function getIdentity(call: { readonly metadata: Metadata }): Identity | null {
  return states.get(call.metadata)?.identity ?? null;
}

/** Request id, identity, route and decisions of an allowed call; undefined if the interceptor did not run. */
export function getBulwarkState(call: { readonly metadata: Metadata }): BulwarkRequestState | undefined {
  return states.get(call.metadata);
}

/**
 * A grpc-js server interceptor (`new Server({ interceptors: [bulwarkGrpcInterceptor(bulwark)] })`)
 * that runs the pipeline when a call's metadata arrives. The handler is not started, and
 * no request message is read, until the engine allows the call.
 */
export function bulwarkGrpcInterceptor(engine: GrpcEngine, options: BulwarkGrpcInterceptorOptions = {}): ServerInterceptor {
  const secure = options.secure ?? false;
  const onDecision = options.onDecision;
  return (method: ServerMethodDefinition<unknown, unknown>, call: ServerInterceptingCallInterface): ServerInterceptingCall => {
    let evaluation: Evaluation | null = null;
    let ended = -1; // the gRPC status the call ended with, once it has
    let aborted = false; // the client cancelled: recorded as an abort (`request.aborted`), as the gateway does
    const commitOf = (e: Evaluation, info: { grpcStatus: number; code?: string }) =>
      engine.holdsResponses === true && engine.commitAudit !== undefined ? () => engine.commitAudit!(e, 200, info) : null;
    const end = (status: number) => {
      if (ended !== -1) return;
      ended = status;
      if (evaluation !== null) engine.complete?.(evaluation, 200, completion(status, aborted && evaluation.error === null));
    };
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const request = requestLikeFor(method.path, metadata, call, secure);
        engine.evaluate(request).then(
          (result) => {
            evaluation = result;
            const { ctx, error } = result;
            if (onDecision !== undefined) {
              try {
                onDecision(ctx, error);
              } catch {
                // An observer's bug must not change the verdict.
              }
            }
            // Cancelled (or past its deadline) while the stages ran: nobody to answer, no handler to start.
            // A denial keeps its code; an allowed call the client left is an abort, its handler never run (499, as the gateway).
            if (ended !== -1) {
              const gone = aborted && result.error === null;
              return engine.complete?.(result, gone ? 499 : 200, completion(ended, gone));
            }
            if (error !== null) {
              // Durable audit: the denial's event is committed before its status goes out.
              const code = grpcStatusFor(error);
              return afterCommit(
                commitOf(result, { grpcStatus: code }),
                () => {
                  if (ended !== -1) return;
                  deny(call, error, ctx.requestId);
                  end(code);
                },
                () => {
                  if (ended !== -1) return;
                  call.sendStatus(unaudited());
                  end(GrpcStatus.UNAVAILABLE);
                },
              );
            }
            states.set(metadata, {
              requestId: ctx.requestId,
              identity: ctx.identity,
              route: ctx.route,
              decisions: ctx.decisions,
            });
            next(metadata);
          },
          () => {
            deny(call, new BulwarkError('gateway.internal'), undefined);
            end(GrpcStatus.INTERNAL);
          },
        );
      })
      // grpc-js reports every stream close here, also after a status: `end` keeps the first. A status
      // grpc-js sent itself (the deadline) does not pass through `sendStatus` below.
      .withOnCancel(() => {
        if (ended !== -1) return;
        if (pastDeadline(call)) return end(GrpcStatus.DEADLINE_EXCEEDED);
        aborted = true;
        end(GrpcStatus.CANCELLED);
      })
      .build();
    return new ServerInterceptingCall(call, {
      start: (next) => next(listener),
      sendStatus: (status, next) => {
        // Durable audit: the handler's status goes out once the call's event is committed.
        const commit = evaluation === null || ended !== -1 ? null : commitOf(evaluation, completion(status.code, false));
        afterCommit(
          commit,
          () => {
            next(status);
            end(status.code);
          },
          () => {
            next(unaudited());
            end(GrpcStatus.UNAVAILABLE);
          },
        );
      },
    });
  };
}

/**
 * The server's deadline counts from the call's arrival, a little after the client's: a client
 * that gives up at its own deadline resets the stream just before ours. Within this margin the
 * cancel is the deadline, as the client itself reports it.
 */
const DEADLINE_MARGIN_MS = 20;

function pastDeadline(call: Pick<ServerInterceptingCallInterface, 'getDeadline'>): boolean {
  const deadline = call.getDeadline();
  const ms = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(ms) && Date.now() >= ms - DEADLINE_MARGIN_MS;
}

function deny(call: ServerInterceptingCallInterface, error: BulwarkError, requestId: string | undefined): void {
  const metadata = new Metadata();
  const entries = grpcDenialMetadata(error, requestId);
  if (entries !== undefined) for (const [name, value] of Object.entries(entries)) metadata.set(name, value);
  call.sendStatus({ code: grpcStatusFor(error), details: grpcMessageFor(error), metadata });
}

/**
 * The call as the engine sees a gateway request. Metadata becomes headers in the
 * form Node's HTTP/2 server would give them (binary values base64), so admission's
 * checks (Host rules, header count) apply unchanged.
 */
export function requestLikeFor(
  path: string,
  metadata: Metadata,
  call: Pick<ServerInterceptingCallInterface, 'getHost' | 'getConnectionInfo'>,
  secure: boolean,
): RequestLike {
  const authority = call.getHost() || 'localhost';
  const headers: IncomingHttpHeaders = {
    ':method': 'POST',
    ':scheme': secure ? 'https' : 'http',
    ':path': path,
    ':authority': authority,
    'content-type': GRPC_CONTENT_TYPE,
  };
  const raw: string[] = [
    ':method',
    'POST',
    ':scheme',
    secure ? 'https' : 'http',
    ':path',
    path,
    ':authority',
    authority,
    'content-type',
    GRPC_CONTENT_TYPE,
  ];
  const entries = metadata.toHttp2Headers();
  for (const name in entries) {
    // grpc-js keeps content-type out of metadata; one from elsewhere must not make a second copy.
    if (name.charCodeAt(0) === 0x3a || name === 'content-type') continue;
    const value = entries[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) {
      for (const v of value) raw.push(name, String(v));
      headers[name] = value.map(String).join(', ');
    } else {
      raw.push(name, String(value));
      headers[name] = String(value);
    }
  }
  const info = call.getConnectionInfo();
  return {
    method: 'POST',
    url: path,
    headers,
    rawHeaders: raw,
    httpVersionMajor: 2,
    httpVersionMinor: 0,
    socket: { remoteAddress: info.remoteAddress, remotePort: info.remotePort },
  };
}

export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

export interface BearerTokenInterceptorOptions {
  /**
   * Inject the trace context (W3C `traceparent`/`tracestate`, or whatever propagator the
   * application registered with OpenTelemetry) into the call's metadata. Default true.
   */
  propagateTrace?: boolean;
  /** The context to propagate; default the active one at the moment the call starts. */
  getContext?: () => Context;
}

const metadataSetter = {
  set(carrier: Metadata, key: string, value: string): void {
    carrier.set(key, value);
  },
};

/**
 * A grpc-js client interceptor that sends `authorization: Bearer <token>` on every
 * call, with the token from `getToken` (called per call, so a cached, refreshed token
 * source works), and propagates trace context. Works on insecure channels too, where
 * grpc-js refuses call credentials. If no token can be had the call fails locally with
 * UNAUTHENTICATED instead of going out without one.
 */
export function bearerTokenInterceptor(getToken: TokenSource, options: BearerTokenInterceptorOptions = {}): Interceptor {
  const propagate = options.propagateTrace ?? true;
  const getContext = options.getContext ?? (() => otelContext.active());
  return (callOptions: InterceptorOptions, nextCall: NextCall): InterceptingCall => {
    // Captured now: the token may arrive after an await, where the active context is gone.
    const traceContext = propagate ? getContext() : null;
    const intercepting: InterceptingCall = new InterceptingCall(nextCall(callOptions), {
      start(metadata, listener, next) {
        Promise.resolve()
          .then(getToken)
          .then(
            (token) => token,
            () => null,
          )
          .then((token) => {
            let ok = typeof token === 'string' && token !== '';
            if (ok) {
              try {
                metadata.set('authorization', `Bearer ${token as string}`);
                if (traceContext !== null) propagation.inject(traceContext, metadata, metadataSetter);
              } catch {
                ok = false; // a token with characters metadata cannot carry
              }
            }
            next(metadata, listener);
            // Cancelled in the same tick it starts: grpc-js reports the status to the caller and the
            // call is never sent (it is still resolving its transport), so no request goes out unauthenticated.
            if (!ok) intercepting.cancelWithStatus(grpcStatus.UNAUTHENTICATED, 'No credentials available for this call');
          });
      },
    });
    return intercepting;
  };
}

/** The answer when a call's event could not be committed (durable audit): never its status as if audited. */
function unaudited(): StatusObject {
  return { code: GrpcStatus.UNAVAILABLE, details: 'Audit unavailable', metadata: new Metadata() };
}

function completion(grpcStatus: number, aborted: boolean): { grpcStatus: number; code?: string } {
  return aborted ? { grpcStatus, code: 'request.aborted' } : { grpcStatus };
}
