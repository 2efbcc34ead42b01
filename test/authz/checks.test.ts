import { describe, expect, it } from 'vitest';
import { authzChecks, type AuthzCheckInput } from '../../src/authz/checks.js';
import { AuthzConfigError, compileAuthz } from '../../src/authz/compile.js';
import type { AuthzConfig, RuleConfig } from '../../src/authz/schema.js';

interface Reported {
  path: string;
  code: string;
  message: string;
  severity: 'error' | 'warning';
}

function check(input: AuthzCheckInput): Reported[] {
  const out: Reported[] = [];
  authzChecks(input, (path, code, message, severity = 'error') => out.push({ path: path.join('.'), code, message, severity }));
  return out;
}

const codes = (input: AuthzCheckInput) => check(input).map((r) => `${r.severity} ${r.code} @ ${r.path}`);

const VALID: AuthzConfig = {
  roles: { viewer: { permissions: ['read'] }, editor: { inherits: ['viewer'], permissions: ['write'] } },
  permissions: {
    read: { resources: ['/docs/**'], actions: ['GET'] },
    write: { resources: ['/docs/**'], actions: ['PUT'], grpc: ['/docs.v1.Docs/*'] },
  },
  policies: [{ id: 'docs', rules: [{ id: 'by-permission', effect: 'allow', permissions: ['read', 'write'] }] }],
};

describe('authzChecks', () => {
  it('accepts a valid config silently', () => {
    expect(check({ authz: VALID, routes: [{ id: 'api', authz: 'docs' }] })).toEqual([]);
    expect(() => compileAuthz(VALID)).not.toThrow();
  });

  it('reports unknown roles and permissions wherever they are named, with a suggestion', () => {
    const config: AuthzConfig = {
      ...VALID,
      roles: { ...VALID.roles, admin: { inherits: ['editr'], permissions: ['delete'] } },
      bindings: [{ subject: 'user:root', roles: ['root'] }],
      policies: [
        {
          id: 'docs',
          rules: [
            { id: 'a', effect: 'allow', permissions: ['raed'] },
            { id: 'b', effect: 'allow', roles: ['Viewer'], resources: ['/x'], actions: ['GET'] },
          ],
        },
      ],
    };
    const reported = check({ authz: config });
    expect(reported.map((r) => `${r.code} @ ${r.path}`)).toEqual([
      'authz.unknown_role @ authz.roles.admin.inherits.0',
      'authz.unknown_permission @ authz.roles.admin.permissions.0',
      'authz.unknown_role @ authz.bindings.0.roles.0',
      'authz.unknown_permission @ authz.policies.0.rules.0.permissions.0',
      'authz.unknown_role @ authz.policies.0.rules.1.roles.0',
    ]);
    expect(reported[0]!.message).toContain('did you mean "editor"');
    expect(reported[3]!.message).toContain('did you mean "read"');
  });

  it('rejects inheritance cycles: self, two roles, three roles — and compileAuthz refuses them', () => {
    const withRoles = (roles: AuthzConfig['roles']): AuthzConfig => ({
      roles,
      policies: [{ id: 'p', rules: [{ id: 'r', effect: 'allow', roles: ['*'], resources: ['/x'], actions: ['GET'] }] }],
    });
    expect(codes({ authz: withRoles({ a: { inherits: ['a'] } }) })).toEqual([
      'error authz.role_cycle @ authz.roles.a.inherits.0',
    ]);
    expect(codes({ authz: withRoles({ a: { inherits: ['b'] }, b: { inherits: ['a'] } }) })).toEqual([
      'error authz.role_cycle @ authz.roles.b.inherits.0',
    ]);
    const three = check({
      authz: withRoles({ a: { inherits: ['b'] }, b: { inherits: ['c'] }, c: { inherits: ['a'] }, d: { inherits: ['a'] } }),
    });
    expect(three).toHaveLength(1);
    expect(three[0]!.message).toBe('role inheritance cycle: a → b → c → a');
    try {
      compileAuthz(withRoles({ a: { inherits: ['b'] }, b: { inherits: ['a'] } }));
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(AuthzConfigError);
      expect((error as AuthzConfigError).issues.map((i) => i.code)).toEqual(['authz.role_cycle']);
    }
    // A diamond is not a cycle.
    expect(
      check({
        authz: withRoles({ top: { inherits: ['l', 'r'] }, l: { inherits: ['base'] }, r: { inherits: ['base'] }, base: {} }),
      }),
    ).toEqual([]);
  });

  it('rejects invalid patterns: resource globs, gRPC methods, actions, subjects', () => {
    const config: AuthzConfig = {
      roles: { viewer: {} },
      bindings: [{ subject: 'spiffe://td/**/x/**', roles: ['viewer'] }],
      permissions: {
        bad: {
          resources: ['/a/**/b/**', 'relative', '/x/pre*'],
          actions: ['get'],
          grpc: ['/shop.Orders/Get*', 'shop.Orders/Get', '/shop.Orders/**'],
        },
      },
      policies: [
        {
          id: 'p',
          rules: [
            {
              id: 'r',
              effect: 'allow',
              roles: ['viewer'],
              resources: ['/{a}/{a}'],
              actions: ['GET'],
              when: { subject: ['ok', 'a**b'] },
            },
          ],
        },
      ],
    };
    expect(codes({ authz: config })).toEqual([
      'error authz.bad_pattern @ authz.permissions.bad.resources.0',
      'error authz.bad_pattern @ authz.permissions.bad.resources.1',
      'error authz.bad_pattern @ authz.permissions.bad.resources.2',
      'error authz.bad_pattern @ authz.permissions.bad.actions.0',
      'error authz.bad_pattern @ authz.permissions.bad.grpc.0',
      'error authz.bad_pattern @ authz.permissions.bad.grpc.1',
      'error authz.bad_pattern @ authz.permissions.bad.grpc.2',
      'error authz.bad_pattern @ authz.bindings.0.subject',
      'error authz.bad_pattern @ authz.policies.0.rules.0.resources.0',
      'error authz.bad_pattern @ authz.policies.0.rules.0.when.subject.1',
    ]);
  });

  it('rejects duplicate policy ids and duplicate rule ids within a policy (not across policies)', () => {
    const rule: RuleConfig = { id: 'r', effect: 'allow', roles: ['*'], resources: ['/x'], actions: ['GET'] };
    const config: AuthzConfig = {
      policies: [
        { id: 'p', rules: [rule, rule] },
        { id: 'p', rules: [rule] },
        { id: 'q', rules: [rule] },
      ],
    };
    expect(codes({ authz: config })).toEqual([
      'error authz.duplicate_id @ authz.policies.0.rules.1.id',
      'error authz.duplicate_id @ authz.policies.1.id',
    ]);
  });

  it('rejects malformed rules and permissions', () => {
    const config: AuthzConfig = {
      roles: { v: { permissions: ['empty', 'noactions'] } },
      permissions: { empty: {}, noactions: { resources: ['/x'] } },
      policies: [
        {
          id: 'p',
          rules: [
            { id: 'both', effect: 'allow', permissions: ['empty'], resources: ['/x'], actions: ['GET'] },
            { id: 'nobody', effect: 'allow', resources: ['/x'], actions: ['GET'] },
            { id: 'nothing', effect: 'deny', roles: ['v'] },
            { id: 'orphan-actions', effect: 'deny', roles: ['v'], actions: ['GET'], grpc: ['/a.B/C'] },
          ],
        },
      ],
    };
    expect(codes({ authz: config })).toEqual([
      'error authz.permission_shape @ authz.permissions.empty',
      'error authz.permission_shape @ authz.permissions.noactions',
      'error authz.rule_shape @ authz.policies.0.rules.0',
      'error authz.rule_shape @ authz.policies.0.rules.1',
      'error authz.rule_shape @ authz.policies.0.rules.2',
      'error authz.rule_shape @ authz.policies.0.rules.3',
    ]);
  });

  it('keeps `anonymous` for requests without identity: no binding gives it, no role inherits it', () => {
    const config: AuthzConfig = {
      roles: { anonymous: { permissions: ['read'] }, user: { inherits: ['anonymous'] } },
      permissions: { read: { resources: ['/x'], actions: ['GET'] } },
      bindings: [{ subject: 'user:*', roles: ['anonymous'] }],
      policies: [{ id: 'p', rules: [{ id: 'r', effect: 'allow', permissions: ['read'] }] }],
    };
    expect(codes({ authz: config })).toEqual([
      'error authz.reserved_role @ authz.roles.user.inherits.0',
      'error authz.reserved_role @ authz.bindings.0.roles.0',
    ]);
  });

  it('reports rules that can never match', () => {
    const config: AuthzConfig = {
      roles: { viewer: { permissions: ['read'] }, clerk: {} },
      permissions: { read: { resources: ['/x'], actions: ['GET'] }, orphan: { resources: ['/y'], actions: ['GET'] } },
      policies: [
        {
          id: 'p',
          rules: [
            // Nobody holds `orphan`.
            { id: 'unheld', effect: 'allow', permissions: ['orphan'] },
            // Clerks do not hold `read`, and the rule is narrowed to clerks.
            { id: 'wrong-role', effect: 'allow', roles: ['clerk'], permissions: ['read'] },
            // Anonymous requests carry no scopes or claims.
            {
              id: 'anon-scopes',
              effect: 'allow',
              roles: ['anonymous'],
              resources: ['/z'],
              actions: ['GET'],
              when: { scopes: ['a'] },
            },
            {
              id: 'anon-claims',
              effect: 'deny',
              roles: ['anonymous'],
              resources: ['/z'],
              actions: ['GET'],
              when: { claims: { a: 1 } },
            },
            // Fine: held through a role that inherits the holder, and a deny by permission needs no holder.
            { id: 'ok-allow', effect: 'allow', roles: ['viewer'], permissions: ['read'] },
            { id: 'ok-deny', effect: 'deny', permissions: ['orphan'] },
          ],
        },
      ],
    };
    expect(codes({ authz: config })).toEqual([
      'error authz.rule_never_matches @ authz.policies.0.rules.0',
      'error authz.rule_never_matches @ authz.policies.0.rules.1',
      'error authz.rule_never_matches @ authz.policies.0.rules.2',
      'error authz.rule_never_matches @ authz.policies.0.rules.3',
    ]);
  });

  it('`*` in an allow is authenticated identities only, so a permission only `anonymous` holds is dead there', () => {
    const config: AuthzConfig = {
      roles: { anonymous: { permissions: ['public'] }, user: {} },
      permissions: { public: { resources: ['/p/**'], actions: ['GET'] } },
      policies: [
        {
          id: 'p',
          rules: [
            { id: 'star', effect: 'allow', roles: ['*'], permissions: ['public'] },
            { id: 'star-and-anonymous', effect: 'allow', roles: ['*', 'anonymous'], permissions: ['public'] },
            { id: 'implicit', effect: 'allow', permissions: ['public'] },
          ],
        },
      ],
    };
    expect(codes({ authz: config })).toEqual(['error authz.rule_never_matches @ authz.policies.0.rules.0']);
  });

  it('warns when a tenant condition reads a parameter no resource of the rule captures', () => {
    const config: AuthzConfig = {
      roles: { v: {} },
      policies: [
        {
          id: 'p',
          rules: [
            {
              id: 'captured',
              effect: 'allow',
              roles: ['v'],
              resources: ['/t/{tenant}/**'],
              actions: ['GET'],
              when: { tenant: { equals: 'param:tenant' } },
            },
            {
              id: 'route-only',
              effect: 'allow',
              roles: ['v'],
              resources: ['/t/**'],
              actions: ['GET'],
              when: { tenant: { equals: 'param:tenant' } },
            },
            {
              id: 'claim',
              effect: 'allow',
              roles: ['v'],
              resources: ['/t/**'],
              actions: ['GET'],
              when: { tenant: { equals: 'claim:org.id' } },
            },
          ],
        },
      ],
    };
    expect(codes({ authz: config })).toEqual(['warning authz.param_not_captured @ authz.policies.0.rules.1.when.tenant.equals']);
  });

  describe('route references', () => {
    const shadow: AuthzConfig = {
      ...VALID,
      policies: [...VALID.policies, { ...VALID.policies[0]!, id: 'docs-v2', mode: 'shadow' }],
    };

    it('checks that routes name known policies, in either form', () => {
      expect(
        codes({
          authz: shadow,
          routes: [
            { id: 'a', authz: 'docs' },
            { id: 'b', authz: ['docs', 'docs-v2'] },
            { id: 'c', authz: 'dosc' },
            { id: 'd', authz: ['docs', 'nope'] },
            { id: 'e', authz: [] },
            { id: 'f', authz: 42 },
          ],
        }),
      ).toEqual([
        'error authz.unknown_policy @ routes.2.authz',
        'error authz.unknown_policy @ routes.3.authz.1',
        'error authz.bad_reference @ routes.4.authz',
        'error authz.bad_reference @ routes.5.authz',
      ]);
    });

    it('warns about unguarded routes, shadow-only routes and unused policies', () => {
      expect(
        codes({
          authz: shadow,
          routes: [
            { id: 'open', authz: undefined },
            { id: 'trial', authz: 'docs-v2' },
          ],
        }),
      ).toEqual([
        'warning authz.route_unguarded @ routes.0',
        'warning authz.shadow_only @ routes.1.authz',
        'warning authz.policy_unused @ authz.policies.0',
      ]);
    });

    it('a route naming policies without an authz section is an error', () => {
      expect(codes({ routes: [{ id: 'a', authz: 'docs' }, { id: 'b' }] })).toEqual([
        'error authz.unknown_policy @ routes.0.authz',
      ]);
    });
  });
});

describe('compileAuthz', () => {
  it('throws one AuthzConfigError listing every error, and ignores warnings', () => {
    const config: AuthzConfig = {
      roles: { v: {} },
      policies: [
        {
          id: 'p',
          rules: [
            {
              id: 'a',
              effect: 'allow',
              roles: ['x'],
              resources: ['/t/**'],
              actions: ['GET'],
              when: { tenant: { equals: 'param:t' } },
            },
            { id: 'a', effect: 'allow', roles: ['v'], resources: ['/t/**'], actions: ['GET'] },
          ],
        },
      ],
    };
    try {
      compileAuthz(config);
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(AuthzConfigError);
      const e = error as AuthzConfigError;
      expect(e.code).toBe('ERR_AUTHZ_CONFIG');
      expect(e.issues.map((i) => i.code)).toEqual(['authz.unknown_role', 'authz.duplicate_id']);
      expect(e.message).toContain('authz.policies.0.rules.0.roles.0');
    }
  });
});
