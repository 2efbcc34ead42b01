/**
 * The issuer for library users: from a Bulwark config file (its `issuer` section) or
 * from an `issuer` object, validated by the same loader and checks as `bulwark serve`.
 */
import { loadConfigFile, parseConfig, ConfigError } from '../config/load.js';
import { LIBRARY_CHECKS } from '../server/config-source.js';
import { Issuer, type IssuerOptions } from './issuer.js';
import { join } from 'node:path';
import type { IssuerConfig } from './schema.js';

export interface CreateIssuerOptions extends IssuerOptions {
  /** A config file with an `issuer` section, or the section itself (validated; defaults filled). */
  readonly config: string | Record<string, unknown>;
  /** Relative paths of an inline section resolve against this (default: the working directory). */
  readonly baseDir?: string;
}

export async function createIssuer(options: CreateIssuerOptions): Promise<Issuer> {
  const { config, baseDir, ...rest } = options;
  let section: IssuerConfig | undefined;
  if (typeof config === 'string') {
    section = (await loadConfigFile(config, { checks: LIBRARY_CHECKS })).config.issuer;
  } else {
    // The loader resolves relative paths against the config file's directory: name one in baseDir.
    const file = join(baseDir ?? process.cwd(), '<inline issuer>');
    section = parseConfig(JSON.stringify({ version: 1, routes: [], issuer: config }, null, 2), file, { checks: LIBRARY_CHECKS })
      .config.issuer;
  }
  if (section === undefined)
    throw new ConfigError([
      {
        file: String(config),
        line: 0,
        column: 0,
        path: 'issuer',
        code: 'config.required',
        message: 'no `issuer` section',
        severity: 'error',
      },
    ]);
  return Issuer.create(section, rest);
}
