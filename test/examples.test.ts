import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import YAML from 'yaml';
import { createBulwark } from '../src/adapters/bulwark.js';
import { generateKeys, mintToken, writeKeys } from '../src/cli/dev-tokens.js';
import { BIN, ROOT } from './helpers/process.js';

/**
 * Every example stays runnable: each examples/**\/gateway.yaml passes `bulwark validate`, each library
 * config (bulwark.yaml: no listeners, no upstreams) loads with createBulwark, and the three library
 * services start and protect themselves (401 / 200 / 403).
 *
 * Examples read development keys from git-ignored places (`${VAR:-.keys}/jwks.json`); this test points
 * those variables at keys of its own, so it neither needs nor touches a developer's keys. The quickstart's
 * key path is fixed: its own prepare script makes it, as `npm start` does.
 */
const EXAMPLES = join(ROOT, 'examples');

function findConfigs(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.') || entry.name === 'node_modules') continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...findConfigs(path));
    else if (entry.name === 'gateway.yaml' || entry.name === 'bulwark.yaml') out.push(path);
  }
  return out.sort();
}

const configs = findConfigs(EXAMPLES);
const keysDir = mkdtempSync(join(tmpdir(), 'bulwark-examples-'));
const keyFile = join(keysDir, 'dev-1.private.jwk.json');

/** `jwksFile: ${NAME:-…}/jwks.json` or `${NAME:-…}`: NAME → this test's keys. */
function keyEnv(file: string): Record<string, string> {
  const env: Record<string, string> = {};
  const doc = YAML.parse(readFileSync(file, 'utf8')) as { authn?: { providers?: Record<string, { jwksFile?: unknown }> } };
  for (const provider of Object.values(doc?.authn?.providers ?? {})) {
    const m = /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}(\/jwks\.json)?$/.exec(String(provider.jwksFile ?? ''));
    if (m) env[m[1]!] = m[2] === undefined ? join(keysDir, 'jwks.json') : keysDir;
  }
  return env;
}
// The library examples' audit log (`${BULWARK_EXAMPLE_DATA:-.data}`): this test's own place too.
const dataDir = join(keysDir, 'data');
const allKeyEnv = { ...Object.assign({}, ...configs.map(keyEnv)), BULWARK_EXAMPLE_DATA: dataDir } as Record<string, string>;

beforeAll(async () => {
  if (!existsSync(join(ROOT, 'dist', 'index.js'))) throw new Error('examples run from dist/: build first (npm run build)');
  writeKeys(keysDir, await generateKeys('ES256', 'dev-1'));
  const quickstartPrepare = join(EXAMPLES, 'quickstart', 'prepare-demo.js');
  if (existsSync(quickstartPrepare)) spawnSync(process.execPath, [quickstartPrepare], { cwd: ROOT, stdio: 'ignore' });
});
afterAll(() => {
  rmSync(keysDir, { recursive: true, force: true });
});

describe('example configs are valid', () => {
  it('finds the examples', () => {
    const names = configs.map((c) => relative(EXAMPLES, c));
    expect(names).toEqual(expect.arrayContaining(['auth/gateway.yaml', 'library/bulwark.yaml', 'quickstart/gateway.yaml']));
  });

  // examples/audit needs a signing key and an HMAC key first (its README); test/audit/schema.test.ts
  // validates it with both.
  it.each(configs.filter((c) => c.endsWith('gateway.yaml') && !c.includes(`${sep}audit${sep}`)).map((c) => [relative(ROOT, c)]))(
    '%s passes `bulwark validate`',
    (file) => {
      const run = spawnSync(process.execPath, [BIN, 'validate', file], {
        cwd: ROOT,
        env: { ...process.env, ...allKeyEnv },
        encoding: 'utf8',
      });
      expect(run.stderr.split('\n').filter((l) => / error /.test(l))).toEqual([]);
      expect(run.status).toBe(0);
      expect(run.stdout).toContain(`${file}: valid`);
    },
  );

  it.each(configs.filter((c) => c.endsWith('bulwark.yaml')).map((c) => [relative(ROOT, c)]))(
    '%s loads as a library config (createBulwark)',
    async (file) => {
      const saved = { ...process.env };
      Object.assign(process.env, allKeyEnv);
      try {
        const bulwark = await createBulwark({ config: join(ROOT, file) });
        await bulwark.close();
      } finally {
        for (const name of Object.keys(allKeyEnv)) {
          if (saved[name] === undefined) delete process.env[name];
          else process.env[name] = saved[name];
        }
      }
    },
  );
});

interface Service {
  child: ChildProcess;
  url: string;
  stdout: () => string;
  exited: Promise<number | null>;
}

/** `node examples/<name>/server.js` on a free port; resolves once it prints `listening on http://…`. */
function startExample(name: string): Promise<Service> {
  const child = spawn(process.execPath, [join(EXAMPLES, name, 'server.js')], {
    cwd: ROOT,
    env: { ...process.env, ...allKeyEnv, BULWARK_EXAMPLE_DATA: join(dataDir, name), PORT: '0', HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => (err += c));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name}: no "listening on" line within 15 s\nstdout:\n${out}\nstderr:\n${err}`));
    }, 15_000);
    child.stdout!.on('data', (chunk: string) => {
      out += chunk;
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1]!, stdout: () => out, exited });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}) before listening\nstdout:\n${out}\nstderr:\n${err}`));
    });
  });
}

const mint = (subject: string, roles: string[]) =>
  mintToken({ keyFile, issuer: 'https://dev.bulwark.local', audience: ['orders-service'], subject, roles });

describe.each(['node-http', 'express', 'fastify'])('examples/%s/server.js', (name) => {
  let service: Service;
  beforeAll(async () => {
    service = await startExample(name);
  });
  afterAll(async () => {
    if (service.child.exitCode === null) service.child.kill('SIGKILL');
  });

  const call = async (path: string, init: { method?: 'GET' | 'POST'; token?: string } = {}) => {
    const res = await request(service.url + path, {
      method: init.method ?? 'GET',
      headers: init.token === undefined ? {} : { authorization: `Bearer ${init.token}` },
    });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, body: (text ? JSON.parse(text) : null) as Record<string, unknown> };
  };

  it('prints how to call it, with minted tokens', () => {
    expect(service.stdout()).toMatch(/export VIEWER=eyJ/);
    expect(service.stdout()).toContain(`curl -i -H "Authorization: Bearer $VIEWER" ${service.url}/orders`);
  });

  it('public route: 200 without a token', async () => {
    expect((await call('/healthz')).status).toBe(200);
  });

  it('401 without a token, as the gateway would answer', async () => {
    const res = await call('/orders');
    expect(res.status).toBe(401);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(res.headers['www-authenticate']).toMatch(/^Bearer /);
    expect(res.body['code']).toBe('jwt.missing');
  });

  it('401 with a tampered token', async () => {
    const token = await mint('alice', ['viewer']);
    const res = await call('/orders', { token: `${token.slice(0, -4)}AAAA` });
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
  });

  it('200 with a minted token; the handler sees the verified identity', async () => {
    const token = await mint('alice', ['viewer']);
    const list = await call('/orders', { token });
    expect(list.status).toBe(200);
    expect(list.body['caller']).toBe('alice');
    const one = await call('/orders/42', { token });
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({ id: '42', caller: 'alice' });
  });

  it('403 when a role is missing', async () => {
    const nobody = await call('/orders', { token: await mint('nina', []) });
    expect(nobody.status).toBe(403);
    expect(nobody.headers['content-type']).toBe('application/problem+json');
    const viewerWrites = await call('/orders', { method: 'POST', token: await mint('alice', ['viewer']) });
    expect(viewerWrites.status).toBe(403);
  });

  it('inherited roles: a clerk reads and writes', async () => {
    const token = await mint('carl', ['clerk']);
    expect((await call('/orders', { token })).status).toBe(200);
    const created = await call('/orders', { method: 'POST', token });
    expect(created.status).toBe(201);
    expect(created.body['by']).toBe('carl');
  });

  it('404 problem for a path no Bulwark route allows, before the app runs', async () => {
    const res = await call('/admin');
    expect(res.status).toBe(404);
    expect(res.body['code']).toBe('route.not_found');
  });

  it('stops cleanly on SIGTERM', async () => {
    service.child.kill('SIGTERM');
    expect(await service.exited).toBe(0);
  });

  it("audited every request it answered, and the service's business events, in a chain that verifies", async () => {
    const dir = join(dataDir, name);
    const files = readdirSync(dir).filter((f) => /^audit-\d+\.jsonl$/.test(f));
    expect(files.length).toBeGreaterThan(0);
    const records = files.flatMap((f) =>
      readFileSync(join(dir, f), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    );
    const requests = records.filter((r) => r['kind'] === 'request');
    const verdict = (path: string, status: number) => requests.find((r) => r['path'] === path && r['status'] === status);
    expect(verdict('/healthz', 200)).toMatchObject({ decision: 'allow', route: 'health' });
    expect(verdict('/orders', 401)).toMatchObject({ decision: 'deny', stage: 'authn' });
    expect(verdict('/orders', 403)).toMatchObject({ decision: 'deny', stage: 'authz' });
    expect(verdict('/admin', 404)).toMatchObject({ decision: 'deny', reason: 'route.not_found' });
    expect(verdict('/orders', 201)).toMatchObject({ decision: 'allow', subject: 'carl', roles: ['clerk'] });
    const created = records.find((r) => r['action'] === 'order.created');
    expect(created).toMatchObject({ kind: 'event', subject: 'carl' });
    expect((created!['details'] as { requestId: string }).requestId).toBe(verdict('/orders', 201)!['requestId']);
    const verified = spawnSync(process.execPath, [BIN, 'audit', 'verify', '--file', ...files.map((f) => join(dir, f))], {
      encoding: 'utf8',
    });
    expect(verified.status).toBe(0);
  });
});
