/**
 * Semantic checks of the `authz` section and of routes' references to it:
 * what the schema cannot say. Run by the config loader (so a mistake fails
 * at load with file:line like every other) and by `compileAuthz` (so a
 * config built in code cannot skip them).
 *
 * Errors are anything that would make a rule mean something other than it
 * says, or mean nothing: an unknown role is a typo that silently grants or
 * denies nobody, a cycle has no closure, a rule that can never match is dead
 * weight someone believes is protecting them.
 */
import { didYouMean } from '../config/issues.js';
import { ANONYMOUS_ROLE, type AuthzConfig, type PermissionConfig, type RuleConfig } from './schema.js';
import { isRole, roleClosures, rolesCovering, type RoleTable } from './roles.js';
import { validateAction, validateGlob, validateGrpcMethod, validateSubjectPattern } from './patterns.js';

export type AuthzIssueSeverity = 'error' | 'warning';
export type AuthzReport = (path: (string | number)[], code: string, message: string, severity?: AuthzIssueSeverity) => void;

/** The slice of the whole config the checks read; `BulwarkConfig` fits once it has `authz` and `routes[].authz`. */
export interface AuthzCheckInput {
  authz?: AuthzConfig | undefined;
  routes?: readonly { id: string; authz?: unknown }[] | undefined;
}

type Path = (string | number)[];

export function authzChecks(config: AuthzCheckInput, report: AuthzReport): void {
  const authz = config.authz;
  const routes = config.routes;
  if (authz === undefined) {
    routes?.forEach((route, i) => {
      if (route.authz !== undefined) {
        report(
          ['routes', i, 'authz'],
          'authz.unknown_policy',
          `route "${route.id}" names authz policies but there is no authz section`,
        );
      }
    });
    return;
  }
  const roles: RoleTable = authz.roles ?? {};
  const permissions: Readonly<Record<string, PermissionConfig>> = authz.permissions ?? {};
  checkRoles(roles, permissions, report);
  const closures = roleClosures(roles);
  Object.entries(permissions).forEach(([name, permission]) => {
    checkGrant(['authz', 'permissions', name], permission, 'authz.permission_shape', report);
  });
  (authz.bindings ?? []).forEach((binding, i) => {
    const problem = validateSubjectPattern(binding.subject);
    if (problem !== null) report(['authz', 'bindings', i, 'subject'], 'authz.bad_pattern', problem);
    binding.roles.forEach((role, j) => checkRoleRef(['authz', 'bindings', i, 'roles', j], role, roles, report, false));
  });

  const policyIds = new Map<string, number>();
  authz.policies.forEach((policy, p) => {
    const first = policyIds.get(policy.id);
    if (first === undefined) policyIds.set(policy.id, p);
    else
      report(
        ['authz', 'policies', p, 'id'],
        'authz.duplicate_id',
        `duplicate policy id "${policy.id}" (also policies[${first}])`,
      );
    const ruleIds = new Map<string, number>();
    policy.rules.forEach((rule, r) => {
      const at: Path = ['authz', 'policies', p, 'rules', r];
      const seen = ruleIds.get(rule.id);
      if (seen === undefined) ruleIds.set(rule.id, r);
      else
        report(
          [...at, 'id'],
          'authz.duplicate_id',
          `duplicate rule id "${rule.id}" in policy "${policy.id}" (also rules[${seen}])`,
        );
      checkRule(at, rule, roles, permissions, closures, report);
    });
  });

  if (routes === undefined) return;
  const used = new Set<string>();
  routes.forEach((route, i) => {
    const at: Path = ['routes', i, 'authz'];
    const ref = route.authz;
    if (ref === undefined) {
      report(
        ['routes', i],
        'authz.route_unguarded',
        `route "${route.id}" names no authz policy: no authorization applies to it`,
        'warning',
      );
      return;
    }
    const ids = typeof ref === 'string' ? [ref] : ref;
    if (!Array.isArray(ids) || ids.length === 0 || !ids.every((id): id is string => typeof id === 'string')) {
      report(at, 'authz.bad_reference', 'must be a policy id or a non-empty list of policy ids');
      return;
    }
    let enforced = false;
    ids.forEach((id, j) => {
      used.add(id);
      const index = policyIds.get(id);
      if (index === undefined) {
        report(typeof ref === 'string' ? at : [...at, j], 'authz.unknown_policy', `unknown policy "${id}"`);
        enforced = true; // already an error; do not add a second, misleading one
      } else if ((authz.policies[index]!.mode ?? 'enforce') === 'enforce') {
        enforced = true;
      }
    });
    if (!enforced) {
      report(
        at,
        'authz.shadow_only',
        `every policy of route "${route.id}" is in shadow mode: decisions are recorded but nothing is enforced`,
        'warning',
      );
    }
  });
  authz.policies.forEach((policy, p) => {
    if (!used.has(policy.id)) {
      report(['authz', 'policies', p], 'authz.policy_unused', `no route names policy "${policy.id}"`, 'warning');
    }
  });
}

function checkRoles(roles: RoleTable, permissions: Readonly<Record<string, PermissionConfig>>, report: AuthzReport): void {
  for (const [name, role] of Object.entries(roles)) {
    if (name.length === 0 || /[\s*]/.test(name)) {
      report(['authz', 'roles', name], 'authz.bad_name', `"${name}" is not a role name (no whitespace, no "*")`);
    }
    (role.inherits ?? []).forEach((parent, i) => {
      const at: Path = ['authz', 'roles', name, 'inherits', i];
      if (parent === ANONYMOUS_ROLE) {
        report(
          at,
          'authz.reserved_role',
          `no role may inherit "${ANONYMOUS_ROLE}": rules aimed at anonymous callers would hit it`,
        );
      } else {
        checkRoleRef(at, parent, roles, report, false);
      }
    });
    (role.permissions ?? []).forEach((perm, i) => {
      if (!Object.hasOwn(permissions, perm)) {
        report(
          ['authz', 'roles', name, 'permissions', i],
          'authz.unknown_permission',
          unknown('permission', perm, Object.keys(permissions)),
        );
      }
    });
  }
  // Cycles: depth-first with colours; a back edge to a role on the stack closes a cycle.
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (name: string): void => {
    state.set(name, 'open');
    stack.push(name);
    (roles[name]!.inherits ?? []).forEach((parent, i) => {
      if (!Object.hasOwn(roles, parent)) return;
      const s = state.get(parent);
      if (s === 'open') {
        const cycle = [...stack.slice(stack.indexOf(parent)), parent].join(' → ');
        report(['authz', 'roles', name, 'inherits', i], 'authz.role_cycle', `role inheritance cycle: ${cycle}`);
      } else if (s === undefined) {
        visit(parent);
      }
    });
    stack.pop();
    state.set(name, 'done');
  };
  for (const name of Object.keys(roles)) if (!state.has(name)) visit(name);
}

/** `allowAnonymous`: rules may name `anonymous`; bindings and `inherits` may not. */
function checkRoleRef(at: Path, role: string, roles: RoleTable, report: AuthzReport, allowAnonymous: boolean): void {
  if (role === ANONYMOUS_ROLE) {
    if (!allowAnonymous) {
      report(at, 'authz.reserved_role', `"${ANONYMOUS_ROLE}" is held only by requests without an identity; it cannot be given`);
    }
    return;
  }
  if (!isRole(roles, role)) report(at, 'authz.unknown_role', unknown('role', role, Object.keys(roles)));
}

/** Resources need actions and the reverse; something must be granted. */
function checkGrant(
  at: Path,
  grant: Pick<PermissionConfig, 'resources' | 'actions' | 'grpc'>,
  code: string,
  report: AuthzReport,
): void {
  if (grant.resources !== undefined && grant.actions === undefined) {
    report(at, code, '`resources` need `actions` (HTTP methods, or "*")');
  }
  if (grant.actions !== undefined && grant.resources === undefined) {
    report(at, code, '`actions` apply to `resources`, and there are none (gRPC methods go in `grpc`)');
  }
  if (grant.resources === undefined && grant.grpc === undefined) {
    report(at, code, 'grants nothing: give `resources` + `actions` and/or `grpc`');
  }
  grant.resources?.forEach((resource, i) => {
    const problem = validateGlob(resource);
    if (problem !== null) report([...at, 'resources', i], 'authz.bad_pattern', problem);
  });
  grant.actions?.forEach((action, i) => {
    const problem = validateAction(action);
    if (problem !== null) report([...at, 'actions', i], 'authz.bad_pattern', problem);
  });
  grant.grpc?.forEach((method, i) => {
    const problem = validateGrpcMethod(method);
    if (problem !== null) report([...at, 'grpc', i], 'authz.bad_pattern', problem);
  });
}

function checkRule(
  at: Path,
  rule: RuleConfig,
  roles: RoleTable,
  permissions: Readonly<Record<string, PermissionConfig>>,
  closures: ReadonlyMap<string, ReadonlySet<string>>,
  report: AuthzReport,
): void {
  const inline = rule.resources !== undefined || rule.actions !== undefined || rule.grpc !== undefined;
  if (rule.permissions !== undefined && inline) {
    report(at, 'authz.rule_shape', 'a rule grants by `permissions` or by `resources`/`actions`/`grpc`, not both');
  } else if (rule.permissions === undefined) {
    checkGrant(at, rule, 'authz.rule_shape', report);
    if (rule.roles === undefined)
      report(at, 'authz.rule_shape', 'say whom the rule applies to: `roles` (a role, "*" or "anonymous")');
  }
  rule.roles?.forEach((role, i) => {
    if (role !== '*') checkRoleRef([...at, 'roles', i], role, roles, report, true);
  });
  const knownPermissions: string[] = [];
  rule.permissions?.forEach((perm, i) => {
    if (Object.hasOwn(permissions, perm)) knownPermissions.push(perm);
    else report([...at, 'permissions', i], 'authz.unknown_permission', unknown('permission', perm, Object.keys(permissions)));
  });

  const when = rule.when;
  if (when !== undefined) {
    const subjects = when.subject === undefined ? [] : typeof when.subject === 'string' ? [when.subject] : when.subject;
    subjects.forEach((subject, i) => {
      const problem = validateSubjectPattern(subject);
      const path: Path = typeof when.subject === 'string' ? [...at, 'when', 'subject'] : [...at, 'when', 'subject', i];
      if (problem !== null) report(path, 'authz.bad_pattern', problem);
    });
    const equals = when.tenant?.equals;
    if (equals !== undefined) {
      if (!/^(param:[A-Za-z_][A-Za-z0-9_]*|claim:[^.]+(\.[^.]+)*)$/.test(equals)) {
        report([...at, 'when', 'tenant', 'equals'], 'authz.bad_condition', '`equals` is "param:NAME" or "claim:PATH"');
      } else if (equals.startsWith('param:')) {
        const name = equals.slice('param:'.length);
        const resources = rule.resources ?? knownPermissions.flatMap((perm) => permissions[perm]!.resources ?? []);
        if (!resources.some((resource) => resource.split('/').includes(`{${name}}`))) {
          report(
            [...at, 'when', 'tenant', 'equals'],
            'authz.param_not_captured',
            `no resource of rule "${rule.id}" captures {${name}}: the condition holds only on routes that capture it`,
            'warning',
          );
        }
      }
    }
  }

  // Can this rule ever match?
  const named = rule.roles ?? [];
  const onlyAnonymous = named.length > 0 && named.every((role) => role === ANONYMOUS_ROLE);
  if (onlyAnonymous && when !== undefined) {
    const needs = (['tenant', 'scopes', 'subject', 'claims'] as const).filter((k) => when[k] !== undefined);
    if (needs.length > 0) {
      report(
        at,
        'authz.rule_never_matches',
        `rule "${rule.id}" applies only to anonymous requests, which carry no ${needs.join(', ')}`,
      );
      return;
    }
  }
  if (rule.effect === 'allow' && knownPermissions.length > 0 && knownPermissions.length === rule.permissions?.length) {
    // An allow by permission grants only to roles holding it; if none of the roles it applies to does, it is dead.
    // `*` in an allow is every authenticated identity: every role but `anonymous`, unless that is named too.
    const candidates =
      rule.roles === undefined
        ? new Set(closures.keys())
        : named.includes('*')
          ? new Set([...closures.keys()].filter((r) => r !== ANONYMOUS_ROLE || named.includes(ANONYMOUS_ROLE)))
          : rolesCovering(closures, named);
    const held = knownPermissions.some((perm) =>
      [...candidates].some((role) =>
        [...closures.get(role)!].some((r) => Object.hasOwn(roles, r) && roles[r]!.permissions?.includes(perm)),
      ),
    );
    if (!held) {
      report(
        at,
        'authz.rule_never_matches',
        `no role this rule applies to holds ${knownPermissions.map((p) => `"${p}"`).join(' or ')}: it can never allow anything`,
      );
    }
  }
}

function unknown(kind: string, name: string, known: readonly string[]): string {
  return `unknown ${kind} "${name}"${didYouMean(name, known)}`;
}
