import { watchDirectories } from '../core/watch.js';
import { basename, dirname, resolve } from 'node:path';
import { loadConfigFile, parseConfig, type ConfigCheck, type LoadedConfig } from '../config/load.js';
import type { BulwarkConfig } from '../config/schema.js';
import { authnChecks, checkRouteAuth } from '../authn/index.js';
import { authzChecks } from '../authz/index.js';
import { telemetryChecks } from '../telemetry/index.js';
import { limitsChecks, policyReferenceChecks } from '../limits/index.js';
import { auditChecks } from '../audit/index.js';
import { revocationChecks } from '../revocation/index.js';
import { issuerChecks, issuerRoutes } from '../issuer/schema.js';
import { ConfigError } from '../config/issues.js';
import { gatewayChecks, listenerChecks, routeChecks } from '../gateway/route-checks.js';

export interface Overrides {
  port?: number | undefined;
  adminPort?: number | undefined;
  /** `bulwark issuer serve`: the routes become the issuer's endpoints, nothing else. */
  issuerOnly?: boolean;
}

/** Checks for a config the library adapters run. */
export const LIBRARY_CHECKS: readonly ConfigCheck[] = [
  routeChecks,
  listenerChecks,
  (config, report) => authnChecks(config, report),
  (config, report) =>
    config.routes.forEach((route, i) =>
      checkRouteAuth(route.auth, config.authn, ['routes', i, 'auth'], report, route.match.path),
    ),
  (config, report) => authzChecks(config, report),
  telemetryChecks,
  (config, report) => limitsChecks(config.rateLimits, report),
  (config, report) => auditChecks(config, report),
  (config, report) => revocationChecks(config, report),
  (config, report) => issuerChecks(config, report),
  (config, report) =>
    config.routes.forEach((route, i) => {
      if (route.rateLimit !== undefined)
        policyReferenceChecks(route.rateLimit, config.rateLimits, ['routes', i, 'rateLimit'], report);
    }),
];
/** Checks for a config `bulwark serve` and `bulwark validate` accept. */
export const CONFIG_CHECKS: readonly ConfigCheck[] = [...LIBRARY_CHECKS, gatewayChecks];

/** CLI flags win over the file; applied after validation so they survive every reload. */
export function applyOverrides(config: BulwarkConfig, overrides: Overrides): BulwarkConfig {
  let out = config;
  if (overrides.port !== undefined && config.listeners.length > 0) {
    const [first, ...rest] = config.listeners;
    out = { ...out, listeners: [{ ...first!, port: overrides.port }, ...rest] };
  }
  if (overrides.adminPort !== undefined)
    out = { ...out, admin: { address: '127.0.0.1', enabled: true, ...out.admin, port: overrides.adminPort } };
  if (overrides.issuerOnly === true) {
    if (out.issuer === undefined)
      throw new ConfigError([
        {
          file: '<config>',
          line: 0,
          column: 0,
          path: 'issuer',
          code: 'config.required',
          message: '`bulwark issuer serve` needs an `issuer` section',
        },
      ]);
    out = { ...out, routes: issuerRoutes(out.issuer) };
  }
  return out;
}

export async function loadWithOverrides(file: string, overrides: Overrides): Promise<LoadedConfig> {
  const loaded = await loadConfigFile(file, { checks: CONFIG_CHECKS });
  return { ...loaded, config: applyOverrides(loaded.config, overrides) };
}

export function parseWithOverrides(source: string, file: string, overrides: Overrides): LoadedConfig {
  const loaded = parseConfig(source, file, { checks: CONFIG_CHECKS });
  return { ...loaded, config: applyOverrides(loaded.config, overrides) };
}

/**
 * Watches the config file through its directory: editors and config managers
 * replace files by rename, which a watch on the file itself would miss.
 * Debounced, so a burst of writes becomes one reload.
 */
export function watchConfig(file: string, onChange: () => void, debounceMs = 150): () => void {
  const path = resolve(file);
  return watchDirectories([dirname(path)], onChange, { debounceMs, names: new Set([basename(path)]) });
}
