/**
 * The issuer store contract, run against all three backends (SQLite file, the local
 * PostgreSQL, the local Redis), so they cannot drift: client round trips, refresh
 * rotation with its classification order, reuse detection, binding, revocation,
 * sweep, rotation races across store instances, and an unreachable server being an
 * `IssuerStoreError` rather than a hang. Each run uses its own file, table prefix or
 * key prefix and removes it afterwards.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { PostgresIssuerStore } from '../../src/issuer/store-postgres.js';
import { RedisIssuerStore } from '../../src/issuer/store-redis.js';
import { SqliteIssuerStore } from '../../src/issuer/store-sqlite.js';
import { IssuerStoreError, type ClientRecord, type IssuerStore, type RefreshRecord } from '../../src/issuer/types.js';
import { deleteKeys, freePort, REDIS_URL } from '../limits/helpers.js';

const PG_URL = process.env['BULWARK_TEST_PG'] ?? 'postgres://postgres@127.0.0.1:5432/test';

interface Backend {
  readonly name: 'sqlite' | 'postgres' | 'redis';
  /** A new store instance on the run's data (initialised). */
  open(): Promise<IssuerStore>;
  /** Removes the run's data. */
  cleanup(): Promise<void>;
}

const open: IssuerStore[] = [];

function sqliteBackend(): Backend {
  // Made on first use, so a filtered run that skips this backend leaves nothing behind.
  let dir: string | null = null;
  return {
    name: 'sqlite',
    async open() {
      dir ??= mkdtempSync(join(tmpdir(), 'bulwark-issuer-store-'));
      const store = new SqliteIssuerStore({ path: join(dir, 'issuer.db') });
      open.push(store);
      await store.init();
      return store;
    },
    async cleanup() {
      if (dir !== null) rmSync(dir, { recursive: true, force: true });
    },
  };
}

function postgresBackend(): Backend {
  const tablePrefix = `bulwark_test_${randomBytes(4).toString('hex')}_`;
  return {
    name: 'postgres',
    async open() {
      const store = new PostgresIssuerStore({ url: PG_URL, tablePrefix, pool: { max: 4 } });
      open.push(store);
      await store.init();
      return store;
    },
    async cleanup() {
      const { Pool } = createRequire(import.meta.url)('pg') as {
        Pool: new (o: { connectionString: string }) => { query(sql: string): Promise<unknown>; end(): Promise<void> };
      };
      const pool = new Pool({ connectionString: PG_URL });
      await pool.query(`DROP TABLE IF EXISTS "${tablePrefix}clients", "${tablePrefix}families", "${tablePrefix}refresh"`);
      await pool.end();
    },
  };
}

function redisBackend(): Backend {
  const keyPrefix = `bulwark-test:issuer:${randomBytes(4).toString('hex')}:`;
  return {
    name: 'redis',
    async open() {
      const store = new RedisIssuerStore({ url: REDIS_URL, keyPrefix });
      open.push(store);
      await store.init();
      return store;
    },
    cleanup: () => deleteKeys(REDIS_URL, keyPrefix),
  };
}

afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

const tokenId = () => randomBytes(32).toString('base64url');

/** A fresh family's first token; times are wall-clock based because Redis expires keys by its own clock. */
function session(overrides: Partial<RefreshRecord> = {}): RefreshRecord {
  const now = Date.now();
  return {
    id: tokenId(),
    familyId: randomUUID(),
    subject: 'alice',
    clientId: '',
    scope: 'ledger:read profile',
    audience: ['https://app.test', 'https://ledger.test'],
    claims: { roles: ['admin', 'ops'], tenant: 't-1', nested: { n: 1, empty: [], none: null, flag: false }, big: 2 ** 53 - 1 },
    binding: null,
    createdAt: now,
    expiresAt: now + HOUR,
    familyExpiresAt: now + 24 * HOUR,
    usedAt: null,
    revokedAt: null,
    ...overrides,
  };
}

function rotation(record: RefreshRecord, now = record.createdAt + MINUTE, binding: string | null = null) {
  return { id: record.id, nextId: tokenId(), now, nextExpiresAt: now + HOUR, binding };
}

describe.each([
  ['sqlite', sqliteBackend],
  ['postgres', postgresBackend],
  ['redis', redisBackend],
] as const)('IssuerStore: %s', (_name, make) => {
  const backend = make();
  afterAll(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
    await backend.cleanup();
  });

  it('init is idempotent and safe from several instances at once', async () => {
    const stores = await Promise.all([backend.open(), backend.open(), backend.open(), backend.open()]);
    await stores[0]!.init();
    expect(stores.every((s) => s.kind === backend.name)).toBe(true);
    expect(await stores[1]!.getRefresh('nope')).toBeNull();
  });

  it('clients: put, get, list, replace, delete; arrays, nulls and disabled preserved', async () => {
    const store = await backend.open();
    const a: ClientRecord = {
      id: 'billing',
      secretHash: '$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA',
      audiences: ['https://ledger.test', 'https://audit.test'],
      scopes: ['ledger:read', 'ledger:write'],
      grants: ['client_credentials', 'refresh_token'],
      tokenTtlSec: 300,
      createdAt: 1_700_000_000_123,
      disabled: false,
    };
    const b: ClientRecord = { ...a, id: 'reports', scopes: [], grants: [], tokenTtlSec: null, disabled: true };
    expect(await store.getClient('billing')).toBeNull();
    await store.putClient(a);
    await store.putClient(b);
    expect(await store.getClient('billing')).toEqual(a);
    expect(await store.getClient('reports')).toEqual(b);
    expect((await store.listClients()).map((c) => c.id).sort()).toEqual(['billing', 'reports']);

    const replaced: ClientRecord = { ...a, audiences: ['https://other.test'], tokenTtlSec: null, disabled: true };
    await store.putClient(replaced);
    const other = await backend.open();
    expect(await other.getClient('billing')).toEqual(replaced);

    expect(await store.deleteClient('billing')).toBe(true);
    expect(await store.deleteClient('billing')).toBe(false);
    expect(await store.getClient('billing')).toBeNull();
    expect(await store.listClients()).toEqual([b]);
    expect(await store.deleteClient('reports')).toBe(true);
  });

  it('insertRefresh / getRefresh round trip (claims, audience, binding)', async () => {
    const store = await backend.open();
    const unbound = session();
    const bound = session({ binding: 'b1nd', clientId: 'reports', subject: 'svc:reports', claims: {} });
    await store.insertRefresh(unbound);
    await store.insertRefresh(bound);
    expect(await store.getRefresh(unbound.id)).toEqual(unbound);
    expect(await store.getRefresh(bound.id)).toEqual(bound);
    expect(await store.getRefresh(tokenId())).toBeNull();
  });

  it('rotates a current token: the old one is used, the successor copies the family and is capped at its expiry', async () => {
    const store = await backend.open();
    const first = session();
    await store.insertRefresh(first);
    const request = rotation(first);
    const result = await store.rotateRefresh(request);
    expect(result.status).toBe('rotated');
    if (result.status !== 'rotated') return;
    expect(result.record).toEqual(first);
    expect(result.next).toEqual({
      ...first,
      id: request.nextId,
      createdAt: request.now,
      expiresAt: request.nextExpiresAt,
      usedAt: null,
      revokedAt: null,
    });
    expect(await store.getRefresh(request.nextId)).toEqual(result.next);
    expect((await store.getRefresh(first.id))?.usedAt).toBe(request.now);

    // Near the end of the session the successor expires with the family.
    const late = { ...rotation(result.next), nextExpiresAt: first.familyExpiresAt + HOUR };
    const capped = await store.rotateRefresh(late);
    expect(capped.status).toBe('rotated');
    if (capped.status === 'rotated') expect(capped.next.expiresAt).toBe(first.familyExpiresAt);
    expect((await store.getRefresh(late.nextId))?.expiresAt).toBe(first.familyExpiresAt);
  });

  it('unknown token', async () => {
    const store = await backend.open();
    const result = await store.rotateRefresh({
      id: tokenId(),
      nextId: tokenId(),
      now: Date.now(),
      nextExpiresAt: Date.now() + HOUR,
      binding: null,
    });
    expect(result).toEqual({ status: 'unknown' });
  });

  it('reuse revokes the family: the successor then refuses with revoked', async () => {
    const store = await backend.open();
    const first = session();
    await store.insertRefresh(first);
    const r1 = await store.rotateRefresh(rotation(first));
    expect(r1.status).toBe('rotated');
    const again = await store.rotateRefresh(rotation(first));
    expect(again.status).toBe('reused');
    if (again.status === 'reused') expect(again.record.usedAt).not.toBeNull();
    if (r1.status !== 'rotated') return;
    const successor = await store.rotateRefresh(rotation(r1.next));
    expect(successor.status).toBe('revoked');
    expect((await store.getRefresh(r1.next.id))?.revokedAt).not.toBeNull();
    expect(await store.revokeFamily(first.familyId, Date.now())).toBe(0);
    // Revoked outranks used: the first token now reports revoked too.
    expect((await store.rotateRefresh(rotation(first))).status).toBe('revoked');
  });

  it('expired: own expiry and family expiry; nothing consumed', async () => {
    const store = await backend.open();
    const first = session();
    await store.insertRefresh(first);
    expect((await store.rotateRefresh(rotation(first, first.expiresAt))).status).toBe('expired');
    const capped = session({ expiresAt: Date.now() + 24 * HOUR, familyExpiresAt: Date.now() + 2 * HOUR });
    await store.insertRefresh(capped);
    expect((await store.rotateRefresh(rotation(capped, capped.familyExpiresAt))).status).toBe('expired');
    expect((await store.getRefresh(first.id))?.usedAt).toBeNull();
    expect((await store.getRefresh(capped.id))?.usedAt).toBeNull();
    // Still current before its expiry.
    expect((await store.rotateRefresh(rotation(first, first.expiresAt - 1))).status).toBe('rotated');
  });

  it('reuse of a used token is detected even after it expired', async () => {
    const store = await backend.open();
    const first = session();
    await store.insertRefresh(first);
    const r1 = await store.rotateRefresh(rotation(first));
    expect(r1.status).toBe('rotated');
    const replay = await store.rotateRefresh(rotation(first, first.expiresAt + MINUTE));
    expect(replay.status).toBe('reused');
    if (r1.status === 'rotated') expect((await store.rotateRefresh(rotation(r1.next))).status).toBe('revoked');
  });

  it('binding: a mismatch consumes nothing; an unbound family ignores the presented binding', async () => {
    const store = await backend.open();
    const bound = session({ binding: 'ua+ip-hash' });
    await store.insertRefresh(bound);
    const wrong = await store.rotateRefresh(rotation(bound, undefined, 'other'));
    expect(wrong.status).toBe('binding_mismatch');
    expect((await store.rotateRefresh(rotation(bound, undefined, null))).status).toBe('binding_mismatch');
    expect(await store.getRefresh(bound.id)).toEqual(bound);
    const right = await store.rotateRefresh(rotation(bound, undefined, 'ua+ip-hash'));
    expect(right.status).toBe('rotated');
    if (right.status === 'rotated') expect(right.next.binding).toBe('ua+ip-hash');

    const unbound = session();
    await store.insertRefresh(unbound);
    const any = await store.rotateRefresh(rotation(unbound, undefined, 'whatever'));
    expect(any.status).toBe('rotated');
    if (any.status === 'rotated') expect(any.next.binding).toBeNull();
  });

  it('binding is checked after expiry and reuse', async () => {
    const store = await backend.open();
    const bound = session({ binding: 'b' });
    await store.insertRefresh(bound);
    expect((await store.rotateRefresh(rotation(bound, bound.expiresAt, 'x'))).status).toBe('expired');
    expect((await store.rotateRefresh(rotation(bound, undefined, 'b'))).status).toBe('rotated');
    expect((await store.rotateRefresh(rotation(bound, undefined, 'x'))).status).toBe('reused');
  });

  it('revokeFamily counts live tokens and is idempotent', async () => {
    const store = await backend.open();
    const first = session();
    await store.insertRefresh(first);
    const r1 = await store.rotateRefresh(rotation(first));
    expect(r1.status).toBe('rotated');
    const now = Date.now();
    expect(await store.revokeFamily(first.familyId, now)).toBe(1);
    expect(await store.revokeFamily(first.familyId, now + 1)).toBe(0);
    expect(await store.revokeFamily(randomUUID(), now)).toBe(0);
    if (r1.status !== 'rotated') return;
    const next = await store.getRefresh(r1.next.id);
    expect(next?.revokedAt).toBe(now);
    expect((await store.rotateRefresh(rotation(r1.next))).status).toBe('revoked');
  });

  it('revokeSubject revokes every live family of the subject and returns their ids', async () => {
    const store = await backend.open();
    const subject = `user-${randomUUID()}`;
    const a = session({ subject });
    const b = session({ subject });
    const other = session({ subject: `${subject}-other` });
    for (const r of [a, b, other]) await store.insertRefresh(r);
    const rotated = await store.rotateRefresh(rotation(a));
    expect(rotated.status).toBe('rotated');
    expect((await store.revokeSubject(subject, Date.now())).sort()).toEqual([a.familyId, b.familyId].sort());
    expect(await store.revokeSubject(subject, Date.now())).toEqual([]);
    expect((await store.rotateRefresh(rotation(b))).status).toBe('revoked');
    if (rotated.status === 'rotated') expect((await store.rotateRefresh(rotation(rotated.next))).status).toBe('revoked');
    expect((await store.rotateRefresh(rotation(other))).status).toBe('rotated');
    expect(await store.revokeSubject(`nobody-${randomUUID()}`, Date.now())).toEqual([]);
  });

  it('sweep deletes the records of families that expired before now', async () => {
    const store = await backend.open();
    await store.sweep(Date.now() + 30 * 24 * HOUR); // earlier tests' families
    const base = Date.now();
    const ending = session({ familyExpiresAt: base + 10 * MINUTE, expiresAt: base + 5 * MINUTE });
    const lasting = session({ familyExpiresAt: base + 48 * HOUR });
    await store.insertRefresh(ending);
    await store.insertRefresh(lasting);
    const r1 = await store.rotateRefresh(rotation(ending));
    expect(r1.status).toBe('rotated');
    expect(await store.sweep(ending.familyExpiresAt)).toBe(0); // expired at, not before
    expect(await store.sweep(ending.familyExpiresAt + 1)).toBe(2);
    expect(await store.getRefresh(ending.id)).toBeNull();
    if (r1.status === 'rotated') expect(await store.getRefresh(r1.next.id)).toBeNull();
    expect(await store.getRefresh(lasting.id)).toEqual(lasting);
    expect((await store.rotateRefresh(rotation(ending))).status).toBe('unknown');
    expect(await store.sweep(ending.familyExpiresAt + 1)).toBe(0);
  });

  it('20 concurrent rotations of one token from several instances: exactly one rotates, the family ends', async () => {
    const stores = await Promise.all(Array.from({ length: backend.name === 'sqlite' ? 2 : 4 }, () => backend.open()));
    for (let round = 0; round < 3; round++) {
      const first = session();
      await stores[0]!.insertRefresh(first);
      const now = Date.now();
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          stores[i % stores.length]!.rotateRefresh({
            id: first.id,
            nextId: tokenId(),
            now,
            nextExpiresAt: now + HOUR,
            binding: null,
          }),
        ),
      );
      const statuses = results.map((r) => r.status);
      expect(statuses.filter((s) => s === 'rotated')).toHaveLength(1);
      // The first loser is reuse and ends the family; revoked outranks used, so the ones
      // after it (if any) see the family revoked. Either way: refused, nothing minted.
      expect(statuses.filter((s) => s === 'reused').length).toBeGreaterThanOrEqual(1);
      expect(statuses.filter((s) => s === 'reused' || s === 'revoked')).toHaveLength(19);
      const winner = results.find((r) => r.status === 'rotated');
      if (winner?.status !== 'rotated') throw new Error('no winner');
      expect(await stores[1]!.getRefresh(winner.next.id)).toMatchObject({ familyId: first.familyId });
      expect((await stores[1]!.rotateRefresh(rotation(winner.next))).status).toBe('revoked');
      expect(await stores[0]!.revokeFamily(first.familyId, Date.now())).toBe(0);
    }
  });

  it('concurrent rotation and logout: the successor never outlives the logout', async () => {
    const stores = await Promise.all([backend.open(), backend.open()]);
    for (let round = 0; round < 10; round++) {
      const first = session();
      await stores[0]!.insertRefresh(first);
      const [rotated] = await Promise.all([
        stores[0]!.rotateRefresh(rotation(first)),
        stores[1]!.revokeFamily(first.familyId, Date.now()),
      ]);
      if (rotated.status === 'rotated') expect((await stores[1]!.getRefresh(rotated.next.id))?.revokedAt).not.toBeNull();
      else expect(rotated.status).toBe('revoked');
    }
  });
});

/**
 * The cluster case for real: several processes (not just connections of one thread, where
 * better-sqlite3's synchronous calls cannot interleave) race on one token in one file.
 * The children run the TypeScript source through vite-node (vitest's own runner).
 */
const resolveFrom = createRequire(import.meta.url);
const viteNode = (() => {
  try {
    return join(dirname(resolveFrom.resolve('vite-node/package.json')), 'vite-node.mjs');
  } catch {
    return null;
  }
})();

describe('SQLite rotation races across processes', () => {
  it.skipIf(viteNode === null)(
    '3 processes race on 200 tokens: each rotates exactly once, every other attempt is refused',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bulwark-issuer-store-'));
      const children: ChildProcess[] = [];
      try {
        const path = join(dir, 'issuer.db');
        const store = new SqliteIssuerStore({ path });
        open.push(store);
        await store.init();
        const tokens = Array.from({ length: 200 }, () => session());
        for (const t of tokens) await store.insertRefresh(t);
        writeFileSync(join(dir, 'ids.json'), JSON.stringify(tokens.map((t) => t.id)));
        const module = fileURLToPath(new URL('../../src/issuer/store-sqlite.ts', import.meta.url));
        // Each child walks the same tokens, twice each, from a common start instant, so the
        // processes contend on the write lock throughout rather than one finishing first.
        const script = join(dir, 'rotate.ts');
        writeFileSync(
          script,
          `import { readFileSync } from 'node:fs';
import { SqliteIssuerStore } from ${JSON.stringify(module)};
const store = new SqliteIssuerStore({ path: ${JSON.stringify(path)} });
await store.init();
const ids = JSON.parse(readFileSync(${JSON.stringify(join(dir, 'ids.json'))}, 'utf8'));
for (const id of ids) await store.getRefresh(id); // warm up, so no process starts cold
process.stdout.write('ready\\n');
const go = await new Promise((resolve) => process.stdin.once('data', (d) => resolve(Number(String(d)))));
while (Date.now() < go) {}
const out = {};
for (const id of ids) {
  out[id] = [];
  for (let i = 0; i < 2; i++) {
    const now = Date.now();
    const r = await store.rotateRefresh({ id, nextId: process.pid + '-' + id + '-' + i, now, nextExpiresAt: now + 60000, binding: null });
    out[id].push(r.status);
  }
}
process.stdout.write(JSON.stringify(out) + '\\n');
await store.close();
`,
        );
        const runs = Array.from({ length: 3 }, () => {
          const child = spawn(process.execPath, [viteNode!, script], { cwd: dir, stdio: ['pipe', 'pipe', 'inherit'] });
          children.push(child);
          let text = '';
          child.stdout!.setEncoding('utf8');
          const ready = new Promise<void>((resolve, reject) => {
            child.stdout!.on('data', (chunk: string) => {
              text += chunk;
              if (text.includes('ready\n')) resolve();
            });
            child.once('exit', (code) => reject(new Error(`child exited ${code} before ready`)));
          });
          const done = new Promise<Record<string, string[]>>((resolve, reject) =>
            child.once('exit', (code) => {
              const line = text.split('\n').find((l) => l.startsWith('{'));
              if (code !== 0 || line === undefined) reject(new Error(`child exited ${code}`));
              else resolve(JSON.parse(line) as Record<string, string[]>);
            }),
          );
          return { child, ready, done };
        });
        await Promise.all(runs.map((r) => r.ready));
        const go = Date.now() + 100;
        for (const r of runs) r.child.stdin!.end(`${go}\n`);
        const outputs = await Promise.all(runs.map((r) => r.done));
        for (const t of tokens) {
          const statuses = outputs.flatMap((o) => o[t.id] ?? []);
          expect(statuses).toHaveLength(6);
          expect(statuses.filter((s) => s === 'rotated')).toHaveLength(1);
          expect(statuses.filter((s) => s === 'reused').length).toBeGreaterThanOrEqual(1);
          expect(statuses.filter((s) => s === 'reused' || s === 'revoked')).toHaveLength(5);
          expect(await store.revokeFamily(t.familyId, Date.now())).toBe(0);
        }
      } finally {
        for (const child of children) if (child.exitCode === null) child.kill();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

describe('unreachable servers are IssuerStoreError, not a hang', () => {
  it('PostgreSQL on a closed port', async () => {
    const port = await freePort();
    const store = new PostgresIssuerStore({ url: `postgres://postgres@127.0.0.1:${port}/test`, connectTimeoutMs: 2000 });
    try {
      await expect(store.init()).rejects.toBeInstanceOf(IssuerStoreError);
      const error = await store.getRefresh('x').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(IssuerStoreError);
      expect((error as IssuerStoreError).cause).toBeDefined();
      await expect(store.rotateRefresh({ id: 'x', nextId: 'y', now: 1, nextExpiresAt: 2, binding: null })).rejects.toBeInstanceOf(
        IssuerStoreError,
      );
    } finally {
      await store.close();
    }
  });

  it('Redis on a closed port', async () => {
    const port = await freePort();
    const store = new RedisIssuerStore({ url: `redis://127.0.0.1:${port}`, keyPrefix: 'bulwark-test:unreachable:' });
    try {
      const error = await store.init().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(IssuerStoreError);
      expect((error as IssuerStoreError).cause).toBeDefined();
      await expect(store.getClient('x')).rejects.toBeInstanceOf(IssuerStoreError);
      await expect(store.rotateRefresh({ id: 'x', nextId: 'y', now: 1, nextExpiresAt: 2, binding: null })).rejects.toBeInstanceOf(
        IssuerStoreError,
      );
    } finally {
      await store.close();
    }
  });

  it('a closed store refuses with IssuerStoreError', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-issuer-store-'));
    try {
      const store = new SqliteIssuerStore({ path: join(dir, 'x.db') });
      await expect(store.getClient('x')).rejects.toBeInstanceOf(IssuerStoreError); // before init
      await store.init();
      await store.close();
      await expect(store.getRefresh('x')).rejects.toBeInstanceOf(IssuerStoreError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('SQLite path that cannot be opened', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-issuer-store-'));
    try {
      writeFileSync(join(dir, 'file'), '');
      const store = new SqliteIssuerStore({ path: join(dir, 'file', 'sub', 'issuer.db') });
      await expect(store.init()).rejects.toBeInstanceOf(IssuerStoreError);
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('store options', () => {
  it('PostgreSQL refuses a table prefix that is not a plain identifier', () => {
    for (const tablePrefix of ['bad;drop', 'Upper_', '1abc', 'a"b', 'x'.repeat(42)]) {
      expect(() => new PostgresIssuerStore({ url: PG_URL, tablePrefix })).toThrow(TypeError);
    }
  });

  it('SQLite :memory: works', async () => {
    const store = new SqliteIssuerStore({ path: ':memory:' });
    await store.init();
    const r = session();
    await store.insertRefresh(r);
    expect(await store.getRefresh(r.id)).toEqual(r);
    await store.close();
  });
});
