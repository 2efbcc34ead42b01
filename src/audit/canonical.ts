/**
 * RFC 8785 JSON Canonicalization Scheme (JCS): the one serialization every
 * audit hash and checkpoint signature is computed over, so a record hashes the
 * same whatever store it went through (a JSONL line, a SQLite TEXT column, a
 * PostgreSQL row) and whatever key order or whitespace that store produced.
 *
 * The RFC builds on ECMAScript's own JSON serialization of primitives, which is
 * why this file is short:
 * - numbers (§3.2.2.3): ECMAScript Number::toString, which is what `String(n)`
 *   is; -0 becomes `0`; NaN and ±Infinity are not JSON and are rejected;
 * - strings (§3.2.2.2): `JSON.stringify` escapes exactly what the RFC escapes
 *   (`"`, `\`, the two-letter forms \b \t \n \f \r, other controls as lower-case
 *   \u00xx) and nothing else — but it escapes lone surrogates where the RFC
 *   requires an error (I-JSON), so those are rejected first;
 * - object members (§3.2.3): sorted by their names as arrays of UTF-16 code
 *   units, which is what the relational operators on JS strings compare.
 *
 * Input is JSON data as `JSON.parse` yields it. `undefined` members are left out
 * (as `JSON.stringify` does) so an object with an optional field unset
 * canonicalizes like the parsed JSON text written from it.
 */

export class CanonicalizationError extends TypeError {
  override readonly name = 'CanonicalizationError';
  readonly code = 'ERR_AUDIT_CANONICAL';
}

/** Characters RFC 8785 (and JSON.stringify) escape; a string without any is written as is. */
// eslint-disable-next-line no-control-regex -- matching the control characters JSON escapes is the point
const NEEDS_ESCAPE = /["\\\u0000-\u001f]/;

// ES2024 `isWellFormed` (native in Node 20): true when the string has no lone surrogate.
const isWellFormed = (value: string): boolean => (value as unknown as { isWellFormed(): boolean }).isWellFormed();

function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function serializeString(value: string): string {
  if (!isWellFormed(value)) throw new CanonicalizationError('string contains a lone surrogate (not I-JSON)');
  // Most audit strings (ids, hashes, paths, codes) need no escaping: skip JSON.stringify's per-call overhead.
  return NEEDS_ESCAPE.test(value) ? JSON.stringify(value) : `"${value}"`;
}

function serializeNumber(value: number): string {
  if (!Number.isFinite(value)) throw new CanonicalizationError(`${value} is not a JSON number`);
  // Number::toString is the RFC's algorithm; `-0` prints as "0", as §3.2.2.3 requires.
  return String(value);
}

/**
 * Sorts member names in place by UTF-16 code units (§3.2.3). Objects are
 * small: an insertion sort there allocates nothing, where `Array.prototype.sort`
 * allocates its work state (hundreds of bytes) per call.
 */
export function sortCodeUnits(keys: string[]): string[] {
  if (keys.length > 16) return keys.sort(compareCodeUnits);
  for (let i = 1; i < keys.length; i++) {
    const key = keys[i] as string;
    let j = i - 1;
    while (j >= 0 && (keys[j] as string) > key) {
      keys[j + 1] = keys[j] as string;
      j--;
    }
    keys[j + 1] = key;
  }
  return keys;
}

/** Already-sorted keys are the common case for records built in key order: check before sorting. */
function sortedKeys(object: object): string[] {
  const keys = Object.keys(object);
  for (let i = 1; i < keys.length; i++) {
    if ((keys[i - 1] as string) > (keys[i] as string)) return sortCodeUnits(keys);
  }
  return keys;
}

function serialize(value: unknown, depth: number): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return serializeString(value);
    case 'number':
      return serializeNumber(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      break;
    default:
      throw new CanonicalizationError(`${typeof value} is not JSON data`);
  }
  if (depth > 64) throw new CanonicalizationError('nesting deeper than 64 levels');
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out += ',';
      const item: unknown = value[i];
      // As JSON.stringify does: a hole or undefined in an array is null.
      out += item === undefined ? 'null' : serialize(item, depth + 1);
    }
    return out + ']';
  }
  const record = value as Record<string, unknown>;
  let out = '{';
  let first = true;
  for (const key of sortedKeys(record)) {
    const member = record[key];
    if (member === undefined) continue;
    if (!first) out += ',';
    first = false;
    out += serializeString(key);
    out += ':';
    out += serialize(member, depth + 1);
  }
  return out + '}';
}

/** The RFC 8785 canonical form of JSON data, as a string (hash its UTF-8 bytes). */
export function canonicalize(value: unknown): string {
  if (value === undefined) throw new CanonicalizationError('undefined is not JSON data');
  return serialize(value, 0);
}
