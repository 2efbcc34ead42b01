/**
 * The `rateLimits` section: stores, policies and global caps. TypeBox objects are
 * the source of truth (types via `Static<>`, JSON Schema for the reference);
 * `limitsChecks` adds the rules a schema cannot say (references, exclusive
 * fields, descriptor syntax). Every object is closed: a misspelt field must be an
 * error, never a silently dropped (and so silently widened) limit.
 *
 * ```yaml
 * rateLimits:
 *   keySecret: ${BULWARK_RATELIMIT_KEY_SECRET}   # optional; same value on every instance
 *   stores:
 *     memory: { memory: { maxKeys: 100000 } }    # optional: tunes the built-in `memory` store
 *     shared:
 *       redis: { url: redis://127.0.0.1:6379, keyPrefix: 'bulwark:', timeoutMs: 50, instances: 4,
 *                breaker: { failures: 5, resetMs: 2000 }, lease: { enabled: true, maxBatch: 50 } }
 *   policies:
 *     - id: per-client-read
 *       store: memory                 # default; or a named store
 *       rate: 10
 *       per: 1s                       # or periodMs: 1000
 *       burst: 10                     # default: rate
 *       key: [route, client_ip]
 *       tiers: { claim: tier, limits: { gold: { rate: 100, burst: 200 } } }
 *       overrides: { tenants: { acme: { rate: 500, burst: 1000 } } }
 *       mode: enforce                 # or shadow
 *       onStoreFailure: open          # or closed
 *     - id: orders-concurrency
 *       concurrency: 20
 *       key: [tenant]
 *   global: { maxConnections: 10000, maxConcurrentStreams: 5000 }
 * ```
 */
import { Type, type Static, type TObject, type TProperties, type ObjectOptions } from '@sinclair/typebox';

function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

const Name = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$',
  description: 'Identifier: letters, digits, `_`, `.`, `-`.',
});

const DURATION_PATTERN = '^[1-9][0-9]{0,9}(ms|s|m|h|d)$';
const Duration = Type.String({
  pattern: DURATION_PATTERN,
  description: 'A duration: a positive integer and a unit, `ms`, `s`, `m`, `h` or `d` (`1s`, `500ms`, `1m`).',
});

const Rate = Type.Integer({ minimum: 1, maximum: 1_000_000_000, description: 'Requests admitted per period, sustained.' });
const Burst = Type.Integer({
  minimum: 1,
  maximum: 1_000_000_000,
  description: 'Bucket size: requests admitted at once after a quiet spell. Defaults to `rate`.',
});
const PeriodMs = Type.Integer({
  minimum: 1,
  maximum: 31_536_000_000,
  description: 'The period of `rate` in milliseconds (alternative to `per`).',
});
const Concurrency = Type.Integer({
  minimum: 1,
  maximum: 10_000_000,
  description: 'Most requests in flight at once per key (from admission until the response is done or aborted).',
});

export const LeaseSchema = Closed(
  {
    enabled: Type.Optional(
      Type.Boolean({
        default: true,
        description: 'Take tokens in batches and serve them locally (fewer store round trips, same limit).',
      }),
    ),
    maxBatch: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 10_000,
        default: 50,
        description:
          'Largest batch one instance takes at a time; the batch also follows recent demand and never exceeds the burst.',
      }),
    ),
    ttlMs: Type.Optional(
      Type.Integer({
        minimum: 10,
        maximum: 60_000,
        default: 500,
        description:
          'Leased tokens unused after this long go back to the store. Bounds how far a window can overshoot (rate × ttl at worst).',
      }),
    ),
    holdMs: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 60_000,
        default: 250,
        description: "Batch sizing: a batch covers about this much of this instance's recent demand for the key.",
      }),
    ),
  },
  { description: 'Token leasing: how an instance borrows tokens from a shared store.' },
);

export const BreakerSchema = Closed(
  {
    failures: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 1000,
        default: 5,
        description: 'Consecutive store failures (errors or timeouts) that open the breaker.',
      }),
    ),
    resetMs: Type.Optional(
      Type.Integer({
        minimum: 10,
        maximum: 600_000,
        default: 2000,
        description: 'How long the breaker stays open before a background probe tries the store again.',
      }),
    ),
  },
  { description: 'Circuit breaker around the store: while open, decisions use the failure mode without waiting on the store.' },
);

export const MemoryStoreSchema = Closed(
  {
    maxKeys: Type.Optional(
      Type.Integer({
        minimum: 16,
        maximum: 50_000_000,
        default: 100_000,
        description:
          'Most buckets kept (least recently used evicted first). An evicted bucket that still holds debt leaves it in the `ghostSlots` table, so eviction never refills a bucket.',
      }),
    ),
    ghostSlots: Type.Optional(
      Type.Integer({
        minimum: 1024,
        maximum: 67_108_864,
        default: 65_536,
        description:
          'Size of the table that keeps the debt of evicted buckets (8 bytes a slot). Collisions can only make a new key start partly drained, never fuller.',
      }),
    ),
    lease: Type.Optional(LeaseSchema),
  },
  {
    description:
      'In-process buckets. With several workers they live in the primary process and workers lease tokens over IPC, so the limit holds for the whole instance.',
  },
);

export const RedisStoreSchema = Closed(
  {
    url: Type.String({
      pattern: '^rediss?://',
      description: 'Redis URL: `redis://[user:password@]host:port[/db]` or `rediss://` (TLS).',
    }),
    keyPrefix: Type.Optional(
      Type.String({
        maxLength: 64,
        default: 'bulwark:',
        description: 'Prefix of every key this store writes.',
      }),
    ),
    timeoutMs: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 10_000,
        default: 50,
        description: 'Longest wait for one store command; beyond it the decision uses the failure mode.',
      }),
    ),
    connectTimeoutMs: Type.Optional(
      Type.Integer({ minimum: 10, maximum: 60_000, default: 1000, description: 'Connect timeout (ms).' }),
    ),
    instances: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 100_000,
        default: 1,
        description:
          "How many instances share this store. While it is unreachable, `onStoreFailure: open` limits each instance to 1/instances of each policy's rate and burst.",
      }),
    ),
    concurrencyTtlMs: Type.Optional(
      Type.Integer({
        minimum: 1000,
        maximum: 86_400_000,
        default: 300_000,
        description: 'A concurrency slot not released within this time (its instance died) is freed by the store.',
      }),
    ),
    breaker: Type.Optional(BreakerSchema),
    lease: Type.Optional(LeaseSchema),
  },
  { description: 'Buckets shared by every instance through Redis (atomic Lua scripts, cluster-safe keys).' },
);

export const StoreSchema = Closed(
  {
    memory: Type.Optional(MemoryStoreSchema),
    redis: Type.Optional(RedisStoreSchema),
  },
  { description: 'Exactly one of `memory` or `redis`.' },
);

export const LimitOverrideSchema = Closed(
  {
    rate: Type.Optional(Rate),
    burst: Type.Optional(Burst),
    per: Type.Optional(Duration),
    periodMs: Type.Optional(PeriodMs),
    concurrency: Type.Optional(Concurrency),
  },
  {
    minProperties: 1,
    description:
      "Replaces some of the policy's limits; unset fields keep the policy's. A changed `rate` without `burst` sets burst = rate.",
  },
);

export const TiersSchema = Closed(
  {
    claim: Type.String({
      pattern: '^[A-Za-z0-9_$:-]+(\\.[A-Za-z0-9_$:-]+)*$',
      description: 'Claim (dotted path) of the verified identity whose value names the tier, e.g. `tier` or `plan.level`.',
    }),
    limits: Type.Record(Type.String({ minLength: 1, maxLength: 64 }), LimitOverrideSchema, {
      minProperties: 1,
      description: 'Limits per tier value (`gold`, `silver`, …).',
    }),
    default: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 64,
        description: "Tier for requests without the claim or with an unlisted value; the policy's own limits when absent.",
      }),
    ),
  },
  { description: 'QoS tiers: a verified claim selects the limits.' },
);

export const PolicySchema = Closed({
  id: Name,
  description: Type.Optional(Type.String({ maxLength: 500, description: 'Free text for people.' })),
  store: Type.Optional(
    Type.String({
      pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$',
      default: 'memory',
      description: 'Store holding the buckets: `memory` (built in) or a name under `stores`.',
    }),
  ),
  algorithm: Type.Optional(
    Type.Union([Type.Literal('gcra'), Type.Literal('concurrency')], {
      description:
        '`gcra`: a token bucket (rate + burst). `concurrency`: a cap on requests in flight. Inferred from `rate` / `concurrency` when absent.',
    }),
  ),
  rate: Type.Optional(Rate),
  per: Type.Optional(Duration),
  periodMs: Type.Optional(PeriodMs),
  burst: Type.Optional(Burst),
  concurrency: Type.Optional(Concurrency),
  key: Type.Optional(
    Type.Array(Type.String({ minLength: 1, maxLength: 200 }), {
      maxItems: 8,
      uniqueItems: true,
      default: [],
      description:
        'Descriptors composing the bucket key: `route`, `method` (HTTP method, or `/pkg.Service/Method` for gRPC), `tenant`, `subject`, `client_ip`, `header:NAME`, `claim:PATH`. Empty: one bucket for all requests. A missing value is the empty string: those requests share one bucket (never skip the limit).',
    }),
  ),
  tiers: Type.Optional(TiersSchema),
  overrides: Type.Optional(
    Closed(
      {
        tenants: Type.Record(Type.String({ minLength: 1, maxLength: 128 }), LimitOverrideSchema, {
          description: "Limits for a tenant (`identity.tenant`); wins over the tier's.",
        }),
      },
      { description: 'Per-tenant limits.' },
    ),
  ),
  mode: Type.Optional(
    Type.Union([Type.Literal('enforce'), Type.Literal('shadow')], {
      default: 'enforce',
      description: '`enforce`, or `shadow`: counted and recorded (`shadow_deny`) but never denies.',
    }),
  ),
  onStoreFailure: Type.Optional(
    Type.Union([Type.Literal('open'), Type.Literal('closed')], {
      default: 'open',
      description:
        "When the store is unreachable: `open` limits with a local bucket sized to this instance's share, `closed` answers 503 `ratelimit.store_unavailable`.",
    }),
  ),
});

export const GlobalLimitsSchema = Closed(
  {
    maxConnections: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 10_000_000, description: 'Most client connections open at once, per instance.' }),
    ),
    maxConcurrentStreams: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 10_000_000,
        description: 'Most requests (HTTP/2 streams included) in flight at once, per instance; beyond it 503.',
      }),
    ),
  },
  { description: 'Caps for the whole instance, split evenly between its workers.' },
);

export const RateLimitsSchema = Closed(
  {
    keySecret: Type.Optional(
      Type.String({
        minLength: 16,
        description:
          'Secret mixed into key hashes (Redis keys, the `key` of decisions). Give every instance the same value; when absent, decision keys use a per-process secret and Redis keys an unkeyed hash.',
      }),
    ),
    stores: Type.Optional(
      Type.Record(Name, StoreSchema, {
        additionalProperties: false,
        default: {},
        description: 'Named stores. `memory` exists without being declared; declare it to tune it.',
      }),
    ),
    policies: Type.Optional(Type.Array(PolicySchema, { default: [], description: 'Limit policies, referenced by id.' })),
    global: Type.Optional(GlobalLimitsSchema),
  },
  { description: 'Rate limits, concurrency limits and global caps.' },
);

export type LeaseConfig = Static<typeof LeaseSchema>;
export type BreakerConfig = Static<typeof BreakerSchema>;
export type MemoryStoreConfig = Static<typeof MemoryStoreSchema>;
export type RedisStoreConfig = Static<typeof RedisStoreSchema>;
export type StoreConfig = Static<typeof StoreSchema>;
export type LimitOverrideConfig = Static<typeof LimitOverrideSchema>;
export type TiersConfig = Static<typeof TiersSchema>;
export type PolicyConfig = Static<typeof PolicySchema>;
export type GlobalLimitsConfig = Static<typeof GlobalLimitsSchema>;
export type RateLimitsConfig = Static<typeof RateLimitsSchema>;

const UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION = new RegExp(DURATION_PATTERN);

/** `1s` → 1000; NaN when the text is not a duration. */
export function parseDuration(text: string): number {
  if (!DURATION.test(text)) return Number.NaN;
  const unit = text.endsWith('ms') ? 'ms' : text.slice(-1);
  return Number(text.slice(0, text.length - unit.length)) * UNITS[unit]!;
}

/** The built-in store that exists without being declared. */
export const BUILTIN_STORE = 'memory';

export type Descriptor =
  | { readonly kind: 'route' | 'method' | 'tenant' | 'subject' | 'client_ip' }
  | { readonly kind: 'header'; readonly name: string }
  | { readonly kind: 'claim'; readonly path: readonly string[] };

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const CLAIM_PATH = /^[A-Za-z0-9_$:-]+(\.[A-Za-z0-9_$:-]+)*$/;

/** Parses one key descriptor; a string is the reason it is invalid. */
export function parseDescriptor(text: string): Descriptor | string {
  switch (text) {
    case 'route':
    case 'method':
    case 'tenant':
    case 'subject':
    case 'client_ip':
      return { kind: text };
  }
  if (text.startsWith('header:')) {
    const name = text.slice(7);
    if (!HEADER_NAME.test(name)) return `"${text}": header name must be a token (letters, digits, -)`;
    return { kind: 'header', name: name.toLowerCase() };
  }
  if (text.startsWith('claim:')) {
    const path = text.slice(6);
    if (!CLAIM_PATH.test(path)) return `"${text}": claim path must be dot-separated names`;
    return { kind: 'claim', path: path.split('.') };
  }
  return `unknown descriptor "${text}" (route, method, tenant, subject, client_ip, header:NAME, claim:PATH)`;
}

export type Report = (path: (string | number)[], code: string, message: string, severity?: 'error' | 'warning') => void;

/** Redis keeps TATs in whole microseconds: a faster rate would round to nothing. */
const MIN_EMISSION_MS = 0.001;

/**
 * Semantic checks of a `rateLimits` section; paths are reported from the
 * document root (`rateLimits.policies[0].store`), so the loader can point at
 * file:line. Every rule here is one a typo could otherwise turn into a wider limit.
 */
export function limitsChecks(config: RateLimitsConfig | undefined, report: Report): void {
  if (config === undefined) return;
  const base = 'rateLimits';
  const stores = config.stores ?? {};
  for (const [name, store] of Object.entries(stores)) {
    const kinds = (store.memory === undefined ? 0 : 1) + (store.redis === undefined ? 0 : 1);
    if (kinds !== 1) report([base, 'stores', name], 'config.store_kind', `store "${name}" needs exactly one of memory or redis`);
    else if (name === BUILTIN_STORE && store.redis !== undefined)
      report(
        [base, 'stores', name],
        'config.store_kind',
        `store "memory" is the built-in memory store; name the Redis store otherwise`,
      );
  }
  const seen = new Map<string, number>();
  (config.policies ?? []).forEach((policy, i) => {
    const at = (...rest: (string | number)[]) => [base, 'policies', i, ...rest];
    const first = seen.get(policy.id);
    if (first === undefined) seen.set(policy.id, i);
    else report(at('id'), 'config.duplicate_id', `duplicate policy id "${policy.id}" (also rateLimits.policies[${first}])`);

    const storeName = policy.store ?? BUILTIN_STORE;
    if (storeName !== BUILTIN_STORE && stores[storeName] === undefined) {
      const known = [BUILTIN_STORE, ...Object.keys(stores).filter((s) => s !== BUILTIN_STORE)];
      report(at('store'), 'config.unknown_store', `unknown store "${storeName}" (known: ${known.join(', ')})`);
    }

    const isRate = policy.rate !== undefined;
    const isConcurrency = policy.concurrency !== undefined;
    const algorithm = policy.algorithm ?? (isConcurrency && !isRate ? 'concurrency' : 'gcra');
    if (isRate === isConcurrency) {
      report(at(), 'config.policy_kind', `policy "${policy.id}" needs exactly one of rate (token bucket) or concurrency`);
    } else if (algorithm === 'gcra' && !isRate) {
      report(at('algorithm'), 'config.policy_kind', 'algorithm gcra needs rate (and per or periodMs)');
    } else if (algorithm === 'concurrency' && !isConcurrency) {
      report(at('algorithm'), 'config.policy_kind', 'algorithm concurrency needs concurrency');
    }
    if (isConcurrency && (policy.per !== undefined || policy.periodMs !== undefined || policy.burst !== undefined)) {
      report(at(), 'config.policy_kind', 'a concurrency policy takes no per, periodMs or burst');
    }
    checkLimitShape(policy, at, report, isConcurrency ? 'concurrency' : 'gcra');

    const kinds = new Set<string>();
    policy.key?.forEach((text, k) => {
      const parsed = parseDescriptor(text);
      if (typeof parsed === 'string') report(at('key', k), 'config.bad_descriptor', parsed);
      else kinds.add(parsed.kind);
    });
    // A header the client sets freely, with nothing the client cannot choose: every new value is a fresh bucket.
    if (kinds.has('header') && !['client_ip', 'subject', 'tenant', 'claim'].some((k) => kinds.has(k))) {
      report(
        at('key'),
        'config.client_chosen_key',
        'a key made only of request headers lets a client pick a fresh bucket per value; add client_ip, subject, tenant or a claim',
        'warning',
      );
    }

    if (policy.tiers !== undefined) {
      for (const [tier, limits] of Object.entries(policy.tiers.limits)) {
        checkLimitShape(
          limits,
          (...rest) => at('tiers', 'limits', tier, ...rest),
          report,
          isConcurrency ? 'concurrency' : 'gcra',
        );
      }
      const def = policy.tiers.default;
      if (def !== undefined && policy.tiers.limits[def] === undefined) {
        report(at('tiers', 'default'), 'config.unknown_tier', `default tier "${def}" is not one of tiers.limits`);
      }
    }
    for (const [tenant, limits] of Object.entries(policy.overrides?.tenants ?? {})) {
      checkLimitShape(
        limits,
        (...rest) => at('overrides', 'tenants', tenant, ...rest),
        report,
        isConcurrency ? 'concurrency' : 'gcra',
      );
    }
  });
}

function checkLimitShape(
  limits: LimitOverrideConfig,
  at: (...rest: (string | number)[]) => (string | number)[],
  report: Report,
  kind: 'gcra' | 'concurrency',
): void {
  if (limits.per !== undefined && limits.periodMs !== undefined) {
    report(at('periodMs'), 'config.period_conflict', 'set per or periodMs, not both');
  }
  if (kind === 'concurrency') {
    if (limits.rate !== undefined || limits.burst !== undefined || limits.per !== undefined || limits.periodMs !== undefined)
      report(at(), 'config.policy_kind', 'a concurrency limit takes only concurrency');
    return;
  }
  if (limits.concurrency !== undefined) report(at('concurrency'), 'config.policy_kind', 'a rate limit takes no concurrency');
  if (limits.burst !== undefined && limits.burst < 1) report(at('burst'), 'config.bad_burst', 'burst must be at least 1');
  const periodMs = limits.periodMs ?? (limits.per === undefined ? 1000 : parseDuration(limits.per));
  if (limits.rate !== undefined && periodMs / limits.rate < MIN_EMISSION_MS) {
    report(at('rate'), 'config.rate_too_high', 'more than one request per microsecond cannot be tracked; use a shorter period');
  }
}

/** Route-side check: every referenced policy exists. `path` points at the route's list of policy ids. */
export function policyReferenceChecks(
  ids: readonly string[],
  config: RateLimitsConfig | undefined,
  path: (string | number)[],
  report: Report,
): void {
  const known = new Set((config?.policies ?? []).map((p) => p.id));
  ids.forEach((id, i) => {
    if (!known.has(id)) {
      const list = [...known];
      report(
        [...path, i],
        'config.unknown_policy',
        `unknown rate limit policy "${id}"${list.length > 0 ? ` (known: ${list.join(', ')})` : ''}`,
      );
    }
  });
}
