#!/usr/bin/env node
// Thin launcher: the CLI lives in dist/ (built by `npm install` via `prepare`, or `npm run build`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('bulwark: not built yet; run `npm run build` in the package directory\n');
  process.exit(2);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
