import { Pool } from 'undici';
import type { UpstreamConfig, UpstreamTimeoutsConfig } from '../config/schema.js';

export const DEFAULT_UPSTREAM_TIMEOUTS: Readonly<UpstreamTimeoutsConfig> = Object.freeze({
  connectMs: 5_000,
  headersMs: 30_000,
  idleMs: 60_000,
  totalMs: 300_000,
});

/** One origin of a pool, with the in-flight count least-request balancing reads. */
export class Endpoint {
  readonly origin: string;
  readonly pool: Pool;
  inFlight: number;

  constructor(origin: string, config: UpstreamConfig, timeouts: UpstreamTimeoutsConfig) {
    this.origin = origin;
    this.inFlight = 0;
    this.pool = new Pool(origin, {
      connections: config.connections,
      // Pipelining would let one slow response hold up unrelated requests; proxies keep it at 1.
      pipelining: 1,
      keepAliveTimeout: config.keepAliveTimeoutMs,
      keepAliveMaxTimeout: Math.max(config.keepAliveTimeoutMs, 600_000),
      connectTimeout: timeouts.connectMs,
      headersTimeout: timeouts.headersMs,
      bodyTimeout: timeouts.idleMs,
      // The gateway enforces its own limits; upstream response heads up to 64 KiB.
      maxHeaderSize: 65_536,
    });
  }
}

export type Balancer = 'round_robin' | 'least_request';

/** A named pool of endpoints. Immutable per config snapshot; closed when its snapshot retires. */
export class Upstream {
  readonly name: string;
  readonly endpoints: readonly Endpoint[];
  readonly timeouts: Readonly<UpstreamTimeoutsConfig>;
  private readonly leastRequest: boolean;
  private cursor: number;

  constructor(name: string, config: UpstreamConfig, origins: readonly string[]) {
    this.name = name;
    this.timeouts = Object.freeze({ ...DEFAULT_UPSTREAM_TIMEOUTS, ...config.timeouts });
    this.endpoints = origins.map((origin) => new Endpoint(origin, config, this.timeouts));
    this.leastRequest = config.balancer === 'least_request';
    this.cursor = 0;
  }

  /**
   * Picks the endpoint for one attempt; null when the pool has none to offer. `avoid` (the
   * endpoint a retried attempt just failed on) is passed over when there is another.
   */
  pick(avoid?: Endpoint): Endpoint | null {
    const endpoints = this.endpoints;
    const n = endpoints.length;
    if (n === 0) return null;
    if (n === 1) return endpoints[0]!;
    if (avoid !== undefined) {
      const next = this.pickOne();
      return next === avoid ? endpoints[(endpoints.indexOf(avoid) + 1) % n]! : next;
    }
    return this.pickOne();
  }

  private pickOne(): Endpoint {
    const endpoints = this.endpoints;
    const n = endpoints.length;
    if (!this.leastRequest) {
      const endpoint = endpoints[this.cursor]!;
      this.cursor = this.cursor + 1 === n ? 0 : this.cursor + 1;
      return endpoint;
    }
    // Power of two choices: near-optimal spread without scanning, and no herd on one idle endpoint.
    const a = endpoints[(Math.random() * n) | 0]!;
    let b = endpoints[(Math.random() * n) | 0]!;
    if (b === a) b = endpoints[(endpoints.indexOf(a) + 1) % n]!;
    return b.inFlight < a.inFlight ? b : a;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.endpoints.map((e) => e.pool.close()));
  }

  destroy(): void {
    for (const e of this.endpoints) void e.pool.destroy().catch(() => {});
  }
}
