/**
 * TLS hot swap in the layouts and failure modes renewals produce: Kubernetes secrets with item
 * paths, directories deleted and recreated, busy directories, one listener's broken files next
 * to another's renewal, failed reloads, CA bundles caught mid-write, certificates outside their
 * validity. (Cases found by an adversarial review; each failed before its fix.)
 */
import {
  appendFileSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { BoundListener } from '../../src/gateway/listener.js';
import { loadTlsMaterial, TlsMaterialError } from '../../src/gateway/tls.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { selfSignedCert } from '../helpers/net.js';

const root = mkdtempSync(join(tmpdir(), 'bulwark-tls-edges-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Pair = { cert: string; key: string };
const pairOf = (cn: string): Pair => selfSignedCert({ dir: join(root, 'src'), cn });
const [p1, p2, p3] = [pairOf('p1'), pairOf('p2'), pairOf('p3')];

function servedCn(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    s.once('secureConnect', () => {
      resolve(String(s.getPeerCertificate().subject.CN));
      s.destroy();
    });
    s.once('error', reject);
  });
}
async function eventually(port: number, cn: string, ms = 4000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if ((await servedCn(port)) === cn) return;
    await sleep(50);
  }
  expect(await servedCn(port)).toBe(cn);
}
type L = Pair & { port?: number };
const load = (ls: L[]) =>
  parseConfig(
    `version: 1
listeners:
${ls.map((l) => `  - { address: 127.0.0.1, port: ${l.port ?? 0}, protocol: https, tls: { cert: '${l.cert}', key: '${l.key}' } }`).join('\n')}
upstreams: { app: { builtin: echo } }
telemetry: { logs: { level: error } }
routes: [{ id: r, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }]
`,
    join(root, 'gw.yaml'),
    { checks: CONFIG_CHECKS },
  );
async function start(ls: L[]) {
  // A short poll: the cases events cannot see are found by it.
  const gateway = new Gateway({ logger: createLogger({ level: 'silent' }), tlsPollMs: 250 });
  const c = load(ls);
  await gateway.start(c.config, c.hash);
  return { gateway, ports: [...gateway.ports().values()] };
}
function live(name: string, pair: Pair) {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  copyFileSync(pair.cert, join(dir, 'tls.crt'));
  copyFileSync(pair.key, join(dir, 'tls.key'));
  return { dir, cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') };
}
const install = (pair: Pair, to: Pair) => {
  copyFileSync(pair.cert, to.cert);
  copyFileSync(pair.key, to.key);
};
async function freePort(): Promise<number> {
  const free = createServer();
  await new Promise<void>((r) => free.listen(0, '127.0.0.1', () => r()));
  const port = (free.address() as { port: number }).port;
  await new Promise((r) => free.close(r));
  return port;
}

describe('TLS hot swap: layouts and failures', () => {
  it('a Kubernetes secret with item paths (certs -> ..data/certs): every rotation is seen', async () => {
    const mount = join(root, 'k8s');
    mkdirSync(mount);
    const rotate = (gen: number, pair: Pair) => {
      const ts = join(mount, `..2026_0${gen}`);
      mkdirSync(join(ts, 'certs'), { recursive: true });
      install(pair, { cert: join(ts, 'certs/tls.crt'), key: join(ts, 'certs/tls.key') });
      symlinkSync(`..2026_0${gen}`, join(mount, '..data_tmp'));
      renameSync(join(mount, '..data_tmp'), join(mount, '..data'));
      if (gen > 1) rmSync(join(mount, `..2026_0${gen - 1}`), { recursive: true });
    };
    rotate(1, p1);
    symlinkSync('..data/certs', join(mount, 'certs'));
    const { gateway, ports } = await start([{ cert: join(mount, 'certs/tls.crt'), key: join(mount, 'certs/tls.key') }]);
    try {
      rotate(2, p2);
      await eventually(ports[0]!, 'p2');
      rotate(3, p3);
      await eventually(ports[0]!, 'p3');
      rotate(4, p1);
      await eventually(ports[0]!, 'p1');
    } finally {
      await gateway.stop(100);
    }
  });

  it('the certificate directory deleted and recreated: the new files are taken', async () => {
    const a = live('recreated', p1);
    const { gateway, ports } = await start([a]);
    try {
      rmSync(a.dir, { recursive: true });
      await sleep(400);
      expect(await servedCn(ports[0]!)).toBe('p1');
      live('recreated', p2);
      await eventually(ports[0]!, 'p2');
      // And renewals in the recreated directory after that.
      install(p3, a);
      await eventually(ports[0]!, 'p3');
    } finally {
      await gateway.stop(100);
    }
  });

  it('a directory that never goes quiet (a log appended every 100 ms next to the certs) still gets its renewal', async () => {
    const a = live('busy', p1);
    const { gateway, ports } = await start([a]);
    const t = setInterval(() => appendFileSync(join(a.dir, 'other.log'), 'x\n'), 100);
    try {
      install(p2, a);
      await eventually(ports[0]!, 'p2');
    } finally {
      clearInterval(t);
      await gateway.stop(100);
    }
  });

  it("one listener's broken files do not hold back another's renewal, nor an unrelated reload", async () => {
    const a = live('blockA', p1);
    const b = live('blockB', p2);
    const portA = await freePort();
    const { gateway, ports } = await start([{ ...a, port: portA }, b]);
    try {
      // Mid-renewal garbage (readable: a deleted file would fail the config's own check at load).
      writeFileSync(b.key, 'not a key');
      await sleep(400);
      install(p3, a);
      await eventually(portA, 'p3');
      expect(await servedCn(ports[1]!)).toBe('p2');
      const refresh = gateway.refreshTls('test');
      expect(refresh.changed).toBe(0);
      expect(refresh.failed.map((f) => [f.error.code, f.error.file])).toEqual([['tls.invalid', b.key]]);
      // The config itself did not change B's files: its renewal, broken on disk, does not block a reload.
      const again = load([{ ...a, port: portA }, b]);
      const before = gateway.current;
      await gateway.reload(again.config, again.hash + '-2');
      expect(gateway.current).not.toBe(before);
    } finally {
      await gateway.stop(100);
    }
  });

  it('a reload failing on a taken port leaves no watcher behind', async () => {
    const a = live('leak', p1);
    const { gateway } = await start([a]);
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const takenPort = (taken.address() as { port: number }).port;
    const watch = vi.spyOn(BoundListener.prototype, 'watchTls');
    try {
      for (let i = 0; i < 3; i++) {
        const bad = load([a, { ...a, port: takenPort }]);
        await expect(gateway.reload(bad.config, bad.hash)).rejects.toThrow(/EADDRINUSE/);
      }
      expect(watch).not.toHaveBeenCalled();
    } finally {
      watch.mockRestore();
      taken.close();
      await gateway.stop(100);
    }
  });

  it('a CA bundle caught mid-write, empty or not certificates is refused, naming the file', () => {
    const dir = join(root, 'ca');
    mkdirSync(dir, { recursive: true });
    const ca = join(dir, 'ca.pem');
    const pem = readPem(p2.cert);
    for (const content of [pem.slice(0, pem.length / 2), '', 'garbage', readPem(p2.key)]) {
      writeFileSync(ca, content);
      expect(() => loadTlsMaterial({ ...p1, ca })).toThrow(expect.objectContaining({ code: 'tls.invalid', file: ca }));
    }
    writeFileSync(ca, `# bundle\n${pem}\n${readPem(p3.cert)}`);
    expect(loadTlsMaterial({ ...p1, ca }).fingerprint).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a certificate or key that does not parse is named; a certificate outside its validity does not replace a running one', () => {
    const dir = join(root, 'bad');
    mkdirSync(dir, { recursive: true });
    const broken = join(dir, 'broken.pem');
    writeFileSync(broken, readPem(p1.cert).slice(0, 100));
    expect(() => loadTlsMaterial({ cert: broken, key: p1.key })).toThrow(
      expect.objectContaining({ code: 'tls.invalid', file: broken }),
    );
    expect(() => loadTlsMaterial({ cert: p1.cert, key: broken })).toThrow(
      expect.objectContaining({ code: 'tls.invalid', file: broken }),
    );
    // Both parse, they do not match: the pair is the problem, no one file.
    expect(() => loadTlsMaterial({ cert: p1.cert, key: p2.key })).toThrow(
      expect.objectContaining({ code: 'tls.invalid', file: null }),
    );
    const later = Date.now() + 10 * 86_400_000;
    expect(() => loadTlsMaterial(p1, { swap: true, now: later })).toThrow(TlsMaterialError);
    expect(() => loadTlsMaterial(p1, { swap: true, now: later })).toThrow(
      expect.objectContaining({ code: 'tls.outside_validity' }),
    );
    expect(() => loadTlsMaterial(p1, { swap: true, now: Date.now() - 10 * 86_400_000 })).toThrow(
      expect.objectContaining({ code: 'tls.outside_validity' }),
    );
    // At start an expired certificate is the operator's call (it is what there is).
    expect(loadTlsMaterial(p1, { now: later }).notAfter).toBeLessThan(later);
  });
});

function readPem(file: string): string {
  return readFileSync(file, 'utf8');
}
