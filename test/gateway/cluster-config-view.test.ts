import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { tempFile } from '../helpers/net.js';
import { spawnBulwark } from '../helpers/process.js';

const config = (auth: string) => `version: 1
workers: 2
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
upstreams: { app: { builtin: echo } }
${auth}routes:
  - { id: r, match: { path: { prefix: /a } }, upstream: app, auth: { public: true } }
`;

/** With several workers, `/config` shows what every worker runs: never a config still rolling out. */
describe('/config in cluster mode', () => {
  it('during a slow roll-out: the running config, until every worker has the new one', { timeout: 60_000 }, async () => {
    // A JWKS that answers after 2.5 s: each worker's compile waits for it (authn.ready()).
    const jwks: Server = createServer((_q, s) => setTimeout(() => s.end('{"keys":[]}'), 2500));
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks`;
    const file = tempFile('gw.yaml', config(''));
    const gw = await spawnBulwark(file);
    try {
      const admin = `http://127.0.0.1:${gw.adminPort}`;
      const view = async () => (await (await request(`${admin}/config`)).body.json()) as { hash: string; loadedAt: string };
      const before = await view();
      writeFileSync(
        file,
        config(
          `authn:\n  providers:\n    idp: { issuer: https://i.test, audiences: [a], algorithms: [RS256], jwksUrl: '${url}' }\n`,
        ),
      );
      const seen: { hash: string; loadedAt: string; at: string }[] = [];
      for (let i = 0; i < 12; i++) {
        await new Promise((r) => setTimeout(r, 250));
        seen.push({ ...(await view()), at: new Date().toISOString() });
      }
      await gw.waitForLog((l) => l['msg'] === 'configuration reloaded by every worker', 10_000);
      const after = await view();
      expect(after.hash).not.toBe(before.hash);
      // Before the roll-out finished: the old config, with the time it took effect.
      const early = seen.filter((s) => Date.parse(s.at) < Date.parse(after.loadedAt));
      expect(early.length).toBeGreaterThan(0);
      for (const s of early) expect([s.hash, s.loadedAt]).toEqual([before.hash, before.loadedAt]);
    } finally {
      await gw.stop('SIGKILL');
      await new Promise((r) => jwks.close(r));
    }
  });
});
