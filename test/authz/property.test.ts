/**
 * Property tests over random role graphs, permissions and policies (seeded,
 * so a failure reproduces from its seed). The properties are the promises
 * operators rely on when they edit policy under pressure:
 *   - adding a deny rule can only take access away, and a deny wins wherever it is declared;
 *   - adding an allow rule can only give access;
 *   - adding a shadow policy never changes what is enforced.
 */
import { describe, expect, it } from 'vitest';
import { AuthzConfigError, compileAuthz } from '../../src/authz/compile.js';
import type { AuthzConfig, PolicyConfig, RuleConfig } from '../../src/authz/schema.js';
import { createAuthzStage } from '../../src/authz/stage.js';
import type { Identity } from '../../src/core/context.js';
import { prng, request, run, who } from './helpers.js';

const ROLES = ['r0', 'r1', 'r2', 'r3', 'r4'];
const PERMS = ['p0', 'p1', 'p2', 'p3'];
const RESOURCES = ['/a/**', '/a/{tenant}/**', '/a/x', '/b/*', '/**', '/a/{tenant}/x', '/b/{id}'];
const GRPC = ['/s.S/M', '/s.S/*', '/s.T/M'];
const ACTIONS = ['GET', 'PUT', 'POST', '*'];
const METHODS = ['GET', 'PUT', 'POST', 'DELETE'];
const PATHS = ['/a/t1/x', '/a/t2/x', '/a/x', '/b/q', '/c', '/s.S/M', '/s.S/N', '/s.T/M', '/a/t1/y/z', '/b/t1'];
const TENANTS = ['t1', 't2', undefined];
const SCOPES = ['s1', 's2'];

type Rand = () => number;
const pick = <T>(rand: Rand, items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
const some = <T>(rand: Rand, items: readonly T[], p = 0.4): T[] => items.filter(() => rand() < p);
const someNonEmpty = <T>(rand: Rand, items: readonly T[], p = 0.4): T[] => {
  const out = some(rand, items, p);
  return out.length > 0 ? out : [pick(rand, items)];
};

function randomWhen(rand: Rand): RuleConfig['when'] {
  if (rand() < 0.5) return undefined;
  const when: NonNullable<RuleConfig['when']> = {};
  if (rand() < 0.4) when.scopes = someNonEmpty(rand, SCOPES);
  if (rand() < 0.3) when.claims = { c: rand() < 0.5 };
  if (rand() < 0.2) when.tenant = { equals: 'param:tenant' };
  if (rand() < 0.2) when.subject = pick(rand, ['user:*', 'svc:*', 'user:u1']);
  return when;
}

function randomRule(rand: Rand, id: string, effect: 'allow' | 'deny'): RuleConfig {
  const when = randomWhen(rand);
  if (rand() < 0.5) {
    const rule: RuleConfig = { id, effect, permissions: someNonEmpty(rand, PERMS, 0.3) };
    if (rand() < 0.3) rule.roles = someNonEmpty(rand, [...ROLES, '*', 'anonymous'], 0.3);
    if (when !== undefined) rule.when = when;
    return rule;
  }
  const rule: RuleConfig = { id, effect, roles: someNonEmpty(rand, [...ROLES, '*', 'anonymous'], 0.3) };
  if (rand() < 0.8) {
    rule.resources = someNonEmpty(rand, RESOURCES, 0.25);
    rule.actions = someNonEmpty(rand, ACTIONS, 0.3);
  }
  if (rand() < 0.3 || rule.resources === undefined) rule.grpc = someNonEmpty(rand, GRPC, 0.3);
  if (when !== undefined) rule.when = when;
  return rule;
}

function randomConfig(rand: Rand): AuthzConfig {
  const roles: NonNullable<AuthzConfig['roles']> = {};
  ROLES.forEach((role, i) => {
    // Inherit only from earlier roles: a random DAG, never a cycle.
    roles[role] = { inherits: some(rand, ROLES.slice(0, i), 0.3), permissions: some(rand, PERMS, 0.3) };
  });
  if (rand() < 0.3) roles['anonymous'] = { permissions: some(rand, PERMS, 0.3) };
  const permissions: NonNullable<AuthzConfig['permissions']> = {};
  for (const p of PERMS) {
    permissions[p] =
      rand() < 0.2
        ? { grpc: someNonEmpty(rand, GRPC) }
        : { resources: someNonEmpty(rand, RESOURCES, 0.25), actions: someNonEmpty(rand, ACTIONS, 0.3) };
  }
  const policies: PolicyConfig[] = [];
  const count = 1 + Math.floor(rand() * 3);
  for (let i = 0; i < count; i++) {
    const rules = Array.from({ length: 1 + Math.floor(rand() * 4) }, (_, j) =>
      randomRule(rand, `r${j}`, rand() < 0.25 ? 'deny' : 'allow'),
    );
    const policy: PolicyConfig = { id: `pol${i}`, rules };
    if (rand() < 0.3) policy.tenantIsolation = { enabled: false };
    policies.push(policy);
  }
  const bindings = rand() < 0.5 ? [{ subject: 'svc:*', roles: someNonEmpty(rand, ROLES) }] : [];
  return { roles, permissions, policies, bindings };
}

function randomIdentity(rand: Rand): Identity | null {
  if (rand() < 0.15) return null;
  const tenant = pick(rand, TENANTS);
  return who(pick(rand, ['user:u1', 'user:u2', 'svc:billing']), {
    roles: [...some(rand, ROLES, 0.3), ...(rand() < 0.1 ? ['undefined-role'] : [])],
    scopes: some(rand, SCOPES, 0.5),
    claims: { c: rand() < 0.5 },
    ...(tenant === undefined ? {} : { tenant }),
  });
}

/** Compiles, or `null` when the random config is one the checks refuse (e.g. a never-matching rule). */
function tryCompile(config: AuthzConfig) {
  try {
    return compileAuthz(config);
  } catch (error) {
    if (error instanceof AuthzConfigError) return null;
    throw error;
  }
}

/** Allowed? for every (identity, method, path) of a fixed sample. */
function decisions(
  config: AuthzConfig,
  policyIds: readonly string[],
  sample: readonly [Identity | null, string, string][],
): boolean[] | null {
  const authz = tryCompile(config);
  if (authz === null) return null;
  const stage = createAuthzStage(policyIds, authz)!;
  return sample.map(
    ([identity, method, path]) => run(stage, request(method, path, { identity, params: paramsOf(path) })) === null,
  );
}

/** What a router with `/a/{tenant}/**` would capture. */
function paramsOf(path: string): Record<string, string> {
  const m = /^\/a\/(t\d)\//.exec(path);
  return m === null ? {} : { tenant: m[1]! };
}

function sampleRequests(rand: Rand): [Identity | null, string, string][] {
  return Array.from({ length: 60 }, () => [randomIdentity(rand), pick(rand, METHODS), pick(rand, PATHS)]);
}

const SEEDS = Array.from({ length: 300 }, (_, i) => 0x5eed + i);

describe('authz properties (random configs)', () => {
  it('adding a deny rule never turns a denial into an allow', () => {
    let compared = 0;
    let newlyDenied = 0;
    for (const seed of SEEDS) {
      const rand = prng(seed);
      const config = randomConfig(rand);
      const ids = config.policies.map((p) => p.id);
      const sample = sampleRequests(rand);
      const before = decisions(config, ids, sample);
      if (before === null) continue;
      // Put a random deny at a random place in a random policy (or in a policy of its own).
      const deny = randomRule(rand, 'added-deny', 'deny');
      const target = Math.floor(rand() * (config.policies.length + 1));
      const policies =
        target === config.policies.length
          ? [...config.policies, { id: 'extra', rules: [deny] }]
          : config.policies.map((p, i) => {
              if (i !== target) return p;
              const at = Math.floor(rand() * (p.rules.length + 1));
              return { ...p, rules: [...p.rules.slice(0, at), deny, ...p.rules.slice(at)] };
            });
      const after = decisions(
        { ...config, policies },
        policies.map((p) => p.id),
        sample,
      );
      if (after === null) continue;
      sample.forEach((_, i) => {
        if (!before[i]) expect(after[i], `seed ${seed}, request ${i}`).toBe(false);
        if (before[i] && !after[i]) newlyDenied++;
      });
      compared++;
    }
    // The generator must produce enough valid configs, and the denies must bite sometimes, or this proves nothing.
    expect(compared).toBeGreaterThan(150);
    expect(newlyDenied).toBeGreaterThan(50);
  });

  it('a deny covering everything denies every request, wherever it is declared (deny overrides, not first match)', () => {
    let compared = 0;
    for (const seed of SEEDS.slice(0, 100)) {
      const rand = prng(seed ^ 0xd0);
      const config = randomConfig(rand);
      const sample = sampleRequests(rand);
      if (
        decisions(
          config,
          config.policies.map((p) => p.id),
          sample,
        ) === null
      )
        continue;
      const everything: RuleConfig = {
        id: 'everything',
        effect: 'deny',
        roles: ['*'],
        resources: ['/**'],
        actions: ['*'],
        grpc: GRPC,
      };
      const target = Math.floor(rand() * config.policies.length);
      const policies = config.policies.map((p, i) => (i === target ? { ...p, rules: [...p.rules, everything] } : p));
      const after = decisions(
        { ...config, policies },
        policies.map((p) => p.id),
        sample,
      );
      expect(after, `seed ${seed}`).toEqual(sample.map(() => false));
      compared++;
    }
    expect(compared).toBeGreaterThan(50);
  });

  it('adding an allow rule never turns an allow into a denial', () => {
    let compared = 0;
    for (const seed of SEEDS) {
      const rand = prng(seed ^ 0xa11);
      const config = randomConfig(rand);
      const sample = sampleRequests(rand);
      const before = decisions(
        config,
        config.policies.map((p) => p.id),
        sample,
      );
      if (before === null) continue;
      const allow = randomRule(rand, 'added-allow', 'allow');
      const policies = [
        ...config.policies.slice(0, -1),
        { ...config.policies.at(-1)!, rules: [allow, ...config.policies.at(-1)!.rules] },
      ];
      const after = decisions(
        { ...config, policies },
        policies.map((p) => p.id),
        sample,
      );
      if (after === null) continue;
      sample.forEach((_, i) => {
        if (before[i]) expect(after[i], `seed ${seed}, request ${i}`).toBe(true);
      });
      compared++;
    }
    expect(compared).toBeGreaterThan(150);
  });

  it('adding a shadow policy never changes what is enforced', () => {
    let compared = 0;
    for (const seed of SEEDS) {
      const rand = prng(seed ^ 0x5ad);
      const config = randomConfig(rand);
      const ids = config.policies.map((p) => p.id);
      const sample = sampleRequests(rand);
      const before = decisions(config, ids, sample);
      if (before === null) continue;
      const shadow: PolicyConfig = {
        id: 'shadow',
        mode: 'shadow',
        rules: [randomRule(rand, 's0', 'deny'), randomRule(rand, 's1', 'allow')],
      };
      const after = decisions({ ...config, policies: [...config.policies, shadow] }, [...ids, 'shadow'], sample);
      if (after === null) continue;
      expect(after, `seed ${seed}`).toEqual(before);
      compared++;
    }
    expect(compared).toBeGreaterThan(150);
  });
});
