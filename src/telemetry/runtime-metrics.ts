/**
 * Runtime health, the Node counterpart of Go's pprof-side metrics: event-loop
 * delay (a real, aggregatable histogram), event-loop utilization, GC pauses by
 * kind, heap used against its limit.
 *
 * Per-process signals carry a `worker` label: summed over workers they would
 * hide the one worker that is stuck or close to its heap limit. GC pauses are
 * a histogram, which sums meaningfully, so they carry none.
 *
 * Everything is read at scrape time or pushed by V8 (GC entries); nothing runs
 * per request.
 */
import {
  constants,
  monitorEventLoopDelay,
  performance,
  PerformanceObserver,
  type EventLoopUtilization,
  type IntervalHistogram,
} from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** Sampling interval of the event-loop delay monitor: each sample's value includes it, and we subtract it. */
const RESOLUTION_MS = 10;
const DELAY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const GC_BUCKETS = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

function gcKind(kind: number | undefined): string {
  switch (kind) {
    case constants.NODE_PERFORMANCE_GC_MINOR:
      return 'minor';
    case constants.NODE_PERFORMANCE_GC_MAJOR:
      return 'major';
    case constants.NODE_PERFORMANCE_GC_INCREMENTAL:
      return 'incremental';
    case constants.NODE_PERFORMANCE_GC_WEAKCB:
      return 'weakcb';
    default:
      return 'other';
  }
}

interface SampleValue {
  labels: Record<string, string | number>;
  value: number;
  metricName: string;
}

/**
 * `perf_hooks.monitorEventLoopDelay` keeps an HDR histogram we can only query
 * by percentile. At each scrape its samples are folded into cumulative
 * Prometheus buckets (a binary search over percentiles per bound), then it is
 * reset, so the exported histogram is cumulative and sums across workers.
 */
class EventLoopDelayHistogram {
  readonly name = 'bulwark_event_loop_delay_seconds';
  readonly help = 'Event-loop delay: how late timers fire, sampled every 10 ms, by worker.';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly monitor: IntervalHistogram;
  private readonly counts: number[];
  private sum = 0;
  private count = 0;
  private readonly worker: string;

  constructor(worker: string) {
    this.worker = worker;
    this.counts = DELAY_BUCKETS.map(() => 0);
    this.monitor = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    this.monitor.enable();
  }

  private drain(): void {
    const h = this.monitor;
    const n = h.count;
    if (n === 0) return;
    const offsetNs = RESOLUTION_MS * 1e6;
    for (let i = 0; i < DELAY_BUCKETS.length; i++) {
      this.counts[i]! += Math.round(n * fractionAtMost(h, DELAY_BUCKETS[i]! * 1e9 + offsetNs));
    }
    this.sum += (Math.max(0, h.mean - offsetNs) * n) / 1e9;
    this.count += n;
    h.reset();
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: SampleValue[] } {
    this.drain();
    const worker = this.worker;
    const bucket = `${this.name}_bucket`;
    const values: SampleValue[] = DELAY_BUCKETS.map((le, i) => ({
      labels: { le, worker },
      value: this.counts[i]!,
      metricName: bucket,
    }));
    values.push({ labels: { le: '+Inf', worker }, value: this.count, metricName: bucket });
    values.push({ labels: { worker }, value: this.sum, metricName: `${this.name}_sum` });
    values.push({ labels: { worker }, value: this.count, metricName: `${this.name}_count` });
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** prom-client's `registry.resetMetrics()` calls this on every registered metric. */
  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
    this.monitor.reset();
  }

  close(): void {
    this.monitor.disable();
  }
}

/** The share of samples ≤ `valueNs`, to within 0.01 percentile. */
function fractionAtMost(h: IntervalHistogram, valueNs: number): number {
  if (h.max <= valueNs) return 1;
  if (h.min > valueNs) return 0;
  let lo = 0;
  let hi = 100;
  while (hi - lo > 0.01) {
    const mid = (lo + hi) / 2;
    if (h.percentile(mid) <= valueNs) lo = mid;
    else hi = mid;
  }
  return lo / 100;
}

export class RuntimeMetrics {
  private readonly delay: EventLoopDelayHistogram;
  private readonly gcObserver: PerformanceObserver;

  constructor(registry: Registry, worker: string) {
    const registers = [registry];
    this.delay = new EventLoopDelayHistogram(worker);
    // prom-client accepts any object with name/get(); this one computes its buckets at scrape time.
    registry.registerMetric(this.delay as unknown as Histogram<string>);

    let lastElu: EventLoopUtilization = performance.eventLoopUtilization();
    new Gauge({
      name: 'bulwark_event_loop_utilization_ratio',
      help: 'Share of time the event loop was busy since the previous scrape (0 to 1), by worker.',
      labelNames: ['worker'],
      registers,
      collect(this: Gauge<string>) {
        const now = performance.eventLoopUtilization();
        this.labels(worker).set(performance.eventLoopUtilization(now, lastElu).utilization);
        lastElu = now;
      },
    });
    new Counter({
      name: 'bulwark_event_loop_active_seconds_total',
      help: 'Time the event loop spent busy since start, by worker; rate() of it is the utilization, whoever scrapes.',
      labelNames: ['worker'],
      registers,
      collect(this: Counter<string>) {
        const active = performance.eventLoopUtilization().active / 1000;
        this.reset();
        this.labels(worker).inc(active);
      },
    });
    new Gauge({
      name: 'bulwark_heap_used_bytes',
      help: 'V8 heap in use, by worker.',
      labelNames: ['worker'],
      registers,
      collect(this: Gauge<string>) {
        this.labels(worker).set(getHeapStatistics().used_heap_size);
      },
    });
    new Gauge({
      name: 'bulwark_heap_limit_bytes',
      help: 'V8 heap size limit (the process dies with an OOM past it), by worker.',
      labelNames: ['worker'],
      registers,
      collect(this: Gauge<string>) {
        this.labels(worker).set(getHeapStatistics().heap_size_limit);
      },
    });
    const gc = new Histogram({
      name: 'bulwark_gc_pause_seconds',
      help: 'Garbage-collection pauses by kind (minor, major, incremental, weakcb).',
      labelNames: ['kind'],
      buckets: GC_BUCKETS,
      registers,
    });
    const children = new Map<string, Histogram.Internal<string>>();
    this.gcObserver = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        const kind = gcKind((entry as { detail?: { kind?: number } | null }).detail?.kind);
        let child = children.get(kind);
        if (child === undefined) children.set(kind, (child = gc.labels(kind)));
        child.observe(entry.duration / 1000);
      }
    });
    this.gcObserver.observe({ entryTypes: ['gc'] });
  }

  close(): void {
    this.delay.close();
    this.gcObserver.disconnect();
  }
}
