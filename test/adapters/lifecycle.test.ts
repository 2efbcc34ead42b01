/**
 * A request's whole life through each library adapter, as through the gateway: its
 * concurrency slot is freed when the response is over (also when the client left first),
 * its audit event is recorded with status and verdict into a chain that verifies, the
 * application's business events join that chain, and its span and metrics are there.
 */
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import express from 'express';
import Fastify from 'fastify';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import {
  createServer,
  ServerResponse as NodeServerResponse,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createBulwark, type Bulwark, type BulwarkRequestState } from '../../src/adapters/bulwark.js';
import { HoldableServerResponse } from '../../src/index.js';
import { bulwarkFastify } from '../../src/adapters/fastify.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createTelemetry } from '../../src/telemetry/index.js';
import { parsePrometheus, valueOf } from '../telemetry/helpers.js';

const SECRET = 'library-lifecycle-test-secret-0123456789';

function configFor(dir: string) {
  return {
    version: 1,
    authn: { providers: { hs: { issuer: 'https://issuer.test', audiences: ['svc'], algorithms: ['HS256'], secret: SECRET } } },
    rateLimits: { policies: [{ id: 'one-at-a-time', concurrency: 1, key: ['route'] }] },
    audit: {
      durability: 'fast',
      wal: { dir: join(dir, 'wal') },
      sinks: [{ file: { path: join(dir, 'audit.jsonl') } }],
    },
    routes: [
      {
        id: 'items',
        auth: { public: true },
        match: { path: { glob: '/items/{id}' }, methods: ['GET', 'HEAD'] },
        rateLimit: ['one-at-a-time'],
      },
      { id: 'slow', auth: { public: true }, match: { path: { exact: '/slow' } }, rateLimit: ['one-at-a-time'] },
      { id: 'secure', auth: { provider: 'hs' }, match: { path: { exact: '/secure' } } },
    ],
  };
}

/** What every adapter's application does: echo the state; `/slow` never answers; `?refund` records a business event. */
function appHandler(bulwark: Bulwark, state: BulwarkRequestState, url: string): { hang: boolean; body: string } {
  if (url.startsWith('/slow')) return { hang: true, body: '' };
  if (url.includes('refund')) {
    bulwark.audit!.record({ action: 'payment.refund', subject: 'alice', resource: `order:${state.route?.params['id']}` });
  }
  return { hang: false, body: JSON.stringify(state) };
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

type Mount = (bulwark: Bulwark) => Promise<{ base: string; close(): Promise<void> }>;

function nodeHandler(bulwark: Bulwark) {
  return (req: IncomingMessage & { bulwark: BulwarkRequestState }, res: ServerResponse) => {
    const out = appHandler(bulwark, req.bulwark, req.url!);
    if (out.hang) return;
    res.setHeader('content-type', 'application/json');
    res.setHeader('content-length', Buffer.byteLength(out.body));
    res.end(out.body);
  };
}

const ADAPTERS: Record<string, Mount> = {
  'node:http': async (bulwark) => {
    const server = createServer(bulwark.protect(nodeHandler(bulwark)));
    return { base: await listen(server), close: () => new Promise<void>((r) => server.close(() => r())) };
  },
  Express: async (bulwark) => {
    const app = express();
    app.use(bulwark.middleware());
    const handle = nodeHandler(bulwark);
    app.use((req, res) => handle(req as unknown as IncomingMessage & { bulwark: BulwarkRequestState }, res));
    const server = createServer(app);
    return { base: await listen(server), close: () => new Promise<void>((r) => server.close(() => r())) };
  },
  Fastify: async (bulwark) => {
    const app = Fastify();
    await app.register(bulwarkFastify, { bulwark });
    app.all('/*', async (req, reply) => {
      const out = appHandler(bulwark, (req as unknown as { bulwark: BulwarkRequestState }).bulwark, req.url);
      if (out.hang) return new Promise(() => {});
      return reply.type('application/json').send(out.body);
    });
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    return { base, close: () => app.close() };
  },
};

async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.each(Object.keys(ADAPTERS))('%s adapter: the request lifecycle', (name) => {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-lifecycle-'));
  const exporter = new InMemorySpanExporter();
  let bulwark: Bulwark;
  let base: string;
  let closeApp: () => Promise<void>;

  const records = async (): Promise<Record<string, unknown>[]> => {
    await bulwark.audit!.flush();
    return readFileSync(join(dir, 'audit.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  };

  beforeAll(async () => {
    const config = configFor(dir);
    const telemetry = createTelemetry(
      { telemetry: { traces: { exporter: 'otlp' }, logs: { level: 'error' } }, routes: config.routes },
      { logger: createLogger({ level: 'silent' }), role: 'single', spanExporter: exporter, simpleSpanProcessor: true },
    );
    bulwark = await createBulwark({ config, logger: createLogger({ level: 'silent' }), telemetry });
    ({ base, close: closeApp } = await ADAPTERS[name]!(bulwark));
  });
  afterAll(async () => {
    await closeApp();
    await bulwark.close();
    await bulwark.telemetry.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('frees a concurrency slot when the response is over, and when the client leaves first', async () => {
    // One slot: a leaked one would refuse every request after the first.
    for (let i = 0; i < 5; i++) {
      const res = await request(`${base}/items/${i}`);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    // The handler never answers; the client gives up.
    const controller = new AbortController();
    const hanging = request(`${base}/slow`, { signal: controller.signal }).catch((e: Error) => e);
    await waitFor(async () => {
      // While /slow holds the route's slot, the next request to that route is refused.
      const probe = await request(`${base}/slow`);
      await probe.body.dump();
      return probe.statusCode === 429;
    });
    controller.abort();
    await hanging;
    await waitFor(async () => {
      const res = await request(`${base}/items/9`);
      await res.body.dump();
      return res.statusCode === 200;
    });
  });

  it('audits every request once its response is over, with status, verdict and request id, in a chain that verifies', async () => {
    const ok = await request(`${base}/items/41`);
    const okId = ok.headers['x-request-id'];
    expect(JSON.parse(await ok.body.text())).toMatchObject({ requestId: expect.any(String) });
    const noToken = await request(`${base}/secure`, { headers: { authorization: 'Bearer not.a.token' } });
    expect(noToken.statusCode).toBe(401);
    const deniedId = noToken.headers['x-request-id'];
    await noToken.body.dump();
    const missing = await request(`${base}/nowhere`);
    expect(missing.statusCode).toBe(404);
    await missing.body.dump();
    const encoded = await request(`${base}/items/a%2F..%2Fb`);
    expect(encoded.statusCode).toBe(400);
    await encoded.body.dump();

    const head = await request(`${base}/items/42`, { method: 'HEAD' });
    expect(head.statusCode).toBe(200);
    await head.body.dump();

    await waitFor(async () => (await records()).some((r) => r['path'] === '/items/a%2F..%2Fb' || r['status'] === 400));
    const requests = (await records()).filter((r) => r['kind'] === 'request');
    const allowed = requests.find((r) => r['path'] === '/items/41');
    expect(allowed).toMatchObject({ decision: 'allow', status: 200, route: 'items', method: 'GET' });
    if (okId !== undefined) expect(allowed!['requestId']).toBe(okId);
    expect(allowed!['bytesOut']).toBeGreaterThan(0);
    // HEAD: a length announced, no body sent.
    expect(requests.find((r) => r['path'] === '/items/42' && r['method'] === 'HEAD')).toMatchObject({ status: 200, bytesOut: 0 });
    const denied = requests.find((r) => r['path'] === '/secure');
    expect(denied).toMatchObject({ decision: 'deny', stage: 'authn', reason: 'jwt.malformed', status: 401, requestId: deniedId });
    // The precise reason is for the audit; the raw token never is.
    expect(JSON.stringify(requests)).not.toContain('not.a.token');
    expect(requests.find((r) => r['path'] === '/nowhere')).toMatchObject({
      decision: 'deny',
      reason: 'route.not_found',
      status: 404,
    });
    expect(requests.find((r) => r['status'] === 400)).toMatchObject({ decision: 'deny', reason: 'request.path_encoded_slash' });
    // The slow request the client abandoned is there too, as the client saw it: aborted, not served.
    expect(requests.find((r) => r['path'] === '/slow' && r['status'] === 499)).toMatchObject({
      decision: 'error',
      reason: 'request.aborted',
    });
    // One event per request: the lifecycle test's 5 + 1 + probes, and this test's 4; none twice.
    const ids = requests.map((r) => r['requestId']);
    expect(new Set(ids).size).toBe(ids.length);

    const report = await verifyAudit({ file: join(dir, 'audit.jsonl') });
    expect(report.ok).toBe(true);
  });

  it("records the application's business events into the same chain", async () => {
    const res = await request(`${base}/items/77?refund=1`);
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    await waitFor(async () => (await records()).some((r) => r['action'] === 'payment.refund'));
    const all = await records();
    const event = all.find((r) => r['action'] === 'payment.refund')!;
    expect(event).toMatchObject({ kind: 'event', subject: 'alice', resource: 'order:77' });
    expect(event['chain']).toBe(all.find((r) => r['kind'] === 'request')!['chain']);
    expect((await verifyAudit({ file: join(dir, 'audit.jsonl') })).ok).toBe(true);
  });

  it('ends a server span per request and counts it in the metrics', async () => {
    exporter.reset();
    const ok = await request(`${base}/items/5`);
    await ok.body.dump();
    const denied = await request(`${base}/secure`);
    expect(denied.statusCode).toBe(401);
    await denied.body.dump();
    await waitFor(() => exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.SERVER).length >= 2);
    const spans = exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.SERVER);
    expect(spans.map((s) => s.attributes['http.response.status_code']).sort()).toEqual([200, 401]);
    expect(spans.find((s) => s.attributes['http.response.status_code'] === 401)!.attributes['bulwark.decision.code']).toBe(
      'jwt.missing',
    );
    const metrics = (await bulwark.metrics())!;
    expect(metrics.contentType).toContain('text/plain');
    const families = parsePrometheus(metrics.body);
    expect(
      valueOf(families, 'bulwark_http_request_duration_seconds_count', { route: 'items', method: 'GET', status_class: '2xx' }),
    ).toBeGreaterThanOrEqual(1);
    expect(valueOf(families, 'bulwark_authn_outcomes_total', { outcome: 'deny', reason: 'jwt.missing' })).toBeGreaterThanOrEqual(
      1,
    );
  });
});

describe('library audit under whenFull: block', () => {
  it('a closed audit log refuses requests with 503 audit.unavailable rather than serve them unaudited', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-lifecycle-'));
    const bulwark = await createBulwark({ config: configFor(dir), logger: createLogger({ level: 'silent' }) });
    const server = createServer(bulwark.protect((_req, res) => res.end('served')));
    const base = await listen(server);
    try {
      expect((await request(`${base}/items/1`)).statusCode).toBe(200);
      await bulwark.audit!.close();
      const refused = await request(`${base}/items/2`);
      expect(refused.statusCode).toBe(503);
      expect(((await refused.body.json()) as { code: string }).code).toBe('audit.unavailable');
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
      await bulwark.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('library audit in durable mode', () => {
  // A wide group-commit window: a response that did not wait for its event would end well before the commit.
  const durableConfig = (dir: string) => ({
    ...configFor(dir),
    rateLimits: undefined,
    routes: [{ id: 'items', auth: { public: true }, match: { path: { glob: '/items/{id}' } } }],
    audit: {
      durability: 'durable',
      wal: { dir: join(dir, 'wal'), fsyncIntervalMs: 50 },
      sinks: [{ file: { path: join(dir, 'audit.jsonl') } }],
    },
  });

  type App = { base: string; close: () => Promise<void> };
  const serve = async (server: Server): Promise<App> => ({
    base: await listen(server),
    close: () => new Promise<void>((r) => server.close(() => r())),
  });
  // `holdable`: the server builds HoldableServerResponse, so a held end is a flag (no property defined on a
  // response). Express swaps each response's prototype for its own, so it takes the general path on any server.
  const apps: Record<string, { holdable: boolean; start: (bulwark: Bulwark) => Promise<App> }> = {
    'node:http': { holdable: false, start: (bulwark) => serve(createServer(bulwark.protect((_req, res) => res.end('served')))) },
    'node:http, HoldableServerResponse': {
      holdable: true,
      start: (bulwark) =>
        serve(
          createServer(
            { ServerResponse: HoldableServerResponse },
            bulwark.protect((_req, res) => res.end('served')),
          ),
        ),
    },
    express: {
      holdable: false,
      start: (bulwark) => {
        const app = express();
        app.use(bulwark.middleware());
        app.get('/items/:id', (_req, res) => void res.send('served'));
        return serve(createServer({ ServerResponse: HoldableServerResponse }, app));
      },
    },
    fastify: { holdable: false, start: (bulwark) => fastifyApp(bulwark, Fastify()) },
    'fastify, HoldableServerResponse (serverFactory)': {
      holdable: true,
      start: (bulwark) =>
        fastifyApp(
          bulwark,
          Fastify({ serverFactory: (handler) => createServer({ ServerResponse: HoldableServerResponse }, handler) }),
        ),
    },
  };
  async function fastifyApp(bulwark: Bulwark, app: ReturnType<typeof Fastify>): Promise<App> {
    await app.register(bulwarkFastify, { bulwark });
    app.get('/items/:id', async () => 'served');
    await app.listen({ port: 0, host: '127.0.0.1' });
    return { base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, close: () => app.close() };
  }

  for (const [name, { holdable, start }] of Object.entries(apps)) {
    it(`${name}: a response ends only once its event is committed, denials included`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-durable-lib-'));
      const bulwark = await createBulwark({ config: durableConfig(dir), logger: createLogger({ level: 'silent' }) });
      const app = await start(bulwark);
      const defineProperty = vi.spyOn(Object, 'defineProperty');
      try {
        const written = () => bulwark.audit!.stats().written;
        await bulwark.audit!.flush();
        const before = written();
        let done = 0;
        const behind: number[] = [];
        await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            const res = await request(`${app.base}${i % 4 === 3 ? '/nowhere' : `/items/${i}`}`);
            expect(res.statusCode).toBe(i % 4 === 3 ? 404 : 200);
            await res.body.text();
            done++;
            // Every response over so far has its event in the WAL (besides the start record and checkpoints).
            if (written() - before < done) behind.push(done);
          }),
        );
        expect(behind).toEqual([]);
        const onResponses = defineProperty.mock.calls.filter(([target]) => target instanceof NodeServerResponse);
        if (holdable) expect(onResponses).toEqual([]);
        else expect(onResponses.length).toBeGreaterThanOrEqual(20);
      } finally {
        defineProperty.mockRestore();
        await app.close();
        await bulwark.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});

describe('library audit in durable mode: handlers that answer twice', () => {
  let laterEnds = 0;
  const config = (dir: string) => ({
    version: 1,
    routes: [{ id: 'all', auth: { public: true }, match: { path: { prefix: '/' } } }],
    audit: {
      durability: 'durable',
      wal: { dir: join(dir, 'wal'), fsyncIntervalMs: 30 },
      sinks: [{ file: { path: join(dir, 'a.jsonl') } }],
    },
  });
  const apps: Record<string, (bulwark: Bulwark) => Promise<{ base: string; close: () => Promise<void> }>> = {
    'express: res.send, then next()': async (bulwark) => {
      const app = express();
      app.use(bulwark.middleware());
      app.get('/x', (_req, res, next) => {
        res.send('a');
        next();
      });
      const server = createServer(app);
      return { base: await listen(server), close: () => new Promise<void>((r) => server.close(() => r())) };
    },
    'fastify: reply.send twice': async (bulwark) => {
      const app = Fastify();
      await app.register(bulwarkFastify, { bulwark });
      app.get('/x', (_req, reply) => {
        void reply.send('a');
        void reply.send('b');
      });
      await app.listen({ port: 0, host: '127.0.0.1' });
      return { base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, close: () => app.close() };
    },
    'node:http: end(x, cb) then end(cb2)': async (bulwark) => {
      const server = createServer(
        bulwark.protect((_req, res) => {
          res.end('a', () => {});
          res.end(() => laterEnds++);
        }),
      );
      return { base: await listen(server), close: () => new Promise<void>((r) => server.close(() => r())) };
    },
  };
  for (const [name, start] of Object.entries(apps)) {
    it(`${name}: the first answer, whole, and the connection stays usable`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-durable-twice-'));
      const bulwark = await createBulwark({ config: config(dir), logger: createLogger({ level: 'silent' }) });
      const app = await start(bulwark);
      const { Pool } = await import('undici');
      const pool = new Pool(app.base, { connections: 1 });
      try {
        for (let i = 0; i < 3; i++) {
          const res = await pool.request({ path: '/x', method: 'GET' });
          expect({ status: res.statusCode, body: await res.body.text() }).toEqual({ status: 200, body: 'a' });
        }
        // A second end()'s callback runs once the response has finished (node:http case).
        if (name.startsWith('node:http')) await expect.poll(() => laterEnds).toBe(3);
      } finally {
        await pool.close();
        await app.close();
        await bulwark.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
