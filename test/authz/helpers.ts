import { RequestContext, type Identity } from '../../src/core/context.js';
import type { BulwarkError } from '../../src/core/errors.js';
import { compileAuthz } from '../../src/authz/compile.js';
import type { AuthzConfig } from '../../src/authz/schema.js';
import { createAuthzStage } from '../../src/authz/stage.js';
import type { Decision, Stage } from '../../src/core/stage.js';

/** An identity as the authn stage would fill it; only what a test names differs from a plain user. */
export function who(subject: string, extra: Partial<Omit<Identity, 'subject'>> = {}): Identity {
  return { subject, roles: [], scopes: [], claims: {}, provider: 'test', ...extra };
}

export interface RequestInit {
  identity?: Identity | null;
  /** Route parameters, as the router captured them. */
  params?: Record<string, string>;
  route?: string;
}

/** A context as the gateway hands it to authz: canonical path, route matched, identity set. */
export function request(method: string, path: string, init: RequestInit = {}): RequestContext {
  const ctx = new RequestContext({
    method,
    rawTarget: path,
    headers: {},
    peerAddress: '127.0.0.1',
    peerPort: 50000,
    protocol: 'h2c',
    secure: false,
    requestId: 'req-1',
  });
  ctx.path = path;
  ctx.identity = init.identity === undefined ? null : init.identity;
  // A plain object (the router's are prototype-less): lookups must not find inherited names either way.
  ctx.route = { id: init.route ?? 'r', params: { ...init.params } };
  return ctx;
}

/** Compiles `config` and builds the stage for `policies` (all policies when omitted). */
export function stageFor(config: AuthzConfig, policies?: string | readonly string[]): Stage {
  const compiled = compileAuthz(config);
  const stage = createAuthzStage(policies ?? config.policies.map((p) => p.id), compiled);
  if (stage === null) throw new Error('no stage');
  return stage;
}

/** Runs the (synchronous) stage: `null` for CONTINUE, else the denial. */
export function run(stage: Stage, ctx: RequestContext): BulwarkError | null {
  const decision = stage.run(ctx) as Decision;
  if (decision instanceof Promise) throw new Error('authz must decide synchronously');
  return decision;
}

/** `'allow'` or the denial code, the thing most assertions are about. */
export function outcome(stage: Stage, ctx: RequestContext): string {
  return run(stage, ctx)?.code ?? 'allow';
}

/** Deterministic PRNG (mulberry32) so property tests are reproducible from their seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
