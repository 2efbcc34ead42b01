import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildJsonSchema, type JsonSchema } from '../../src/config/json-schema.js';

function* objects(node: unknown): Generator<JsonSchema> {
  if (Array.isArray(node)) for (const item of node) yield* objects(item);
  else if (typeof node === 'object' && node !== null) {
    yield node as JsonSchema;
    for (const value of Object.values(node)) yield* objects(value);
  }
}

describe('buildJsonSchema', () => {
  it('is draft-07 and never requires a defaulted property', () => {
    const schema = buildJsonSchema();
    expect(schema['$schema']).toBe('http://json-schema.org/draft-07/schema#');
    let checked = 0;
    for (const node of objects(schema)) {
      const properties = node['properties'] as Record<string, JsonSchema> | undefined;
      const required = node['required'] as string[] | undefined;
      if (!properties || !required) continue;
      for (const name of required) expect(properties[name], name).not.toHaveProperty('default');
      checked += 1;
    }
    expect(checked).toBeGreaterThan(3);
    const listener = (schema['properties'] as Record<string, JsonSchema>)['listeners']?.['items'] as JsonSchema;
    expect(listener['required']).toEqual(['port']);
  });

  it('holds no TypeBox symbols and returns a fresh copy each time', () => {
    const a = buildJsonSchema();
    expect(Object.getOwnPropertySymbols(a)).toEqual([]);
    a['title'] = 'changed';
    expect(buildJsonSchema()['title']).not.toBe('changed');
  });

  it('matches the committed schema/bulwark.schema.json (run `npm run schema` after changing the schema)', () => {
    const committed = JSON.parse(readFileSync(new URL('../../schema/bulwark.schema.json', import.meta.url), 'utf8')) as unknown;
    expect(committed).toEqual(buildJsonSchema());
  });
});
