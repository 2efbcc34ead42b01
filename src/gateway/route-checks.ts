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
