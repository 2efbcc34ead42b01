import { afterEach, describe, expect, it } from 'vitest';
import { BulwarkMetrics, OVERFLOW_LABEL, UNMATCHED_ROUTE } from '../../src/telemetry/metrics.js';
import { resolveTelemetryConfig } from '../../src/telemetry/schema.js';
import { makeContext, parsePrometheus, samplesOf, valueOf } from './helpers.js';

const open: BulwarkMetrics[] = [];
function metrics(options: { maxLabelValues?: number; defaultMetrics?: boolean } = {}): BulwarkMetrics {
  const config = resolveTelemetryConfig({ metrics: { defaultMetrics: options.defaultMetrics ?? true } }).metrics;
  const m = new BulwarkMetrics(config, { worker: '0', maxLabelValues: options.maxLabelValues });
  open.push(m);
  return m;
}
afterEach(() => {
  for (const m of open.splice(0)) m.close();
});

async function scrape(m: BulwarkMetrics) {
  return parsePrometheus(await m.metrics());
}

describe('metric families', () => {
  it('exposes every Bulwark family with its type and labels, named per Prometheus conventions', async () => {
    const m = metrics();
    m.recordRequest(makeContext({ route: 'r1', method: 'GET' }), 200, 0.012, 512);
    m.recordUpstream('orders', 'http://10.0.0.1:8080', 200, 0.01, null);
    m.keySourceEvent({ type: 'keys_loaded', provider: 'corp', source: 'jwks_url', changed: true });
    m.configReload('ok');
    m.spansExported(3, false);
    m.spanDropped();
    m.spanDropped();
    m.setSources({
      connections: () => [['http://0.0.0.0:8080', 4]],
      streams: () => [['http://0.0.0.0:8080', 2]],
      certificates: () => [['https://0.0.0.0:8443', 1_900_000_000]],
      audit: () => ({ queueDepth: 7, written: 120, dropped: 1, walBytes: 4096 }),
    });
    const families = await scrape(m);
    const expected: Record<string, [type: string, labels: string[]]> = {
      bulwark_http_request_duration_seconds: ['histogram', ['route', 'method', 'status_class']],
      bulwark_http_response_body_bytes_total: ['counter', ['route']],
      bulwark_http_rejections_total: ['counter', []],
      bulwark_authn_outcomes_total: ['counter', []],
      bulwark_authz_decisions_total: ['counter', []],
      bulwark_ratelimit_decisions_total: ['counter', []],
      bulwark_upstream_requests_total: ['counter', ['upstream', 'endpoint', 'status_class']],
      bulwark_upstream_errors_total: ['counter', []],
      bulwark_upstream_request_duration_seconds: ['histogram', ['upstream', 'endpoint']],
      bulwark_active_connections: ['gauge', ['listener']],
      bulwark_active_streams: ['gauge', ['listener']],
      bulwark_tls_certificate_expiry_timestamp_seconds: ['gauge', ['listener']],
      bulwark_audit_queue_depth: ['gauge', []],
      bulwark_audit_wal_bytes: ['gauge', []],
      bulwark_audit_events_written_total: ['counter', []],
      bulwark_audit_events_dropped_total: ['counter', []],
      bulwark_jwks_fetches_total: ['counter', ['provider', 'source', 'outcome']],
      bulwark_jwks_key_set_changes_total: ['counter', ['provider']],
      bulwark_jwks_keys_expired_total: ['counter', []],
      bulwark_config_reloads_total: ['counter', ['outcome']],
      bulwark_config_last_reload_success_timestamp_seconds: ['gauge', []],
      bulwark_trace_spans_exported_total: ['counter', ['outcome']],
      bulwark_event_loop_delay_seconds: ['histogram', ['worker']],
      bulwark_event_loop_utilization_ratio: ['gauge', ['worker']],
      bulwark_event_loop_active_seconds_total: ['counter', ['worker']],
      bulwark_heap_used_bytes: ['gauge', ['worker']],
      bulwark_heap_limit_bytes: ['gauge', ['worker']],
      bulwark_gc_pause_seconds: ['histogram', []],
      process_cpu_seconds_total: ['counter', []],
      process_resident_memory_bytes: ['gauge', []],
      nodejs_gc_duration_seconds: ['histogram', []],
    };
    for (const [name, [type, labels]] of Object.entries(expected)) {
      const family = families.get(name);
      expect(family, name).toBeDefined();
      expect(family!.type, name).toBe(type);
      for (const s of family!.samples) for (const l of labels) expect(Object.keys(s.labels), `${name} ${l}`).toContain(l);
    }
    for (const name of families.keys()) {
      expect(name).toMatch(/^(bulwark|process|nodejs)_[a-z0-9_]+$/);
      const family = families.get(name)!;
      if (name.startsWith('bulwark_') && family.type === 'counter') expect(name).toMatch(/_total$/);
      if (name.startsWith('bulwark_') && family.type !== 'counter') expect(name).not.toMatch(/_total$/);
    }
    expect(valueOf(families, 'bulwark_active_connections', { listener: 'http://0.0.0.0:8080' })).toBe(4);
    expect(valueOf(families, 'bulwark_active_streams', { listener: 'http://0.0.0.0:8080' })).toBe(2);
    expect(valueOf(families, 'bulwark_audit_queue_depth')).toBe(7);
    expect(valueOf(families, 'bulwark_audit_events_written_total')).toBe(120);
    expect(valueOf(families, 'bulwark_audit_events_dropped_total')).toBe(1);
    expect(valueOf(families, 'bulwark_audit_wal_bytes')).toBe(4096);
    expect(valueOf(families, 'bulwark_jwks_fetches_total', { provider: 'corp', source: 'jwks_url', outcome: 'ok' })).toBe(1);
    expect(valueOf(families, 'bulwark_config_reloads_total', { outcome: 'ok' })).toBe(1);
    expect(valueOf(families, 'bulwark_config_reloads_total', { outcome: 'failed' })).toBe(0);
    expect(valueOf(families, 'bulwark_trace_spans_exported_total', { outcome: 'ok' })).toBe(3);
    expect(valueOf(families, 'bulwark_trace_spans_exported_total', { outcome: 'dropped' })).toBe(2);
  });

  it('a recorded request moves exactly its series', async () => {
    const m = metrics({ defaultMetrics: false });
    m.recordRequest(makeContext({ route: 'orders', method: 'POST' }), 201, 0.03, 100);
    m.recordRequest(makeContext({ route: 'orders', method: 'POST' }), 204, 0.2, 0);
    m.recordRequest(makeContext({ route: 'orders', method: 'GET' }), 503, 1.5, 10, 'upstream.unreachable');
    const f = await scrape(m);
    const labels = { route: 'orders', method: 'POST', status_class: '2xx' };
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_count', labels)).toBe(2);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_sum', labels)).toBeCloseTo(0.23, 6);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_bucket', { ...labels, le: '0.05' })).toBe(1);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_bucket', { ...labels, le: '0.25' })).toBe(2);
    expect(
      valueOf(f, 'bulwark_http_request_duration_seconds_count', { route: 'orders', method: 'GET', status_class: '5xx' }),
    ).toBe(1);
    expect(valueOf(f, 'bulwark_http_response_body_bytes_total', { route: 'orders' })).toBe(110);
    expect(valueOf(f, 'bulwark_http_rejections_total', { route: 'orders', code: 'upstream.unreachable' })).toBe(1);
    // Nothing recorded under classes or methods that saw no traffic.
    expect(
      valueOf(f, 'bulwark_http_request_duration_seconds_count', { route: 'orders', method: 'GET', status_class: '2xx' }),
    ).toBeUndefined();
  });

  it('feeds the stage counters from the decision records', async () => {
    const m = metrics({ defaultMetrics: false });
    m.recordRequest(
      makeContext({
        decisions: [
          { stage: 'authn', outcome: 'allow', code: 'authn.valid', detail: { provider: 'corp', kid: 'k1' } },
          { stage: 'authz', outcome: 'allow', code: 'rbac.allowed', detail: { policy: 'orders', rule: 'readers', roles: ['a'] } },
          { stage: 'ratelimit', outcome: 'allow', code: 'ratelimit.ok', detail: { policy: 'per-client', key: 'h:abc' } },
        ],
      }),
      200,
      0.01,
    );
    m.recordRequest(
      makeContext({
        decisions: [{ stage: 'authn', outcome: 'deny', code: 'jwt.expired', detail: { provider: 'corp', reason: 'exp' } }],
      }),
      401,
      0.001,
      -1,
      'jwt.expired',
    );
    m.recordRequest(
      makeContext({
        decisions: [
          { stage: 'authz', outcome: 'deny', code: 'rbac.no_matching_rule', detail: { policy: null, rule: null } },
          { stage: 'ratelimit', outcome: 'deny', code: 'ratelimit.exceeded', detail: { policy: 'per-client' } },
          { stage: 'ratelimit', outcome: 'shadow_deny', code: 'ratelimit.exceeded', detail: { policy: 'burst' } },
        ],
      }),
      429,
      0.001,
    );
    const f = await scrape(m);
    expect(valueOf(f, 'bulwark_authn_outcomes_total', { provider: 'corp', outcome: 'allow', reason: 'authn.valid' })).toBe(1);
    expect(valueOf(f, 'bulwark_authn_outcomes_total', { provider: 'corp', outcome: 'deny', reason: 'jwt.expired' })).toBe(1);
    expect(valueOf(f, 'bulwark_authz_decisions_total', { policy: 'orders', rule: 'readers', outcome: 'allow' })).toBe(1);
    expect(valueOf(f, 'bulwark_authz_decisions_total', { policy: 'none', rule: 'none', outcome: 'deny' })).toBe(1);
    expect(valueOf(f, 'bulwark_ratelimit_decisions_total', { policy: 'per-client', outcome: 'admit' })).toBe(1);
    expect(valueOf(f, 'bulwark_ratelimit_decisions_total', { policy: 'per-client', outcome: 'reject' })).toBe(1);
    expect(valueOf(f, 'bulwark_ratelimit_decisions_total', { policy: 'burst', outcome: 'shadow_reject' })).toBe(1);
    // The limiter's key (a hashed client id) is never a label.
    expect(await m.metrics()).not.toContain('h:abc');
  });

  it('upstream attempts: requests by status class, errors by reason, latency', async () => {
    const m = metrics({ defaultMetrics: false });
    m.recordUpstream('orders', 'http://10.0.0.1:8080', 200, 0.02, null);
    m.recordUpstream('orders', 'http://10.0.0.1:8080', 0, 5, 'upstream.timeout');
    m.recordUpstream('orders', 'http://10.0.0.2:8080', 502, 0.01, null);
    const f = await scrape(m);
    const a = { upstream: 'orders', endpoint: 'http://10.0.0.1:8080' };
    expect(valueOf(f, 'bulwark_upstream_requests_total', { ...a, status_class: '2xx' })).toBe(1);
    expect(valueOf(f, 'bulwark_upstream_requests_total', { ...a, status_class: 'none' })).toBe(1);
    expect(valueOf(f, 'bulwark_upstream_errors_total', { ...a, reason: 'upstream.timeout' })).toBe(1);
    expect(valueOf(f, 'bulwark_upstream_request_duration_seconds_count', a)).toBe(2);
    expect(
      valueOf(f, 'bulwark_upstream_requests_total', {
        upstream: 'orders',
        endpoint: 'http://10.0.0.2:8080',
        status_class: '5xx',
      }),
    ).toBe(1);
  });
});

describe('registry behaviour of the per-request families', () => {
  it('resetMetrics zeroes them and cached cells keep counting', async () => {
    const m = metrics({ defaultMetrics: false });
    const ctx = makeContext({ route: 'orders' });
    m.recordRequest(ctx, 200, 0.01, 5);
    m.registry.resetMetrics();
    expect(valueOf(await scrape(m), 'bulwark_http_request_duration_seconds_count', { route: 'orders' })).toBe(0);
    m.recordRequest(ctx, 200, 0.01, 5);
    const f = await scrape(m);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_count', { route: 'orders' })).toBe(1);
    expect(valueOf(f, 'bulwark_http_response_body_bytes_total', { route: 'orders' })).toBe(5);
  });

  it('JSON form (what cluster aggregation and OTLP push read) matches the text', async () => {
    const m = metrics({ defaultMetrics: false });
    m.recordRequest(makeContext({ route: 'orders' }), 200, 0.01, 5);
    const json = (await m.registry.getMetricsAsJSON()) as unknown as {
      name: string;
      type: string;
      values: { metricName?: string; labels: Record<string, unknown>; value: number }[];
    }[];
    const duration = json.find((x) => x.name === 'bulwark_http_request_duration_seconds')!;
    expect(duration.type).toBe('histogram');
    expect(duration.values.find((v) => v.metricName === 'bulwark_http_request_duration_seconds_count')!.value).toBe(1);
    expect(duration.values.find((v) => v.labels['le'] === '+Inf')!.value).toBe(1);
  });
});

describe('label cardinality', () => {
  it('1000 different paths on one route are one route label; unmatched paths are one label too', async () => {
    const m = metrics({ defaultMetrics: false });
    for (let i = 0; i < 1000; i++) {
      m.recordRequest(makeContext({ route: 'users', path: `/users/${i}/profile` }), 200, 0.001);
      m.recordRequest(makeContext({ route: null, path: `/nope/${i}` }), 404, 0.001, -1, 'route.not_found');
    }
    const text = await m.metrics();
    const f = parsePrometheus(text);
    const routes = new Set(samplesOf(f, 'bulwark_http_request_duration_seconds_count').map((s) => s.labels['route']));
    expect([...routes].sort()).toEqual([UNMATCHED_ROUTE, 'users'].sort());
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_count', { route: 'users' })).toBe(1000);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_count', { route: UNMATCHED_ROUTE, status_class: '4xx' })).toBe(1000);
    expect(text).not.toContain('/users/');
    expect(text).not.toContain('/nope/');
  });

  it('methods outside the standard set fold into _OTHER; odd status codes into none', async () => {
    const m = metrics({ defaultMetrics: false });
    for (let i = 0; i < 50; i++) m.recordRequest(makeContext({ method: `M${i}` }), 200, 0.001);
    m.recordRequest(makeContext({}), 0, 0.001);
    m.recordRequest(makeContext({}), 999, 0.001);
    const f = await scrape(m);
    const methods = new Set(samplesOf(f, 'bulwark_http_request_duration_seconds_count').map((s) => s.labels['method']));
    expect([...methods].sort()).toEqual(['GET', '_OTHER']);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_count', { method: '_OTHER' })).toBe(50);
    expect(valueOf(f, 'bulwark_http_request_duration_seconds_count', { method: 'GET', status_class: 'none' })).toBe(2);
  });

  it('a family past its cap folds new values into `other` instead of growing', async () => {
    const m = metrics({ defaultMetrics: false, maxLabelValues: 5 });
    for (let i = 0; i < 50; i++) {
      m.recordRequest(makeContext({ route: `route-${i}` }), 200, 0.001);
      m.recordUpstream(`up-${i}`, 'http://x:1', 200, 0.001, null);
      m.recordRequest(
        makeContext({ decisions: [{ stage: 'authn', outcome: 'deny', code: `jwt.c${i}`, detail: { provider: 'p' } }] }),
        401,
        0,
      );
    }
    const f = await scrape(m);
    const routes = new Set(samplesOf(f, 'bulwark_http_request_duration_seconds_count').map((s) => s.labels['route']));
    expect(routes.size).toBeLessThanOrEqual(6);
    expect(routes.has(OVERFLOW_LABEL)).toBe(true);
    expect(new Set(samplesOf(f, 'bulwark_upstream_requests_total').map((s) => s.labels['upstream'])).size).toBeLessThanOrEqual(6);
    expect(new Set(samplesOf(f, 'bulwark_authn_outcomes_total').map((s) => s.labels['reason'])).size).toBeLessThanOrEqual(6);
    // Every request is still counted.
    const total = samplesOf(f, 'bulwark_http_request_duration_seconds_count').reduce((n, s) => n + s.value, 0);
    expect(total).toBe(100);
  });

  it('reason codes that are not stable codes never become labels', async () => {
    const m = metrics({ defaultMetrics: false });
    m.recordRequest(makeContext({}), 500, 0.001, -1, 'Error: ECONNREFUSED 10.1.2.3:443');
    const text = await m.metrics();
    expect(text).not.toContain('10.1.2.3');
    expect(valueOf(parsePrometheus(text), 'bulwark_http_rejections_total', { code: OVERFLOW_LABEL })).toBe(1);
  });
});

describe('runtime health', () => {
  it('event-loop delay histogram, utilization, GC pauses by kind and heap used/limit', async () => {
    const m = metrics({ defaultMetrics: false });
    // Block the loop once (a 60 ms delay must land past the 50 ms bound) and make garbage for a few GCs.
    await new Promise((r) => setTimeout(r, 50));
    const until = Date.now() + 60;
    while (Date.now() < until);
    let keep: unknown[] = [];
    for (let i = 0; i < 200; i++) keep = [new Array(10_000).fill(i), keep.length];
    await new Promise((r) => setTimeout(r, 100));
    const f = await scrape(m);
    const count = valueOf(f, 'bulwark_event_loop_delay_seconds_count', { worker: '0' })!;
    expect(count).toBeGreaterThan(3);
    const buckets = samplesOf(f, 'bulwark_event_loop_delay_seconds_bucket');
    expect(buckets.map((b) => b.labels['le'])).toContain('+Inf');
    // Cumulative: never decreasing, ending at the count.
    for (let i = 1; i < buckets.length; i++) expect(buckets[i]!.value).toBeGreaterThanOrEqual(buckets[i - 1]!.value);
    expect(buckets[buckets.length - 1]!.value).toBe(count);
    expect(valueOf(f, 'bulwark_event_loop_delay_seconds_bucket', { le: '0.05' })!).toBeLessThan(count);
    const elu = valueOf(f, 'bulwark_event_loop_utilization_ratio', { worker: '0' })!;
    expect(elu).toBeGreaterThan(0);
    expect(elu).toBeLessThanOrEqual(1);
    expect(valueOf(f, 'bulwark_event_loop_active_seconds_total', { worker: '0' })!).toBeGreaterThan(0);
    expect(valueOf(f, 'bulwark_heap_used_bytes', { worker: '0' })!).toBeGreaterThan(1_000_000);
    expect(valueOf(f, 'bulwark_heap_limit_bytes', { worker: '0' })!).toBeGreaterThan(valueOf(f, 'bulwark_heap_used_bytes')!);
    const gcKinds = samplesOf(f, 'bulwark_gc_pause_seconds_count').map((s) => s.labels['kind']);
    expect(gcKinds.length).toBeGreaterThan(0);
    for (const kind of gcKinds) expect(['minor', 'major', 'incremental', 'weakcb', 'other']).toContain(kind);
    expect(keep.length).toBe(2);

    // The next scrape keeps the earlier samples (cumulative), and adds new ones.
    await new Promise((r) => setTimeout(r, 60));
    const again = await scrape(m);
    expect(valueOf(again, 'bulwark_event_loop_delay_seconds_count', { worker: '0' })!).toBeGreaterThan(count);
  });
});
