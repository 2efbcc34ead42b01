import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import type { ServerResponse } from 'node:http';
import { connect as h2connect } from 'node:http2';
import {
  bodyOf,
  h2Answer,
  h2Frame,
  hpackLiterals,
  rawRequest,
  startGateway,
  startUpstream,
  statusOf,
  type TestGateway,
  type TestUpstream,
} from '../helpers/net.js';

// Attacks from outside, over raw sockets: each of these once crashed the gateway, answered the
// wrong request, or left a connection open for ever.

function config(upstreamOrigin: string, protocol: 'http' | 'h2c'): string {
  return `
version: 1
listeners:
  - address: 127.0.0.1
    port: 0
    protocol: ${protocol}
    limits: { maxBodyBytes: 1024, headersTimeoutMs: 300, idleTimeoutMs: 300, requestTimeoutMs: 3000 }
authn:
  providers:
    hs:
      issuer: https://issuer.test
      audiences: [api]
      algorithms: [HS256]
      secret: 0123456789abcdef0123456789abcdef
upstreams:
  app:
    endpoints: ['${upstreamOrigin}']
routes:
  - id: api
    match: { path: { prefix: /api } }
    upstream: app
    auth: { public: true }
  - id: private
    match: { path: { prefix: /private } }
    upstream: app
    auth: { provider: hs }
`;
}

/** Responses in a raw HTTP/1.1 byte stream, by status line. */
function statuses(raw: string): number[] {
  return [...raw.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
}

/** Resolves with how the connection ended: 'closed' by the server, or 'open' after `ms`. */
function serverCloses(socket: Socket, ms: number): Promise<'closed' | 'open'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('open'), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve('closed');
    });
  });
}

async function until(check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return check();
}

// Upstream paths under /api/hold/ are answered only when the test says so; /api/stream sends
// its head and one byte, then holds the rest.
const held: ServerResponse[] = [];

describe('HTTP/1.1 attacks', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let h2c: TestGateway;
  beforeAll(async () => {
    upstream = await startUpstream((req, res) => {
      if (req.url!.startsWith('/api/hold/')) {
        held.push(res);
        return;
      }
      if (req.url === '/api/stream') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('a');
        held.push(res);
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
    });
    gw = await startGateway(config(upstream.origin, 'http'));
    h2c = await startGateway(config(upstream.origin, 'h2c'));
  });
  afterAll(async () => {
    for (const res of held.splice(0)) res.destroy();
    await gw.close();
    await h2c.close();
    await upstream.close();
  });

  it('refuses HTTP/2.0 and HTTP/0.9 request lines on an HTTP/1 connection with 400, and keeps serving', async () => {
    for (const port of [gw.port, h2c.port]) {
      for (const line of [
        'GET /api/x HTTP/2.0\r\nHost: a\r\n\r\n',
        'GET /api/x HTTP/0.9\r\nHost: a\r\n\r\n',
        'POST /grpc.health.v1.Health/Check HTTP/2.0\r\nHost: a\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\0\0\0\0\0',
      ]) {
        const raw = await rawRequest(port, line);
        expect(statusOf(raw), line).toBe(400);
        expect(JSON.parse(bodyOf(raw)).code).toBe('request.http_version');
      }
      const ok = await rawRequest(port, 'GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
      expect(statusOf(ok)).toBe(200);
    }
    expect(upstream.requests.some((r) => r.url === '/grpc.health.v1.Health/Check')).toBe(false);
  });

  it('does not process a request pipelined behind a response that closes the connection', async () => {
    const before = upstream.requests.length;
    // The 401 leaves a body unread, so it says `Connection: close`: what follows is never served.
    const raw = await rawRequest(
      gw.port,
      'POST /private/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /api/after-close HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n',
    );
    expect(statuses(raw)).toEqual([401]);
    await new Promise((r) => setTimeout(r, 100));
    expect(upstream.requests.slice(before).map((r) => r.url)).not.toContain('/api/after-close');
  });

  it('refuses Transfer-Encoding in an HTTP/1.0 request and closes: nothing behind it is served', async () => {
    const before = upstream.requests.length;
    const head = 'POST /api/a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n';
    const rest = '3\r\nabc\r\n0\r\n\r\nGET /api/smuggled HTTP/1.0\r\nHost: a\r\n\r\n';
    // All in one packet, and the head alone first (the body arrives after the decision).
    for (const port of [gw.port, h2c.port]) {
      const raw = await rawRequest(port, head + rest);
      expect(statuses(raw)).toEqual([400]);
      expect(JSON.parse(bodyOf(raw)).code).toBe('request.transfer_encoding');
      const socket = connect(port, '127.0.0.1');
      let split = '';
      socket.setEncoding('latin1');
      socket.on('data', (c: string) => (split += c));
      socket.on('error', () => {});
      const ended = serverCloses(socket, 2000);
      socket.write(head);
      await until(() => split.includes('\r\n\r\n'), 1000);
      if (!socket.destroyed) socket.write(rest);
      expect(await ended).toBe('closed');
      expect(statuses(split)).toEqual([400]);
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(upstream.requests.slice(before).map((r) => r.url)).toEqual([]);
  });

  it('refuses an absolute-form HTTP/1.1 request without Host (HTTP/1.0 takes the host from the target)', async () => {
    const raw = await rawRequest(gw.port, 'GET http://a/api/abs HTTP/1.1\r\nConnection: close\r\n\r\n');
    expect(statusOf(raw)).toBe(400);
    expect(JSON.parse(bodyOf(raw)).code).toBe('request.host_missing');
    const old = await rawRequest(gw.port, 'GET http://a/api/abs HTTP/1.0\r\n\r\n');
    expect(statusOf(old)).toBe(200);
  });

  it('keeps the connection after denying a request without a body', async () => {
    const raw = await rawRequest(
      gw.port,
      'GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\nGET /api/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
    );
    expect(statuses(raw)).toEqual([404, 200]);
  });

  it('ends pipelined exchanges still queued when the client goes away', async () => {
    const before = held.length;
    const socket = connect(gw.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.write('GET /api/hold/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /api/hold/2 HTTP/1.1\r\nHost: a\r\n\r\n');
    expect(await until(() => held.length === before + 2, 2000)).toBe(true);
    expect(gw.gateway.inFlight).toBe(2);
    socket.destroy();
    // The upstream still holds both: only the client leaving can end them.
    expect(await until(() => gw.gateway.inFlight === 0, 2000)).toBe(true);
  });

  it('never writes an error response into the middle of another response', async () => {
    const socket = connect(gw.port, '127.0.0.1');
    let raw = '';
    socket.setEncoding('latin1');
    socket.on('data', (c: string) => (raw += c));
    socket.on('error', () => {});
    const ended = serverCloses(socket, 3000);
    socket.write('GET /api/stream HTTP/1.1\r\nHost: a\r\n\r\n');
    expect(await until(() => raw.includes('\r\n\r\n'), 2000)).toBe(true);
    socket.write('GARBAGE\r\n\r\n');
    expect(await ended).toBe('closed');
    expect(statuses(raw)).toEqual([200]);
  });

  it('closes an h2c-port connection that never says which protocol it speaks', async () => {
    for (const first of ['', 'PRI * HTTP/2.0\r\n']) {
      const socket = connect(h2c.port, '127.0.0.1');
      socket.on('error', () => {});
      if (first !== '') socket.write(first);
      expect(await serverCloses(socket, 2000), JSON.stringify(first)).toBe('closed');
    }
  });
});

describe('HTTP/2 attacks', () => {
  it('closes a connection after a connection error instead of leaving it half-open', async () => {
    const upstream = await startUpstream();
    const gw = await startGateway(config(upstream.origin, 'h2c'));
    try {
      const socket = connect(gw.port, '127.0.0.1');
      socket.on('error', () => {});
      socket.on('data', () => {});
      const ended = serverCloses(socket, 4000);
      const get = hpackLiterals([
        [':method', 'GET'],
        [':scheme', 'http'],
        [':authority', 'a'],
        [':path', '/api/x'],
      ]);
      socket.write(
        Buffer.concat([
          Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
          h2Frame(4, 0, 0), // SETTINGS
          h2Frame(4, 1, 0), // SETTINGS ack
          h2Frame(1, 5, 1, get), // HEADERS, END_STREAM | END_HEADERS
          h2Frame(0, 1, 1, Buffer.from('abc')), // DATA on the stream just closed: a connection error (GOAWAY)
        ]),
      );
      expect(await ended).toBe('closed');
      expect(await until(() => gw.gateway.inFlight === 0, 1000)).toBe(true);
    } finally {
      await gw.close();
      await upstream.close();
    }
  });
});

describe('Upgrade and CONNECT', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await startUpstream();
    gw = await startGateway(config(upstream.origin, 'http'));
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });
  const upgrade = (path: string, protocol: string) =>
    rawRequest(
      gw.port,
      `GET ${path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: ${protocol}\r\nConnection: close\r\n\r\n`,
    );

  it('an upgrade request is authenticated first: 401 without a token, nothing upstream', async () => {
    const seen = upstream.requests.length;
    const raw = await upgrade('/private/ws', 'websocket');
    expect(statusOf(raw)).toBe(401);
    expect(JSON.parse(bodyOf(raw)).code).toBe('jwt.missing');
    expect(upstream.requests.length).toBe(seen);
  });

  it('an admitted upgrade request hears that upgrades are not proxied (501); h2c is ignored and served', async () => {
    const raw = await upgrade('/api/ws', 'websocket');
    expect(statusOf(raw)).toBe(501);
    expect(JSON.parse(bodyOf(raw)).code).toBe('request.upgrade_unsupported');
    const h2c = await upgrade('/api/x', 'h2c');
    expect(statusOf(h2c)).toBe(200);
    expect(upstream.requests.at(-1)!.headers['upgrade']).toBeUndefined();
  });

  it('CONNECT gets a problem (authority-form target), not a silent close', async () => {
    const raw = await rawRequest(gw.port, 'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n');
    expect(statusOf(raw)).toBe(400);
    expect(JSON.parse(bodyOf(raw)).code).toBe('request.authority_form');
  });

  it('HTTP/2 CONNECT (h2c) gets the same problem, not a bare 405', async () => {
    const h2c = await startGateway(config(upstream.origin, 'h2c'));
    const session = h2connect(h2c.url);
    try {
      const result = await h2Answer(session.request({ ':method': 'CONNECT', ':authority': 'a:443' }, { endStream: false }));
      expect(result.status).toBe(400);
      expect(result.type).toBe('application/problem+json');
      expect(JSON.parse(result.body).code).toBe('request.authority_form');
    } finally {
      session.close();
      await h2c.close();
    }
  });
});

describe('Expect', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await startUpstream((_req, res, body) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`got ${body.toString()}`);
    });
    gw = await startGateway(config(upstream.origin, 'http'));
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  /** Sends the head, waits, sends the body only if invited; resolves with all that came back. */
  function continued(path: string, expectation: string): Promise<{ raw: string; invited: boolean }> {
    return new Promise((resolve, reject) => {
      const socket = connect(gw.port, '127.0.0.1');
      let raw = '';
      let invited = false;
      socket.on('error', reject);
      socket.on('data', (d: Buffer) => {
        raw += d.toString();
        if (!invited && raw.startsWith('HTTP/1.1 100 ')) {
          invited = true;
          socket.write('hello');
        }
      });
      socket.on('close', () => resolve({ raw, invited }));
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: ${expectation}\r\nConnection: close\r\n\r\n`,
      );
    });
  }

  it('100-continue: a request a stage denies is answered without inviting its body', async () => {
    const seen = upstream.requests.length;
    const { raw, invited } = await continued('/private/upload', '100-continue');
    expect(invited).toBe(false);
    expect(statuses(raw)).toEqual([401]);
    expect(JSON.parse(bodyOf(raw)).code).toBe('jwt.missing');
    expect(upstream.requests.length).toBe(seen);
  });

  it('100-continue: an admitted request is invited, and its body reaches the upstream', async () => {
    const { raw, invited } = await continued('/api/upload', '100-continue');
    expect(invited).toBe(true);
    expect(statuses(raw)).toEqual([100, 200]);
    expect(raw).toContain('got hello');
  });

  it('any other expectation is a 417 problem', async () => {
    const raw = await rawRequest(gw.port, 'GET /api/x HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nConnection: close\r\n\r\n');
    expect(statusOf(raw)).toBe(417);
    expect(JSON.parse(bodyOf(raw)).code).toBe('request.expectation_failed');
  });
});
