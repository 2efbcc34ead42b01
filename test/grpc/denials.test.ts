import * as grpc from '@grpc/grpc-js';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RequestContext } from '../../src/core/context.js';
import { BulwarkError, type ErrorCode } from '../../src/core/errors.js';
import type { Stage } from '../../src/core/stage.js';
import {
  echoClient,
  startEchoUpstream,
  startGrpcHarness,
  type EchoClientInstance,
  type EchoUpstream,
  type Harness,
} from './harness.js';

const SECRET = 'grpc-test-secret-that-is-long-enough-0123456789';
const ISSUER = 'https://issuer.test';

function yaml(upstream: string): string {
  return `
version: 1
listeners:
  - { address: 127.0.0.1, port: 0, protocol: h2c }
authn:
  providers:
    test:
      issuer: ${ISSUER}
      audiences: [echo]
      algorithms: [HS256]
      secret: ${SECRET}
      rolesClaim: roles
      forward: { claims: { sub: x-user-id } }
authz:
  roles:
    caller: { permissions: [call-unary] }
  permissions:
    call-unary: { grpc: ['/test.Echo/Unary'] }
  policies:
    - id: echo
      rules:
        - { id: callers, effect: allow, permissions: [call-unary] }
upstreams:
  echo:
    endpoints: ['${upstream}']
routes:
  - id: unary
    match: { path: { exact: /test.Echo/Unary } }
    upstream: echo
    auth: { provider: test }
    authz: echo
  - id: open
    match: { path: { exact: /test.Echo/Bidi } }
    upstream: echo
    auth: { public: true }
`;
}

async function token(claims: Record<string, unknown>, secret = SECRET): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer(ISSUER)
    .setAudience('echo')
    .setSubject('alice')
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(new TextEncoder().encode(secret));
}

function call(client: EchoClientInstance, md: Record<string, string>): Promise<grpc.ServiceError | Buffer> {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) metadata.set(k, v);
  return new Promise((resolve) => client.Unary(Buffer.from('hi'), metadata, {}, (err, reply) => resolve(err ?? reply!)));
}

/** Denies with the error code named by `x-deny`, for the codes no config stage produces yet. */
const denyStage: Stage = {
  id: 'test-deny',
  run(ctx: RequestContext) {
    const code = ctx.headers['x-deny'];
    if (typeof code !== 'string') return null;
    return new BulwarkError(code as ErrorCode, undefined, { cause: new Error('secret internal detail') });
  },
};

describe('gRPC denials: real authn/authz stages, and each status', () => {
  let upstream: EchoUpstream;
  let gw: Harness;
  let client: EchoClientInstance;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    gw = await startGrpcHarness({ upstream: upstream.origin, yaml: yaml(upstream.origin), extraStages: () => [denyStage] });
    client = echoClient(gw.port);
  });
  afterAll(async () => {
    client.close();
    await gw.close();
    await upstream.close();
  });

  it('no token: UNAUTHENTICATED, and the upstream never sees the call', async () => {
    const before = upstream.calls.length;
    const err = (await call(client, {})) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(err.details).toBe('Authentication required');
    expect(err.metadata.get('x-request-id')).toHaveLength(1);
    expect(upstream.calls.length).toBe(before);
    expect(gw.calls.at(-1)).toMatchObject({ path: '/test.Echo/Unary', code: 'jwt.missing' });
  });

  it('a bad signature: UNAUTHENTICATED with the generic message (the precise reason stays in the decision)', async () => {
    const err = (await call(client, {
      authorization: `Bearer ${await token({ roles: ['caller'] }, 'x'.repeat(40))}`,
    })) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(err.details).toBe('Invalid token');
    expect(gw.calls.at(-1)!.code).toBe('jwt.signature_invalid');
  });

  it('a valid token without the role: PERMISSION_DENIED', async () => {
    const err = (await call(client, { authorization: `Bearer ${await token({ roles: ['other'] })}` })) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(gw.calls.at(-1)!.code).toMatch(/^rbac\./);
  });

  it('a valid token with the role: allowed; the identity header is the gateway’s, never the client’s', async () => {
    const reply = await call(client, {
      authorization: `Bearer ${await token({ roles: ['caller'] })}`,
      'x-user-id': 'mallory',
      x_user_id: 'mallory',
    });
    expect(Buffer.isBuffer(reply) && reply.toString()).toBe('hi');
    expect(upstream.calls.at(-1)!.metadata['x-user-id']).toBe('alice');
    // The underscore spelling too: a CGI-style server reads it as the same header.
    expect(upstream.calls.at(-1)!.metadata['x_user_id']).toBeUndefined();
  });

  it('a public route strips a forged identity header too', async () => {
    const md = new grpc.Metadata();
    md.set('x-user-id', 'mallory');
    const stream = client.Bidi(md);
    stream.on('error', () => {});
    await new Promise<void>((resolve) => {
      stream.once('data', () => resolve());
      stream.write(Buffer.from('x'));
    });
    stream.end();
    const seen = upstream.calls.filter((c) => c.path === 'Bidi').at(-1)!;
    expect(seen.metadata['x-user-id']).toBeUndefined();
  });

  const table: [ErrorCode, number][] = [
    ['jwt.expired', grpc.status.UNAUTHENTICATED],
    ['rbac.denied', grpc.status.PERMISSION_DENIED],
    ['ratelimit.exceeded', grpc.status.RESOURCE_EXHAUSTED],
    ['ratelimit.concurrency', grpc.status.RESOURCE_EXHAUSTED],
    ['gateway.shutting_down', grpc.status.UNAVAILABLE],
    ['upstream.no_healthy_endpoint', grpc.status.UNAVAILABLE],
    ['upstream.timeout', grpc.status.DEADLINE_EXCEEDED],
    ['request.malformed', grpc.status.INVALID_ARGUMENT],
    ['grpc.message_too_large', grpc.status.RESOURCE_EXHAUSTED],
    ['gateway.internal', grpc.status.INTERNAL],
  ];
  it.each(table)('%s becomes gRPC status %i, in a trailers-only response without internal detail', async (code, status) => {
    const ok = await token({ roles: ['caller'] });
    const err = (await call(client, { authorization: `Bearer ${ok}`, 'x-deny': code })) as grpc.ServiceError;
    expect(err.code).toBe(status);
    expect(err.details).not.toContain('secret');
    expect(gw.calls.at(-1)).toMatchObject({ code });
  });

  it('an unrouted method is UNIMPLEMENTED (route.not_found), and method names are case-sensitive', async () => {
    const client2 = new (grpc.makeGenericClientConstructor(
      {
        Unary: {
          path: '/test.echo/Unary',
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      'Lower',
    ))(`127.0.0.1:${gw.port}`, grpc.credentials.createInsecure()) as unknown as EchoClientInstance;
    const err = (await call(client2, {})) as grpc.ServiceError;
    client2.close();
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(gw.calls.at(-1)).toMatchObject({ path: '/test.echo/Unary', code: 'route.not_found' });
  });
});
