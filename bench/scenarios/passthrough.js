// The first scenario: one catch-all route to the benchmark upstream, nothing
// else switched on. It measures the gateway's fixed cost per request (parse,
// canonicalize, route, pool, stream) against the bare node:http baseline proxy.
//
// Other scenarios can start from `passthroughConfig(ctx)` and add to it.

/** The minimal gateway config: one listener, the admin listener, one upstream, one route. */
export function passthroughConfig(ctx) {
  return {
    version: 1,
    workers: ctx.workers,
    listeners: [{ port: ctx.listenPort, address: '127.0.0.1' }],
    admin: { port: ctx.adminPort },
    upstreams: {
      bench: { endpoints: [ctx.upstreamUrl] },
    },
    routes: [{ id: 'passthrough', auth: { public: true }, match: { path: { prefix: '/' } }, upstream: 'bench' }],
  };
}

export default {
  name: 'passthrough',
  description: 'GET / through one prefix route to one upstream; no auth, limits or audit.',
  variants: [
    { id: '1', label: '1 worker', workers: 1 },
    { id: 'auto', label: 'workers: auto', workers: 'auto' },
  ],
  gatewayConfig: passthroughConfig,
  request: { method: 'GET', path: '/', headers: {} },
  compareTo: 'baseline',
};
