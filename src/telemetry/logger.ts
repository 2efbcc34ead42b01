import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * Credential-bearing keys censored where callers put them: at the top level or
 * in a `headers` object (`{ headers }`, `{ req: { headers } }`, …). Callers log
 * codes and ids, never headers; this is the net under that rule, not the rule.
 *
 * Explicit paths only, no `*` wildcards: pino's redaction runs on every line,
 * and measured here a wildcard path costs 4–6 µs per line where the explicit
 * paths below cost nothing measurable; on the access log that is the whole
 * difference between a cheap line and an expensive one.
 */
const SECRET_KEYS = [
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'x-api-key',
  'token',
  'access_token',
  'refresh_token',
  'id_token',
  'password',
  'secret',
  'client_secret',
];
const HEADER_HOLDERS = ['', 'headers', 'req.headers', 'request.headers', 'res.headers', 'response.headers'];
const REDACT_PATHS = SECRET_KEYS.flatMap((k) => {
  const dotted = /^[A-Za-z_$][\w$]*$/.test(k);
  return HEADER_HOLDERS.map((holder) =>
    holder === '' ? (dotted ? k : `["${k}"]`) : dotted ? `${holder}.${k}` : `${holder}["${k}"]`,
  );
});

/**
 * Errors as type, message, code and stack, with their causes: never the other fields errors
 * carry. pino's standard serializer copies every enumerable field, and some are payloads —
 * undici's parser errors keep the upstream's raw bytes in `data`, response errors its headers
 * and body — which have no place in an operational log.
 */
function serializeError(value: unknown, depth = 0): unknown {
  if (!(value instanceof Error)) return value;
  const out: Record<string, unknown> = { type: value.name, message: value.message };
  const code = (value as { code?: unknown }).code;
  if (typeof code === 'string' || typeof code === 'number') out['code'] = code;
  out['stack'] = value.stack;
  if (value.cause !== undefined && depth < 4) out['cause'] = serializeError(value.cause, depth + 1);
  if (value instanceof AggregateError && depth < 4)
    out['errors'] = value.errors.slice(0, 8).map((e) => serializeError(e, depth + 1));
  return out;
}

/** JSON lines on stdout; secrets never reach here (callers log codes and ids, not headers). */
export function createLogger(options: { level?: string; name?: string; destination?: DestinationStream } = {}): Logger {
  const pinoOptions = {
    name: options.name ?? 'bulwark',
    level: options.level ?? process.env['BULWARK_LOG_LEVEL'] ?? 'info',
    base: { pid: process.pid },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    serializers: { err: serializeError, error: serializeError },
  };
  // Asynchronous stdout: under load, lines written while a write is in flight are batched into one
  // syscall, so an access line per request does not cost a blocking write per request. Idle, a line
  // still goes out at once. Pending lines are flushed by `flushLogger` before a deliberate exit.
  const destination = options.destination ?? pino.destination({ dest: 1, sync: false });
  return pino(pinoOptions, destination);
}

/** Writes out buffered lines; call before `process.exit`. */
export function flushLogger(logger: Logger): Promise<void> {
  return new Promise((resolve) => {
    try {
      logger.flush(() => resolve());
    } catch {
      resolve();
    }
  });
}
