import type { RequestContext } from './context.js';
import { BulwarkError } from './errors.js';
import { CONTINUE, type Decision, type Stage } from './stage.js';

/**
 * Runs stages in order; the first denial stops the chain. Stays synchronous
 * while stages are, so a chain of cheap checks costs no promise per request.
 */
export class Pipeline {
  readonly stages: readonly Stage[];

  constructor(stages: readonly Stage[]) {
    this.stages = stages;
  }

  run(ctx: RequestContext): Decision | Promise<Decision> {
    const stages = this.stages;
    for (let i = 0; i < stages.length; i++) {
      let decision: Decision | Promise<Decision>;
      try {
        decision = stages[i]!.run(ctx);
      } catch (err) {
        return internal(stages[i]!, err);
      }
      if (decision === CONTINUE) continue;
      if (decision instanceof BulwarkError) return decision;
      return this.continueAsync(ctx, decision, i);
    }
    return CONTINUE;
  }

  private async continueAsync(ctx: RequestContext, pending: Promise<Decision>, index: number): Promise<Decision> {
    const stages = this.stages;
    let i = index;
    try {
      let decision = await pending;
      for (;;) {
        if (decision !== CONTINUE) return decision;
        if (++i >= stages.length) return CONTINUE;
        decision = await stages[i]!.run(ctx);
      }
    } catch (err) {
      return internal(stages[i]!, err);
    }
  }
}

/** A stage that throws is a bug, not a client's mistake: fail closed, keep the cause for logs. */
function internal(stage: Stage, err: unknown): BulwarkError {
  return err instanceof BulwarkError
    ? err
    : new BulwarkError('gateway.internal', undefined, { cause: err, context: { stage: stage.id } });
}
