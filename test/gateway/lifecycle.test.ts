import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { startUpstream, tempFile, type TestUpstream } from '../helpers/net.js';
import { runCli, spawnBulwark, type RunningBulwark } from '../helpers/process.js';

const running: RunningBulwark[] = [];
const upstreams: TestUpstream[] = [];
afterEach(async () => {
  for (const r of running.splice(0)) await r.stop('SIGKILL');
  for (const u of upstreams.splice(0)) await u.close();
});

function yaml(origin: string, extraRoutes = '', workers: number | string = 1): string {
  return `version: 1
workers: ${workers}
shutdownTimeoutMs: 5000
listeners: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
upstreams: { app: { endpoints: ['${origin}'] } }
routes:
  - { id: a, auth: { public: true }, match: { path: { prefix: /a } }, upstream: app }
${extraRoutes}`;
}

async function get(port: number, path: string): Promise<number> {
  const res = await request(`http://127.0.0.1:${port}${path}`);
  await res.body.dump();
  return res.statusCode;
}

describe('graceful shutdown', () => {
  it('finishes in-flight requests on SIGTERM, then exits 0', async () => {
    const upstream = await startUpstream((_req, res) => setTimeout(() => res.end('slow-done'), 800));
    upstreams.push(upstream);
    const gw = await spawnBulwark(tempFile('gw.yaml', yaml(upstream.origin)));
    running.push(gw);
    const inflight = request(`http://127.0.0.1:${gw.ports[0]}/a/slow`).then(async (r) => ({
      status: r.statusCode,
      body: await r.body.text(),
    }));
    await new Promise((r) => setTimeout(r, 250));
    gw.child.kill('SIGTERM');
    const result = await inflight;
    expect(result).toEqual({ status: 200, body: 'slow-done' });
    expect(await gw.exited).toBe(0);
  });
});

describe('hot reload', () => {
  it('loses zero requests while the config changes under load', async () => {
    const upstream = await startUpstream();
    upstreams.push(upstream);
    const file = tempFile('gw.yaml', yaml(upstream.origin));
    const gw = await spawnBulwark(file);
    running.push(gw);
    const port = gw.ports[0]!;
    let stop = false;
    const statuses: number[] = [];
    const errors: unknown[] = [];
    const workers = Array.from({ length: 8 }, async () => {
      while (!stop) {
        try {
          statuses.push(await get(port, '/a/load'));
        } catch (err) {
          errors.push(err);
        }
      }
    });
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 250));
      // alternate between in-place writes and atomic renames, plus SIGHUP
      const next = yaml(
        upstream.origin,
        `  - { id: b${i}, auth: { public: true }, match: { path: { prefix: /b${i} } }, upstream: app }\n`,
      );
      if (i % 2 === 0) writeFileSync(file, next);
      else {
        writeFileSync(file + '.tmp', next);
        renameSync(file + '.tmp', file);
        gw.child.kill('SIGHUP');
      }
    }
    await gw.waitForLog((l) => l['msg'] === 'configuration reloaded' && JSON.stringify(gw.logs).includes('"hash"'));
    await new Promise((r) => setTimeout(r, 400));
    stop = true;
    await Promise.all(workers);
    expect(errors).toEqual([]);
    expect(statuses.length).toBeGreaterThan(50);
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(await get(port, '/b5/x')).toBe(200);
  });

  it('keeps serving the old config when the new one is invalid, half-written or deleted', async () => {
    const upstream = await startUpstream();
    upstreams.push(upstream);
    const file = tempFile('gw.yaml', yaml(upstream.origin));
    const gw = await spawnBulwark(file);
    running.push(gw);
    const port = gw.ports[0]!;
    const refusedBefore = () => gw.logs.filter((l) => l['msg'] === 'reload refused, keeping the running configuration').length;

    const full = yaml(upstream.origin, '  - { id: c, auth: { public: true }, match: { path: { prefix: /c } }, upstream: app }\n');
    writeFileSync(file, full.slice(0, full.length - 30)); // half-written
    await gw.waitForLog(() => refusedBefore() >= 1);
    expect(await get(port, '/a/x')).toBe(200);

    writeFileSync(file, yaml(upstream.origin).replace('upstream: app', 'upstream: nope')); // semantically invalid
    await gw.waitForLog(() => refusedBefore() >= 2);
    expect(await get(port, '/a/x')).toBe(200);

    rmSync(file);
    gw.child.kill('SIGHUP');
    await gw.waitForLog(() => refusedBefore() >= 3);
    expect(await get(port, '/a/x')).toBe(200);
    expect(await get(port, '/c/x')).toBe(404);

    writeFileSync(file, full);
    await gw.waitForLog((l) => l['msg'] === 'configuration reloaded');
    expect(await get(port, '/c/x')).toBe(200);
  });
});

describe('workers', () => {
  it('serves with 2 workers and replaces a crashed one', async () => {
    const upstream = await startUpstream();
    upstreams.push(upstream);
    const gw = await spawnBulwark(tempFile('gw.yaml', yaml(upstream.origin, '', 2)));
    running.push(gw);
    const port = gw.ports[0]!;
    expect(gw.logs.find((l) => l['msg'] === 'listening')?.['workers']).toBe(2);
    const ready = await request(`http://127.0.0.1:${gw.adminPort}/readyz`);
    expect(ready.statusCode).toBe(200);
    await ready.body.dump();
    const children = execFileSync('pgrep', ['-P', String(gw.child.pid)])
      .toString()
      .trim()
      .split('\n')
      .map(Number);
    expect(children.length).toBe(2);
    process.kill(children[0]!, 'SIGKILL');
    await gw.waitForLog((l) => l['msg'] === 'worker exited, restarting');
    const statuses = await Promise.all(Array.from({ length: 20 }, () => get(port, '/a/x').catch(() => 0)));
    // the surviving worker keeps serving while the replacement starts
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(18);
    await new Promise((r) => setTimeout(r, 1500));
    const after = execFileSync('pgrep', ['-P', String(gw.child.pid)])
      .toString()
      .trim()
      .split('\n')
      .map(Number);
    expect(after.length).toBe(2);
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
  });
});

describe('admin listener', () => {
  it('serves /healthz, /readyz and a redacted /config with its hash', async () => {
    const upstream = await startUpstream();
    upstreams.push(upstream);
    const gw = await spawnBulwark(tempFile('gw.yaml', yaml(upstream.origin)));
    running.push(gw);
    const base = `http://127.0.0.1:${gw.adminPort}`;
    expect((await request(`${base}/healthz`)).statusCode).toBe(200);
    expect((await request(`${base}/readyz`)).statusCode).toBe(200);
    type ConfigView = { hash: string; loadedAt: string; config: { routes: unknown[] } };
    const config = (await (await request(`${base}/config`)).body.json()) as ConfigView;
    expect(config.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(config.config.routes).toHaveLength(1);
    expect(Date.parse(config.loadedAt)).toBeLessThanOrEqual(Date.now());
    // When the config took effect, not when it was asked for.
    await new Promise((r) => setTimeout(r, 30));
    const again = (await (await request(`${base}/config`)).body.json()) as ConfigView;
    expect(again.loadedAt).toBe(config.loadedAt);
    expect((await request(`${base}/nope`)).statusCode).toBe(404);
  });
});

describe('CLI', () => {
  it('validate: 0 for valid, 1 with file:line for invalid, 2 for usage', { timeout: 60_000 }, async () => {
    const good = tempFile('good.yaml', yaml('http://127.0.0.1:1'));
    expect((await runCli(['validate', good])).code).toBe(0);
    const bad = tempFile('bad.yaml', yaml('http://127.0.0.1:1').replace('prefix: /a', 'prefx: /a'));
    const result = await runCli(['validate', bad]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`${bad}:8:`);
    expect((await runCli(['validate'])).code).toBe(2);
    expect((await runCli(['validate', '--bogus', good])).code).toBe(2);
  });

  it('--version, --help, unknown command, and serve with an invalid config', { timeout: 60_000 }, async () => {
    const version = await runCli(['--version']);
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^bulwark \d+\.\d+\.\d+/);
    expect((await runCli(['--help'])).code).toBe(0);
    expect((await runCli(['serve', '--help'])).stdout).toContain('--config');
    expect((await runCli(['frobnicate'])).code).toBe(2);
    expect((await runCli(['serve', '--port', 'abc'])).code).toBe(2);
    const bad = tempFile('bad.yaml', 'version: 2\n');
    const served = await runCli(['serve', '--config', bad]);
    expect(served.code).toBe(1);
    expect(served.stderr).toContain(`${bad}:1:`);
  });
});

describe('validate: router and listener checks', () => {
  it('warns about a shadowed route (exit 0) and refuses incompatible path knobs and bad globs (exit 1)', async () => {
    const shadowed = tempFile(
      'shadow.yaml',
      `version: 1
listeners: [{ port: 8080 }]
upstreams: { app: { endpoints: ['http://127.0.0.1:1'] } }
routes:
  - { id: all, auth: { public: true }, match: { path: { prefix: /api } }, upstream: app }
  - { id: users, auth: { public: true }, match: { path: { prefix: /api/users } }, upstream: app }
`,
    );
    const warned = await runCli(['validate', shadowed]);
    expect(warned.code).toBe(0);
    expect(warned.stderr).toContain(`${shadowed}:6:`);
    expect(warned.stderr).toContain('config.route_shadowed');

    const knobs = tempFile(
      'knobs.yaml',
      `version: 1
listeners: [{ port: 8080, paths: { backslash: keep } }]
upstreams: { app: { endpoints: ['http://127.0.0.1:1'] } }
routes:
  - { id: g, auth: { public: true }, match: { path: { glob: '/a/**/b/**' } }, upstream: app }
`,
    );
    const refused = await runCli(['validate', knobs]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('config.path_policy');
    expect(refused.stderr).toContain('config.bad_glob');
  });
});
