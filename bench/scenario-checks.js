// Helpers for scenarios' beforeStop/afterStop checks: did the gateway under load
// actually do what the scenario switched on (limit, audit, trace)? Kept outside
// bench/scenarios/ (every file there is loaded as a scenario).
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';

/** GET a URL on 127.0.0.1; resolves with { status, body } (the whole body as text). */
export function getText(port, reqPath, timeoutMs = 5_000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: reqPath, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${reqPath}: timeout`)));
    req.on('error', reject);
  });
}

/** The gateway's Prometheus text from its admin listener (GET /metrics). */
export async function scrapeMetrics(adminPort) {
  const { status, body } = await getText(adminPort, '/metrics');
  if (status !== 200) throw new Error(`GET /metrics answered ${status}`);
  return body;
}

/**
 * Sum of the samples of `name` (exact metric name, no _bucket/_sum suffix games) whose labels include every
 * `labels` pair; null when there is no such sample.
 */
export function metricSum(text, name, labels = {}) {
  let sum = null;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    const close = rest[0] === '{' ? rest.indexOf('}') : -1;
    const labelText = close > 0 ? rest.slice(1, close) : '';
    const have = Object.fromEntries([...labelText.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (!Object.entries(labels).every(([k, v]) => have[k] === v)) continue;
    const value = Number(
      rest
        .slice(close + 1)
        .trim()
        .split(/\s+/)[0],
    );
    if (Number.isFinite(value)) sum = (sum ?? 0) + value;
  }
  return sum;
}

/** Lines of every file in `dir` whose name passes `filter`, with `perLine(line)` called on each; { files, lines, bytes }. */
export async function scanLines(dir, filter, perLine = () => {}) {
  let files = 0;
  let lines = 0;
  let bytes = 0;
  for (const name of (await readdir(dir)).filter(filter).sort()) {
    files++;
    const stream = createReadStream(path.join(dir, name));
    stream.on('data', (chunk) => (bytes += chunk.length));
    for await (const line of readline.createInterface({ input: stream, crlfDelay: Infinity })) {
      if (line === '') continue;
      lines++;
      perLine(line);
    }
  }
  return { files, lines, bytes };
}

export const fmt = (n) => (n === null || n === undefined ? '-' : Math.round(n).toLocaleString('en-US'));
export const pct = (x, digits = 2) => `${(x * 100).toFixed(digits)}%`;
