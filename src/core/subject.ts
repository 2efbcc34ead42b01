/**
 * Subjects matched by patterns with wildcards (`spiffe://td/ns/*` `/sa/**`): a wildcard stands
 * for names, never for a `.` or `..` segment or a control character. Otherwise
 * `spiffe://td/ns/a/sa/b/../../../../other` passes for a workload under `ns/*`, and whatever
 * later resolves the path (a log reader, a downstream policy) sees another identity.
 */
// eslint-disable-next-line no-control-regex -- control characters are what this refuses
const UNSAFE = /[\u0000-\u001f\u007f]|(?:^|\/)\.\.?(?:\/|$)/;

/** Whether `subject` may be matched against a wildcard pattern at all. */
export function wildcardSafe(subject: string): boolean {
  return !UNSAFE.test(subject);
}
