#!/usr/bin/env node
/**
 * Writes schema/bulwark.schema.json and docs/configuration.md from the compiled
 * config schema (`npm run build` first). `--check` writes nothing and exits 1
 * if either file is stale, so CI catches a schema change without regenerated files.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const SCHEMA_FILE = 'schema/bulwark.schema.json';
const DOCS_FILE = 'docs/configuration.md';

async function loadBuilder() {
  try {
    const mod = await import('../dist/config/json-schema.js');
    return mod.buildJsonSchema;
  } catch (error) {
    console.error(`gen-schema: cannot load dist/config/json-schema.js (${error.message}); run \`npm run build\` first`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------------------
// Markdown reference

const code = (value) => `\`${String(value).replace(/\|/g, '\\|')}\``;
const cell = (text) => String(text).replace(/\|/g, '\\|').replace(/\n/g, ' ');
const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

function typeLabel(s) {
  if (!isObject(s)) return 'any';
  if (Array.isArray(s.anyOf)) return [...new Set(s.anyOf.map(typeLabel))].join(' or ');
  if ('const' in s) return typeof s.const === 'number' ? 'number' : typeof s.const;
  if (s.type === 'array') return `list of ${typeLabel(s.items)}`;
  if (s.type === 'object') return s.patternProperties ? 'map of name → mapping' : 'mapping';
  return Array.isArray(s.type) ? s.type.join(' or ') : (s.type ?? 'any');
}

function bounds(s) {
  const out = [];
  if (s.minimum !== undefined && s.maximum !== undefined) out.push(`${s.minimum}–${s.maximum}`);
  else if (s.minimum !== undefined) out.push(`≥ ${s.minimum}`);
  else if (s.maximum !== undefined) out.push(`≤ ${s.maximum}`);
  if (s.minLength !== undefined) out.push(`at least ${s.minLength} character${s.minLength === 1 ? '' : 's'}`);
  if (s.minItems !== undefined) out.push(`at least ${s.minItems} item${s.minItems === 1 ? '' : 's'}`);
  if (s.uniqueItems) out.push('no duplicates');
  if (s.pattern !== undefined) out.push(`matches ${code(s.pattern)}`);
  return out;
}

function allowed(s) {
  if (!isObject(s)) return [];
  if (Array.isArray(s.enum)) return [s.enum.map(code).join(', ')];
  if ('const' in s) return [code(s.const)];
  if (Array.isArray(s.anyOf)) {
    if (s.anyOf.every((b) => b.type === 'object' && b.required?.length === 1)) {
      return [`exactly one of ${s.anyOf.map((b) => code(b.required[0])).join(', ')}`];
    }
    return [s.anyOf.map((b) => ('const' in b ? code(b.const) : [typeLabel(b), ...allowed(b)].join(' '))).join(' or ')];
  }
  const out = bounds(s);
  if (s.type === 'array' && isObject(s.items) && s.items.type !== 'object') {
    const item = allowed(s.items);
    if (item.length > 0) out.push(`each: ${item.join(', ')}`);
  }
  if (s.patternProperties) out.push(`names match ${Object.keys(s.patternProperties).map(code).join(', ')}`);
  return out;
}

function rowsOf(schema, path, required, rows) {
  if (path !== '') {
    rows.push({
      path,
      type: typeLabel(schema),
      required,
      def: 'default' in schema ? code(JSON.stringify(schema.default)) : '',
      allowed: allowed(schema).join('; '),
      description: schema.description ?? '',
    });
  }
  const child = (key) => (path === '' ? key : `${path}.${key}`);
  if (isObject(schema.properties)) {
    const req = new Set(schema.required ?? []);
    for (const [key, sub] of Object.entries(schema.properties)) rowsOf(sub, child(key), req.has(key), rows);
  }
  if (isObject(schema.patternProperties)) {
    for (const sub of Object.values(schema.patternProperties)) {
      for (const [key, prop] of Object.entries(sub.properties ?? {}))
        rowsOf(prop, `${path}.<name>.${key}`, (sub.required ?? []).includes(key), rows);
    }
  }
  if (schema.type === 'array' && isObject(schema.items) && isObject(schema.items.properties)) {
    const req = new Set(schema.items.required ?? []);
    for (const [key, sub] of Object.entries(schema.items.properties)) rowsOf(sub, `${path}[].${key}`, req.has(key), rows);
  }
  if (Array.isArray(schema.anyOf)) {
    // Alternatives (e.g. path match kinds) are listed as optional: exactly one applies.
    for (const branch of schema.anyOf) {
      for (const [key, sub] of Object.entries(branch.properties ?? {})) rowsOf(sub, child(key), false, rows);
    }
  }
  return rows;
}

function table(rows) {
  const lines = ['| Path | Type | Required | Default | Allowed values | Description |', '| --- | --- | --- | --- | --- | --- |'];
  for (const r of rows) {
    lines.push(
      `| ${code(r.path)} | ${cell(r.type)} | ${r.required ? 'yes' : ''} | ${r.def} | ${r.allowed} | ${cell(r.description)} |`,
    );
  }
  return lines.join('\n');
}

function renderDocs(schema) {
  const top = [];
  const sections = [];
  const required = new Set(schema.required ?? []);
  for (const [key, sub] of Object.entries(schema.properties)) {
    const rows = rowsOf(sub, key, required.has(key), []);
    if (rows.length === 1) top.push(...rows);
    else sections.push(`### \`${key}\`\n\n${table(rows)}`);
  }
  return `<!-- Generated by scripts/gen-schema.js from src/config/schema.ts; do not edit. Run \`npm run schema\`. -->

# Configuration reference

Bulwark reads one YAML (or JSON) document. Editors can validate and complete it with the JSON Schema:

\`\`\`yaml
# yaml-language-server: $schema=./node_modules/bulwark/schema/bulwark.schema.json
version: 1
\`\`\`

Every mapping is closed: an unknown key is an error, never silently ignored. Keys with a default may be omitted.

## Environment variables

String values may use \`\${NAME}\` and \`\${NAME:-default}\` (the default also applies when the variable is set but empty);
\`$\${\` is a literal \`\${\`. Substitution happens after parsing, so a variable's value is always one scalar and cannot
add YAML structure. An unquoted value that is exactly one reference is typed like YAML would type it in place, so
\`port: \${PORT:-8080}\` is the number 8080; quote it to keep a string. Inside flow collections (\`[...]\`, \`{...}\`) braces
are YAML syntax, so there a reference must be quoted (and stays a string); use block style where a number or boolean is
needed. A reference to an unset variable without a default is an error.

## Checks beyond the schema

- a route's \`upstream\` names a defined upstream (\`config.unknown_upstream\`);
- an upstream has exactly one of \`endpoints\` and \`builtin\` (\`config.upstream_source\`);
- \`protocol: https\` requires \`tls\`, and \`tls\` is only allowed with \`https\` (\`config.tls_required\`);
- listener address and port pairs do not collide, and the admin port differs from every listener port; port 0 is exempt (\`config.port_conflict\`);
- route ids and listener names are unique (\`config.duplicate_id\`);
- each \`trustedProxies\` entry is an IP address or CIDR (\`config.bad_cidr\`);
- TLS files exist and are readable; relative paths are resolved against the config file's directory (\`config.file_unreadable\`).

## Reference

### Top level

${table(top)}

${sections.join('\n\n')}
`;
}

async function formatMarkdown(text, file) {
  // The docs are under `prettier --check`; formatting here keeps lint and --check agreeing.
  try {
    const prettier = await import('prettier');
    const options = (await prettier.resolveConfig(file)) ?? {};
    return await prettier.format(text, { ...options, filepath: file });
  } catch (error) {
    if (error?.code !== 'ERR_MODULE_NOT_FOUND') throw error;
    return text;
  }
}

// ---------------------------------------------------------------------------

const check = process.argv.includes('--check');
const buildJsonSchema = await loadBuilder();
const schema = buildJsonSchema();
const outputs = [
  [SCHEMA_FILE, `${JSON.stringify(schema, null, 2)}\n`],
  [DOCS_FILE, await formatMarkdown(renderDocs(schema), join(root, DOCS_FILE))],
];

let stale = 0;
for (const [file, content] of outputs) {
  const target = join(root, file);
  const current = await readFile(target, 'utf8').catch(() => null);
  if (current === content) continue;
  if (check) {
    stale += 1;
    console.error(`${file} is ${current === null ? 'missing' : 'out of date'}; run \`npm run build && npm run schema\``);
  } else {
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, content);
    console.log(`wrote ${file}`);
  }
}
if (stale > 0) process.exit(1);
if (check) console.log(`${SCHEMA_FILE} and ${DOCS_FILE} are up to date`);
