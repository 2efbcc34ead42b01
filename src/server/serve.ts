import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import type { Server } from 'node:http';
import { ConfigError, formatIssues, redactConfig, type LoadedConfig } from '../config/load.js';
import type { BulwarkConfig } from '../config/schema.js';
import { Gateway } from '../gateway/gateway.js';
import { flushLogger, type Logger } from '../telemetry/logger.js';
import { createTelemetry, type Telemetry } from '../telemetry/index.js';
import { LimitsPrimaryHost } from '../limits/index.js';
import { createAuditLog, type AuditLog } from '../audit/index.js';
import { RevocationPrimaryHost, type RelayEvent, type RevocationList } from '../revocation/index.js';
import { createAdminServer, listenAdmin } from './admin.js';
import { loadWithOverrides, parseWithOverrides, watchConfig, type Overrides } from './config-source.js';

export interface ServeOptions extends Overrides {
  configFile: string;
  logger: Logger;
}

/** Messages between the primary and its workers. */
type ToWorker =
  | { type: 'config'; source: string; file: string; overrides: Overrides; trigger?: string }
  | { type: 'shutdown'; deadlineMs: number };
type ToPrimary =
  | { type: 'hello' }
  | { type: 'ready'; hash: string; ports: [string, number][] }
  | { type: 'reloaded'; hash: string }
  | { type: 'failed'; phase: 'start' | 'reload'; message: string };

/** How long the primary waits for each worker to apply a reload before counting it refused. */
const ROLLOUT_TIMEOUT_MS = 30_000;

export function workerCount(config: BulwarkConfig): number {
  return config.workers === 'auto' ? availableParallelism() : (config.workers ?? 1);
}

function describeFailure(err: unknown): { message: string; issues?: unknown } {
  if (err instanceof ConfigError) return { message: formatIssues(err.issues), issues: err.issues };
  return { message: err instanceof Error ? err.message : String(err) };
}

/**
 * V8 tuning for a process that serves traffic. Allocation-site pretenuring sees the objects a
 * request allocates survive a scavenge or two (config compilation at start, a burst of slow
 * requests) and then allocates them straight in old space; a dead old-space object still keeps
 * everything it points to alive through every scavenge until the next full GC, so whole request
 * graphs end up promoted. Measured on the pass-through route: 2.5 MB promoted per scavenge and
 * ~7 µs of GC per request with it, 0.2 MB and ~1.5 µs without; the bare Node proxy baseline never
 * trips it. Per-request objects here really do die young, so the heuristic only costs.
 */
function tuneV8ForServing(): void {
  setFlagsFromString('--no-allocation-site-pretenuring');
}

/** Entry point of `bulwark serve`: the primary (or only) process. Resolves when it has shut down. */
export async function serve(options: ServeOptions): Promise<number> {
  const { logger } = options;
  tuneV8ForServing();
  const overrides: Overrides = {
    port: options.port,
    adminPort: options.adminPort,
    ...(options.issuerOnly === true ? { issuerOnly: true } : {}),
  };
  let current: LoadedConfig;
  try {
    current = await loadWithOverrides(options.configFile, overrides);
  } catch (err) {
    const failure = describeFailure(err);
    logger.error({ issues: failure.issues }, 'invalid configuration, not starting');
    process.stderr.write(`bulwark: configuration refused\n${failure.message}\n`);
    return 1;
  }
  for (const warning of current.warnings) logger.warn({ warning }, 'configuration warning');
  const workers = workerCount(current.config);
  return workers > 1 ? runPrimary(options, overrides, current, workers) : runSingle(options, overrides, current);
}

async function runSingle(options: ServeOptions, overrides: Overrides, initial: LoadedConfig): Promise<number> {
  const { logger } = options;
  let current = initial;
  applied(initial);
  const telemetry = createTelemetry(current.config, { logger, role: 'single' });
  let audit: AuditLog | null = null;
  let gateway: Gateway;
  try {
    audit = current.config.audit === undefined ? null : await createAuditLog(current.config.audit, { logger });
    gateway = new Gateway({ logger, telemetry, audit });
    await gateway.start(current.config, current.hash);
  } catch (err) {
    logger.error({ err }, 'failed to start');
    await audit?.close();
    await telemetry.shutdown();
    return 1;
  }
  const admin = await startAdmin(
    () => current,
    () => !gateway.isDraining,
    1,
    logger,
    telemetry,
    () => {
      const list = gateway.current?.revocation ?? null;
      return list === null ? null : { list, token: current.config.revocation?.adminToken };
    },
  ).catch(() => null);
  if (admin === null) {
    // A port in use is an operator's mistake: a clean exit 1 with the reason logged, not a crash.
    await gateway.stop(0);
    await audit?.close();
    await telemetry.shutdown();
    return 1;
  }

  const reload = serialized(async (trigger: string) => {
    const next = await loadForReload(options, overrides, trigger, telemetry);
    if (next === null) return;
    // The same config: its TLS files may still have been renewed (SIGHUP after a renewal).
    if (next.hash === current.hash) {
      gateway.refreshTls(trigger);
      return;
    }
    try {
      await gateway.reload(next.config, next.hash);
      current = next;
      applied(next);
      await telemetry.reload(next.config);
      telemetry.metrics.configReload('ok');
      logger.info({ trigger, hash: next.hash }, 'configuration reloaded');
    } catch (err) {
      telemetry.metrics.configReload('failed');
      logger.error({ trigger, err }, 'reload failed, keeping the running configuration');
    }
  });
  const unwatch = watchConfig(options.configFile, () => void reload('file'));
  process.on('SIGHUP', () => void reload('SIGHUP'));
  // Announce only once reloads are wired, so nobody edits the file into a gap.
  announce(logger, current.config, gateway.ports(), admin.port);

  const signal = await shutdownSignal();
  unwatch();
  const deadline = current.config.shutdownTimeoutMs ?? 30_000;
  logger.info({ signal, deadline_ms: deadline }, 'draining');
  admin.server.close();
  admin.server.closeAllConnections();
  const clean = await gateway.stop(deadline);
  // After the gateway: every finished request has recorded its event; close seals the chain.
  await audit?.close();
  await telemetry.shutdown();
  logger.info({ clean }, 'stopped');
  return 0;
}

async function runPrimary(options: ServeOptions, overrides: Overrides, initial: LoadedConfig, count: number): Promise<number> {
  const { logger } = options;
  let current = initial;
  applied(initial);
  let shuttingDown = false;
  const ready = new Set<Worker>();
  const crashes: number[] = [];
  let announced = false;

  const send = (worker: Worker, message: ToWorker) => {
    if (worker.isConnected()) worker.send(message);
  };
  const configMessage = (trigger?: string): ToWorker => ({
    type: 'config',
    source: current.source,
    file: current.file,
    overrides,
    ...(trigger === undefined ? {} : { trigger }),
  });
  /** Workers whose answer to the config being rolled out is awaited. */
  const answers = new Map<Worker, (outcome: 'ok' | 'failed') => void>();
  /**
   * Sends the current config to every running worker; resolves with whether all of them applied
   * it (a worker that exits meanwhile is not waited for: it restarts on the current config).
   */
  const rollOut = async (trigger?: string): Promise<boolean> => {
    const message = configMessage(trigger);
    const outcomes = [...ready].map(
      (worker) =>
        new Promise<'ok' | 'failed'>((resolve) => {
          const timer = setTimeout(() => done('failed'), ROLLOUT_TIMEOUT_MS);
          const gone = () => done('ok');
          const done = (outcome: 'ok' | 'failed') => {
            clearTimeout(timer);
            worker.off('exit', gone);
            answers.delete(worker);
            resolve(outcome);
          };
          answers.set(worker, done);
          worker.once('exit', gone);
          send(worker, message);
        }),
    );
    return (await Promise.all(outcomes)).every((o) => o === 'ok');
  };

  // Memory rate-limit buckets live here, so N workers enforce the configured limit once, not N times.
  new LimitsPrimaryHost().attach(cluster);
  // The admin listener is ours, so the revocation API writes to a list held here, relayed to every worker.
  const revocations = new RevocationPrimaryHost({ onEvent: (event) => logRevocationEvent(logger, event) });
  revocations.attach(cluster);
  await revocations.configure(current.config.revocation);
  const fork = () => {
    const worker = cluster.fork({ BULWARK_WORKER: '1' });
    worker.on('message', (message: ToPrimary) => {
      switch (message.type) {
        case 'hello':
          send(worker, configMessage());
          break;
        case 'ready':
          ready.add(worker);
          if (!announced && ready.size === count) {
            announced = true;
            announce(logger, current.config, new Map(message.ports), admin?.port ?? null, count);
          }
          break;
        case 'reloaded':
          logger.info({ worker: worker.id, hash: message.hash }, 'worker reloaded');
          answers.get(worker)?.('ok');
          break;
        case 'failed':
          logger.error({ worker: worker.id, phase: message.phase, error: message.message }, 'worker refused configuration');
          answers.get(worker)?.('failed');
          break;
      }
    });
    return worker;
  };

  cluster.on('exit', (worker, code, signal) => {
    ready.delete(worker);
    if (shuttingDown) return;
    // A crash loop must not become a fork bomb: back off when workers keep dying.
    const now = Date.now();
    crashes.push(now);
    while (crashes.length > 0 && crashes[0]! < now - 10_000) crashes.shift();
    const delay = crashes.length > 5 ? Math.min(5_000, 250 * 2 ** (crashes.length - 5)) : 0;
    logger.error({ worker: worker.id, code, signal, restart_in_ms: delay }, 'worker exited, restarting');
    setTimeout(() => {
      if (!shuttingDown) fork();
    }, delay).unref();
  });

  const telemetry = createTelemetry(current.config, { logger, role: 'primary' });
  // What `/config` shows: the config every worker runs. `current` moves first (it is what the
  // rollout sends, and what restarted workers get); this one only once the rollout succeeded.
  let serving = current;
  const admin = await startAdmin(
    () => serving,
    () => !shuttingDown && ready.size === count,
    count,
    logger,
    telemetry,
    () => {
      const list = revocations.list;
      return list === null ? null : { list, token: current.config.revocation?.adminToken };
    },
  ).catch(() => null);
  if (admin === null) {
    await revocations.close();
    await telemetry.shutdown();
    return 1;
  }
  for (let i = 0; i < count; i++) fork();

  const reload = serialized(async (trigger: string) => {
    const next = await loadForReload(options, overrides, trigger, telemetry);
    if (next === null) return;
    // The same config: each worker re-reads its TLS files (renewed in place), nothing else changes.
    if (next.hash === current.hash) {
      await rollOut(trigger);
      return;
    }
    if (workerCount(next.config) !== count) logger.warn({}, 'a change of `workers` takes effect on restart');
    const previous = current;
    current = next;
    // Before the workers see the config: a worker whose list changes store says hello to the new list.
    await revocations.configure(next.config.revocation);
    if (await rollOut()) {
      serving = next;
      applied(next);
      telemetry.metrics.configReload('ok');
      void telemetry.reload(next.config);
      logger.info({ trigger, hash: next.hash }, 'configuration reloaded by every worker');
      return;
    }
    // All or nothing: the workers that applied it go back, and restarted workers get the old one too.
    telemetry.metrics.configReload('failed');
    logger.error({ trigger, hash: next.hash }, 'a worker refused the configuration: every worker keeps the running one');
    current = previous;
    await revocations.configure(previous.config.revocation);
    await rollOut();
  });
  const unwatch = watchConfig(options.configFile, () => void reload('file'));
  process.on('SIGHUP', () => void reload('SIGHUP'));

  const signal = await shutdownSignal();
  shuttingDown = true;
  unwatch();
  const deadline = current.config.shutdownTimeoutMs ?? 30_000;
  logger.info({ signal, deadline_ms: deadline }, 'draining workers');
  admin.server.close();
  admin.server.closeAllConnections();
  const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
  await Promise.all(
    workers.map(
      (worker) =>
        new Promise<void>((resolve) => {
          if (worker.isDead()) return resolve();
          const kill = setTimeout(() => worker.process.kill('SIGKILL'), deadline + 2_000);
          worker.once('exit', () => {
            clearTimeout(kill);
            resolve();
          });
          send(worker, { type: 'shutdown', deadlineMs: deadline });
        }),
    ),
  );
  await revocations.close();
  await telemetry.shutdown();
  logger.info({}, 'stopped');
  return 0;
}

// When each config took effect, for `/config`: a reload that failed or was rolled back leaves the running one's.
const appliedAt = new WeakMap<LoadedConfig, string>();
function applied(loaded: LoadedConfig): void {
  if (!appliedAt.has(loaded)) appliedAt.set(loaded, new Date().toISOString());
}

/** A cluster worker: takes its config from the primary (the text the primary validated), serves, reports. */
export async function runWorker(logger: Logger): Promise<void> {
  tuneV8ForServing();
  let telemetry: Telemetry | null = null;
  let gateway: Gateway | null = null;
  let audit: AuditLog | null = null;
  let started = false;
  let hash = '';
  const post = (message: ToPrimary) => {
    if (process.connected) process.send!(message);
  };
  // The primary orchestrates signals; a terminal's Ctrl-C reaches every process of the group.
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, () => {});
  const stop = async (deadlineMs: number) => {
    if (gateway !== null) await gateway.stop(deadlineMs);
    await audit?.close();
    await telemetry?.shutdown();
    await flushLogger(logger);
    process.exit(0);
  };
  process.on('disconnect', () => void stop(5_000));
  const apply = serialized(async (message: ToWorker) => {
    if (message.type === 'shutdown') return stop(message.deadlineMs);
    let loaded: LoadedConfig;
    try {
      loaded = parseWithOverrides(message.source, message.file, message.overrides);
    } catch (err) {
      post({ type: 'failed', phase: started ? 'reload' : 'start', message: describeFailure(err).message });
      if (!started) process.exit(1);
      return;
    }
    // Already running it (a rollback to the config this worker kept): say so, the primary waits for every answer.
    if (loaded.hash === hash) {
      if (started) {
        gateway!.refreshTls(message.trigger ?? 'reload');
        post({ type: 'reloaded', hash });
      }
      return;
    }
    try {
      if (gateway === null) {
        // Created on the first config: its buckets and switches come from that config.
        telemetry = createTelemetry(loaded.config, { logger, role: 'worker' });
        // One audit log (one chain, one WAL slot) per worker; its config is fixed until restart.
        audit = loaded.config.audit === undefined ? null : await createAuditLog(loaded.config.audit, { logger });
        gateway = new Gateway({ logger, telemetry, audit });
      }
      if (started) {
        await gateway.reload(loaded.config, loaded.hash);
        await telemetry!.reload(loaded.config);
      } else await gateway.start(loaded.config, loaded.hash);
    } catch (err) {
      post({ type: 'failed', phase: started ? 'reload' : 'start', message: describeFailure(err).message });
      if (!started) process.exit(1);
      return;
    }
    hash = loaded.hash;
    if (!started) {
      started = true;
      post({ type: 'ready', hash, ports: [...gateway.ports()] });
    } else post({ type: 'reloaded', hash });
  });
  // Other modules share this IPC channel (telemetry scrapes, limits); only our messages are handled here.
  process.on('message', (message: ToWorker) => {
    if (message !== null && typeof message === 'object' && (message.type === 'config' || message.type === 'shutdown'))
      void apply(message);
  });
  post({ type: 'hello' });
}

async function startAdmin(
  current: () => LoadedConfig,
  isReady: () => boolean,
  workers: number,
  logger: Logger,
  telemetry: Telemetry,
  revocation?: () => { list: RevocationList; token: string | undefined } | null,
): Promise<{ server: Server; port: number | null }> {
  const adminConfig = current().config.admin;
  const server = createAdminServer({
    ready: isReady,
    telemetry: () => telemetry.admin,
    ...(revocation === undefined ? {} : { revocation }),
    config: () => {
      const loaded = current();
      return {
        hash: loaded.hash,
        file: loaded.file,
        loadedAt: appliedAt.get(loaded) ?? new Date().toISOString(),
        workers,
        config: redactConfig(loaded.config),
      };
    },
  });
  if (adminConfig !== undefined && adminConfig.enabled === false) return { server, port: null };
  try {
    const port = await listenAdmin(server, adminConfig?.port ?? 9901, adminConfig?.address ?? '127.0.0.1');
    return { server, port };
  } catch (err) {
    logger.error({ err }, 'admin listener failed');
    throw err;
  }
}

function announce(
  logger: Logger,
  config: BulwarkConfig,
  ports: Map<string, number>,
  adminPort: number | null,
  workers = 1,
): void {
  const listeners = [...ports].map(([key, port]) => ({ key, port }));
  logger.info({ listeners, admin_port: adminPort, workers }, 'listening');
  const lines = [`bulwark: serving with ${workers} worker${workers === 1 ? '' : 's'}`];
  for (const { key, port } of listeners) {
    const scheme = key.startsWith('https') ? 'https' : 'http';
    const address = key.slice(key.indexOf('://') + 3, key.lastIndexOf(':'));
    const host = address === '0.0.0.0' || address === '::' ? '127.0.0.1' : address;
    lines.push(`  gateway  ${scheme}://${host}:${port}  (${key.split('://')[0]})`);
  }
  if (adminPort !== null)
    lines.push(`  admin    http://${config.admin?.address ?? '127.0.0.1'}:${adminPort}  (/healthz /readyz /config)`);
  const first = listeners[0];
  if (first !== undefined) {
    lines.push('  try:');
    for (const route of config.routes.slice(0, 5)) {
      const p = route.match.path;
      const sample =
        p === undefined ? '/' : 'exact' in p ? p.exact : 'prefix' in p ? p.prefix : p.glob.replace(/\{[^}]+\}|\*\*?/g, 'x');
      lines.push(`    curl -i http://127.0.0.1:${first.port}${sample}    # route ${route.id}`);
    }
  }
  process.stderr.write(lines.join('\n') + '\n');
}

function logRevocationEvent(logger: Logger, event: RelayEvent): void {
  if (event.type === 'relay_timeout') logger.warn({ detail: event.detail }, 'revocation change not acknowledged by every worker');
  else if (event.event.type === 'synced') logger.info({ detail: event.event.detail }, 'revocation store synced');
  else logger.warn({ event: event.event.type, detail: event.event.detail }, 'revocation store');
}

function shutdownSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (signal: string) => () => resolve(signal);
    process.once('SIGTERM', on('SIGTERM'));
    process.once('SIGINT', on('SIGINT'));
  });
}

/** Reads and validates the config for a reload; a refused one is logged and counted, and yields null. */
async function loadForReload(
  options: ServeOptions,
  overrides: Overrides,
  trigger: string,
  telemetry: Telemetry,
): Promise<LoadedConfig | null> {
  try {
    return await loadWithOverrides(options.configFile, overrides);
  } catch (err) {
    const failure = describeFailure(err);
    options.logger.error(
      { trigger, issues: failure.issues, error: failure.issues === undefined ? failure.message : undefined },
      'reload refused, keeping the running configuration',
    );
    telemetry.metrics.configReload('failed');
    return null;
  }
}

/** Runs calls one at a time, so two reloads never interleave. */
function serialized<A>(fn: (arg: A) => Promise<void>): (arg: A) => Promise<void> {
  let chain = Promise.resolve();
  return (arg: A) => (chain = chain.then(() => fn(arg)).catch(() => {}));
}

export function isWorkerProcess(): boolean {
  return cluster.isWorker && process.env['BULWARK_WORKER'] === '1';
}
