/**
 * Optional OTLP push of the same metrics `/metrics` serves, for stacks that
 * ingest OTLP only (`telemetry.metrics.otlp`).
 *
 * One source of truth: the prom-client registry. Its JSON form is mapped to
 * OTLP data points (counters → monotonic cumulative sums without the `_total`
 * suffix, gauges → gauges, histograms → explicit-bucket histograms) and
 * serialized by OpenTelemetry's own protobuf serializer, so we do not run a
 * second metrics SDK that would count everything twice.
 *
 * Dependencies: `@opentelemetry/otlp-transformer` (the serializer) and, for
 * types only, `@opentelemetry/sdk-metrics`; both are installed as dependencies
 * of `@opentelemetry/exporter-trace-otlp-proto` at the same versions.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { ValueType, type Attributes, type HrTime } from '@opentelemetry/api';
import { ProtobufMetricsSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import type { MetricData, ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import type { Logger } from './logger.js';
import type { ResolvedTelemetryConfig } from './schema.js';
import { VERSION } from './tracing.js';

const gzipAsync = promisify(gzip);

// sdk-metrics enums, as their numeric values: the types come from sdk-metrics, the code needs nothing from it.
const DATA_POINT_HISTOGRAM = 0;
const DATA_POINT_GAUGE = 2;
const DATA_POINT_SUM = 3;
const CUMULATIVE = 1;

interface PromValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}
interface PromMetric {
  name: string;
  help: string;
  type: string;
  values: PromValue[];
}

export interface OtlpMetricsOptions {
  serviceName: string;
  resourceAttributes: Readonly<Record<string, string>>;
  /** The metrics to push, as `registry.getMetricsAsJSON()` gives them (merged over workers on a primary). */
  collect(): Promise<unknown[]>;
  logger: Logger;
}

export interface OtlpMetricsPusher {
  /** Pushes once now (tests, shutdown). */
  push(): Promise<void>;
  /** Stops the timer after a last push. */
  stop(): Promise<void>;
}

function unitOf(name: string): string {
  if (name.endsWith('_seconds') || name.endsWith('_seconds_total')) return 's';
  if (name.endsWith('_bytes') || name.endsWith('_bytes_total')) return 'By';
  if (name.endsWith('_ratio')) return '1';
  return '';
}

function attributesOf(labels: Record<string, string | number>, skip?: string): Attributes {
  const out: Attributes = {};
  for (const key in labels) if (key !== skip) out[key] = String(labels[key]);
  return out;
}

function toHrTime(ms: number): HrTime {
  const seconds = Math.floor(ms / 1000);
  return [seconds, Math.round((ms - seconds * 1000) * 1e6)];
}

/** prom-client JSON → OTLP metric data (cumulative, from process start). */
export function toOtlpMetrics(metrics: readonly unknown[], startMs: number, nowMs: number): MetricData[] {
  const startTime = toHrTime(startMs);
  const endTime = toHrTime(nowMs);
  const out: MetricData[] = [];
  for (const raw of metrics as PromMetric[]) {
    const unit = unitOf(raw.name);
    switch (raw.type) {
      case 'counter':
        out.push({
          descriptor: { name: raw.name.replace(/_total$/, ''), description: raw.help, unit, valueType: ValueType.DOUBLE },
          aggregationTemporality: CUMULATIVE,
          dataPointType: DATA_POINT_SUM,
          isMonotonic: true,
          dataPoints: raw.values.map((v) => ({ startTime, endTime, attributes: attributesOf(v.labels), value: v.value })),
        } as MetricData);
        break;
      case 'gauge':
        out.push({
          descriptor: { name: raw.name, description: raw.help, unit, valueType: ValueType.DOUBLE },
          aggregationTemporality: CUMULATIVE,
          dataPointType: DATA_POINT_GAUGE,
          dataPoints: raw.values.map((v) => ({ startTime, endTime, attributes: attributesOf(v.labels), value: v.value })),
        } as MetricData);
        break;
      case 'histogram':
        out.push({
          descriptor: { name: raw.name, description: raw.help, unit, valueType: ValueType.DOUBLE },
          aggregationTemporality: CUMULATIVE,
          dataPointType: DATA_POINT_HISTOGRAM,
          dataPoints: histogramPoints(raw, startTime, endTime),
        } as MetricData);
        break;
      // Summaries have no OTLP cumulative equivalent worth sending; Bulwark defines none.
    }
  }
  return out;
}

function histogramPoints(metric: PromMetric, startTime: HrTime, endTime: HrTime) {
  // One series per label set (without `le`): cumulative buckets, sum and count.
  const series = new Map<
    string,
    { attributes: Attributes; bounds: number[]; cumulative: number[]; sum: number; count: number }
  >();
  const seriesOf = (labels: Record<string, string | number>) => {
    const attributes = attributesOf(labels, 'le');
    const key = JSON.stringify(Object.entries(attributes).sort(([a], [b]) => (a < b ? -1 : 1)));
    let s = series.get(key);
    if (s === undefined) series.set(key, (s = { attributes, bounds: [], cumulative: [], sum: 0, count: 0 }));
    return s;
  };
  for (const v of metric.values) {
    const name = v.metricName ?? metric.name;
    const s = seriesOf(v.labels);
    if (name.endsWith('_bucket')) {
      const le = v.labels['le'];
      if (le === '+Inf') continue;
      s.bounds.push(Number(le));
      s.cumulative.push(v.value);
    } else if (name.endsWith('_sum')) s.sum = v.value;
    else if (name.endsWith('_count')) s.count = v.value;
  }
  return [...series.values()].map((s) => {
    const order = s.bounds.map((_, i) => i).sort((a, b) => s.bounds[a]! - s.bounds[b]!);
    const boundaries = order.map((i) => s.bounds[i]!);
    const cumulative = order.map((i) => s.cumulative[i]!);
    // OTLP counts are per bucket, with one more (the overflow) than boundaries.
    const counts = cumulative.map((c, i) => c - (i === 0 ? 0 : cumulative[i - 1]!));
    counts.push(Math.max(0, s.count - (cumulative.length === 0 ? 0 : cumulative[cumulative.length - 1]!)));
    return {
      startTime,
      endTime,
      attributes: s.attributes,
      value: { buckets: { boundaries, counts }, sum: s.sum, count: s.count },
    };
  });
}

export function startOtlpMetrics(
  config: NonNullable<ResolvedTelemetryConfig['metrics']['otlp']>,
  options: OtlpMetricsOptions,
): OtlpMetricsPusher {
  const resource = resourceFromAttributes({
    ...options.resourceAttributes,
    [ATTR_SERVICE_NAME]: options.serviceName,
    [ATTR_SERVICE_VERSION]: VERSION,
  });
  const startMs = Date.now() - process.uptime() * 1000;
  const url = new URL(config.endpoint);
  let lastWarning = 0;
  let inFlight: Promise<void> | null = null;

  const pushOnce = async (): Promise<void> => {
    const metrics = toOtlpMetrics(await options.collect(), startMs, Date.now());
    const request: ResourceMetrics = { resource, scopeMetrics: [{ scope: { name: 'bulwark', version: VERSION }, metrics }] };
    const serialized = ProtobufMetricsSerializer.serializeRequest(request);
    if (serialized === undefined) throw new Error('metrics serialization failed');
    const body = config.compression === 'gzip' ? await gzipAsync(serialized) : Buffer.from(serialized);
    await post(url, body, config, config.timeoutMs);
  };

  const push = (): Promise<void> => {
    // Never two pushes at once: a slow collector must not pile requests up.
    if (inFlight !== null) return inFlight;
    inFlight = pushOnce()
      .catch((err: unknown) => {
        const now = Date.now();
        if (now - lastWarning > 60_000) {
          lastWarning = now;
          options.logger.warn(
            { error: err instanceof Error ? err.message : String(err), endpoint: url.origin },
            'metrics export failed',
          );
        }
      })
      .finally(() => {
        inFlight = null;
      });
    return inFlight;
  };

  const timer = setInterval(() => void push(), config.intervalMs);
  timer.unref();
  return {
    push,
    async stop() {
      clearInterval(timer);
      await push();
    },
  };
}

function post(
  url: URL,
  body: Buffer,
  config: { headers: Readonly<Record<string, string>>; compression: 'none' | 'gzip' },
  timeoutMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = {
      ...config.headers,
      'content-type': 'application/x-protobuf',
      'content-length': body.length,
      'user-agent': `bulwark/${VERSION}`,
    };
    if (config.compression === 'gzip') headers['content-encoding'] = 'gzip';
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
      url,
      { method: 'POST', headers, timeout: timeoutMs },
      (res) => {
        res.resume();
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve();
          else reject(new Error(`collector answered ${status}`));
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}
