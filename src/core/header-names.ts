/** Header-name spellings, shared by the proxies (src/gateway, src/grpc) and the stages that own headers. */

/**
 * `name` (lower-case) with `_` read as `-`, or null when it has no `_`. CGI-style upstreams (CGI,
 * WSGI, Rack, PHP) map both spellings to one variable (`x_user_id` and `x-user-id` are both
 * `HTTP_X_USER_ID`), so a client's `x_user_id` would stand next to the gateway's `x-user-id` there:
 * a client header whose dash spelling is a header the gateway owns or strips is dropped like that
 * header. Other underscore names pass (Envoy's `headers_with_underscores_action: ALLOW`).
 */
export function dashSpelling(name: string): string | null {
  return name.indexOf('_') === -1 ? null : name.replaceAll('_', '-');
}

/** `names` plus the dash spelling of each one with an underscore (see dashSpelling). */
export function withDashSpellings(names: Iterable<string>): Set<string> {
  const out = new Set<string>();
  for (const name of names) {
    out.add(name);
    const dashed = dashSpelling(name);
    if (dashed !== null) out.add(dashed);
  }
  return out;
}
