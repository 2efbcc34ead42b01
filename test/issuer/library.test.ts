import { describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { request } from 'undici';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { createBulwark } from '../../src/adapters/bulwark.js';
import { createIssuer } from '../../src/issuer/create.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { SECRET, secretHashes, tempDir } from './helpers.js';

describe('issuer in library mode', () => {
  it('createBulwark: issuer routes are answered by the issuer, others reach the handler; sessions minted in code', async () => {
    const dir = tempDir();
    const [hash] = await secretHashes();
    const bulwark = await createBulwark({
      config: {
        version: 1,
        issuer: {
          issuer: 'https://app.test',
          keys: { dir: join(dir, 'keys'), rotateEverySec: 0, publishAheadSec: 60 },
          store: { sqlite: { path: join(dir, 'issuer.db') } },
          clients: [{ id: 'svc', secretHash: hash, audiences: ['https://app.test'] }],
        },
        routes: [
          { id: 'oauth', match: { path: { prefix: '/oauth' } }, auth: { public: true }, issuer: true },
          { id: 'home', match: { path: { prefix: '/' } }, auth: { public: true } },
        ],
      },
    });
    const server = createServer(bulwark.protect((req, res) => res.end(`app:${req.url}`)));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const home = await request(`${base}/hello`);
      expect(await home.body.text()).toBe('app:/hello');
      const token = await request(`${base}/oauth/token`, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: `Basic ${Buffer.from(`svc:${SECRET}`).toString('base64')}`,
        },
        body: 'grant_type=client_credentials',
      });
      expect(token.statusCode).toBe(200);
      const access = ((await token.body.json()) as { access_token: string }).access_token;
      const jwks = await request(`${base}/oauth/jwks.json`);
      const keys = createLocalJWKSet((await jwks.body.json()) as { keys: [] });
      expect((await jwtVerify(access, keys, { issuer: 'https://app.test' })).payload.sub).toBe('svc');

      const session = await bulwark.issuer!.mintSession({ subject: 'alice', claims: { roles: ['reader'] } });
      const { payload } = await jwtVerify(session.accessToken, keys);
      expect(payload.sub).toBe('alice');
      expect(payload['sid']).toBe(session.sessionId);
    } finally {
      server.close();
      await bulwark.close();
    }
  });

  it('createIssuer validates an inline section like a config file (defaults filled, bad fields refused)', async () => {
    const dir = tempDir();
    const [hash] = await secretHashes();
    const issuer = await createIssuer({
      config: { issuer: 'https://app.test', keys: { dir: 'keys' }, store: { sqlite: { path: 'issuer.db' } }, clients: [] },
      baseDir: dir,
      rotate: false,
    });
    try {
      expect(issuer.config.keys.dir).toBe(join(dir, 'keys'));
      expect(issuer.config.accessTokenTtlSec).toBe(600);
      expect(issuer.keys.jwks().keys.length).toBe(2);
    } finally {
      await issuer.close();
    }
    const refused = await createIssuer({
      config: {
        issuer: 'https://app.test',
        keys: { dir: 'k' },
        clients: [{ id: 'x', secretHash: 'plain-secret', audiences: ['a'] }],
      },
      baseDir: dir,
    }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as ConfigError).issues.map((i) => i.code)).toContain('config.issuer_secret');
    const typo = await createIssuer({
      config: { issuer: 'https://app.test', keys: { dir: 'k' }, clientz: [] },
      baseDir: dir,
    }).catch((err: unknown) => err);
    expect((typo as ConfigError).issues.map((i) => i.code)).toContain('config.unknown_key');
    expect(hash).toMatch(/^\$scrypt\$/);
  });
});

describe('issuer config checks', () => {
  const base = (extra: string) => `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
${extra}issuer:
  issuer: https://auth.test
  keys: { dir: /tmp/k, rotateEverySec: 600, publishAheadSec: 900 }
  store: { sqlite: { path: ':memory:' } }
  clients: [{ id: a, secretHash: 'not-a-hash', audiences: [x], encrypt: true }]
routes:
  - { id: r, match: { path: { prefix: /oauth } }, auth: { public: true }, issuer: true, upstream: u }
upstreams: { u: { builtin: echo } }
`;
  it('names every mistake with its code and path', () => {
    const err = (() => {
      try {
        parseConfig(base('workers: 2\n'), 'gw.yaml', { checks: CONFIG_CHECKS });
      } catch (e) {
        return e as ConfigError;
      }
      throw new Error('expected the config to be refused');
    })();
    const found = err.issues.map((i) => `${i.code} ${i.path}`);
    expect(found).toEqual(
      expect.arrayContaining([
        'config.issuer_secret issuer.clients[0].secretHash',
        'config.issuer_encryption issuer.clients[0].encrypt',
        'config.issuer_rotation issuer.keys.publishAheadSec',
        'config.issuer_store_memory issuer.store.sqlite.path',
        'config.issuer_upstream routes[0].upstream',
      ]),
    );
    expect(err.issues.every((i) => i.line > 0)).toBe(true);
  });

  it('a route serving the issuer needs an issuer section', () => {
    const yaml = `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
routes: [{ id: r, match: { path: { prefix: /oauth } }, auth: { public: true }, issuer: true }]
`;
    expect(() => parseConfig(yaml, 'gw.yaml', { checks: CONFIG_CHECKS })).toThrow(ConfigError);
    try {
      parseConfig(yaml, 'gw.yaml', { checks: CONFIG_CHECKS });
    } catch (e) {
      expect((e as ConfigError).issues.map((i) => i.code)).toContain('config.issuer_missing');
    }
  });
});
