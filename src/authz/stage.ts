/**
 * The authorization stage: one per route (or per distinct policy list),
 * built at load from a `CompiledAuthz`, immutable, shared by every request.
 *
 * Per request: the identity's roles → the enforced policies' verdict →
 * (when the route has shadow policies) the verdict as if they were enforced
 * too. One DecisionRecord is pushed:
 *   allow        enforced rules allow (and shadow rules would too)
 *   shadow_deny  enforced rules allow (or nothing is enforced), shadow rules would deny
 *   deny         enforced rules deny; the returned BulwarkError stops the pipeline
 * A path that is not canonical (dot segments) is refused before any rule.
 */
import type { DecisionRecord, Identity, RequestContext } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import { CONTINUE, type Decision, type Stage } from '../core/stage.js';
import {
  AUTHZ_ALLOWED,
  evaluate,
  type AuthzDenyCode,
  type CompiledAuthz,
  type CompiledRule,
  type RuleIndex,
  type Verdict,
} from './compile.js';
import type { RoleResolver } from './roles.js';

export const AUTHZ_STAGE_ID = 'authz';

/** What an authz DecisionRecord's `detail` holds (audit, metrics, explain). A type, not an interface, so it fits `detail`'s record type. */
export type AuthzDecisionDetail = {
  /** Policy and rule that decided; both `null` for deny by default. */
  readonly policy: string | null;
  readonly rule: string | null;
  /** The roles the request held (token and bindings; `anonymous` without identity), before inheritance. */
  readonly roles: readonly string[];
  /** `enforce`: the verdict that was applied. `shadow`: the verdict with shadow policies counted, not applied. */
  readonly mode: 'enforce' | 'shadow';
  /** For `rbac.unauthenticated`: the underlying reason (`rbac.no_matching_rule`, `rbac.denied`, …). */
  readonly reason?: string;
  /** For `shadow_deny`: the enforced rule that allowed the request, `null` when nothing is enforced. */
  readonly allowedBy?: { readonly policy: string; readonly rule: string } | null;
};

const NO_PARAMS: Readonly<Record<string, string>> = Object.freeze(Object.create(null) as Record<string, string>);
// RFC 6750 §3: 403 + insufficient_scope when the token lacks scope; 401 + a challenge when there is no token.
const SCOPE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'www-authenticate': 'Bearer error="insufficient_scope"',
});
const CHALLENGE_HEADERS: Readonly<Record<string, string>> = Object.freeze({ 'www-authenticate': 'Bearer realm="bulwark"' });

class AuthzStage implements Stage {
  readonly id = AUTHZ_STAGE_ID;
  readonly policies: readonly string[];
  readonly #roles: RoleResolver;
  readonly #enforced: RuleIndex | null;
  readonly #withShadow: RuleIndex | null;
  #lastAllow: { readonly rule: CompiledRule | null; readonly roles: readonly string[]; readonly record: DecisionRecord } | null =
    null;

  constructor(policies: readonly string[], roles: RoleResolver, enforced: RuleIndex | null, withShadow: RuleIndex | null) {
    this.policies = policies;
    this.#roles = roles;
    this.#enforced = enforced;
    this.#withShadow = withShadow;
  }

  run(ctx: RequestContext): Decision {
    const identity = ctx.identity;
    const roles = this.#roles.resolve(identity);
    const params = ctx.route === null ? NO_PARAMS : ctx.route.params;
    const method = ctx.method;
    const path = ctx.path;
    if (!canonicalShape(path)) return notCanonical(ctx, roles);

    let enforced: Verdict | null = null;
    if (this.#enforced !== null) {
      enforced = evaluate(this.#enforced, method, path, params, identity, roles);
      if (!enforced.allowed) return deny(ctx, enforced, roles, identity);
    }
    if (this.#withShadow !== null) {
      const shadow = evaluate(this.#withShadow, method, path, params, identity, roles);
      if (!shadow.allowed) {
        const allowedBy = enforced?.rule == null ? null : { policy: enforced.rule.policy, rule: enforced.rule.id };
        const r = shadow.rule;
        const detail: AuthzDecisionDetail =
          identity === null
            ? { policy: policyOf(r), rule: idOf(r), roles, mode: 'shadow', reason: shadow.code, allowedBy }
            : { policy: policyOf(r), rule: idOf(r), roles, mode: 'shadow', allowedBy };
        ctx.decisions.push({
          stage: AUTHZ_STAGE_ID,
          outcome: 'shadow_deny',
          code: identity === null ? 'rbac.unauthenticated' : shadow.code,
          detail,
        });
        return CONTINUE;
      }
      // Nothing enforced on this route: record what the shadow rules decided, as such.
      if (enforced === null) enforced = shadow;
    }
    ctx.decisions.push(this.allowRecord(enforced!.rule, roles));
    return CONTINUE;
  }

  /**
   * The allow record for (rule, roles), frozen and reused while both stay the same: a
   * repeated token resolves to the same cached identity, hence the same roles, so the
   * steady state allocates nothing. One slot per stage; a different pair just
   * replaces it.
   */
  private allowRecord(rule: CompiledRule | null, roles: readonly string[]): DecisionRecord {
    const last = this.#lastAllow;
    if (last !== null && last.rule === rule && sameRoles(last.roles, roles)) return last.record;
    const detail: AuthzDecisionDetail = Object.freeze({
      policy: policyOf(rule),
      rule: idOf(rule),
      roles,
      mode: this.#enforced === null ? 'shadow' : 'enforce',
    });
    const record: DecisionRecord = Object.freeze({ stage: AUTHZ_STAGE_ID, outcome: 'allow', code: AUTHZ_ALLOWED, detail });
    this.#lastAllow = { rule, roles, record };
    return record;
  }
}

/**
 * Policy globs treat `..` as an ordinary segment, so `/public/../admin` would
 * match `/public/**`. The gateway canonicalizes before authz; this is the
 * cheap second lock for an adapter that forgot to: fail closed.
 */
function canonicalShape(path: string): boolean {
  if (path.charCodeAt(0) !== 0x2f) return false;
  for (let i = path.indexOf('/.'); i !== -1; i = path.indexOf('/.', i + 1)) {
    let end = i + 2;
    if (end < path.length && path.charCodeAt(end) === 0x2e) end++;
    if (end === path.length || path.charCodeAt(end) === 0x2f) return false;
  }
  return true;
}

function notCanonical(ctx: RequestContext, roles: readonly string[]): BulwarkError {
  const detail: AuthzDecisionDetail = { policy: null, rule: null, roles, mode: 'enforce' };
  ctx.decisions.push({ stage: AUTHZ_STAGE_ID, outcome: 'deny', code: 'request.bad_target', detail });
  return new BulwarkError('request.bad_target', undefined, { context: { stage: AUTHZ_STAGE_ID, ...detail } });
}

/** Same roles in the same order (usually the very same array: the cached identity's). */
function sameRoles(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const policyOf = (rule: CompiledRule | null): string | null => (rule === null ? null : rule.policy);
const idOf = (rule: CompiledRule | null): string | null => (rule === null ? null : rule.id);

/**
 * A request without identity is told to authenticate (401), whatever the
 * reason: "forbidden" would tell an anonymous caller that a token would not
 * help, and which rule refused it is for logs, not for them.
 */
function deny(ctx: RequestContext, verdict: Verdict, roles: readonly string[], identity: Identity | null): BulwarkError {
  const anonymous = identity === null;
  const code: AuthzDenyCode | 'rbac.unauthenticated' = anonymous ? 'rbac.unauthenticated' : (verdict.code as AuthzDenyCode);
  const r = verdict.rule;
  const detail: AuthzDecisionDetail = anonymous
    ? { policy: policyOf(r), rule: idOf(r), roles, mode: 'enforce', reason: verdict.code }
    : { policy: policyOf(r), rule: idOf(r), roles, mode: 'enforce' };
  ctx.decisions.push({ stage: AUTHZ_STAGE_ID, outcome: 'deny', code, detail });
  return new BulwarkError(code, undefined, {
    context: { stage: AUTHZ_STAGE_ID, ...detail },
    headers: anonymous ? CHALLENGE_HEADERS : code === 'rbac.insufficient_scope' ? SCOPE_HEADERS : undefined,
  });
}

/**
 * The stage for a route naming `policyIds` (the route's `authz`), or `null`
 * when it names none (no authorization stage; the config checks warn).
 * Several policies combine: a deny in any of them wins, an allow in any
 * enforced one grants, shadow policies are evaluated on top and recorded.
 *
 * Builds indexes from already compiled rules (once per distinct list, cached
 * on `authz`): nothing here or in `run` compiles a pattern.
 */
export function createAuthzStage(policyIds: string | readonly string[] | null, authz: CompiledAuthz): Stage | null {
  if (policyIds === null) return null;
  const ids = typeof policyIds === 'string' ? [policyIds] : [...new Set(policyIds)];
  if (ids.length === 0) {
    throw new TypeError('createAuthzStage: an empty policy list would refuse every request; pass null for no authorization');
  }
  const set = authz.policySet(ids);
  return new AuthzStage(set.ids, authz.roles, set.enforced, set.withShadow);
}
