/**
 * Tests that spawn real processes run the compiled code (dist/), as `bulwark serve` does. Build it
 * here, once, before any test file starts: a test file rebuilding it while another file spawns
 * the CLI gets half-written modules (`does not provide an export named …`). `npm test` has just
 * built, so this is a freshness check there; under `vitest` alone it builds when src/ changed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '../..');

function newest(dir: string, ext: string): number {
  let mtime = 0;
  for (const name of readdirSync(dir, { recursive: true }) as string[])
    if (name.endsWith(ext)) mtime = Math.max(mtime, statSync(join(dir, name)).mtimeMs);
  return mtime;
}

export default function setup(): void {
  const dist = join(ROOT, 'dist');
  if (existsSync(join(dist, 'index.js')) && newest(dist, '.js') >= newest(join(ROOT, 'src'), '.ts')) return;
  // tsc emits even when a file in progress has a type error; the tests that need it say so.
  try {
    execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
      cwd: ROOT,
      stdio: 'ignore',
    });
  } catch {
    // a type error still emitted; a missing dist/ fails the tests that spawn it, with their own message
  }
}
