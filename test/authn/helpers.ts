import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Ajv } from 'ajv';
import {
  exportJWK,
  exportSPKI,
  generateKeyPair,
  SignJWT,
  type CryptoKey,
  type JWK,
  type JWTHeaderParameters,
  type JWTPayload,
} from 'jose';
import { RequestContext } from '../../src/core/context.js';
import { BulwarkError } from '../../src/core/errors.js';
import type { Decision, Stage } from '../../src/core/stage.js';
import { AuthnSchema, type AuthnConfig } from '../../src/authn/schema.js';

// Same ajv settings as the config loader: defaults are filled in by validation.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, allowUnionTypes: true });
const validateAuthn = ajv.compile<AuthnConfig>(AuthnSchema);

/** Validates (and fills defaults of) an `authn` section as the loader would. */
export function authnConfig(input: unknown): AuthnConfig {
  const copy = structuredClone(input);
  if (!validateAuthn(copy)) throw new Error(`invalid authn config: ${ajv.errorsText(validateAuthn.errors)}`);
  return copy;
}

export function schemaErrors(input: unknown): string[] {
  const copy = structuredClone(input);
  return validateAuthn(copy) ? [] : (validateAuthn.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
}

export const ISSUER = 'https://issuer.test';
export const AUDIENCE = 'api://bulwark';

export interface TestKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
  pem: string;
}

export async function makeKey(kid: string, alg = 'RS256'): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicKey, jwk, pem: await exportSPKI(publicKey) };
}

export const jwks = (...keys: TestKey[]): { keys: JWK[] } => ({ keys: keys.map((k) => k.jwk) });

export const nowSec = (): number => Math.floor(Date.now() / 1000);

/** A token with sensible defaults (iss, aud, sub, iat, exp); `claims` and `header` override. */
export async function mint(
  key: TestKey,
  claims: JWTPayload & Record<string, unknown> = {},
  header: Partial<JWTHeaderParameters> & Record<string, unknown> = {},
): Promise<string> {
  const now = nowSec();
  const payload: Record<string, unknown> = { iss: ISSUER, aud: AUDIENCE, sub: 'alice', iat: now, exp: now + 600, ...claims };
  for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
  return new SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid, ...header }).sign(key.privateKey);
}

export const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

export function requestContext(headers: Record<string, string | string[]> = {}, query = ''): RequestContext {
  const ctx = new RequestContext({
    method: 'GET',
    rawTarget: '/x',
    headers,
    peerAddress: '127.0.0.1',
    peerPort: 1234,
    protocol: 'http/1.1',
    secure: false,
    requestId: 'test',
  });
  ctx.path = '/x';
  ctx.query = query;
  return ctx;
}

export const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

/** Runs a stage; a thrown error fails the test (stages must return denials, never throw). */
export async function runStage(stage: Stage, ctx: RequestContext): Promise<Decision> {
  return await stage.run(ctx);
}

export function expectDenial(decision: Decision): BulwarkError {
  if (!(decision instanceof BulwarkError)) throw new Error(`expected a denial, got ${String(decision)}`);
  return decision;
}

export interface JwksServer {
  url: string;
  origin: string;
  /** Requests received (any path). */
  hits: number;
  paths: string[];
  /** What GET /jwks.json answers. */
  body: unknown;
  status: number;
  /** Delay before answering, ms. */
  delayMs: number;
  /** Raw text instead of JSON `body`. */
  raw: string | null;
  /** Extra routes: path → handler. */
  routes: Map<string, (req: IncomingMessage, res: ServerResponse) => void>;
  server: Server;
  close(): Promise<void>;
}

/** A real HTTP JWKS endpoint that counts requests; every field can be changed between requests. */
export async function startJwksServer(initial: unknown = { keys: [] }): Promise<JwksServer> {
  const state = {
    hits: 0,
    paths: [] as string[],
    body: initial,
    status: 200,
    delayMs: 0,
    raw: null as string | null,
    routes: new Map<string, (req: IncomingMessage, res: ServerResponse) => void>(),
  };
  const server = createServer((req, res) => {
    state.hits++;
    state.paths.push(req.url ?? '');
    const route = state.routes.get(req.url ?? '');
    const answer = () => {
      if (res.destroyed) return;
      if (route) return route(req, res);
      const text = state.raw ?? JSON.stringify(state.body);
      res.writeHead(state.status, { 'content-type': 'application/json' });
      res.end(text);
    };
    if (state.delayMs > 0) setTimeout(answer, state.delayMs);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const handle = Object.assign(state, {
    url: `${origin}/jwks.json`,
    origin,
    server,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  });
  return handle as unknown as JwksServer;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls until `check` is true (or fails after `timeoutMs`). */
export async function until(check: () => boolean | Promise<boolean>, timeoutMs = 3000, stepMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(stepMs);
  }
}
