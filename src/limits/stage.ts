import type { DecisionRecord, RequestContext } from '../core/context.js';
import { BulwarkError, type ErrorCode } from '../core/errors.js';
import { CONTINUE, type Decision, type Stage } from '../core/stage.js';
import type { CompiledLimits, CompiledPolicy } from './compile.js';
import { compileKey, type ClientAddress } from './keys.js';
import type { Profile, RateOutcome, SlotOutcome } from './profile.js';

export const STAGE_ID = 'ratelimit';

/**
 * Concurrency slots a request holds, until its completion hook calls
 * `releaseLimits(ctx)`. A WeakMap because the context has a fixed shape (no
 * extra fields on the hot path) and an abandoned context must not pin anything.
 */
const HELD = new WeakMap<RequestContext, (() => void)[]>();

/**
 * Frees every concurrency slot the request holds. Call it from the request's
 * completion hook — response finished, client aborted, upstream
 * failed, or a later stage denied; calling it again is harmless (no double release).
 */
export function releaseLimits(ctx: RequestContext): void {
  const held = HELD.get(ctx);
  if (held === undefined) return;
  HELD.delete(ctx);
  for (let i = 0; i < held.length; i++) held[i]!();
}

/** What one policy decided for one request (also the `detail` of its DecisionRecord). */
export type LimitDecision = {
  readonly allowed: boolean;
  readonly policy: string;
  readonly kind: 'rate' | 'concurrency';
  /** Hashed bucket key: stable per key, never the raw IP / subject / header value. */
  readonly key: string;
  /** Requests left (rate: tokens; concurrency: free slots). */
  readonly remaining: number;
  /** Rate: the quota `q` of `window` seconds (IETF RateLimit-Policy); concurrency: the slot count. */
  readonly limit: number;
  readonly window: number;
  /** Until the bucket is full again / until the next request would be admitted, ms (rate). */
  readonly resetMs: number;
  readonly retryAfterMs: number;
  /** `default`, `tier:gold`, `tenant:acme`. */
  readonly profile: string;
  readonly store: string;
  /** Decided by the local fallback because the shared store was unreachable. */
  readonly degraded: boolean;
  /** A `mode: shadow` policy: recorded, never enforced, never shown to the client. */
  readonly shadow: boolean;
  /** Concurrency: frees the slot (only the first call counts). Not enumerable, so audit serialization skips it. */
  readonly release?: () => void;
};

/** The token-bucket admissions of this request so far, refunded if a later policy denies it. */
class Trail {
  readonly policies: CompiledPolicy[];
  readonly keys: string[];
  readonly profiles: Profile[];
  readonly outcomes: RateOutcome[];

  constructor() {
    this.policies = [];
    this.keys = [];
    this.profiles = [];
    this.outcomes = [];
  }
}

/**
 * The limit stage for one route: every listed policy must admit the request.
 *
 * Order: token-bucket policies in the listed order, then concurrency policies
 * (so a request a bucket refuses never takes and returns a slot). The first
 * denial stops: later policies are not consulted (nothing consumed there), and
 * earlier admissions are undone — tokens refunded, slots released — so a
 * request refused by one limit costs nothing against the others. Shadow
 * policies count and record (`shadow_deny`) but never stop anything.
 *
 * Synchronous while the stores are (memory, or a leased token at hand); a
 * promise only when a shared store has to be asked.
 */
class LimitStage implements Stage {
  readonly id = STAGE_ID;
  private readonly policies: readonly CompiledPolicy[];
  private readonly keys: readonly ((ctx: RequestContext) => string)[];
  private readonly limits: CompiledLimits;

  constructor(policies: CompiledPolicy[], limits: CompiledLimits, clientAddress: ClientAddress) {
    this.policies = policies;
    this.keys = policies.map((p) => compileKey(p.id, p.descriptors, clientAddress));
    this.limits = limits;
  }

  run(ctx: RequestContext): Decision | Promise<Decision> {
    return this.from(ctx, 0, this.policies.length > 1 ? new Trail() : null);
  }

  private from(ctx: RequestContext, start: number, trail: Trail | null): Decision | Promise<Decision> {
    const policies = this.policies;
    for (let i = start; i < policies.length; i++) {
      const policy = policies[i]!;
      const key = this.keys[i]!(ctx);
      const profile = policy.profileFor(ctx);
      if (policy.rate !== null) {
        const outcome = policy.rate.take(key, profile, policy.failOpen, this.limits.clock());
        if (outcome instanceof Promise) {
          return outcome.then((o) => {
            const denial = this.rated(ctx, policy, key, profile, o, trail);
            return denial !== null ? denial : this.from(ctx, i + 1, trail);
          });
        }
        const denial = this.rated(ctx, policy, key, profile, outcome, trail);
        if (denial !== null) return denial;
      } else {
        const outcome = policy.concurrency!.acquire(key, profile, policy.failOpen);
        if (outcome instanceof Promise) {
          return outcome.then((o) => {
            const denial = this.slotted(ctx, policy, key, profile, o, trail);
            return denial !== null ? denial : this.from(ctx, i + 1, trail);
          });
        }
        const denial = this.slotted(ctx, policy, key, profile, outcome, trail);
        if (denial !== null) return denial;
      }
    }
    return CONTINUE;
  }

  private rated(
    ctx: RequestContext,
    policy: CompiledPolicy,
    key: string,
    profile: Profile,
    o: RateOutcome,
    trail: Trail | null,
  ): BulwarkError | null {
    if (o.via === 1) policy.degraded++;
    const detail: LimitDecision = {
      allowed: o.allowed,
      policy: policy.id,
      kind: 'rate',
      key: this.limits.hasher.label(key),
      remaining: o.remaining,
      limit: profile.quota,
      window: profile.window,
      resetMs: Math.ceil(o.resetMs),
      retryAfterMs: Math.ceil(o.retryAfterMs),
      profile: profile.name,
      store: policy.storeName,
      degraded: o.via === 1,
      shadow: policy.shadow,
    };
    if (o.allowed) {
      policy.allowed++;
      ctx.decisions.push({ stage: STAGE_ID, outcome: 'allow', code: 'ratelimit.ok', detail });
      if (trail !== null) {
        trail.policies.push(policy);
        trail.keys.push(key);
        trail.profiles.push(profile);
        trail.outcomes.push(o);
      }
      return null;
    }
    const code: ErrorCode = o.via === 2 ? 'ratelimit.store_unavailable' : 'ratelimit.exceeded';
    return this.deny(ctx, policy, code, detail, trail);
  }

  private slotted(
    ctx: RequestContext,
    policy: CompiledPolicy,
    key: string,
    profile: Profile,
    o: SlotOutcome,
    trail: Trail | null,
  ): BulwarkError | null {
    if (o.via === 1) policy.degraded++;
    const limit = o.via === 1 ? profile.shareConcurrency : profile.concurrency;
    const detail: LimitDecision = {
      allowed: o.allowed,
      policy: policy.id,
      kind: 'concurrency',
      key: this.limits.hasher.label(key),
      remaining: Math.max(0, limit - o.inFlight),
      limit,
      window: 0,
      resetMs: 0,
      retryAfterMs: o.allowed ? 0 : 1000,
      profile: profile.name,
      store: policy.storeName,
      degraded: o.via === 1,
      shadow: policy.shadow,
    };
    if (o.release !== null) {
      // Non-enumerable: audit serializes details, and a function has no business there.
      Object.defineProperty(detail, 'release', { value: o.release, enumerable: false });
      let held = HELD.get(ctx);
      if (held === undefined) {
        held = [];
        HELD.set(ctx, held);
      }
      held.push(o.release);
    }
    if (o.allowed) {
      policy.allowed++;
      ctx.decisions.push({ stage: STAGE_ID, outcome: 'allow', code: 'ratelimit.ok', detail });
      return null;
    }
    const code: ErrorCode = o.via === 2 ? 'ratelimit.store_unavailable' : 'ratelimit.concurrency';
    return this.deny(ctx, policy, code, detail, trail);
  }

  private deny(
    ctx: RequestContext,
    policy: CompiledPolicy,
    code: ErrorCode,
    detail: LimitDecision,
    trail: Trail | null,
  ): BulwarkError | null {
    if (policy.shadow) {
      policy.shadowDenied++;
      ctx.decisions.push({ stage: STAGE_ID, outcome: 'shadow_deny', code, detail });
      return null;
    }
    policy.denied++;
    ctx.decisions.push({ stage: STAGE_ID, outcome: 'deny', code, detail });
    if (trail !== null) {
      const now = this.limits.clock();
      for (let i = 0; i < trail.policies.length; i++) {
        trail.policies[i]!.rate!.refund(trail.keys[i]!, trail.profiles[i]!, trail.outcomes[i]!, now);
      }
    }
    releaseLimits(ctx);
    const headers = rateLimitHeaders(ctx) ?? {};
    headers['retry-after'] = String(Math.max(1, Math.ceil(detail.retryAfterMs / 1000)));
    const message =
      code === 'ratelimit.store_unavailable'
        ? `rate limit "${policy.id}" cannot be checked right now`
        : code === 'ratelimit.concurrency'
          ? `too many concurrent requests for "${policy.id}"`
          : `rate limit "${policy.id}" exceeded`;
    return new BulwarkError(code, message, { headers, context: { policy: policy.id, key: detail.key } });
  }
}

/**
 * The stage enforcing `policyIds` (in order; see LimitStage), or null when the
 * list is empty (the route's pipeline then skips it). Throws TypeError on an
 * unknown id — config validation reports those first, with file and line.
 */
export function createLimitStage(
  policyIds: readonly string[],
  limits: CompiledLimits,
  clientAddress: ClientAddress,
): Stage | null {
  if (policyIds.length === 0) return null;
  const rate: CompiledPolicy[] = [];
  const concurrency: CompiledPolicy[] = [];
  for (const id of policyIds) {
    const policy = limits.policy(id);
    if (policy === undefined) throw new TypeError(`unknown rate limit policy "${id}"`);
    (policy.kind === 'rate' ? rate : concurrency).push(policy);
  }
  return new LimitStage([...rate, ...concurrency], limits, clientAddress);
}

/**
 * Response headers for the request's enforced token-bucket decisions, per
 * draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "id";q=10;w=1` and
 * `RateLimit: "id";r=3;t=1` (several policies: comma-separated lists). `t` is
 * the seconds until the bucket is full again while quota remains, and until the
 * next request is admitted once `r=0`. Only policy ids (config) and numbers —
 * never key material (no `pk`). Shadow policies are invisible to clients.
 * Null when the request met no rate limit.
 */
export function rateLimitHeaders(ctx: RequestContext): Record<string, string> | null {
  let policy = '';
  let state = '';
  const decisions = ctx.decisions;
  for (let i = 0; i < decisions.length; i++) {
    const d: DecisionRecord = decisions[i]!;
    if (d.stage !== STAGE_ID || d.outcome === 'shadow_deny' || d.outcome === 'skip') continue;
    const detail = d.detail as LimitDecision | undefined;
    // A shadow policy is being tried out: its numbers are not the client's to see.
    if (detail === undefined || detail.kind !== 'rate' || detail.shadow) continue;
    const t = detail.remaining > 0 ? Math.ceil(detail.resetMs / 1000) : Math.max(1, Math.ceil(detail.retryAfterMs / 1000));
    const sep = policy === '' ? '' : ', ';
    policy += `${sep}"${detail.policy}";q=${detail.limit};w=${detail.window}`;
    state += `${sep}"${detail.policy}";r=${detail.remaining};t=${t}`;
  }
  return policy === '' ? null : { 'ratelimit-policy': policy, ratelimit: state };
}
