import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { authzChecks } from '../../src/authz/checks.js';
import { compileAuthz } from '../../src/authz/compile.js';
import { AuthzSchema, RouteAuthzSchema, type AuthzConfig } from '../../src/authz/schema.js';

// The loader's ajv options (src/config/load.ts): defaults filled, every error listed.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, allowUnionTypes: true });
const validate = ajv.compile(AuthzSchema);

/** The documented example (also in the report): it must stay valid and compile. */
export const EXAMPLE = `
rolesFrom: { claim: true, bindings: true }
bindings:
  - { subject: 'spiffe://prod.example/ns/billing/**', roles: [billing-service] }
roles:
  viewer: { permissions: [read-orders] }
  editor: { inherits: [viewer], permissions: [write-orders] }
  billing-service: { permissions: [read-orders, call-orders] }
  anonymous: { permissions: [read-catalog] }
permissions:
  read-orders: { resources: ['/tenants/{tenant}/orders/**'], actions: [GET, HEAD] }
  write-orders: { resources: ['/tenants/{tenant}/orders/**'], actions: [POST, PUT, DELETE] }
  call-orders: { grpc: ['/shop.v1.Orders/Get', '/shop.v1.Reports/*'] }
  read-catalog: { resources: ['/catalog/**'], actions: [GET] }
policies:
  - id: orders
    mode: enforce
    tenantIsolation: { param: tenant }
    rules:
      - id: deny-suspended
        effect: deny
        roles: ['*']
        resources: ['/tenants/{tenant}/**']
        actions: ['*']
        when: { claims: { suspended: true } }
      - id: orders-read
        effect: allow
        permissions: [read-orders]
        when: { tenant: { equals: 'param:tenant' }, scopes: ['orders:read'], subject: 'user:*' }
      - id: orders-write
        effect: allow
        permissions: [write-orders]
        when: { scopes: ['orders:write'] }
      - id: billing
        effect: allow
        roles: [billing-service]
        grpc: ['/shop.v1.Orders/Get']
  - id: catalog
    rules:
      - { id: public, effect: allow, permissions: [read-catalog] }
  - id: orders-v2
    mode: shadow
    rules:
      - { id: no-deletes, effect: deny, roles: ['*'], resources: ['/tenants/*/orders/**'], actions: [DELETE] }
`;

describe('AuthzSchema', () => {
  it('accepts the documented example, fills defaults, and it compiles without issues', () => {
    const doc = parse(EXAMPLE) as AuthzConfig;
    expect(validate(doc), JSON.stringify(validate.errors)).toBe(true);
    expect(doc.rolesFrom).toEqual({ claim: true, bindings: true });
    expect(doc.policies[0]!.tenantIsolation).toEqual({ enabled: true, param: 'tenant', requireTenant: false });
    expect(doc.policies[1]!.mode).toBe('enforce');
    expect(doc.policies[1]!.tenantIsolation).toEqual({ enabled: true, param: 'tenant', requireTenant: false });
    const issues: string[] = [];
    authzChecks(
      {
        authz: doc,
        routes: [
          { id: 'orders', authz: ['orders', 'orders-v2'] },
          { id: 'catalog', authz: 'catalog' },
        ],
      },
      (path, code) => issues.push(`${code} @ ${path.join('.')}`),
    );
    expect(issues).toEqual([]);
    expect(() => compileAuthz(doc)).not.toThrow();
  });

  it('accepts the example in docs/authz.md (the docs cannot drift from the schema)', () => {
    const markdown = readFileSync(new URL('../../docs/authz.md', import.meta.url), 'utf8');
    const block = /```yaml\n([\s\S]*?)```/.exec(markdown)?.[1];
    const doc = parse(block ?? '') as { authz: AuthzConfig; routes: { id: string; authz?: unknown }[] };
    expect(validate(doc.authz), JSON.stringify(validate.errors)).toBe(true);
    const issues: string[] = [];
    authzChecks(doc, (path, code) => issues.push(`${code} @ ${path.join('.')}`));
    expect(issues).toEqual([]);
    expect(() => compileAuthz(doc.authz)).not.toThrow();
  });

  it('fills a minimal config with every default', () => {
    const doc = {
      policies: [{ id: 'p', rules: [{ id: 'r', effect: 'allow', roles: ['*'], resources: ['/x'], actions: ['GET'] }] }],
    };
    expect(validate(doc)).toBe(true);
    expect(doc).toMatchObject({
      rolesFrom: { claim: true, bindings: true },
      bindings: [],
      roles: {},
      permissions: {},
      policies: [{ mode: 'enforce', tenantIsolation: { enabled: true, param: 'tenant', requireTenant: false } }],
    });
  });

  it.each([
    ['a misspelt condition', { when: { scope: ['a'] } }],
    ['an unknown effect', { effect: 'permit' }],
    ['a lower-case method', { actions: ['get'] }],
    ['a relative resource', { resources: ['x/**'] }],
    ['a gRPC method with a partial wildcard', { grpc: ['/shop.Orders/Get*'] }],
    ['a gRPC method without the leading slash', { grpc: ['shop.Orders/Get'] }],
    ['a malformed tenant source', { when: { tenant: { equals: 'acme' } } }],
    ['an empty role list', { roles: [] }],
    ['a role with whitespace', { roles: ['a b'] }],
  ])('rejects %s', (_name, patch) => {
    const rule = { id: 'r', effect: 'allow', roles: ['*'], resources: ['/x'], actions: ['GET'], ...patch };
    expect(validate({ policies: [{ id: 'p', rules: [rule] }] })).toBe(false);
  });

  it('rejects unknown fields at every level and a bad mode', () => {
    const rule = { id: 'r', effect: 'allow', roles: ['*'], resources: ['/x'], actions: ['GET'] };
    expect(validate({ policies: [{ id: 'p', rules: [rule] }], role: {} })).toBe(false);
    expect(validate({ policies: [{ id: 'p', mode: 'audit', rules: [rule] }] })).toBe(false);
    expect(validate({ policies: [{ id: 'p', rules: [rule], tenantIsolation: { params: 'x' } }] })).toBe(false);
    expect(validate({ roles: { v: { inherit: ['x'] } }, policies: [{ id: 'p', rules: [rule] }] })).toBe(false);
    expect(validate({ policies: [] })).toBe(false);
  });

  it('RouteAuthzSchema: one id or a non-empty list of distinct ids', () => {
    const route = ajv.compile(RouteAuthzSchema);
    expect(route('orders')).toBe(true);
    expect(route(['orders', 'orders-v2'])).toBe(true);
    expect(route([])).toBe(false);
    expect(route(['a', 'a'])).toBe(false);
    expect(route(3)).toBe(false);
  });

  it('describes every property (the reference docs are generated from these)', () => {
    const undescribed: string[] = [];
    const walk = (node: unknown, path: string): void => {
      if (typeof node !== 'object' || node === null) return;
      const n = node as Record<string, unknown>;
      const props = n['properties'] as Record<string, Record<string, unknown>> | undefined;
      for (const [name, prop] of Object.entries(props ?? {})) {
        if (typeof prop['description'] !== 'string') undescribed.push(`${path}.${name}`);
        walk(prop, `${path}.${name}`);
      }
      for (const key of ['items', 'additionalProperties']) if (typeof n[key] === 'object') walk(n[key], `${path}[]`);
      for (const key of ['anyOf', 'patternProperties']) {
        const v = n[key];
        if (Array.isArray(v)) v.forEach((x) => walk(x, path));
        else if (typeof v === 'object' && v !== null) Object.values(v).forEach((x) => walk(x, `${path}{}`));
      }
    };
    walk(AuthzSchema, 'authz');
    expect(undescribed).toEqual([]);
  });
});
