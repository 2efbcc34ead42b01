import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditCli } from '../../src/audit/cli.js';
import { RequestContext } from '../../src/core/context.js';
import { createAuditLog } from '../../src/audit/log.js';
import { auditConfig, ed25519Keys, parseLines, rawLine, rechain, silentLogger, tempDir, writeKey, type Rec } from './helpers.js';

let dir: string;
let cleanup: () => void;
let publicKeyFile: string;
let file: string;
let db: string;

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await auditCli(argv, { stdout: (t) => void (out += t), stderr: (t) => void (err += t) });
  return { code, out, err };
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir());
  const keys = ed25519Keys();
  publicKeyFile = join(dir, 'audit.pub.pem');
  writeFileSync(publicKeyFile, keys.publicPem);
  file = join(dir, 'audit.jsonl');
  db = join(dir, 'audit.db');
  const log = await createAuditLog(
    auditConfig(dir, {
      chain: { checkpointEvery: 10, checkpointIntervalMs: 60_000, signingKey: writeKey(dir, keys) },
      sinks: [{ file: { path: file } }, { sqlite: { path: db } }],
    }),
    { logger: silentLogger() },
  );
  for (const [subject, status] of [
    ['alice', 200],
    ['bob', 403],
    ['alice', 403],
  ] as const) {
    const ctx = new RequestContext({
      method: 'GET',
      rawTarget: '/orders',
      headers: { host: 'x' },
      peerAddress: '10.0.0.1',
      peerPort: 1,
      protocol: 'http/1.1',
      secure: false,
      requestId: `r-${subject}-${status}`,
    });
    ctx.path = '/orders';
    ctx.identity = { subject, roles: [], scopes: [], claims: {}, provider: 'p' };
    if (status === 403)
      ctx.decisions.push({ stage: 'authz', outcome: 'deny', code: 'rbac.denied', detail: { policy: 'orders', rule: 'r1' } });
    log.record(log.fromContext(ctx, { status, latencyMs: 1, bytesIn: 0, bytesOut: 0, clientIp: '10.0.0.1' }));
  }
  log.record({ action: 'payment.refund', subject: 'alice', resource: 'order:1' });
  await log.close();
});
afterAll(() => cleanup());

describe('bulwark audit verify', () => {
  it('exit 0 for an intact store (file or SQLite), with a summary', async () => {
    for (const args of [
      ['--file', file],
      ['--sqlite', db],
    ]) {
      const { code, out } = await cli('verify', ...args, '--public-key', publicKeyFile, '--sealed');
      expect(code).toBe(0);
      expect(out).toMatch(/signatures: trusted/);
      expect(out).toMatch(/^INTACT$/m);
    }
  });

  it('exit 1 for a tampered store, naming the first bad record; --json gives the report', async () => {
    const records = parseLines(readFileSync(file, 'utf8').trim().split('\n'));
    const target = records.find((r) => r['kind'] === 'request' && r['status'] === 403) as Rec;
    target['status'] = 200;
    const tampered = join(dir, 'tampered.jsonl');
    writeFileSync(tampered, records.map((r) => `${rawLine(r)}\n`).join(''));
    const text = await cli('verify', '--file', tampered, '--public-key', publicKeyFile);
    expect(text.code).toBe(1);
    expect(text.out).toContain(`TAMPERED: 1 error; first bad record: ${String(target['id'])} (${tampered}:3`);
    expect(text.out).toContain('record.hash_mismatch');
    const json = await cli('verify', '--file', tampered, '--json');
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({ ok: false, firstBad: { code: 'record.hash_mismatch', id: target['id'] } });
  });

  it('--require-signed: a chain made up whole (no checkpoint vouches for it) is tampering, not an open chain', async () => {
    expect((await cli('verify', '--file', file, '--public-key', publicKeyFile, '--require-signed')).code).toBe(0);
    const records = parseLines(readFileSync(file, 'utf8').trim().split('\n'));
    // A forger without the key: a start record and an event of a new chain, correctly hashed, no checkpoint.
    const forged = records
      .filter((r) => r['kind'] === 'start' || r['kind'] === 'event')
      .slice(0, 2)
      .map((r, n) => ({ ...r, chain: 'forged:1:20260101T000000000Z:abcdef', n, seq: n, subject: 'mallory', after: null }));
    const store = join(dir, 'forged.jsonl');
    writeFileSync(store, [...records.map((r) => rawLine(r)), ...rechain(forged, null)].map((l) => `${l}\n`).join(''));
    expect((await cli('verify', '--file', store, '--public-key', publicKeyFile)).code).toBe(0); // an open chain: a warning
    const strict = await cli('verify', '--file', store, '--public-key', publicKeyFile, '--require-signed');
    expect(strict.code).toBe(1);
    expect(strict.out).toContain('chain.unsigned');
    expect((await cli('verify', '--file', file, '--require-signed')).code).toBe(2); // needs the trusted key
  });

  it('exit 2 for usage errors and unreadable stores', async () => {
    expect((await cli('verify')).code).toBe(2);
    expect((await cli('verify', '--file', file, '--sqlite', db)).code).toBe(2);
    expect((await cli('verify', '--file', file, '--bogus')).code).toBe(2);
    expect((await cli('verify', '--file', file, '--anchor', 'nope')).code).toBe(2);
    expect((await cli('verify', '--file', file, '--public-key', join(dir, 'missing.pem'))).code).toBe(2);
    const missing = await cli('verify', '--file', join(dir, 'nope.jsonl'));
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/cannot read the store/);
    expect((await cli('verify', '--sqlite', join(dir, 'nope.db'))).code).toBe(2);
    expect((await cli('frobnicate')).code).toBe(2);
    expect((await cli('verify', '--help')).code).toBe(0);
  });
});

describe('bulwark audit query', () => {
  it('filters by subject and decision over a file and SQLite alike', async () => {
    for (const args of [
      ['--file', file],
      ['--sqlite', db],
    ]) {
      const { code, out } = await cli('query', ...args, '--since', '1h', '--subject', 'alice', '--decision', 'deny', '--json');
      expect(code).toBe(0);
      const rows = out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Rec);
      expect(rows.map((r) => [r['subject'], r['decision'], r['status']])).toEqual([['alice', 'deny', 403]]);
    }
    // A record's own timestamp as both bounds finds it (timestamps have nanoseconds, bounds milliseconds).
    const all = parseLines(readFileSync(file, 'utf8').trim().split('\n'));
    const ts = String(all.find((r) => r['kind'] === 'request')!['ts']);
    for (const args of [
      ['--file', file],
      ['--sqlite', db],
    ]) {
      const exact = await cli('query', ...args, '--since', ts, '--until', ts, '--json');
      expect(
        exact.out
          .trim()
          .split('\n')
          .map((l) => (JSON.parse(l) as Rec)['ts']),
      ).toContain(ts);
    }
    const events = await cli('query', '--sqlite', db, '--kind', 'event');
    expect(events.out).toMatch(/payment\.refund/);
    expect((await cli('query', '--file', file, '--since', 'yesterday')).code).toBe(2);
  });
});

describe('bulwark audit query --config: searching masked fields', () => {
  it('--subject alice finds her records under a hash rule (her pseudonym); a redacted field cannot be searched', async () => {
    const masked = join(dir, 'masked');
    const hmacKey = 'query-test-hmac-key-0123456789abcdef';
    const masking = {
      hmacKey,
      fields: [
        { path: 'subject', action: 'hash' as const },
        { path: 'tenant', action: 'redact' as const },
      ],
      headers: {},
      query: {},
    };
    const store = join(masked, 'audit.jsonl');
    const log = await createAuditLog(auditConfig(masked, { masking, sinks: [{ file: { path: store } }] }), {
      logger: silentLogger(),
    });
    log.record({ action: 'payment.refund', subject: 'alice', tenant: 'acme', resource: 'order:1' });
    log.record({ action: 'payment.refund', subject: 'bob', tenant: 'acme', resource: 'order:2' });
    await log.close();
    const config = join(masked, 'gateway.yaml');
    writeFileSync(
      config,
      `version: 1
audit:
  wal: { dir: ./wal }
  masking:
    hmacKey: \${TEST_AUDIT_HMAC_KEY}
    fields: [{ path: subject, action: hash }, { path: tenant, action: redact }]
  sinks: [{ file: { path: ./audit.jsonl } }]
routes:
  - { id: r, match: { path: { prefix: / } }, auth: { public: true } }
`,
    );
    process.env['TEST_AUDIT_HMAC_KEY'] = hmacKey;
    try {
      // Stored as a pseudonym: the raw name matches nothing.
      expect((await cli('query', '--file', store, '--subject', 'alice', '--json')).out.trim()).toBe('');
      const found = await cli('query', '--file', store, '--config', config, '--subject', 'alice', '--json');
      expect(found.code).toBe(0);
      const rows = found.out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Rec);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ action: 'payment.refund', resource: 'order:1' });
      expect(String(rows[0]!['subject'])).toMatch(/^hmac:/);
      const redacted = await cli('query', '--file', store, '--config', config, '--tenant', 'acme');
      expect(redacted.code).toBe(2);
      expect((await cli('query', '--file', store, '--config', join(masked, 'missing.yaml'), '--subject', 'a')).code).toBe(2);
    } finally {
      delete process.env['TEST_AUDIT_HMAC_KEY'];
    }
  });
});

describe('bulwark audit keygen', () => {
  it('writes an Ed25519 pair that verify accepts', async () => {
    const out = join(dir, 'new-key.pem');
    expect((await cli('keygen', '--out', out)).code).toBe(0);
    expect(existsSync(`${out}.pub`)).toBe(true);
    expect((await cli('verify', '--file', file, '--public-key', `${out}.pub`)).code).toBe(1); // not the key that signed it
    expect((await cli('keygen', '--out', out)).code).toBe(2); // never overwrites a key
  });
});
