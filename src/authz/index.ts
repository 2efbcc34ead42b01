// Authorization (RBAC) and decision explanations. Every public name is listed (no `export *`).
export {
  AuthzSchema,
  BindingSchema,
  ConditionsSchema,
  PermissionSchema,
  PolicySchema,
  RoleSchema,
  RolesFromSchema,
  RouteAuthzSchema,
  RuleSchema,
  TenantIsolationSchema,
  ANONYMOUS_ROLE,
  DEFAULT_TENANT_PARAM,
} from './schema.js';
export type {
  AuthzConfig,
  BindingConfig,
  ConditionsConfig,
  PermissionConfig,
  PolicyConfig,
  RoleConfig,
  RolesFromConfig,
  RouteAuthzConfig,
  RuleConfig,
  TenantIsolationConfig,
} from './schema.js';
export { authzChecks } from './checks.js';
export type { AuthzCheckInput, AuthzIssueSeverity, AuthzReport } from './checks.js';
export { AUTHZ_ALLOWED, AuthzConfigError, CompiledAuthz, compileAuthz } from './compile.js';
export type { AuthzDenyCode, AuthzIssue, CompiledPolicy } from './compile.js';
export { AUTHZ_STAGE_ID, createAuthzStage } from './stage.js';
export type { AuthzDecisionDetail } from './stage.js';
export { patternCompilations } from './patterns.js';
export {
  EXPLANATION_HEADER,
  explainDecision,
  explanationExitCode,
  explanationHeaderValue,
  formatExplanation,
} from './explain.js';
export type { Explanation, ExplanationStep } from './explain.js';
