/**
 * Tamper evidence, per store: a genuine log (two chains from two runs on one
 * WAL slot, signed checkpoints every 5 records) is written by the real
 * pipeline, then each tampering is applied to its records and the result is
 * stored in a real JSONL file, a real SQLite database and a real PostgreSQL
 * table, and verified from there.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditClock, UuidV7 } from '../../src/audit/clock.js';
import { createAuditLog } from '../../src/audit/log.js';
import { verifyAudit, verifyLines, type VerifyOptions, type VerifyReport } from '../../src/audit/verify.js';
import {
  auditConfig,
  dropStore,
  ed25519Keys,
  lineOf,
  parseLines,
  rawLine,
  rechain,
  silentLogger,
  tempDir,
  withPg,
  writeKey,
  writeStore,
  type Rec,
  type StoreKind,
  type TestKeys,
} from './helpers.js';

let dir: string;
let cleanup: () => void;
let keys: TestKeys;
let genuine: string[];
let chainA: string;
let chainB: string;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir());
  keys = ed25519Keys();
  const config = auditConfig(dir, {
    chain: { checkpointEvery: 5, checkpointIntervalMs: 60_000, signingKey: writeKey(dir, keys) },
  });
  for (const [run, count] of [
    [1, 12],
    [2, 8],
  ] as const) {
    const log = await createAuditLog(config, { logger: silentLogger() });
    for (let i = 0; i < count; i++)
      log.record({
        action: 'payment.refund',
        subject: `user${i}`,
        tenant: 'acme',
        resource: `order:${run}-${i}`,
        details: { amount: i * 10 },
      });
    await log.close();
  }
  genuine = readFileSync(join(dir, 'audit.jsonl'), 'utf8').trim().split('\n');
  const records = parseLines(genuine);
  chainA = String(records[0]?.['chain']);
  chainB = String(records[records.length - 1]?.['chain']);
});

afterAll(() => cleanup());

const recs = () => parseLines(genuine);
const indexWhere = (records: Rec[], predicate: (r: Rec) => boolean, nth = 0): number => {
  let seen = 0;
  for (let i = 0; i < records.length; i++) if (predicate(records[i] as Rec) && seen++ === nth) return i;
  throw new Error('no such record');
};
const eventOf = (chain: string, nth: number) => (records: Rec[]) =>
  indexWhere(records, (r) => r['chain'] === chain && r['kind'] === 'event', nth);

const STORES: StoreKind[] = ['file', 'sqlite', 'postgres'];

async function verifyIn(kind: StoreKind, lines: string[], options: VerifyOptions = {}): Promise<VerifyReport> {
  const { source } = await writeStore(kind, lines, dir);
  try {
    return await verifyAudit(source as never, { publicKeys: [keys.publicPem], ...options });
  } finally {
    await dropStore(source);
  }
}

const codes = (report: VerifyReport) => report.issues.filter((i) => i.severity === 'error').map((i) => i.code);

describe('the genuine log', () => {
  it("has two sealed chains linked by the second one's start record", () => {
    const records = recs();
    expect(chainA).not.toBe(chainB);
    const startB = records.find((r) => r['chain'] === chainB && r['kind'] === 'start') as Rec;
    const lastA = records.filter((r) => r['chain'] === chainA).pop() as Rec;
    expect(lastA).toMatchObject({ kind: 'checkpoint', final: true, reason: 'close' });
    expect(startB['after']).toEqual({ chain: chainA, n: lastA['n'], hash: lastA['hash'] });
    expect(records.filter((r) => r['kind'] === 'checkpoint' && r['chain'] === chainA).length).toBeGreaterThanOrEqual(3);
  });

  it.each(STORES)('verifies intact in %s', async (kind) => {
    const report = await verifyIn(kind, genuine);
    expect(report.issues).toEqual([]);
    expect(report).toMatchObject({ ok: true, records: genuine.length, signatures: 'trusted', firstBad: null });
    expect(report.chains.map((c) => [c.chain, c.sealed, c.intact])).toEqual([
      [chainA, 'close', true],
      [chainB, 'close', true],
    ]);
  });
});

interface Tamper {
  name: string;
  apply(records: Rec[]): { lines: string[]; badId: string; code: string };
}

const TAMPERS: Tamper[] = [
  {
    name: 'modified record (hash left as it was)',
    apply(records) {
      const i = eventOf(chainA, 2)(records);
      const r = records[i] as Rec;
      r['subject'] = 'mallory';
      const lines = records.map((rec, k) => (k === i ? rawLine(rec) : lineOf(rec)));
      return { lines, badId: String(r['id']), code: 'record.hash_mismatch' };
    },
  },
  {
    name: 'modified record, rehashed (the next one no longer links)',
    apply(records) {
      const i = eventOf(chainA, 2)(records);
      (records[i] as Rec)['details'] = { amount: 1_000_000 };
      const lines = records.map((rec, k) => (k === i ? lineOf(rec) : rawLine(rec)));
      return { lines, badId: String(records[i + 1]?.['id']), code: 'record.prev_mismatch' };
    },
  },
  {
    name: 'deleted record',
    apply(records) {
      const i = eventOf(chainA, 3)(records);
      const next = records[i + 1] as Rec;
      records.splice(i, 1);
      return { lines: records.map(rawLine), badId: String(next['id']), code: 'record.missing' };
    },
  },
  {
    name: 'inserted record (well linked, well hashed)',
    apply(records) {
      const i = eventOf(chainA, 1)(records);
      const before = records[i] as Rec;
      const clock = new AuditClock();
      // A careful forger: next n, next seq, linked to its predecessor, correctly hashed.
      const fake: Rec = {
        ...before,
        id: new UuidV7().next(clock.now()),
        subject: 'mallory',
        n: Number(before['n']) + 1,
        seq: Number(before['seq']) + 1,
        prev: before['hash'],
      };
      const fakeLine = lineOf(fake);
      const lines = records.map(rawLine);
      lines.splice(i + 1, 0, fakeLine);
      return { lines, badId: String(fake['id']), code: 'record.inserted' };
    },
  },
  {
    name: 'reordered records',
    apply(records) {
      const i = eventOf(chainA, 4)(records);
      const [a, b] = [records[i] as Rec, records[i + 1] as Rec];
      records[i] = b;
      records[i + 1] = a;
      return { lines: records.map(rawLine), badId: String(b['id']), code: 'record.missing' };
    },
  },
  {
    name: 'truncated after the last checkpoint (seal cut too; the next chain remembers the end)',
    apply(records) {
      const lastCheckpoint = records
        .map((r, k) => [r, k] as const)
        .filter(([r]) => r['chain'] === chainA && r['kind'] === 'checkpoint' && r['final'] === false)
        .pop();
      const cutFrom = (lastCheckpoint as readonly [Rec, number])[1] + 1;
      const cut = records.filter((r, k) => !(r['chain'] === chainA && k >= cutFrom));
      return { lines: cut.map(rawLine), badId: String(records[cutFrom - 1]?.['id']), code: 'chain.truncated' };
    },
  },
  {
    name: 'forged checkpoint: whole store rewritten and re-signed with another key',
    apply(records) {
      const i = eventOf(chainA, 0)(records);
      (records[i] as Rec)['subject'] = 'mallory';
      const attacker = ed25519Keys();
      const lines = rechain(records, attacker);
      const firstCheckpoint = parseLines(lines).find((r) => r['kind'] === 'checkpoint') as Rec;
      return { lines, badId: String(firstCheckpoint['id']), code: 'checkpoint.untrusted_key' };
    },
  },
  {
    name: 'forged checkpoint: re-signed with another key under the genuine key id',
    apply(records) {
      const i = eventOf(chainA, 0)(records);
      (records[i] as Rec)['subject'] = 'mallory';
      const attacker = ed25519Keys();
      const lines = rechain(records, { privatePem: attacker.privatePem, publicPem: keys.publicPem, keyId: keys.keyId });
      const firstCheckpoint = parseLines(lines).find((r) => r['kind'] === 'checkpoint') as Rec;
      return { lines, badId: String(firstCheckpoint['id']), code: 'checkpoint.bad_signature' };
    },
  },
];

describe.each(STORES)('tampering detected in %s', (kind) => {
  it.each(TAMPERS)('$name', async (tamper) => {
    const { lines, badId, code } = tamper.apply(recs());
    const report = await verifyIn(kind, lines);
    expect(report.ok).toBe(false);
    expect(report.firstBad).toMatchObject({ code, id: badId, severity: 'error' });
    expect(report.firstBad?.position).toMatch(kind === 'file' ? /\.jsonl:\d+$/ : /^pos \d+$/);
  });
});

describe('what each tampering reports (store-independent)', () => {
  const opts = () => ({ publicKeys: [keys.publicPem] });

  it('a swap reports the displaced record as missing, then as out of order — and nothing after', () => {
    const apply = TAMPERS.find((t) => t.name === 'reordered records') as Tamper;
    const report = verifyLines(apply.apply(recs()).lines, opts());
    expect(codes(report)).toEqual(['record.missing', 'record.out_of_order']);
  });

  it('an inserted record is named, not the genuine one it sits beside (inserted after it, too)', () => {
    const records = recs();
    const i = eventOf(chainA, 1)(records);
    const genuineNext = records[i + 1] as Rec;
    const fake: Rec = { ...genuineNext, id: new UuidV7().next(new AuditClock().now()), subject: 'mallory' };
    const lines = records.map(rawLine);
    lines.splice(i + 2, 0, lineOf(fake)); // after the genuine record with the same n
    const report = verifyLines(lines, opts());
    expect(codes(report)).toEqual(['record.inserted']);
    expect(report.firstBad?.id).toBe(fake['id']);
  });

  it('a rewrite with another key passes only without a trusted key, and says so', () => {
    const apply = TAMPERS.find((t) => t.name.startsWith('forged checkpoint: whole')) as Tamper;
    const { lines } = apply.apply(recs());
    const unanchored = verifyLines(lines);
    expect(unanchored.ok).toBe(true);
    expect(unanchored.signatures).toBe('self-declared');
    expect(unanchored.issues.map((i) => i.code)).toContain('verify.unanchored');
  });

  it('a cut signature alone (sig edited, record rehashed) is a bad signature', () => {
    const records = recs();
    const i = records.findIndex((r) => r['kind'] === 'checkpoint');
    const cp = records[i] as Rec;
    cp['sig'] = `${String(cp['sig']).slice(0, -4)}AAAA`;
    const lines = rechain(records, null);
    const report = verifyLines(lines, opts());
    expect(report.firstBad).toMatchObject({ code: 'checkpoint.bad_signature', id: cp['id'] });
  });

  it('truncating the newest chain: open (a warning) by default, an error with sealed; anchors catch it', () => {
    const records = recs();
    const lastCheckpointB = records
      .map((r, k) => [r, k] as const)
      .filter(([r]) => r['chain'] === chainB && r['kind'] === 'checkpoint' && r['final'] === false)
      .pop() as readonly [Rec, number];
    const finalB = records[records.length - 1] as Rec;
    const cut = records.slice(0, lastCheckpointB[1] + 3).map(rawLine); // two unsigned records after the checkpoint remain
    const open = verifyLines(cut, opts());
    expect(open.ok).toBe(true);
    expect(open.issues).toEqual([expect.objectContaining({ code: 'chain.open', severity: 'warning', chain: chainB })]);
    expect(open.chains[1]).toMatchObject({ sealed: null, unsignedTail: 2, lastCheckpointN: lastCheckpointB[0]['n'] });
    expect(verifyLines(cut, { ...opts(), sealed: true }).firstBad).toMatchObject({ code: 'chain.unsealed', chain: chainB });
    const anchored = verifyLines(cut, {
      ...opts(),
      anchors: [{ chain: chainB, n: Number(finalB['n']), hash: String(finalB['hash']) }],
    });
    expect(codes(anchored)).toEqual(['chain.truncated']);
    expect(
      verifyLines(genuine, { ...opts(), anchors: [{ chain: chainB, n: Number(finalB['n']), hash: String(finalB['hash']) }] }).ok,
    ).toBe(true);
  });

  it('deleting the head of a chain, or a whole predecessor chain', () => {
    const records = recs();
    const withoutStartA = records.slice(1).map(rawLine);
    expect(verifyLines(withoutStartA, opts()).firstBad).toMatchObject({ code: 'chain.head_missing', chain: chainA });
    expect(verifyLines(withoutStartA, { ...opts(), allowPartial: true }).ok).toBe(true);
    const onlyB = records.filter((r) => r['chain'] === chainB).map(rawLine);
    const report = verifyLines(onlyB, opts());
    expect(report.ok).toBe(true);
    expect(report.issues.map((i) => `${i.severity} ${i.code}`)).toEqual(['warning chain.predecessor_missing']);
  });

  it('records appended after a seal; unparsable lines; exact duplicates are counted, not errors', () => {
    const records = recs();
    const sealA = records.findIndex((r) => r['chain'] === chainA && r['final'] === true);
    const extra: Rec = {
      ...(records[sealA - 1] as Rec),
      id: new UuidV7().next(new AuditClock().now()),
      n: Number(records[sealA]?.['n']) + 1,
      prev: records[sealA]?.['hash'],
    };
    const appended = records.map(rawLine);
    appended.splice(sealA + 1, 0, lineOf(extra));
    expect(codes(verifyLines(appended, opts()))).toContain('record.after_seal');

    const garbled = records.map(rawLine);
    garbled[3] = garbled[3]!.slice(0, 40);
    expect(verifyLines(garbled, opts()).firstBad).toMatchObject({ code: 'record.unparsable', position: 'line 4' });

    const duplicated = records.map(rawLine);
    duplicated.splice(6, 0, duplicated[4] as string, duplicated[5] as string);
    const dup = verifyLines(duplicated, opts());
    expect(dup.ok).toBe(true);
    expect(dup.duplicates).toBe(2);
  });
});

describe.each(['sqlite', 'postgres'] as const)('%s: indexed columns must agree with the record', (kind) => {
  it('a subject edited in its column only is caught', async () => {
    const { source } = await writeStore(kind, genuine, dir);
    try {
      const target = parseLines(genuine).find((r) => r['kind'] === 'event') as Rec;
      if (kind === 'sqlite') {
        const { openSqlite } = await import('../../src/audit/drivers.js');
        const db = openSqlite(source['sqlite'] as string);
        db.prepare('UPDATE audit_events SET subject = ? WHERE id = ?').run('mallory', target['id']);
        db.close();
      } else {
        await withPg((pool) =>
          pool.query(`UPDATE "${source['table']}" SET subject = $1 WHERE id = $2`, ['mallory', target['id']]),
        );
      }
      const report = await verifyAudit(source as never, { publicKeys: [keys.publicPem] });
      expect(report.firstBad).toMatchObject({ code: 'record.column_mismatch', id: target['id'] });
    } finally {
      await dropStore(source);
    }
  });
});

describe('stored bytes must be the canonical JSON the writer stores', () => {
  /** The genuine log with one event line replaced by `edit(line)`. */
  const edited = (edit: (line: string) => string) => {
    const records = recs();
    const i = eventOf(chainA, 6)(records);
    const lines = [...genuine];
    lines[i] = edit(lines[i] as string);
    return { lines, id: String(records[i]?.['id']) };
  };

  it.each(['file', 'sqlite'] as const)(
    'a duplicate member name (a first-key reader sees another value) is record.not_canonical in %s',
    async (kind) => {
      const { lines, id } = edited((line) => `{"subject":"mallory",${line.slice(1)}`);
      expect((JSON.parse(lines[eventOf(chainA, 6)(recs())] as string) as Rec)['subject']).toBe('user6');
      const report = await verifyIn(kind, lines);
      expect(report.ok).toBe(false);
      expect(report.firstBad).toMatchObject({ code: 'record.not_canonical', id, severity: 'error' });
      expect(codes(report)).toEqual(['record.not_canonical']);
    },
  );

  it('other spacing, escapes or member order are not the stored bytes either', () => {
    const variants = [
      (line: string) => line.replace(',"hash":', ', "hash":'),
      (line: string) => line.replace('"subject":"user6"', '"subject":"user\\u0036"'),
      (line: string) =>
        `{"hash":${line.slice(line.lastIndexOf('"hash":') + 7, -1)},${line.slice(1, line.lastIndexOf(',"hash":'))}}`,
      (line: string) => `${line}\r`,
    ];
    for (const variant of variants) {
      const { lines, id } = edited(variant);
      const report = verifyLines(lines, { publicKeys: [keys.publicPem] });
      expect(codes(report)).toEqual(['record.not_canonical']);
      expect(report.firstBad?.id).toBe(id);
    }
  });

  it('a file converted to CRLF line ends still verifies (the reader takes \\r\\n as the line end)', async () => {
    const { writeFileSync } = await import('node:fs');
    const path = join(dir, 'crlf.jsonl');
    writeFileSync(path, genuine.map((l) => `${l}\r\n`).join(''));
    const report = await verifyAudit({ file: path }, { publicKeys: [keys.publicPem] });
    expect(report.issues).toEqual([]);
  });
});

/**
 * A genuine crash on one WAL slot, by the real pipeline: run 1 (key 1) writes and delivers events, and is
 * "killed" (its WAL and file are put back as they were before its close); run 2 (key 2) finds the unsealed
 * chain, seals it `recovered` with its own key, and closes. Returns the file's lines.
 */
async function crashThenRecover(at: string, first: TestKeys, second: TestKeys, events = 7): Promise<string[]> {
  const { cpSync, rmSync } = await import('node:fs');
  const file = join(at, 'audit.jsonl');
  const config = (k: TestKeys, name: string) =>
    auditConfig(at, {
      chain: { checkpointEvery: 5, checkpointIntervalMs: 60_000, signingKey: writeKey(join(at, name), k) },
    });
  const { mkdirSync } = await import('node:fs');
  mkdirSync(join(at, 'k1'), { recursive: true });
  mkdirSync(join(at, 'k2'), { recursive: true });
  const log = await createAuditLog(config(first, 'k1'), { logger: silentLogger(), orphanDrainDelayMs: false });
  for (let i = 0; i < events; i++) log.record({ action: 'payment.refund', subject: `user${i}`, tenant: 'acme' });
  await log.flush();
  cpSync(join(at, 'wal'), join(at, 'wal-crashed'), { recursive: true });
  cpSync(file, join(at, 'audit-crashed.jsonl'));
  await log.close();
  rmSync(join(at, 'wal'), { recursive: true });
  cpSync(join(at, 'wal-crashed'), join(at, 'wal'), { recursive: true });
  rmSync(join(at, 'wal', 'slot-0', 'lock'), { force: true });
  cpSync(join(at, 'audit-crashed.jsonl'), file);
  const next = await createAuditLog(config(second, 'k2'), { logger: silentLogger(), orphanDrainDelayMs: false });
  await next.close();
  return readFileSync(file, 'utf8').trim().split('\n');
}

describe('self-declared keys (no --public-key): every checkpoint must verify with the key its writer declares', () => {
  const checkpointOf = (records: Rec[], chain: string) =>
    records.findIndex((r) => r['chain'] === chain && r['kind'] === 'checkpoint' && r['final'] === false);

  it('an unsigned checkpoint in a chain that declares a key is an error', () => {
    const records = recs();
    const i = checkpointOf(records, chainA);
    (records[i] as Rec)['sig'] = null;
    const report = verifyLines(rechain(records, null));
    expect(report.firstBad).toMatchObject({ code: 'checkpoint.unsigned', severity: 'error', id: records[i]?.['id'] });
  });

  it('a checkpoint under a key id the chain does not declare is an error', () => {
    const records = recs();
    const i = checkpointOf(records, chainB);
    (records[i] as Rec)['keyId'] = 'made-up';
    const report = verifyLines(rechain(records, null));
    expect(report.firstBad).toMatchObject({ code: 'checkpoint.unverified', severity: 'error', id: records[i]?.['id'] });
    // (The close seal after it no longer verifies either: rechaining moved its head.)
    expect(codes(report)).toEqual(['checkpoint.unverified', 'checkpoint.bad_signature']);
  });

  it('a made-up recovered seal (the tail after the last checkpoint cut or edited): error with sealed, a warning without', () => {
    const records = recs();
    const last = records.length - 1; // chain B's close seal
    const cp = checkpointOf(records, chainB);
    const kept = records.slice(0, cp + 2); // the last checkpoint and one record after it
    const tail = kept[kept.length - 1] as Rec;
    const forged: Rec = {
      ...(records[last] as Rec),
      count: Number(tail['n']) + 1,
      n: Number(tail['n']) + 1,
      head: tail['hash'],
      prev: tail['hash'],
      reason: 'recovered',
      keyId: 'k-forged',
      sig: 'AAAA',
    };
    const lines = [...kept.map(rawLine), lineOf(forged)];
    const open = verifyLines(lines);
    expect(open.ok).toBe(true);
    expect(open.issues).toContainEqual(
      expect.objectContaining({ code: 'checkpoint.unverified', severity: 'warning', id: forged['id'] }),
    );
    const sealed = verifyLines(lines, { sealed: true });
    expect(sealed.firstBad).toMatchObject({ code: 'checkpoint.unverified', severity: 'error', id: forged['id'] });
    // With the trusted key it is what it is: a forgery.
    expect(verifyLines(lines, { publicKeys: [keys.publicPem] }).firstBad).toMatchObject({
      code: 'checkpoint.untrusted_key',
      id: forged['id'],
    });
  });

  describe('a genuine recovered seal, signed by the successor with its own key', () => {
    let crashed: string[];
    let second: TestKeys;
    beforeAll(async () => {
      second = ed25519Keys();
      const at = join(dir, 'crash');
      const { mkdirSync } = await import('node:fs');
      mkdirSync(at);
      crashed = await crashThenRecover(at, keys, second);
    });

    it('verifies, self-declared and against both trusted keys', () => {
      const records = parseLines(crashed);
      const seal = records.find((r) => r['reason'] === 'recovered') as Rec;
      expect(seal).toMatchObject({ final: true, keyId: second.keyId });
      expect(records[0]?.['keyId']).toBe(keys.keyId);
      const self = verifyLines(crashed, { sealed: true });
      expect(self.issues.filter((i) => i.code !== 'verify.unanchored')).toEqual([]);
      expect(self.chains.map((c) => c.sealed)).toEqual(['recovered', 'close']);
      expect(verifyLines(crashed, { sealed: true, publicKeys: [keys.publicPem, second.publicPem] }).issues).toEqual([]);
    });

    it('the same seal unsigned, or re-keyed, is an error: its writer declares key 2', () => {
      for (const edit of [(r: Rec) => void (r['sig'] = null), (r: Rec) => void (r['keyId'] = keys.keyId)]) {
        const records = parseLines(crashed);
        const seal = records.find((r) => r['reason'] === 'recovered') as Rec;
        edit(seal);
        const report = verifyLines(rechain(records, null));
        // The successor's own checkpoints no longer verify (rechaining moved their heads); the seal is named as well.
        const onSeal = report.issues.filter((x) => x.id === seal['id']);
        expect(onSeal).toEqual([expect.objectContaining({ severity: 'error' })]);
        expect(['checkpoint.unsigned', 'checkpoint.bad_signature']).toContain(onSeal[0]?.code);
      }
    });
  });
});

describe('checkpoints stripped from a chain (its start record says how often its writer checkpoints)', () => {
  /** Chain B with record n=8 edited, every checkpoint removed, the rest renumbered and rehashed. */
  const stripped = (edit: (start: Rec) => void = () => {}) => {
    const records = recs();
    const a = records.filter((r) => r['chain'] === chainA);
    const b = records.filter((r) => r['chain'] === chainB && r['kind'] !== 'checkpoint');
    (records.find((r) => r['chain'] === chainB && r['n'] === 8) as Rec)['subject'] = 'mallory';
    b.forEach((r, n) => (r['n'] = n));
    edit(b[0] as Rec);
    return { lines: rechain([...a, ...b], null), sixth: b[5] as Rec };
  };

  it('the start record carries the policy', () => {
    const start = recs().find((r) => r['kind'] === 'start') as Rec;
    expect(start['checkpoint']).toEqual({ every: 5, intervalMs: 60_000 });
  });

  it.each(['file', 'sqlite'] as const)(
    'edit, rehash, strip every checkpoint, renumber: checkpoint.missing in %s',
    async (kind) => {
      const { lines, sixth } = stripped();
      const report = await verifyIn(kind, lines);
      expect(report.ok).toBe(false);
      expect(report.firstBad).toMatchObject({ code: 'checkpoint.missing', chain: chainB, n: 5, id: sixth['id'] });
      expect(codes(report)).toEqual(['checkpoint.missing']);
    },
  );

  it('an open tail no longer than the policy allows is not a missing checkpoint', () => {
    const records = recs();
    const lastCheckpointB = records.findLastIndex((r) => r['chain'] === chainB && r['kind'] === 'checkpoint' && !r['final']);
    const cut = records.slice(0, lastCheckpointB + 1 + 4).map(rawLine); // the 4 events after it (5 would need a checkpoint)
    const report = verifyLines(cut, { publicKeys: [keys.publicPem] });
    expect(report.issues.map((i) => i.code)).toEqual(['chain.open']);
  });

  it('a start record without a policy (written before policies were recorded) is unknown, not an error', () => {
    const { lines } = stripped((start) => delete start['checkpoint']);
    const report = verifyLines(lines, { publicKeys: [keys.publicPem] });
    expect(report.ok).toBe(true);
    expect(report.issues.map((i) => i.code)).toEqual(['chain.open']);
  });

  it('checkpointEvery: 1 (the start and the first event share a run) verifies intact', async () => {
    const { mkdirSync } = await import('node:fs');
    const at = join(dir, 'every1');
    mkdirSync(at);
    const log = await createAuditLog(
      auditConfig(at, { chain: { checkpointEvery: 1, checkpointIntervalMs: 60_000, signingKey: writeKey(at, keys) } }),
      { logger: silentLogger(), orphanDrainDelayMs: false },
    );
    for (let i = 0; i < 3; i++) log.record({ action: 'payment.refund', subject: `user${i}` });
    await log.close();
    const lines = readFileSync(join(at, 'audit.jsonl'), 'utf8').trim().split('\n');
    expect(parseLines(lines).map((r) => r['kind'])).toEqual([
      'start',
      'event',
      'checkpoint',
      'event',
      'checkpoint',
      'event',
      'checkpoint',
      'checkpoint',
    ]);
    expect(verifyLines(lines, { publicKeys: [keys.publicPem], sealed: true }).issues).toEqual([]);
  });
});

describe('exact duplicates: tolerated only as an at-least-once replay re-sends them', () => {
  /** The genuine lines with `extra` (indexes into them) inserted before index `at`. */
  const withCopies = (at: number, extra: number[]) => {
    const lines = [...genuine];
    lines.splice(at, 0, ...extra.map((k) => genuine[k] as string));
    return lines;
  };
  const idAt = (k: number) => String(parseLines([genuine[k] as string])[0]?.['id']);

  it('a replay re-sending up to the newest record, also one interrupted and started again, is counted', () => {
    const once = verifyLines(withCopies(10, [6, 7, 8, 9]), { publicKeys: [keys.publicPem], sealed: true });
    expect(once.ok).toBe(true);
    expect(once.duplicates).toBe(4);
    expect(once.issues.map((i) => `${i.severity} ${i.code}`)).toEqual(['warning record.duplicate']);
    // Crash in the middle of the replay (6, 7), the next one re-sends from a cursor the first had saved (7…9).
    const twice = verifyLines(withCopies(10, [6, 7, 7, 8, 9]), { publicKeys: [keys.publicPem], sealed: true });
    expect(twice.ok).toBe(true);
    expect(twice.duplicates).toBe(5);
  });

  it('copies that stop short of the newest record (the chain goes on after them) are an error', () => {
    const report = verifyLines(withCopies(10, [6, 7]), { publicKeys: [keys.publicPem] });
    expect(report.ok).toBe(false);
    expect(report.firstBad).toMatchObject({ code: 'record.duplicate', severity: 'error', id: idAt(6), position: 'line 11' });
  });

  it('a copy of an older record jumping forward, or anywhere no replay goes, is an error', () => {
    const forward = verifyLines(withCopies(10, [6, 8, 9]), { publicKeys: [keys.publicPem] });
    expect(forward.firstBad).toMatchObject({ code: 'record.duplicate', severity: 'error', id: idAt(8) });
    const backward = verifyLines(withCopies(10, [7, 8, 6, 7, 8, 9]), { publicKeys: [keys.publicPem] });
    expect(backward.firstBad).toMatchObject({ code: 'record.duplicate', severity: 'error', id: idAt(6) });
  });

  it('a copy at the very end is a replay in progress, unless every writer is stopped (--sealed)', async () => {
    const lines = [...genuine, genuine[3] as string];
    expect(verifyLines(lines, { publicKeys: [keys.publicPem] }).ok).toBe(true);
    const sealed = verifyLines(lines, { publicKeys: [keys.publicPem], sealed: true });
    expect(sealed.firstBad).toMatchObject({ code: 'record.duplicate', severity: 'error', id: idAt(3) });
    const report = await verifyIn('file', withCopies(10, [6, 7]));
    expect(report.firstBad).toMatchObject({ code: 'record.duplicate', id: idAt(6) });
    expect(report.firstBad?.position).toMatch(/\.jsonl:11$/);
  });

  it('sqlite, which keeps each id once: any copy is an error, even one shaped like a replay', async () => {
    const { source } = await writeStore('sqlite', genuine, dir);
    const { openSqlite } = await import('../../src/audit/drivers.js');
    const db = openSqlite(source['sqlite'] as string);
    // The attacker's way in: a copy of the table without the unique constraint.
    db.exec(`CREATE TABLE copy AS SELECT * FROM audit_events;
      INSERT INTO copy SELECT pos + 1000, id, chain, n, ts, kind, subject, tenant, decision, route, action, status, request_id, record
        FROM audit_events WHERE pos = (SELECT max(pos) FROM audit_events);
      DROP TABLE audit_events; ALTER TABLE copy RENAME TO audit_events;`);
    db.close();
    const report = await verifyAudit(source as never, { publicKeys: [keys.publicPem] });
    expect(report.firstBad).toMatchObject({ code: 'record.duplicate', severity: 'error', id: idAt(genuine.length - 1) });
  });
});

describe('a whole chain deleted (three restarts on one slot: chains A → B → C)', () => {
  let three: string[];
  let ids: string[];
  beforeAll(async () => {
    const { mkdirSync } = await import('node:fs');
    const at = join(dir, 'three');
    mkdirSync(at);
    const config = auditConfig(at, {
      chain: { checkpointEvery: 5, checkpointIntervalMs: 60_000, signingKey: writeKey(at, keys) },
    });
    for (let run = 0; run < 3; run++) {
      const log = await createAuditLog(config, { logger: silentLogger(), orphanDrainDelayMs: false });
      for (let i = 0; i < 3; i++) log.record({ action: 'payment.refund', subject: `user${run}-${i}` });
      await log.close();
    }
    three = readFileSync(join(at, 'audit.jsonl'), 'utf8').trim().split('\n');
    ids = [...new Set(parseLines(three).map((r) => String(r['chain'])))];
    expect(ids).toHaveLength(3);
  });
  const without = (...chains: number[]) => three.filter((l) => !chains.some((c) => (JSON.parse(l) as Rec)['chain'] === ids[c]));

  it.each(['file', 'sqlite'] as const)('B deleted while the older A is still there: chain.deleted on C in %s', async (kind) => {
    const lines = without(1);
    const startC = parseLines(lines).find((r) => r['chain'] === ids[2] && r['kind'] === 'start') as Rec;
    const report = await verifyIn(kind, lines);
    expect(report.ok).toBe(false);
    expect(report.firstBad).toMatchObject({ code: 'chain.deleted', severity: 'error', chain: ids[2], id: startC['id'], n: 0 });
    expect(codes(report)).toEqual(['chain.deleted']);
  });

  it('two gateways on one host (own WAL directories, both slot 0) sharing a store the first joined late: a warning, not chain.deleted', async () => {
    const { mkdirSync } = await import('node:fs');
    const base = join(dir, 'two-gateways');
    const run = async (name: string) => {
      const at = join(base, name);
      mkdirSync(at, { recursive: true });
      const log = await createAuditLog(auditConfig(at), { logger: silentLogger(), orphanDrainDelayMs: false });
      log.record({ action: 'payment.refund', subject: name });
      await log.close();
      return readFileSync(join(at, 'audit.jsonl'), 'utf8').trim().split('\n');
    };
    await run('x'); // X's first chain: written before X's sink joined the shared store
    const y = await run('y');
    const x = (await run('x')).slice(-3); // X's second chain only (start, event, seal)
    const report = verifyLines([...y, ...x], { sealed: true });
    expect(report.ok).toBe(true);
    const chainIssues = report.issues.filter((i) => i.code.startsWith('chain.'));
    expect(chainIssues.map((i) => `${i.severity} ${i.code}`)).toEqual(['warning chain.predecessor_missing']);
  });

  it("two workers sharing one file: one's replay after a crash, interleaved with the other's new lines, is a replay", async () => {
    const { mkdirSync } = await import('node:fs');
    const at = join(dir, 'shared-file');
    mkdirSync(at, { recursive: true });
    const open = (name: string) =>
      createAuditLog(auditConfig(at, { sinks: [{ file: { path: join(at, `${name}.jsonl`), rotateBytes: 0 } }] }), {
        logger: silentLogger(),
        orphanDrainDelayMs: false,
      });
    const [a, b] = await Promise.all([open('a'), open('b')]); // slots 0 and 1 of one WAL directory
    for (let i = 0; i < 4; i++) {
      a.record({ action: 'payment.refund', subject: `a${i}` });
      b.record({ action: 'payment.refund', subject: `b${i}` });
    }
    await Promise.all([a.close(), b.close()]);
    const linesOf = (name: string) =>
      readFileSync(join(at, `${name}.jsonl`), 'utf8')
        .trim()
        .split('\n');
    const [la, lb] = [linesOf('a'), linesOf('b')];
    // A's sink re-sends from its cursor (record 2 on) after a crash, while B keeps writing into the same file.
    const shared = [...la, lb[0]!, lb[1]!];
    for (let i = 2; i < la.length; i++) shared.push(la[i]!, ...(i < lb.length ? [lb[i]!] : []));
    shared.push(...lb.slice(la.length));
    const report = verifyLines(shared, { sealed: true });
    expect(report.issues.filter((i) => i.severity === 'error')).toEqual([]);
    expect(report.ok).toBe(true);
  });

  it('the oldest chains gone (pruning) stay a warning; the newest gone cannot be told from the records', () => {
    for (const pruned of [without(0), without(0, 1)]) {
      const report = verifyLines(pruned, { publicKeys: [keys.publicPem], sealed: true });
      expect(report.ok).toBe(true);
      expect(report.issues.map((i) => `${i.severity} ${i.code}`)).toEqual(['warning chain.predecessor_missing']);
    }
    expect(verifyLines(without(2), { publicKeys: [keys.publicPem], sealed: true }).issues).toEqual([]);
    // …except against an anchor kept elsewhere (the gateway logs every final checkpoint).
    const sealC = parseLines(three).at(-1) as Rec;
    const anchored = verifyLines(without(2), {
      publicKeys: [keys.publicPem],
      anchors: [{ chain: ids[2] as string, n: Number(sealC['n']), hash: String(sealC['hash']) }],
    });
    expect(codes(anchored)).toEqual(['anchor.chain_missing']);
  });
});
