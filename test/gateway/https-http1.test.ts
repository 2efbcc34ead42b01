/**
 * HTTP/1.1 over TLS is parsed by the secure (HTTP/2, allowHTTP1) server, not the plain HTTP/1
 * server: it must get the same hardening (timeouts checked often, header size and count limits,
 * parser errors and CONNECT answered with problems and counted).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect as h2connect } from 'node:http2';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { parsePrometheus, valueOf } from '../telemetry/helpers.js';
import { bodyOf, h2Answer, selfSignedCert, startGateway, statusOf, type TestGateway } from '../helpers/net.js';

/** Like rawRequest, over TLS; `alpn` null offers no ALPN at all (the fallback of clients without it). */
function tlsRequest(
  port: number,
  data: string | readonly string[],
  options: { waitMs?: number; alpn?: string[] | null; gapMs?: number } = {},
): Promise<{ raw: string; closedAfterMs: number }> {
  const { waitMs = 1500, alpn = ['http/1.1'], gapMs = 0 } = options;
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket: TLSSocket = tlsConnect({
      port,
      host: '127.0.0.1',
      servername: 'localhost',
      rejectUnauthorized: false,
      ...(alpn === null ? {} : { ALPNProtocols: alpn }),
    });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => socket.destroy(), waitMs);
    let trickle: NodeJS.Timeout | undefined;
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (err) => (chunks.length > 0 ? undefined : reject(err)));
    socket.on('close', () => {
      clearTimeout(timer);
      clearInterval(trickle);
      resolve({ raw: Buffer.concat(chunks).toString('latin1'), closedAfterMs: Date.now() - started });
    });
    socket.once('secureConnect', () => {
      if (typeof data === 'string') {
        socket.write(data);
        return;
      }
      const parts = [...data];
      socket.write(parts.shift()!);
      trickle = setInterval(() => {
        if (parts.length === 0 || socket.destroyed) return clearInterval(trickle);
        socket.write(parts.shift()!);
      }, gapMs);
    });
  });
}

function problemCode(raw: string): string | undefined {
  expect(raw).toMatch(/\r\ncontent-type: application\/problem\+json\r\n/i);
  return (JSON.parse(bodyOf(raw)) as { code?: string }).code;
}

describe('HTTP/1.1 over an https listener', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    const tls = selfSignedCert();
    gw = await startGateway(`version: 1
listeners:
  - address: 127.0.0.1
    port: 0
    protocol: https
    tls: { cert: '${tls.cert}', key: '${tls.key}' }
    limits: { maxHeaderBytes: 4096, maxHeaders: 10, headersTimeoutMs: 400, requestTimeoutMs: 3000 }
upstreams: { app: { builtin: echo } }
routes:
  - { id: r, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }
`);
  });
  afterAll(() => gw.close());

  it('serves an ordinary request (with and without ALPN)', async () => {
    const req = 'GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n';
    expect(statusOf((await tlsRequest(gw.port, req)).raw)).toBe(200);
    expect(statusOf((await tlsRequest(gw.port, req, { alpn: null })).raw)).toBe(200);
  });

  it('cuts a client trickling its head at headersTimeoutMs, with a 408 problem', async () => {
    const parts = ['GET /slow HTTP/1.1\r\n', 'Host: localhost\r\n'];
    for (let i = 0; i < 40; i++) parts.push(`X-${i}: a\r\n`);
    const { raw, closedAfterMs } = await tlsRequest(gw.port, parts, { gapMs: 100, waitMs: 5000 });
    expect(statusOf(raw)).toBe(408);
    expect(problemCode(raw)).toBe('request.timeout');
    // Node's default check interval (30 s) would leave it open until the test's own 5 s cut.
    expect(closedAfterMs).toBeLessThan(2000);
  });

  it('applies maxHeaderBytes and maxHeaders', async () => {
    const big = `GET /big HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'a'.repeat(8000)}\r\n\r\n`;
    const r1 = (await tlsRequest(gw.port, big)).raw;
    expect(statusOf(r1)).toBe(431);
    expect(problemCode(r1)).toBe('request.headers_too_large');
    const huge = `GET /big HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`;
    const r2 = (await tlsRequest(gw.port, huge)).raw;
    expect(statusOf(r2)).toBe(431);
    expect(problemCode(r2)).toBe('request.headers_too_large');
    let many = 'GET /many HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n';
    for (let i = 0; i < 30; i++) many += `X-${i}: a\r\n`;
    const r3 = (await tlsRequest(gw.port, many + '\r\n')).raw;
    expect(statusOf(r3)).toBe(431);
    expect(problemCode(r3)).toBe('request.headers_too_large');
  });

  it('answers parser errors (smuggling, bad header names) with a counted problem', async () => {
    const families = async () => parsePrometheus(await gw.gateway.telemetry.metrics.metrics());
    const count = async () =>
      valueOf(await families(), 'bulwark_http_rejections_total', { route: 'unmatched', code: 'request.malformed' }) ?? 0;
    const before = await count();
    const smuggle =
      'POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: localhost\r\n\r\n';
    const r1 = (await tlsRequest(gw.port, smuggle)).raw;
    expect(statusOf(r1)).toBe(400);
    expect(problemCode(r1)).toBe('request.malformed');
    const r2 = (await tlsRequest(gw.port, 'GET /a HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n', { alpn: null })).raw;
    expect(statusOf(r2)).toBe(400);
    expect(problemCode(r2)).toBe('request.malformed');
    expect((await count()) - before).toBe(2);
  });

  it('refuses CONNECT with the authority-form problem', async () => {
    const { raw } = await tlsRequest(gw.port, 'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n');
    expect(statusOf(raw)).toBe(400);
    expect(problemCode(raw)).toBe('request.authority_form');
  });

  it('refuses HTTP/2 CONNECT with the same problem (not a bare 405)', async () => {
    const session = h2connect(`https://localhost:${gw.port}`, { rejectUnauthorized: false });
    try {
      const result = await h2Answer(session.request({ ':method': 'CONNECT', ':authority': 'a:443' }, { endStream: false }));
      expect(result.status).toBe(400);
      expect(result.type).toBe('application/problem+json');
      expect((JSON.parse(result.body) as { code: string }).code).toBe('request.authority_form');
    } finally {
      session.close();
    }
  });
});
