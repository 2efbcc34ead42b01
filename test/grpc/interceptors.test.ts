import * as grpc from '@grpc/grpc-js';
import { propagation, ROOT_CONTEXT, trace, TraceFlags } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { Bulwark } from '../../src/adapters/bulwark.js';
import type { RequestContext } from '../../src/core/context.js';
import type { BulwarkError } from '../../src/core/errors.js';
import { bearerTokenInterceptor, bulwarkGrpcInterceptor, getBulwarkState, getIdentity } from '../../src/grpc/interceptors.js';
import { ECHO_SERVICE, EchoClient, startGrpcHarness, type EchoClientInstance, type Harness } from './harness.js';

const SECRET = 'interceptor-test-secret-long-enough-0123456789';
const ISSUER = 'https://issuer.test';

/** One policy for both forms: the gateway config adds a listener and an upstream. */
function policy(upstream: string | null): string {
  const to = upstream === null ? '' : '\n    upstream: svc';
  return `
version: 1
${upstream === null ? '' : `listeners:\n  - { address: 127.0.0.1, port: 0, protocol: h2c }\nupstreams:\n  svc:\n    endpoints: ['${upstream}']`}
authn:
  providers:
    test:
      issuer: ${ISSUER}
      audiences: [echo]
      algorithms: [HS256]
      secret: ${SECRET}
      rolesClaim: roles
authz:
  roles:
    caller: { permissions: [call-echo] }
  permissions:
    call-echo: { grpc: ['/test.Echo/*'] }
  policies:
    - id: echo
      rules:
        - { id: callers, effect: allow, permissions: [call-echo] }
routes:
  - id: unary
    match: { path: { exact: /test.Echo/Unary } }${to}
    auth: { provider: test }
    authz: echo
  - id: bidi
    match: { path: { exact: /test.Echo/Bidi } }${to}
    auth: { provider: test }
    authz: echo
  - id: client-stream
    match: { path: { exact: /test.Echo/ClientStream } }${to}
    auth: { provider: test }
    authz: echo
`;
}

function token(roles: string[], secret = SECRET): Promise<string> {
  return new SignJWT({ roles })
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer(ISSUER)
    .setAudience('echo')
    .setSubject('alice')
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(new TextEncoder().encode(secret));
}

interface Seen {
  handled: number;
  decisions: { path: string; code: string | null }[];
  authorization: string[];
  traceparent: string[];
}

async function startProtectedServer(bulwark: Bulwark, seen: Seen): Promise<{ server: grpc.Server; port: number }> {
  const onDecision = (ctx: RequestContext, error: BulwarkError | null) =>
    seen.decisions.push({ path: ctx.path, code: error === null ? null : error.code });
  const server = new grpc.Server({ interceptors: [bulwarkGrpcInterceptor(bulwark, { onDecision })] });
  const describe = (call: { metadata: grpc.Metadata }) => {
    seen.handled++;
    seen.authorization.push(String(call.metadata.get('authorization')[0] ?? ''));
    seen.traceparent.push(String(call.metadata.get('traceparent')[0] ?? ''));
    const identity = getIdentity(call);
    const state = getBulwarkState(call);
    return Buffer.from(
      JSON.stringify({ subject: identity?.subject ?? null, roles: identity?.roles ?? [], route: state?.route?.id }),
    );
  };
  server.addService(ECHO_SERVICE, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, describe(call)),
    ServerStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => call.end(),
    ClientStream: (call: grpc.ServerReadableStream<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      let n = 0;
      call.on('data', () => n++);
      call.on('end', () => cb(null, Buffer.from(String(n))));
    },
    Bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      const me = describe(call);
      call.on('data', () => call.write(me));
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { server, port };
}

function unary(client: EchoClientInstance, md: grpc.Metadata = new grpc.Metadata()) {
  return new Promise<{ subject: string | null; roles: string[]; route: string } | grpc.ServiceError>((resolve) =>
    client.Unary(Buffer.from('x'), md, {}, (err, reply) => resolve(err ?? JSON.parse(reply!.toString()))),
  );
}

function bearer(value: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${value}`);
  return md;
}

describe('bulwarkGrpcInterceptor', () => {
  let bulwark: Bulwark;
  let server: grpc.Server;
  let port: number;
  let client: EchoClientInstance;
  const seen: Seen = { handled: 0, decisions: [], authorization: [], traceparent: [] };
  beforeAll(async () => {
    bulwark = await Bulwark.create({ config: parseYaml(policy(null)) as Record<string, unknown> });
    ({ server, port } = await startProtectedServer(bulwark, seen));
    client = new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as EchoClientInstance;
  });
  afterAll(async () => {
    client.close();
    server.forceShutdown();
    await bulwark.close();
  });

  it('allows a caller with the role and shows its identity to the handler', async () => {
    const reply = await unary(client, bearer(await token(['caller'])));
    expect(reply).toEqual({ subject: 'alice', roles: ['caller'], route: 'unary' });
    expect(seen.decisions.at(-1)).toEqual({ path: '/test.Echo/Unary', code: null });
  });

  it('denies without a token: UNAUTHENTICATED, and the handler never runs', async () => {
    const before = seen.handled;
    const err = (await unary(client)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(err.details).toBe('Authentication required');
    expect(err.metadata.get('x-request-id')).toHaveLength(1);
    expect(seen.handled).toBe(before);
    expect(seen.decisions.at(-1)!.code).toBe('jwt.missing');
  });

  it('denies a valid token without the role: PERMISSION_DENIED', async () => {
    const err = (await unary(client, bearer(await token(['other'])))) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(seen.decisions.at(-1)!.code).toMatch(/^rbac\./);
  });

  it('a method without a route is UNIMPLEMENTED (deny by default)', async () => {
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      const call = client.ServerStream(Buffer.from('x'), bearer('whatever'));
      call.on('error', resolve);
      call.on('data', () => {});
    });
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(seen.decisions.at(-1)!.code).toBe('route.not_found');
  });

  it('streaming calls: the handler starts only once allowed, and sees the identity', async () => {
    const before = seen.handled;
    const denied = client.ClientStream(new grpc.Metadata(), {}, () => {});
    const deniedStatus = new Promise<grpc.StatusObject>((r) => denied.on('status', r));
    denied.write(Buffer.from('a'));
    denied.end();
    expect((await deniedStatus).code).toBe(grpc.status.UNAUTHENTICATED);
    expect(seen.handled).toBe(before);

    const bidi = client.Bidi(bearer(await token(['caller'])));
    const first = new Promise<Buffer>((r) => bidi.once('data', r));
    bidi.write(Buffer.from('hi'));
    expect(JSON.parse((await first).toString())).toMatchObject({ subject: 'alice', route: 'bidi' });
    bidi.end();
  });

  it('identity cannot be forged through metadata', async () => {
    const md = bearer(await token(['other']));
    md.set('x-user-id', 'alice');
    md.set('bulwark-identity', '{"subject":"root"}');
    const err = (await unary(client, md)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('the proxy in front of the same policy denies with the same reason codes and statuses', async () => {
    const gw: Harness = await startGrpcHarness({ upstream: '', yaml: policy(`http://127.0.0.1:${port}`) });
    const viaGateway = new EchoClient(`127.0.0.1:${gw.port}`, grpc.credentials.createInsecure()) as EchoClientInstance;
    try {
      const cases = [new grpc.Metadata(), bearer(await token(['other'])), bearer(await token(['caller'], 'y'.repeat(40)))];
      for (const md of cases) {
        const direct = (await unary(client, md.clone())) as grpc.ServiceError;
        const directCode = seen.decisions.at(-1)!.code;
        const proxied = (await unary(viaGateway, md.clone())) as grpc.ServiceError;
        const proxiedCode = (await gw.waitForCalls(gw.calls.length)).at(-1)!.code;
        expect(proxied.code).toBe(direct.code);
        expect(proxied.details).toBe(direct.details);
        expect(proxiedCode).toBe(directCode);
      }
      // Allowed through both: the gateway checks, then the service checks again (defence in depth).
      const ok = await unary(viaGateway, bearer(await token(['caller'])));
      expect(ok).toMatchObject({ subject: 'alice' });
    } finally {
      viaGateway.close();
      await gw.close();
    }
  });
});

describe('bearerTokenInterceptor', () => {
  let bulwark: Bulwark;
  let server: grpc.Server;
  let port: number;
  const seen: Seen = { handled: 0, decisions: [], authorization: [], traceparent: [] };
  beforeAll(async () => {
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    bulwark = await Bulwark.create({ config: parseYaml(policy(null)) as Record<string, unknown> });
    ({ server, port } = await startProtectedServer(bulwark, seen));
  });
  afterAll(async () => {
    propagation.disable();
    server.forceShutdown();
    await bulwark.close();
  });

  const spanContext = {
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: '00f067aa0ba902b7',
    traceFlags: TraceFlags.SAMPLED,
    isRemote: false,
  };

  it('attaches the token per call and propagates the trace context', async () => {
    let calls = 0;
    const ok = await token(['caller']);
    const client = new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
      interceptors: [
        bearerTokenInterceptor(
          async () => {
            calls++;
            return ok;
          },
          { getContext: () => trace.setSpanContext(ROOT_CONTEXT, spanContext) },
        ),
      ],
    }) as EchoClientInstance;
    try {
      expect(await unary(client)).toMatchObject({ subject: 'alice' });
      expect(await unary(client)).toMatchObject({ subject: 'alice' });
      expect(calls).toBe(2);
      expect(seen.authorization.at(-1)).toBe(`Bearer ${ok}`);
      expect(seen.traceparent.at(-1)).toBe('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
    } finally {
      client.close();
    }
  });

  it('no token: the call fails locally with UNAUTHENTICATED and never reaches the server', async () => {
    const before = seen.decisions.length;
    for (const source of [() => null, () => Promise.reject(new Error('idp down')), () => 'bad\ntoken']) {
      const client = new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
        interceptors: [bearerTokenInterceptor(source, { propagateTrace: false })],
      }) as EchoClientInstance;
      const err = (await unary(client)) as grpc.ServiceError;
      client.close();
      expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(seen.decisions.length).toBe(before);
  });
});
