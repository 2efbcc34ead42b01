/**
 * Config problems as data. Codes are stable (tests, CI annotations and the CLI
 * key on them); messages are for humans and may change.
 */

export type IssueSeverity = 'error' | 'warning';

export interface ConfigIssue {
  file: string;
  /** 1-based; 0 when the problem is not inside the text (e.g. the file cannot be read). */
  line: number;
  /** 1-based; 0 together with `line`. */
  column: number;
  /** JSON-path-like: `routes[0].match.path.prefix`; '' for the document itself. */
  path: string;
  code: string;
  message: string;
  /** Absent means 'error'. */
  severity?: IssueSeverity;
}

export type PathSegment = string | number;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = 'ERR_CONFIG_INVALID';
  readonly issues: readonly ConfigIssue[];

  constructor(issues: readonly ConfigIssue[], options?: { cause?: unknown }) {
    const errors = issues.filter((i) => i.severity !== 'warning').length;
    const first = issues.find((i) => i.severity !== 'warning') ?? issues[0];
    const head = `invalid configuration: ${errors} error${errors === 1 ? '' : 's'}`;
    super(first ? `${head}\n${formatIssues(issues)}` : head, options);
    this.issues = Object.freeze([...issues]);
  }
}

export function isConfigError(value: unknown): value is ConfigError {
  return value instanceof ConfigError;
}

export function formatIssues(issues: readonly ConfigIssue[]): string {
  return issues
    .map(
      (i) =>
        `${i.file}:${i.line}:${i.column}: ${i.severity ?? 'error'} ${i.path === '' ? '(root)' : i.path}: ${i.message} (${i.code})`,
    )
    .join('\n');
}

export function sortIssues(issues: ConfigIssue[]): ConfigIssue[] {
  // Array.prototype.sort is stable, so issues on one position keep discovery order.
  return issues.sort((a, b) => a.line - b.line || a.column - b.column);
}

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$-]*$/;

export function formatPath(segments: readonly PathSegment[]): string {
  let out = '';
  for (const seg of segments) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (IDENT.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

/** Optimal string alignment distance (Levenshtein plus adjacent transpositions: `upsteram`). */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[][] = Array.from({ length: rows }, (_, i) =>
    Array.from({ length: cols }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  const at = (i: number, j: number): number => d[i]?.[j] ?? Number.POSITIVE_INFINITY;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, at(i - 2, j - 2) + 1);
      (d[i] as number[])[j] = v;
    }
  }
  return at(a.length, b.length);
}

/** The closest candidate, if it is close enough to be a plausible typo. */
export function closest(input: string, candidates: Iterable<string>): string | undefined {
  const lower = input.toLowerCase();
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of candidates) {
    if (candidate === input) continue;
    const distance = candidate.toLowerCase() === lower ? 0 : editDistance(lower, candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  const budget = Math.max(1, Math.min(3, Math.floor(input.length / 3)));
  return bestDistance <= budget ? best : undefined;
}

export function didYouMean(input: string, candidates: Iterable<string>): string {
  const suggestion = closest(input, candidates);
  return suggestion === undefined ? '' : ` (did you mean "${suggestion}"?)`;
}
