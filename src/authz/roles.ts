/**
 * Roles: inheritance closures (computed once at load) and, per request, the
 * roles an identity holds (its token's roles and/or subject bindings).
 */
import type { Identity } from '../core/context.js';
import { claimRef, readClaim, SubjectPattern, type ClaimRef } from './patterns.js';
import { ANONYMOUS_ROLE, type BindingConfig, type RoleConfig, type RolesFromConfig } from './schema.js';

export type RoleTable = Readonly<Record<string, RoleConfig>>;

/** Whether `name` is a role the config defines (`anonymous` always exists, defined or not). */
export function isRole(roles: RoleTable, name: string): boolean {
  return name === ANONYMOUS_ROLE || Object.hasOwn(roles, name);
}

/**
 * Each role's closure: itself and every role it inherits, transitively.
 * Safe on cycles and unknown names (the checks report those; this must not
 * loop on a config it is asked to check).
 */
export function roleClosures(roles: RoleTable): Map<string, ReadonlySet<string>> {
  const closures = new Map<string, ReadonlySet<string>>();
  const names = Object.keys(roles);
  if (!Object.hasOwn(roles, ANONYMOUS_ROLE)) names.push(ANONYMOUS_ROLE);
  for (const name of names) {
    const seen = new Set<string>();
    const stack = [name];
    while (stack.length > 0) {
      const role = stack.pop()!;
      if (seen.has(role)) continue;
      seen.add(role);
      const inherits = Object.hasOwn(roles, role) ? roles[role]!.inherits : undefined;
      for (const parent of inherits ?? []) if (isRole(roles, parent)) stack.push(parent);
    }
    closures.set(name, seen);
  }
  return closures;
}

/**
 * The roles a rule naming `named` applies to: those roles plus every role
 * that inherits one of them. Precomputed so a decision is `Set.has` on the
 * identity's own roles, with no walk of the inheritance graph per request.
 */
export function rolesCovering(closures: ReadonlyMap<string, ReadonlySet<string>>, named: Iterable<string>): Set<string> {
  const wanted = new Set(named);
  const out = new Set<string>();
  for (const [role, closure] of closures) {
    for (const r of closure) {
      if (wanted.has(r)) {
        out.add(role);
        break;
      }
    }
  }
  return out;
}

/** Frozen: every anonymous request shares it. */
export const ANONYMOUS_ROLES: readonly string[] = Object.freeze([ANONYMOUS_ROLE]);
const NO_ROLES: readonly string[] = Object.freeze([]);

interface PatternBinding {
  readonly pattern: SubjectPattern;
  readonly roles: readonly string[];
}

/** Computes the roles a request holds. Compiled once; `resolve` allocates only when it must merge lists. */
export class RoleResolver {
  /** `true`: `identity.roles`; a ClaimRef: that claim; `null`: no roles from the token. */
  readonly #fromToken: true | ClaimRef | null;
  readonly #exact: ReadonlyMap<string, readonly string[]>;
  readonly #patterns: readonly PatternBinding[];

  constructor(rolesFrom: RolesFromConfig | undefined, bindings: readonly BindingConfig[]) {
    const claim = rolesFrom?.claim ?? true;
    this.#fromToken = claim === true ? true : claim === false ? null : claimRef(claim);
    const exact = new Map<string, string[]>();
    const patterns: PatternBinding[] = [];
    if (rolesFrom?.bindings ?? true) {
      for (const binding of bindings) {
        const roles = binding.roles.filter((r) => r !== ANONYMOUS_ROLE);
        if (!binding.subject.includes('*')) {
          // An exact subject is a Map key: one lookup however many bindings there are.
          const list = exact.get(binding.subject) ?? [];
          for (const r of roles) if (!list.includes(r)) list.push(r);
          exact.set(binding.subject, list);
        } else {
          const pattern = SubjectPattern.compile(binding.subject);
          if (typeof pattern === 'string') throw new TypeError(`binding subject ${binding.subject}: ${pattern}`);
          patterns.push({ pattern, roles });
        }
      }
    }
    this.#exact = exact;
    this.#patterns = patterns;
  }

  /**
   * `anonymous` for a request without identity, and only for it: a token
   * claiming the role `anonymous` does not get it (it could only ever widen
   * nothing, but a deny aimed at anonymous callers must not hit it either).
   */
  resolve(identity: Identity | null): readonly string[] {
    if (identity === null) return ANONYMOUS_ROLES;
    const from = this.#fromToken;
    let roles: readonly string[] = from === null ? NO_ROLES : from === true ? identity.roles : claimRoles(identity, from);
    const bound = this.#exact.get(identity.subject);
    if (bound !== undefined) roles = merge(roles, bound);
    const patterns = this.#patterns;
    for (let i = 0; i < patterns.length; i++) {
      if (patterns[i]!.pattern.match(identity.subject)) roles = merge(roles, patterns[i]!.roles);
    }
    return roles.includes(ANONYMOUS_ROLE) ? roles.filter((r) => r !== ANONYMOUS_ROLE) : roles;
  }
}

function claimRoles(identity: Identity, ref: ClaimRef): readonly string[] {
  const value = readClaim(identity.claims, ref);
  if (typeof value === 'string') return [value];
  if (!Array.isArray(value)) return NO_ROLES;
  return value.filter((v): v is string => typeof v === 'string');
}

function merge(a: readonly string[], b: readonly string[]): readonly string[] {
  if (a.length === 0) return b;
  let out: string[] | null = null;
  for (const r of b) {
    if ((out ?? a).includes(r)) continue;
    out ??= [...a];
    out.push(r);
  }
  return out ?? a;
}
