/**
 * Hot reload in library mode, as `bulwark serve` does it: a valid change applies, a broken
 * one is refused (with file, line and field) and the running config keeps serving; requests
 * evaluated before a reload finish on the config they started with.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { createBulwark, type Bulwark } from '../../src/adapters/bulwark.js';
import { ConfigError } from '../../src/config/load.js';
import { captureLogger, parsePrometheus, valueOf } from '../telemetry/helpers.js';

const routes = (...paths: string[]) =>
  `version: 1
routes:
${paths.map((p, i) => `  - { id: r${i}, match: { path: { prefix: ${p} } }, auth: { public: true } }`).join('\n')}
`;

async function until(check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('library hot reload', () => {
  let dir: string;
  let bulwark: Bulwark | null = null;
  let server: Server | null = null;
  afterEach(async () => {
    if (server !== null) await new Promise((r) => server!.close(r));
    await bulwark?.close();
    bulwark = null;
    server = null;
    rmSync(dir, { recursive: true, force: true });
  });

  async function serve(b: Bulwark): Promise<(path: string) => Promise<number>> {
    server = createServer(b.protect((_req, res) => res.end('ok')));
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return async (path) => {
      const res = await request(`${base}${path}`);
      await res.body.dump();
      return res.statusCode;
    };
  }

  it('watch: a saved change applies; a broken one is logged with its place and the old config keeps serving', async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulwark-reload-'));
    const file = join(dir, 'bulwark.yaml');
    writeFileSync(file, routes('/a'));
    const capture = captureLogger();
    bulwark = await createBulwark({ config: file, watch: true, logger: capture.logger });
    const status = await serve(bulwark);
    expect(await status('/a')).toBe(200);
    expect(await status('/b')).toBe(404);

    writeFileSync(file, routes('/a', '/b'));
    await until(async () => (await status('/b')) === 200);

    // A typo: refused, logged with file, line and field; /b is still served.
    writeFileSync(file, routes('/a', '/b').replace('prefix: /b', 'prefx: /b'));
    await until(async () => capture.lines().some((l) => l['msg'] === 'reload failed, keeping the running configuration'));
    const failure = capture.lines().find((l) => l['msg'] === 'reload failed, keeping the running configuration')!;
    expect(failure['issues']).toEqual([
      expect.objectContaining({ file, line: 4, path: 'routes[1].match.path', code: 'config.one_of' }),
    ]);
    expect(await status('/b')).toBe(200);
    expect(await status('/a')).toBe(200);

    writeFileSync(file, routes('/c'));
    await until(async () => (await status('/c')) === 200);
    expect(await status('/a')).toBe(404);
    const families = parsePrometheus((await bulwark.metrics())!.body);
    expect(valueOf(families, 'bulwark_config_reloads_total', { outcome: 'ok' })).toBe(2);
    expect(valueOf(families, 'bulwark_config_reloads_total', { outcome: 'failed' })).toBe(1);
  });

  it('reload(object): an invalid config rejects with ConfigError and changes nothing; an unchanged one is a no-op', async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulwark-reload-'));
    const config = { version: 1, routes: [{ id: 'a', match: { path: { prefix: '/a' } }, auth: { public: true } }] };
    bulwark = await createBulwark({ config, logger: captureLogger().logger });
    const status = await serve(bulwark);
    await expect(
      bulwark.reload({ version: 1, routes: [{ id: 'b', match: { path: { prefix: '/b' } }, auth: { provider: 'nobody' } }] }),
    ).rejects.toBeInstanceOf(ConfigError);
    expect(await status('/a')).toBe(200);
    expect(await bulwark.reload(config)).toBe(false);
    expect(
      await bulwark.reload({ ...config, routes: [{ ...config.routes[0]!, id: 'b', match: { path: { prefix: '/b' } } }] }),
    ).toBe(true);
    expect(await status('/b')).toBe(200);
    expect(await status('/a')).toBe(404);
    // Given as an object: there is no file to reread.
    await expect(bulwark.reload()).rejects.toBeInstanceOf(TypeError);
  });

  it("keeps the application's log level across reloads, and refuses reloads once closing", async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulwark-reload-'));
    const config = { version: 1, routes: [{ id: 'a', match: { path: { prefix: '/a' } }, auth: { public: true } }] };
    const capture = captureLogger('warn');
    const b = await createBulwark({ config, logger: capture.logger });
    expect(await b.reload({ ...config, routes: [{ ...config.routes[0]!, id: 'b' }] })).toBe(true);
    // "configuration reloaded" is at info: under the application's warn it is not written.
    expect(capture.lines().filter((l) => l['msg'] === 'configuration reloaded')).toEqual([]);
    const closing = b.close();
    await expect(b.reload({ ...config, routes: [{ ...config.routes[0]!, id: 'c' }] })).rejects.toThrow();
    await closing;
  });

  it('a request evaluated before a reload finishes on its own config; its concurrency slot is freed on that one', async () => {
    dir = mkdtempSync(join(tmpdir(), 'bulwark-reload-'));
    const limited = (prefix: string) => ({
      version: 1,
      rateLimits: { policies: [{ id: 'one', concurrency: 1, key: ['route'] }] },
      routes: [{ id: 'slow', match: { path: { prefix } }, auth: { public: true }, rateLimit: ['one'] }],
    });
    bulwark = await createBulwark({ config: limited('/slow'), logger: captureLogger().logger });
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    server = createServer(bulwark.protect((_req, res) => void held.then(() => res.end('done'))));
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const first = request(`${base}/slow`).then(async (res) => [res.statusCode, await res.body.text()]);
    await until(async () => {
      const probe = await request(`${base}/slow`);
      await probe.body.dump();
      return probe.statusCode === 429;
    });
    // Same limits: the store (and the held slot) carry over; the route moves.
    expect(await bulwark.reload({ ...limited('/slow'), routes: [{ ...limited('/slow').routes[0]!, id: 'slow2' }] })).toBe(true);
    release();
    expect(await first).toEqual([200, 'done']);
    const after = await request(`${base}/slow`);
    await after.body.dump();
    expect(after.statusCode).not.toBe(429);
  });
});
