/**
 * `authz` config → an immutable matcher, once per config snapshot. Everything
 * a decision needs is settled here: globs and subject patterns compiled, role
 * inheritance flattened into the set of roles each rule applies to, the
 * holders of each permission, rules indexed by method (deny rules first).
 * `evaluate` then does `Set.has`, string comparisons and glob walks, and
 * allocates nothing: its verdicts are preallocated per rule.
 */
import type { Identity } from '../core/context.js';
import type { ErrorCode } from '../core/errors.js';
import { authzChecks, type AuthzIssueSeverity } from './checks.js';
import { claimRef, GlobCache, readClaim, SubjectPattern, type ClaimRef, type CompiledGlob } from './patterns.js';
import { RoleResolver, roleClosures, rolesCovering } from './roles.js';
import { DEFAULT_TENANT_PARAM, type AuthzConfig, type PermissionConfig, type PolicyConfig, type RuleConfig } from './schema.js';

export interface AuthzIssue {
  readonly path: readonly (string | number)[];
  readonly code: string;
  readonly message: string;
  readonly severity: AuthzIssueSeverity;
}

/** `compileAuthz` refused the config; `issues` lists every error (the loader reports the same ones with file:line). */
export class AuthzConfigError extends Error {
  override readonly name = 'AuthzConfigError';
  readonly code = 'ERR_AUTHZ_CONFIG' as const;
  readonly issues: readonly AuthzIssue[];

  constructor(issues: readonly AuthzIssue[]) {
    super(`invalid authz config:\n${issues.map((i) => `  ${i.path.join('.')}: ${i.message} [${i.code}]`).join('\n')}`);
    this.issues = issues;
  }
}

/** The record code of an allow (not an error, so not in ERROR_CODES). */
export const AUTHZ_ALLOWED = 'rbac.allowed';

export type AuthzDenyCode = Extract<
  ErrorCode,
  'rbac.denied' | 'rbac.no_matching_rule' | 'rbac.tenant_mismatch' | 'rbac.insufficient_scope'
>;

/** The outcome of evaluating one rule set. Preallocated: a decision never builds one. */
export interface Verdict {
  readonly allowed: boolean;
  readonly code: typeof AUTHZ_ALLOWED | AuthzDenyCode;
  /** The deciding rule: the allow or deny that matched, or the allow that nearly did (scope, tenant). */
  readonly rule: CompiledRule | null;
}

const NO_MATCH: Verdict = Object.freeze({ allowed: false, code: 'rbac.no_matching_rule', rule: null });

// What checking a rule against a request found. Higher misses are more
// useful to report: a scope the client could obtain beats "another tenant",
// which beats "nothing matched".
const NOT_APPLICABLE = -1;
const PASS = 0;
const MISS_OTHER = 1;
const MISS_TENANT = 2;
const MISS_SCOPE = 3;

/** gRPC is always POST (HTTP/2 framing, grpc-web too): a gRPC grant matches no other method. */
const GRPC_METHOD = 'POST';

interface Isolation {
  readonly param: string;
  readonly requireTenant: boolean;
}

interface Conditions {
  readonly tenantParam: string | null;
  readonly tenantClaim: ClaimRef | null;
  readonly scopes: readonly string[] | null;
  readonly subjects: readonly SubjectPattern[] | null;
  readonly claims: readonly { readonly ref: ClaimRef; readonly values: readonly (string | number | boolean)[] }[] | null;
}

/** A resource glob as one rule uses it: capture slots of the parameters its conditions read (-1: not captured). */
interface RuleResource {
  readonly glob: CompiledGlob;
  readonly isolationSlot: number;
  readonly tenantSlot: number;
}

/** What a permission (compiled once, shared) or an inline rule covers. */
interface Grant {
  /** `null`: any method. */
  readonly methods: ReadonlySet<string> | null;
  readonly globs: readonly CompiledGlob[];
  readonly grpcExact: ReadonlySet<string>;
  /** `/pkg.Service/` for each `/pkg.Service/*`. */
  readonly grpcServices: readonly string[];
}

interface RuleGrant {
  readonly methods: ReadonlySet<string> | null;
  readonly paths: readonly RuleResource[];
  readonly grpcExact: ReadonlySet<string>;
  readonly grpcServices: readonly string[];
  /** Allow by permission: the roles holding it, inheritance included. `null`: no such requirement. */
  readonly holders: ReadonlySet<string> | null;
}

export class CompiledRule {
  readonly policy: string;
  readonly id: string;
  readonly deny: boolean;
  /** Applies to every request, anonymous included (deny rules with `*` or without `roles`, permission rules without `roles`). */
  readonly everyone: boolean;
  /** Applies to every authenticated identity (`*` in an allow rule). */
  readonly anyIdentity: boolean;
  /** The named roles and every role inheriting one of them; `null` when none are named. */
  readonly roles: ReadonlySet<string> | null;
  readonly grants: readonly RuleGrant[];
  /** Methods the rule can match, for the index; `null`: any. */
  readonly methods: readonly string[] | null;
  /** Only on allow rules: a deny never needs isolation to narrow it. */
  readonly isolation: Isolation | null;
  readonly when: Conditions | null;
  readonly matched: Verdict;
  readonly scopeMiss: Verdict;
  readonly tenantMiss: Verdict;

  constructor(init: Omit<CompiledRule, 'matched' | 'scopeMiss' | 'tenantMiss'>) {
    this.policy = init.policy;
    this.id = init.id;
    this.deny = init.deny;
    this.everyone = init.everyone;
    this.anyIdentity = init.anyIdentity;
    this.roles = init.roles;
    this.grants = init.grants;
    this.methods = init.methods;
    this.isolation = init.isolation;
    this.when = init.when;
    this.matched = Object.freeze(
      this.deny ? { allowed: false, code: 'rbac.denied', rule: this } : { allowed: true, code: AUTHZ_ALLOWED, rule: this },
    );
    this.scopeMiss = Object.freeze({ allowed: false, code: 'rbac.insufficient_scope', rule: this });
    this.tenantMiss = Object.freeze({ allowed: false, code: 'rbac.tenant_mismatch', rule: this });
  }
}

export interface CompiledPolicy {
  readonly id: string;
  readonly mode: 'enforce' | 'shadow';
  readonly rules: readonly CompiledRule[];
}

/** Rules of a set of policies by method, deny rules first so the first passing allow is final. */
export interface RuleIndex {
  readonly byMethod: ReadonlyMap<string, readonly CompiledRule[]>;
  readonly anyMethod: readonly CompiledRule[];
}

/** What a stage for a given list of policies evaluates. */
export interface PolicySet {
  readonly ids: readonly string[];
  /** Rules of the enforced policies; `null` when every policy is in shadow mode. */
  readonly enforced: RuleIndex | null;
  /** Enforced + shadow rules ("what if the shadow policies were enforced"); `null` without shadow policies. */
  readonly withShadow: RuleIndex | null;
}

export class CompiledAuthz {
  readonly policies: ReadonlyMap<string, CompiledPolicy>;
  readonly roles: RoleResolver;
  readonly #sets = new Map<string, PolicySet>();

  constructor(policies: ReadonlyMap<string, CompiledPolicy>, roles: RoleResolver) {
    this.policies = policies;
    this.roles = roles;
  }

  /**
   * The indexes for a route's policies, built at most once per distinct list
   * (many routes share a policy). Unknown ids are a caller mistake (the
   * config checks refuse them at load): TypeError.
   */
  policySet(ids: readonly string[]): PolicySet {
    const key = JSON.stringify(ids);
    let set = this.#sets.get(key);
    if (set !== undefined) return set;
    const enforced: CompiledRule[] = [];
    const shadow: CompiledRule[] = [];
    for (const id of ids) {
      const policy = this.policies.get(id);
      if (policy === undefined) throw new TypeError(`unknown authz policy "${id}"`);
      (policy.mode === 'shadow' ? shadow : enforced).push(...policy.rules);
    }
    set = {
      ids: Object.freeze([...ids]),
      enforced: enforced.length === 0 ? null : buildIndex(enforced),
      withShadow: shadow.length === 0 ? null : buildIndex([...enforced, ...shadow]),
    };
    this.#sets.set(key, set);
    return set;
  }
}

/** Validates (the same checks as the loader) and compiles; throws AuthzConfigError on any error. */
export function compileAuthz(config: AuthzConfig): CompiledAuthz {
  const issues: AuthzIssue[] = [];
  authzChecks({ authz: config }, (path, code, message, severity = 'error') => {
    if (severity === 'error') issues.push({ path, code, message, severity });
  });
  if (issues.length > 0) throw new AuthzConfigError(issues);

  const roleTable = config.roles ?? {};
  const closures = roleClosures(roleTable);
  const globs = new GlobCache();
  const grants = new Map<string, Grant>();
  const holders = new Map<string, ReadonlySet<string>>();
  for (const [name, permission] of Object.entries(config.permissions ?? {})) {
    grants.set(name, compileGrant(permission, globs));
    const direct = Object.entries(roleTable)
      .filter(([, role]) => role.permissions?.includes(name))
      .map(([role]) => role);
    holders.set(name, rolesCovering(closures, direct));
  }
  const policies = new Map<string, CompiledPolicy>();
  for (const policy of config.policies) {
    const rules = policy.rules.map((rule) => compileRule(policy, rule, { closures, grants, holders, globs }));
    policies.set(policy.id, Object.freeze({ id: policy.id, mode: policy.mode ?? 'enforce', rules: Object.freeze(rules) }));
  }
  return new CompiledAuthz(policies, new RoleResolver(config.rolesFrom, config.bindings ?? []));
}

function compileGrant(grant: Pick<PermissionConfig, 'resources' | 'actions' | 'grpc'>, globs: GlobCache): Grant {
  const actions = grant.actions ?? [];
  const grpc = grant.grpc ?? [];
  return {
    methods: actions.includes('*') ? null : new Set(actions),
    globs: (grant.resources ?? []).map((r) => globs.get(r)),
    grpcExact: new Set(grpc.filter((m) => !m.endsWith('/*'))),
    grpcServices: grpc.filter((m) => m.endsWith('/*')).map((m) => m.slice(0, -1)),
  };
}

interface RuleContext {
  readonly closures: ReadonlyMap<string, ReadonlySet<string>>;
  readonly grants: ReadonlyMap<string, Grant>;
  readonly holders: ReadonlyMap<string, ReadonlySet<string>>;
  readonly globs: GlobCache;
}

function compileRule(policy: PolicyConfig, rule: RuleConfig, rc: RuleContext): CompiledRule {
  const deny = rule.effect === 'deny';
  const iso = policy.tenantIsolation;
  const isolation: Isolation | null =
    deny || iso?.enabled === false
      ? null
      : { param: iso?.param ?? DEFAULT_TENANT_PARAM, requireTenant: iso?.requireTenant ?? false };
  const when = compileConditions(rule);

  // Who. Without `roles` (permission rules only) a rule applies to everyone:
  // an allow is then narrowed to the permission's holders, a deny stays wide.
  const named = rule.roles;
  const star = named?.includes('*') ?? false;
  const specific = (named ?? []).filter((r) => r !== '*');
  const everyone = named === undefined || (deny && star);
  const anyIdentity = !deny && star;
  const roles = specific.length === 0 ? null : rolesCovering(rc.closures, specific);

  const slot = (glob: CompiledGlob, name: string | null) => (name === null ? -1 : glob.names.indexOf(name));
  const toRuleGrant = (grant: Grant, holders: ReadonlySet<string> | null): RuleGrant => ({
    methods: grant.methods,
    paths: grant.globs.map((glob) => ({
      glob,
      isolationSlot: slot(glob, isolation?.param ?? null),
      tenantSlot: slot(glob, when?.tenantParam ?? null),
    })),
    grpcExact: grant.grpcExact,
    grpcServices: grant.grpcServices,
    holders,
  });
  const grants =
    rule.permissions === undefined
      ? [toRuleGrant(compileGrant(rule, rc.globs), null)]
      : rule.permissions.map((p) => toRuleGrant(rc.grants.get(p)!, deny ? null : rc.holders.get(p)!));

  let methods: Set<string> | null = new Set();
  for (const g of grants) {
    if (g.paths.length > 0) {
      if (g.methods === null) {
        methods = null;
        break;
      }
      for (const m of g.methods) methods.add(m);
    }
    if (g.grpcExact.size > 0 || g.grpcServices.length > 0) methods.add(GRPC_METHOD);
  }

  return new CompiledRule({
    policy: policy.id,
    id: rule.id,
    deny,
    everyone,
    anyIdentity,
    roles,
    grants: Object.freeze(grants),
    methods: methods === null ? null : Object.freeze([...methods]),
    isolation,
    when,
  });
}

function compileConditions(rule: RuleConfig): Conditions | null {
  const w = rule.when;
  if (w === undefined) return null;
  const equals = w.tenant?.equals;
  const subjects = w.subject === undefined ? null : typeof w.subject === 'string' ? [w.subject] : w.subject;
  return {
    tenantParam: equals?.startsWith('param:') ? equals.slice('param:'.length) : null,
    tenantClaim: equals?.startsWith('claim:') ? claimRef(equals.slice('claim:'.length)) : null,
    scopes: w.scopes ?? null,
    subjects:
      subjects === null
        ? null
        : subjects.map((s) => {
            const pattern = SubjectPattern.compile(s);
            if (typeof pattern === 'string') throw new TypeError(`subject pattern ${s}: ${pattern}`);
            return pattern;
          }),
    claims:
      w.claims === undefined
        ? null
        : Object.entries(w.claims).map(([path, value]) => ({
            ref: claimRef(path),
            values: Array.isArray(value) ? value : [value],
          })),
  };
}

function buildIndex(rules: readonly CompiledRule[]): RuleIndex {
  const ordered = [...rules.filter((r) => r.deny), ...rules.filter((r) => !r.deny)];
  const named = new Set<string>();
  for (const r of ordered) for (const m of r.methods ?? []) named.add(m);
  const byMethod = new Map<string, readonly CompiledRule[]>();
  for (const method of named) {
    byMethod.set(method, Object.freeze(ordered.filter((r) => r.methods === null || r.methods.includes(method))));
  }
  return { byMethod, anyMethod: Object.freeze(ordered.filter((r) => r.methods === null)) };
}

// ---------------------------------------------------------------------------
// Evaluation (per request)
// ---------------------------------------------------------------------------

/**
 * One rule set's verdict: the first matching deny, else the first matching
 * allow, else the most useful near miss (deny by default). Order across the
 * set only chooses which rule is reported, never the outcome.
 */
export function evaluate(
  index: RuleIndex,
  method: string,
  path: string,
  params: Readonly<Record<string, string>>,
  identity: Identity | null,
  roles: readonly string[],
): Verdict {
  const rules = index.byMethod.get(method) ?? index.anyMethod;
  const authenticated = identity !== null;
  let miss = MISS_OTHER;
  let missRule: CompiledRule | null = null;
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i]!;
    if (!appliesTo(rule, roles, authenticated)) continue;
    const result = matchRule(rule, method, path, params, identity, roles);
    if (result === PASS) return rule.matched;
    if (!rule.deny && result > miss) {
      miss = result;
      missRule = rule;
    }
  }
  if (missRule === null) return NO_MATCH;
  return miss === MISS_SCOPE ? missRule.scopeMiss : missRule.tenantMiss;
}

function appliesTo(rule: CompiledRule, roles: readonly string[], authenticated: boolean): boolean {
  if (rule.everyone || (authenticated && rule.anyIdentity)) return true;
  return rule.roles !== null && holdsAny(roles, rule.roles);
}

function holdsAny(roles: readonly string[], set: ReadonlySet<string>): boolean {
  for (let i = 0; i < roles.length; i++) if (set.has(roles[i]!)) return true;
  return false;
}

/** PASS, the best miss among the resources that matched, or NOT_APPLICABLE. */
function matchRule(
  rule: CompiledRule,
  method: string,
  path: string,
  params: Readonly<Record<string, string>>,
  identity: Identity | null,
  roles: readonly string[],
): number {
  let best = NOT_APPLICABLE;
  const grants = rule.grants;
  for (let g = 0; g < grants.length; g++) {
    const grant = grants[g]!;
    if (grant.holders !== null && !holdsAny(roles, grant.holders)) continue;
    if (grant.methods === null || grant.methods.has(method)) {
      const paths = grant.paths;
      for (let r = 0; r < paths.length; r++) {
        const resource = paths[r]!;
        if (!resource.glob.match(path)) continue;
        // Read the captures now: the next match on this glob overwrites them.
        const result = checkConditions(rule, resource, path, params, identity);
        if (result === PASS) return PASS;
        if (result > best) best = result;
      }
    }
    if (method === GRPC_METHOD && grpcMatches(grant, path)) {
      const result = checkConditions(rule, null, path, params, identity);
      if (result === PASS) return PASS;
      if (result > best) best = result;
    }
  }
  return best;
}

/** Exact, case-sensitive, never normalized: `/pkg.service/M` is not `/pkg.Service/M`. */
function grpcMatches(grant: RuleGrant, path: string): boolean {
  if (grant.grpcExact.has(path)) return true;
  const services = grant.grpcServices;
  for (let i = 0; i < services.length; i++) {
    const prefix = services[i]!;
    if (path.length > prefix.length && path.startsWith(prefix) && path.indexOf('/', prefix.length) === -1) return true;
  }
  return false;
}

function checkConditions(
  rule: CompiledRule,
  resource: RuleResource | null,
  path: string,
  params: Readonly<Record<string, string>>,
  identity: Identity | null,
): number {
  const tenant = identity === null ? undefined : identity.tenant;
  const iso = rule.isolation;
  if (iso !== null) {
    // Every place the request names a tenant (the rule's resource, the route) must be the identity's own.
    if (resource !== null && resource.isolationSlot >= 0) {
      if (tenant === undefined ? iso.requireTenant : !captureEquals(resource.glob, resource.isolationSlot, path, tenant)) {
        return MISS_TENANT;
      }
    }
    const named = param(params, iso.param);
    if (named !== undefined && (tenant === undefined ? iso.requireTenant : named !== tenant)) return MISS_TENANT;
  }
  const c = rule.when;
  if (c === null) return PASS;
  if (c.tenantParam !== null) {
    if (tenant === undefined) return MISS_TENANT;
    const slot = resource === null ? -1 : resource.tenantSlot;
    if (slot >= 0 ? !captureEquals(resource!.glob, slot, path, tenant) : param(params, c.tenantParam) !== tenant) {
      return MISS_TENANT;
    }
  }
  if (c.tenantClaim !== null) {
    if (tenant === undefined || !sameTenant(readClaim(identity!.claims, c.tenantClaim), tenant)) return MISS_TENANT;
  }
  if (c.subjects !== null) {
    if (identity === null || !anySubject(c.subjects, identity.subject)) return MISS_OTHER;
  }
  if (c.claims !== null) {
    if (identity === null) return MISS_OTHER;
    for (let i = 0; i < c.claims.length; i++) {
      const claim = c.claims[i]!;
      if (!claimMatches(readClaim(identity.claims, claim.ref), claim.values)) return MISS_OTHER;
    }
  }
  // Last, so `insufficient_scope` means "everything else held: more scope would be allowed".
  if (c.scopes !== null) {
    if (identity === null) return MISS_SCOPE;
    const have = identity.scopes;
    for (let i = 0; i < c.scopes.length; i++) if (!have.includes(c.scopes[i]!)) return MISS_SCOPE;
  }
  return PASS;
}

function captureEquals(glob: CompiledGlob, slot: number, path: string, value: string): boolean {
  const start = glob.captureStart(slot);
  return glob.captureEnd(slot) - start === value.length && path.startsWith(value, start);
}

/** Own properties only: route params may be a plain object, and `constructor` must not resolve. */
function param(params: Readonly<Record<string, string>>, name: string): string | undefined {
  return Object.hasOwn(params, name) ? params[name] : undefined;
}

function sameTenant(value: unknown, tenant: string): boolean {
  return typeof value === 'string' ? value === tenant : typeof value === 'number' && String(value) === tenant;
}

function anySubject(patterns: readonly SubjectPattern[], subject: string): boolean {
  for (let i = 0; i < patterns.length; i++) if (patterns[i]!.match(subject)) return true;
  return false;
}

/** Equal to one of `values`; an array claim (groups, amr) passes when it contains one of them. */
function claimMatches(claim: unknown, values: readonly (string | number | boolean)[]): boolean {
  if (Array.isArray(claim)) {
    for (let i = 0; i < claim.length; i++) if (values.includes(claim[i] as string)) return true;
    return false;
  }
  return (typeof claim === 'string' || typeof claim === 'number' || typeof claim === 'boolean') && values.includes(claim);
}
