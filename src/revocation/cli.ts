/**
 * `bulwark revoke --jti ID | --sub SUBJECT [--before T] | --sid SID --admin URL [--token T] [--expires-at T]`
 *
 * Calls the admin API (`POST /revocations`). `--before` / `--expires-at`: epoch
 * seconds, an RFC 3339 date, or `now`. The token may come from
 * `BULWARK_REVOCATION_TOKEN` instead of the command line (which `ps` shows).
 * Exit codes: 0 done (or queued while Redis is down: a warning says so), 1 failed, 2 usage.
 */
import { parseArgs } from 'node:util';
import { parseTime } from './admin.js';

export const REVOKE_USAGE = `usage: bulwark revoke (--jti ID | --sub SUBJECT [--before T] | --sid SID) --admin URL [--token T] [--expires-at T]
  --admin URL       admin listener, e.g. http://127.0.0.1:9901
  --token T         bearer token (default: $BULWARK_REVOCATION_TOKEN)
  --before T        with --sub: only tokens issued before T (epoch seconds, RFC 3339, or "now")
  --expires-at T    when the covered tokens expire (default: max token lifetime)`;

export interface RevokeIo {
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
  env?: NodeJS.ProcessEnv;
  fetch?: typeof fetch;
  timeoutMs?: number;
}

function time(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (value === 'now') return Date.now() / 1000;
  const parsed = parseTime(value);
  if (parsed === undefined || Number.isNaN(parsed)) throw new TypeError(`${name}: epoch seconds, RFC 3339 or "now"`);
  return parsed;
}

/** `argv`: the arguments after `revoke`. Resolves to the exit code. */
export async function revokeCli(argv: readonly string[], io: RevokeIo = {}): Promise<number> {
  const out = io.stdout ?? ((t: string) => void process.stdout.write(t));
  const err = io.stderr ?? ((t: string) => void process.stderr.write(t));
  const env = io.env ?? process.env;
  let body: Record<string, unknown>;
  let admin: URL;
  let token: string | undefined;
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: true,
      options: {
        jti: { type: 'string' },
        sub: { type: 'string' },
        sid: { type: 'string' },
        before: { type: 'string' },
        'expires-at': { type: 'string' },
        admin: { type: 'string' },
        token: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help === true) {
      out(`${REVOKE_USAGE}\n`);
      return 0;
    }
    if (positionals.length > 0) throw new TypeError(`unexpected argument "${positionals[0]}"`);
    const kinds = (['jti', 'sub', 'sid'] as const).filter((k) => values[k] !== undefined);
    if (kinds.length !== 1) throw new TypeError('exactly one of --jti, --sub, --sid');
    if (kinds.some((k) => values[k] === '')) throw new TypeError(`--${kinds[0]} must not be empty`);
    if (values.before !== undefined && values.sub === undefined) throw new TypeError('--before goes with --sub');
    if (values.admin === undefined) throw new TypeError('--admin URL is required');
    admin = new URL('/revocations', values.admin);
    if (admin.protocol !== 'http:' && admin.protocol !== 'https:') throw new TypeError('--admin must be an http(s) URL');
    token = values.token ?? env['BULWARK_REVOCATION_TOKEN'];
    body = { [kinds[0]!]: values[kinds[0]!] };
    const before = time(values.before, '--before');
    const expiresAt = time(values['expires-at'], '--expires-at');
    if (before !== undefined) body['before'] = before;
    if (expiresAt !== undefined) body['expiresAt'] = expiresAt;
  } catch (e) {
    err(`bulwark revoke: ${e instanceof Error ? e.message : String(e)}\n${REVOKE_USAGE}\n`);
    return 2;
  }
  const doFetch = io.fetch ?? fetch;
  try {
    const response = await doFetch(admin, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(token === undefined || token === '' ? {} : { authorization: `Bearer ${token}` }),
      },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(io.timeoutMs ?? 10_000),
    });
    const text = await response.text();
    if (response.status === 201 || response.status === 202) {
      out(`${text}\n`);
      if (response.status === 202) err('bulwark revoke: enforced by that instance; the shared store is down, queued for it\n');
      return 0;
    }
    err(`bulwark revoke: ${response.status} ${text}\n`);
    return 1;
  } catch (e) {
    err(`bulwark revoke: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}
