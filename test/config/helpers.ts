import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, parseConfig, type ConfigIssue, type ParseOptions } from '../../src/config/load.js';

export const FIXTURES = fileURLToPath(new URL('../fixtures/config/', import.meta.url));
export const fixture = (name: string): string => join(FIXTURES, name);

/** A small valid config, one line per entry so tests can splice lines in. */
export const BASE = [
  'version: 1',
  'listeners:',
  '  - port: 8080',
  'upstreams:',
  '  app:',
  '    endpoints: [http://127.0.0.1:3000]',
  'routes:',
  '  - id: api',
  '    match:',
  '      path: { prefix: /api }',
  '    upstream: app',
  '    auth: { public: true }',
];

export const yaml = (...lines: string[]): string => `${lines.join('\n')}\n`;

/** 1-based line of the first line containing `needle` (occurrence `nth`, 1-based). */
export function lineOf(source: string, needle: string, nth = 1): number {
  let seen = 0;
  const lines = source.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if ((lines[i] as string).includes(needle) && ++seen === nth) return i + 1;
  }
  throw new Error(`"${needle}" not in source`);
}

/** Parses expecting failure; returns the issues. File name defaults to one inside the fixtures dir. */
export function issuesOf(source: string, options: ParseOptions = {}, file = fixture('inline.yaml')): ConfigIssue[] {
  try {
    parseConfig(source, file, { env: {}, ...options });
  } catch (error) {
    if (error instanceof ConfigError) return [...error.issues];
    throw error;
  }
  throw new Error('expected a ConfigError');
}

export function pick(issues: readonly ConfigIssue[]): { code: string; path: string; line: number }[] {
  return issues.map(({ code, path, line }) => ({ code, path, line }));
}
