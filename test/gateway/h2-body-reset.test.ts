import { connect as h2connect, constants as h2c } from 'node:http2';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from '../helpers/net.js';

/** An upstream that records each connection's bytes and answers once a request's body is complete (either framing). */
async function recordingUpstream(): Promise<{ conns: string[]; origin: string; server: Server }> {
  const conns: string[] = [];
  const server = createServer((s) => {
    const i = conns.push('') - 1;
    s.on('data', (d) => {
      conns[i] += d.toString('latin1');
      const seen = conns[i]!;
      const head = seen.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: (\d+)(?:\r\n|$)/i.exec(seen.slice(0, head));
      const complete = length === null ? seen.endsWith('\r\n0\r\n\r\n') : seen.length - head - 4 >= Number(length[1]);
      if (head !== -1 && complete) s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { conns, origin: `http://127.0.0.1:${(server.address() as { port: number }).port}`, server };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('HTTP/2 client resetting its stream mid-upload', () => {
  let up: Awaited<ReturnType<typeof recordingUpstream>>;
  let gw: TestGateway;
  beforeAll(async () => {
    up = await recordingUpstream();
    gw = await startGateway(`version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]
upstreams: { app: { endpoints: ['${up.origin}'] } }
routes: [{ id: all, auth: { public: true }, match: { path: { prefix: / } }, upstream: app }]
`);
  });
  afterAll(async () => {
    await gw.close();
    await new Promise((r) => up.server.close(r));
  });

  it('never reaches the upstream as a complete request (no END_STREAM, then RST_STREAM)', async () => {
    const session = h2connect(gw.url);
    session.on('error', () => {});
    // waitForTrailers: end() sends the data without END_STREAM; the trailers never follow, the reset does.
    const stream = session.request({ ':method': 'POST', ':path': '/transfer' }, { endStream: false, waitForTrailers: true });
    stream.on('error', () => {});
    stream.write('{"amount": 1000');
    await expect
      .poll(() => up.conns.find((c) => c.startsWith('POST /transfer'))?.includes('{"amount": 1000') ?? false)
      .toBe(true);
    stream.on('wantTrailers', () => stream.close(h2c.NGHTTP2_CANCEL));
    stream.end();
    await sleep(300);
    session.close();
    const seen = up.conns.find((c) => c.startsWith('POST /transfer'))!;
    expect(seen.endsWith('\r\n0\r\n\r\n')).toBe(false);
    await expect.poll(() => gw.gateway.inFlight).toBe(0);
  });

  it('a body the client ends is forwarded whole', async () => {
    const session = h2connect(gw.url);
    session.on('error', () => {});
    const stream = session.request({ ':method': 'POST', ':path': '/whole' });
    const status = new Promise<number>((r) => stream.on('response', (h) => r(Number(h[':status']))));
    stream.end('{"amount": 5}');
    expect(await status).toBe(200);
    session.close();
    expect(up.conns.find((c) => c.startsWith('POST /whole'))!.endsWith('{"amount": 5}')).toBe(true);
  });
});
