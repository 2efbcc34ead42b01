/** Builds sinks from config: one place that knows every sink kind (adding one touches only this file and its own). */
import { AUDIT_DEFAULTS, sinkIdentity, type SinkConfig } from '../schema.js';
import { FileSink } from './file.js';
import { PostgresSink } from './postgres.js';
import type { AuditSink } from './sink.js';
import { SqliteSink } from './sqlite.js';
import { StdoutSink } from './stdout.js';
import { WebhookSink } from './webhook.js';

export interface SinkContext {
  /** The WAL slot of this process, substituted for `{slot}` in file paths. */
  slot: number;
  /** Durable mode: sinks make each batch durable before acknowledging it. */
  durable: boolean;
  software: string;
}

export function slotPath(path: string, slot: number): string {
  return path.replaceAll('{slot}', String(slot));
}

export function createSink(config: SinkConfig, context: SinkContext): AuditSink {
  if ('file' in config) {
    const c = config.file;
    return new FileSink({
      path: slotPath(c.path, context.slot),
      rotateBytes: c.rotateBytes ?? AUDIT_DEFAULTS.file.rotateBytes,
      rotateIntervalMs: c.rotateIntervalMs ?? AUDIT_DEFAULTS.file.rotateIntervalMs,
      batchSize: c.batchSize ?? AUDIT_DEFAULTS.file.batchSize,
      sync: context.durable,
    });
  }
  if ('sqlite' in config) {
    const c = config.sqlite;
    return new SqliteSink({
      path: slotPath(c.path, context.slot),
      table: c.table ?? AUDIT_DEFAULTS.sqlite.table,
      batchSize: c.batchSize ?? AUDIT_DEFAULTS.sqlite.batchSize,
      sync: context.durable,
    });
  }
  if ('postgres' in config) {
    const c = config.postgres;
    return new PostgresSink({
      url: c.url,
      table: c.table ?? AUDIT_DEFAULTS.postgres.table,
      poolSize: c.poolSize ?? AUDIT_DEFAULTS.postgres.poolSize,
      batchSize: c.batchSize ?? AUDIT_DEFAULTS.postgres.batchSize,
      label: sinkIdentity(config).slice('postgres:'.length),
    });
  }
  if ('webhook' in config) {
    const c = config.webhook;
    return new WebhookSink({
      url: c.url,
      batchSize: c.batchSize ?? AUDIT_DEFAULTS.webhook.batchSize,
      timeoutMs: c.timeoutMs ?? AUDIT_DEFAULTS.webhook.timeoutMs,
      headers: c.headers ?? {},
      hmacSecret: c.hmacSecret,
      userAgent: context.software,
    });
  }
  return new StdoutSink();
}
