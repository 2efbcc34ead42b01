/**
 * Masking: what an audit record may contain, decided before it is hashed and
 * written (a hash chain makes a leaked secret permanent — it cannot be edited
 * out later without breaking the chain).
 *
 * Three layers, in this order:
 * 1. `toJsonData` copies caller-supplied structures (business `details`, claims,
 *    decision details) into plain, bounded JSON data: no functions, cycles,
 *    bigints or lone surrogates (which RFC 8785 rejects), strings capped.
 * 2. Configured rules — by field path, header name, query parameter — replace
 *    values with `[redacted]`, an HMAC pseudonym or a partial mask.
 * 3. The never-raw sweep, which config cannot turn off: values under
 *    credential-named keys (`authorization`, `cookie`, `*_token`, `password`,
 *    `x-goog-api-key`…: see `isCredentialName`) are redacted unless a rule already hashed them (under
 *    plural names, `refresh_tokens`, `max_tokens`, only text: `isCredentialListName`), and anything shaped like a
 *    JWT or an `Authorization` credential (`Bearer …`, `Basic …`) is cut out of
 *    every string in the record, whatever field it is in.
 */
import { createHmac } from 'node:crypto';
import { canonicalize, sortCodeUnits } from './canonical.js';
import type { MaskAction, MaskingConfig, MaskRuleConfig } from './schema.js';
import { NEVER_RAW_HEADERS, STRUCTURAL_FIELDS } from './schema.js';
import { isCredentialListName, isCredentialName } from './sensitive.js';

export const REDACTED = '[redacted]';
export const REDACTED_JWT = '[redacted:jwt]';

const MAX_DEPTH = 12;
const MAX_STRING = 4096;
const MAX_ITEMS = 256;
/**
 * Objects and arrays copied per value, in all: depth and width alone let a cycle or a
 * graph of shared references (each visited once per path) cost minutes of a blocked loop.
 */
const MAX_NODES = 5_000;
let nodesLeft = MAX_NODES;
const LONE_SURROGATE = /\p{Cs}/gu;

/** A JWS/JWE compact serialization: base64url JSON header (`eyJ`), then 2 or 4 more dot-separated parts. */
const JWT = /eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?/g;
/**
 * An HTTP credential as it appears in Authorization-like headers or pasted into free text:
 * after `Bearer`, any token at all (a short one is still a secret); after the other scheme
 * names, which are also ordinary words ("Basic usage"), 8 characters or more.
 */
const CREDENTIAL =
  /\b(?:(Bearer)(\s+)[A-Za-z0-9._~+/=:-]+|(Basic|Digest|Negotiate|Token|Bot|ApiKey)(\s+)[A-Za-z0-9._~+/=:-]{8,})/gi;
/** Cheap pre-tests so the common string (no token) costs a scan or two. */
const MAYBE_TOKEN = /bearer|basic|digest|negotiate|token|bot|apikey/i;
const WHITESPACE = /\s/;
/** Either pre-test's trigger, in one scan: most strings have neither. */
const MAYBE_ANY = /eyJ|\s/;

const PLAIN_KEY = 0;
const CREDENTIAL_KEY = 1;
/** A plural credential name (`refresh_tokens`, `max_tokens`): its text is redacted, its numbers stay. */
const CREDENTIAL_LIST_KEY = 2;

// Keys repeat from event to event (`provider`, `policy`, header names): remember the verdict, boundedly.
const keyKinds = new Map<string, number>();

function keyKind(key: string): number {
  let kind = keyKinds.get(key);
  if (kind === undefined) {
    kind =
      NEVER_RAW_HEADERS.has(key.toLowerCase()) || isCredentialName(key)
        ? CREDENTIAL_KEY
        : isCredentialListName(key)
          ? CREDENTIAL_LIST_KEY
          : PLAIN_KEY;
    if (keyKinds.size < 4096) keyKinds.set(key, kind);
  }
  return kind;
}

export function isSensitiveKey(key: string): boolean {
  return keyKind(key) === CREDENTIAL_KEY;
}

// ES2024 `isWellFormed` (native in Node 20): no lone surrogate.
const isWellFormed = (value: string): boolean => (value as unknown as { isWellFormed(): boolean }).isWellFormed();

function wellFormed(value: string): string {
  return isWellFormed(value) ? value : value.replace(LONE_SURROGATE, '\uFFFD');
}

/** Token-shaped substrings cut out of free text; the rest of the string stays (a path, a message). */
export function scrubTokens(value: string): string {
  // "Bearer x" (8 characters) is the shortest thing to cut.
  if (value.length < 8 || !MAYBE_ANY.test(value)) return value;
  // Cheap pre-tests: a JWT has `eyJ`; a credential has whitespace after its scheme name.
  const maybeJwt = value.includes('eyJ');
  if (!maybeJwt && !(WHITESPACE.test(value) && MAYBE_TOKEN.test(value))) return value;
  JWT.lastIndex = 0;
  CREDENTIAL.lastIndex = 0;
  return value
    .replace(JWT, REDACTED_JWT)
    .replace(
      CREDENTIAL,
      (_m, bearer: string | undefined, bearerSpace: string | undefined, scheme: string | undefined, space: string | undefined) =>
        `${bearer ?? scheme ?? ''}${bearerSpace ?? space ?? ''}${REDACTED}`,
    );
}

/**
 * Whether `for…in` visits exactly the object's own enumerable keys, in
 * `Object.keys` order: a plain object, nothing enumerable added to
 * Object.prototype. `for…in` with a load of each key walks V8's enum cache,
 * several times cheaper than `Object.keys` plus a keyed load per key — the
 * bulk of masking a record.
 */
function ownKeysOnly(object: object): boolean {
  const proto: unknown = Object.getPrototypeOf(object);
  if (proto === null) return true;
  if (proto !== Object.prototype) return false;
  for (const _ in proto) return false;
  return true;
}

function capString(value: string): string {
  return value.length > MAX_STRING ? `${value.slice(0, MAX_STRING)}…[truncated]` : value;
}

/**
 * Caller data as plain, bounded JSON data. Never throws: whatever an application
 * passes, the event is written (an audit event lost to a `toJSON` bug is worse
 * than one with a `[unsupported]` field).
 */
export function toJsonData(value: unknown, depth = 0): unknown {
  if (depth === 0) nodesLeft = MAX_NODES;
  switch (typeof value) {
    case 'string':
      return capString(wellFormed(value));
    case 'number':
      return Number.isFinite(value) ? value : null;
    case 'boolean':
      return value;
    case 'bigint':
      return value.toString();
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
    default:
      break;
  }
  if (value === null) return null;
  if (depth >= MAX_DEPTH) return '[too deep]';
  if (--nodesLeft < 0) return '[too large]';
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return '[binary]';
  if (value instanceof Map || value instanceof Set || value instanceof Promise || value instanceof WeakMap)
    return '[unsupported]';
  if (Array.isArray(value)) {
    const out: unknown[] = [];
    const n = Math.min(value.length, MAX_ITEMS);
    for (let i = 0; i < n; i++) {
      const item = toJsonData(value[i], depth + 1);
      out.push(item === undefined ? null : item);
    }
    if (value.length > MAX_ITEMS) out.push(`[${value.length - MAX_ITEMS} more]`);
    return out;
  }
  const out: Record<string, unknown> = {};
  let count = 0;
  if (ownKeysOnly(value as object)) {
    const object = value as Record<string, unknown>;
    for (const key in object) {
      if (++count > MAX_ITEMS) {
        out['…'] = '[more keys]';
        break;
      }
      let item: unknown;
      try {
        item = toJsonData(object[key], depth + 1);
      } catch {
        item = '[unreadable]'; // a throwing getter
      }
      if (item !== undefined) setKey(out, wellFormed(key), item);
    }
    return out;
  }
  for (const key of Object.keys(value as object)) {
    if (++count > MAX_ITEMS) {
      out['…'] = '[more keys]';
      break;
    }
    let item: unknown;
    try {
      item = toJsonData((value as Record<string, unknown>)[key], depth + 1);
    } catch {
      item = '[unreadable]'; // a throwing getter
    }
    if (item !== undefined) setKey(out, wellFormed(key), item);
  }
  return out;
}

/** `out[key] = value`, except that a `__proto__` key stays a key (assigning it would set the prototype). */
function setKey(out: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  else out[key] = value;
}

/** Objects hash by their canonical form, so key order does not change the pseudonym. */
function stableText(value: object): string {
  try {
    return canonicalize(value);
  } catch {
    return JSON.stringify(value) ?? '';
  }
}

/** A value a rule already masked: the sweep unwraps it instead of redacting it again. */
class Masked {
  constructor(readonly value: string) {}
}

interface Rule {
  readonly action: MaskAction;
  readonly keep: number;
}

interface FieldRule extends Rule {
  readonly segments: readonly string[];
}

export interface CompiledMasking {
  readonly fields: readonly FieldRule[];
  readonly headers: ReadonlyMap<string, Rule>;
  readonly query: ReadonlyMap<string, Rule>;
  readonly hmacKey: Buffer | null;
}

function toRule(rule: MaskRuleConfig): Rule {
  return typeof rule === 'string' ? { action: rule, keep: 4 } : { action: rule.action, keep: rule.keep ?? 4 };
}

/** Rules compiled once per config; a `hash` rule without a key is a config error caught by `auditChecks`. */
export function compileMasking(config: MaskingConfig | undefined): CompiledMasking {
  const headers = new Map<string, Rule>();
  for (const [name, rule] of Object.entries(config?.headers ?? {})) headers.set(name.toLowerCase(), toRule(rule));
  const query = new Map<string, Rule>();
  for (const [name, rule] of Object.entries(config?.query ?? {})) query.set(name, toRule(rule));
  return {
    fields: (config?.fields ?? []).map((f) => ({ segments: f.path.split('.'), action: f.action, keep: f.keep ?? 4 })),
    headers,
    query,
    hmacKey: config?.hmacKey === undefined ? null : Buffer.from(config.hmacKey, 'utf8'),
  };
}

const PSEUDONYM_CACHE = 8192;

export class Masker {
  readonly #rules: CompiledMasking;
  readonly #pseudonyms = new Map<string, string>();

  constructor(rules: CompiledMasking) {
    this.#rules = rules;
  }

  /** `hmac:` + 22 base64url characters (132 bits): stable per key, useless without it. */
  pseudonym(value: string): string {
    const key = this.#rules.hmacKey;
    // auditChecks refuses `hash` without a key; should one slip through, fail closed.
    if (key === null) return REDACTED;
    // Hashed values repeat (client IPs, e-mail addresses): an HMAC costs microseconds, a lookup nanoseconds.
    let pseudonym = this.#pseudonyms.get(value);
    if (pseudonym === undefined) {
      pseudonym = `hmac:${createHmac('sha256', key).update(value, 'utf8').digest('base64url').slice(0, 22)}`;
      if (this.#pseudonyms.size >= PSEUDONYM_CACHE) this.#pseudonyms.clear();
      this.#pseudonyms.set(value, pseudonym);
    }
    return pseudonym;
  }

  #apply(rule: Rule, key: string, value: unknown): Masked {
    if (value === null || value === undefined) return new Masked(REDACTED);
    // Well-formed first: a partial mask keeps the tail as is, and the sweep does not scrub masked values again.
    const text = wellFormed(typeof value === 'string' ? value : typeof value === 'object' ? stableText(value) : String(value));
    switch (rule.action) {
      case 'hash':
        return new Masked(this.pseudonym(text));
      case 'partial': {
        // A credential is never partly shown: its tail is still part of the secret.
        if (keyKind(key) !== PLAIN_KEY || typeof value === 'object') return new Masked(REDACTED);
        const chars = Array.from(text); // code points: never split a surrogate pair
        if (chars.length < 2 * rule.keep) return new Masked(REDACTED);
        return new Masked('*'.repeat(chars.length - rule.keep) + chars.slice(-rule.keep).join(''));
      }
      default:
        return new Masked(REDACTED);
    }
  }

  #applyPath(node: unknown, segments: readonly string[], index: number, rule: Rule): void {
    if (node === null || typeof node !== 'object' || node instanceof Masked) return;
    const segment = segments[index] as string;
    const last = index === segments.length - 1;
    const container = node as Record<string, unknown>;
    const keys =
      segment === '*' ? Object.keys(container) : Object.prototype.hasOwnProperty.call(container, segment) ? [segment] : [];
    for (const key of keys) {
      // The record's own fields (id, seq, chain…): auditChecks refuses rules naming them; a library
      // caller's unchecked config must not break the chain or a store either.
      if (index === 0 && STRUCTURAL_FIELDS.has(key)) continue;
      if (last) {
        // Nothing to hide in an absent value (an anonymous request's subject): null stays null, not "[redacted]".
        const value = container[key];
        if (value !== null && value !== undefined) container[key] = this.#apply(rule, key, value);
      } else this.#applyPath(container[key], segments, index + 1, rule);
    }
  }

  /**
   * A top-level record field (`subject`, `tenant`, `clientIp`) as the field rules mask it,
   * for the values that also leave in spans and logs; null when no rule covers the field.
   */
  field(name: string, value: string): string | null {
    for (const rule of this.#rules.fields) {
      if (rule.segments.length === 1 && (rule.segments[0] === name || rule.segments[0] === '*'))
        return this.#apply(rule, name, value).value;
    }
    return null;
  }

  /**
   * Masks a record in place (a fresh object built for writing, never caller
   * data): configured rules first, then the never-raw sweep over everything.
   * The record's own keys must already be in canonical order (as the log
   * builds them); nested objects are reordered as needed. Returns whether
   * JSON.stringify of the result is its canonical form (false when an object
   * has integer-like keys, which JS cannot order canonically).
   */
  apply(record: Record<string, unknown>): boolean {
    const rules = this.#rules;
    const headers = record['headers'];
    if (rules.headers.size > 0 && headers !== null && typeof headers === 'object') {
      const h = headers as Record<string, unknown>;
      for (const name of Object.keys(h)) {
        const rule = rules.headers.get(name.toLowerCase());
        if (rule !== undefined) h[name] = this.#apply(rule, name, h[name]);
      }
    }
    const query = record['query'];
    if (rules.query.size > 0 && query !== null && typeof query === 'object') {
      const q = query as Record<string, unknown>;
      for (const name of Object.keys(q)) {
        const rule = rules.query.get(name);
        if (rule !== undefined) q[name] = this.#apply(rule, name, q[name]);
      }
    }
    for (const rule of rules.fields) this.#applyPath(record, rule.segments, 0, rule);
    // Top level: records are built with their keys in canonical order, so this keeps the same object.
    integerKeySeen = false;
    // Store only what changed: a keyed store with ever-different keys is slow, and most values stay.
    if (ownKeysOnly(record)) {
      for (const key in record) {
        const value = record[key];
        const swept = sweep(value, key, 0);
        if (swept !== value) record[key] = swept;
      }
    } else {
      for (const key of Object.keys(record)) {
        const value = record[key];
        const swept = sweep(value, key, 0);
        if (swept !== value) record[key] = swept;
      }
    }
    return !integerKeySeen;
  }
}

/**
 * The never-raw pass: unwrap masked values, redact credential-named keys,
 * scrub token-shaped text. It also leaves every value *canonical-ready* —
 * strings well-formed, numbers finite, no undefined in arrays, each object's
 * keys in UTF-16 code-unit order — so `JSON.stringify` of the result is its RFC
 * 8785 form (verify recomputes with the real canonicalizer; tests hold the two equal).
 */
function sweep(value: unknown, key: string, depth: number): unknown {
  if (value instanceof Masked) return value.value;
  switch (typeof value) {
    case 'string':
      if (depth > 0 && keyKind(key) !== PLAIN_KEY) return REDACTED;
      return scrubTokens(wellFormed(value));
    case 'number':
      if (depth > 0 && keyKind(key) === CREDENTIAL_KEY) return REDACTED; // a numeric PIN or secret is still one
      return Number.isFinite(value) ? value : null;
    case 'boolean':
      return value;
    case 'object':
      break;
    default:
      return undefined; // bigint, function, symbol, undefined: not JSON data (toJsonData already dropped them)
  }
  if (value === null) return null;
  if (depth > 0) {
    // A list under a plural name is swept item by item: its text goes, its counts stay.
    const kind = keyKind(key);
    if (kind === CREDENTIAL_KEY || (kind === CREDENTIAL_LIST_KEY && !Array.isArray(value))) return REDACTED;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      const swept = sweep(item, key, depth + 1) ?? null;
      if (swept !== item) value[i] = swept;
    }
    return value;
  }
  return sweepObject(value as Record<string, unknown>, depth);
}

/**
 * JS objects enumerate integer-like keys ("0", "42") first, in numeric order,
 * whatever order they were inserted in — so an object holding one cannot be
 * laid out in RFC 8785 order, and the record must go through the real
 * canonicalizer. Set by the sweep, read by `Masker.apply`.
 */
let integerKeySeen = false;
const INTEGER_KEY = /^(?:0|[1-9][0-9]{0,9})$/;

function isIntegerKey(key: string): boolean {
  const c = key.charCodeAt(0);
  return c >= 0x30 && c <= 0x39 && INTEGER_KEY.test(key) && Number(key) < 4_294_967_295;
}

function sweepObject(object: Record<string, unknown>, depth: number): Record<string, unknown> {
  if (!ownKeysOnly(object)) return sweepKeys(object, Object.keys(object), depth);
  // Sortedness first (a second walk sweeps): an unsorted object is rebuilt, and sweeping is not
  // idempotent (a masked value unwraps, then would be redacted under a credential-named key).
  let sorted = true;
  let previous: string | undefined;
  for (const k in object) {
    if (!integerKeySeen && isIntegerKey(k)) integerKeySeen = true;
    if (previous !== undefined && !(previous < k)) sorted = false;
    else if (!isWellFormed(k)) sorted = false; // a lone surrogate in a key: rebuilt with the key cleaned
    previous = k;
  }
  if (!sorted) return sweepKeys(object, Object.keys(object), depth);
  for (const k in object) {
    const member = object[k];
    const swept = sweep(member, k, depth + 1);
    if (swept !== member) object[k] = swept;
  }
  return object;
}

function sweepKeys(object: Record<string, unknown>, keys: string[], depth: number): Record<string, unknown> {
  if (!integerKeySeen) {
    for (const k of keys) {
      if (isIntegerKey(k)) {
        integerKeySeen = true;
        break;
      }
    }
  }
  let sorted = true;
  for (let i = 1; i < keys.length && sorted; i++) sorted = (keys[i - 1] as string) < (keys[i] as string);
  let wellFormedKeys = true;
  for (let i = 0; i < keys.length && wellFormedKeys; i++) wellFormedKeys = isWellFormed(keys[i] as string);
  if (!wellFormedKeys) return sweepCleanKeys(object, keys, depth);
  if (sorted) {
    for (const k of keys) {
      const member = object[k];
      const swept = sweep(member, k, depth + 1);
      if (swept !== member) object[k] = swept;
    }
    return object;
  }
  // Caller data comes in any order: rebuild in canonical order (records we build are already sorted).
  const out: Record<string, unknown> = {};
  for (const k of sortCodeUnits(keys)) setKey(out, k, sweep(object[k], k, depth + 1));
  return out;
}

/**
 * An object with a lone surrogate in a key (a header or query name from a library caller;
 * request inputs do not go through `toJsonData`): rebuilt with each key made well-formed as
 * values are (U+FFFD), in canonical order — `JSON.stringify` would escape the surrogate where
 * the canonicalizer refuses it, and verify would see a hash mismatch. Keys that clean to the
 * same text keep the value of the first in code-unit order of the original keys.
 */
function sweepCleanKeys(object: Record<string, unknown>, keys: string[], depth: number): Record<string, unknown> {
  const byClean = new Map<string, string>();
  for (const k of sortCodeUnits(keys)) {
    const clean = wellFormed(k);
    if (!byClean.has(clean)) byClean.set(clean, k);
  }
  const out: Record<string, unknown> = {};
  for (const clean of sortCodeUnits([...byClean.keys()])) {
    if (!integerKeySeen && isIntegerKey(clean)) integerKeySeen = true;
    setKey(out, clean, sweep(object[byClean.get(clean) as string], clean, depth + 1));
  }
  return out;
}
