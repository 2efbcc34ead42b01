// The gRPC module's public names (no `export *`): proxy pieces for the gateway, interceptors for services.
export {
  GrpcStatus,
  GRPC_CONTENT_TYPE,
  decodeGrpcMessage,
  encodeGrpcMessage,
  grpcMessageFor,
  grpcStatusFor,
  grpcStatusForHttp,
  grpcStatusForRstCode,
  grpcStatusFromUpstreamHttp,
  sendGrpcDenial,
  grpcDenialMetadata,
  sendGrpcError,
  statusTrailers,
} from './status.js';
export type { GrpcStatusCode } from './status.js';
export { formatGrpcTimeout, parseGrpcTimeout, resolveGrpcTimeout } from './timeout.js';
export {
  DEFAULT_GRPC_ENCODINGS,
  GRPC_PREFIX_BYTES,
  GrpcFrameChecker,
  GrpcFrameGuard,
  checkGrpcEncoding,
  effectiveEncoding,
  encodeGrpcFrame,
} from './framing.js';
export type { FrameDirection, FrameGuardOptions, GrpcFrameSink } from './framing.js';
export { GrpcUpstreamPool, closeGrpcPool, grpcPoolFor } from './pool.js';
export type { GrpcStreamCallback, GrpcStreamReceiver, GrpcUpstreamPoolOptions, PendingGrpcStream } from './pool.js';
export {
  checkGrpcRequest,
  classifyUpstreamFailure,
  forwardGrpc,
  isGrpcContentType,
  isGrpcMethodPath,
  isGrpcRequest,
} from './proxy.js';
export type { ForwardGrpcOptions } from './proxy.js';
export { GRPC_HEALTH_CHECK_PATH, GRPC_HEALTH_WATCH_PATH, GrpcHealthService, ServingStatus } from './health.js';
export type { GrpcHealthOptions, ServingStatusCode } from './health.js';
export { bearerTokenInterceptor, bulwarkGrpcInterceptor, getBulwarkState, getIdentity, requestLikeFor } from './interceptors.js';
export type { BearerTokenInterceptorOptions, BulwarkGrpcInterceptorOptions, GrpcEngine, TokenSource } from './interceptors.js';
