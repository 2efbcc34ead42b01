import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tempFile, startUpstream } from '../helpers/net.js';
import { runCli, spawnBulwark } from '../helpers/process.js';

describe('gateway audit', () => {
  it(
    'records every decision of a real gateway (allow, 404, 400), masked, in a chain that verifies',
    { timeout: 60_000 },
    async () => {
      const upstream = await startUpstream();
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-audit-'));
      const file = tempFile(
        'gw.yaml',
        `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
upstreams: { app: { endpoints: ['${upstream.origin}'] } }
audit:
  durability: durable
  wal: { dir: '${dir}/wal' }
  sinks:
    - file: { path: '${dir}/audit.jsonl' }
routes:
  - { id: api, match: { path: { prefix: /api } }, upstream: app, auth: { public: true } }
`,
      );
      const gw = await spawnBulwark(file);
      try {
        const base = `http://127.0.0.1:${gw.ports[0]}`;
        const ok = await request(`${base}/api/x`, { headers: { authorization: 'Bearer secret-token-value', cookie: 'sid=abc' } });
        expect(ok.statusCode).toBe(200);
        await ok.body.dump();
        const missing = await request(`${base}/nope`);
        expect(missing.statusCode).toBe(404);
        await missing.body.dump();
        const bad = await request(`${base}/api/%2e%2e%2fetc`);
        expect(bad.statusCode).toBe(400);
        await bad.body.dump();
        // The audit pipeline's counters reach /metrics (written = WAL records, start record included).
        let written = 0;
        while (written < 4) {
          const metrics = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
          written = Number(/^bulwark_audit_events_written_total(?:\{[^}]*\})? (\d+)/m.exec(metrics)?.[1] ?? 0);
          if (written < 4) await new Promise((r) => setTimeout(r, 50));
        }
        expect(written).toBeGreaterThanOrEqual(4);
      } finally {
        gw.child.kill('SIGTERM');
        expect(await gw.exited).toBe(0);
        await upstream.close();
      }
      const lines = readFileSync(join(dir, 'audit.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const requests = lines.filter((l) => l['kind'] === 'request');
      expect(requests.map((r) => r['status'])).toEqual([200, 404, 400]);
      expect(requests.map((r) => r['reason'] ?? r['code'] ?? null)).toContain('route.not_found');
      const text = readFileSync(join(dir, 'audit.jsonl'), 'utf8');
      expect(text).not.toContain('secret-token-value');
      expect(text).not.toContain('sid=abc');
      const verified = await runCli(['audit', 'verify', '--file', join(dir, 'audit.jsonl')]);
      expect(verified.code).toBe(0);
    },
  );
});
