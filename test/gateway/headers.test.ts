import { describe, expect, it } from 'vitest';
import { upstreamRequestHeaders, withDashSpellings } from '../../src/gateway/headers.js';

const FORWARDING = {
  host: 'a',
  requestId: 'rid',
  xForwardedFor: '127.0.0.1',
  xForwardedProto: 'http',
  xForwardedHost: 'a',
};

function names(raw: string[], strip: ReadonlySet<string> | null): string[] {
  const out = upstreamRequestHeaders(raw, undefined, FORWARDING, strip);
  return out.filter((_, i) => i % 2 === 0);
}

describe('upstreamRequestHeaders: underscore spellings', () => {
  it('drops a client header whose dash spelling the gateway owns or strips; keeps other underscore names', () => {
    const raw = ['X_User_Id', 'mallory', 'x_forwarded_host', 'evil', 'Transfer_Encoding', 'chunked', 'x_custom', 'kept'];
    expect(names(raw, withDashSpellings(['x-user-id']))).toEqual([
      'x_custom',
      'host',
      'x-forwarded-for',
      'x-forwarded-proto',
      'x-forwarded-host',
      'x-request-id',
    ]);
  });

  it('an owned name configured with underscores strips its dash spelling too', () => {
    const strip = withDashSpellings(['x_tenant_id']);
    for (const name of ['x_tenant_id', 'x-tenant-id', 'X-Tenant_Id'])
      expect(names([name, 'evil'], strip), name).not.toContain(name.toLowerCase());
  });
});
