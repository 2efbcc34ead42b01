/**
 * With several workers a reload is all or nothing: a config a worker refuses (here a new
 * listener on a port already taken) is counted failed, /config keeps the running hash, the
 * workers that applied it go back, and a worker restarted afterwards starts on the running
 * config instead of crash-looping on the refused one.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { tempFile } from '../helpers/net.js';
import { spawnBulwark } from '../helpers/process.js';
import { parsePrometheus, valueOf } from '../telemetry/helpers.js';

const config = (extraListener = '', route = '/a') => `version: 1
workers: 2
listeners:
  - { address: 127.0.0.1, port: 0 }
${extraListener}admin: { port: 0 }
upstreams: { app: { builtin: echo } }
routes:
  - { id: r, match: { path: { prefix: ${route} } }, upstream: app, auth: { public: true } }
`;

describe('cluster reload', () => {
  it('a config one worker refuses is applied by none', { timeout: 60_000 }, async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const busy = (blocker.address() as AddressInfo).port;
    const file = tempFile('gw.yaml', config());
    const gw = await spawnBulwark(file);
    try {
      const admin = `http://127.0.0.1:${gw.adminPort}`;
      const hashOf = async () => ((await (await request(`${admin}/config`)).body.json()) as { hash: string }).hash;
      const running = await hashOf();
      const status = async (path: string) => {
        const res = await request(`http://127.0.0.1:${gw.ports[0]}${path}`);
        await res.body.dump();
        return res.statusCode;
      };
      expect(await status('/a')).toBe(200);

      // Moves the route to /b and adds a listener on a taken port: every worker refuses.
      writeFileSync(file, config(`  - { address: 127.0.0.1, port: ${busy} }\n`, '/b'));
      await gw.waitForLog((l) => l['msg'] === 'a worker refused the configuration: every worker keeps the running one');
      expect(await hashOf()).toBe(running);
      const families = parsePrometheus(await (await request(`${admin}/metrics`)).body.text());
      expect(valueOf(families, 'bulwark_config_reloads_total', { outcome: 'failed' })).toBe(1);
      expect(valueOf(families, 'bulwark_config_reloads_total', { outcome: 'ok' })).toBe(0);
      for (let i = 0; i < 6; i++) expect(await status('/a')).toBe(200);

      // A worker restarted now gets the running config: it starts and serves.
      const workers = execFileSync('pgrep', ['-P', String(gw.child.pid)], { encoding: 'utf8' })
        .trim()
        .split('\n')
        .map(Number);
      expect(workers).toHaveLength(2);
      process.kill(workers[0]!, 'SIGKILL');
      await gw.waitForLog((l) => l['msg'] === 'worker exited, restarting');
      let ready = 0;
      for (let i = 0; i < 100 && ready !== 200; i++) {
        ready = (await request(`${admin}/readyz`)).statusCode;
        if (ready !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      expect(ready).toBe(200);
      expect(gw.logs.filter((l) => l['msg'] === 'worker exited, restarting')).toHaveLength(1);
      expect(await status('/a')).toBe(200);

      // A good change still applies everywhere.
      writeFileSync(file, config('', '/c'));
      await gw.waitForLog((l) => l['msg'] === 'configuration reloaded by every worker');
      for (let i = 0; i < 6; i++) expect(await status('/c')).toBe(200);
    } finally {
      await gw.stop();
      await new Promise((r) => blocker.close(r));
    }
  });
});
