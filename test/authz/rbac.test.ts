import { describe, expect, it } from 'vitest';
import type { AuthzConfig, PolicyConfig } from '../../src/authz/schema.js';
import { outcome, request, run, stageFor, who } from './helpers.js';

/** The example from the docs: orders per tenant, viewer ⊂ editor ⊂ admin, a suspended-account deny. */
const SHOP: AuthzConfig = {
  bindings: [{ subject: 'spiffe://prod.example/ns/billing/**', roles: ['billing-service'] }],
  roles: {
    viewer: { permissions: ['read-orders'] },
    editor: { inherits: ['viewer'], permissions: ['write-orders'] },
    admin: { inherits: ['editor'] },
    'billing-service': { permissions: ['read-orders'] },
  },
  permissions: {
    'read-orders': { resources: ['/tenants/{tenant}/orders/**'], actions: ['GET', 'HEAD'] },
    'write-orders': { resources: ['/tenants/{tenant}/orders/**'], actions: ['POST', 'PUT', 'DELETE'] },
  },
  policies: [
    {
      id: 'orders',
      rules: [
        {
          id: 'deny-suspended',
          effect: 'deny',
          roles: ['*'],
          resources: ['/tenants/{tenant}/**'],
          actions: ['*'],
          when: { claims: { suspended: true } },
        },
        { id: 'orders', effect: 'allow', permissions: ['read-orders', 'write-orders'] },
      ],
    },
  ],
};

const acme = (roles: string[], extra: Parameters<typeof who>[1] = {}) => who('user:alice', { tenant: 'acme', roles, ...extra });

describe('roles and inheritance', () => {
  const stage = stageFor(SHOP);

  it('grants a role its own permissions and nothing more', () => {
    expect(outcome(stage, request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']) }))).toBe('allow');
    expect(outcome(stage, request('HEAD', '/tenants/acme/orders', { identity: acme(['viewer']) }))).toBe('allow');
    expect(outcome(stage, request('POST', '/tenants/acme/orders', { identity: acme(['viewer']) }))).toBe('rbac.no_matching_rule');
  });

  it('gives a role the permissions of every role it inherits, over several levels', () => {
    // editor → viewer (one level), admin → editor → viewer (two levels).
    for (const role of ['editor', 'admin']) {
      expect(outcome(stage, request('GET', '/tenants/acme/orders/1', { identity: acme([role]) })), role).toBe('allow');
      expect(outcome(stage, request('DELETE', '/tenants/acme/orders/1', { identity: acme([role]) })), role).toBe('allow');
    }
  });

  it('never passes inheritance downwards', () => {
    const config: AuthzConfig = {
      ...SHOP,
      policies: [
        { id: 'p', rules: [{ id: 'editors', effect: 'allow', roles: ['editor'], resources: ['/reports/**'], actions: ['GET'] }] },
      ],
    };
    const s = stageFor(config);
    expect(outcome(s, request('GET', '/reports/q1', { identity: acme(['admin']) }))).toBe('allow');
    expect(outcome(s, request('GET', '/reports/q1', { identity: acme(['editor']) }))).toBe('allow');
    expect(outcome(s, request('GET', '/reports/q1', { identity: acme(['viewer']) }))).toBe('rbac.no_matching_rule');
  });

  it('handles a diamond: a role reached by two paths counts once and both sides apply', () => {
    const config: AuthzConfig = {
      roles: {
        base: { permissions: ['read'] },
        left: { inherits: ['base'], permissions: ['left-write'] },
        right: { inherits: ['base'], permissions: ['right-write'] },
        top: { inherits: ['left', 'right'] },
      },
      permissions: {
        read: { resources: ['/docs/**'], actions: ['GET'] },
        'left-write': { resources: ['/docs/left/**'], actions: ['PUT'] },
        'right-write': { resources: ['/docs/right/**'], actions: ['PUT'] },
      },
      policies: [
        {
          id: 'docs',
          rules: [
            { id: 'by-permission', effect: 'allow', permissions: ['read', 'left-write', 'right-write'] },
            { id: 'base-archive', effect: 'allow', roles: ['base'], resources: ['/archive/**'], actions: ['GET'] },
          ],
        },
      ],
    };
    const s = stageFor(config);
    const top = who('user:t', { roles: ['top'] });
    expect(outcome(s, request('GET', '/docs/x', { identity: top }))).toBe('allow');
    expect(outcome(s, request('PUT', '/docs/left/x', { identity: top }))).toBe('allow');
    expect(outcome(s, request('PUT', '/docs/right/x', { identity: top }))).toBe('allow');
    expect(outcome(s, request('GET', '/archive/2020', { identity: top }))).toBe('allow');
    const left = who('user:l', { roles: ['left'] });
    expect(outcome(s, request('PUT', '/docs/left/x', { identity: left }))).toBe('allow');
    expect(outcome(s, request('PUT', '/docs/right/x', { identity: left }))).toBe('rbac.no_matching_rule');
  });

  it('ignores token roles the config does not define (they grant nothing)', () => {
    expect(outcome(stage, request('GET', '/tenants/acme/orders/1', { identity: acme(['root', 'Viewer']) }))).toBe(
      'rbac.no_matching_rule',
    );
  });

  it('combines several roles of one identity', () => {
    const config: AuthzConfig = {
      ...SHOP,
      roles: { ...SHOP.roles, writer: { permissions: ['write-orders'] } },
    };
    const s = stageFor(config);
    const both = acme(['viewer', 'writer']);
    expect(outcome(s, request('GET', '/tenants/acme/orders/1', { identity: both }))).toBe('allow');
    expect(outcome(s, request('PUT', '/tenants/acme/orders/1', { identity: both }))).toBe('allow');
  });

  it('an allow by permission needs the permission that covers the request, not any permission of the rule', () => {
    // The rule lists read and write; a viewer holds only read, so writes stay denied.
    expect(outcome(stage, request('PUT', '/tenants/acme/orders/1', { identity: acme(['viewer']) }))).toBe(
      'rbac.no_matching_rule',
    );
  });
});

describe('deny overrides allow', () => {
  it('within a policy, whatever the declared order', () => {
    const s = stageFor(SHOP);
    const suspended = acme(['admin'], { claims: { suspended: true } });
    const error = run(s, request('GET', '/tenants/acme/orders/1', { identity: suspended }));
    expect(error?.code).toBe('rbac.denied');
    expect(error?.status).toBe(403);
    expect(error?.context).toMatchObject({ policy: 'orders', rule: 'deny-suspended' });
    // The deny's condition does not hold: the allow stands.
    expect(
      outcome(s, request('GET', '/tenants/acme/orders/1', { identity: acme(['admin'], { claims: { suspended: false } }) })),
    ).toBe('allow');
    // Declared after the allow, it still wins.
    const reversed: AuthzConfig = { ...SHOP, policies: [{ id: 'orders', rules: [...SHOP.policies[0]!.rules].reverse() }] };
    expect(outcome(stageFor(reversed), request('GET', '/tenants/acme/orders/1', { identity: suspended }))).toBe('rbac.denied');
  });

  it('across the policies of a route', () => {
    const config: AuthzConfig = {
      ...SHOP,
      policies: [
        { id: 'grant', rules: [{ id: 'read', effect: 'allow', permissions: ['read-orders'] }] },
        {
          id: 'freeze',
          rules: [{ id: 'freeze-globex', effect: 'deny', roles: ['*'], resources: ['/tenants/globex/**'], actions: ['*'] }],
        },
      ],
    };
    const globexViewer = who('user:g', { tenant: 'globex', roles: ['viewer'] });
    for (const order of [
      ['grant', 'freeze'],
      ['freeze', 'grant'],
    ]) {
      const s = stageFor(config, order);
      const ctx = request('GET', '/tenants/globex/orders/1', { identity: globexViewer });
      expect(outcome(s, ctx), order.join(',')).toBe('rbac.denied');
      expect(ctx.decisions[0]?.detail).toMatchObject({ policy: 'freeze', rule: 'freeze-globex' });
      expect(outcome(s, request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']) }))).toBe('allow');
    }
    // Only the policies the route names count.
    expect(outcome(stageFor(config, 'grant'), request('GET', '/tenants/globex/orders/1', { identity: globexViewer }))).toBe(
      'allow',
    );
  });

  it('through inheritance: a deny naming a role hits every role inheriting it, even when an allow names them', () => {
    const config: AuthzConfig = {
      ...SHOP,
      policies: [
        {
          id: 'p',
          rules: [
            { id: 'admins-export', effect: 'allow', roles: ['admin'], resources: ['/export/**'], actions: ['GET'] },
            { id: 'no-viewer-export', effect: 'deny', roles: ['viewer'], resources: ['/export/**'], actions: ['GET'] },
          ],
        },
      ],
    };
    const s = stageFor(config);
    expect(outcome(s, request('GET', '/export/all', { identity: acme(['admin']) }))).toBe('rbac.denied');
  });

  it('a deny for `*` also covers anonymous requests', () => {
    const config: AuthzConfig = {
      policies: [
        {
          id: 'p',
          rules: [
            { id: 'public', effect: 'allow', roles: ['anonymous', '*'], resources: ['/public/**'], actions: ['GET'] },
            { id: 'not-secrets', effect: 'deny', roles: ['*'], resources: ['/public/secrets/**'], actions: ['*'] },
          ],
        },
      ],
    };
    const s = stageFor(config);
    expect(outcome(s, request('GET', '/public/a'))).toBe('allow');
    const ctx = request('GET', '/public/secrets/x');
    expect(outcome(s, ctx)).toBe('rbac.unauthenticated');
    expect(ctx.decisions[0]?.detail).toMatchObject({ reason: 'rbac.denied', rule: 'not-secrets' });
    expect(outcome(s, request('GET', '/public/secrets/x', { identity: who('user:a') }))).toBe('rbac.denied');
  });

  it('a deny by permission applies to everyone whose request falls in it, holders or not', () => {
    const config: AuthzConfig = {
      ...SHOP,
      policies: [
        {
          id: 'p',
          rules: [
            { id: 'allow', effect: 'allow', permissions: ['read-orders', 'write-orders'] },
            { id: 'read-only-tokens', effect: 'deny', permissions: ['write-orders'], when: { claims: { ro: true } } },
          ],
        },
      ],
    };
    const s = stageFor(config);
    const ro = acme(['editor'], { claims: { ro: true } });
    expect(outcome(s, request('PUT', '/tenants/acme/orders/1', { identity: ro }))).toBe('rbac.denied');
    expect(outcome(s, request('GET', '/tenants/acme/orders/1', { identity: ro }))).toBe('allow');
  });
});

describe('deny by default', () => {
  const s = stageFor(SHOP);

  it('refuses what no rule covers, with no rule to blame', () => {
    const ctx = request('GET', '/tenants/acme/invoices', { identity: acme(['admin']) });
    const error = run(s, ctx);
    expect(error?.code).toBe('rbac.no_matching_rule');
    expect(error?.status).toBe(403);
    expect(error?.headers).toBeUndefined();
    expect(ctx.decisions).toEqual([
      {
        stage: 'authz',
        outcome: 'deny',
        code: 'rbac.no_matching_rule',
        detail: { policy: null, rule: null, roles: ['admin'], mode: 'enforce' },
      },
    ]);
  });

  it('refuses methods outside the actions, including ones no rule names and lower-case ones', () => {
    for (const method of ['PATCH', 'PROPFIND', 'get']) {
      expect(outcome(s, request(method, '/tenants/acme/orders/1', { identity: acme(['admin']) })), method).toBe(
        'rbac.no_matching_rule',
      );
    }
  });

  it('an identity with no roles gets nothing', () => {
    expect(outcome(s, request('GET', '/tenants/acme/orders/1', { identity: acme([]) }))).toBe('rbac.no_matching_rule');
  });
});

describe('actions', () => {
  it('`*` is every method, named or not', () => {
    const s = stageFor({
      roles: { ops: {} },
      policies: [{ id: 'p', rules: [{ id: 'ops', effect: 'allow', roles: ['ops'], resources: ['/ops/**'], actions: ['*'] }] }],
    });
    for (const method of ['GET', 'POST', 'PATCH', 'OPTIONS', 'PROPFIND', 'BREW']) {
      expect(outcome(s, request(method, '/ops/x', { identity: who('u', { roles: ['ops'] }) })), method).toBe('allow');
    }
    expect(outcome(s, request('GET', '/other', { identity: who('u', { roles: ['ops'] }) }))).toBe('rbac.no_matching_rule');
  });
});

describe('shadow mode', () => {
  const v2: PolicyConfig = {
    id: 'orders-v2',
    mode: 'shadow',
    rules: [{ id: 'no-deletes', effect: 'deny', roles: ['*'], resources: ['/tenants/*/orders/**'], actions: ['DELETE'] }],
  };
  const config: AuthzConfig = { ...SHOP, policies: [...SHOP.policies, v2] };

  it('records what a shadow policy would deny and lets the request through', () => {
    const s = stageFor(config, ['orders', 'orders-v2']);
    const ctx = request('DELETE', '/tenants/acme/orders/1', { identity: acme(['editor']) });
    expect(run(s, ctx)).toBeNull();
    expect(ctx.decisions).toEqual([
      {
        stage: 'authz',
        outcome: 'shadow_deny',
        code: 'rbac.denied',
        detail: {
          policy: 'orders-v2',
          rule: 'no-deletes',
          roles: ['editor'],
          mode: 'shadow',
          allowedBy: { policy: 'orders', rule: 'orders' },
        },
      },
    ]);
  });

  it('records a plain allow when the shadow policy agrees', () => {
    const s = stageFor(config, ['orders', 'orders-v2']);
    const ctx = request('PUT', '/tenants/acme/orders/1', { identity: acme(['editor']) });
    expect(run(s, ctx)).toBeNull();
    expect(ctx.decisions).toEqual([
      {
        stage: 'authz',
        outcome: 'allow',
        code: 'rbac.allowed',
        detail: { policy: 'orders', rule: 'orders', roles: ['editor'], mode: 'enforce' },
      },
    ]);
  });

  it('an enforced denial is enforced and recorded once, shadow or not', () => {
    const s = stageFor(config, ['orders', 'orders-v2']);
    const ctx = request('DELETE', '/tenants/acme/orders/1', { identity: acme(['viewer']) });
    expect(run(s, ctx)?.code).toBe('rbac.no_matching_rule');
    expect(ctx.decisions.map((d) => d.outcome)).toEqual(['deny']);
  });

  it('a shadow allow grants nothing on a route that also has enforced policies', () => {
    const grantAll: PolicyConfig = {
      id: 'open',
      mode: 'shadow',
      rules: [{ id: 'all', effect: 'allow', roles: ['*'], resources: ['/**'], actions: ['*'] }],
    };
    const s = stageFor({ ...SHOP, policies: [...SHOP.policies, grantAll] }, ['orders', 'open']);
    expect(outcome(s, request('GET', '/tenants/acme/invoices', { identity: acme(['viewer']) }))).toBe('rbac.no_matching_rule');
  });

  it('a route with only shadow policies enforces nothing and records the verdict it would have had', () => {
    const shadowOnly: AuthzConfig = { ...SHOP, policies: [{ ...SHOP.policies[0]!, mode: 'shadow' }] };
    const s = stageFor(shadowOnly);
    const denied = request('GET', '/tenants/acme/invoices', { identity: acme(['viewer']) });
    expect(run(s, denied)).toBeNull();
    expect(denied.decisions[0]).toMatchObject({
      outcome: 'shadow_deny',
      code: 'rbac.no_matching_rule',
      detail: { allowedBy: null },
    });
    const allowed = request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']) });
    expect(run(s, allowed)).toBeNull();
    expect(allowed.decisions[0]).toMatchObject({
      outcome: 'allow',
      detail: { policy: 'orders', rule: 'orders', mode: 'shadow' },
    });
    const anonymous = request('GET', '/tenants/acme/orders/1');
    expect(run(s, anonymous)).toBeNull();
    expect(anonymous.decisions[0]).toMatchObject({
      outcome: 'shadow_deny',
      code: 'rbac.unauthenticated',
      detail: { reason: 'rbac.no_matching_rule' },
    });
  });
});

describe('tenant isolation', () => {
  const s = stageFor(SHOP);

  it("refuses another tenant's resources, named by the rule's resource", () => {
    expect(outcome(s, request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']) }))).toBe('allow');
    const ctx = request('GET', '/tenants/globex/orders/1', { identity: acme(['admin']) });
    const error = run(s, ctx);
    expect(error?.code).toBe('rbac.tenant_mismatch');
    expect(error?.status).toBe(403);
    expect(ctx.decisions[0]?.detail).toMatchObject({ policy: 'orders', rule: 'orders' });
  });

  it('also when only the route captures the tenant (a wide resource does not escape isolation)', () => {
    const wide: AuthzConfig = {
      roles: { support: {} },
      policies: [
        { id: 'p', rules: [{ id: 'support', effect: 'allow', roles: ['support'], resources: ['/**'], actions: ['GET'] }] },
      ],
    };
    const ws = stageFor(wide);
    const agent = who('user:s', { tenant: 'acme', roles: ['support'] });
    expect(outcome(ws, request('GET', '/t/acme/x', { identity: agent, params: { tenant: 'acme' } }))).toBe('allow');
    expect(outcome(ws, request('GET', '/t/globex/x', { identity: agent, params: { tenant: 'globex' } }))).toBe(
      'rbac.tenant_mismatch',
    );
  });

  it('checks every place that names a tenant: resource and route must both be the identity’s', () => {
    // Route `/t/{tenant}/**` and resource `/{tenant}/**`-style disagreement cannot smuggle a second tenant.
    const ctx = request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']), params: { tenant: 'globex' } });
    expect(outcome(s, ctx)).toBe('rbac.tenant_mismatch');
  });

  it('does not restrict identities without a tenant, unless the policy requires one', () => {
    const service = who('svc:reporting', { roles: ['viewer'] });
    expect(outcome(s, request('GET', '/tenants/globex/orders/1', { identity: service }))).toBe('allow');
    const strict: AuthzConfig = { ...SHOP, policies: [{ ...SHOP.policies[0]!, tenantIsolation: { requireTenant: true } }] };
    const ss = stageFor(strict);
    expect(outcome(ss, request('GET', '/tenants/globex/orders/1', { identity: service }))).toBe('rbac.tenant_mismatch');
    expect(outcome(ss, request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']) }))).toBe('allow');
  });

  it('can be turned off for a cross-tenant policy, and then only that policy crosses tenants', () => {
    const config: AuthzConfig = {
      ...SHOP,
      roles: { ...SHOP.roles, auditor: {} },
      policies: [
        ...SHOP.policies,
        {
          id: 'audit',
          tenantIsolation: { enabled: false },
          rules: [
            { id: 'auditors', effect: 'allow', roles: ['auditor'], resources: ['/tenants/{tenant}/orders/**'], actions: ['GET'] },
          ],
        },
      ],
    };
    const cs = stageFor(config, ['orders', 'audit']);
    expect(outcome(cs, request('GET', '/tenants/globex/orders/1', { identity: acme(['auditor']) }))).toBe('allow');
    expect(outcome(cs, request('GET', '/tenants/globex/orders/1', { identity: acme(['viewer']) }))).toBe('rbac.tenant_mismatch');
  });

  it('uses the configured parameter name', () => {
    const config: AuthzConfig = {
      roles: { member: {} },
      policies: [
        {
          id: 'p',
          tenantIsolation: { param: 'org' },
          rules: [{ id: 'members', effect: 'allow', roles: ['member'], resources: ['/orgs/{org}/**'], actions: ['GET'] }],
        },
      ],
    };
    const os = stageFor(config);
    const m = who('user:m', { tenant: 'acme', roles: ['member'] });
    expect(outcome(os, request('GET', '/orgs/acme/repos', { identity: m }))).toBe('allow');
    expect(outcome(os, request('GET', '/orgs/globex/repos', { identity: m }))).toBe('rbac.tenant_mismatch');
  });

  it('compares exactly: encoded or differently-cased tenants are other tenants', () => {
    for (const tenant of ['acme%2Fglobex', 'acme%2F..%2Fglobex', 'ac%6De', 'ACME', 'acme ', 'acm']) {
      expect(outcome(s, request('GET', `/tenants/${tenant}/orders/1`, { identity: acme(['viewer']) })), tenant).toBe(
        'rbac.tenant_mismatch',
      );
    }
  });
});

describe('tenant conditions', () => {
  const config = (equals: string): AuthzConfig => ({
    roles: { member: {} },
    policies: [
      {
        id: 'p',
        tenantIsolation: { enabled: false },
        rules: [
          {
            id: 'r',
            effect: 'allow',
            roles: ['member'],
            resources: ['/orgs/{org}/**'],
            actions: ['GET'],
            when: { tenant: { equals } },
          },
        ],
      },
    ],
  });

  it('param: the identity tenant must equal the captured parameter', () => {
    const s = stageFor(config('param:org'));
    const m = who('user:m', { tenant: 'acme', roles: ['member'] });
    expect(outcome(s, request('GET', '/orgs/acme/x', { identity: m }))).toBe('allow');
    expect(outcome(s, request('GET', '/orgs/globex/x', { identity: m }))).toBe('rbac.tenant_mismatch');
    expect(outcome(s, request('GET', '/orgs/acme/x', { identity: who('user:n', { roles: ['member'] }) }))).toBe(
      'rbac.tenant_mismatch',
    );
  });

  it('param: falls back to the route parameters when the resource does not capture it', () => {
    const s = stageFor(config('param:team'));
    const m = who('user:m', { tenant: 'red', roles: ['member'] });
    expect(outcome(s, request('GET', '/orgs/acme/x', { identity: m, params: { team: 'red' } }))).toBe('allow');
    expect(outcome(s, request('GET', '/orgs/acme/x', { identity: m, params: { team: 'blue' } }))).toBe('rbac.tenant_mismatch');
    // Absent everywhere: the condition cannot hold. An inherited name is not a parameter.
    expect(outcome(s, request('GET', '/orgs/acme/x', { identity: m }))).toBe('rbac.tenant_mismatch');
    const proto = stageFor(config('param:constructor'));
    expect(outcome(proto, request('GET', '/orgs/acme/x', { identity: who('u', { tenant: 'x', roles: ['member'] }) }))).toBe(
      'rbac.tenant_mismatch',
    );
  });

  it('claim: the identity tenant must equal a (nested) claim', () => {
    const s = stageFor(config('claim:org.id'));
    const m = (id: unknown) => who('user:m', { tenant: 'acme', roles: ['member'], claims: { org: { id } } });
    expect(outcome(s, request('GET', '/orgs/any/x', { identity: m('acme') }))).toBe('allow');
    expect(outcome(s, request('GET', '/orgs/any/x', { identity: m('globex') }))).toBe('rbac.tenant_mismatch');
    expect(outcome(s, request('GET', '/orgs/any/x', { identity: m(['acme']) }))).toBe('rbac.tenant_mismatch');
    const numeric = stageFor(config('claim:tid'));
    expect(
      outcome(
        numeric,
        request('GET', '/orgs/any/x', { identity: who('u', { tenant: '42', roles: ['member'], claims: { tid: 42 } }) }),
      ),
    ).toBe('allow');
  });
});

describe('scopes', () => {
  const config: AuthzConfig = {
    ...SHOP,
    policies: [
      {
        id: 'p',
        rules: [
          { id: 'read', effect: 'allow', permissions: ['read-orders'], when: { scopes: ['orders:read'] } },
          { id: 'write', effect: 'allow', permissions: ['write-orders'], when: { scopes: ['orders:read', 'orders:write'] } },
        ],
      },
    ],
  };
  const s = stageFor(config);

  it('insufficient scope is a 403 with an RFC 6750 challenge', () => {
    const ctx = request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer'], { scopes: ['profile'] }) });
    const error = run(s, ctx);
    expect(error?.code).toBe('rbac.insufficient_scope');
    expect(error?.status).toBe(403);
    expect(error?.headers).toEqual({ 'www-authenticate': 'Bearer error="insufficient_scope"' });
    expect(ctx.decisions[0]).toMatchObject({ outcome: 'deny', code: 'rbac.insufficient_scope', detail: { rule: 'read' } });
  });

  it('every listed scope is required', () => {
    expect(
      outcome(s, request('GET', '/tenants/acme/orders/1', { identity: acme(['editor'], { scopes: ['orders:read'] }) })),
    ).toBe('allow');
    expect(
      outcome(s, request('PUT', '/tenants/acme/orders/1', { identity: acme(['editor'], { scopes: ['orders:write'] }) })),
    ).toBe('rbac.insufficient_scope');
    expect(
      outcome(
        s,
        request('PUT', '/tenants/acme/orders/1', { identity: acme(['editor'], { scopes: ['orders:write', 'orders:read'] }) }),
      ),
    ).toBe('allow');
  });

  it('is reported only when scope is all that is missing (a role or tenant problem is not fixed by more scope)', () => {
    expect(outcome(s, request('PUT', '/tenants/acme/orders/1', { identity: acme(['viewer']) }))).toBe('rbac.no_matching_rule');
    expect(outcome(s, request('GET', '/tenants/globex/orders/1', { identity: acme(['viewer']) }))).toBe('rbac.tenant_mismatch');
  });
});

describe('subjects and bindings', () => {
  it('binds roles to SPIFFE workloads by pattern, segment-wise', () => {
    const s = stageFor(SHOP);
    const workload = (id: string) => who(id, { roles: [] });
    const path = '/tenants/acme/orders/1';
    expect(outcome(s, request('GET', path, { identity: workload('spiffe://prod.example/ns/billing/sa/invoicer') }))).toBe(
      'allow',
    );
    for (const id of [
      'spiffe://prod.example/ns/billing-evil/sa/x',
      'spiffe://prod.example/ns/shipping/sa/x',
      'spiffe://staging.example/ns/billing/sa/x',
      'spiffe://prod.example/ns/BILLING/sa/x',
      'xspiffe://prod.example/ns/billing/sa/x',
    ]) {
      expect(outcome(s, request('GET', path, { identity: workload(id) })), id).toBe('rbac.no_matching_rule');
    }
    const ctx = request('GET', path, { identity: who('spiffe://prod.example/ns/billing/sa/a', { roles: ['viewer'] }) });
    run(s, ctx);
    expect(ctx.decisions[0]?.detail).toMatchObject({ roles: ['viewer', 'billing-service'] });
  });

  it('exact bindings and the rolesFrom switches', () => {
    const base: AuthzConfig = { ...SHOP, bindings: [{ subject: 'user:bob', roles: ['viewer'] }] };
    const path = '/tenants/acme/orders/1';
    const bob = who('user:bob', { roles: ['editor'] });
    expect(outcome(stageFor(base), request('PUT', path, { identity: bob }))).toBe('allow');
    expect(outcome(stageFor(base), request('GET', path, { identity: who('user:bob') }))).toBe('allow');
    const noClaim = stageFor({ ...base, rolesFrom: { claim: false } });
    expect(outcome(noClaim, request('PUT', path, { identity: bob }))).toBe('rbac.no_matching_rule');
    expect(outcome(noClaim, request('GET', path, { identity: bob }))).toBe('allow');
    const noBindings = stageFor({ ...base, rolesFrom: { bindings: false } });
    expect(outcome(noBindings, request('GET', path, { identity: who('user:bob') }))).toBe('rbac.no_matching_rule');
  });

  it('reads roles from a claim path when told to', () => {
    const s = stageFor({ ...SHOP, rolesFrom: { claim: 'realm_access.roles' } });
    const path = '/tenants/acme/orders/1';
    const withClaims = (claims: Record<string, unknown>) => who('u', { roles: ['admin'], claims });
    expect(outcome(s, request('GET', path, { identity: withClaims({ realm_access: { roles: ['viewer', 7] } }) }))).toBe('allow');
    expect(outcome(s, request('GET', path, { identity: withClaims({ 'realm_access.roles': 'viewer' }) }))).toBe('allow');
    // identity.roles is ignored in this mode; so are look-alikes through the prototype.
    expect(outcome(s, request('GET', path, { identity: withClaims({}) }))).toBe('rbac.no_matching_rule');
    expect(outcome(s, request('GET', path, { identity: withClaims({ realm_access: 'viewer' }) }))).toBe('rbac.no_matching_rule');
  });

  it('subject conditions: `*` is one or more characters inside a segment', () => {
    const s = stageFor({
      roles: { user: {} },
      policies: [
        {
          id: 'p',
          rules: [
            {
              id: 'humans',
              effect: 'allow',
              roles: ['user'],
              resources: ['/me/**'],
              actions: ['GET'],
              when: { subject: 'user:*' },
            },
          ],
        },
      ],
    });
    const as = (subject: string) => outcome(s, request('GET', '/me', { identity: who(subject, { roles: ['user'] }) }));
    expect(as('user:alice')).toBe('allow');
    expect(as('user:')).toBe('rbac.no_matching_rule');
    expect(as('service:alice')).toBe('rbac.no_matching_rule');
    expect(as('user:alice/evil')).toBe('rbac.no_matching_rule');
    expect(as('xuser:alice')).toBe('rbac.no_matching_rule');
  });

  it('claims conditions: equality, any-of lists, array claims, own properties only', () => {
    const s = stageFor({
      roles: { user: {} },
      policies: [
        {
          id: 'p',
          rules: [
            {
              id: 'r',
              effect: 'allow',
              roles: ['user'],
              resources: ['/x'],
              actions: ['GET'],
              when: { claims: { email_verified: true, amr: ['mfa', 'hwk'], 'org.plan': 'pro' } },
            },
          ],
        },
      ],
    });
    const as = (claims: Record<string, unknown>) =>
      outcome(s, request('GET', '/x', { identity: who('u', { roles: ['user'], claims }) }));
    expect(as({ email_verified: true, amr: ['pwd', 'mfa'], org: { plan: 'pro' } })).toBe('allow');
    expect(as({ email_verified: true, amr: 'hwk', org: { plan: 'pro' } })).toBe('allow');
    expect(as({ email_verified: 'true', amr: ['mfa'], org: { plan: 'pro' } })).toBe('rbac.no_matching_rule');
    expect(as({ email_verified: true, amr: ['pwd'], org: { plan: 'pro' } })).toBe('rbac.no_matching_rule');
    expect(as({ email_verified: true, amr: ['mfa'], org: Object.create({ plan: 'pro' }) })).toBe('rbac.no_matching_rule');
    expect(as({ email_verified: true, amr: ['mfa'] })).toBe('rbac.no_matching_rule');
  });
});

describe('gRPC resources', () => {
  const config: AuthzConfig = {
    roles: { clerk: { permissions: ['orders-rpc'] } },
    permissions: { 'orders-rpc': { grpc: ['/shop.v1.Orders/Get', '/shop.v1.Reports/*'] } },
    policies: [{ id: 'rpc', rules: [{ id: 'clerks', effect: 'allow', permissions: ['orders-rpc'] }] }],
  };
  const s = stageFor(config);
  const clerk = who('user:c', { roles: ['clerk'] });
  const call = (path: string, method = 'POST') => outcome(s, request(method, path, { identity: clerk }));

  it('matches exact methods and whole services', () => {
    expect(call('/shop.v1.Orders/Get')).toBe('allow');
    expect(call('/shop.v1.Reports/Daily')).toBe('allow');
    expect(call('/shop.v1.Reports/Monthly')).toBe('allow');
  });

  it('is case-sensitive and exact: no prefix, suffix, extra segment or other service', () => {
    for (const path of [
      '/shop.v1.orders/Get',
      '/shop.v1.Orders/get',
      '/Shop.v1.Orders/Get',
      '/shop.v1.Orders/GetAll',
      '/shop.v1.Orders/Ge',
      '/shop.v1.Orders/Delete',
      '/shop.v1.Orders/Get/x',
      '/shop.v1.Reports/',
      '/shop.v1.Reports/Daily/x',
      '/shop.v1.reports/Daily',
      '/shop.v1.ReportsX/Daily',
      '/v1.Reports/Daily',
    ]) {
      expect(call(path), path).toBe('rbac.no_matching_rule');
    }
  });

  it('gRPC is POST: other methods on the same path are not granted', () => {
    expect(call('/shop.v1.Orders/Get', 'GET')).toBe('rbac.no_matching_rule');
  });

  it('inline gRPC rules and denies work the same way', () => {
    const d = stageFor({
      roles: { clerk: {} },
      policies: [
        {
          id: 'p',
          rules: [
            { id: 'all', effect: 'allow', roles: ['clerk'], grpc: ['/shop.v1.Orders/*'] },
            { id: 'no-delete', effect: 'deny', roles: ['*'], grpc: ['/shop.v1.Orders/Delete'] },
          ],
        },
      ],
    });
    expect(outcome(d, request('POST', '/shop.v1.Orders/Get', { identity: clerk }))).toBe('allow');
    expect(outcome(d, request('POST', '/shop.v1.Orders/Delete', { identity: clerk }))).toBe('rbac.denied');
  });
});

describe('path bypass attempts (the stage sees canonical paths; it must not be fooled by near misses)', () => {
  const config: AuthzConfig = {
    roles: { admin: {}, user: {} },
    policies: [
      {
        id: 'site',
        rules: [
          { id: 'admin-area', effect: 'allow', roles: ['admin'], resources: ['/admin/**'], actions: ['*'] },
          { id: 'public', effect: 'allow', roles: ['user', 'admin'], resources: ['/public/**'], actions: ['GET'] },
          { id: 'wide-reads', effect: 'allow', roles: ['user'], resources: ['/**'], actions: ['HEAD'] },
          { id: 'not-admin', effect: 'deny', roles: ['user'], resources: ['/admin/**'], actions: ['*'] },
        ],
      },
    ],
  };
  const s = stageFor(config);
  const user = who('user:u', { roles: ['user'] });
  const admin = who('user:a', { roles: ['admin'] });

  it('`/admin/**` covers /admin, /admin/ and everything below, for the allow and for the deny', () => {
    for (const path of ['/admin', '/admin/', '/admin/users', '/admin/users/1/delete']) {
      expect(outcome(s, request('HEAD', path, { identity: user })), path).toBe('rbac.denied');
      expect(outcome(s, request('DELETE', path, { identity: admin })), path).toBe('allow');
    }
  });

  it('paths are case-sensitive: /ADMIN matches no admin rule, so it is denied by default', () => {
    for (const path of ['/ADMIN', '/Admin/users', '/aDmin']) {
      expect(outcome(s, request('GET', path, { identity: user })), path).toBe('rbac.no_matching_rule');
      expect(outcome(s, request('DELETE', path, { identity: admin })), path).toBe('rbac.no_matching_rule');
    }
  });

  it('an exact resource is exactly one path: `/health` does not grant `/health/`, `/health/x` or `/healthz`', () => {
    const exact = stageFor({
      roles: { user: {} },
      policies: [
        { id: 'p', rules: [{ id: 'health', effect: 'allow', roles: ['user'], resources: ['/health'], actions: ['GET'] }] },
      ],
    });
    expect(outcome(exact, request('GET', '/health', { identity: user }))).toBe('allow');
    for (const path of ['/health/', '/health/x', '/healthz', '//health']) {
      expect(outcome(exact, request('GET', path, { identity: user })), path).toBe('rbac.no_matching_rule');
    }
  });

  it('encoded characters stay inside their segment: %2F is not a slash, %2e%2e is not a dot segment', () => {
    // One opaque segment under /public: public, not admin.
    for (const path of ['/public/..%2Fadmin', '/public/%2e%2e/admin', '/public/%2E%2E%2Fadmin']) {
      expect(outcome(s, request('GET', path, { identity: user })), path).toBe('allow');
      expect(outcome(s, request('DELETE', path, { identity: admin })), path).toBe('rbac.no_matching_rule');
    }
    // Not /admin either (a first segment of `admin%2Fusers` or `%61dmin` is not `admin`): no admin grant.
    for (const path of ['/admin%2Fusers', '/%61dmin', '/public%2F..%2Fadmin']) {
      expect(outcome(s, request('DELETE', path, { identity: admin })), path).toBe('rbac.no_matching_rule');
    }
  });

  it('refuses a path that is not canonical (dot segments, relative), whatever the rules say', () => {
    for (const path of ['/public/../admin/x', '/./admin', '/public/.', '/public/..', 'admin', '']) {
      const ctx = request('GET', path, { identity: user });
      expect(outcome(s, ctx), path).toBe('request.bad_target');
      expect(ctx.decisions[0]).toMatchObject({ stage: 'authz', outcome: 'deny', code: 'request.bad_target' });
    }
    // Dot-files and names starting with dots are ordinary segments.
    for (const path of ['/public/.well-known', '/public/..b/.c', '/public/...']) {
      expect(outcome(s, request('GET', path, { identity: user })), path).toBe('allow');
    }
  });
});

describe('anonymous requests', () => {
  const config: AuthzConfig = {
    roles: { anonymous: { permissions: ['read-catalog'] }, user: {} },
    permissions: { 'read-catalog': { resources: ['/catalog/**'], actions: ['GET'] } },
    policies: [
      {
        id: 'p',
        rules: [
          { id: 'catalog', effect: 'allow', permissions: ['read-catalog'] },
          { id: 'signup', effect: 'allow', roles: ['anonymous'], resources: ['/signup'], actions: ['POST'] },
          { id: 'docs', effect: 'allow', roles: ['anonymous', '*'], resources: ['/docs/**'], actions: ['GET'] },
          { id: 'members', effect: 'allow', roles: ['*'], resources: ['/members/**'], actions: ['GET'] },
        ],
      },
    ],
  };
  const s = stageFor(config);

  it('match only rules that name `anonymous` (directly or through a permission of the anonymous role)', () => {
    expect(outcome(s, request('GET', '/catalog/1'))).toBe('allow');
    expect(outcome(s, request('POST', '/signup'))).toBe('allow');
    expect(outcome(s, request('GET', '/docs/a'))).toBe('allow');
    const ctx = request('GET', '/catalog/1');
    run(s, ctx);
    expect(ctx.decisions[0]?.detail).toMatchObject({ roles: ['anonymous'], rule: 'catalog' });
  });

  it('are told to authenticate (401) when refused, never 403', () => {
    const ctx = request('GET', '/members/list');
    const error = run(s, ctx);
    expect(error?.code).toBe('rbac.unauthenticated');
    expect(error?.status).toBe(401);
    expect(error?.headers).toEqual({ 'www-authenticate': 'Bearer realm="bulwark"' });
    expect(ctx.decisions[0]).toMatchObject({
      outcome: 'deny',
      code: 'rbac.unauthenticated',
      detail: { reason: 'rbac.no_matching_rule' },
    });
  });

  it('`*` means any authenticated identity; `anonymous` only requests without one', () => {
    const user = who('user:u', { roles: ['user'] });
    expect(outcome(s, request('GET', '/members/list', { identity: user }))).toBe('allow');
    expect(outcome(s, request('GET', '/docs/a', { identity: user }))).toBe('allow');
    expect(outcome(s, request('POST', '/signup', { identity: user }))).toBe('rbac.no_matching_rule');
    // A token cannot claim to be anonymous.
    expect(outcome(s, request('POST', '/signup', { identity: who('user:x', { roles: ['anonymous'] }) }))).toBe(
      'rbac.no_matching_rule',
    );
  });
});

describe('records and errors', () => {
  it('an allow records the policy, rule and roles', () => {
    const ctx = request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']) });
    expect(run(stageFor(SHOP), ctx)).toBeNull();
    expect(ctx.decisions).toEqual([
      {
        stage: 'authz',
        outcome: 'allow',
        code: 'rbac.allowed',
        detail: { policy: 'orders', rule: 'orders', roles: ['viewer'], mode: 'enforce' },
      },
    ]);
  });

  it('a denial carries the same context for logs and no client-facing detail', () => {
    const error = run(stageFor(SHOP), request('GET', '/tenants/globex/orders/1', { identity: acme(['viewer']) }));
    expect(error?.detail).toBeUndefined();
    expect(error?.context).toEqual({ stage: 'authz', policy: 'orders', rule: 'orders', roles: ['viewer'], mode: 'enforce' });
  });

  it('works without a matched route (no route parameters)', () => {
    const ctx = request('GET', '/tenants/acme/orders/1', { identity: acme(['viewer']) });
    ctx.route = null;
    expect(outcome(stageFor(SHOP), ctx)).toBe('allow');
  });
});
