/**
 * A running listener's certificate is swapped without a restart: files renewed in place (the
 * watcher), a reload naming other files, an explicit refresh. New connections get the new
 * certificate; files that cannot serve are refused and the running certificate stays.
 */
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { TlsMaterialError } from '../../src/gateway/tls.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { selfSignedCert } from '../helpers/net.js';
import { parsePrometheus, valueOf } from '../telemetry/helpers.js';

const root = mkdtempSync(join(tmpdir(), 'bulwark-tls-reload-'));

const makePair = (dir: string, cn: string) => selfSignedCert({ dir, cn });

/** The CN of the certificate a new TLS connection is offered. */
function servedCn(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      port,
      host: '127.0.0.1',
      servername: 'localhost',
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    });
    socket.once('secureConnect', () => {
      const cn: string | string[] | undefined = socket.getPeerCertificate().subject.CN;
      socket.destroy();
      resolve(Array.isArray(cn) ? cn.join(',') : (cn ?? ''));
    });
    socket.once('error', reject);
  });
}

async function until(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('condition not met in time');
}

const yaml = (cert: string, key: string) => `version: 1
listeners: [{ address: 127.0.0.1, port: 0, protocol: https, tls: { cert: '${cert}', key: '${key}' } }]
upstreams: { app: { builtin: echo } }
telemetry: { logs: { level: info, accessLog: { enabled: false } } }
routes:
  - { id: r, match: { path: { prefix: / } }, upstream: app, auth: { public: true } }
`;

describe('TLS certificates swapped on a running listener', () => {
  const live = join(root, 'live');
  const pairs = {
    a: makePair(join(root, 'src'), 'alpha'),
    b: makePair(join(root, 'src'), 'bravo'),
    c: makePair(join(root, 'src'), 'charlie'),
    d: makePair(join(root, 'other'), 'delta'),
  };
  const liveCert = join(live, 'tls.crt');
  const liveKey = join(live, 'tls.key');
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({
    level: 'info',
    destination: new Writable({
      write(chunk: Buffer, _e, done) {
        for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    }),
  });
  let gateway: Gateway;
  let port: number;
  const install = (pair: { cert: string; key: string }) => {
    copyFileSync(pair.cert, liveCert);
    copyFileSync(pair.key, liveKey);
  };

  beforeAll(async () => {
    mkdirSync(live, { recursive: true });
    install(pairs.a);
    const loaded = parseConfig(yaml(liveCert, liveKey), join(root, 'gw.yaml'), { checks: CONFIG_CHECKS });
    gateway = new Gateway({ logger });
    await gateway.start(loaded.config, loaded.hash);
    port = [...gateway.ports().values()][0]!;
  });
  afterAll(async () => {
    await gateway.stop(500);
    rmSync(root, { recursive: true, force: true });
  });

  it('files renewed in place: new connections get the new certificate', async () => {
    expect(await servedCn(port)).toBe('alpha');
    install(pairs.b);
    await until(async () => (await servedCn(port)) === 'bravo');
    expect(lines.some((l) => l['msg'] === 'TLS certificate loaded: new connections use it' && l['trigger'] === 'file')).toBe(
      true,
    );
    // The expiry operators alert on is the served certificate's.
    const families = parsePrometheus(await gateway.telemetry.metrics.registry.metrics());
    const expiry = Math.floor(Date.parse(new X509Certificate(readFileSync(pairs.b.cert)).validTo) / 1000);
    const listener = [...gateway.ports().keys()][0]!;
    expect(valueOf(families, 'bulwark_tls_certificate_expiry_timestamp_seconds', { listener })).toBe(expiry);
  });

  it('a half-written renewal (new certificate, old key) is refused; the pair, once complete, is taken', async () => {
    copyFileSync(pairs.c.cert, liveCert);
    await until(async () => lines.some((l) => l['code'] === 'tls.invalid'));
    expect(await servedCn(port)).toBe('bravo');
    copyFileSync(pairs.c.key, liveKey);
    await until(async () => (await servedCn(port)) === 'charlie');
  });

  it('refreshTls: unchanged files swap nothing; files that cannot serve are reported (with the file, when known) and change nothing', async () => {
    expect(gateway.refreshTls()).toEqual({ changed: 0, failed: [] });
    writeFileSync(liveKey, 'not a key');
    const bad = gateway.refreshTls();
    expect(bad.changed).toBe(0);
    expect(bad.failed.map((f) => [f.error.code, f.error.file])).toEqual([['tls.invalid', liveKey]]);
    // Deleted while a renewal rewrites it: named.
    rmSync(liveKey);
    expect(gateway.refreshTls().failed.map((f) => [f.error.code, f.error.file])).toEqual([['tls.file_unreadable', liveKey]]);
    copyFileSync(pairs.c.key, liveKey);
    expect(await servedCn(port)).toBe('charlie');
  });

  it('a reload naming other files swaps them; one naming unreadable files is refused and the old snapshot stays', async () => {
    expect(await servedCn(port)).toBe('charlie');
    const before = gateway.current;
    // Readable (so the config loads), but no key for this certificate.
    const wrongKey = join(root, 'other', 'wrong.key');
    copyFileSync(pairs.a.key, wrongKey);
    const bad = parseConfig(yaml(pairs.d.cert, wrongKey), join(root, 'gw.yaml'), { checks: CONFIG_CHECKS });
    const failure = await gateway.reload(bad.config, bad.hash).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(TlsMaterialError);
    expect(failure).toMatchObject({ code: 'tls.invalid' });
    expect(gateway.current).toBe(before);
    expect(await servedCn(port)).toBe('charlie');

    const other = parseConfig(yaml(pairs.d.cert, pairs.d.key), join(root, 'gw.yaml'), { checks: CONFIG_CHECKS });
    await gateway.reload(other.config, other.hash);
    expect(await servedCn(port)).toBe('delta');
    // The watcher follows the files now named: a renewal of the new ones is seen, the old ones are not watched.
    install(pairs.a);
    await new Promise((r) => setTimeout(r, 500));
    expect(await servedCn(port)).toBe('delta');
    copyFileSync(pairs.b.cert, pairs.d.cert);
    copyFileSync(pairs.b.key, pairs.d.key);
    await until(async () => (await servedCn(port)) === 'bravo');
  });
});
