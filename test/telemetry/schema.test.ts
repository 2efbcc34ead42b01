import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import type { ConfigCheck } from '../../src/config/load.js';
import {
  DEFAULT_ACCESS_LOG_FIELDS,
  resolveTelemetryConfig,
  telemetryChecks,
  TelemetrySchema,
  type TelemetryCheckInput,
  type TelemetryConfig,
} from '../../src/telemetry/schema.js';

// The loader's ajv options (src/config/load.ts): defaults are filled in while validating.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, allowUnionTypes: true });
const validate = ajv.compile<TelemetryConfig>(JSON.parse(JSON.stringify(TelemetrySchema)) as object);

function valid(yaml: string): TelemetryConfig {
  const value = parse(yaml) as TelemetryConfig;
  const ok = validate(value);
  expect(validate.errors ?? []).toEqual([]);
  expect(ok).toBe(true);
  return value;
}

function invalid(value: unknown): string[] {
  expect(validate(value)).toBe(false);
  return (validate.errors ?? []).map((e) => `${e.instancePath} ${e.keyword}`);
}

function issues(input: TelemetryCheckInput) {
  const out: { path: string; code: string; severity: string }[] = [];
  telemetryChecks(input, (path, code, _message, severity = 'error') => out.push({ path: path.join('.'), code, severity }));
  return out;
}

describe('telemetry schema', () => {
  it('accepts the documented example and fills defaults like the loader', () => {
    const config = valid(`
serviceName: edge
resourceAttributes: { deployment.environment.name: prod }
traces:
  exporter: otlp
  endpoint: http://otel-collector:4318/v1/traces
  headers: { x-scope-orgid: acme }
  sampler: { ratio: 0.1 }
  propagators: [tracecontext, baggage, b3]
metrics:
  otlp: { endpoint: http://otel-collector:4318/v1/metrics }
logs:
  accessLog: { fields: [request_id, status, duration_ms] }
profiling:
  allow: token
  token: 0123456789abcdef0123
`);
    expect(config.traces!.sampler).toEqual({ ratio: 0.1, parentBased: true });
    expect(config.traces!.identityAttributes).toBe(false);
    expect(config.metrics!.enabled).toBe(true);
    expect(config.metrics!.otlp!.intervalMs).toBe(60_000);
    expect(config.logs!.level).toBe('info');
    expect(config.profiling!.maxSeconds).toBe(60);
  });

  it('an empty section means the documented defaults', () => {
    const config = valid('{}');
    expect(resolveTelemetryConfig(config)).toEqual(resolveTelemetryConfig(undefined));
    const r = resolveTelemetryConfig(undefined);
    expect(r.traces).toMatchObject({
      exporter: 'none',
      propagators: ['tracecontext', 'baggage'],
      sampler: { ratio: 1, parentBased: true },
      // A gateway's span rate: four times the OTel SDK's batch (an export costs about the same whatever its size).
      batch: { maxQueueSize: 8192, maxExportBatchSize: 2048, scheduledDelayMs: 5000 },
    });
    expect(r.metrics).toMatchObject({ enabled: true, defaultMetrics: true, otlp: null });
    expect(r.logs.accessLog).toEqual({ enabled: false, fields: DEFAULT_ACCESS_LOG_FIELDS });
    expect(r.profiling).toEqual({ enabled: true, allow: 'loopback', token: null, maxSeconds: 60 });
  });

  it('refuses typos and out-of-range values', () => {
    expect(invalid({ traces: { exporterr: 'otlp' } })).toContain('/traces additionalProperties');
    expect(invalid({ traces: { exporter: 'jaeger' } }).length).toBeGreaterThan(0);
    expect(invalid({ traces: { sampler: { ratio: 1.5 } } })).toContain('/traces/sampler/ratio maximum');
    expect(invalid({ traces: { propagators: ['xray'] } }).length).toBeGreaterThan(0);
    expect(invalid({ traces: { propagators: ['b3', 'b3'] } })).toContain('/traces/propagators uniqueItems');
    expect(invalid({ traces: { endpoint: 'collector:4318' } })).toContain('/traces/endpoint pattern');
    expect(invalid({ traces: { headers: { 'X-Upper': 'v' } } }).length).toBeGreaterThan(0);
    expect(invalid({ traces: { headers: { 'x-ok': 'bad\r\nvalue' } } }).length).toBeGreaterThan(0);
    expect(invalid({ logs: { accessLog: { fields: ['authorization'] } } }).length).toBeGreaterThan(0);
    expect(invalid({ logs: { level: 'verbose' } }).length).toBeGreaterThan(0);
    expect(invalid({ profiling: { token: 'short' } })).toContain('/profiling/token minLength');
    expect(invalid({ profiling: { maxSeconds: 0 } })).toContain('/profiling/maxSeconds minimum');
    expect(invalid({ metrics: { requestDurationBuckets: [] } })).toContain('/metrics/requestDurationBuckets minItems');
  });

  it('offers no access-log field for headers, queries or tokens', () => {
    const fields = (
      TelemetrySchema.properties.logs.properties.accessLog.properties.fields.items.anyOf as { const: string }[]
    ).map((s) => s.const);
    for (const f of fields) expect(f).not.toMatch(/header|query|token|cookie|authorization|subject$/);
  });
});

describe('telemetryChecks', () => {
  it('a token mode without a token is an error', () => {
    expect(issues({ telemetry: { profiling: { allow: 'token' } } })).toEqual([
      { path: 'telemetry.profiling.token', code: 'telemetry.token_required', severity: 'error' },
    ]);
    expect(issues({ telemetry: { profiling: { allow: 'token', enabled: false } } })).toEqual([]);
  });

  it('credentials in an export URL are an error; a query string too', () => {
    expect(issues({ telemetry: { traces: { exporter: 'otlp', endpoint: 'https://user:pw@collector/v1/traces' } } })).toEqual([
      { path: 'telemetry.traces.endpoint', code: 'telemetry.url_credentials', severity: 'error' },
    ]);
    expect(issues({ telemetry: { metrics: { otlp: { endpoint: 'http://c/v1/metrics?key=1' } } } })[0]).toMatchObject({
      code: 'telemetry.bad_url',
    });
  });

  it('settings that do nothing are warnings', () => {
    const found = issues({
      telemetry: {
        traces: { exporter: 'none', endpoint: 'http://c:4318/v1/traces', propagators: ['b3', 'b3multi'] },
        metrics: { enabled: false, otlp: { endpoint: 'http://c:4318/v1/metrics' } },
        profiling: { token: '0123456789abcdef0123' },
      },
    });
    expect(found.every((i) => i.severity === 'warning')).toBe(true);
    expect(found.map((i) => i.path).sort()).toEqual(
      ['telemetry.metrics.otlp', 'telemetry.profiling.token', 'telemetry.traces.endpoint', 'telemetry.traces.propagators'].sort(),
    );
    expect(issues({ telemetry: { traces: { exporter: 'otlp', sampler: { ratio: 0, parentBased: false } } } })).toEqual([
      { path: 'telemetry.traces.sampler', code: 'telemetry.never_sampled', severity: 'warning' },
    ]);
    expect(issues({ telemetry: {}, admin: { enabled: false } })).toEqual([
      { path: 'telemetry.metrics', code: 'telemetry.unserved', severity: 'warning' },
    ]);
  });

  it('a console exporter is not warned about OTLP settings nobody wrote (after the loader filled defaults)', () => {
    expect(issues({ telemetry: valid('traces: { exporter: console, sampler: { ratio: 1 } }') })).toEqual([]);
    expect(issues({ telemetry: valid('traces: { exporter: console, timeoutMs: 5000 }') })).toEqual([
      { path: 'telemetry.traces.timeoutMs', code: 'telemetry.unused', severity: 'warning' },
    ]);
    expect(resolveTelemetryConfig(valid('traces: { exporter: otlp }')).traces).toMatchObject({
      endpoint: 'http://127.0.0.1:4318/v1/traces',
      compression: 'none',
      timeoutMs: 10_000,
      headers: {},
    });
  });

  it('no section, no issues', () => {
    expect(issues({})).toEqual([]);
  });
});

// Compile-time: telemetryChecks plugs into the loader's checks as it is.
export const asLoaderCheck: ConfigCheck = telemetryChecks;
