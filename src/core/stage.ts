import type { BulwarkError } from './errors.js';
import type { RequestContext } from './context.js';

/**
 * A stage's verdict for one request: `CONTINUE`, or a denial carrying the
 * stable reason code (a BulwarkError, which is data, not thrown).
 */
export const CONTINUE = null;
export type Continue = typeof CONTINUE;
export type Decision = Continue | BulwarkError;

/** The per-request half of a stage: small, immutable, shared by all requests of a config snapshot. */
export interface Stage {
  readonly id: string;
  run(ctx: RequestContext): Decision | Promise<Decision>;
}

/**
 * The load-time half: validates its slice of config and compiles it once.
 * A bad config fails here (at load / reload), never per request.
 */
export interface StageFactory<Config> {
  readonly id: string;
  compile(config: Config): Stage | null;
}
