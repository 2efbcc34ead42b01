import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { startGateway, startUpstream, type TestGateway, type TestUpstream } from '../helpers/net.js';

describe('gateway with rate limits', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await startUpstream();
    gw = await startGateway(`
version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
rateLimits:
  policies:
    - { id: per-client, rate: 5, per: 1m, burst: 5, key: [route, client_ip] }
    - { id: shadowed, rate: 1, per: 1m, burst: 1, key: [route], mode: shadow }
routes:
  - { id: limited, match: { path: { prefix: /api/limited } }, upstream: app, auth: { public: true }, rateLimit: [per-client, shadowed] }
  - { id: free, match: { path: { prefix: /free } }, upstream: app, auth: { public: true } }
`);
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  it('admits the burst with RateLimit headers, then 429 with Retry-After; spoofed X-Forwarded-For does not help', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await request(`${gw.url}/api/limited`, { headers: { 'x-forwarded-for': `10.0.0.${i}` } });
      expect(res.statusCode).toBe(200);
      expect(res.headers['ratelimit-policy']).toContain('"per-client";q=5');
      expect(String(res.headers['ratelimit'])).toMatch(new RegExp(`"per-client";r=${4 - i}`));
      expect(String(res.headers['ratelimit'])).not.toContain('127.0.0.1');
      await res.body.dump();
    }
    const denied = await request(`${gw.url}/api/limited`, { headers: { 'x-forwarded-for': '10.9.9.9' } });
    expect(denied.statusCode).toBe(429);
    expect(Number(denied.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(denied.headers['content-type']).toBe('application/problem+json');
    expect(((await denied.body.json()) as { code: string }).code).toBe('ratelimit.exceeded');
    // the shadow policy (burst 1) never denies, and other routes are untouched
    const free = await request(`${gw.url}/free`);
    expect(free.statusCode).toBe(200);
    await free.body.dump();
  });
});
