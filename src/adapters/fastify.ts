import type { IncomingMessage, ServerResponse } from 'node:http';
import { problemResponse } from '../engine/admission.js';
import { rateLimitHeaders } from '../limits/index.js';
import { bytesOf, type Bulwark, type BulwarkRequestState } from './bulwark.js';

/** The few Fastify types the plugin touches, so Fastify stays an optional peer. */
interface FastifyLikeRequest {
  raw: IncomingMessage;
  bulwark?: BulwarkRequestState;
}
interface FastifyLikeReply {
  raw: ServerResponse;
  code(status: number): FastifyLikeReply;
  headers(values: Record<string, string | number>): FastifyLikeReply;
  send(body: Buffer): unknown;
  hijack(): unknown;
  getHeader(name: string): unknown;
}
interface FastifyLikeInstance {
  decorateRequest(name: string, value: unknown): unknown;
  addHook(name: 'onRequest', hook: (request: FastifyLikeRequest, reply: FastifyLikeReply) => Promise<unknown>): unknown;
}

/**
 * Fastify plugin: `app.register(bulwarkFastify, { bulwark })`. An onRequest hook
 * runs the pipeline before routing and body parsing; denials are the gateway's problems.
 */
export async function bulwarkFastify(instance: FastifyLikeInstance, options: { bulwark: Bulwark }): Promise<void> {
  const { bulwark } = options;
  instance.decorateRequest('bulwark', null);
  instance.addHook('onRequest', async (request, reply) => {
    const res = reply.raw;
    // Fastify keeps its headers until it writes them all at once: ask the reply, not the raw response.
    const exchange = bulwark.track(request.raw, res, () => {
      const announced = bytesOf(reply);
      return announced >= 0 ? announced : bytesOf(res);
    });
    const evaluation = await bulwark.evaluate(request.raw);
    if (!exchange.evaluated(evaluation)) return reply.hijack();
    const { ctx, error } = evaluation;
    if (error !== null) {
      const { status, headers, body } = problemResponse(error, ctx);
      exchange.denied(ctx.method === 'HEAD' ? 0 : Buffer.byteLength(body));
      // A Buffer, so Fastify sends our content-type untouched (it appends a charset to strings).
      return reply.code(status).headers(headers).send(Buffer.from(body));
    }
    const limits = rateLimitHeaders(ctx);
    if (limits !== null) reply.headers(limits);
    if (bulwark.issuerServes(ctx, request.raw, res)) return reply.hijack();
    request.bulwark = { requestId: ctx.requestId, identity: ctx.identity, route: ctx.route, decisions: ctx.decisions };
    return undefined;
  });
}
// Same effect as wrapping in fastify-plugin: the hook applies to the whole app, not an encapsulated child.
Object.assign(bulwarkFastify, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'bulwark' });
