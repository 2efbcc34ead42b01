/**
 * A record a store could not index must not stop its sink for ever: a NUL (PostgreSQL text
 * refuses it) or a subject too long for a B-tree entry used to fail every retry of the batch,
 * so the WAL filled to its quota and, under `whenFull: block`, every request got a 503. The
 * indexed columns now hold a searchable form of the value; the record keeps it whole, verify
 * agrees, and `audit query` still finds the record by its exact value.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createAuditLog } from '../../src/audit/log.js';
import { queryAudit } from '../../src/audit/query.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { auditConfig, dropTable, PG_URL, silentLogger, tempDir, uniqueTable } from './helpers.js';

const table = uniqueTable();
const temp = tempDir();
afterAll(async () => {
  await dropTable(table);
  temp.cleanup();
});

describe('values no index could take', () => {
  it('a NUL and an 8 KB subject: stored by SQLite and PostgreSQL, the sinks keep going, verify and query agree', async () => {
    const dir = temp.dir;
    const log = await createAuditLog(
      auditConfig(dir, {
        sinks: [{ sqlite: { path: join(dir, 'audit.db') } }, { postgres: { url: PG_URL, table } }],
      }),
      { logger: silentLogger() },
    );
    const long = `user-${'x'.repeat(8192)}`;
    log.record({ action: 'a.nul', subject: 'ali\u0000ce', tenant: 'acme\u0000' });
    log.record({ action: 'a.long', subject: long, resource: 'r' });
    log.record({ action: 'a.after', subject: 'bob' });
    await log.flush({ timeoutMs: 10_000 });
    expect(log.stats().sinks.map((s) => [s.name.split(':')[0], s.lag])).toEqual([
      ['sqlite', 0],
      ['postgres', 0],
    ]);
    await log.close();
    for (const source of [{ sqlite: join(dir, 'audit.db') }, { postgres: PG_URL, table }]) {
      const report = await verifyAudit(source, { sealed: true });
      expect(report.issues.filter((i) => i.severity === 'error')).toEqual([]);
      expect(report.ok).toBe(true);
      const byLong = await queryAudit(source, { subject: long });
      expect(byLong.map((r) => r['action'])).toEqual(['a.long']);
      // The cut column alone would also match another long value with the same start: the record decides.
      expect(await queryAudit(source, { subject: `${long}y` })).toEqual([]);
      expect((await queryAudit(source, { subject: 'ali\u0000ce' })).map((r) => r['action'])).toEqual(['a.nul']);
      expect((await queryAudit(source, { subject: 'bob' })).map((r) => r['action'])).toEqual(['a.after']);
    }
  });
});
