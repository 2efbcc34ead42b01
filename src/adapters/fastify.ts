import type { IncomingMessage } from 'node:http';
import { problemResponse } from '../engine/admission.js';
import type { Bulwark, BulwarkRequestState } from './bulwark.js';

/** The few Fastify types the plugin touches, so Fastify stays an optional peer. */
interface FastifyLikeRequest {
  raw: IncomingMessage;
  bulwark?: BulwarkRequestState;
}
interface FastifyLikeReply {
  code(status: number): FastifyLikeReply;
  headers(values: Record<string, string | number>): FastifyLikeReply;
  send(body: Buffer): unknown;
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
    const { ctx, error } = await bulwark.evaluate(request.raw);
    if (error !== null) {
      const { status, headers, body } = problemResponse(error, ctx);
      // A Buffer, so Fastify sends our content-type untouched (it appends a charset to strings).
      return reply.code(status).headers(headers).send(Buffer.from(body));
    }
    request.bulwark = { requestId: ctx.requestId, identity: ctx.identity, route: ctx.route, decisions: ctx.decisions };
    return undefined;
  });
}
// Same effect as wrapping in fastify-plugin: the hook applies to the whole app, not an encapsulated child.
Object.assign(bulwarkFastify, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'bulwark' });
