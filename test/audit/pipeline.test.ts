import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { isBulwarkError } from '../../src/core/errors.js';
import { openSqlite } from '../../src/audit/drivers.js';
import { createAuditLog, type AuditLog, type EnqueueResult } from '../../src/audit/log.js';
import type { AuditConfig } from '../../src/audit/schema.js';
import { StdoutSink } from '../../src/audit/sinks/stdout.js';
import { signWebhookBody } from '../../src/audit/sinks/webhook.js';
import { verifyAudit, verifyLines } from '../../src/audit/verify.js';
import {
  auditConfig,
  dropTable,
  ed25519Keys,
  PG_URL,
  silentLogger,
  startReceiver,
  tempDir,
  uniqueTable,
  waitFor,
  withPg,
  writeKey,
  type Rec,
} from './helpers.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function setup(): string {
  const { dir, cleanup } = tempDir();
  cleanups.push(cleanup);
  return dir;
}

async function open(config: AuditConfig): Promise<AuditLog> {
  const log = await createAuditLog(config, { logger: silentLogger() });
  cleanups.push(() => log.close());
  return log;
}

function event(i: number) {
  return { action: 'payment.refund', subject: `user${i}`, tenant: 'acme', resource: `order:${i}`, details: { amount: i } };
}

const accepted = (results: EnqueueResult[]) =>
  results.filter((r): r is Extract<EnqueueResult, { status: 'accepted' }> => r.status === 'accepted').map((r) => r.id);

function sqliteIds(path: string): string[] {
  const db = openSqlite(path, { readonly: true });
  try {
    return db
      .prepare<{ id: string }>('SELECT id FROM audit_events ORDER BY pos')
      .all()
      .map((r) => r.id);
  } finally {
    db.close();
  }
}

/** In order of arrival, per chain, n must only go up (order preserved) and never repeat. */
function expectChainOrder(records: Rec[]): void {
  const last = new Map<string, number>();
  for (const r of records) {
    const chain = String(r['chain']);
    const n = Number(r['n']);
    expect(n).toBeGreaterThan(last.get(chain) ?? -1);
    last.set(chain, n);
  }
}

describe('several sinks at once', () => {
  it('file, SQLite, PostgreSQL and a webhook get the same chain, and each store verifies', async () => {
    const dir = setup();
    const keys = ed25519Keys();
    const table = uniqueTable();
    cleanups.push(() => dropTable(table));
    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    const secret = 'w'.repeat(32);
    const log = await createAuditLog(
      auditConfig(dir, {
        chain: { checkpointEvery: 50, checkpointIntervalMs: 60_000, signingKey: writeKey(dir, keys) },
        sinks: [
          { file: { path: join(dir, 'audit.jsonl') } },
          { sqlite: { path: join(dir, 'audit.db') } },
          { postgres: { url: PG_URL, table } },
          { webhook: { url: receiver.url, hmacSecret: secret, batchSize: 64, headers: { 'x-api-key': 'receiver-key' } } },
        ],
      }),
      { logger: silentLogger() },
    );
    const results = Array.from({ length: 300 }, (_, i) => log.record(event(i)));
    expect(results.every((r) => r.status === 'accepted')).toBe(true);
    await log.flush({ timeoutMs: 10_000 });
    const stats = log.stats();
    expect(stats).toMatchObject({ recorded: 300, dropped: 0, rejected: 0, queueDepth: 0 });
    expect(stats.sinks.map((s) => [s.name.split(':')[0], s.lag, s.errors])).toEqual([
      ['file', 0, 0],
      ['sqlite', 0, 0],
      ['postgres', 0, 0],
      ['webhook', 0, 0],
    ]);
    await log.close();

    const ids = accepted(results);
    const fileLines = readFileSync(join(dir, 'audit.jsonl'), 'utf8').trim().split('\n');
    expect(sqliteIds(join(dir, 'audit.db'))).toEqual(fileLines.map((l) => (JSON.parse(l) as Rec)['id']));
    const pgIds = await withPg(async (pool) =>
      (await pool.query<{ id: string }>(`SELECT id FROM "${table}" ORDER BY pos`)).rows.map((r) => r.id),
    );
    expect(pgIds).toEqual(fileLines.map((l) => (JSON.parse(l) as Rec)['id']));
    expect(receiver.events.map((r) => r['id'])).toEqual(pgIds);
    for (const id of ids) expect(pgIds).toContain(id);

    for (const body of receiver.bodies) {
      const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(String(body.headers['bulwark-signature']));
      expect(m).not.toBeNull();
      expect(signWebhookBody(secret, Number(m?.[1]), body.body)).toBe(body.headers['bulwark-signature']);
      expect(body.headers['x-api-key']).toBe('receiver-key');
    }
    for (const source of [{ file: join(dir, 'audit.jsonl') }, { sqlite: join(dir, 'audit.db') }, { postgres: PG_URL, table }]) {
      const report = await verifyAudit(source, { publicKeys: [keys.publicPem], sealed: true });
      expect(report.issues).toEqual([]);
      expect(report.records).toBe(fileLines.length);
    }
    expect(
      verifyLines(
        receiver.events.map((r) => JSON.stringify(r)),
        { publicKeys: [keys.publicPem], sealed: true },
      ).ok,
    ).toBe(true);
  });
});

describe('queue full', () => {
  it('block: the event is refused with audit.unavailable (503); nothing is dropped, no gap', async () => {
    const dir = setup();
    const log = await open(auditConfig(dir, { queue: { maxEvents: 16 }, whenFull: 'block' }));
    // Synchronous burst: the drain (setImmediate) cannot run in between, so the queue fills.
    const results = Array.from({ length: 20 }, (_, i) => log.record(event(i)));
    expect(results.slice(0, 16).every((r) => r.status === 'accepted')).toBe(true);
    const refused = results.slice(16);
    for (const r of refused) {
      expect(r.status).toBe('rejected');
      if (r.status !== 'rejected') continue;
      expect(r.reason).toBe('queue_full');
      expect(isBulwarkError(r.error)).toBe(true);
      expect({ code: r.error.code, status: r.error.status }).toEqual({ code: 'audit.unavailable', status: 503 });
    }
    await expect(log.recordDurable(event(99))).rejects.toMatchObject({ code: 'audit.unavailable', status: 503 });
    await log.flush();
    expect(log.stats()).toMatchObject({ recorded: 16, rejected: 5, dropped: 0, gaps: 0 });
    // The queue drains: the next event is accepted again.
    expect(log.record(event(100)).status).toBe('accepted');
    await log.close();
    const report = await verifyAudit({ file: join(dir, 'audit.jsonl') }, { sealed: true });
    expect(report.ok).toBe(true);
    expect(report.gaps).toEqual([]);
  });

  it('block: reserve() holds a place per request in flight; reserved events are taken even once others filled the queue', async () => {
    const dir = setup();
    const log = await open(auditConfig(dir, { queue: { maxEvents: 4 }, whenFull: 'block' }));
    // One tick: the drain cannot run, so places held and events queued add up.
    expect([log.reserve(), log.reserve(), log.reserve()]).toEqual([true, true, true]);
    expect(log.record(event(0)).status).toBe('accepted');
    // Three places held and one queued: a fourth request is refused at admission.
    expect(log.accepting()).toBe(false);
    expect(log.reserve()).toBe(false);
    // Unreserved events fill the queue; the three held places still take their events.
    for (let i = 1; i < 4; i++) expect(log.record(event(i)).status).toBe('accepted');
    expect(log.record(event(4)).status).toBe('rejected');
    for (let i = 5; i < 8; i++) expect(log.record(event(i), true).status).toBe('accepted');
    // Every place is used: a reservation is taken once, a second `reserved` record is an ordinary one.
    expect(log.record(event(8), true).status).toBe('rejected');
    await log.flush();
    expect(log.accepting()).toBe(true);
    expect(log.stats()).toMatchObject({ recorded: 7, rejected: 2 });
  });

  it('drop: the event is counted and a gap marker takes its place in the chain; verify reports the gap', async () => {
    const dir = setup();
    const log = await open(auditConfig(dir, { queue: { maxEvents: 16 }, whenFull: 'drop' }));
    const results = Array.from({ length: 20 }, (_, i) => log.record(event(i)));
    expect(results.filter((r) => r.status === 'dropped').map((r) => (r as { seq: number }).seq)).toEqual([17, 18, 19, 20]);
    // Under drop, a durable wait on a dropped event resolves once its gap marker is committed.
    await expect(log.recordDurable(event(21))).resolves.toMatchObject({ status: 'dropped', seq: 21 });
    await log.flush();
    log.record(event(22));
    await log.close();
    expect(log.stats()).toMatchObject({ recorded: 17, dropped: 5, gaps: 1 });
    const report = await verifyAudit({ file: join(dir, 'audit.jsonl') }, { sealed: true });
    expect(report.ok).toBe(true);
    expect(report.gaps).toEqual([expect.objectContaining({ dropped: 5, fromSeq: 17, toSeq: 21 })]);
    expect(report.chains[0]?.droppedEvents).toBe(5);
    // In the chain the gap sits between event seq 16 and seq 22, where the dropped events would have been.
    const kinds = readFileSync(join(dir, 'audit.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Rec)
      .filter((r) => r['kind'] === 'event' || r['kind'] === 'gap')
      .map((r) => (r['kind'] === 'gap' ? `gap ${String(r['fromSeq'])}-${String(r['toSeq'])}` : String(r['seq'])));
    expect(kinds.slice(-3)).toEqual(['16', 'gap 17-21', '22']);
  });
});

describe('sink outage', () => {
  it('webhook 500s then recovers: everything delivered, in chain order, nothing twice', async () => {
    const dir = setup();
    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    receiver.respond = (attempt) => (attempt <= 6 ? 500 : 200);
    const log = await open(auditConfig(dir, { sinks: [{ webhook: { url: receiver.url, batchSize: 25, timeoutMs: 2_000 } }] }));
    const ids: string[] = [];
    for (let round = 0; round < 10; round++) {
      ids.push(...accepted(Array.from({ length: 20 }, (_, i) => log.record(event(round * 20 + i)))));
      await new Promise((r) => setTimeout(r, 15));
    }
    await waitFor(() => log.stats().sinks[0]?.errors === 6);
    await log.flush({ timeoutMs: 10_000 });
    const received = receiver.events.map((r) => String(r['id']));
    for (const id of ids) expect(received).toContain(id);
    expect(new Set(received).size).toBe(received.length);
    expectChainOrder(receiver.events);
    expect(log.stats().sinks[0]).toMatchObject({ state: 'ok', lag: 0, errors: 6 });
  });

  it('webhook 200 whose response body is cut off: the batch failed, is retried, every event arrives', async () => {
    const dir = setup();
    // A receiver that, for its first batches, sends 200 headers and part of the body, then drops the
    // connection (it died before it committed them: those events are not kept); afterwards it answers properly.
    const events: Rec[] = [];
    let attempts = 0;
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (++attempts <= 3) {
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' });
          res.write('accepted, committing', () => setTimeout(() => res.socket?.destroy(), 10));
          return;
        }
        events.push(...(JSON.parse(Buffer.concat(chunks).toString('utf8')) as { events: Rec[] }).events);
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    );
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ingest`;
    const log = await open(auditConfig(dir, { sinks: [{ webhook: { url, batchSize: 40, timeoutMs: 2_000 } }] }));
    const ids = accepted(Array.from({ length: 39 }, (_, i) => log.record(event(i))));
    expect(ids).toHaveLength(39);
    await log.flush({ timeoutMs: 10_000 });
    expect(attempts).toBeGreaterThan(3);
    expect(log.stats().sinks[0]).toMatchObject({ state: 'ok', lag: 0, errors: 3 });
    const received = new Set(events.map((r) => String(r['id'])));
    expect(ids.filter((id) => !received.has(id))).toEqual([]);
    expectChainOrder(events);
  });

  it('the WAL grows to its quota, whenFull applies, and it drains when the sink is back', async () => {
    const dir = setup();
    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    let up = false;
    receiver.respond = () => (up ? 200 : 503);
    const log = await open(
      auditConfig(dir, {
        queue: { maxEvents: 16 },
        wal: { dir: join(dir, 'wal'), segmentBytes: 16_384, fsyncIntervalMs: 0, maxBytes: 65_536 },
        sinks: [{ webhook: { url: receiver.url, batchSize: 100 } }],
      }),
    );
    const ids: string[] = [];
    let refused = 0;
    for (let i = 0; i < 2000 && refused === 0; i++) {
      const r = log.record(event(i));
      if (r.status === 'accepted') ids.push(r.id);
      else refused++;
      if (i % 8 === 7) await tick();
    }
    expect(refused).toBe(1);
    expect(log.stats()).toMatchObject({ walFull: true, queueDepth: 16 });
    // What was serialized is committed; the WAL then holds about its quota (pending bytes count against it).
    await waitFor(() => log.stats().walBytes >= 65_536 - 4096);
    expect(log.stats().walBytes).toBeLessThan(65_536 + 16_384);
    up = true;
    await log.flush({ timeoutMs: 15_000 });
    expect(log.stats().walFull).toBe(false);
    // Delivered segments are deleted after the acknowledgement that frees them (asynchronously: flush
    // promises delivery, not the unlink).
    await waitFor(() => log.stats().walBytes < 32_768);
    const received = new Set(receiver.events.map((r) => String(r['id'])));
    for (const id of ids) expect(received.has(id)).toBe(true);
    expectChainOrder(receiver.events);
  });
});

describe('WAL replay after a restart', () => {
  it('events a sink did not take before close are re-sent on the next start; idempotent stores keep one copy', async () => {
    const dir = setup();
    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    receiver.respond = () => 503;
    const config = auditConfig(dir, {
      closeTimeoutMs: 300,
      sinks: [
        { sqlite: { path: join(dir, 'audit.db') } },
        { webhook: { url: receiver.url } },
        { file: { path: join(dir, 'audit.jsonl') } },
      ],
    });
    const first = await createAuditLog(config, { logger: silentLogger() });
    const run1 = accepted(Array.from({ length: 40 }, (_, i) => first.record(event(i))));
    await waitFor(() => (first.stats().sinks[1]?.errors ?? 0) > 0);
    await first.close(); // the webhook is behind: the WAL keeps its share
    expect(receiver.events).toEqual([]);
    const segments = readdirSync(join(dir, 'wal', 'slot-0')).filter((n) => n.startsWith('wal-'));
    expect(segments.length).toBeGreaterThan(0);

    receiver.respond = () => 200;
    const second = await open(config);
    const run2 = accepted(Array.from({ length: 10 }, (_, i) => second.record(event(100 + i))));
    await second.flush({ timeoutMs: 10_000 });
    await second.close();

    const received = receiver.events.map((r) => String(r['id']));
    for (const id of [...run1, ...run2]) expect(received).toContain(id);
    expectChainOrder(receiver.events);
    // SQLite and the file had run 1 already: no second copy.
    const stored = sqliteIds(join(dir, 'audit.db'));
    expect(new Set(stored).size).toBe(stored.length);
    for (const source of [{ sqlite: join(dir, 'audit.db') }, { file: join(dir, 'audit.jsonl') }]) {
      const report = await verifyAudit(source, { sealed: true });
      // No signing key in this config: the only remarks are that checkpoints are unsigned.
      expect(report.issues.filter((i) => i.code !== 'checkpoint.unsigned')).toEqual([]);
      expect(report.ok).toBe(true);
      expect(report.duplicates).toBe(0);
      expect(report.chains).toHaveLength(2);
    }
    expect(
      verifyLines(
        receiver.events.map((r) => JSON.stringify(r)),
        { sealed: true },
      ).ok,
    ).toBe(true);
  });

  it('recordDurable resolves only once the record is in the WAL', async () => {
    const dir = setup();
    const log = await open(auditConfig(dir));
    const { id } = (await log.recordDurable(event(1))) as { id: string };
    const slot = join(dir, 'wal', 'slot-0');
    const wal = readdirSync(slot)
      .filter((n) => n.startsWith('wal-'))
      .map((n) => readFileSync(join(slot, n), 'utf8'))
      .join('');
    expect(wal).toContain(`"id":"${id}"`);
  });
});

describe('several workers', () => {
  it('each process claims its own WAL slot and chain; one SQLite file and one PostgreSQL table hold both; verify checks every chain', async () => {
    const dir = setup();
    const table = uniqueTable();
    cleanups.push(() => dropTable(table));
    const keys = ed25519Keys();
    const config = auditConfig(dir, {
      chain: { checkpointEvery: 10, checkpointIntervalMs: 60_000, signingKey: writeKey(dir, keys) },
      sinks: [
        { sqlite: { path: join(dir, 'audit.db') } },
        { postgres: { url: PG_URL, table } },
        { file: { path: join(dir, 'audit-{slot}.jsonl') } },
      ],
    });
    const [a, b] = await Promise.all([
      createAuditLog(config, { logger: silentLogger() }),
      createAuditLog(config, { logger: silentLogger() }),
    ]);
    expect(new Set([a.stats().slot, b.stats().slot])).toEqual(new Set([0, 1]));
    for (let i = 0; i < 60; i++) {
      a.record(event(i));
      b.record(event(1000 + i));
      if (i % 10 === 0) await tick();
    }
    await Promise.all([a.close(), b.close()]);
    for (const source of [{ sqlite: join(dir, 'audit.db') }, { postgres: PG_URL, table }]) {
      const report = await verifyAudit(source, { publicKeys: [keys.publicPem], sealed: true });
      expect(report.issues).toEqual([]);
      expect(report.chains.map((c) => c.chain).sort()).toEqual([a.chainId, b.chainId].sort());
    }
    for (const slot of [0, 1])
      expect((await verifyAudit({ file: join(dir, `audit-${slot}.jsonl`) }, { sealed: true })).chains).toHaveLength(1);
  });
});

describe('checkpoints on a timer', () => {
  it('a quiet chain still gets a checkpoint after checkpointIntervalMs', async () => {
    const dir = setup();
    const log = await open(auditConfig(dir, { chain: { checkpointEvery: 1000, checkpointIntervalMs: 300 } }));
    log.record(event(1));
    await waitFor(() => log.stats().checkpoints >= 1, 3_000);
    await log.flush();
    const kinds = readFileSync(join(dir, 'audit.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as Rec)['kind']);
    expect(kinds).toEqual(['start', 'event', 'checkpoint']);
  });
});

describe('stdout sink and lifecycle', () => {
  it('writes JSON lines to its stream; after close, record() is refused and close() is idempotent', async () => {
    const dir = setup();
    const out = new PassThrough();
    const chunks: string[] = [];
    out.on('data', (c: Buffer) => chunks.push(c.toString('utf8')));
    const log = await createAuditLog(auditConfig(dir), { logger: silentLogger(), sinks: [new StdoutSink(out)] });
    log.record(event(1));
    await log.close();
    await log.close();
    const kinds = chunks
      .join('')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as Rec)['kind']);
    expect(kinds).toEqual(['start', 'event', 'checkpoint']);
    const refused = log.record(event(2));
    expect(refused).toMatchObject({ status: 'rejected', reason: 'closed' });
    await expect(log.recordDurable(event(3))).rejects.toMatchObject({ code: 'audit.unavailable' });
    expect(() => log.record({ action: 'not a valid action!' })).toThrow(TypeError);
  });

  it('a disabled config gives a log that records nothing', async () => {
    const log = await createAuditLog({ ...auditConfig(setup()), enabled: false }, { logger: silentLogger() });
    expect(log.record(event(1))).toEqual({ status: 'disabled' });
    expect(log.stats()).toMatchObject({ enabled: false, recorded: 0 });
    await log.close();
  });
});
