import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { startUpstream, tempFile } from '../helpers/net.js';
import { spawnBulwark } from '../helpers/process.js';

describe('gateway observability', () => {
  it(
    'exposes request metrics on /metrics, continues the caller trace upstream, and logs access lines with trace and request ids',
    { timeout: 60_000 },
    async () => {
      const upstream = await startUpstream();
      const gw = await spawnBulwark(
        tempFile(
          'gw.yaml',
          `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
telemetry:
  traces: { exporter: none }
  logs: { accessLog: { enabled: true } }
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { public: true } }
`,
        ),
      );
      try {
        const base = `http://127.0.0.1:${gw.ports[0]}`;
        const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
        for (let i = 0; i < 3; i++) {
          const res = await request(`${base}/api/item/${i}`, {
            headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01`, authorization: 'Bearer do-not-log-me' },
          });
          await res.body.dump();
        }
        const missing = await request(`${base}/elsewhere/1`);
        await missing.body.dump();
        expect(upstream.requests[0]!.headers['traceparent']).toContain(traceId);
        const metrics = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
        expect(metrics).toMatch(/bulwark_http_request_duration_seconds_count\{[^}]*route="api"[^}]*status_class="2xx"[^}]*\} 3/);
        expect(metrics).not.toMatch(/\/api\/item\/1/); // raw paths never become labels
        expect(metrics).toContain('bulwark_event_loop_delay_seconds');
        const access = await gw.waitForLog((l) => l['route'] === 'api' && l['trace_id'] === traceId);
        expect(access['request_id']).toBeTypeOf('string');
        expect(JSON.stringify(gw.logs)).not.toContain('do-not-log-me');
      } finally {
        gw.child.kill('SIGTERM');
        await gw.exited;
        await upstream.close();
      }
    },
  );
});
