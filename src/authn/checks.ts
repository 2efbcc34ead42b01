/**
 * Rules that span fields of `authn`, run at load like every config check, so a
 * mistake fails with file:line and never at the first request: exactly one key
 * source per provider, HS algorithms only (and only) with a strong secret, key
 * files that exist and hold usable public keys, a usable private key for `decrypt`,
 * well-formed subject patterns, forward headers that cannot clobber transport or
 * credential headers.
 */
import { accessSync, constants as fsConstants, readFileSync } from 'node:fs';
import { createPublicKey, X509Certificate, type KeyObject } from 'node:crypto';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { didYouMean } from '../config/issues.js';
import { subjectPatternProblem } from './claims.js';
import { decryptKeyProblem, loadDecryptionKey } from './jwe.js';
import { isInlinePem } from './pem.js';
import { HMAC_ALGORITHMS, type AuthnConfig, type ProviderConfig, type RouteAuthConfig } from './schema.js';
import { MIN_SECRET_BYTES } from './secret.js';
import { DEFAULT_TOKEN_SOURCE } from './token.js';

export type AuthnReport = (path: (string | number)[], code: string, message: string, severity?: 'error' | 'warning') => void;

type Path = (string | number)[];

/**
 * Request headers a forwarded claim may never be written to: hop-by-hop and framing
 * headers, credentials, and headers other parts of the gateway own.
 */
export const RESERVED_FORWARD_HEADERS: ReadonlySet<string> = new Set([
  'host',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'http2-settings',
  'content-length',
  'content-type',
  'content-encoding',
  'expect',
  'cookie',
  'authorization',
  'proxy-authorization',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-real-ip',
  'x-request-id',
  'traceparent',
  'tracestate',
]);

const HMAC = new Set<string>(HMAC_ALGORITHMS);

/** Config check for `authn` (plug into the loader's checks). */
export function authnChecks(config: { authn?: AuthnConfig }, report: AuthnReport): void {
  const authn = config.authn;
  if (authn === undefined) return;
  for (const [name, provider] of Object.entries(authn.providers)) {
    checkProvider(name, provider, ['authn', 'providers', name], report);
  }
}

/** Check for one route's `auth`: every provider it names exists. */
export function checkRouteAuth(
  requirement: RouteAuthConfig,
  authn: AuthnConfig | undefined,
  path: Path,
  report: AuthnReport,
  /** The route's path match: a `tenant` requirement reading a parameter needs the glob to capture it. */
  pathMatch?: { exact: string } | { prefix: string } | { glob: string },
): void {
  if ('public' in requirement) return;
  const defined = Object.keys(authn?.providers ?? {});
  const check = (name: string, at: Path) => {
    if (authn !== undefined && Object.hasOwn(authn.providers, name)) return;
    const known = defined.length > 0 ? `; defined: ${defined.join(', ')}` : '; no authn providers are defined';
    report(at, 'config.authn_unknown_provider', `unknown authn provider "${name}"${didYouMean(name, defined)}${known}`);
  };
  if ('tenant' in requirement) {
    for (const [tenant, name] of Object.entries(requirement.tenant.providers))
      check(name, [...path, 'tenant', 'providers', tenant]);
    const from = requirement.tenant.from;
    if ('host' in from) {
      // The host is compared lower-case, one DNS label: such a tenant could never be reached.
      for (const tenant of Object.keys(requirement.tenant.providers)) {
        if (tenant !== tenant.toLowerCase() || tenant.includes('.'))
          report(
            [...path, 'tenant', 'providers', tenant],
            'config.authn_tenant_host',
            `tenant "${tenant}" can never come from a host: hosts are matched lower-case, one label (no ".")`,
          );
      }
    }
    if ('param' in from && (pathMatch === undefined || !('glob' in pathMatch) || !pathMatch.glob.includes(`{${from.param}}`)))
      report(
        [...path, 'tenant', 'from', 'param'],
        'config.authn_tenant_param',
        `the route's path must be a glob capturing {${from.param}} (e.g. /tenants/{${from.param}}/**) for the tenant to come from it`,
      );
    return;
  }
  if ('provider' in requirement) check(requirement.provider, [...path, 'provider']);
  else if ('anyOf' in requirement) requirement.anyOf.forEach((n, i) => check(n, [...path, 'anyOf', i]));
  else if ('allOf' in requirement) requirement.allOf.forEach((n, i) => check(n, [...path, 'allOf', i]));
  else if (typeof requirement.optional === 'string') check(requirement.optional, [...path, 'optional']);
  else requirement.optional.forEach((n, i) => check(n, [...path, 'optional', i]));
}

/**
 * Relative key file paths mean "next to the config file", whatever the gateway's cwd
 * (as for TLS files): the loader calls this before checks, so checks and compile
 * read the same file.
 */
export function resolveAuthnPaths(authn: AuthnConfig | undefined, baseDir: string): void {
  if (authn === undefined) return;
  for (const provider of Object.values(authn.providers)) {
    if (provider.jwksFile !== undefined && !isAbsolute(provider.jwksFile)) {
      provider.jwksFile = resolvePath(baseDir, provider.jwksFile);
    }
    for (const key of provider.publicKeys ?? []) {
      if (!isInlinePem(key.key) && !isAbsolute(key.key)) key.key = resolvePath(baseDir, key.key);
    }
    if (provider.decrypt !== undefined && !isAbsolute(provider.decrypt.keyFile)) {
      provider.decrypt.keyFile = resolvePath(baseDir, provider.decrypt.keyFile);
    }
  }
}

function checkProvider(name: string, provider: ProviderConfig, at: Path, report: AuthnReport): void {
  const sources = (['jwksUrl', 'jwksFile', 'publicKeys', 'discovery', 'secret'] as const).filter(
    (key) => provider[key] !== undefined,
  );
  if (sources.length === 0) {
    report(
      at,
      'config.authn_key_source',
      `provider "${name}" needs exactly one of jwksUrl, jwksFile, publicKeys, discovery, secret`,
    );
  } else if (sources.length > 1) {
    report(
      [...at, sources[1]!],
      'config.authn_key_source',
      `provider "${name}" has ${sources.join(' and ')}; give exactly one key source`,
    );
  }

  const algorithms = provider.algorithms ?? [];
  const hmac = algorithms.filter((a) => HMAC.has(a));
  const asymmetric = algorithms.filter((a) => !HMAC.has(a));
  if (provider.secret !== undefined) {
    if (asymmetric.length > 0) {
      report(
        [...at, 'algorithms'],
        'config.authn_algorithms',
        `a secret verifies only HS256/HS384/HS512; remove ${asymmetric.join(', ')} (or use another provider for them)`,
      );
    }
    const bytes = Buffer.byteLength(provider.secret, 'utf8');
    if (bytes < MIN_SECRET_BYTES) {
      report(
        [...at, 'secret'],
        'config.authn_weak_secret',
        `secret has ${bytes} bytes; HS algorithms need at least ${MIN_SECRET_BYTES} (e.g. \`openssl rand -base64 48\`)`,
      );
    }
  } else if (hmac.length > 0) {
    report(
      [...at, 'algorithms'],
      'config.authn_algorithms',
      `${hmac.join(', ')} need a \`secret\`; with public keys they would let the public key serve as an HMAC secret`,
    );
  }

  if (provider.jwks !== undefined) {
    if (provider.jwksUrl === undefined && provider.discovery !== true) {
      report([...at, 'jwks'], 'config.authn_key_source', '`jwks` settings apply only with jwksUrl or discovery');
    }
    if (provider.jwks.maxStaleMs < provider.jwks.cacheTtlMs) {
      report(
        [...at, 'jwks', 'maxStaleMs'],
        'config.authn_jwks',
        'maxStaleMs must be at least cacheTtlMs (keys would expire before their first refresh)',
      );
    }
  }
  if (provider.jwksUrl !== undefined) checkCleartext(provider.jwksUrl, [...at, 'jwksUrl'], report);
  if (provider.discovery === true) {
    let url: URL | null = null;
    try {
      url = new URL(provider.issuer);
    } catch {
      // reported below
    }
    if (url === null || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
      report([...at, 'issuer'], 'config.authn_discovery', 'discovery needs an http(s) issuer URL');
    } else {
      checkCleartext(provider.issuer, [...at, 'issuer'], report);
    }
  }
  if (provider.jwksFile !== undefined) checkJwksFile(provider.jwksFile, [...at, 'jwksFile'], report);
  provider.publicKeys?.forEach((key, i) => checkPublicKey(key.key, asymmetric, [...at, 'publicKeys', i, 'key'], report));
  if (provider.decrypt !== undefined) {
    // The same reader compile uses: what passes here imports there.
    const problem = decryptKeyProblem(provider.decrypt, loadDecryptionKey(provider.decrypt.keyFile));
    if (problem !== null) report([...at, 'decrypt', 'keyFile'], 'config.authn_decrypt_key', problem);
  }

  if (provider.subject !== undefined) {
    const problem = subjectPatternProblem(provider.subject);
    if (problem !== null) report([...at, 'subject'], 'config.authn_subject_pattern', problem);
  }

  const token = provider.token ?? DEFAULT_TOKEN_SOURCE;
  if ('query' in token) {
    report(
      [...at, 'token', 'query'],
      'config.authn_query_token',
      'tokens in the query string end up in access logs, proxies and browser history; prefer a header',
      'warning',
    );
  }
  checkForward(provider, 'header' in token ? token.header.toLowerCase() : undefined, [...at, 'forward'], report);
}

function checkCleartext(url: string, at: Path, report: AuthnReport): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    report(at, 'config.authn_url', `not a URL: ${url}`);
    return;
  }
  const loopback = parsed.hostname === 'localhost' || parsed.hostname === '127.0.0.1' || parsed.hostname === '[::1]';
  if (parsed.protocol === 'http:' && !loopback) {
    report(at, 'config.authn_insecure_jwks', 'keys fetched over cleartext HTTP can be replaced in transit; use https', 'warning');
  }
}

function checkJwksFile(file: string, at: Path, report: AuthnReport): void {
  let text: string;
  try {
    accessSync(file, fsConstants.R_OK);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    report(at, 'config.authn_jwks_file', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    return;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    report(at, 'config.authn_jwks_file', `${file} is not JSON`);
    return;
  }
  const keys = typeof doc === 'object' && doc !== null ? (doc as { keys?: unknown }).keys : undefined;
  if (!Array.isArray(keys) || keys.length === 0) {
    report(at, 'config.authn_jwks_file', `${file} is not a JWKS (an object with a non-empty "keys" array)`);
  }
}

/** Algorithms a public key can verify, from node's own key parser. */
function algorithmsForKey(key: KeyObject): string[] {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
    case 'rsa-pss':
      return ['PS256', 'PS384', 'PS512'];
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      return curve === 'prime256v1' ? ['ES256'] : curve === 'secp384r1' ? ['ES384'] : curve === 'secp521r1' ? ['ES512'] : [];
    }
    case 'ed25519':
      return ['EdDSA'];
    default:
      return [];
  }
}

function checkPublicKey(value: string, algorithms: readonly string[], at: Path, report: AuthnReport): void {
  let pem = value;
  if (!isInlinePem(value)) {
    try {
      pem = readFileSync(value, 'utf8');
    } catch (err) {
      report(at, 'config.authn_public_key', `cannot read ${value}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      return;
    }
  }
  if (pem.includes('PRIVATE KEY')) {
    report(at, 'config.authn_public_key', 'this is a private key; configure the public key (or certificate) only');
    return;
  }
  let key: KeyObject;
  try {
    key = pem.includes('-----BEGIN CERTIFICATE-----') ? new X509Certificate(pem).publicKey : createPublicKey(pem);
  } catch {
    report(at, 'config.authn_public_key', 'not a PEM public key or certificate');
    return;
  }
  const usable = algorithmsForKey(key);
  if (!algorithms.some((a) => usable.includes(a))) {
    const type = key.asymmetricKeyType ?? 'unknown';
    report(
      at,
      'config.authn_public_key',
      `a ${type} key cannot verify ${algorithms.join(', ') || 'any configured algorithm'}${usable.length > 0 ? ` (it can: ${usable.join(', ')})` : ''}`,
    );
  }
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (bits !== undefined && bits < 2048) {
    report(at, 'config.authn_public_key', `RSA keys need at least 2048 bits (this one has ${bits})`);
  }
}

function checkForward(provider: ProviderConfig, tokenHeader: string | undefined, at: Path, report: AuthnReport): void {
  const forward = provider.forward;
  if (forward === undefined) return;
  const seen = new Map<string, string>();
  const checkName = (header: string, where: Path, label: string) => {
    const name = header.toLowerCase();
    if (RESERVED_FORWARD_HEADERS.has(name) || name === tokenHeader) {
      report(
        where,
        'config.authn_forward_header',
        `"${name}" cannot carry identity (it is a transport, credential or gateway header)`,
      );
      return;
    }
    const previous = seen.get(name);
    if (previous !== undefined) {
      report(where, 'config.authn_forward_header', `header "${name}" is already set from ${previous}`);
      return;
    }
    seen.set(name, label);
  };
  for (const [claim, header] of Object.entries(forward.claims ?? {})) {
    checkName(header, [...at, 'claims', claim], `claim "${claim}"`);
  }
  if (forward.payloadHeader !== undefined) checkName(forward.payloadHeader, [...at, 'payloadHeader'], 'payloadHeader');
}
