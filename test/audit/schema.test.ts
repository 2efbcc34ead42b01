import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { afterEach, describe, expect, it } from 'vitest';
import { readFileSync, mkdirSync } from 'node:fs';
import { AUDIT_DEFAULTS, auditChecks, AuditSchema, resolveAuditPaths, type AuditConfig } from '../../src/audit/schema.js';
import { ERROR_CODES } from '../../src/core/errors.js';
import { ed25519Keys, tempDir, writeKey } from './helpers.js';

// Compiled as the config loader compiles the whole schema: defaults filled, every error listed.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, allowUnionTypes: true });
const validate = ajv.compile<AuditConfig>(AuditSchema);

function parse(input: unknown): { ok: boolean; config: AuditConfig; errors: string[] } {
  const config = structuredClone(input) as AuditConfig;
  const ok = validate(config);
  return { ok, config, errors: (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ''}`) };
}

function checks(audit: unknown, workers?: number | 'auto') {
  const { ok, config, errors } = parse(audit);
  expect(errors).toEqual([]);
  expect(ok).toBe(true);
  const issues: { path: string; code: string; severity: string }[] = [];
  auditChecks({ audit: config, workers }, (path, code, _message, severity = 'error') =>
    issues.push({ path: path.join('.'), code, severity }),
  );
  return issues;
}

const dirs: (() => void)[] = [];
afterEach(() => dirs.splice(0).forEach((cleanup) => cleanup()));

describe('audit config schema', () => {
  it('fills every default', () => {
    const { ok, config } = parse({
      sinks: [
        { file: { path: 'audit.jsonl' } },
        { sqlite: { path: 'a.db' } },
        { webhook: { url: 'https://x/y' } },
        { stdout: {} },
      ],
      wal: {},
      queue: {},
      chain: {},
      masking: {},
      extraFields: {},
      retry: {},
    });
    expect(ok).toBe(true);
    expect(config).toMatchObject({
      enabled: true,
      durability: 'durable',
      whenFull: 'block',
      closeTimeoutMs: 10_000,
      queue: { maxEvents: 65_536 },
      wal: { dir: '.bulwark/audit', segmentBytes: 16_777_216, fsyncIntervalMs: 0, maxBytes: 1_073_741_824 },
      chain: { checkpointEvery: 1000, checkpointIntervalMs: 60_000 },
      masking: { fields: [], headers: {}, query: {} },
      extraFields: { claims: [], headers: [], query: [] },
      retry: { initialMs: 200, maxMs: 30_000 },
      // ajv applies no defaults inside a union (`anyOf`): sink fields stay as written and the sinks use
      // AUDIT_DEFAULTS, which the schema documents as each field's `default`.
      sinks: [
        { file: { path: 'audit.jsonl' } },
        { sqlite: { path: 'a.db' } },
        { webhook: { url: 'https://x/y' } },
        { stdout: {} },
      ],
    });
  });

  it('documents the sink defaults the sinks apply', () => {
    const text = JSON.stringify(AuditSchema);
    const defaults = [
      AUDIT_DEFAULTS.file.rotateBytes,
      AUDIT_DEFAULTS.file.batchSize,
      AUDIT_DEFAULTS.postgres.poolSize,
      AUDIT_DEFAULTS.webhook.timeoutMs,
    ];
    for (const value of defaults) expect(text).toContain(`"default":${value}`);
  });

  it('is closed: a typo, an unknown action or sink kind, a second kind in one sink are errors', () => {
    expect(parse({ sinks: [{ file: { path: 'a' } }], whenfull: 'drop' }).ok).toBe(false);
    expect(parse({ sinks: [{ file: { path: 'a', rotatebytes: 1 } }] }).ok).toBe(false);
    expect(parse({ sinks: [{ kafka: {} }] }).ok).toBe(false);
    expect(parse({ sinks: [{ file: { path: 'a' }, sqlite: { path: 'b' } }] }).ok).toBe(false);
    expect(parse({ sinks: [] }).ok).toBe(false);
    expect(parse({ sinks: [{ stdout: {} }], masking: { fields: [{ path: 'claims.email', action: 'encrypt' }] } }).ok).toBe(false);
    expect(parse({ sinks: [{ stdout: {} }], masking: { headers: { 'bad header': 'redact' } } }).ok).toBe(false);
    expect(parse({ sinks: [{ postgres: { url: 'mysql://x' } }] }).ok).toBe(false);
    expect(parse({ sinks: [{ postgres: { url: 'postgres://x', table: 'a;drop table b' } }] }).ok).toBe(false);
  });

  it('has no switch that lets credentials through raw', () => {
    // The never-raw rule is not configuration: there is nothing to set, and inventing a knob fails validation.
    for (const knob of [{ allowRaw: true }, { neverRaw: [] }, { unmaskHeaders: ['authorization'] }])
      expect(parse({ sinks: [{ stdout: {} }], masking: knob }).ok).toBe(false);
    expect(JSON.stringify(AuditSchema)).not.toMatch(/allowRaw|neverRaw|unmask/i);
  });

  it('adds audit.unavailable (503) to the error codes', () => {
    expect(ERROR_CODES['audit.unavailable']).toEqual({ status: 503, title: 'Audit log unavailable' });
  });
});

describe('auditChecks', () => {
  it('accepts a complete, sound config', () => {
    const { dir, cleanup } = tempDir();
    dirs.push(cleanup);
    const issues = checks(
      {
        masking: { hmacKey: 'h'.repeat(32), fields: [{ path: 'claims.email', action: 'hash' }] },
        chain: { signingKey: writeKey(dir, ed25519Keys()) },
        sinks: [{ file: { path: 'a-{slot}.jsonl' } }, { webhook: { url: 'https://siem/x', hmacSecret: 's'.repeat(32) } }],
      },
      4,
    );
    expect(issues).toEqual([]);
  });

  it('reports each rule a schema cannot say', () => {
    const { dir, cleanup } = tempDir();
    dirs.push(cleanup);
    const rsaPem = join(dir, 'rsa.pem');
    writeFileSync(
      rsaPem,
      generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }),
    );
    const issues = checks(
      {
        masking: {
          fields: [
            { path: 'claims.email', action: 'hash' },
            { path: 'claims.email', action: 'redact' },
            { path: 'subject', action: 'redact', keep: 4 },
          ],
          headers: { Authorization: 'partial', authorization: 'redact' },
        },
        extraFields: { headers: ['cookie'] },
        wal: { segmentBytes: 1_048_576, maxBytes: 1_500_000 },
        chain: { signingKey: rsaPem },
        sinks: [
          { file: { path: 'same.jsonl' } },
          { file: { path: 'same.jsonl' } },
          { webhook: { url: 'http://siem.example/x' } },
        ],
      },
      'auto',
    );
    const found = issues.map((i) => `${i.severity} ${i.code} ${i.path}`);
    expect(found).toEqual(
      expect.arrayContaining([
        'error config.audit_hmac_key_required audit.masking.hmacKey',
        'error config.audit_mask_duplicate audit.masking.fields.1.path',
        'error config.audit_mask_keep audit.masking.fields.2.keep',
        'error config.audit_mask_duplicate audit.masking.headers.authorization',
        'warning config.audit_never_raw audit.masking.headers.Authorization',
        'warning config.audit_never_raw audit.extraFields.headers.0',
        'error config.audit_wal_quota audit.wal.maxBytes',
        'error config.audit_signing_key audit.chain.signingKey',
        'error config.audit_duplicate_sink audit.sinks.1',
        'warning config.audit_shared_file audit.sinks.0.file.path',
        'warning config.audit_webhook_cleartext audit.sinks.2.webhook.url',
        'warning config.audit_webhook_unsigned audit.sinks.2.webhook.hmacSecret',
      ]),
    );
  });

  it("masking rules on the record's own fields (id, seq, chain…) are refused, with the rule's path", () => {
    const structural = ['id', 'ts', 'kind', 'n', 'chain', 'prev', 'hash', 'v', 'seq'];
    const issues = checks({
      masking: {
        hmacKey: 'k'.repeat(32),
        fields: [
          ...structural.map((path) => ({ path, action: 'hash' })),
          // Fine: event fields, and paths below the top level that happen to use those names.
          { path: 'subject', action: 'hash' },
          { path: 'details.id', action: 'redact' },
          { path: 'claims.*', action: 'redact' },
          { path: 'details.seq', action: 'redact' },
        ],
      },
      sinks: [{ stdout: {} }],
    });
    expect(issues.filter((i) => i.path.startsWith('audit.masking'))).toEqual(
      structural.map((_, i) => ({
        path: `audit.masking.fields.${i}.path`,
        code: 'config.audit_mask_structural',
        severity: 'error',
      })),
    );
  });

  it('warns about recording a header the general credential-name rule always redacts', () => {
    const issues = checks({
      masking: { headers: { 'x-goog-api-key': 'partial' } },
      extraFields: { headers: ['x-goog-api-key', 'cookies', 'x-request-id'] },
      sinks: [{ stdout: {} }],
    });
    expect(issues.filter((i) => i.code === 'config.audit_never_raw').map((i) => `${i.severity} ${i.path}`)).toEqual([
      'warning audit.masking.headers.x-goog-api-key',
      'warning audit.extraFields.headers.1',
    ]);
  });

  it('an unreadable key file, and no key at all, are reported', () => {
    expect(checks({ chain: { signingKey: '/nonexistent/key.pem' }, sinks: [{ stdout: {} }] })).toEqual([
      { path: 'audit.chain.signingKey', code: 'config.audit_signing_key', severity: 'error' },
    ]);
    expect(checks({ sinks: [{ stdout: {} }] })).toEqual([
      { path: 'audit.chain.signingKey', code: 'config.audit_unsigned', severity: 'warning' },
    ]);
  });

  it('resolveAuditPaths anchors relative paths at the config directory', () => {
    const resolved = resolveAuditPaths(
      {
        wal: { dir: 'wal' },
        chain: { signingKey: 'keys/a.pem' },
        sinks: [{ file: { path: 'logs/a.jsonl' } }, { sqlite: { path: '/abs/a.db' } }, { stdout: {} }],
      } as AuditConfig,
      '/etc/bulwark',
    );
    expect(resolved.wal?.dir).toBe('/etc/bulwark/wal');
    expect(resolved.chain?.signingKey).toBe('/etc/bulwark/keys/a.pem');
    expect(resolved.sinks).toEqual([
      { file: { path: '/etc/bulwark/logs/a.jsonl' } },
      { sqlite: { path: '/abs/a.db' } },
      { stdout: {} },
    ]);
  });
});

describe('examples/audit/gateway.yaml', () => {
  it('is a valid gateway config, with its environment and a key from `bulwark audit keygen`', async () => {
    const { dir, cleanup } = tempDir();
    dirs.push(cleanup);
    mkdirSync(join(dir, '.keys'));
    writeFileSync(join(dir, '.keys', 'audit-ed25519.pem'), ed25519Keys().privatePem);
    const { parseConfig } = await import('../../src/config/load.js');
    const { CONFIG_CHECKS } = await import('../../src/server/config-source.js');
    const source = readFileSync(join(import.meta.dirname, '../../examples/audit/gateway.yaml'), 'utf8');
    // Validated as if it sat next to the key: relative paths resolve against the config's directory.
    const loaded = parseConfig(source, join(dir, 'gateway.yaml'), {
      env: { AUDIT_HMAC_KEY: 'x'.repeat(44) },
      checks: CONFIG_CHECKS,
    });
    expect(loaded.config.audit?.enabled).toBe(true);
  });
});
