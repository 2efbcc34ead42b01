/**
 * The one source of truth for configuration: TypeScript types are derived with
 * `Static<>`, and `schema/bulwark.schema.json` is generated from the same
 * objects (`npm run schema`; `npm test` checks it is current).
 *
 * Every object is closed (`additionalProperties: false`): a typo must be an
 * error, never a silently ignored (and so silently widened) setting.
 */
import { AuthnSchema, RouteAuthSchema } from '../authn/schema.js';
import { AuthzSchema, RouteAuthzSchema } from '../authz/schema.js';
import { TelemetrySchema } from '../telemetry/schema.js';
import { RateLimitsSchema } from '../limits/schema.js';
import { AuditSchema } from '../audit/schema.js';
import { RevocationSchema } from '../revocation/schema.js';
import { IssuerSchema } from '../issuer/schema.js';
import { Type, type Static, type TSchema, type TObject, type TProperties, type ObjectOptions } from '@sinclair/typebox';

function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

const Port = Type.Integer({ minimum: 0, maximum: 65535, description: 'TCP port; 0 picks a free one.' });
const DurationMs = (description: string, def?: number) =>
  Type.Integer({
    minimum: 1,
    maximum: 86_400_000,
    ...(def === undefined ? {} : { default: def }),
    description: `${description} (milliseconds).`,
  });
const Name = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$',
  description: 'Identifier: letters, digits, `_`, `.`, `-`.',
});

export const PathPolicySchema = Closed(
  {
    mergeSlashes: Type.Boolean({ default: true, description: 'Merge repeated slashes (`//a///b` → `/a/b`).' }),
    decodeUnreserved: Type.Boolean({
      default: true,
      description: 'Decode percent-encoded unreserved characters (`%41` → `A`, `%7E` → `~`).',
    }),
    encodedSlash: Type.Union([Type.Literal('reject'), Type.Literal('keep')], {
      default: 'reject',
      description: '`%2F` and `%5C` in a path: `reject` with 400 (strict) or `keep` them encoded, opaque inside a segment.',
    }),
    backslash: Type.Union([Type.Literal('reject'), Type.Literal('keep')], {
      default: 'reject',
      description: 'A raw `\\` in a path: `reject` with 400 (strict) or `keep` it (percent-encoded, as an ordinary character).',
    }),
    semicolon: Type.Union([Type.Literal('reject'), Type.Literal('keep')], {
      default: 'reject',
      description:
        'A `;` in a path: `reject` with 400 (strict: some upstreams strip `;params` and would see another path than the policy did) or `keep` it.',
    }),
    maxLength: Type.Integer({
      minimum: 1,
      maximum: 65536,
      default: 8192,
      description: 'Longest request target accepted (bytes); longer is 414.',
    }),
  },
  { description: 'How request targets are canonicalized before routing. Strict by default.' },
);

export const TlsSchema = Closed(
  {
    cert: Type.String({ minLength: 1, description: 'PEM certificate chain file.' }),
    key: Type.String({ minLength: 1, description: 'PEM private key file.' }),
    ca: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA bundle for client certificates.' })),
  },
  { description: 'TLS settings; ALPN offers `h2` and `http/1.1`.' },
);

export const ListenerLimitsSchema = Closed({
  maxHeaderBytes: Type.Integer({
    minimum: 1024,
    maximum: 1_048_576,
    default: 16384,
    description: 'Largest request head (431 beyond).',
  }),
  maxHeaders: Type.Integer({
    minimum: 8,
    maximum: 10000,
    default: 100,
    description: 'Most header fields in one request (431 beyond).',
  }),
  maxBodyBytes: Type.Integer({
    minimum: 0,
    default: 10_485_760,
    description: 'Largest request body (413 beyond). Routes may lower it.',
  }),
  headersTimeoutMs: DurationMs('Time a client has to send the whole request head (408 beyond)', 10_000),
  requestTimeoutMs: DurationMs('Time a client has to send the whole request, body included (408 beyond)', 60_000),
  idleTimeoutMs: DurationMs('Keep-alive connection idle timeout', 60_000),
});

export const ListenerSchema = Closed({
  name: Type.Optional(Name),
  address: Type.String({ default: '0.0.0.0', description: 'Address to bind.' }),
  port: Port,
  protocol: Type.Union([Type.Literal('http'), Type.Literal('h2c'), Type.Literal('https')], {
    default: 'http',
    description:
      '`http`: HTTP/1.1 cleartext. `h2c`: HTTP/2 cleartext (prior knowledge) and HTTP/1.1. `https`: TLS with ALPN h2 and http/1.1.',
  }),
  tls: Type.Optional(TlsSchema),
  paths: Type.Optional(PathPolicySchema),
  limits: Type.Optional(ListenerLimitsSchema),
  trustedProxies: Type.Array(Type.String({ minLength: 1 }), {
    default: [],
    description: 'Addresses or CIDRs of proxies whose X-Forwarded-* headers are believed.',
  }),
});

export const ExplainHeaderSchema = Closed(
  {
    name: Type.String({
      pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$",
      default: 'x-bulwark-explain',
      description: 'Request header carrying the token.',
    }),
    token: Type.String({
      minLength: 32,
      // A header value is ASCII on the wire: any other character could never match.
      pattern: '^[\\x21-\\x7e]+$',
      description: 'Shared secret: at least 32 visible ASCII characters; use a `${ENV}` reference.',
    }),
  },
  {
    description:
      "Debugging: an HTTP request whose `name` header carries `token` gets its whole decision path (stages, reason codes, provider and `kid`, matched rules) back in the `x-bulwark-explanation` response header, as JSON (gRPC calls do not: use `bulwark explain`). Off without this section; any other value is ignored; the header never reaches an upstream, and an upstream's copy never reaches a client.",
  },
);

export const AdminSchema = Closed(
  {
    address: Type.String({ default: '127.0.0.1', description: 'Address to bind; loopback by default.' }),
    port: Type.Union([Port], { default: 9901 }),
    enabled: Type.Boolean({ default: true }),
    explainHeader: Type.Optional(ExplainHeaderSchema),
  },
  { description: 'The admin listener: /healthz, /readyz, /config.' },
);

const upstreamTimeoutFields = (withDefaults: boolean) => ({
  connectMs: DurationMs('Connect timeout to an endpoint', withDefaults ? 5_000 : undefined),
  headersMs: DurationMs('Time for the upstream to send response headers', withDefaults ? 30_000 : undefined),
  idleMs: DurationMs('Longest gap between two body chunks from the upstream', withDefaults ? 60_000 : undefined),
  totalMs: DurationMs('Whole exchange, including streaming the response', withDefaults ? 300_000 : undefined),
});

export const UpstreamTimeoutsSchema = Closed(upstreamTimeoutFields(true));

// No defaults here: validation fills defaults in, so a default would override the
// upstream's own value for every field the route did not mention.
export const RouteTimeoutsSchema = Type.Partial(Closed(upstreamTimeoutFields(false)), {
  description: "Per-route overrides of the upstream's timeouts; unset fields keep the upstream's values.",
});

export const UpstreamSchema = Closed({
  endpoints: Type.Optional(
    Type.Array(
      Type.String({
        // No `user:password@`: an endpoint is a metric label and appears in logs.
        pattern: '^https?://[^/?#@]+/?$',
        description: 'Origin: `http://host:port` or `https://host:port` (no credentials: send them as headers).',
      }),
      {
        minItems: 1,
      },
    ),
  ),
  builtin: Type.Optional(Type.Literal('echo', { description: 'Run a built-in demo upstream instead of endpoints.' })),
  balancer: Type.Union([Type.Literal('round_robin'), Type.Literal('least_request')], { default: 'round_robin' }),
  connections: Type.Integer({ minimum: 1, maximum: 10000, default: 128, description: 'Keep-alive connections per endpoint.' }),
  keepAliveTimeoutMs: DurationMs('Idle keep-alive connection lifetime', 4_000),
  timeouts: Type.Optional(UpstreamTimeoutsSchema),
});

export const PathMatchSchema = Type.Union(
  [
    Closed({ exact: Type.String({ pattern: '^/', description: 'The canonical path, exactly.' }) }),
    Closed({
      prefix: Type.String({
        pattern: '^/',
        description: 'Segment-wise prefix: `/api` matches `/api` and `/api/x`, not `/apix`.',
      }),
    }),
    Closed({
      glob: Type.String({
        pattern: '^/',
        description: '`*` one segment, `**` any number of segments, `{name}` one segment captured as a parameter.',
      }),
    }),
  ],
  { description: 'One of `exact`, `prefix`, `glob`.' },
);

export const RouteMatchSchema = Closed({
  hosts: Type.Optional(
    Type.Array(Type.String({ pattern: '^(\\*\\.)?[A-Za-z0-9.-]+(:[0-9]+)?$' }), {
      minItems: 1,
      description: 'Host names (`api.example.com`) or wildcards (`*.example.com`); any when absent.',
    }),
  ),
  path: Type.Optional(PathMatchSchema),
  methods: Type.Optional(
    Type.Array(Type.String({ pattern: '^[A-Z]+$' }), {
      minItems: 1,
      uniqueItems: true,
      description: 'Upper-case methods; any when absent.',
    }),
  ),
});

export const RouteSchema = Closed({
  id: Name,
  match: RouteMatchSchema,
  upstream: Type.Optional(
    Type.Unsafe<string>({
      ...Name,
      description:
        'The upstream pool to forward to. Required by the gateway; library adapters hand the request to the application instead.',
    }),
  ),
  issuer: Type.Optional(
    Type.Literal(true, {
      description: 'Served by the built-in token issuer (the `issuer` section) instead of an upstream.',
    }),
  ),
  auth: Type.Unsafe<Static<typeof RouteAuthSchema>>({
    ...RouteAuthSchema,
    description:
      'Who may call this route: `{ provider }`, `{ anyOf }`, `{ allOf }`, `{ optional }`, `{ tenant }` (each tenant its own provider), or `{ public: true }`. Required: a route without a requirement must say so.',
  }),
  authz: Type.Optional(RouteAuthzSchema),
  rateLimit: Type.Optional(
    Type.Array(Name, {
      minItems: 1,
      uniqueItems: true,
      description:
        'Rate-limit and concurrency policy ids (`rateLimits.policies`) applied to this route; every one must admit the request.',
    }),
  ),
  maxBodyBytes: Type.Optional(Type.Integer({ minimum: 0, description: 'Lower the listener body limit for this route.' })),
  timeouts: Type.Optional(RouteTimeoutsSchema),
});

export const ConfigSchema = Closed(
  {
    $schema: Type.Optional(Type.String()),
    version: Type.Literal(1, { description: 'Config format version.' }),
    workers: Type.Union([Type.Integer({ minimum: 1, maximum: 256 }), Type.Literal('auto')], {
      default: 1,
      description: 'Worker processes behind the listeners; `auto` = one per available core.',
    }),
    shutdownTimeoutMs: DurationMs('Longest graceful drain on SIGTERM/SIGINT or reload', 30_000),
    listeners: Type.Array(ListenerSchema, {
      default: [],
      description: 'Sockets the gateway serves; `bulwark serve` needs at least one (library adapters need none).',
    }),
    admin: Type.Optional(AdminSchema),
    // A Record is not closed by default: a key failing the name pattern would be
    // accepted without being validated as an upstream at all.
    upstreams: Type.Record(Name, UpstreamSchema, {
      additionalProperties: false,
      default: {},
      description: 'Named upstream pools.',
    }),
    authn: Type.Optional(AuthnSchema),
    authz: Type.Optional(AuthzSchema),
    telemetry: Type.Optional(TelemetrySchema),
    rateLimits: Type.Optional(RateLimitsSchema),
    audit: Type.Optional(AuditSchema),
    revocation: Type.Optional(RevocationSchema),
    issuer: Type.Optional(IssuerSchema),
    routes: Type.Array(RouteSchema, { description: 'Matched in order; the first match wins.' }),
  },
  { $id: 'https://bulwark.dev/schema/bulwark.schema.json', title: 'Bulwark gateway configuration' },
);

export type PathPolicyConfig = Static<typeof PathPolicySchema>;
export type ListenerConfig = Static<typeof ListenerSchema>;
export type ListenerLimitsConfig = Static<typeof ListenerLimitsSchema>;
export type AdminConfig = Static<typeof AdminSchema>;
export type UpstreamConfig = Static<typeof UpstreamSchema>;
export type UpstreamTimeoutsConfig = Static<typeof UpstreamTimeoutsSchema>;
export type RouteTimeoutsConfig = Static<typeof RouteTimeoutsSchema>;
export type RouteConfig = Static<typeof RouteSchema>;
export type RouteMatchConfig = Static<typeof RouteMatchSchema>;
export type PathMatchConfig = Static<typeof PathMatchSchema>;
export type BulwarkConfig = Static<typeof ConfigSchema>;

export type { TSchema };
