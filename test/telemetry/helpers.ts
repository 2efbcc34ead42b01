import { Writable } from 'node:stream';
import { RequestContext, type DecisionRecord, type Identity } from '../../src/core/context.js';
import { createLogger, type Logger } from '../../src/telemetry/logger.js';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;

/** A strict reader of the Prometheus text format (0.0.4): throws on any line it does not understand. */
export function parsePrometheus(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  let current: Family | null = null;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# HELP ')) {
      const rest = line.slice(7);
      const space = rest.indexOf(' ');
      const name = rest.slice(0, space);
      current = { name, type: 'untyped', help: rest.slice(space + 1), samples: [] };
      families.set(name, current);
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const [name, type] = line.slice(7).split(' ');
      if (current === null || current.name !== name) throw new Error(`TYPE without HELP: ${line}`);
      current.type = type!;
      continue;
    }
    const m = SAMPLE.exec(line);
    if (m === null) throw new Error(`unparsable line: ${line}`);
    const [, name, labelText, value] = m;
    if (current === null || !name!.startsWith(current.name)) throw new Error(`sample outside its family: ${line}`);
    current.samples.push({
      name: name!,
      labels: parseLabels(labelText ?? ''),
      value: value === '+Inf' ? Infinity : Number(value),
    });
  }
  return families;
}

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('=', i);
    const key = text.slice(i, eq);
    if (text[eq + 1] !== '"') throw new Error(`bad labels: ${text}`);
    let j = eq + 2;
    let value = '';
    while (text[j] !== '"') {
      if (text[j] === '\\') {
        const next = text[j + 1];
        value += next === 'n' ? '\n' : next;
        j += 2;
      } else value += text[j++];
    }
    labels[key] = value;
    i = j + 1;
    if (text[i] === ',') i++;
  }
  return labels;
}

/** The value of the one sample named `name` whose labels include `labels`; undefined when none. */
export function valueOf(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const family of families.values()) {
    for (const s of family.samples) {
      if (s.name !== name) continue;
      if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) return s.value;
    }
  }
  return undefined;
}

export function samplesOf(families: Map<string, Family>, name: string): Sample[] {
  const out: Sample[] = [];
  for (const family of families.values()) for (const s of family.samples) if (s.name === name) out.push(s);
  return out;
}

export function makeContext(
  init: Partial<{
    method: string;
    path: string;
    headers: Record<string, string>;
    route: string | null;
    identity: Identity | null;
    decisions: DecisionRecord[];
    protocol: 'http/1.1' | 'h2' | 'h2c' | 'http/1.0';
    requestId: string;
    host: string;
  }> = {},
): RequestContext {
  const ctx = new RequestContext({
    method: init.method ?? 'GET',
    rawTarget: init.path ?? '/',
    headers: init.headers ?? {},
    peerAddress: '203.0.113.9',
    peerPort: 54321,
    protocol: init.protocol ?? 'http/1.1',
    secure: false,
    requestId: init.requestId ?? 'req-1',
  });
  ctx.path = init.path ?? '/';
  ctx.host = init.host ?? 'api.example.com';
  ctx.route = init.route === undefined ? { id: 'r1', params: {} } : init.route === null ? null : { id: init.route, params: {} };
  ctx.identity = init.identity ?? null;
  for (const d of init.decisions ?? []) ctx.decisions.push(d);
  return ctx;
}

/** A logger whose JSON lines are collected in memory. */
export function captureLogger(level = 'info'): { logger: Logger; lines: () => Record<string, unknown>[]; text: () => string } {
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  const logger = createLogger({ level, destination });
  const text = () => chunks.join('');
  return {
    logger,
    text,
    lines: () =>
      text()
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}
