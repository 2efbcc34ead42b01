import { TenantAuthnStage } from '../authn/index.js';
import { explainDecision, explanationExitCode, formatExplanation } from '../authz/index.js';
import { loadConfigFile } from '../config/load.js';
import type { Identity } from '../core/context.js';
import { BulwarkError } from '../core/errors.js';
import type { Decision } from '../core/stage.js';
import { admit, contextFor, type RequestLike } from '../engine/admission.js';
import { compileRuntime, ListenerSettings, retireRuntime } from '../gateway/runtime.js';
import { LIBRARY_CHECKS } from '../server/config-source.js';

export interface ExplainOptions {
  configFile: string;
  method: string;
  path: string;
  host?: string | undefined;
  token?: string | undefined;
  /** Trusted claims instead of a token: authentication is skipped, everything after it runs. */
  claims?: Record<string, unknown> | undefined;
  headers?: Record<string, string> | undefined;
  json?: boolean | undefined;
}

/**
 * `bulwark explain`: one request through the real engine of a config (same
 * canonicalization, routing and stages as `serve`), printed step by step.
 * Returns 0 for allow, 1 for deny.
 */
export async function explain(options: ExplainOptions, out: (text: string) => void): Promise<number> {
  const loaded = await loadConfigFile(options.configFile, { checks: LIBRARY_CHECKS });
  const runtime = await compileRuntime(loaded.config, loaded.hash, null, { issuer: false });
  runtime.activate(null);
  try {
    const listener = loaded.config.listeners[0] ?? {
      port: 0,
      address: '127.0.0.1',
      protocol: 'http' as const,
      trustedProxies: [],
    };
    const settings = new ListenerSettings(listener);
    const headers: Record<string, string> = { host: options.host ?? 'localhost', ...options.headers };
    if (options.token !== undefined) headers['authorization'] = `Bearer ${options.token}`;
    const rawHeaders = Object.entries(headers).flat();
    const req: RequestLike = {
      method: options.method.toUpperCase(),
      url: options.path,
      headers,
      rawHeaders,
      httpVersionMajor: 1,
      httpVersionMinor: 1,
      socket: { remoteAddress: '127.0.0.1', remotePort: 0 },
    };
    const ctx = contextFor(req, false);
    const admitted = admit(req, ctx, settings, runtime);
    let decision: Decision = null;
    if (admitted instanceof BulwarkError) decision = admitted;
    else if (admitted.pipeline !== null) {
      let stages = admitted.pipeline.stages;
      if (options.claims !== undefined) {
        const identity = identityFromClaims(options.claims, loaded.config.authn?.providers ?? {});
        // A tenant route still checks the request's tenant against the (trusted) identity.
        const tenantStage = stages.find((s): s is TenantAuthnStage => s instanceof TenantAuthnStage);
        if (tenantStage === undefined) ctx.identity = identity;
        else decision = tenantStage.assume(ctx, identity);
        stages = decision === null ? stages.filter((s) => s.id !== 'authn') : [];
      }
      for (const stage of stages) {
        decision = await stage.run(ctx);
        if (decision !== null) break;
      }
    }
    const explanation = explainDecision(ctx, decision);
    out(options.json === true ? JSON.stringify(explanation, null, 2) : formatExplanation(explanation));
    return explanationExitCode(explanation);
  } finally {
    await retireRuntime(runtime, null, 0);
  }
}

function identityFromClaims(
  claims: Record<string, unknown>,
  providers: Record<string, { rolesClaim?: string; tenantClaim?: string }>,
): Identity {
  const provider = Object.values(providers)[0];
  const at = (path: string | undefined): unknown =>
    path
      ?.split('.')
      .reduce<unknown>((v, k) => (v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined), claims);
  const roles = at(provider?.rolesClaim ?? 'roles');
  const scope = claims['scope'] ?? claims['scp'];
  const tenant = at(provider?.tenantClaim);
  return {
    subject: typeof claims['sub'] === 'string' ? claims['sub'] : '',
    ...(typeof tenant === 'string' ? { tenant } : {}),
    roles: Array.isArray(roles)
      ? roles.filter((r): r is string => typeof r === 'string')
      : typeof roles === 'string'
        ? [roles]
        : [],
    scopes: Array.isArray(scope) ? scope.map(String) : typeof scope === 'string' ? scope.split(' ').filter(Boolean) : [],
    claims,
    provider: 'claims',
  };
}
