import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import {
  limitsChecks,
  parseDescriptor,
  parseDuration,
  policyReferenceChecks,
  RateLimitsSchema,
  type RateLimitsConfig,
} from '../../src/limits/schema.js';

// The loader's settings: defaults filled, every error listed.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, allowUnionTypes: true });
const validate = ajv.compile<RateLimitsConfig>(RateLimitsSchema);

function check(config: unknown): { code: string; path: string; severity: string }[] {
  const issues: { code: string; path: string; severity: string }[] = [];
  limitsChecks(config as RateLimitsConfig, (path, code, _message, severity = 'error') =>
    issues.push({ code, path: path.join('.'), severity }),
  );
  return issues;
}

describe('rateLimits schema', () => {
  it('accepts the documented shape and fills defaults', () => {
    const config = {
      stores: {
        shared: { redis: { url: 'redis://127.0.0.1:6379', breaker: { failures: 5 }, lease: { maxBatch: 50 } } },
      },
      policies: [
        {
          id: 'per-client-read',
          rate: 10,
          per: '1s',
          burst: 10,
          key: ['route', 'client_ip'],
          tiers: { claim: 'tier', limits: { gold: { rate: 100, burst: 200 } } },
          overrides: { tenants: { acme: { rate: 500, burst: 1000 } } },
        },
        { id: 'orders-concurrency', concurrency: 20, key: ['tenant'], store: 'shared', onStoreFailure: 'closed' },
      ],
      global: { maxConnections: 10000, maxConcurrentStreams: 5000 },
    };
    expect(validate(config), JSON.stringify(validate.errors)).toBe(true);
    const c = config as unknown as RateLimitsConfig;
    expect(c.policies![0]!.store).toBe('memory');
    expect(c.policies![0]!.mode).toBe('enforce');
    expect(c.policies![0]!.onStoreFailure).toBe('open');
    expect(c.stores!['shared']!.redis!.keyPrefix).toBe('bulwark:');
    expect(c.stores!['shared']!.redis!.timeoutMs).toBe(50);
    expect(c.stores!['shared']!.redis!.breaker!.resetMs).toBe(2000);
    expect(c.stores!['shared']!.redis!.lease!.enabled).toBe(true);
    expect(check(config)).toEqual([]);
  });

  it('is closed: a misspelt field is an error, not a silently ignored limit', () => {
    expect(validate({ policies: [{ id: 'a', rate: 10, brust: 20 }] })).toBe(false);
    expect(validate({ stores: { s: { redis: { url: 'redis://x', timeout: 5 } } } })).toBe(false);
    expect(validate({ policies: [{ id: 'a', rate: 10, tiers: { claim: 'tier', limits: { gold: { rat: 1 } } } }] })).toBe(false);
  });

  it('refuses burst < 1, rate 0 and malformed durations', () => {
    expect(validate({ policies: [{ id: 'a', rate: 10, burst: 0 }] })).toBe(false);
    expect(validate({ policies: [{ id: 'a', rate: 0 }] })).toBe(false);
    expect(validate({ policies: [{ id: 'a', rate: 1, per: '1 sec' }] })).toBe(false);
    expect(validate({ policies: [{ id: 'a', rate: 1, per: '0s' }] })).toBe(false);
  });
});

describe('limitsChecks', () => {
  it('reports unknown stores with the known ones', () => {
    expect(check({ policies: [{ id: 'a', rate: 1, store: 'shraed' }] })).toEqual([
      { code: 'config.unknown_store', path: 'rateLimits.policies.0.store', severity: 'error' },
    ]);
  });

  it('reports bad descriptors', () => {
    const issues = check({
      policies: [{ id: 'a', rate: 1, key: ['client-ip', 'header:', 'claim:a..b', 'header:X-Api-Key', 'subject'] }],
    });
    expect(issues.map((i) => i.path)).toEqual([
      'rateLimits.policies.0.key.0',
      'rateLimits.policies.0.key.1',
      'rateLimits.policies.0.key.2',
    ]);
    expect(new Set(issues.map((i) => i.code))).toEqual(new Set(['config.bad_descriptor']));
  });

  it('warns when a key is only client-chosen headers', () => {
    expect(check({ policies: [{ id: 'a', rate: 1, key: ['header:x-api-key'] }] })).toEqual([
      { code: 'config.client_chosen_key', path: 'rateLimits.policies.0.key', severity: 'warning' },
    ]);
    expect(check({ policies: [{ id: 'a', rate: 1, key: ['header:x-api-key', 'client_ip'] }] })).toEqual([]);
  });

  it('needs exactly one of rate and concurrency, and matching algorithm and fields', () => {
    expect(check({ policies: [{ id: 'a' }] })[0]?.code).toBe('config.policy_kind');
    expect(check({ policies: [{ id: 'a', rate: 1, concurrency: 2 }] })[0]?.code).toBe('config.policy_kind');
    expect(check({ policies: [{ id: 'a', algorithm: 'concurrency', rate: 1 }] })[0]?.code).toBe('config.policy_kind');
    expect(check({ policies: [{ id: 'a', concurrency: 1, burst: 2 }] })[0]?.code).toBe('config.policy_kind');
    expect(check({ policies: [{ id: 'a', rate: 1, tiers: { claim: 't', limits: { x: { concurrency: 2 } } } }] })[0]?.code).toBe(
      'config.policy_kind',
    );
  });

  it('reports per together with periodMs, duplicate ids, unknown default tier, redis named memory', () => {
    const codes = check({
      stores: { memory: { redis: { url: 'redis://x' } }, twice: { memory: {}, redis: { url: 'redis://x' } } },
      policies: [
        { id: 'a', rate: 1, per: '1s', periodMs: 1000 },
        { id: 'a', rate: 1, tiers: { claim: 'tier', limits: { gold: { rate: 2 } }, default: 'platinum' } },
        { id: 'b', rate: 1, burst: 0 },
        { id: 'c', rate: 2_000_000, per: '1s' },
      ],
    }).map((i) => i.code);
    expect(codes).toEqual([
      'config.store_kind',
      'config.store_kind',
      'config.period_conflict',
      'config.duplicate_id',
      'config.unknown_tier',
      'config.bad_burst',
      'config.rate_too_high',
    ]);
  });

  it('checks route references', () => {
    const issues: string[] = [];
    policyReferenceChecks(
      ['a', 'zz'],
      { policies: [{ id: 'a', rate: 1 }] } as RateLimitsConfig,
      ['routes', 0, 'rateLimits'],
      (path, code) => issues.push(`${path.join('.')} ${code}`),
    );
    expect(issues).toEqual(['routes.0.rateLimits.1 config.unknown_policy']);
  });

  it('parses durations and descriptors', () => {
    expect(parseDuration('1s')).toBe(1000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration('1d')).toBe(86_400_000);
    expect(parseDuration('1.5s')).toBeNaN();
    expect(parseDescriptor('header:X-Api-Key')).toEqual({ kind: 'header', name: 'x-api-key' });
    expect(parseDescriptor('claim:plan.level')).toEqual({ kind: 'claim', path: ['plan', 'level'] });
    expect(typeof parseDescriptor('ip')).toBe('string');
  });
});
