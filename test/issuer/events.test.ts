/**
 * Issuer events are security events: each is logged and audited joined to the request it
 * happened in (request id, trace), and no log line shows the subject in clear.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuditLog, type AuditLog } from '../../src/audit/index.js';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createTelemetry, type Telemetry } from '../../src/telemetry/index.js';
import { createBulwark } from '../../src/index.js';
import { auditConfig, memorySink } from '../audit/helpers.js';
import { SECRET, secretHashes } from './helpers.js';

const HMAC_KEY = 'issuer-events-hmac-key-0123456789';
const records: Record<string, unknown>[] = [];
const sink = memorySink(records);

function capture(): { logger: ReturnType<typeof createLogger>; lines: Record<string, unknown>[]; text: () => string } {
  const raw: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      raw.push(chunk.toString('utf8'));
      done();
    },
  });
  const logger = createLogger({ level: 'debug', destination });
  return {
    logger,
    get lines() {
      return raw
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    },
    text: () => raw.join(''),
  };
}

async function sectionYaml(dir: string): Promise<string> {
  const [billing] = await secretHashes();
  return `issuer:
  issuer: https://auth.test
  keys: { dir: '${join(dir, 'keys')}', rotateEverySec: 0, publishAheadSec: 2 }
  store: { sqlite: { path: '${join(dir, 'issuer.db')}' } }
  sessionAudiences: [https://ledger.test]
  clients:
    - { id: billing, secretHash: '${billing}', audiences: [https://ledger.test] }
`;
}

const until = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
};

async function refreshTwice(url: string, refreshToken: string) {
  const ask = () =>
    request(`${url}/oauth/token`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      },
      body: `grant_type=refresh_token&refresh_token=${refreshToken}`,
    });
  const first = await ask();
  await first.body.dump();
  const replay = await ask();
  await replay.body.dump();
  return { first, replay };
}

describe('issuer events (gateway)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-issuer-events-'));
  const log = capture();
  let gateway: Gateway;
  let telemetry: Telemetry;
  let audit: AuditLog;
  let url: string;

  beforeAll(async () => {
    const loaded = parseConfig(
      `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
telemetry: { logs: { level: debug, accessLog: { enabled: false } }, traces: { exporter: none } }
audit:
  sinks: [{ stdout: {} }]
  masking: { hmacKey: ${HMAC_KEY}, fields: [{ path: subject, action: hash }] }
${await sectionYaml(dir)}routes:
  - { id: issuer, match: { path: { prefix: /oauth } }, auth: { public: true }, issuer: true }
`,
      'issuer.yaml',
      { checks: CONFIG_CHECKS },
    );
    telemetry = createTelemetry(loaded.config, { logger: log.logger, role: 'single' });
    audit = await createAuditLog(
      { ...auditConfig(dir), masking: loaded.config.audit!.masking },
      { logger: log.logger, sinks: [sink] },
    );
    gateway = new Gateway({ logger: log.logger, telemetry, audit });
    await gateway.start(loaded.config, loaded.hash);
    url = `http://127.0.0.1:${[...gateway.ports().values()][0]!}`;
  });
  afterAll(async () => {
    await gateway.stop(1000);
    await audit.close();
    await telemetry.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a reused refresh token: warn line and audit record carry the request id and trace, never the subject', async () => {
    const issuer = gateway.current!.issuer!.issuer;
    const session = await issuer.mintSession({ subject: 'alice@bank.example' });
    const { first, replay } = await refreshTwice(url, session.refreshToken);
    expect(first.statusCode).toBe(200);
    expect(replay.statusCode).toBe(400);
    const replayId = replay.headers['x-request-id'] as string;
    await until(() => records.some((r) => r['action'] === 'session.reuse_detected'));

    const reuse = records.find((r) => r['action'] === 'session.reuse_detected')!;
    expect(reuse['requestId']).toBe(replayId);
    expect(reuse['traceId']).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(reuse['subject']).toMatch(/^hmac:/);

    const warn = log.lines.find((l) => l['event'] === 'refresh_reuse')!;
    expect(warn).toBeDefined();
    expect(warn['level']).toBe(40);
    expect(warn['request_id']).toBe(replayId);
    expect(warn['trace_id']).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(typeof warn['span_id']).toBe('string');
    // The pseudonym the audit record holds: a log line joins its record without the raw value.
    expect(warn['subject_hash']).toBe(reuse['subject']);

    const issued = log.lines.find((l) => l['event'] === 'token_issued' && l['grant'] === 'refresh_token')!;
    expect(issued['request_id']).toBe(first.headers['x-request-id']);
    expect(issued['subject_hash']).toBe(reuse['subject']);
    expect(log.text()).not.toContain('alice@bank.example');
    expect(log.text()).not.toContain(session.refreshToken);
  });

  it("a client's own token: its id is logged, no pseudonym next to it that would give the pseudonym away", async () => {
    const res = await request(`${url}/oauth/token`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`billing:${SECRET}`).toString('base64')}`,
      },
      body: 'grant_type=client_credentials',
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    const line = log.lines.find((l) => l['event'] === 'token_issued' && l['grant'] === 'client_credentials')!;
    expect(line).toMatchObject({ client_id: 'billing', request_id: res.headers['x-request-id'] });
    expect(line['subject_hash']).toBeUndefined();
  });
});

describe('issuer events (library)', () => {
  it('createBulwark audits and logs them as the gateway does (no masking rule: the subject hashed)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-issuer-events-lib-'));
    const log = capture();
    records.length = 0;
    const audit = await createAuditLog(auditConfig(dir), { logger: log.logger, sinks: [sink] });
    const { parse } = await import('yaml');
    const config = {
      version: 1,
      ...(parse(await sectionYaml(dir)) as Record<string, unknown>),
      telemetry: { logs: { level: 'debug', accessLog: { enabled: false } }, traces: { exporter: 'none' } },
      routes: [{ id: 'issuer', match: { path: { prefix: '/oauth' } }, auth: { public: true }, issuer: true }],
    };
    const bulwark = await createBulwark({ config, logger: log.logger, audit });
    const { createServer } = await import('node:http');
    const server = createServer(bulwark.protect((_req, res) => res.end('app')));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const issuer = bulwark.issuer!;
      const session = await issuer.mintSession({ subject: 'bob@bank.example' });
      const port = (server.address() as { port: number }).port;
      const { replay } = await refreshTwice(`http://127.0.0.1:${port}`, session.refreshToken);
      expect(replay.statusCode).toBe(400);
      await until(() => records.some((r) => r['action'] === 'session.reuse_detected'));
      const reuse = records.find((r) => r['action'] === 'session.reuse_detected')!;
      expect(reuse['requestId']).toBe(replay.headers['x-request-id']);
      const warn = log.lines.find((l) => l['event'] === 'refresh_reuse')!;
      expect(warn['request_id']).toBe(replay.headers['x-request-id']);
      expect(warn['subject_hash']).toMatch(/^sha256:[0-9a-f]{16}$/);
      expect(log.text()).not.toContain('bob@bank.example');
      // The refused grant's request is audited as the denial it is (it was `allow`, status 400).
      expect(records.find((r) => r['kind'] === 'request' && r['requestId'] === replay.headers['x-request-id'])).toMatchObject({
        status: 400,
        decision: 'deny',
        reason: 'issuer.invalid_grant',
      });
    } finally {
      await new Promise((r) => server.close(r));
      await bulwark.close();
      await audit.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
