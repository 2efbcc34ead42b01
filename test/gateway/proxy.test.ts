import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request, Agent } from 'undici';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { Readable } from 'node:stream';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import {
  bodyOf,
  rawRequest,
  selfSignedCert,
  startGateway,
  startUpstream,
  statusOf,
  type TestGateway,
  type TestUpstream,
} from '../helpers/net.js';

function config(upstreamOrigin: string, extra = ''): string {
  return `
version: 1
listeners:
  - address: 127.0.0.1
    port: 0
    trustedProxies: ['10.0.0.0/8']
    limits: { maxBodyBytes: 1024, maxHeaders: 30, maxHeaderBytes: 4096, headersTimeoutMs: 400, requestTimeoutMs: 1500 }
upstreams:
  app:
    endpoints: ['${upstreamOrigin}']
    timeouts: { headersMs: 500, connectMs: 500, idleMs: 500, totalMs: 2000 }
routes:
  - id: items
    match: { path: { glob: '/items/{id}' }, methods: [GET] }
    upstream: app
    auth: { public: true }
  - id: api
    match: { path: { prefix: /api } }
    upstream: app
    auth: { public: true }
${extra}`;
}

describe('HTTP/1.1 gateway', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await startUpstream();
    gw = await startGateway(config(upstream.origin));
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  it('forwards the canonical path and query, and the upstream response', async () => {
    const res = await request(`${gw.url}/api//v1/./x/../users?b=2&a=/../1`);
    expect(res.statusCode).toBe(200);
    const seen = (await res.body.json()) as { url: string };
    expect(seen.url).toBe('/api/v1/users?b=2&a=/../1');
  });

  it('matches glob params and method; other methods get a 404 problem', async () => {
    expect((await request(`${gw.url}/items/42`)).statusCode).toBe(200);
    const res = await request(`${gw.url}/items/42`, { method: 'DELETE' });
    expect(res.statusCode).toBe(404);
    expect(res.headers['content-type']).toBe('application/problem+json');
    const problem = (await res.body.json()) as Record<string, unknown>;
    expect(problem).toMatchObject({ status: 404, code: 'route.not_found', type: 'urn:bulwark:problem:route.not_found' });
    expect(problem['instance']).toBe(res.headers['x-request-id']);
  });

  it('strips hop-by-hop and Connection-nominated headers, but never the ones the gateway adds', async () => {
    const raw = await rawRequest(
      gw.port,
      'GET /api/h HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, x-secret, x-forwarded-for, x-request-id\r\nx-secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\nX-Forwarded-For: 6.6.6.6\r\nUpgrade-Insecure-Requests: 1\r\nConnection: close\r\n\r\n',
    );
    expect(statusOf(raw)).toBe(200);
    const seen = JSON.parse(bodyOf(raw)) as { headers: Record<string, string> };
    expect(seen.headers['x-secret']).toBeUndefined();
    expect(seen.headers['keep-alive']).toBeUndefined();
    expect(seen.headers['te']).toBeUndefined();
    expect(seen.headers['proxy-authorization']).toBeUndefined();
    expect(seen.headers['upgrade-insecure-requests']).toBe('1');
    // The client named x-forwarded-for / x-request-id in Connection: the gateway's own values still arrive.
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe('a.test');
    expect(seen.headers['host']).toBe('a.test');
  });

  it('does not believe X-Forwarded-* from an untrusted peer', async () => {
    const res = await request(`${gw.url}/api/x`, {
      headers: {
        'x-forwarded-for': '1.2.3.4',
        'x-forwarded-proto': 'https',
        'x-forwarded-host': 'evil',
        forwarded: 'for=1.2.3.4',
        'x-real-ip': '1.2.3.4',
      },
    });
    const seen = (await res.body.json()) as { headers: Record<string, string> };
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).not.toBe('evil');
    expect(seen.headers['forwarded']).toBeUndefined();
    expect(seen.headers['x-real-ip']).toBeUndefined();
  });

  it('propagates a valid X-Request-Id and replaces an unsafe one', async () => {
    const ok = await request(`${gw.url}/api/x`, { headers: { 'x-request-id': 'req-123' } });
    expect(ok.headers['x-request-id']).toBe('req-123');
    expect(((await ok.body.json()) as { headers: Record<string, string> }).headers['x-request-id']).toBe('req-123');
    const bad = await request(`${gw.url}/api/x`, { headers: { 'x-request-id': 'a b<script>' } });
    expect(bad.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    await bad.body.dump();
  });

  it('streams request bodies up to the limit and refuses larger ones with 413 (Content-Length and chunked)', async () => {
    const small = await request(`${gw.url}/api/upload`, { method: 'POST', body: Buffer.alloc(1000, 1) });
    expect(((await small.body.json()) as { bodyBytes: number }).bodyBytes).toBe(1000);
    const big = await request(`${gw.url}/api/upload`, { method: 'POST', body: Buffer.alloc(2000, 1) });
    expect(big.statusCode).toBe(413);
    expect(((await big.body.json()) as { code: string }).code).toBe('request.body_too_large');
    const chunked = await request(`${gw.url}/api/upload`, {
      method: 'POST',
      body: Readable.from([Buffer.alloc(600), Buffer.alloc(600)]),
    });
    expect(chunked.statusCode).toBe(413);
    expect(((await chunked.body.json()) as { code: string }).code).toBe('request.body_too_large');
  });

  it('answers 431 to a header flood and to an oversized head', async () => {
    const many = Array.from({ length: 40 }, (_, i) => `x-h${i}: v\r\n`).join('');
    const r1 = await rawRequest(gw.port, `GET /api/x HTTP/1.1\r\nHost: a\r\n${many}\r\n`);
    expect(statusOf(r1)).toBe(431);
    expect(JSON.parse(bodyOf(r1)).code).toBe('request.headers_too_large');
    const r2 = await rawRequest(gw.port, `GET /api/x HTTP/1.1\r\nHost: a\r\nx-big: ${'a'.repeat(5000)}\r\n\r\n`);
    expect(statusOf(r2)).toBe(431);
  });

  it('answers malformed requests with 400 problems and no stack traces', async () => {
    for (const bad of [
      'GARBAGE\r\n\r\n',
      'GET /api/x HTTP/9.9\r\nHost: a\r\n\r\n',
      'GET /api/x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n',
      'GET /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n',
      'POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n',
    ]) {
      const raw = await rawRequest(gw.port, bad);
      expect(statusOf(raw), bad).toBe(400);
      expect(raw).not.toMatch(/at .+\.(js|ts):\d+/);
    }
  });

  it('refuses duplicate Host headers and bad targets with 400 problems', async () => {
    const dup = await rawRequest(gw.port, 'GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n');
    expect(statusOf(dup)).toBe(400);
    expect(JSON.parse(bodyOf(dup)).code).toBe('request.host_mismatch');
    const same = await rawRequest(gw.port, 'GET /api/x HTTP/1.1\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(JSON.parse(bodyOf(same)).code).toBe('request.host_duplicate');
    const slash = await rawRequest(gw.port, 'GET /api/a%2F..%2F..%2Fadmin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(JSON.parse(bodyOf(slash)).code).toBe('request.path_encoded_slash');
    const abs = await rawRequest(gw.port, 'GET http://evil.test/api/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
    expect(JSON.parse(bodyOf(abs)).code).toBe('request.host_mismatch');
    const star = await rawRequest(gw.port, 'OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(statusOf(star)).toBe(400);
  });

  it('times out a slow client with 408', async () => {
    const raw = await rawRequest(gw.port, 'GET /api/x HTTP/1.1\r\nHost: a\r\nX-Slow: ', 3000);
    expect(statusOf(raw)).toBe(408);
    expect(JSON.parse(bodyOf(raw)).code).toBe('request.timeout');
  });

  it('refuses protocol upgrades with 501', async () => {
    const raw = await rawRequest(gw.port, 'GET /api/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(statusOf(raw)).toBe(501);
    expect(JSON.parse(bodyOf(raw)).code).toBe('request.upgrade_unsupported');
  });
});

describe('upstream failures', () => {
  it('maps refused, reset, hung and garbage upstreams to 502/504 problems and keeps serving', async () => {
    // refused: a port nobody listens on
    const probe = createTcpServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const deadPort = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const servers: TcpServer[] = [];
    const tcp = async (onSocket: (s: Socket) => void) => {
      const s = createTcpServer(onSocket);
      servers.push(s);
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
      return (s.address() as { port: number }).port;
    };
    const resetPort = await tcp((s) => s.once('data', () => s.resetAndDestroy()));
    const hangPort = await tcp(() => {});
    const garbagePort = await tcp((s) => s.once('data', () => s.end('NOT HTTP AT ALL\r\n\r\n')));
    const midBodyPort = await tcp((s) =>
      s.once('data', () => {
        s.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial');
        setTimeout(() => s.destroy(), 50);
      }),
    );
    const gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams:
  refused: { endpoints: ['http://127.0.0.1:${deadPort}'] }
  reset: { endpoints: ['http://127.0.0.1:${resetPort}'] }
  hang: { endpoints: ['http://127.0.0.1:${hangPort}'], timeouts: { headersMs: 300 } }
  garbage: { endpoints: ['http://127.0.0.1:${garbagePort}'] }
  midbody: { endpoints: ['http://127.0.0.1:${midBodyPort}'] }
routes:
  - { id: refused, auth: { public: true }, match: { path: { prefix: /refused } }, upstream: refused }
  - { id: reset, auth: { public: true }, match: { path: { prefix: /reset } }, upstream: reset }
  - { id: hang, auth: { public: true }, match: { path: { prefix: /hang } }, upstream: hang }
  - { id: garbage, auth: { public: true }, match: { path: { prefix: /garbage } }, upstream: garbage }
  - { id: midbody, auth: { public: true }, match: { path: { prefix: /midbody } }, upstream: midbody }
`);
    try {
      const expectations: [string, number, string][] = [
        ['/refused', 502, 'upstream.unreachable'],
        ['/reset', 502, 'upstream.reset'],
        ['/hang', 504, 'upstream.timeout'],
        ['/garbage', 502, 'upstream.bad_response'],
      ];
      for (const [path, status, code] of expectations) {
        const res = await request(gw.url + path);
        expect(res.statusCode, path).toBe(status);
        const body = await res.body.text();
        expect(JSON.parse(body).code, path).toBe(code);
        expect(body).not.toMatch(/ECONN|at .+\.js/);
      }
      // headers already sent: the response is cut short, never completed as if whole
      await expect(request(gw.url + '/midbody').then((r) => r.body.text())).rejects.toThrow();
      // and the gateway still serves
      expect((await request(gw.url + '/refused')).statusCode).toBe(502);
    } finally {
      await gw.close();
      for (const s of servers) s.close();
    }
  });
});

/** One HTTP/2 request on `session`: GET unless the headers say otherwise; status and body text. */
function h2ask(session: ClientHttp2Session, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'GET', ...headers });
    let status = 0;
    let body = '';
    stream.on('response', (h) => (status = Number(h[':status'])));
    stream.setEncoding('utf8');
    stream.on('data', (c: string) => (body += c));
    stream.on('end', () => resolve({ status, body }));
    stream.on('error', reject);
  });
}

const H2C_ALL = (origin: string) => `
version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]
upstreams: { app: { endpoints: ['${origin}'] } }
routes: [{ id: all, auth: { public: true }, match: { path: { prefix: / } }, upstream: app }]
`;

describe('HTTP/2', () => {
  it('serves h2c (prior knowledge) and HTTP/1.1 on one port', async () => {
    const upstream = await startUpstream();
    const gw = await startGateway(H2C_ALL(upstream.origin));
    try {
      const session = h2connect(gw.url);
      const { status, body } = await h2ask(session, { ':path': '/a/../b' });
      session.close();
      expect(status).toBe(200);
      expect(JSON.parse(body).url).toBe('/b');
      expect((await request(`${gw.url}/c`)).statusCode).toBe(200);
    } finally {
      await gw.close();
      await upstream.close();
    }
  });

  it('HTTP/2: a Host equal to :authority is accepted (RFC 9113 §8.3.1), a different one refused', async () => {
    const upstream = await startUpstream();
    const gw = await startGateway(H2C_ALL(upstream.origin));
    const session = h2connect(gw.url);
    const ask = (headers: Record<string, string>) => h2ask(session, { ':path': '/x', ...headers });
    try {
      const authority = `127.0.0.1:${gw.port}`;
      expect((await ask({ ':authority': authority, host: authority })).status).toBe(200);
      expect((await ask({ ':authority': authority, host: authority.toUpperCase() })).status).toBe(200);
      const other = await ask({ ':authority': authority, host: 'evil.example' });
      expect(other.status).toBe(400);
      expect(JSON.parse(other.body).code).toBe('request.host_mismatch');
    } finally {
      session.close();
      await gw.close();
      await upstream.close();
    }
  });

  it('serves HTTP/2 and HTTP/1.1 over TLS with ALPN', async () => {
    const upstream = await startUpstream();
    const tls = selfSignedCert();
    const gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: https, tls: { cert: '${tls.cert}', key: '${tls.key}' } }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
routes: [{ id: all, auth: { public: true }, match: { path: { prefix: / } }, upstream: app }]
`);
    try {
      const session = h2connect(`https://localhost:${gw.port}`, { rejectUnauthorized: false });
      const result = await new Promise<{ status: number; alpn: string | undefined; body: string }>((resolve, reject) => {
        const stream = session.request({ ':path': '/x', ':method': 'POST' });
        stream.end('hello');
        let status = 0;
        let body = '';
        stream.on('response', (h) => (status = Number(h[':status'])));
        stream.setEncoding('utf8');
        stream.on('data', (c: string) => (body += c));
        stream.on('end', () => resolve({ status, alpn: session.alpnProtocol, body }));
        stream.on('error', reject);
      });
      session.close();
      expect(result.status).toBe(200);
      expect(result.alpn).toBe('h2');
      const seen = JSON.parse(result.body);
      expect(seen.bodyBytes).toBe(5);
      expect(seen.headers['x-forwarded-proto']).toBe('https');
      const dispatcher = new Agent({ connect: { rejectUnauthorized: false } });
      const h1 = await request(`https://localhost:${gw.port}/y`, { dispatcher });
      expect(h1.statusCode).toBe(200);
      await h1.body.dump();
      await dispatcher.close();
    } finally {
      await gw.close();
      await upstream.close();
    }
  });
});

describe('HTTP/2 idle timeout', () => {
  it.each(['h2c', 'https'])(
    '%s: a quiet stream outlives idleTimeoutMs; a connection with no stream is closed after it',
    { timeout: 20_000 },
    async (protocol) => {
      // The upstream answers at once, then says nothing for three idle periods, then finishes.
      const upstream = await startUpstream((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('a');
        setTimeout(() => res.end('b'), 900);
      });
      const tls = protocol === 'https' ? selfSignedCert() : null;
      const gw = await startGateway(`
version: 1
listeners:
  - address: 127.0.0.1
    port: 0
    protocol: ${protocol}
    limits: { idleTimeoutMs: 300 }
${tls === null ? '' : `    tls: { cert: '${tls.cert}', key: '${tls.key}' }\n`}upstreams: { app: { endpoints: ['${upstream.origin}'] } }
routes: [{ id: all, auth: { public: true }, match: { path: { prefix: / } }, upstream: app }]
`);
      try {
        const session =
          tls === null ? h2connect(gw.url) : h2connect(`https://localhost:${gw.port}`, { rejectUnauthorized: false });
        const closed = new Promise<void>((resolve) => session.once('close', () => resolve()));
        const body = await new Promise<string>((resolve, reject) => {
          const stream = session.request({ ':path': '/watch', ':method': 'GET' });
          let text = '';
          stream.setEncoding('utf8');
          stream.on('data', (c: string) => (text += c));
          stream.on('end', () => resolve(text));
          stream.on('error', reject);
        });
        expect(body).toBe('ab');
        // Nothing open now: the gateway ends the connection (GOAWAY) once it has been idle.
        await closed;
        expect(session.closed || session.destroyed).toBe(true);
      } finally {
        await gw.close();
        await upstream.close();
      }
    },
  );
});

describe('slow request bodies', () => {
  it('cuts a client that stops sending its body with 408 and keeps serving', async () => {
    const upstream = await startUpstream();
    const gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0, limits: { headersTimeoutMs: 300, requestTimeoutMs: 600 } }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
routes: [{ id: all, auth: { public: true }, match: { path: { prefix: / } }, upstream: app }]
`);
    try {
      const raw = await rawRequest(gw.port, 'POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly-part', 3000);
      expect(statusOf(raw)).toBe(408);
      expect(JSON.parse(bodyOf(raw)).code).toBe('request.timeout');
      expect(upstream.requests.filter((r) => r.body.length === 100)).toHaveLength(0);
      const res = await request(`${gw.url}/ok`);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    } finally {
      await gw.close();
      await upstream.close();
    }
  });
});

describe('response shapes', () => {
  it('relays HEAD, 204, 304, large streamed bodies and repeated response headers', async () => {
    const big = Buffer.alloc(5 * 1024 * 1024, 7);
    const upstream = await startUpstream((req, res) => {
      if (req.url === '/nocontent') return void res.writeHead(204).end();
      if (req.url === '/notmodified') return void res.writeHead(304, { etag: '"x"' }).end();
      if (req.url === '/cookies') {
        res.setHeader('set-cookie', ['a=1', 'b=2']);
        return void res.end('ok');
      }
      if (req.url === '/big') {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        // chunked, in many writes: the gateway must stream, not buffer
        for (let i = 0; i < 80; i++) res.write(big.subarray(i * 65536, (i + 1) * 65536));
        return void res.end();
      }
      res.writeHead(200, { 'content-length': '5', 'x-up': '1' });
      res.end(req.method === 'HEAD' ? undefined : 'hello');
    });
    const gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
routes: [{ id: all, auth: { public: true }, match: { path: { prefix: / } }, upstream: app }]
`);
    try {
      const head = await request(`${gw.url}/x`, { method: 'HEAD' });
      expect(head.statusCode).toBe(200);
      expect(head.headers['content-length']).toBe('5');
      expect(head.headers['x-up']).toBe('1');
      expect(await head.body.text()).toBe('');
      const nc = await request(`${gw.url}/nocontent`);
      expect(nc.statusCode).toBe(204);
      await nc.body.dump();
      const nm = await request(`${gw.url}/notmodified`);
      expect(nm.statusCode).toBe(304);
      expect(nm.headers['etag']).toBe('"x"');
      await nm.body.dump();
      const cookies = await request(`${gw.url}/cookies`);
      expect(cookies.headers['set-cookie']).toEqual(['a=1', 'b=2']);
      await cookies.body.dump();
      const res = await request(`${gw.url}/big`);
      let total = 0;
      for await (const chunk of res.body) {
        total += (chunk as Buffer).length;
        // a slow reader: backpressure must reach the upstream instead of buffering in the gateway
        if (total % (1024 * 1024) < 65536) await new Promise((r) => setTimeout(r, 5));
      }
      expect(total).toBe(big.length);
    } finally {
      await gw.close();
      await upstream.close();
    }
  });
});
