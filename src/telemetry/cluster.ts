/**
 * Telemetry over the cluster IPC channel: the primary (which owns the admin
 * listener) asks workers for their metrics and for profiles.
 *
 * Why not prom-client's `AggregatorRegistry.clusterMetrics()`: it fails the
 * whole scrape after 5 s when one worker does not answer (one that is still
 * starting, or wedged), it leaves out the primary's own registry (config
 * reloads are counted there), and it aggregates a module-global list of
 * registries. We keep its merge (`AggregatorRegistry.aggregate`, a pure
 * function) and do the exchange ourselves: a per-scrape deadline, whatever
 * answered in time, and a gauge saying how many workers did not.
 *
 * Wire format: every message carries `bulwarkTelemetry: 1` (like the limits
 * protocol's `bulwarkLimits: 1`); the primary's and workers' own handlers
 * must skip messages for which `isTelemetryMessage` is true. prom-client's own
 * messages (`type: 'prom-client:getMetricsReq'`) are never sent: we never call
 * `clusterMetrics()`.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type Registry } from 'prom-client';

export type TelemetryOp = 'metrics' | 'cpu_profile' | 'heap_snapshot';

export interface TelemetryRequestMessage {
  readonly bulwarkTelemetry: 1;
  readonly id: number;
  readonly op: TelemetryOp;
  readonly seconds?: number;
}

export interface TelemetryReplyMessage {
  readonly bulwarkTelemetry: 1;
  readonly id: number;
  readonly ok: boolean;
  /** `metrics`: the worker's `registry.getMetricsAsJSON()`. */
  readonly metrics?: unknown[];
  /** Profiles: a file the worker wrote (0600, in a private temp dir); the primary streams then deletes it. */
  readonly file?: string;
  readonly error?: string;
  readonly busy?: boolean;
}

export type TelemetryMessage = TelemetryRequestMessage | TelemetryReplyMessage;

export function isTelemetryMessage(message: unknown): message is TelemetryMessage {
  return typeof message === 'object' && message !== null && (message as { bulwarkTelemetry?: unknown }).bulwarkTelemetry === 1;
}

/** What a worker does for the primary. */
export interface WorkerTelemetryHandlers {
  metrics(): Promise<unknown[]>;
  cpuProfileFile(seconds: number): Promise<string>;
  heapSnapshotFile(): Promise<string>;
}

/** A failure the primary should pass on as 409 rather than 500. */
export class BusyError extends Error {
  readonly code = 'BULWARK_PROFILER_BUSY';
}

/** Worker side: answers the primary's telemetry requests. Returns the unsubscribe function. */
export function answerPrimary(handlers: WorkerTelemetryHandlers): () => void {
  const reply = (message: TelemetryReplyMessage) => {
    if (process.connected && process.send !== undefined) process.send(message);
  };
  const onMessage = (message: unknown) => {
    if (!isTelemetryMessage(message) || !('op' in message)) return;
    const { id } = message;
    let work: Promise<Partial<TelemetryReplyMessage>>;
    switch (message.op) {
      case 'metrics':
        work = handlers.metrics().then((metrics) => ({ metrics }));
        break;
      case 'cpu_profile':
        work = handlers.cpuProfileFile(message.seconds ?? 1).then((file) => ({ file }));
        break;
      case 'heap_snapshot':
        work = handlers.heapSnapshotFile().then((file) => ({ file }));
        break;
      default:
        work = Promise.reject(new Error(`unknown telemetry op ${String((message as { op?: unknown }).op)}`));
    }
    work.then(
      (result) => reply({ bulwarkTelemetry: 1, id, ok: true, ...result }),
      (err: unknown) =>
        reply({
          bulwarkTelemetry: 1,
          id,
          ok: false,
          error: err instanceof Error ? err.message : String(err),
          busy: err instanceof BusyError,
        }),
    );
  };
  process.on('message', onMessage);
  return () => process.off('message', onMessage);
}

interface Pending {
  resolve(reply: TelemetryReplyMessage): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** Primary side: request/response over each worker's channel, with a deadline per request. */
export class WorkerRequests {
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  /** Each worker's cumulative series (see `cumulativeSeries`) as it last reported them, by worker id. */
  readonly lastCumulative = new Map<number, unknown[]>();
  /** The cumulative series of workers that are gone, summed: what they counted stays in the instance's totals. */
  retired: unknown[] = [];
  private readonly onMessage = (_worker: Worker, message: unknown) => {
    if (!isTelemetryMessage(message) || 'op' in message) return;
    const pending = this.pending.get(message.id);
    if (pending === undefined) return; // answered after its deadline: nobody waits any more
    this.pending.delete(message.id);
    clearTimeout(pending.timer);
    pending.resolve(message);
  };

  constructor() {
    cluster.on('message', this.onMessage);
  }

  /** Connected workers, lowest id first. */
  workers(): Worker[] {
    return Object.values(cluster.workers ?? {})
      .filter((w): w is Worker => w !== undefined && w.isConnected())
      .sort((a, b) => a.id - b.id);
  }

  ask(worker: Worker, op: TelemetryOp, timeoutMs: number, seconds?: number): Promise<TelemetryReplyMessage> {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`worker ${worker.id} did not answer ${op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      const message: TelemetryRequestMessage =
        seconds === undefined ? { bulwarkTelemetry: 1, id, op } : { bulwarkTelemetry: 1, id, op, seconds };
      try {
        worker.send(message);
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  close(): void {
    cluster.off('message', this.onMessage);
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(new Error('closed'));
      this.pending.delete(id);
    }
  }
}

interface MetricJson {
  type?: string;
  values?: { labels?: Record<string, unknown> }[];
}

/**
 * The series of a worker's metrics that only ever grow — counters and histograms, without a
 * `worker` label (those are per-process health, gone with the process). A scrape keeps them
 * when their worker is missing or has exited: were they dropped, the instance's totals would
 * go down, which Prometheus reads as a counter reset and `rate()` as a burst of everything
 * the other workers had counted.
 */
function cumulativeSeries(metrics: unknown[]): unknown[] {
  const out: unknown[] = [];
  for (const metric of metrics as MetricJson[]) {
    if (metric.type !== 'counter' && metric.type !== 'histogram') continue;
    const values = (metric.values ?? []).filter((v) => v.labels?.['worker'] === undefined);
    if (values.length > 0) out.push({ ...metric, values });
  }
  return out;
}

/**
 * The whole instance's metrics: the primary's registry plus every worker that
 * answers within `timeoutMs`, merged by prom-client's aggregators (counters and
 * histograms summed, series with a `worker` label kept apart). A worker that does
 * not answer, or has exited since it last did, contributes the cumulative series
 * it last reported, so instance totals never decrease.
 */
export async function clusterRegistry(local: Registry, requests: WorkerRequests, timeoutMs: number): Promise<Registry> {
  const workers = requests.workers();
  const [own, ...answers] = await Promise.all([
    local.getMetricsAsJSON(),
    ...workers.map((w) =>
      requests.ask(w, 'metrics', timeoutMs).then(
        (reply) => (reply.ok && Array.isArray(reply.metrics) ? reply.metrics : null),
        () => null,
      ),
    ),
  ]);
  const reporting: unknown[][] = [];
  const carried: unknown[][] = [];
  workers.forEach((worker, i) => {
    const answer = answers[i];
    if (answer !== null && answer !== undefined) {
      reporting.push(answer);
      requests.lastCumulative.set(worker.id, cumulativeSeries(answer));
    } else {
      const last = requests.lastCumulative.get(worker.id);
      if (last !== undefined) carried.push(last);
    }
  });
  const live = new Set(workers.map((w) => w.id));
  for (const [id, last] of requests.lastCumulative) {
    if (live.has(id)) continue;
    requests.lastCumulative.delete(id);
    requests.retired = await AggregatorRegistry.aggregate([requests.retired, last]).getMetricsAsJSON();
  }
  const health = {
    name: 'bulwark_cluster_workers',
    help: 'Workers in this scrape: `reporting` answered in time, `missing` did not (their series are absent from this scrape).',
    type: 'gauge',
    aggregator: 'sum',
    values: [
      { labels: { state: 'reporting' }, value: reporting.length },
      { labels: { state: 'missing' }, value: workers.length - reporting.length },
    ],
  };
  return AggregatorRegistry.aggregate([own as unknown[], ...reporting, ...carried, requests.retired, [health]]);
}

/** `clusterRegistry` in the Prometheus text format. */
export async function clusterMetrics(local: Registry, requests: WorkerRequests, timeoutMs: number): Promise<string> {
  return (await clusterRegistry(local, requests, timeoutMs)).metrics();
}
