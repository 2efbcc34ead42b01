/**
 * The JSON Schema both the loader validates with and `schema/bulwark.schema.json`
 * is written from, so editors and the gateway can never disagree.
 */
import { ConfigSchema } from './schema.js';

export type JsonSchema = { [keyword: string]: unknown };

export const JSON_SCHEMA_DRAFT = 'http://json-schema.org/draft-07/schema#';

function isObject(value: unknown): value is JsonSchema {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function transform(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(transform);
  if (!isObject(node)) return node;
  const out: JsonSchema = {};
  for (const [k, v] of Object.entries(node)) out[k] = transform(v);

  // Editors (and ajv's useDefaults) fill defaulted properties in; demanding them
  // in `required` as well would make every omitted default an error in the editor.
  const properties = out['properties'];
  const required = out['required'];
  if (isObject(properties) && Array.isArray(required)) {
    const kept = required.filter(
      (name) => !(typeof name === 'string' && isObject(properties[name]) && 'default' in properties[name]),
    );
    if (kept.length > 0) out['required'] = kept;
    else delete out['required'];
  }

  // TypeBox spells a union of literals as anyOf/const; `enum` gives editors a
  // plain completion list and ajv one error instead of one per branch.
  const anyOf = out['anyOf'];
  if (
    Array.isArray(anyOf) &&
    anyOf.length > 1 &&
    anyOf.every((b) => isObject(b) && 'const' in b && Object.keys(b).every((k) => k === 'const' || k === 'type'))
  ) {
    const branches = anyOf as JsonSchema[];
    const types = new Set(branches.map((b) => b['type']));
    delete out['anyOf'];
    const [type] = types;
    if (types.size === 1 && typeof type === 'string') out['type'] = type;
    out['enum'] = branches.map((b) => b['const']);
  }
  return out;
}

/** A fresh, plain-JSON (draft-07) copy of `ConfigSchema`; callers may mutate it. */
export function buildJsonSchema(): JsonSchema {
  // The JSON round trip drops TypeBox's symbol-keyed metadata.
  const plain = JSON.parse(JSON.stringify(ConfigSchema)) as JsonSchema;
  const processed = transform(plain) as JsonSchema;
  return { $schema: JSON_SCHEMA_DRAFT, ...processed };
}
