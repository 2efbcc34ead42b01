import { describe, expect, it } from 'vitest';
import { copyFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { request } from 'undici';
import { BIN, ROOT, runCli, spawnBulwark } from '../helpers/process.js';
import { tempDir } from './helpers.js';

const EXAMPLE = join(ROOT, 'examples', 'issuer');

async function token(base: string, id: string, secret: string, extra = '') {
  const res = await request(`${base}/oauth/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: `grant_type=client_credentials${extra}`,
  });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, string> };
}

function cliWithInput(args: string[], input: string): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.on('exit', (code) => resolve({ code, stdout }));
    child.stdin.end(input);
  });
}

describe('examples/issuer: service-to-service tokens end to end', () => {
  it('issuer and gateway as two processes; scopes decide; keys and clients from the CLI', { timeout: 120_000 }, async () => {
    // A copy of the example, so its keys and database land in a temp dir, not in the checkout.
    const dir = tempDir('bulwark-issuer-example-');
    copyFileSync(join(EXAMPLE, 'issuer.yaml'), join(dir, 'issuer.yaml'));
    const issuer = await spawnBulwark(join(dir, 'issuer.yaml'), ['--port', '0', '--admin-port', '0'], {}, ['issuer', 'serve']);
    let gateway: Awaited<ReturnType<typeof spawnBulwark>> | null = null;
    try {
      const issuerBase = `http://127.0.0.1:${issuer.ports[0]}`;
      gateway = await spawnBulwark(join(EXAMPLE, 'gateway.yaml'), ['--port', '0', '--admin-port', '0'], {
        ISSUER_JWKS_URL: `${issuerBase}/oauth/jwks.json`,
      });
      const base = `http://127.0.0.1:${gateway.ports[0]}`;
      expect(readdirSync(join(dir, '.keys', 'issuer')).filter((f) => f.endsWith('.key.pem')).length).toBe(2);

      const billing = await token(issuerBase, 'billing', 'demo-billing-secret-change-me');
      expect(billing.status).toBe(200);
      const write = await request(`${base}/ledger/entries`, {
        method: 'POST',
        headers: { authorization: `Bearer ${billing.body['access_token']}` },
        body: '{}',
      });
      expect(write.statusCode).toBe(200);
      const echoed = (await write.body.json()) as { headers: Record<string, string> };
      expect(echoed.headers['x-caller']).toBe('billing');

      const reporting = await token(issuerBase, 'reporting', 'demo-reporting-secret-change-me');
      const headers = { authorization: `Bearer ${reporting.body['access_token']}` };
      const read = await request(`${base}/ledger/entries`, { headers });
      await read.body.dump();
      expect(read.statusCode).toBe(200);
      const denied = await request(`${base}/ledger/entries`, { method: 'POST', headers, body: '{}' });
      expect(denied.statusCode).toBe(403);
      expect(((await denied.body.json()) as { code: string }).code).toBe('rbac.insufficient_scope');
      expect(
        (await token(issuerBase, 'reporting', 'demo-reporting-secret-change-me', '&scope=ledger%3Awrite')).body['code'],
      ).toBe('issuer.invalid_scope');
      const anonymous = await request(`${base}/ledger/entries`);
      await anonymous.body.dump();
      expect(anonymous.statusCode).toBe(401);

      // A client registered with the CLI works at once (the store is shared); its secret is printed once.
      const added = await runCli([
        'issuer',
        'client',
        'add',
        '--config',
        join(dir, 'issuer.yaml'),
        '--id',
        'payouts',
        '--audience',
        'https://ledger.internal',
        '--scope',
        'ledger:read',
      ]);
      expect(added.code).toBe(0);
      const secret = /client_secret: (\S+)/.exec(added.stdout)![1]!;
      const payouts = await token(issuerBase, 'payouts', secret);
      expect(payouts.status).toBe(200);
      const listed = await runCli(['issuer', 'client', 'list', '--config', join(dir, 'issuer.yaml')]);
      expect(listed.stdout).toContain('payouts');
      expect(listed.stdout).not.toContain(secret);

      const keys = await runCli(['issuer', 'keys', 'list', '--config', join(dir, 'issuer.yaml')]);
      expect(keys.code).toBe(0);
      expect(keys.stdout.match(/signing/g)?.length).toBe(2);
      const rotated = await runCli(['issuer', 'keys', 'rotate', '--config', join(dir, 'issuer.yaml')]);
      expect(rotated.code).toBe(0);
      expect(readdirSync(join(dir, '.keys', 'issuer')).filter((f) => f.endsWith('.key.pem')).length).toBe(4);

      const hashed = await cliWithInput(['issuer', 'hash-secret'], 'a-secret-of-enough-length\n');
      expect(hashed.code).toBe(0);
      expect(hashed.stdout).toMatch(/^\$scrypt\$/);
      expect((await cliWithInput(['issuer', 'hash-secret'], 'short\n')).code).toBe(1);
      expect((await runCli(['issuer', 'client', 'add', '--id', 'x'])).code).toBe(2);
      expect((await runCli(['issuer', 'nope'])).code).toBe(2);
    } finally {
      await gateway?.stop();
      await issuer.stop();
    }
  });
});
