/**
 * The `authz` section of the config: roles (with inheritance) → permissions →
 * resources + actions, and policies of allow/deny rules that routes name.
 *
 * Every object is closed (`additionalProperties: false`), as in
 * src/config/schema.ts: a misspelt condition must be an error, never a rule
 * that silently matches more than intended. Defaulted fields are optional in
 * the static types so a library user can build a config in code; the
 * compiler applies the same defaults (the `DEFAULT_*` constants below) as the
 * loader does.
 *
 * Semantic rules the schema cannot express (references, cycles, patterns,
 * duplicate ids, rules that can never match) live in `authzChecks`.
 */
import { Type, type Static, type TObject, type TProperties, type ObjectOptions } from '@sinclair/typebox';

function Closed<T extends TProperties>(properties: T, options: ObjectOptions = {}): TObject<T> {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

/** The role an unauthenticated request holds, and only such a request. */
export const ANONYMOUS_ROLE = 'anonymous';
/** Default path parameter carrying the tenant, for tenant isolation. */
export const DEFAULT_TENANT_PARAM = 'tenant';

const Id = (what: string) =>
  Type.String({
    pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$',
    description: `${what}: letters, digits, \`_\`, \`.\`, \`:\`, \`-\`.`,
  });

// Role names follow what identity providers emit (`realm:admin`, `/admins`,
// `billing-service`), so they are wider than ids; `*` is reserved for "any".
const RoleName = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: '^[^\\s*]+$',
  description: 'A role name as tokens carry it; no whitespace, no `*`.',
});
const RuleRole = Type.Union([RoleName, Type.Literal('*')], {
  description: `A role name, \`*\` (any authenticated identity; in a deny rule: every request) or \`${ANONYMOUS_ROLE}\`.`,
});
const PermissionName = Id('Permission name');
const Method = Type.String({
  pattern: '^([A-Z]+|\\*)$',
  description: 'An upper-case HTTP method, or `*` for any.',
});
const PathPattern = Type.String({
  pattern: '^/',
  maxLength: 2048,
  description: 'A canonical-path glob: `*` one segment, `**` any number of segments, `{name}` one segment captured.',
});
const GrpcMethod = Type.String({
  pattern: '^/([A-Za-z_][A-Za-z0-9_]*\\.)*[A-Za-z_][A-Za-z0-9_]*/([A-Za-z_][A-Za-z0-9_]*|\\*)$',
  description: 'A gRPC method `/pkg.Service/Method`, or `/pkg.Service/*` for every method of the service. Case-sensitive.',
});
const SubjectPattern = Type.String({
  minLength: 1,
  maxLength: 2048,
  description:
    'A subject, exactly, or a pattern: `*` one or more characters within a `/`-separated segment (`user:*`), `**` as a whole segment any number of segments (`spiffe://td/ns/billing/**`).',
});
const ClaimPath = Type.String({
  pattern: '^[^.]+(\\.[^.]+)*$',
  maxLength: 256,
  description: 'A claim, dotted for nested objects (`realm_access.roles`).',
});
const ClaimScalar = Type.Union([Type.String(), Type.Number(), Type.Boolean()]);

export const RolesFromSchema = Closed(
  {
    claim: Type.Optional(
      Type.Union([Type.Boolean(), ClaimPath], {
        default: true,
        description:
          "`true`: the identity's roles (read by the authentication provider from its configured claim). A claim path: read roles from that claim instead (an array of strings, or one string). `false`: none.",
      }),
    ),
    bindings: Type.Optional(Type.Boolean({ default: true, description: 'Add the roles that `bindings` give the subject.' })),
  },
  { default: {}, description: 'Where a request gets its roles from. Both sources are merged.' },
);

export const BindingSchema = Closed(
  {
    subject: SubjectPattern,
    roles: Type.Array(RoleName, { minItems: 1, uniqueItems: true, description: 'Roles given to matching subjects.' }),
  },
  { description: 'Gives roles to subjects (e.g. SPIFFE workload ids) whatever their token says.' },
);

export const RoleSchema = Closed(
  {
    description: Type.Optional(Type.String({ description: 'For humans.' })),
    inherits: Type.Optional(
      Type.Array(RoleName, {
        uniqueItems: true,
        description: 'Roles whose permissions this role also has; rules naming them apply to it too. Cycles are an error.',
      }),
    ),
    permissions: Type.Optional(
      Type.Array(PermissionName, { uniqueItems: true, description: 'Permissions this role holds directly.' }),
    ),
  },
  { description: 'A role. Every role a rule, binding or `inherits` names must be defined here.' },
);

const grantFields = {
  resources: Type.Optional(
    Type.Array(PathPattern, { minItems: 1, description: 'HTTP resources: canonical-path globs. Needs `actions`.' }),
  ),
  actions: Type.Optional(
    Type.Array(Method, { minItems: 1, uniqueItems: true, description: 'HTTP methods allowed on `resources`, or `*`.' }),
  ),
  grpc: Type.Optional(
    Type.Array(GrpcMethod, {
      minItems: 1,
      description: 'gRPC methods (called with POST), matched exactly against the method path, never normalized.',
    }),
  ),
};

export const PermissionSchema = Closed(
  { description: Type.Optional(Type.String({ description: 'For humans.' })), ...grantFields },
  { description: 'What a permission allows: `resources` × `actions`, and/or `grpc` methods.' },
);

export const ConditionsSchema = Closed(
  {
    tenant: Type.Optional(
      Closed(
        {
          equals: Type.String({
            pattern: '^(param:[A-Za-z_][A-Za-z0-9_]*|claim:[^.]+(\\.[^.]+)*)$',
            description: "`param:NAME` (a path parameter) or `claim:PATH` (a token claim) that the identity's tenant must equal.",
          }),
        },
        { description: "The identity's tenant must equal this value; an identity without a tenant never passes." },
      ),
    ),
    scopes: Type.Optional(
      Type.Array(Type.String({ minLength: 1 }), {
        minItems: 1,
        uniqueItems: true,
        description:
          'Scopes the token must all carry. An allow rule failing only on these denies with `rbac.insufficient_scope`.',
      }),
    ),
    subject: Type.Optional(
      Type.Union([SubjectPattern, Type.Array(SubjectPattern, { minItems: 1 })], {
        description: 'The subject must match this pattern (or one of these).',
      }),
    ),
    claims: Type.Optional(
      Type.Record(ClaimPath, Type.Union([ClaimScalar, Type.Array(ClaimScalar, { minItems: 1 })]), {
        additionalProperties: false,
        description:
          'Claim → required value (a list: any of them). An array claim passes when it contains the value. All must pass.',
      }),
    ),
  },
  { description: 'Extra conditions, all of which must hold for the rule to apply.' },
);

export const RuleSchema = Closed(
  {
    id: Id('Rule id, unique in its policy'),
    description: Type.Optional(Type.String({ description: 'For humans.' })),
    effect: Type.Union([Type.Literal('allow'), Type.Literal('deny')], {
      description: 'A matching deny overrides every allow, in every policy of the route.',
    }),
    roles: Type.Optional(
      Type.Array(RuleRole, {
        minItems: 1,
        uniqueItems: true,
        description:
          'Who the rule applies to (a role applies to every role inheriting it). Required with `resources`/`grpc`; with `permissions` it narrows the holders (allow) or defaults to everyone (deny).',
      }),
    ),
    permissions: Type.Optional(
      Type.Array(PermissionName, {
        minItems: 1,
        uniqueItems: true,
        description:
          "Grant by permission: the request must fall within one of them; an allow also needs the identity's roles to hold it.",
      }),
    ),
    ...grantFields,
    when: Type.Optional(ConditionsSchema),
  },
  { description: 'One rule: either `permissions`, or `roles` with `resources` + `actions` and/or `grpc`.' },
);

export const TenantIsolationSchema = Closed(
  {
    enabled: Type.Optional(
      Type.Boolean({ default: true, description: 'On by default; turn off only for cross-tenant policies.' }),
    ),
    param: Type.Optional(
      Type.String({
        pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
        default: DEFAULT_TENANT_PARAM,
        description: 'Path parameter that names the tenant a request acts on.',
      }),
    ),
    requireTenant: Type.Optional(
      Type.Boolean({
        default: false,
        description: 'Also refuse identities without a tenant on tenant-scoped resources (by default they are not restricted).',
      }),
    ),
  },
  {
    default: {},
    description:
      "An allow rule of this policy never grants a request whose path names a tenant (the parameter, captured by the rule's resource or by the route) other than the identity's tenant.",
  },
);

export const PolicySchema = Closed(
  {
    id: Id('Policy id, unique; routes name it'),
    description: Type.Optional(Type.String({ description: 'For humans.' })),
    mode: Type.Optional(
      Type.Union([Type.Literal('enforce'), Type.Literal('shadow')], {
        default: 'enforce',
        description:
          '`enforce`, or `shadow`: evaluated as if enforced and recorded (`shadow_deny`) but never enforced, to roll out rules.',
      }),
    ),
    tenantIsolation: Type.Optional(TenantIsolationSchema),
    rules: Type.Array(RuleSchema, { minItems: 1, description: 'Deny rules override allow rules; no match denies.' }),
  },
  { description: 'A named set of rules. A route names one or more policies; their rules are combined.' },
);

export const AuthzSchema = Closed(
  {
    rolesFrom: Type.Optional(RolesFromSchema),
    bindings: Type.Optional(Type.Array(BindingSchema, { default: [], description: 'Subject → roles.' })),
    roles: Type.Optional(
      Type.Record(RoleName, RoleSchema, {
        additionalProperties: false,
        default: {},
        description: `Named roles. \`${ANONYMOUS_ROLE}\` may be defined to give unauthenticated requests permissions.`,
      }),
    ),
    permissions: Type.Optional(
      Type.Record(PermissionName, PermissionSchema, {
        additionalProperties: false,
        default: {},
        description: 'Named permissions.',
      }),
    ),
    policies: Type.Array(PolicySchema, { minItems: 1, description: 'Policies, referenced by id from routes.' }),
  },
  { description: 'Role-based authorization. Deny by default: a request no allow rule grants is refused.' },
);

/** A route's `authz`: the policy (or policies, combined) that guard it. */
export const RouteAuthzSchema = Type.Union([Id('Policy id'), Type.Array(Id('Policy id'), { minItems: 1, uniqueItems: true })], {
  description: 'The policy id, or several policy ids whose rules are combined (a deny in any wins).',
});

export type RolesFromConfig = Static<typeof RolesFromSchema>;
export type BindingConfig = Static<typeof BindingSchema>;
export type RoleConfig = Static<typeof RoleSchema>;
export type PermissionConfig = Static<typeof PermissionSchema>;
export type ConditionsConfig = Static<typeof ConditionsSchema>;
export type RuleConfig = Static<typeof RuleSchema>;
export type TenantIsolationConfig = Static<typeof TenantIsolationSchema>;
export type PolicyConfig = Static<typeof PolicySchema>;
export type AuthzConfig = Static<typeof AuthzSchema>;
export type RouteAuthzConfig = Static<typeof RouteAuthzSchema>;
