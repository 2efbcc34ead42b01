/**
 * The `audit` section. TypeBox objects are the source of truth (types via
 * `Static<>`, JSON Schema for the reference); `auditChecks` adds what a schema
 * cannot say (cross-field rules, key material that must parse). Every object is
 * closed: a misspelt masking rule must be an error, never a silently unmasked field.
 *
 * ```yaml
 * audit:
 *   enabled: true
 *   durability: durable            # durable: accepted = fsynced to the WAL; fast: accepted = written
 *   whenFull: block                # block: 503 audit.unavailable; drop: count + gap marker in the chain
 *   queue: { maxEvents: 65536 }
 *   wal: { dir: .bulwark/audit, segmentBytes: 16777216, fsyncIntervalMs: 0, maxBytes: 1073741824 }
 *   masking:
 *     hmacKey: ${AUDIT_HMAC_KEY}
 *     fields:  [{ path: claims.email, action: hash }, { path: details.card, action: partial, keep: 4 }]
 *     headers: { x-api-key: redact }
 *     query:   { email: hash }
 *   extraFields: { claims: [email, org.id], headers: [x-client-version], query: [page] }
 *   chain: { checkpointEvery: 1000, checkpointIntervalMs: 60000, signingKey: ./audit-ed25519.pem }
 *   sinks:
 *     - file: { path: '/var/log/bulwark/audit-{slot}.jsonl', rotateBytes: 104857600 }
 *     - sqlite: { path: /var/lib/bulwark/audit.db }
 *     - postgres: { url: '${AUDIT_PG_URL}', table: audit_events }
 *     - webhook: { url: https://siem.example/ingest, hmacSecret: '${AUDIT_WEBHOOK_SECRET}' }
 * ```
 */
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { Type, type Static, type TObject, type TProperties, type ObjectOptions } from '@sinclair/typebox';
import { isCredentialName } from './sensitive.js';

function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

const DurationMs = (description: string, def: number, minimum = 1) =>
  Type.Integer({ minimum, maximum: 86_400_000, default: def, description: `${description} (milliseconds).` });

const HEADER_NAME = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";
/** A dot path into the event: `claims.email`, `details.card.number`, `details.items.*.iban`. */
const FIELD_PATH = '^[A-Za-z0-9_$@-]+(\\.([A-Za-z0-9_$@-]+|\\*))*$';

export const MaskActionSchema = Type.Union([Type.Literal('redact'), Type.Literal('hash'), Type.Literal('partial')], {
  description:
    '`redact`: replaced by `[redacted]`. `hash`: keyed HMAC-SHA-256 (`hmac:` + 22 base64url chars), a stable pseudonym that correlates without revealing the value (needs `masking.hmacKey`). `partial`: all but the last `keep` characters replaced by `*` (redacted entirely when shorter than 2×`keep`).',
});

const Keep = Type.Integer({
  minimum: 1,
  maximum: 64,
  description: 'For `partial`: how many trailing characters stay visible. Default 4.',
});

/** A rule for a header or query parameter: the action alone, or the action with `keep`. */
export const MaskRuleSchema = Type.Union([MaskActionSchema, Closed({ action: MaskActionSchema, keep: Type.Optional(Keep) })], {
  description: 'An action (`redact`, `hash`, `partial`) or `{ action, keep }`.',
});

export const FieldMaskSchema = Closed({
  path: Type.String({
    pattern: FIELD_PATH,
    description:
      "Dot path into the event as written: `subject`, `clientIp`, `userAgent`, `claims.email`, `headers.x-api-key`, `details.card.number`; `*` matches any key or array element. Not the record's own fields (`id`, `ts`, `kind`, `chain`, `n`, `prev`, `hash`, `v`, `seq`).",
  }),
  action: MaskActionSchema,
  keep: Type.Optional(Keep),
});

export const MaskingSchema = Closed(
  {
    hmacKey: Type.Optional(
      Type.String({
        minLength: 16,
        description:
          'Secret for `hash` pseudonyms (at least 16 characters; 32 random bytes recommended). Same value on every instance, or pseudonyms differ between them. Usually `${AUDIT_HMAC_KEY}`.',
      }),
    ),
    fields: Type.Array(FieldMaskSchema, { default: [], description: 'Rules by event field path.' }),
    headers: Type.Record(Type.String({ pattern: HEADER_NAME }), MaskRuleSchema, {
      additionalProperties: false,
      default: {},
      description: 'Rules for recorded headers (`extraFields.headers`), by name (case-insensitive).',
    }),
    query: Type.Record(Type.String({ minLength: 1, maxLength: 256 }), MaskRuleSchema, {
      additionalProperties: false,
      default: {},
      description: 'Rules for recorded query parameters (`extraFields.query`), by name.',
    }),
  },
  {
    description:
      'What is masked before an event is written. Whatever this says, `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, token- and secret-named fields and anything shaped like a bearer token or JWT are never written raw (redacted, or HMAC-hashed when a `hash` rule asks for it).',
  },
);

export const ExtraFieldsSchema = Closed(
  {
    claims: Type.Array(Type.String({ pattern: '^[A-Za-z0-9_$@:/-]+(\\.[A-Za-z0-9_$@:/-]+)*$' }), {
      default: [],
      maxItems: 64,
      description: 'Token claims copied into request events under `claims` (dot paths into nested claims).',
    }),
    headers: Type.Array(Type.String({ pattern: HEADER_NAME }), {
      default: [],
      maxItems: 64,
      description: 'Request headers copied into request events under `headers` (lower-cased names).',
    }),
    query: Type.Array(Type.String({ minLength: 1, maxLength: 256 }), {
      default: [],
      maxItems: 64,
      description: 'Query parameters copied into request events under `query`. The query string is not recorded otherwise.',
    }),
  },
  { description: 'Request data recorded beyond the fixed event fields; masking applies to all of it.' },
);

export const WalSchema = Closed(
  {
    dir: Type.String({
      minLength: 1,
      default: '.bulwark/audit',
      description:
        'Directory for the write-ahead log. Each process claims its own `slot-N` subdirectory (one chain each); a slot left by a crashed process is replayed by the next one to claim it, and a slot no process claims any more (fewer workers than before) is delivered to the sinks by a running process about 5 s after it starts.',
    }),
    segmentBytes: Type.Integer({
      minimum: 65_536,
      maximum: 1_073_741_824,
      default: 16_777_216,
      description: 'Size at which the WAL starts a new segment file; a segment is deleted once every sink has it.',
    }),
    fsyncIntervalMs: Type.Integer({
      minimum: 0,
      maximum: 1000,
      default: 0,
      description:
        "Group commit window in `durable` mode: events arriving within it share one write + fsync. 0 (default) commits as soon as the previous commit ends, so events arriving during an fsync share the next. Each response waits for its event's commit: a wider window means fewer fsyncs and up to that much more latency.",
    }),
    maxBytes: Type.Integer({
      minimum: 1_048_576,
      default: 1_073_741_824,
      description:
        'Disk quota for WAL segments. A sink outage makes the WAL grow up to this; then `whenFull` applies until sinks catch up.',
    }),
  },
  { description: 'The write-ahead log between the in-memory queue and the sinks.' },
);

// Sinks are a union, and ajv does not apply defaults inside `anyOf`: sink fields are optional,
// their `default` documents what the sink uses when the field is absent (AUDIT_DEFAULTS).
const BatchSize = (def: number, max: number) =>
  Type.Integer({ minimum: 1, maximum: max, default: def, description: 'Most events per write to this sink.' });

export const FileSinkSchema = Closed({
  path: Type.String({
    minLength: 1,
    description:
      "JSON lines file. `{slot}` is replaced by the process's WAL slot number: use it with `workers` > 1 so each process appends to its own file.",
  }),
  rotateBytes: Type.Optional(
    Type.Integer({
      minimum: 0,
      default: 104_857_600,
      description:
        'Rotate when the file reaches this size (0: never). The rotated file is renamed `<name>.<UTC timestamp><ext>`, which sorts before the live file.',
    }),
  ),
  rotateIntervalMs: Type.Optional(
    Type.Integer({
      minimum: 0,
      maximum: 31_536_000_000,
      default: 0,
      description: 'Also rotate when the file is older than this (0: never).',
    }),
  ),
  batchSize: Type.Optional(BatchSize(4096, 65_536)),
});

export const SqliteSinkSchema = Closed({
  path: Type.String({ minLength: 1, description: 'SQLite database file (created, WAL journal mode).' }),
  table: Type.Optional(
    Type.String({
      pattern: '^[A-Za-z_][A-Za-z0-9_]{0,62}$',
      default: 'audit_events',
      description: 'Table (created with its indexes when missing).',
    }),
  ),
  batchSize: Type.Optional(BatchSize(2048, 65_536)),
});

export const PostgresSinkSchema = Closed({
  url: Type.String({
    pattern: '^postgres(ql)?://',
    description: 'Connection URL, e.g. `postgres://audit@db:5432/audit`. Usually `${AUDIT_PG_URL}`.',
  }),
  table: Type.Optional(
    Type.String({
      pattern: '^([A-Za-z_][A-Za-z0-9_]{0,62}\\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$',
      default: 'audit_events',
      description: 'Table, optionally schema-qualified (`audit.events`); created with its indexes when missing.',
    }),
  ),
  poolSize: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, default: 2, description: 'Connections in the pool.' })),
  batchSize: Type.Optional(BatchSize(1000, 20_000)),
});

export const WebhookSinkSchema = Closed({
  url: Type.String({ pattern: '^https?://', description: 'Endpoint receiving `POST {"events":[…]}`.' }),
  batchSize: Type.Optional(BatchSize(200, 10_000)),
  timeoutMs: Type.Optional(DurationMs('Timeout for one delivery', 10_000)),
  headers: Type.Optional(
    Type.Record(Type.String({ pattern: HEADER_NAME }), Type.String(), {
      additionalProperties: false,
      default: {},
      description: 'Extra request headers (e.g. an API key for the receiver).',
    }),
  ),
  hmacSecret: Type.Optional(
    Type.String({
      minLength: 16,
      description:
        'Signs each body: `bulwark-signature: t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`. Usually `${AUDIT_WEBHOOK_SECRET}`.',
    }),
  ),
});

export const StdoutSinkSchema = Closed({}, { description: 'JSON lines on standard output (containers). No options.' });

export const SinkSchema = Type.Union(
  [
    Closed({ file: FileSinkSchema }),
    Closed({ sqlite: SqliteSinkSchema }),
    Closed({ postgres: PostgresSinkSchema }),
    Closed({ webhook: WebhookSinkSchema }),
    Closed({ stdout: StdoutSinkSchema }),
  ],
  { description: 'One of `file`, `sqlite`, `postgres`, `webhook`, `stdout`.' },
);

export const ChainSchema = Closed(
  {
    checkpointEvery: Type.Integer({
      minimum: 1,
      maximum: 10_000_000,
      default: 1000,
      description: 'Write a signed checkpoint after this many records of the chain.',
    }),
    checkpointIntervalMs: DurationMs(
      'Also write one when this long has passed since the last and records were added',
      60_000,
      100,
    ),
    signingKey: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          'Ed25519 private key for checkpoints: PEM text (usually `${AUDIT_SIGNING_KEY}`) or a PEM file path. Without it checkpoints are unsigned and a rewrite of the whole store cannot be told from the original.',
      }),
    ),
  },
  { description: 'Hash chain and checkpoints.' },
);

export const RetrySchema = Closed(
  {
    initialMs: DurationMs('First delay before retrying a failed sink write', 200),
    maxMs: DurationMs('Longest delay between retries (exponential backoff with jitter)', 30_000),
  },
  { description: 'Sink retry backoff. A sink is retried until it succeeds; meanwhile the WAL keeps its events.' },
);

export const AuditSchema = Closed(
  {
    enabled: Type.Boolean({ default: true, description: 'Record audit events.' }),
    durability: Type.Union([Type.Literal('durable'), Type.Literal('fast')], {
      default: 'durable',
      description:
        '`durable`: an event counts as accepted once fsynced to the WAL (`recordDurable` waits for it; survives power loss). `fast`: once written to the WAL file (survives a process crash, not an OS crash); events are written to the WAL in batches at most 5 ms apart and fsynced every second.',
    }),
    whenFull: Type.Union([Type.Literal('block'), Type.Literal('drop')], {
      default: 'block',
      description:
        'When the queue is full (sinks and WAL cannot keep up, or the WAL reached `maxBytes`): `block` refuses the event, and the gateway answers 503 `audit.unavailable`; `drop` discards it, counts it, and writes a gap marker into the chain that `audit verify` reports.',
    }),
    queue: Type.Optional(
      Closed({
        maxEvents: Type.Integer({
          minimum: 16,
          maximum: 10_000_000,
          default: 65_536,
          description: 'Events waiting in memory for the WAL.',
        }),
      }),
    ),
    wal: Type.Optional(WalSchema),
    masking: Type.Optional(MaskingSchema),
    extraFields: Type.Optional(ExtraFieldsSchema),
    chain: Type.Optional(ChainSchema),
    retry: Type.Optional(RetrySchema),
    closeTimeoutMs: DurationMs(
      'On shutdown, how long to wait for sinks to take the rest; what they have not taken stays in the WAL for the next start',
      10_000,
    ),
    sinks: Type.Array(SinkSchema, { minItems: 1, description: 'Where events go; several at once, each at its own pace.' }),
  },
  { description: 'Tamper-evident audit log: masked events, hash chain, signed checkpoints, WAL, sinks.' },
);

export type MaskAction = Static<typeof MaskActionSchema>;
export type MaskRuleConfig = Static<typeof MaskRuleSchema>;
export type FieldMaskConfig = Static<typeof FieldMaskSchema>;
export type MaskingConfig = Static<typeof MaskingSchema>;
export type ExtraFieldsConfig = Static<typeof ExtraFieldsSchema>;
export type WalConfig = Static<typeof WalSchema>;
export type FileSinkConfig = Static<typeof FileSinkSchema>;
export type SqliteSinkConfig = Static<typeof SqliteSinkSchema>;
export type PostgresSinkConfig = Static<typeof PostgresSinkSchema>;
export type WebhookSinkConfig = Static<typeof WebhookSinkSchema>;
export type SinkConfig = Static<typeof SinkSchema>;
export type ChainConfig = Static<typeof ChainSchema>;
export type RetryConfig = Static<typeof RetrySchema>;
export type AuditConfig = Static<typeof AuditSchema>;

/** Defaults the schema fills in, for callers that build a config in code (library, tests). */
export const AUDIT_DEFAULTS = {
  queue: { maxEvents: 65_536 },
  wal: { dir: '.bulwark/audit', segmentBytes: 16_777_216, fsyncIntervalMs: 0, maxBytes: 1_073_741_824 },
  chain: { checkpointEvery: 1000, checkpointIntervalMs: 60_000 },
  retry: { initialMs: 200, maxMs: 30_000 },
  closeTimeoutMs: 10_000,
  file: { rotateBytes: 104_857_600, rotateIntervalMs: 0, batchSize: 4096 },
  sqlite: { table: 'audit_events', batchSize: 2048 },
  postgres: { table: 'audit_events', poolSize: 2, batchSize: 1000 },
  webhook: { batchSize: 200, timeoutMs: 10_000 },
} as const;

/**
 * Headers whose values are credentials: never written raw, whatever the config says. The
 * examples of the general rule (`isCredentialName`, which also covers `x-goog-api-key`, `cookies`…).
 */
export const NEVER_RAW_HEADERS: ReadonlySet<string> = new Set(['authorization', 'proxy-authorization', 'cookie', 'set-cookie']);

/**
 * Fields of every event record that the chain (`v`, `id`, `ts`, `chain`, `n`, `prev`, `hash`),
 * verify (`kind`, `seq`) and the stores' key columns depend on: masking rules may not name them.
 */
export const STRUCTURAL_FIELDS: ReadonlySet<string> = new Set(['v', 'id', 'ts', 'kind', 'chain', 'n', 'prev', 'hash', 'seq']);

/** Read a signing key spec (PEM text or a PEM file path); throws with a reason. */
export function readKeySpec(spec: string): string {
  return spec.trimStart().startsWith('-----BEGIN') ? spec : readFileSync(spec, 'utf8');
}

export type Report = (path: (string | number)[], code: string, message: string, severity?: 'error' | 'warning') => void;

/**
 * Semantic checks of an `audit` section; paths are reported from the document
 * root (`audit.sinks[1].file.path`) so the loader can point at file:line. Takes
 * the whole config (structurally) because some rules depend on `workers`.
 */
export function auditChecks(
  config: { audit?: AuditConfig | undefined; workers?: number | 'auto' | undefined },
  report: Report,
): void {
  const audit = config.audit;
  if (audit === undefined) return;
  const at = (...rest: (string | number)[]) => ['audit', ...rest];
  const masking = audit.masking;

  // hash rules need a key: without one there is no pseudonym, and a silent fallback to raw would be a leak.
  const usesHash = (rule: MaskRuleConfig | FieldMaskConfig) => (typeof rule === 'string' ? rule : rule.action) === 'hash';
  const keepWithoutPartial = (rule: MaskRuleConfig | FieldMaskConfig) =>
    typeof rule !== 'string' && rule.keep !== undefined && rule.action !== 'partial';
  if (masking !== undefined) {
    const anyHash =
      (masking.fields ?? []).some(usesHash) ||
      Object.values(masking.headers ?? {}).some(usesHash) ||
      Object.values(masking.query ?? {}).some(usesHash);
    if (anyHash && masking.hmacKey === undefined)
      report(at('masking', 'hmacKey'), 'config.audit_hmac_key_required', 'a `hash` masking rule needs masking.hmacKey');
    (masking.fields ?? []).forEach((rule, i) => {
      if (keepWithoutPartial(rule))
        report(at('masking', 'fields', i, 'keep'), 'config.audit_mask_keep', '`keep` applies only to action `partial`');
    });
    (masking.fields ?? []).forEach((rule, i) => {
      // Chain, verify and stores rely on these: masked, a record has a hashed id (a UUID column refuses it
      // for ever), a "[redacted]" seq (verify stops checking the sequence). Paths start with a field name
      // (no `*` at the top level, see FIELD_PATH), so only a one-segment path can name one.
      if (!rule.path.includes('.') && STRUCTURAL_FIELDS.has(rule.path))
        report(
          at('masking', 'fields', i, 'path'),
          'config.audit_mask_structural',
          `"${rule.path}" is a field of the record itself (the chain, verify and the sinks depend on it): it cannot be masked`,
        );
    });
    const seenPaths = new Map<string, number>();
    (masking.fields ?? []).forEach((rule, i) => {
      const first = seenPaths.get(rule.path);
      if (first === undefined) seenPaths.set(rule.path, i);
      else
        report(
          at('masking', 'fields', i, 'path'),
          'config.audit_mask_duplicate',
          `duplicate masking rule for "${rule.path}" (also audit.masking.fields[${first}])`,
        );
    });
    const headerNames = new Map<string, string>();
    for (const [name, rule] of Object.entries(masking.headers ?? {})) {
      const lower = name.toLowerCase();
      const other = headerNames.get(lower);
      if (other !== undefined)
        report(at('masking', 'headers', name), 'config.audit_mask_duplicate', `header "${name}" is also listed as "${other}"`);
      headerNames.set(lower, name);
      if (keepWithoutPartial(rule))
        report(at('masking', 'headers', name, 'keep'), 'config.audit_mask_keep', '`keep` applies only to action `partial`');
      const action = typeof rule === 'string' ? rule : rule.action;
      if (isCredentialName(lower) && action === 'partial')
        report(
          at('masking', 'headers', name),
          'config.audit_never_raw',
          `${name} is a credential: it is always redacted (or hashed), never partially shown`,
          'warning',
        );
    }
    for (const [name, rule] of Object.entries(masking.query ?? {})) {
      if (keepWithoutPartial(rule))
        report(at('masking', 'query', name, 'keep'), 'config.audit_mask_keep', '`keep` applies only to action `partial`');
    }
  }

  (audit.extraFields?.headers ?? []).forEach((name, i) => {
    const lower = name.toLowerCase();
    if (isCredentialName(lower) && !Object.keys(masking?.headers ?? {}).some((h) => h.toLowerCase() === lower))
      report(
        at('extraFields', 'headers', i),
        'config.audit_never_raw',
        `${name} carries credentials: it will be recorded as "[redacted]" (add a \`hash\` rule in masking.headers to correlate)`,
        'warning',
      );
  });

  const wal = audit.wal;
  if (wal !== undefined && wal.maxBytes !== undefined && wal.segmentBytes !== undefined && wal.maxBytes < 2 * wal.segmentBytes)
    report(
      at('wal', 'maxBytes'),
      'config.audit_wal_quota',
      `wal.maxBytes (${wal.maxBytes}) must be at least twice wal.segmentBytes (${wal.segmentBytes}): space is freed a whole segment at a time`,
    );

  const signingKey = audit.chain?.signingKey;
  if (signingKey === undefined) {
    report(
      at('chain', 'signingKey'),
      'config.audit_unsigned',
      'no chain.signingKey: checkpoints are unsigned, so a rewrite of the whole store cannot be detected',
      'warning',
    );
  } else {
    try {
      const key = createPrivateKey(readKeySpec(signingKey));
      if (key.asymmetricKeyType !== 'ed25519')
        report(
          at('chain', 'signingKey'),
          'config.audit_signing_key',
          `chain.signingKey must be an Ed25519 private key (got ${key.asymmetricKeyType ?? 'unknown'})`,
        );
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : 'not a PEM private key';
      report(at('chain', 'signingKey'), 'config.audit_signing_key', `cannot read chain.signingKey: ${why}`);
    }
  }

  const multiWorker = config.workers === 'auto' || (typeof config.workers === 'number' && config.workers > 1);
  const seenSinks = new Map<string, number>();
  audit.sinks.forEach((sink, i) => {
    const key = sinkIdentity(sink);
    const first = seenSinks.get(key);
    if (first === undefined) seenSinks.set(key, i);
    else report(at('sinks', i), 'config.audit_duplicate_sink', `the same sink as audit.sinks[${first}]`);
    if ('file' in sink && multiWorker && !sink.file.path.includes('{slot}'))
      report(
        at('sinks', i, 'file', 'path'),
        'config.audit_shared_file',
        'with several workers, put `{slot}` in the path so each process appends to (and rotates) its own file',
        'warning',
      );
    if ('webhook' in sink) {
      let url: URL | null = null;
      try {
        url = new URL(sink.webhook.url);
      } catch {
        report(at('sinks', i, 'webhook', 'url'), 'config.audit_webhook_url', `invalid URL "${sink.webhook.url}"`);
      }
      const loopback = url !== null && /^(localhost|127\.[0-9.]+|\[::1\])$/.test(url.hostname);
      if (url !== null && url.protocol === 'http:' && !loopback)
        report(
          at('sinks', i, 'webhook', 'url'),
          'config.audit_webhook_cleartext',
          'audit events would cross the network unencrypted: use https',
          'warning',
        );
      if (sink.webhook.hmacSecret === undefined)
        report(
          at('sinks', i, 'webhook', 'hmacSecret'),
          'config.audit_webhook_unsigned',
          'without hmacSecret the receiver cannot tell the bodies come from this gateway',
          'warning',
        );
    }
  });
}

/** What makes two sink entries the same destination (also the WAL's cursor key for the sink). */
export function sinkIdentity(sink: SinkConfig): string {
  if ('file' in sink) return `file:${sink.file.path}`;
  if ('sqlite' in sink) return `sqlite:${sink.sqlite.path}#${sink.sqlite.table ?? AUDIT_DEFAULTS.sqlite.table}`;
  if ('postgres' in sink) {
    // The cursor key must not carry the password, and must not change when only the password does.
    let where = sink.postgres.url;
    try {
      const u = new URL(sink.postgres.url);
      where = `${u.username}@${u.host}${u.pathname}`;
    } catch {
      // Schema validation accepted it; keep the raw text minus any userinfo.
      where = where.replace(/\/\/[^@/]*@/, '//');
    }
    return `postgres:${where}#${sink.postgres.table ?? AUDIT_DEFAULTS.postgres.table}`;
  }
  if ('webhook' in sink) return `webhook:${sink.webhook.url}`;
  return 'stdout';
}

/**
 * Relative paths (WAL dir, file and SQLite sinks, a signing key file) resolved
 * against `baseDir` — the config file's directory, as the loader does for TLS
 * files — so a gateway started from another directory writes where the config
 * says. Returns a new config; PEM text and URLs are left alone.
 */
export function resolveAuditPaths(audit: AuditConfig, baseDir: string): AuditConfig {
  const at = (path: string) => (isAbsolute(path) ? path : resolvePath(baseDir, path));
  const signingKey = audit.chain?.signingKey;
  return {
    ...audit,
    ...(audit.wal === undefined ? {} : { wal: { ...audit.wal, dir: at(audit.wal.dir ?? AUDIT_DEFAULTS.wal.dir) } }),
    ...(audit.chain === undefined || signingKey === undefined || signingKey.trimStart().startsWith('-----BEGIN')
      ? {}
      : { chain: { ...audit.chain, signingKey: at(signingKey) } }),
    sinks: audit.sinks.map((sink): SinkConfig => {
      if ('file' in sink) return { file: { ...sink.file, path: at(sink.file.path) } };
      if ('sqlite' in sink) return { sqlite: { ...sink.sqlite, path: at(sink.sqlite.path) } };
      return sink;
    }),
  };
}
