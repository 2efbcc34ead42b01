/**
 * Decision explanations: the trace every stage left in `ctx.decisions`, as
 * data (for the admin side and tests) and as text (for `bulwark explain`).
 * Read-only over the context; never shown to clients.
 */
import type { DecisionRecord, RequestContext } from '../core/context.js';
import { isBulwarkError } from '../core/errors.js';
import type { Decision } from '../core/stage.js';

export interface ExplanationStep {
  readonly stage: string;
  readonly outcome: DecisionRecord['outcome'];
  readonly code: string;
  /** Authentication provider and key id (JWS `kid`), when the stage recorded them. */
  readonly provider?: string;
  readonly kid?: string;
  /** Authorization policy and rule, when the stage recorded them. */
  readonly policy?: string;
  readonly rule?: string;
  readonly roles?: readonly string[];
  /** The rest of the record's detail, as recorded (bucket, remaining quota, shadow mode…). */
  readonly extra: Readonly<Record<string, unknown>>;
}

export interface Explanation {
  /** `deny` if the pipeline returned a denial or any stage recorded one; shadow denials do not count. */
  readonly outcome: 'allow' | 'deny';
  /** The denial's code; `null` when allowed. */
  readonly code: string | null;
  /** Shadow-mode policies would have denied (rolled out, not enforced). */
  readonly shadowDenied: boolean;
  readonly request: { readonly method: string; readonly path: string; readonly route: string | null; readonly requestId: string };
  readonly identity: {
    readonly subject: string;
    readonly tenant: string | null;
    readonly provider: string;
    readonly kid: string | null;
    readonly roles: readonly string[];
  } | null;
  readonly steps: readonly ExplanationStep[];
}

const KNOWN = new Set(['provider', 'kid', 'keyId', 'policy', 'rule', 'roles']);

/**
 * `decision`: what the pipeline returned, when known. A denial that no stage
 * recorded (a stage that threw, a gateway error) is added as a last step so
 * the trace always ends with the reason the request was refused.
 */
export function explainDecision(ctx: RequestContext, decision?: Decision): Explanation {
  const steps = ctx.decisions.map(toStep);
  let denial = steps.find((s) => s.outcome === 'deny');
  if (decision !== undefined && isBulwarkError(decision) && (denial === undefined || denial.code !== decision.code)) {
    const stage = typeof decision.context?.['stage'] === 'string' ? decision.context['stage'] : 'pipeline';
    denial = { stage, outcome: 'deny', code: decision.code, extra: {} };
    steps.push(denial);
  }
  const id = ctx.identity;
  return {
    outcome: denial === undefined ? 'allow' : 'deny',
    code: denial === undefined ? null : denial.code,
    shadowDenied: steps.some((s) => s.outcome === 'shadow_deny'),
    request: { method: ctx.method, path: ctx.path, route: ctx.route?.id ?? null, requestId: ctx.requestId },
    identity:
      id === null
        ? null
        : { subject: id.subject, tenant: id.tenant ?? null, provider: id.provider, kid: id.keyId ?? null, roles: id.roles },
    steps,
  };
}

function toStep(record: DecisionRecord): ExplanationStep {
  const detail = record.detail ?? {};
  const text = (key: string): string | undefined => {
    const value = detail[key];
    return typeof value === 'string' ? value : undefined;
  };
  const extra: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(detail)) if (!KNOWN.has(key)) extra[key] = value;
  const roles = detail['roles'];
  const step: {
    -readonly [K in keyof ExplanationStep]: ExplanationStep[K];
  } = { stage: record.stage, outcome: record.outcome, code: record.code, extra };
  const provider = text('provider');
  const kid = text('kid') ?? text('keyId');
  const policy = text('policy');
  const rule = text('rule');
  if (provider !== undefined) step.provider = provider;
  if (kid !== undefined) step.kid = kid;
  if (policy !== undefined) step.policy = policy;
  if (rule !== undefined) step.rule = rule;
  if (Array.isArray(roles)) step.roles = roles.filter((r): r is string => typeof r === 'string');
  return step;
}

/** 0 when allowed (shadow denials included), 1 when denied: what `bulwark explain` exits with. */
export function explanationExitCode(trace: Explanation): 0 | 1 {
  return trace.outcome === 'allow' ? 0 : 1;
}

/**
 * Plain text, one step a line. Values come from requests and tokens, so any
 * that is not plainly printable is JSON-quoted: a crafted subject or path
 * cannot forge lines or terminal escapes in the output.
 */
export function formatExplanation(trace: Explanation): string {
  const r = trace.request;
  const lines = [
    `${show(r.method)} ${show(r.path)}  route=${r.route === null ? '(none)' : show(r.route)}  request=${show(r.requestId)}`,
  ];
  const id = trace.identity;
  if (id === null) {
    lines.push('identity: anonymous');
  } else {
    const parts = [`identity: ${show(id.subject)}`];
    if (id.tenant !== null) parts.push(`tenant=${show(id.tenant)}`);
    parts.push(`provider=${show(id.provider)}`);
    if (id.kid !== null) parts.push(`kid=${show(id.kid)}`);
    if (id.roles.length > 0) parts.push(`roles=${id.roles.map(show).join(',')}`);
    lines.push(parts.join('  '));
  }
  const stageWidth = Math.max(5, ...trace.steps.map((s) => s.stage.length));
  const codeWidth = Math.max(4, ...trace.steps.map((s) => s.code.length));
  trace.steps.forEach((s, i) => {
    const fields: string[] = [];
    if (s.provider !== undefined) fields.push(`provider=${show(s.provider)}`);
    if (s.kid !== undefined) fields.push(`kid=${show(s.kid)}`);
    if (s.policy !== undefined) fields.push(`policy=${show(s.policy)}`);
    if (s.rule !== undefined) fields.push(`rule=${show(s.rule)}`);
    if (s.roles !== undefined) fields.push(`roles=${s.roles.length === 0 ? '(none)' : s.roles.map(show).join(',')}`);
    for (const [key, value] of Object.entries(s.extra)) {
      if (value !== undefined) fields.push(`${show(key)}=${typeof value === 'string' ? show(value) : JSON.stringify(value)}`);
    }
    lines.push(
      `  ${i + 1}. ${show(s.stage).padEnd(stageWidth)}  ${s.outcome.padEnd(11)}  ${show(s.code).padEnd(codeWidth)}  ${fields.join(' ')}`.trimEnd(),
    );
  });
  if (trace.steps.length === 0) lines.push('  (no decisions recorded)');
  const verdict = trace.outcome === 'allow' ? 'ALLOW' : `DENY (${show(trace.code ?? '')})`;
  lines.push(`result: ${verdict}${trace.shadowDenied ? '  — a shadow-mode policy would deny this request' : ''}`);
  return lines.join('\n');
}

/**
 * Printable ASCII without spaces, quotes or `=` stays as is; anything else is
 * JSON-quoted, with the controls JSON leaves raw (DEL, C1, line/paragraph
 * separators, bidi overrides) escaped too.
 */
function show(value: string): string {
  if (/^[\x21-\x7e]+$/.test(value) && !/["'=\\]/.test(value)) return value;
  return JSON.stringify(value).replace(
    /[\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** Response header carrying an explanation to a client that asked with `admin.explainHeader`. */
export const EXPLANATION_HEADER = 'x-bulwark-explanation';
const MAX_EXPLANATION_HEADER = 8192;

/**
 * The explanation as one header value: JSON with every non-ASCII character escaped (a header
 * is latin1, and JSON already escapes controls), cut to its verdict when it would be too long.
 */
export function explanationHeaderValue(ctx: RequestContext, decision?: Decision): string {
  const explanation = explainDecision(ctx, decision);
  let json = asciiJson(explanation);
  if (json.length > MAX_EXPLANATION_HEADER) {
    json = asciiJson({ ...explanation, steps: explanation.steps.filter((s) => s.outcome !== 'allow'), truncated: true });
    if (json.length > MAX_EXPLANATION_HEADER)
      json = asciiJson({ outcome: explanation.outcome, code: explanation.code, request: explanation.request, truncated: true });
  }
  return json;
}

function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
