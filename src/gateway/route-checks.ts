import type { ConfigCheck } from '../config/load.js';
import { findShadowedRoutes, validateGlob } from './router.js';

/** Router rules as config checks, so they fail at load with file:line like every other mistake. */
export const routeChecks: ConfigCheck = (config, report) => {
  config.routes.forEach((route, index) => {
    const path = route.match.path;
    if (path !== undefined && 'glob' in path) {
      const problem = validateGlob(path.glob);
      if (problem !== null) report(['routes', index, 'match', 'path', 'glob'], 'config.bad_glob', problem);
    }
  });
  for (const warning of findShadowedRoutes(config.routes)) {
    report(['routes', warning.index], 'config.route_shadowed', warning.message, 'warning');
  }
};

/** Path knobs that cannot be combined: a kept `\\` travels as `%5C`, which a strict encoded-slash rule would then refuse. */
export const listenerChecks: ConfigCheck = (config, report) => {
  config.listeners.forEach((listener, index) => {
    const paths = listener.paths;
    if (paths?.backslash === 'keep' && (paths.encodedSlash ?? 'reject') === 'reject') {
      report(
        ['listeners', index, 'paths', 'backslash'],
        'config.path_policy',
        '`backslash: keep` requires `encodedSlash: keep` (a kept backslash is sent as %5C)',
      );
    }
  });
};

/** What `bulwark serve` needs beyond what the library adapters do. */
export const gatewayChecks: ConfigCheck = (config, report) => {
  if (config.listeners.length === 0) report(['listeners'], 'config.required', 'the gateway needs at least one listener');
  config.routes.forEach((route, index) => {
    if (route.upstream === undefined && route.issuer !== true)
      report(['routes', index], 'config.required', `route "${route.id}" needs an \`upstream\` to forward to`);
  });
};
