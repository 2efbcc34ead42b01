import { describe, expect, it } from 'vitest';
import { compileAuthz } from '../../src/authz/compile.js';
import { patternCompilations } from '../../src/authz/patterns.js';
import type { AuthzConfig } from '../../src/authz/schema.js';
import { createAuthzStage } from '../../src/authz/stage.js';
import { request, run, who } from './helpers.js';

const CONFIG: AuthzConfig = {
  bindings: [
    { subject: 'spiffe://td/ns/billing/**', roles: ['viewer'] },
    { subject: 'user:root', roles: ['admin'] },
  ],
  roles: { viewer: { permissions: ['read'] }, admin: { inherits: ['viewer'], permissions: ['write'] } },
  permissions: {
    read: { resources: ['/tenants/{tenant}/orders/**', '/tenants/{tenant}/invoices/**'], actions: ['GET'] },
    // The same glob as `read`: compiled once and shared.
    write: { resources: ['/tenants/{tenant}/orders/**'], actions: ['PUT'], grpc: ['/shop.Orders/*'] },
  },
  policies: [
    {
      id: 'p',
      rules: [
        { id: 'd', effect: 'deny', roles: ['*'], resources: ['/tenants/{tenant}/orders/locked/**'], actions: ['*'] },
        { id: 'a', effect: 'allow', permissions: ['read', 'write'], when: { subject: ['user:*', 'spiffe://td/**'] } },
      ],
    },
    {
      id: 'q',
      mode: 'shadow',
      rules: [{ id: 's', effect: 'deny', roles: ['*'], resources: ['/tenants/*/invoices/**'], actions: ['GET'] }],
    },
  ],
};

describe('hot path discipline', () => {
  it('compiles every pattern once, at compileAuthz; stages and decisions compile nothing', () => {
    const before = patternCompilations();
    const authz = compileAuthz(CONFIG);
    const compiled = patternCompilations() - before;
    // 4 distinct globs (orders and invoices shared by two permissions, the deny's, the shadow deny's)
    // and 3 subject patterns (the wildcard binding and the two conditions; an exact binding is a Map key).
    expect(compiled).toBe(4 + 3);

    const stage = createAuthzStage(['p', 'q'], authz)!;
    const again = createAuthzStage(['p', 'q'], authz)!;
    expect(patternCompilations() - before).toBe(compiled);

    const identities = [
      who('user:alice', { tenant: 'acme', roles: ['viewer'] }),
      who('user:root', { tenant: 'acme' }),
      who('spiffe://td/ns/billing/sa/x'),
      null,
    ];
    const paths = [
      '/tenants/acme/orders/1',
      '/tenants/globex/orders/1',
      '/tenants/acme/invoices/9',
      '/tenants/acme/orders/locked/1',
      '/shop.Orders/Get',
      '/x',
    ];
    let decisions = 0;
    for (let i = 0; i < 500; i++) {
      for (const identity of identities) {
        for (const path of paths) {
          for (const method of ['GET', 'PUT', 'POST', 'PATCH']) {
            run(i % 2 === 0 ? stage : again, request(method, path, { identity }));
            decisions++;
          }
        }
      }
    }
    expect(decisions).toBe(48_000);
    expect(patternCompilations() - before).toBe(compiled);
  });

  it('shares the indexes of one policy list between the stages built for it', () => {
    const authz = compileAuthz(CONFIG);
    expect(authz.policySet(['p', 'q'])).toBe(authz.policySet(['p', 'q']));
    expect(authz.policySet(['p'])).not.toBe(authz.policySet(['p', 'q']));
  });

  it('createAuthzStage: null for no policies, TypeError for an empty list or an unknown id', () => {
    const authz = compileAuthz(CONFIG);
    expect(createAuthzStage(null, authz)).toBeNull();
    expect(() => createAuthzStage([], authz)).toThrow(TypeError);
    expect(() => createAuthzStage('nope', authz)).toThrow(TypeError);
    expect(createAuthzStage('p', authz)?.id).toBe('authz');
  });
});
