/**
 * Requests Node's HTTP parser refuses (malformed, headers too large) never become a
 * RequestContext; they are still counted in `bulwark_http_rejections_total`, so a header flood
 * or a malformed-request scan shows on a dashboard.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePrometheus, valueOf } from '../telemetry/helpers.js';
import { rawRequest, startGateway, statusOf, type TestGateway } from '../helpers/net.js';

describe('parser refusals in the metrics', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway(`version: 1
listeners: [{ address: 127.0.0.1, port: 0, limits: { maxHeaderBytes: 4096 } }]
upstreams: { app: { builtin: echo } }
routes:
  - { id: r, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }
`);
  });
  afterAll(() => gw.close());

  it('counts malformed requests and oversized heads with the unmatched route', async () => {
    expect(statusOf(await rawRequest(gw.port, 'FOO1 /x HTTP/1.1\r\nHost: a\r\n\r\n'))).toBe(400);
    expect(statusOf(await rawRequest(gw.port, 'FOO1 /y HTTP/1.1\r\nHost: a\r\n\r\n'))).toBe(400);
    expect(statusOf(await rawRequest(gw.port, `GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(8000)}\r\n\r\n`))).toBe(431);
    const families = parsePrometheus(await gw.gateway.telemetry.metrics.metrics());
    const count = (code: string) => valueOf(families, 'bulwark_http_rejections_total', { route: 'unmatched', code });
    expect(count('request.malformed')).toBe(2);
    expect(count('request.headers_too_large')).toBe(1);
  });
});
