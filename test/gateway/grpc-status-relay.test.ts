/**
 * The upstream's grpc-status reaches the client as the gateway read it: an invalid one
 * (not 0–16 in one or two digits) is UNKNOWN for the client too, not a text that one client
 * library reads as 10 and another as INTERNAL.
 */
import type { ServerHttp2Stream } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeGrpcFrame } from '../../src/grpc/framing.js';
import { startGateway, type TestGateway } from '../helpers/net.js';
import { rawGrpcCall, rawSession, startRawUpstream, type RawUpstream } from '../grpc/harness.js';

describe('upstream grpc-status relayed through the gateway', () => {
  let upstream: RawUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    // `x-status` picks the status, `x-trailers-only` the response shape.
    upstream = await startRawUpstream((s: ServerHttp2Stream, headers) => {
      const status = String(headers['x-status']);
      s.resume();
      if (headers['x-trailers-only'] === '1') {
        s.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': status }, { endStream: true });
        return;
      }
      s.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      s.once('wantTrailers', () => s.sendTrailers({ 'grpc-status': status, 'grpc-message': 'upstream%20says' }));
      s.end(encodeGrpcFrame(Buffer.from('pong')));
    });
    gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: h2c }]
upstreams: { raw: { endpoints: ['${upstream.origin}'] } }
routes:
  - { id: raw, match: { path: { prefix: /test.Echo/ } }, upstream: raw, auth: { public: true } }
`);
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  for (const trailersOnly of [false, true]) {
    for (const [sent, seen] of [
      ['1e1', 2],
      ['17', 2],
      ['abc', 2],
      ['03', 3],
      ['0', 0],
    ] as const) {
      it(`${trailersOnly ? 'trailers-only' : 'trailers'}: upstream grpc-status ${sent} reaches the client as ${seen}`, async () => {
        const session = rawSession(gw.port);
        try {
          const res = await rawGrpcCall(
            session,
            { ':path': '/test.Echo/Unary', 'x-status': sent, 'x-trailers-only': trailersOnly ? '1' : '0' },
            encodeGrpcFrame(Buffer.from('x')),
          );
          const source = trailersOnly ? res.headers : res.trailers!;
          expect(source['grpc-status']).toBe(String(seen));
        } finally {
          session.close();
        }
      });
    }
  }
});
