/**
 * `${VAR}` / `${VAR:-default}` substitution, applied to parsed scalar values
 * (never to the raw text): a variable's value can only ever become one scalar,
 * so `FOO="a\nb: c"` cannot inject YAML structure.
 */
import { isPair, isScalar, isSeq, visit, type Document, type Scalar } from 'yaml';
import type { PathSegment } from './issues.js';

export interface EnvProblem {
  code: 'config.env_unset' | 'config.env_syntax';
  message: string;
}

export interface ExpandResult {
  value: string;
  problems: EnvProblem[];
}

const REFERENCE = /^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$/s;
/** A plain scalar that is nothing but one reference is re-typed after substitution. */
const WHOLE_REFERENCE = /^\$\{[^{}]*\}$/;

export function expandEnv(text: string, env: NodeJS.ProcessEnv): ExpandResult {
  const problems: EnvProblem[] = [];
  let value = '';
  let i = 0;
  while (i < text.length) {
    if (text.startsWith('$${', i)) {
      value += '${';
      i += 3;
      continue;
    }
    if (!text.startsWith('${', i)) {
      value += text[i];
      i += 1;
      continue;
    }
    const close = text.indexOf('}', i + 2);
    if (close < 0) {
      problems.push({ code: 'config.env_syntax', message: `unterminated "\${" (write "$\${" for a literal "\${")` });
      value += text.slice(i);
      break;
    }
    const inner = text.slice(i + 2, close);
    const m = REFERENCE.exec(inner);
    if (!m || m[2]?.includes('${')) {
      problems.push({
        code: 'config.env_syntax',
        message: `malformed variable reference "\${${inner}}": expected \${NAME} or \${NAME:-default}, NAME matching [A-Za-z_][A-Za-z0-9_]* (defaults cannot nest)`,
      });
      value += text.slice(i, close + 1);
    } else {
      const name = m[1] as string;
      const fallback = m[2];
      const current = env[name];
      // Shell semantics: `:-` also replaces a variable that is set but empty.
      if (current !== undefined && (current !== '' || fallback === undefined)) value += current;
      else if (fallback !== undefined) value += fallback;
      else
        problems.push({
          code: 'config.env_unset',
          message: `environment variable ${name} is not set (use \${${name}:-default} to give a default)`,
        });
    }
    i = close + 1;
  }
  return { value, problems };
}

/** Type a substituted plain scalar the way YAML would have typed it in place (core schema). */
function retype(doc: Document, value: string): unknown {
  // An empty plain scalar would read as null; an empty variable most likely means "empty string".
  if (value === '') return value;
  for (const tag of doc.schema.tags) {
    if (tag.default !== true || tag.collection !== undefined || !tag.test?.test(value)) continue;
    const resolved = tag.resolve(value, () => {}, doc.options);
    // Some core tags (bool) resolve to a Scalar node rather than a primitive.
    return isScalar(resolved) ? resolved.value : resolved;
  }
  return value;
}

function pathOf(ancestors: readonly unknown[], node: unknown): PathSegment[] {
  const path: PathSegment[] = [];
  ancestors.forEach((ancestor, index) => {
    if (isPair(ancestor)) {
      const key = ancestor.key as { value?: unknown } | null;
      path.push(String(key && typeof key === 'object' && 'value' in key ? key.value : key));
    } else if (isSeq(ancestor)) {
      path.push(ancestor.items.indexOf((ancestors[index + 1] ?? node) as never));
    }
  });
  return path;
}

export function substituteEnv(
  doc: Document,
  env: NodeJS.ProcessEnv,
  report: (node: Scalar, path: PathSegment[], problem: EnvProblem) => void,
): void {
  visit(doc, {
    Scalar(key, node, ancestors) {
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('${')) return;
      const original = node.value;
      const { value, problems } = expandEnv(original, env);
      if (problems.length > 0) {
        const path = pathOf(ancestors, node);
        for (const problem of problems) report(node, path, problem);
        return;
      }
      node.value = node.type === 'PLAIN' && WHOLE_REFERENCE.test(original) ? retype(doc, value) : value;
    },
  });
}
