import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BIN = fileURLToPath(new URL('../../bin/bulwark.js', import.meta.url));

export interface RunningBulwark {
  child: ChildProcess;
  ports: number[];
  adminPort: number | null;
  logs: Record<string, unknown>[];
  stderr: () => string;
  exited: Promise<number | null>;
  waitForLog(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Spawns `bulwark serve` (or another serving command, e.g. `['issuer', 'serve']`) for real and waits for its `listening` log line. */
export async function spawnBulwark(
  configFile: string,
  args: string[] = [],
  env: NodeJS.ProcessEnv = {},
  command: readonly string[] = ['serve'],
): Promise<RunningBulwark> {
  const child = spawn(process.execPath, [BIN, ...command, '--config', configFile, ...args], {
    cwd: ROOT,
    env: { ...process.env, BULWARK_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  let err = '';
  const waiters = new Set<{
    predicate: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }>();
  let buffer = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) !== -1) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        logs.push(entry);
        for (const w of waiters) {
          if (!w.predicate(entry)) continue;
          waiters.delete(w);
          w.resolve(entry);
        }
      } catch {
        /* not a log line */
      }
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => (err += c));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitForLog = (predicate: (l: Record<string, unknown>) => boolean, timeoutMs = 15_000) => {
    const found = logs.find(predicate);
    if (found) return Promise.resolve(found);
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      const w = { predicate, resolve };
      waiters.add(w);
      const t = setTimeout(() => {
        waiters.delete(w);
        reject(
          new Error(`timed out waiting for log line; stderr:\n${err}\nlogs:\n${logs.map((l) => JSON.stringify(l)).join('\n')}`),
        );
      }, timeoutMs);
      void exited.then(() => {
        clearTimeout(t);
        if (waiters.has(w)) reject(new Error(`bulwark exited; stderr:\n${err}`));
      });
    });
  };
  const listening = await waitForLog((l) => l['msg'] === 'listening');
  const ports = (listening['listeners'] as { port: number }[]).map((l) => l.port);
  return {
    child,
    ports,
    adminPort: (listening['admin_port'] as number | null) ?? null,
    logs,
    stderr: () => err,
    exited,
    waitForLog,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Runs the CLI to completion. */
export function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
