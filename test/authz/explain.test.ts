import { describe, expect, it } from 'vitest';
import { explainDecision, explanationExitCode, formatExplanation } from '../../src/authz/explain.js';
import type { AuthzConfig } from '../../src/authz/schema.js';
import { BulwarkError } from '../../src/core/errors.js';
import { request, run, stageFor, who } from './helpers.js';

const CONFIG: AuthzConfig = {
  roles: { viewer: { permissions: ['read'] } },
  permissions: { read: { resources: ['/tenants/{tenant}/orders/**'], actions: ['GET'] } },
  policies: [
    { id: 'orders', rules: [{ id: 'read', effect: 'allow', permissions: ['read'] }] },
    {
      id: 'orders-v2',
      mode: 'shadow',
      rules: [{ id: 'no-reads', effect: 'deny', roles: ['*'], resources: ['/tenants/*/orders/**'], actions: ['GET'] }],
    },
  ],
};

/** What the authn stage records before authz runs (provider and kid for the trace). */
function authenticated(path: string, tenant = 'acme') {
  const identity = who('user:alice', { tenant, roles: ['viewer'], provider: 'corp', keyId: 'k-2024' });
  const ctx = request('GET', path, { identity, route: 'orders' });
  ctx.decisions.push({ stage: 'authn', outcome: 'allow', code: 'jwt.verified', detail: { provider: 'corp', kid: 'k-2024' } });
  return ctx;
}

describe('explainDecision', () => {
  it('traces an allowed request: every stage, provider, kid, policy, rule', () => {
    const ctx = authenticated('/tenants/acme/orders/1');
    const decision = run(stageFor(CONFIG, 'orders'), ctx);
    const trace = explainDecision(ctx, decision);
    expect(trace).toEqual({
      outcome: 'allow',
      code: null,
      shadowDenied: false,
      request: { method: 'GET', path: '/tenants/acme/orders/1', route: 'orders', requestId: 'req-1' },
      identity: { subject: 'user:alice', tenant: 'acme', provider: 'corp', kid: 'k-2024', roles: ['viewer'] },
      steps: [
        { stage: 'authn', outcome: 'allow', code: 'jwt.verified', provider: 'corp', kid: 'k-2024', extra: {} },
        {
          stage: 'authz',
          outcome: 'allow',
          code: 'rbac.allowed',
          policy: 'orders',
          rule: 'read',
          roles: ['viewer'],
          extra: { mode: 'enforce' },
        },
      ],
    });
    expect(explanationExitCode(trace)).toBe(0);
    expect(formatExplanation(trace)).toBe(
      [
        'GET /tenants/acme/orders/1  route=orders  request=req-1',
        'identity: user:alice  tenant=acme  provider=corp  kid=k-2024  roles=viewer',
        '  1. authn  allow        jwt.verified  provider=corp kid=k-2024',
        '  2. authz  allow        rbac.allowed  policy=orders rule=read roles=viewer mode=enforce',
        'result: ALLOW',
      ].join('\n'),
    );
  });

  it('traces a denial to its reason and exits 1', () => {
    const ctx = authenticated('/tenants/globex/orders/1');
    const trace = explainDecision(ctx, run(stageFor(CONFIG, 'orders'), ctx));
    expect(trace.outcome).toBe('deny');
    expect(trace.code).toBe('rbac.tenant_mismatch');
    expect(trace.steps.at(-1)).toMatchObject({ stage: 'authz', outcome: 'deny', policy: 'orders', rule: 'read' });
    expect(explanationExitCode(trace)).toBe(1);
    expect(formatExplanation(trace).split('\n').at(-1)).toBe('result: DENY (rbac.tenant_mismatch)');
  });

  it('shows shadow denials without counting them as denials', () => {
    const ctx = authenticated('/tenants/acme/orders/1');
    const trace = explainDecision(ctx, run(stageFor(CONFIG, ['orders', 'orders-v2']), ctx));
    expect(trace.outcome).toBe('allow');
    expect(trace.shadowDenied).toBe(true);
    expect(explanationExitCode(trace)).toBe(0);
    const text = formatExplanation(trace);
    expect(text).toContain('shadow_deny  rbac.denied   policy=orders-v2 rule=no-reads');
    expect(text).toContain('allowedBy={"policy":"orders","rule":"read"}');
    expect(text.split('\n').at(-1)).toBe('result: ALLOW  — a shadow-mode policy would deny this request');
  });

  it('adds a denial no stage recorded (a stage that threw, the gateway itself)', () => {
    const ctx = authenticated('/tenants/acme/orders/1');
    const trace = explainDecision(ctx, new BulwarkError('gateway.internal', undefined, { context: { stage: 'limits' } }));
    expect(trace.outcome).toBe('deny');
    expect(trace.steps.at(-1)).toEqual({ stage: 'limits', outcome: 'deny', code: 'gateway.internal', extra: {} });
  });

  it('anonymous requests and empty traces print plainly', () => {
    const ctx = request('GET', '/x');
    const text = formatExplanation(explainDecision(ctx));
    expect(text).toContain('identity: anonymous');
    expect(text).toContain('(no decisions recorded)');
  });

  it('quotes values that could forge lines or terminal escapes', () => {
    const ctx = request('GET', '/x', { identity: who('user:a\nresult: ALLOW\u001b[2J\u009b\u202e', { provider: 'p' }) });
    ctx.decisions.push({ stage: 'authz', outcome: 'deny', code: 'rbac.denied', detail: { rule: 'r x', note: 'a=b' } });
    const text = formatExplanation(explainDecision(ctx));
    expect(text.split('\n')).toHaveLength(4);
    expect(text).toContain('identity: "user:a\\nresult: ALLOW\\u001b[2J\\u009b\\u202e"');
    expect(text).toContain('rule="r x" note="a=b"');
    const raw = [...text].filter((c) => {
      const n = c.charCodeAt(0);
      return (n < 0x20 && n !== 0x0a) || (n >= 0x7f && n <= 0x9f) || n === 0x202e;
    });
    expect(raw).toEqual([]);
  });
});
