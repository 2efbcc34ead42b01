import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON lines on stdout; secrets never reach here (callers log codes and ids, not headers). */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino({
    name: options.name ?? 'bulwark',
    level: options.level ?? process.env['BULWARK_LOG_LEVEL'] ?? 'info',
    base: { pid: process.pid },
    redact: { paths: ['*.authorization', '*.cookie', '*.headers.authorization', '*.headers.cookie'], censor: '[redacted]' },
  });
}
