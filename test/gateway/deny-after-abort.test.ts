/**
 * A client that leaves while an asynchronous stage decides (a JWKS refetch, a Redis call) does not
 * turn a denial into an abort: the audit record keeps the verdict and its precise code, in the
 * gateway, the node:http adapter and the grpc-js interceptor alike. An allowed request the client
 * left before any answer is an abort (499, `request.aborted`).
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createBulwark, type Bulwark } from '../../src/adapters/bulwark.js';
import { createAuditLog, type AuditLog } from '../../src/audit/index.js';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { bulwarkGrpcInterceptor } from '../../src/grpc/interceptors.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { auditConfig, memorySink } from '../audit/helpers.js';
import { AUDIENCE, ISSUER, jwks, makeKey, mint, type TestKey } from '../authn/helpers.js';
import { echoClient, serveEcho, type EchoClientInstance } from '../grpc/harness.js';

const records: Record<string, unknown>[] = [];
const sink = memorySink(records);
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
const lastRequest = () => records.filter((r) => r['kind'] === 'request').at(-1);

describe('a decision reached after the client left', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-deny-after-abort-'));
  const logger = createLogger({ level: 'silent' });
  let key: TestKey;
  let stranger: TestKey;
  let slowJwks: Server;
  let fetches = 0;
  let url: string;
  let audit: AuditLog;

  beforeAll(async () => {
    key = await makeKey('k1');
    stranger = await makeKey('k9');
    // The first fetch (at start) is quick; a refetch for an unknown kid takes 400 ms.
    slowJwks = createServer((_req, res) => {
      const wait = fetches++ === 0 ? 0 : 400;
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks(key))), wait);
    });
    await new Promise<void>((r) => slowJwks.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(slowJwks.address() as AddressInfo).port}/jwks`;
    audit = await createAuditLog(auditConfig(dir), { logger, sinks: [sink] });
  });
  afterAll(async () => {
    await audit.close();
    await new Promise((r) => slowJwks.close(r));
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    records.length = 0;
  });
  const providers = () => ({
    idp: { issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['RS256'], jwksUrl: url, jwks: { cooldownMs: 1 } },
  });
  const settle = async () => {
    await delay(600);
    await audit.flush();
    await delay(30);
  };

  it('gateway: the unknown-kid denial decided 400 ms after the client left is audited as that denial', async () => {
    const loaded = parseConfig(
      JSON.stringify({
        version: 1,
        listeners: [{ address: '127.0.0.1', port: 0 }],
        upstreams: { app: { builtin: 'echo' } },
        telemetry: { logs: { level: 'error' } },
        authn: { providers: providers() },
        routes: [{ id: 'api', match: { path: { prefix: '/api' } }, upstream: 'app', auth: { provider: 'idp' } }],
      }),
      'gw.json',
      { checks: CONFIG_CHECKS },
    );
    const gateway = new Gateway({ logger, audit });
    await gateway.start(loaded.config, loaded.hash);
    try {
      const base = `http://127.0.0.1:${[...gateway.ports().values()][0]!}`;
      const signal = AbortSignal.timeout(100);
      await request(`${base}/api/x`, { headers: { authorization: `Bearer ${await mint(stranger)}` }, signal }).catch(() => {});
      await settle();
      expect(lastRequest()).toMatchObject({ status: 499, decision: 'deny', reason: 'jwt.unknown_kid' });
    } finally {
      await gateway.stop(500);
    }
  });

  describe('grpc-js interceptor', () => {
    let bulwark: Bulwark;
    let server: grpc.Server;
    let client: EchoClientInstance;
    beforeAll(async () => {
      bulwark = await createBulwark({
        config: {
          version: 1,
          telemetry: { logs: { level: 'error' } },
          routes: [{ id: 'echo', auth: { public: true }, match: { path: { exact: '/test.Echo/Unary' } } }],
        },
        logger,
        audit,
      });
      // A slow stage: the verdict comes 300 ms late.
      const evaluate = bulwark.evaluate.bind(bulwark);
      bulwark.evaluate = async (req) => {
        const evaluation = await evaluate(req);
        await delay(300);
        return evaluation;
      };
      let port: number;
      ({ server, port } = await serveEcho([bulwarkGrpcInterceptor(bulwark)]));
      client = echoClient(port);
    });
    afterAll(async () => {
      client.close();
      server.forceShutdown();
      await bulwark.close();
      await bulwark.telemetry.shutdown();
    });
    const cancelled = (method: 'Unary' | 'ServerStream') =>
      new Promise<number>((resolve) => {
        const call =
          method === 'Unary'
            ? client.Unary(Buffer.from('x'), new grpc.Metadata(), {}, (e: grpc.ServiceError | null) => resolve(e?.code ?? 0))
            : client.ServerStream(Buffer.from('x'), new grpc.Metadata());
        if (method === 'ServerStream') {
          call.on('data', () => {});
          call.on('error', (e: grpc.ServiceError) => resolve(e.code));
        }
        setTimeout(() => call.cancel(), 50);
      });

    it('a denial (no route) decided after the cancel keeps its code', async () => {
      expect(await cancelled('ServerStream')).toBe(grpc.status.CANCELLED);
      await settle();
      expect(lastRequest()).toMatchObject({ decision: 'deny', reason: 'route.not_found', grpcStatus: grpc.status.CANCELLED });
    });

    it('an allowed call cancelled before its handler ran is an abort, 499 as the gateway records it', async () => {
      expect(await cancelled('Unary')).toBe(grpc.status.CANCELLED);
      await settle();
      expect(lastRequest()).toMatchObject({
        status: 499,
        decision: 'error',
        reason: 'request.aborted',
        grpcStatus: grpc.status.CANCELLED,
      });
    });
  });
});
