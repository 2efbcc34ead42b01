/**
 * Config text → validated `BulwarkConfig`, or every problem at once with its
 * file:line:column. Stages: YAML parse → env substitution (on the parsed
 * document) → schema (ajv, defaults filled) → semantic checks → extra checks.
 */
import { resolveAuthnPaths } from '../authn/checks.js';
import { resolveAuditPaths } from '../audit/schema.js';
import { resolveIssuerPaths } from '../issuer/schema.js';
import { createHash } from 'node:crypto';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { BlockList, isIP } from 'node:net';
import { dirname, resolve as resolvePath } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import addFormatsModule from 'ajv-formats';
import {
  isAlias,
  isCollection,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  visit,
  type Document,
  type YAMLError,
} from 'yaml';
import { substituteEnv } from './env.js';
import {
  ConfigError,
  didYouMean,
  formatPath,
  sortIssues,
  type ConfigIssue,
  type IssueSeverity,
  type PathSegment,
} from './issues.js';
import { buildJsonSchema, type JsonSchema } from './json-schema.js';
import type { BulwarkConfig } from './schema.js';

export { ConfigError, formatIssues, isConfigError, type ConfigIssue, type IssueSeverity } from './issues.js';

export interface LoadedConfig {
  config: BulwarkConfig;
  file: string;
  source: string;
  /** sha256 hex of `source`: cheap "did anything change" for reloads and /config. */
  hash: string;
  warnings: ConfigIssue[];
}

export type ConfigCheck = (
  config: BulwarkConfig,
  report: (path: (string | number)[], code: string, message: string, severity?: IssueSeverity) => void,
) => void;

export interface ParseOptions {
  env?: NodeJS.ProcessEnv;
  checks?: readonly ConfigCheck[];
}

/** Same bound as yaml's default, set explicitly: alias expansion is the YAML "billion laughs" vector. */
const MAX_ALIAS_COUNT = 100;

// ajv-formats is CommonJS; under NodeNext its default import is the module object.
const addFormats = addFormatsModule.default;

// Compiled once: compiling costs milliseconds, validating microseconds, and reloads parse often.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true, allowUnionTypes: true });
addFormats(ajv);
const validateSchema = ajv.compile<BulwarkConfig>(buildJsonSchema());

type Json = { [key: string]: unknown };

function isPlainObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// ---------------------------------------------------------------------------
// Locating paths in the YAML document

interface Step {
  key: unknown;
  node: unknown;
}

type Anchor = 'value' | 'key' | 'parent';

function rangeStart(node: unknown): number | undefined {
  if (typeof node !== 'object' || node === null || !('range' in node)) return undefined;
  const range = (node as { range?: [number, number, number] | null }).range;
  return range ? range[0] : undefined;
}

/** Follows `path` as far as the document has it (defaults filled by the schema have no node). */
function walk(doc: Document, path: readonly PathSegment[]): Step[] {
  const steps: Step[] = [{ key: null, node: doc.contents }];
  let node: unknown = doc.contents;
  for (const seg of path) {
    if (isAlias(node)) node = node.resolve(doc);
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      node = pair.value;
      steps.push({ key: pair.key, node });
    } else if (isSeq(node) && typeof seg === 'number') {
      node = node.items[seg];
      if (node === undefined) break;
      steps.push({ key: null, node });
    } else {
      break;
    }
  }
  return steps;
}

function offsetOf(doc: Document, path: readonly PathSegment[], anchor: Anchor): number | undefined {
  const steps = walk(doc, path);
  const last = steps[steps.length - 1] as Step;
  const complete = steps.length === path.length + 1;
  const keyAt = rangeStart(last.key);
  const nodeAt = rangeStart(last.node);
  if (anchor === 'key' || anchor === 'parent' || !complete) return keyAt ?? nodeAt;
  // Scalars point at the value; collections at the key naming them (`limits:`), which reads better.
  const emptyScalar = isScalar(last.node) && last.node.value === null && !last.node.source;
  if (isScalar(last.node) && !emptyScalar) return nodeAt ?? keyAt;
  return isCollection(last.node) || emptyScalar ? (keyAt ?? nodeAt) : (nodeAt ?? keyAt);
}

class IssueSink {
  readonly issues: ConfigIssue[] = [];

  constructor(
    readonly file: string,
    private readonly lineCounter: LineCounter,
  ) {}

  get errorCount(): number {
    return this.issues.filter((i) => i.severity !== 'warning').length;
  }

  addAt(offset: number | undefined, path: string, code: string, message: string, severity: IssueSeverity = 'error'): void {
    const pos = offset === undefined ? { line: 1, col: 1 } : this.lineCounter.linePos(offset);
    const issue: ConfigIssue = { file: this.file, line: pos.line, column: pos.col, path, code, message };
    if (severity === 'warning') issue.severity = 'warning';
    const duplicate = this.issues.some(
      (i) =>
        i.line === issue.line &&
        i.column === issue.column &&
        i.path === issue.path &&
        i.code === issue.code &&
        i.message === issue.message,
    );
    if (!duplicate) this.issues.push(issue);
  }

  addPath(
    doc: Document,
    path: readonly PathSegment[],
    anchor: Anchor,
    code: string,
    message: string,
    severity?: IssueSeverity,
  ): void {
    this.addAt(offsetOf(doc, path, anchor), formatPath(path), code, message, severity);
  }
}

function fail(sink: IssueSink): never {
  throw new ConfigError(sortIssues(sink.issues));
}

// ---------------------------------------------------------------------------
// YAML stage

const YAML_CODES: Partial<Record<YAMLError['code'], string>> = {
  DUPLICATE_KEY: 'config.duplicate_key',
  MULTIPLE_DOCS: 'config.multi_document',
  BAD_ALIAS: 'config.yaml_alias',
  RESOURCE_EXHAUSTION: 'config.yaml_alias',
  TAG_RESOLVE_FAILED: 'config.yaml_tag',
};

/** Path of the map key starting at `offset` (duplicate-key errors point at the second key). */
function keyPathAt(doc: Document, offset: number): string {
  let found = '';
  visit(doc, {
    Pair(_key, pair, ancestors) {
      if (!isScalar(pair.key) || rangeStart(pair.key) !== offset) return undefined;
      const path: PathSegment[] = [];
      const chain = [...ancestors, pair];
      chain.forEach((ancestor, index) => {
        if (isSeq(ancestor)) path.push(ancestor.items.indexOf(chain[index + 1] as never));
        else if (ancestor !== pair && 'key' in (ancestor as object) && isScalar((ancestor as { key: unknown }).key)) {
          path.push(String((ancestor as { key: { value: unknown } }).key.value));
        }
      });
      path.push(String(pair.key.value));
      found = formatPath(path);
      return visit.BREAK;
    },
  });
  return found;
}

function yamlMessage(error: YAMLError, source: string): string {
  const first = error.message.split('\n')[0] ?? error.message;
  const lineStart = source.lastIndexOf('\n', error.pos[0] - 1) + 1;
  const lineEnd = source.indexOf('\n', error.pos[0]);
  const line = source.slice(lineStart, lineEnd < 0 ? undefined : lineEnd);
  // `{`/`}` are flow indicators, so an unquoted ${VAR} inside [...] or {...} breaks the syntax.
  if (line.includes('${') && /[[{]/.test(line.replace(/\$\{[^}]*\}?/g, '')))
    return `${first} (inside [...] or {...}, quote "\${...}" or use block style)`;
  if (error.code === 'MULTIPLE_DOCS') return 'a config file must hold exactly one YAML document (found a second "---" document)';
  if (error.code === 'DUPLICATE_KEY') return 'duplicate key: each key may appear once per mapping';
  return first;
}

// ---------------------------------------------------------------------------
// Schema stage: ajv errors → issues

interface SchemaError {
  keyword: string;
  instancePath: string;
  schemaPath: string;
  params: Json;
  message?: string;
  schema?: unknown;
  parentSchema?: JsonSchema;
  data?: unknown;
}

/** Errors that say "this value has the wrong shape", as opposed to "right shape, bad value". */
const SHAPE_KEYWORDS = new Set(['type', 'const', 'enum', 'required', 'additionalProperties', 'anyOf', 'oneOf', 'union', 'not']);

function branchIndex(error: SchemaError, unionPath: string): number {
  return Number(error.schemaPath.slice(unionPath.length + 1).split('/')[0]);
}

/**
 * A failed union makes ajv report every branch's complaints. If exactly one
 * branch has the right shape, its own errors are the useful ones; otherwise the
 * union becomes one synthetic `union` error. Innermost unions go first so outer
 * ones see their already-collapsed results.
 */
function collapseUnions(errors: SchemaError[]): SchemaError[] {
  let list = [...errors];
  const unions = list
    .filter((e) => e.keyword === 'anyOf' || e.keyword === 'oneOf')
    .sort((a, b) => b.schemaPath.length - a.schemaPath.length);
  for (const union of unions) {
    if (!list.includes(union)) continue;
    // The same schema applies to every item of a list: a branch error belongs to this union only
    // at this union's place in the document (another route's failures are another union's).
    const inside = list.filter(
      (e) =>
        e !== union &&
        e.schemaPath.startsWith(`${union.schemaPath}/`) &&
        (e.instancePath === union.instancePath || e.instancePath.startsWith(`${union.instancePath}/`)),
    );
    const byBranch = new Map<number, SchemaError[]>();
    for (const e of inside) {
      const index = branchIndex(e, union.schemaPath);
      byBranch.set(index, [...(byBranch.get(index) ?? []), e]);
    }
    const fitting = [...byBranch.values()].filter(
      (errs) => !errs.some((e) => e.instancePath === union.instancePath && SHAPE_KEYWORDS.has(e.keyword)),
    );
    const passing = union.keyword === 'oneOf' && union.params['passingSchemas'] != null;
    const replacement = !passing && fitting.length === 1 ? (fitting[0] as SchemaError[]) : [{ ...union, keyword: 'union' }];
    list = list.filter((e) => e !== union && !inside.includes(e)).concat(replacement);
  }
  return list;
}

/** `{type: 'number', const: 1}` fails both keywords on "1"; the const/enum message alone says more. */
function dropShadowedTypeErrors(errors: SchemaError[]): SchemaError[] {
  const parent = (e: SchemaError) => e.schemaPath.slice(0, e.schemaPath.lastIndexOf('/'));
  return errors.filter(
    (e) =>
      e.keyword !== 'type' ||
      !errors.some(
        (o) => (o.keyword === 'const' || o.keyword === 'enum') && o.instancePath === e.instancePath && parent(o) === parent(e),
      ),
  );
}

function pointerToPath(pointer: string, root: unknown): PathSegment[] {
  if (pointer === '') return [];
  const path: PathSegment[] = [];
  let current: unknown = root;
  for (const raw of pointer.slice(1).split('/')) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(current)) {
      const index = Number(seg);
      path.push(index);
      current = current[index];
    } else {
      path.push(seg);
      current = isPlainObject(current) ? current[seg] : undefined;
    }
  }
  return path;
}

function show(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  return `${typeof value} ${String(value)}`;
}

function typeWord(type: unknown): string {
  const words: Record<string, string> = {
    object: 'a mapping',
    array: 'a list',
    string: 'a string',
    integer: 'an integer',
    number: 'a number',
    boolean: 'a boolean (true/false)',
    null: 'null',
  };
  const types = Array.isArray(type) ? type : [type];
  return types.map((t) => words[String(t)] ?? String(t)).join(' or ');
}

function describeSchema(schema: unknown): string {
  if (!isPlainObject(schema)) return 'a value';
  if ('const' in schema) return JSON.stringify(schema['const']);
  if (Array.isArray(schema['enum'])) return schema['enum'].map((v) => JSON.stringify(v)).join(' or ');
  const word = typeWord(schema['type']);
  const min = schema['minimum'];
  const max = schema['maximum'];
  if (typeof min === 'number' && typeof max === 'number') return `${word} from ${min} to ${max}`;
  return word;
}

function unionMessage(error: SchemaError): string {
  const branches = Array.isArray(error.schema) ? error.schema : [];
  const data = error.data;
  const keyed = branches.every(
    (b) => isPlainObject(b) && b['type'] === 'object' && Array.isArray(b['required']) && b['required'].length === 1,
  );
  if (keyed && branches.length > 0) {
    const keys = branches.map((b) => String(((b as Json)['required'] as unknown[])[0]));
    let message = `expected exactly one of: ${keys.join(', ')}`;
    if (!isPlainObject(data)) return `${message}; got ${show(data)}`;
    const present = Object.keys(data).filter((k) => keys.includes(k));
    if (present.length > 1) message += ` (got ${present.join(', ')})`;
    for (const unknown of Object.keys(data).filter((k) => !keys.includes(k))) {
      message += `; unknown key "${unknown}"${didYouMean(unknown, keys)}`;
    }
    return message;
  }
  if (error.keyword === 'oneOf' && error.params['passingSchemas'] != null) return 'matches more than one of the allowed forms';
  return `expected ${branches.map(describeSchema).join(' or ')}; got ${show(data)}`;
}

interface SchemaIssue {
  path: PathSegment[];
  anchor: Anchor;
  code: string;
  message: string;
}

const RANGE_WORDS: Record<string, string> = { minimum: '>=', maximum: '<=', exclusiveMinimum: '>', exclusiveMaximum: '<' };

function toIssue(error: SchemaError, root: unknown): SchemaIssue {
  const base = pointerToPath(error.instancePath, root);
  const params = error.params;
  const data = error.data;
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = String(params['additionalProperty']);
      const parent = error.parentSchema ?? {};
      const properties = isPlainObject(parent['properties']) ? Object.keys(parent['properties']) : [];
      const patterns = isPlainObject(parent['patternProperties']) ? Object.keys(parent['patternProperties']) : [];
      const path = [...base, key];
      if (patterns.length > 0 && properties.length === 0) {
        return {
          path,
          anchor: 'key',
          code: 'config.pattern',
          message: `invalid name "${key}": must match ${patterns.join(' or ')}`,
        };
      }
      if (key === '<<')
        return {
          path,
          anchor: 'key',
          code: 'config.unknown_key',
          message: 'YAML merge keys ("<<") are not supported; repeat the keys or use an alias for the whole value',
        };
      const hint = didYouMean(key, properties);
      const allowed = hint === '' && properties.length > 0 ? `; allowed keys: ${properties.join(', ')}` : '';
      return { path, anchor: 'key', code: 'config.unknown_key', message: `unknown key "${key}"${hint}${allowed}` };
    }
    case 'required': {
      const key = String(params['missingProperty']);
      return { path: [...base, key], anchor: 'parent', code: 'config.required', message: `missing required key "${key}"` };
    }
    case 'type':
      return {
        path: base,
        anchor: 'value',
        code: 'config.type',
        message: `expected ${typeWord(params['type'])}; got ${show(data)}`,
      };
    case 'const':
      return {
        path: base,
        anchor: 'value',
        code: 'config.enum',
        message: `expected ${JSON.stringify(params['allowedValue'])}; got ${show(data)}`,
      };
    case 'enum': {
      const allowed = Array.isArray(params['allowedValues']) ? params['allowedValues'] : [];
      const hint = typeof data === 'string' ? didYouMean(data, allowed.map(String)) : '';
      return {
        path: base,
        anchor: 'value',
        code: 'config.enum',
        message: `expected one of: ${allowed.map(String).join(', ')}; got ${show(data)}${hint}`,
      };
    }
    case 'pattern': {
      const description = error.parentSchema?.['description'];
      const extra = typeof description === 'string' && description.startsWith('Identifier') ? ` (${description})` : '';
      return {
        path: base,
        anchor: 'value',
        code: 'config.pattern',
        message: `${show(data)} does not match ${String(params['pattern'])}${extra}`,
      };
    }
    case 'format':
      return {
        path: base,
        anchor: 'value',
        code: 'config.format',
        message: `expected a valid ${String(params['format'])}; got ${show(data)}`,
      };
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
      return {
        path: base,
        anchor: 'value',
        code: 'config.range',
        message: `must be ${RANGE_WORDS[error.keyword]} ${String(params['limit'])}; got ${String(data)}`,
      };
    case 'multipleOf':
      return {
        path: base,
        anchor: 'value',
        code: 'config.range',
        message: `must be a multiple of ${String(params['multipleOf'])}; got ${String(data)}`,
      };
    case 'minLength':
    case 'maxLength':
    case 'minItems':
    case 'maxItems':
    case 'minProperties':
    case 'maxProperties': {
      const least = error.keyword.startsWith('min');
      const unit = error.keyword.endsWith('Length') ? 'character' : error.keyword.endsWith('Items') ? 'item' : 'key';
      const limit = Number(params['limit']);
      return {
        path: base,
        anchor: 'value',
        code: 'config.length',
        message: `must have ${least ? 'at least' : 'at most'} ${limit} ${unit}${limit === 1 ? '' : 's'}`,
      };
    }
    case 'uniqueItems': {
      // ajv scans from the end, so which of i/j is later varies; point at the later copy.
      const later = Math.max(Number(params['i']), Number(params['j']));
      const earlier = Math.min(Number(params['i']), Number(params['j']));
      return {
        path: [...base, later],
        anchor: 'value',
        code: 'config.unique',
        message: `duplicate of item ${earlier} (${show(Array.isArray(data) ? data[later] : undefined)})`,
      };
    }
    case 'union':
      return { path: base, anchor: 'value', code: 'config.one_of', message: unionMessage(error) };
    default:
      return { path: base, anchor: 'value', code: 'config.schema', message: error.message ?? `fails "${error.keyword}"` };
  }
}

function schemaIssues(errors: readonly ErrorObject[], root: unknown): SchemaIssue[] {
  const list = collapseUnions(dropShadowedTypeErrors(errors.map((e) => ({ ...e }) as SchemaError)));
  return list.map((e) => toIssue(e, root));
}

// ---------------------------------------------------------------------------
// Semantic stage

function resolveTlsPaths(config: BulwarkConfig, baseDir: string): void {
  // Relative TLS paths mean "next to the config file", whatever the gateway's cwd;
  // rewriting them here means the check below and the server read the same file.
  for (const listener of config.listeners) {
    const tls = listener.tls;
    if (!tls) continue;
    tls.cert = resolvePath(baseDir, tls.cert);
    tls.key = resolvePath(baseDir, tls.key);
    if (tls.ca !== undefined) tls.ca = resolvePath(baseDir, tls.ca);
  }
}

const checkUpstreams: ConfigCheck = (config, report) => {
  for (const [name, upstream] of Object.entries(config.upstreams)) {
    const hasEndpoints = upstream.endpoints !== undefined;
    const hasBuiltin = upstream.builtin !== undefined;
    if (hasEndpoints && hasBuiltin) {
      report(
        ['upstreams', name, 'builtin'],
        'config.upstream_source',
        `upstream "${name}" has both endpoints and builtin; give exactly one`,
      );
    } else if (!hasEndpoints && !hasBuiltin) {
      report(['upstreams', name], 'config.upstream_source', `upstream "${name}" needs exactly one of endpoints or builtin`);
    }
  }
  const names = Object.keys(config.upstreams);
  config.routes.forEach((route, i) => {
    if (route.upstream === undefined || Object.hasOwn(config.upstreams, route.upstream)) return;
    const defined = names.length > 0 ? `; defined: ${names.join(', ')}` : '; no upstreams are defined';
    report(
      ['routes', i, 'upstream'],
      'config.unknown_upstream',
      `unknown upstream "${route.upstream}"${didYouMean(route.upstream, names)}${defined}`,
    );
  });
};

const checkIds: ConfigCheck = (config, report) => {
  const routeIds = new Map<string, number>();
  config.routes.forEach((route, i) => {
    const first = routeIds.get(route.id);
    if (first === undefined) routeIds.set(route.id, i);
    else report(['routes', i, 'id'], 'config.duplicate_id', `duplicate route id "${route.id}" (also routes[${first}])`);
  });
  const listenerNames = new Map<string, number>();
  config.listeners.forEach((listener, i) => {
    if (listener.name === undefined) return;
    const first = listenerNames.get(listener.name);
    if (first === undefined) listenerNames.set(listener.name, i);
    else
      report(
        ['listeners', i, 'name'],
        'config.duplicate_id',
        `duplicate listener name "${listener.name}" (also listeners[${first}])`,
      );
  });
};

const checkTls: ConfigCheck = (config, report) => {
  config.listeners.forEach((listener, i) => {
    if (listener.protocol === 'https' && !listener.tls) {
      report(['listeners', i, 'protocol'], 'config.tls_required', 'protocol https requires a tls section (cert and key)');
    } else if (listener.protocol !== 'https' && listener.tls) {
      report(
        ['listeners', i, 'tls'],
        'config.tls_required',
        `tls is only used with protocol https (this listener is ${listener.protocol})`,
      );
    }
  });
};

/** Whether two bind addresses on one port collide (`::` is dual-stack in Node, so it takes IPv4 too). */
function addressesOverlap(a: string, b: string): boolean {
  if (a === b || a === '::' || b === '::') return true;
  if (a === '0.0.0.0') return isIP(b) === 4;
  if (b === '0.0.0.0') return isIP(a) === 4;
  return false;
}

const checkPorts: ConfigCheck = (config, report) => {
  const listeners = config.listeners;
  listeners.forEach((listener, j) => {
    if (listener.port === 0) return;
    const i = listeners.findIndex(
      (other, k) => k < j && other.port === listener.port && addressesOverlap(other.address, listener.address),
    );
    if (i < 0) return;
    const other = listeners[i] as (typeof listeners)[number];
    report(
      ['listeners', j, 'port'],
      'config.port_conflict',
      `${listener.address}:${listener.port} conflicts with listeners[${i}] (${other.address}:${other.port})`,
    );
  });
  // An absent `admin` still starts the admin listener on its default port.
  const admin = config.admin ?? { enabled: true, port: DEFAULT_ADMIN_PORT };
  if (admin.enabled === false || admin.port === 0) return;
  listeners.forEach((listener, i) => {
    if (listener.port === admin.port) {
      report(
        config.admin ? ['admin', 'port'] : ['listeners', i, 'port'],
        'config.port_conflict',
        `port ${admin.port} is also the admin listener's port`,
      );
    }
  });
};

const DEFAULT_ADMIN_PORT = 9901;

function isIpOrCidr(value: string): boolean {
  const slash = value.indexOf('/');
  if (slash < 0) return isIP(value) !== 0;
  const address = value.slice(0, slash);
  const bits = value.slice(slash + 1);
  const family = isIP(address);
  if (family === 0 || !/^[0-9]{1,3}$/.test(bits) || Number(bits) > (family === 4 ? 32 : 128)) return false;
  try {
    new BlockList().addSubnet(address, Number(bits), family === 4 ? 'ipv4' : 'ipv6');
    return true;
  } catch {
    return false;
  }
}

const checkTrustedProxies: ConfigCheck = (config, report) => {
  config.listeners.forEach((listener, i) => {
    listener.trustedProxies.forEach((entry, k) => {
      if (!isIpOrCidr(entry)) {
        report(
          ['listeners', i, 'trustedProxies', k],
          'config.bad_cidr',
          `"${entry}" is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)`,
        );
      }
    });
  });
};

const checkTlsFiles: ConfigCheck = (config, report) => {
  config.listeners.forEach((listener, i) => {
    const tls = listener.tls;
    if (!tls) return;
    for (const field of ['cert', 'key', 'ca'] as const) {
      const file = tls[field];
      if (file === undefined) continue;
      try {
        if (!statSync(file).isFile()) throw Object.assign(new Error('not a regular file'), { code: 'ENOTFILE' });
        accessSync(file, fsConstants.R_OK);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code ?? 'error';
        report(['listeners', i, 'tls', field], 'config.file_unreadable', `cannot read ${field} file ${file} (${code})`);
      }
    }
  });
};

const BUILTIN_CHECKS: readonly ConfigCheck[] = [
  checkUpstreams,
  checkIds,
  checkTls,
  checkPorts,
  checkTrustedProxies,
  checkTlsFiles,
];

// ---------------------------------------------------------------------------
// Entry points

function isWithin(path: string, prefix: string): boolean {
  return prefix === '' || path === prefix || path.startsWith(`${prefix}.`) || path.startsWith(`${prefix}[`);
}

export function parseConfig(source: string, file: string, options: ParseOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const hash = createHash('sha256').update(source).digest('hex');
  const lineCounter = new LineCounter();
  const sink = new IssueSink(file, lineCounter);

  const doc = parseDocument(source, { lineCounter, prettyErrors: false, uniqueKeys: true, strict: true, version: '1.2' });
  let syntaxErrors = 0;
  for (const error of doc.errors) {
    const code = YAML_CODES[error.code] ?? 'config.yaml_syntax';
    // After one syntax error the parser is resynchronizing; what follows is mostly echo.
    if (code === 'config.yaml_syntax' && ++syntaxErrors > 1) continue;
    const path = error.code === 'DUPLICATE_KEY' ? keyPathAt(doc, error.pos[0]) : '';
    sink.addAt(error.pos[0], path, code, yamlMessage(error, source));
  }
  for (const warning of doc.warnings) {
    // An unknown tag (`!env FOO`) would otherwise silently become a plain string.
    const severity = warning.code === 'TAG_RESOLVE_FAILED' ? 'error' : 'warning';
    sink.addAt(warning.pos[0], '', YAML_CODES[warning.code] ?? 'config.yaml_warning', yamlMessage(warning, source), severity);
  }
  if (sink.errorCount > 0) fail(sink);

  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) {
    sink.addAt(undefined, '', 'config.empty', 'the configuration is empty');
    fail(sink);
  }

  visit(doc, {
    Alias(_key, alias) {
      if (alias.resolve(doc) === undefined)
        sink.addAt(rangeStart(alias), '', 'config.yaml_alias', `alias *${alias.source} refers to no anchor defined before it`);
    },
  });
  if (sink.errorCount > 0) fail(sink);

  const unresolved: string[] = [];
  substituteEnv(doc, env, (node, path, problem) => {
    const formatted = formatPath(path);
    unresolved.push(formatted);
    sink.addAt(rangeStart(node), formatted, problem.code, problem.message);
  });

  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (error) {
    let first: number | undefined;
    visit(doc, {
      Alias(_key, alias) {
        first = rangeStart(alias);
        return visit.BREAK;
      },
    });
    sink.addAt(
      first,
      '',
      'config.yaml_alias',
      `aliases expand too much (more than ${MAX_ALIAS_COUNT} nodes): ${(error as Error).message}`,
    );
    fail(sink);
  }

  if (!validateSchema(data)) {
    for (const issue of schemaIssues(validateSchema.errors ?? [], data)) {
      const formatted = formatPath(issue.path);
      // The value there is the unsubstituted text; its env issue already says what is wrong.
      if (unresolved.some((prefix) => isWithin(formatted, prefix))) continue;
      sink.addPath(doc, issue.path, issue.anchor, issue.code, issue.message);
    }
  }
  if (sink.errorCount > 0) fail(sink);

  // Only schema-valid configs reach the checks, so they can trust the types.
  const config = data as BulwarkConfig;
  resolveTlsPaths(config, dirname(resolvePath(file)));
  resolveAuthnPaths(config.authn, dirname(resolvePath(file)));
  if (config.audit !== undefined) config.audit = resolveAuditPaths(config.audit, dirname(resolvePath(file)));
  if (config.issuer !== undefined) config.issuer = resolveIssuerPaths(config.issuer, dirname(resolvePath(file)));
  const report = (path: (string | number)[], code: string, message: string, severity: IssueSeverity = 'error') =>
    sink.addPath(doc, path, 'value', code, message, severity);
  for (const check of [...BUILTIN_CHECKS, ...(options.checks ?? [])]) {
    try {
      check(config, report);
    } catch (error) {
      sink.addAt(undefined, '', 'config.check_failed', `a config check threw: ${(error as Error)?.message ?? String(error)}`);
    }
  }

  sortIssues(sink.issues);
  if (sink.errorCount > 0) fail(sink);
  return { config, file, source, hash, warnings: sink.issues.filter((i) => i.severity === 'warning') };
}

export async function loadConfigFile(file: string, options: ParseOptions = {}): Promise<LoadedConfig> {
  let source: string;
  try {
    source = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    const reason =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'is a directory'
          : code === 'EACCES'
            ? 'permission denied'
            : (error as Error).message;
    throw new ConfigError(
      [
        {
          file,
          line: 0,
          column: 0,
          path: '',
          code: 'config.file_unreadable',
          message: `cannot read config file: ${reason} (${code})`,
        },
      ],
      {
        cause: error,
      },
    );
  }
  return parseConfig(source, file, options);
}

// ---------------------------------------------------------------------------
// Redaction for /config

const REDACTED = '[redacted]';
const SENSITIVE_KEY = /secret|passw|passphrase|token|private|credential|api[-_]?key|authorization|cookie/i;
/** `key`/`signingKey` etc. hold key material unless the value is plainly a file path. */
const KEY_LIKE = /key$/i;
const FILE_PATH = /^(?!-----)[^\s]*(?:[\\/][^\s]*|\.(?:pem|key|crt|cer|der|p12|pfx|jwk|jwks|json))$/i;
// Greedy up to the last `@` of the authority: a password written with a raw `@` (`u:p@ss@host`,
// which Redis and PostgreSQL clients accept) is redacted whole.
const URL_USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)[^/?#\s]*@/i;
const URL_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;
const QUERY_PARAM = /([?&])([^=&#]*)=([^&#]*)/g;

function redactValue(value: unknown, key: string | undefined): unknown {
  if (key !== undefined) {
    if (SENSITIVE_KEY.test(key)) return REDACTED;
    // Exporter headers carry vendor credentials under names no pattern can know (x-honeycomb-team…).
    if (key === 'headers' && isPlainObject(value)) return Object.fromEntries(Object.keys(value).map((k) => [k, REDACTED]));
    if (KEY_LIKE.test(key) && !(typeof value === 'string' && FILE_PATH.test(value))) return REDACTED;
  }
  if (Array.isArray(value)) return value.map((item) => redactValue(item, undefined));
  if (isPlainObject(value)) {
    const out: Json = {};
    for (const [k, v] of Object.entries(value)) out[k] = redactValue(v, k);
    return out;
  }
  // Credentials in a URL (`https://user:pass@host`, `?password=…`) are secrets whatever the key is called.
  if (typeof value === 'string' && URL_SCHEME.test(value)) {
    return value
      .replace(URL_USERINFO, `$1${REDACTED}@`)
      .replace(QUERY_PARAM, (whole: string, sep: string, name: string) =>
        SENSITIVE_KEY.test(decodeName(name)) ? `${sep}${name}=${REDACTED}` : whole,
      );
  }
  return value;
}

function decodeName(name: string): string {
  try {
    return decodeURIComponent(name.replace(/\+/g, ' '));
  } catch {
    return name;
  }
}

export function redactConfig(config: BulwarkConfig): unknown {
  return redactValue(config, undefined);
}
