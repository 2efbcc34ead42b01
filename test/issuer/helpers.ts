import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import { LIBRARY_CHECKS } from '../../src/server/config-source.js';
import { Issuer, type IssuerOptions } from '../../src/issuer/issuer.js';
import { resolveIssuerPaths, type IssuerConfig } from '../../src/issuer/schema.js';
import { hashSecret } from '../../src/issuer/secret.js';

export const SECRET = 'billing-secret-0123456789abcdef';
export const OTHER_SECRET = 'reports-secret-0123456789abcdef';

let hashes: Promise<[string, string]> | null = null;
/** scrypt is slow by design: hash the fixtures' secrets once per test file. */
export function secretHashes(): Promise<[string, string]> {
  hashes ??= Promise.all([hashSecret(SECRET), hashSecret(OTHER_SECRET)]);
  return hashes;
}

export function tempDir(prefix = 'bulwark-issuer-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A validated `issuer` section (defaults filled, paths resolved) with two clients. */
export async function issuerConfig(dir: string, extra: Record<string, unknown> = {}): Promise<IssuerConfig> {
  const [billing, reports] = await secretHashes();
  const section = {
    issuer: 'https://auth.test',
    keys: { dir: join(dir, 'keys'), rotateEverySec: 0, publishAheadSec: 2 },
    store: { sqlite: { path: join(dir, 'issuer.db') } },
    clients: [
      {
        id: 'billing',
        secretHash: billing,
        audiences: ['https://ledger.test', 'https://audit.test'],
        scopes: ['ledger:read', 'ledger:write'],
        tokenTtlSec: 300,
      },
      {
        id: 'reports',
        secretHash: reports,
        audiences: ['https://ledger.test'],
        scopes: ['ledger:read'],
        grants: ['refresh_token'],
      },
    ],
    sessionAudiences: ['https://app.test'],
    browser: { secure: true, allowedOrigins: ['https://app.test'] },
    ...extra,
  };
  const loaded = parseConfig(JSON.stringify({ version: 1, routes: [], issuer: section }), 'issuer.json', {
    checks: LIBRARY_CHECKS,
  });
  return resolveIssuerPaths(loaded.config.issuer!, dir);
}

export async function openIssuer(dir: string, extra: Record<string, unknown> = {}, options: IssuerOptions = {}): Promise<Issuer> {
  return Issuer.create(await issuerConfig(dir, extra), { rotate: false, ...options });
}
