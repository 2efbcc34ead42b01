/**
 * `verifyAudit`: checks every chain in a store and names the first bad record.
 *
 * What is checked, per record in storage order (file line order, table `pos`):
 * - its `hash` is SHA-256 of its canonical JSON (RFC 8785) without `hash`
 *   → a modified record (`record.hash_mismatch`);
 * - the stored text is exactly what the writer stores: that canonical JSON with
 *   `"hash"` appended last (`record.not_canonical`). Text that parses to the same
 *   value but differs — a member named twice (JSON.parse keeps the last, other
 *   readers the first), spacing, escapes, member order — is an edit. A file
 *   with CRLF line ends still verifies: the file reader takes `\r\n` as the end
 *   of a line; any other stray byte is not canonical. SQL stores keep the line
 *   in a TEXT column and are checked the same way;
 * - in its chain, `n` is the previous record's `n` + 1 and `prev` its hash
 *   → deleted (`record.missing`), inserted or reordered (`record.out_of_order`,
 *   `record.prev_mismatch`) records; a chain must begin at n = 0 with a `start`
 *   record (`chain.head_missing`) unless `allowPartial`;
 * - SQL stores: the indexed columns equal the record's fields
 *   (`record.column_mismatch`: a query by subject must not be lied to);
 * - checkpoints: `count`/`head` match their position, and the Ed25519
 *   signature verifies — against the trusted `publicKeys` when given
 *   (`checkpoint.untrusted_key`, `checkpoint.bad_signature`), else against the
 *   key the chain's own start record declares (which only catches clumsy
 *   tampering: someone rewriting the whole store can declare their own key —
 *   reported as the warning `verify.unanchored`). Self-declared, a chain that
 *   declares a key must have every checkpoint its writer wrote signed by it
 *   (`checkpoint.unsigned`, `checkpoint.unverified` are then errors); its
 *   `recovered` seal, written by the next process on the slot, by the key that
 *   successor declares (or its own). A seal no key in the store can check (its
 *   successor is missing) is the warning `checkpoint.unverified`, an error
 *   with `sealed`;
 * - no more records follow a checkpoint (or the start) than the checkpoint
 *   policy in the chain's start record lets its writer write before the next
 *   one (`checkpoint.missing`: checkpoints were removed). Start records from
 *   before the policy was recorded are not checked. Record timestamps are not
 *   used: they are when events were queued, and a backed-up queue puts events
 *   far apart between two checkpoints legitimately;
 * - nothing follows a chain's final checkpoint (`record.after_seal`);
 * - event `seq` numbers are consecutive, gap markers accounting for drops.
 *
 * Truncation — records removed from the end of a chain — leaves a valid
 * prefix, so it shows only against something that remembers the end:
 * - a chain's final checkpoint (written on close, or by the next process on the
 *   same WAL slot after a crash): without it the chain is *open*. An open chain
 *   is a warning (`chain.open`: its writer may be running, or crashed and not
 *   restarted yet) that says how many records follow its last signed checkpoint
 *   — those are the ones that could be cut without trace. With `sealed: true`
 *   (stores whose writers are all stopped) it is an error (`chain.unsealed`);
 * - the next chain's start record, which names its predecessor's last record
 *   (n and hash): a predecessor that ends earlier or differently is
 *   `chain.truncated`, an error, even when the seal itself was cut;
 * - `anchors` (chain, n, hash) taken from elsewhere (the gateway logs each
 *   final checkpoint's head): a chain that ends before an anchor, or has another
 *   hash there, is `chain.truncated` / `anchor.mismatch`.
 * - a successor's predecessor missing is a warning (`chain.predecessor_missing`:
 *   pruned, or written before the sink existed), but an error (`chain.deleted`)
 *   when an older chain of the same host and slot, which nothing follows, is
 *   still in the store: pruning removes the oldest first.
 * Not detectable from the store alone: cutting the newest chain's unsigned tail
 * together with everything after it while its writer is down, deleting the
 * newest chain of a slot, or one worker's every chain in a shared store — only
 * an anchor kept elsewhere can show that.
 *
 * Gap markers (events dropped under `whenFull: drop`) are reported as gaps,
 * not as tampering. Exact duplicates of a record are counted, and tolerated
 * only where an at-least-once replay into a file produces them: after a
 * restart, the WAL re-sent from the sink's saved cursor repeats records the
 * file has, in order, up to the newest one it had (see StreamState). Copies
 * anywhere else, or cut short, are the error `record.duplicate`; so is any copy
 * in a SQL store (a unique id constraint: it cannot hold one).
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { GENESIS_HASH, hashInput, sha256Hex, signatureInput, storedLineOf } from './chain.js';
import { keyFingerprint, loadPublicKey, verifyBytes } from './keys.js';
import { INDEXED_COLUMNS, indexedColumns } from './sinks/sink.js';
import { describeSource, readSource, type AuditSource, type SourceRow } from './sources.js';

export type VerifySeverity = 'error' | 'warning';

export interface VerifyIssue {
  code: string;
  severity: VerifySeverity;
  message: string;
  chain?: string;
  n?: number;
  id?: string;
  /** Where the record is: `audit.jsonl:12`, `pos 1234`. */
  position?: string;
}

export interface GapReport {
  chain: string;
  n: number;
  id: string;
  dropped: number;
  fromSeq: number;
  toSeq: number;
  firstTs: string;
  lastTs: string;
  position: string;
}

export interface ChainReport {
  chain: string;
  records: number;
  firstN: number;
  lastN: number;
  lastHash: string;
  host: string | null;
  pid: number | null;
  startedAt: string | null;
  checkpoints: number;
  lastCheckpointN: number | null;
  /** Ended by a final checkpoint: `close` (clean) or `recovered` (sealed by the next process). */
  sealed: 'close' | 'recovered' | null;
  /** Records after the last checkpoint: not covered by any signature. */
  unsignedTail: number;
  droppedEvents: number;
  intact: boolean;
  firstBad: VerifyIssue | null;
}

export interface VerifyReport {
  /** No errors (warnings allowed). */
  ok: boolean;
  source: string;
  records: number;
  chains: ChainReport[];
  gaps: GapReport[];
  duplicates: number;
  /** How checkpoint signatures were checked. */
  signatures: 'trusted' | 'self-declared' | 'unsigned' | 'none';
  errors: number;
  warnings: number;
  /** Errors and warnings, in the order found (storage order, then end-of-store checks). At most `maxIssues`. */
  issues: VerifyIssue[];
  /** The first error: the first bad record. */
  firstBad: VerifyIssue | null;
}

export interface VerifyOptions {
  /** Trusted Ed25519 public keys (PEM text, PEM file paths, or KeyObjects). */
  publicKeys?: readonly (string | KeyObject)[];
  /** Every chain must end in a final checkpoint (all writers stopped). */
  sealed?: boolean;
  /**
   * Every chain must hold a checkpoint signed by a trusted key (`publicKeys`): a chain made up
   * whole, which no checkpoint vouches for, is then an error, not a `chain.open` warning. For
   * stores whose chains have each reached a checkpoint (their writers checkpoint every
   * `checkpointEvery` records or `checkpointIntervalMs`).
   */
  requireSigned?: boolean;
  /** Chains may start after n = 0 (older records pruned or in files not given). */
  allowPartial?: boolean;
  /** Known (chain, n, hash) points the store must contain. */
  anchors?: readonly { chain: string; n: number; hash: string }[];
  /** Issues kept in the report (counting goes on). Default 1000. */
  maxIssues?: number;
}

const HEX64 = /^[0-9a-f]{64}$/;
const KINDS = new Set(['request', 'event', 'gap', 'checkpoint', 'start']);
/** Recent (n → hash) kept per chain to recognize exact duplicates from a replay. */
const DUPLICATE_WINDOW = 8192;

/**
 * Where a file stream is in the replay pattern. The file sink writes WAL entries in WAL order; after a restart
 * whose resume point could not be used, the WAL is re-sent from the sink's saved cursor, which lags what the
 * file holds: the file then repeats a block of records it already has, up to the newest one it had, and goes
 * on from there. Each record gets the position (`pos`) it first appeared at; a duplicate must either go on
 * from the previous one (`cur + 1`) or jump back (a restart re-sending from its cursor: not before where the
 * replay in progress started, as cursors only move forward), and a new record may only come once the replay
 * has reached the newest record (`cur === high`).
 */
interface StreamState {
  high: number;
  cur: number;
  /** Where the replay in progress jumped back to (null: none). */
  floor: number | null;
  /** The first duplicate of the replay in progress. */
  replayStart: Where | null;
  /** hash → position it first appeared at (recent ones). */
  positions: Map<string, number>;
}

/** Record positions kept per stream to follow a replay (a replay re-sends at most what the cursor lags). */
const REPLAY_WINDOW = 65_536;

/** Where a record is, spread into the issues about it. */
interface Where {
  chain: string;
  n: number;
  position: string;
  id?: string;
}

interface ChainState {
  report: ChainReport;
  lastKind: string;
  final: boolean;
  expectSeq: number | null;
  /** What the chain's start record declares (null until it is seen): its key, or none (`keyId` null). */
  declared: { key: KeyObject | null; keyId: string | null } | null;
  /**
   * Most records (start included) that may follow a checkpoint, or the start, before the next checkpoint: from the
   * policy the start record declares (null: unknown — no start record, or one written before policies were recorded).
   */
  checkpointLimit: number | null;
  /** `checkpoint.missing` reported for the current run of records without a checkpoint. */
  missingReported: boolean;
  /** The chain's `recovered` seal, checked once its successor (who wrote it) has been seen. */
  seal: { at: Where; sig: string | null; keyId: unknown; input: string } | null;
  after: { chain: string; n: number; hash: string } | null;
  recent: Map<number, string>;
  unsignedWarned: boolean;
  /** Checkpoints whose signature verified with a trusted key (`publicKeys`). */
  trustedCheckpoints: number;
  lastPosition: string;
  lastId: string;
  /** `ts` of the chain's last record. */
  lastTs: string;
  /** From the start record: its slot, its WAL directory's id, and where the start record is. */
  slot: number | null;
  wal: string | null;
  startAt: Where | null;
  fork: Fork | null;
}

interface ForkSide {
  hash: string;
  id: string;
  position: string;
}

/** Two records with one `n`, both linked to the record before. */
interface Fork {
  n: number;
  first: ForkSide;
  second: ForkSide;
}

class Verifier {
  readonly #options: VerifyOptions;
  readonly #trusted: { key: KeyObject; keyId: string }[];
  readonly #chains = new Map<string, ChainState>();
  readonly #gaps: GapReport[] = [];
  readonly #issues: VerifyIssue[] = [];
  readonly #anchors: Map<string, { chain: string; n: number; hash: string; seen: boolean }>;
  #errors = 0;
  #warnings = 0;
  #firstBad: VerifyIssue | null = null;
  #records = 0;
  #duplicates = 0;
  #replayWarned = false;
  readonly #streams = new Map<string, StreamState>();
  #selfDeclared = false;
  #trustedChecked = false;
  #unsigned = false;

  constructor(options: VerifyOptions) {
    this.#options = options;
    this.#trusted = (options.publicKeys ?? []).map((k) =>
      typeof k === 'string' ? loadPublicKey(k) : { key: k, keyId: keyFingerprint(k) },
    );
    this.#anchors = new Map((options.anchors ?? []).map((a) => [`${a.chain}\u0000${a.n}`, { ...a, seen: false }]));
  }

  #issue(issue: VerifyIssue, state?: ChainState): void {
    if (issue.severity === 'error') {
      this.#errors++;
      this.#firstBad ??= issue;
      if (state !== undefined) {
        state.report.intact = false;
        state.report.firstBad ??= issue;
      }
    } else {
      this.#warnings++;
    }
    if (this.#issues.length < (this.#options.maxIssues ?? 1000)) this.#issues.push(issue);
  }

  #stateFor(chain: string, n: number): ChainState {
    let state = this.#chains.get(chain);
    if (state === undefined) {
      state = {
        report: {
          chain,
          records: 0,
          firstN: n,
          lastN: n - 1,
          lastHash: '',
          host: null,
          pid: null,
          startedAt: null,
          checkpoints: 0,
          lastCheckpointN: null,
          sealed: null,
          unsignedTail: 0,
          droppedEvents: 0,
          intact: true,
          firstBad: null,
        },
        lastKind: '',
        final: false,
        expectSeq: n === 0 ? 1 : null,
        declared: null,
        seal: null,
        checkpointLimit: null,
        missingReported: false,
        after: null,
        recent: new Map(),
        unsignedWarned: false,
        trustedCheckpoints: 0,
        lastPosition: '',
        lastId: '',
        lastTs: '',
        slot: null,
        wal: null,
        startAt: null,
        fork: null,
      };
      this.#chains.set(chain, state);
    }
    return state;
  }

  row(row: SourceRow): void {
    this.#records++;
    let record: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(row.line);
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
      record = parsed as Record<string, unknown>;
    } catch {
      this.#issue({
        code: 'record.unparsable',
        severity: 'error',
        message: 'not a JSON record (edited or corrupted)',
        position: row.position,
      });
      return;
    }
    const { chain, n, hash, prev, id, kind } = record;
    const where = { position: row.position, ...(typeof id === 'string' ? { id } : {}) };
    if (
      typeof chain !== 'string' ||
      typeof n !== 'number' ||
      !Number.isInteger(n) ||
      n < 0 ||
      typeof hash !== 'string' ||
      !HEX64.test(hash) ||
      typeof prev !== 'string' ||
      !HEX64.test(prev) ||
      typeof id !== 'string' ||
      typeof kind !== 'string' ||
      !KINDS.has(kind) ||
      record['v'] !== 1
    ) {
      this.#issue({ code: 'record.malformed', severity: 'error', message: 'missing or invalid chain fields', ...where });
      return;
    }
    const state = this.#stateFor(chain, n);
    const at = { chain, n, ...where };

    // Content against its own hash.
    let contentOk = true;
    let canonical: string | null;
    try {
      canonical = hashInput(record);
    } catch {
      canonical = null;
    }
    if (canonical === null || sha256Hex(canonical) !== hash) {
      contentOk = false;
      this.#issue(
        {
          code: 'record.hash_mismatch',
          severity: 'error',
          message: 'content does not match its hash: the record was modified',
          ...at,
        },
        state,
      );
    } else if (row.line !== storedLineOf(canonical, hash)) {
      // The writer stores exactly the canonical bytes (hash last). Other bytes that parse to the same value — a
      // member twice (JSON.parse keeps the last, other readers the first), spacing, escapes, key order — are an edit.
      contentOk = false;
      this.#issue(
        {
          code: 'record.not_canonical',
          severity: 'error',
          message:
            'the stored text is not the canonical JSON the writer stores (a duplicate member, other spacing, escapes or order): edited',
          ...at,
        },
        state,
      );
    }

    // Indexed columns against the record.
    if (row.columns !== undefined) {
      const expected = indexedColumns(record);
      // Stores written before columns were cut (indexedText) hold the whole value: also right.
      const differing = INDEXED_COLUMNS.filter(
        (c) =>
          expected[c] !== row.columns?.[c] && !(typeof expected[c] === 'string' && rawColumn(record, c) === row.columns?.[c]),
      );
      if (differing.length > 0)
        this.#issue(
          {
            code: 'record.column_mismatch',
            severity: 'error',
            message: `column${differing.length > 1 ? 's' : ''} ${differing.join(', ')} disagree${differing.length > 1 ? '' : 's'} with the record`,
            ...at,
          },
          state,
        );
    }

    // Position in the chain.
    const report = state.report;
    let linked = true;
    let advance = true;
    if (report.records === 0) {
      if (n !== 0) {
        linked = false;
        this.#issue(
          {
            code: 'chain.head_missing',
            severity: this.#options.allowPartial === true ? 'warning' : 'error',
            message: `the chain starts at n=${n}: records 0..${n - 1} are not in this store`,
            ...at,
          },
          state,
        );
      } else if (prev !== GENESIS_HASH || kind !== 'start') {
        linked = false;
        this.#issue(
          {
            code: 'chain.bad_genesis',
            severity: 'error',
            message: 'the first record of a chain must be a start record with a zero prev',
            ...at,
          },
          state,
        );
      }
    } else {
      const expected = report.lastN + 1;
      const fork = state.fork;
      if (fork !== null) {
        state.fork = null;
        // The record after a fork links to the genuine one of the two: the other was inserted.
        if (n === fork.n + 1 && prev === fork.second.hash) this.#inserted(fork, fork.first, state);
        else if (n === fork.n + 1 && prev === fork.first.hash) {
          this.#inserted(fork, fork.second, state);
          report.lastHash = fork.first.hash;
        } else this.#conflict(fork, state);
      }
      if (n < expected) {
        if (state.recent.get(n) === hash && contentOk) {
          this.#duplicate(row, hash, state, at);
          return;
        }
        linked = false;
        if (n === report.lastN && fork === null && contentOk && prev === state.recent.get(n - 1)) {
          // Two records claim one place, both linked to the record before: one was inserted. Decided by the next record.
          state.fork = {
            n,
            first: { hash: report.lastHash, id: state.lastId, position: state.lastPosition },
            second: { hash, id, position: row.position },
          };
        } else {
          advance = false; // keep the head: the rest of the chain still links to it
          this.#issue(
            {
              code: 'record.out_of_order',
              severity: 'error',
              message: `n=${n} found after n=${report.lastN}: records were reordered, or a record was inserted`,
              ...at,
            },
            state,
          );
        }
      } else if (n > expected) {
        linked = false;
        this.#issue(
          {
            code: 'record.missing',
            severity: 'error',
            message: `records n=${expected}${n - 1 > expected ? `..${n - 1}` : ''} are missing before this one: deleted (or moved)`,
            ...at,
          },
          state,
        );
      } else if (prev !== report.lastHash) {
        linked = false;
        this.#issue(
          {
            code: 'record.prev_mismatch',
            severity: 'error',
            message: `prev is not the hash of record n=${report.lastN} (${state.lastPosition}): a record was modified and rehashed, replaced or inserted`,
            ...at,
          },
          state,
        );
      }
      if (state.final && n >= expected) {
        this.#issue(
          { code: 'record.after_seal', severity: 'error', message: "records after the chain's final checkpoint", ...at },
          state,
        );
        state.final = false;
      }
    }
    if (row.columns === undefined) this.#fresh(this.#streamOf(row, state), hash);
    report.records++;
    if (!advance) return;

    // Kind-specific checks.
    if (kind === 'start') this.#start(record, state, at);
    else if (kind === 'checkpoint') this.#checkpoint(record, state, at);
    else if (kind === 'gap') {
      const gap = {
        chain,
        n,
        id,
        dropped: Number(record['dropped']),
        fromSeq: Number(record['fromSeq']),
        toSeq: Number(record['toSeq']),
        firstTs: String(record['firstTs']),
        lastTs: String(record['lastTs']),
        position: row.position,
      };
      this.#gaps.push(gap);
      report.droppedEvents += gap.dropped;
      this.#seq(state, gap.fromSeq, gap.toSeq, linked && contentOk, at);
    } else {
      const seq = record['seq'];
      if (typeof seq === 'number') this.#seq(state, seq, seq, linked && contentOk, at);
    }
    if (kind !== 'checkpoint') {
      report.unsignedTail++;
      // By position, so a second record claiming one place (reported on its own) is not counted twice.
      const since = report.lastCheckpointN === null ? n + 1 : n - report.lastCheckpointN;
      if (state.checkpointLimit !== null && since > state.checkpointLimit && !state.missingReported) {
        state.missingReported = true;
        this.#issue(
          {
            code: 'checkpoint.missing',
            severity: 'error',
            message: `${since} records since ${
              report.lastCheckpointN === null ? 'the start' : `the checkpoint at n=${report.lastCheckpointN}`
            } without a checkpoint, where the chain's writer writes one after every ${state.checkpointLimit}: checkpoints were removed`,
            ...at,
          },
          state,
        );
      }
    }

    // Anchors from outside.
    if (this.#anchors.size > 0) {
      const anchor = this.#anchors.get(`${chain}\u0000${n}`);
      if (anchor !== undefined) {
        anchor.seen = true;
        if (anchor.hash !== hash)
          this.#issue(
            { code: 'anchor.mismatch', severity: 'error', message: `hash differs from the anchor ${anchor.hash}`, ...at },
            state,
          );
      }
    }

    // Advance (from a bad record too, so later independent damage is reported on its own).
    report.lastN = n;
    report.lastHash = hash;
    state.lastKind = kind;
    state.lastPosition = row.position;
    state.lastId = id;
    if (typeof record['ts'] === 'string') state.lastTs = record['ts'];
    state.recent.set(n, hash);
    if (state.recent.size > DUPLICATE_WINDOW) state.recent.delete(state.recent.keys().next().value as number);
  }

  /**
   * A replay re-sends one WAL slot's records in order, so its pattern is followed per file and per writer
   * lineage (host, WAL directory, slot, from the chain's start record; the chain itself when that is
   * unknown): workers sharing one file interleave their lines without cutting each other's replays.
   */
  #streamOf(row: SourceRow, state: ChainState): StreamState {
    const lineage =
      state.slot === null ? `chain ${state.report.chain}` : `${state.report.host}\u0000${state.wal}\u0000${state.slot}`;
    const key = `${row.stream ?? ''}\u0000${lineage}`;
    let stream = this.#streams.get(key);
    if (stream === undefined) {
      stream = { high: 0, cur: 0, floor: null, replayStart: null, positions: new Map() };
      this.#streams.set(key, stream);
    }
    return stream;
  }

  /** A record seen for the first time: a replay in progress must have reached the newest record. */
  #fresh(stream: StreamState, hash: string): void {
    if (stream.cur !== stream.high) this.#replayCut(stream);
    stream.high++;
    stream.cur = stream.high;
    stream.floor = null;
    stream.replayStart = null;
    stream.positions.set(hash, stream.high);
    if (stream.positions.size > REPLAY_WINDOW) stream.positions.delete(stream.positions.keys().next().value as string);
  }

  #replayCut(stream: StreamState): void {
    const start = stream.replayStart;
    stream.cur = stream.high;
    stream.floor = null;
    stream.replayStart = null;
    if (start === null) return;
    this.#issue(
      {
        code: 'record.duplicate',
        severity: 'error',
        message:
          'duplicates of earlier records that stop before the newest record the store held: a replay after a restart re-sends everything from its cursor on, so these were copied in',
        ...start,
      },
      this.#chains.get(start.chain),
    );
  }

  /**
   * An exact copy of an earlier record. SQL stores deduplicate by id (a unique constraint), so any copy is an
   * error; in a file, only one that fits an at-least-once replay after a restart (see StreamState) is tolerated.
   */
  #duplicate(row: SourceRow, hash: string, state: ChainState, at: Where): void {
    this.#duplicates++;
    const error = (why: string) =>
      this.#issue(
        { code: 'record.duplicate', severity: 'error', message: `exact duplicate of an earlier record ${why}`, ...at },
        state,
      );
    if (row.columns !== undefined) {
      error('in a store that keeps each id once (the table lost its unique constraint): copied in');
      return;
    }
    const stream = this.#streamOf(row, state);
    const pos = stream.positions.get(hash);
    if (pos !== undefined && pos === stream.cur + 1) stream.cur = pos;
    else if (pos !== undefined && pos <= stream.cur && (stream.floor === null || pos >= stream.floor)) {
      stream.floor = pos;
      stream.cur = pos;
      stream.replayStart ??= at;
    } else {
      error('where no replay re-sends it (a replay goes on from the previous record or starts again from a cursor): copied in');
      return;
    }
    if (stream.cur === stream.high) {
      stream.floor = null;
      stream.replayStart = null;
    }
    if (!this.#replayWarned) {
      this.#replayWarned = true;
      this.#issue({
        code: 'record.duplicate',
        severity: 'warning',
        message: 'exact duplicate of an earlier record (an at-least-once replay); further duplicates are counted',
        ...at,
      });
    }
  }

  #inserted(fork: Fork, side: ForkSide, state: ChainState): void {
    this.#issue(
      {
        code: 'record.inserted',
        severity: 'error',
        message: `a second record claims n=${fork.n}, and the chain continues from the other one: this one was inserted`,
        chain: state.report.chain,
        n: fork.n,
        id: side.id,
        position: side.position,
      },
      state,
    );
  }

  #conflict(fork: Fork, state: ChainState): void {
    this.#issue(
      {
        code: 'record.conflict',
        severity: 'error',
        message: `two records claim n=${fork.n} (also ${fork.first.position}) and nothing tells which is genuine`,
        chain: state.report.chain,
        n: fork.n,
        id: fork.second.id,
        position: fork.second.position,
      },
      state,
    );
  }

  #seq(state: ChainState, from: number, to: number, check: boolean, at: Where): void {
    if (check && state.expectSeq !== null && from !== state.expectSeq)
      this.#issue(
        {
          code: 'record.seq_mismatch',
          severity: 'error',
          message: `event sequence jumps from ${state.expectSeq - 1} to ${from} with no gap marker`,
          ...at,
        },
        state,
      );
    state.expectSeq = to + 1;
  }

  #start(record: Record<string, unknown>, state: ChainState, at: Where): void {
    const report = state.report;
    report.host = typeof record['host'] === 'string' ? record['host'] : null;
    report.pid = typeof record['pid'] === 'number' ? record['pid'] : null;
    report.startedAt = typeof record['ts'] === 'string' ? record['ts'] : null;
    state.slot = typeof record['slot'] === 'number' ? record['slot'] : null;
    state.wal = typeof record['wal'] === 'string' ? record['wal'] : null;
    state.startAt = at;
    const pem = record['publicKey'];
    state.declared = { key: null, keyId: null };
    if (typeof pem === 'string') {
      try {
        const key = createPublicKey(pem);
        state.declared = { key, keyId: keyFingerprint(key) };
      } catch {
        state.declared = { key: null, keyId: typeof record['keyId'] === 'string' ? record['keyId'] : 'unparsable' };
        this.#issue(
          { code: 'chain.bad_public_key', severity: 'error', message: "the start record's public key does not parse", ...at },
          state,
        );
      }
    }
    state.checkpointLimit = checkpointLimit(record['checkpoint']);
    const after = record['after'];
    if (after !== null && typeof after === 'object') {
      const a = after as Record<string, unknown>;
      if (typeof a['chain'] === 'string' && typeof a['n'] === 'number' && typeof a['hash'] === 'string')
        state.after = { chain: a['chain'], n: a['n'], hash: a['hash'] };
    }
  }

  #checkpoint(record: Record<string, unknown>, state: ChainState, at: Where): void {
    const report = state.report;
    report.checkpoints++;
    report.lastCheckpointN = at.n;
    report.unsignedTail = 0;
    state.missingReported = false;
    if (record['count'] !== at.n || record['head'] !== record['prev'])
      this.#issue(
        {
          code: 'checkpoint.inconsistent',
          severity: 'error',
          message: "count/head do not match the checkpoint's position",
          ...at,
        },
        state,
      );
    const sig = record['sig'];
    const keyId = record['keyId'];
    if (sig !== null && sig !== undefined && typeof sig !== 'string') {
      this.#issue({ code: 'checkpoint.bad_signature', severity: 'error', message: 'signature is not a string', ...at }, state);
    } else if (this.#trusted.length > 0) {
      this.#trustedSignature(record, state, at, sig ?? null, keyId);
    } else if (record['reason'] === 'recovered' && record['final'] === true) {
      // Written by the next process on the slot, with its own key (which its start record declares): checked at the end.
      state.seal = { at, sig: sig ?? null, keyId, input: signatureInput(record) };
    } else if (state.declared !== null) {
      this.#declaredSignature(record, state, at, sig ?? null, keyId);
    } else if (sig === null || sig === undefined) {
      this.#unsignedWarning(state, at);
    } else {
      // A chain seen without its start record (pruned, --allow-partial): nothing declares its key.
      this.#unverifiable(
        state,
        at,
        keyId,
        record['final'] === true,
        'this chain does not declare (its start record is not in this store)',
      );
    }
    if (record['final'] === true) {
      state.final = true;
      report.sealed = record['reason'] === 'recovered' ? 'recovered' : 'close';
    }
  }

  #trustedSignature(record: Record<string, unknown>, state: ChainState, at: Where, sig: string | null, keyId: unknown): void {
    if (sig === null) {
      this.#unsigned = true;
      this.#issue(
        { code: 'checkpoint.unsigned', severity: 'error', message: 'unsigned checkpoint where signed ones are required', ...at },
        state,
      );
      return;
    }
    const trusted = this.#trusted.find((t) => t.keyId === keyId);
    if (trusted === undefined)
      this.#issue(
        {
          code: 'checkpoint.untrusted_key',
          severity: 'error',
          message: `signed by key ${String(keyId)}, not a trusted key: forged`,
          ...at,
        },
        state,
      );
    else if (!verifyBytes(trusted.key, signatureInput(record), sig))
      this.#issue(
        { code: 'checkpoint.bad_signature', severity: 'error', message: 'signature does not verify: forged or altered', ...at },
        state,
      );
    else {
      this.#trustedChecked = true;
      state.trustedCheckpoints++;
    }
  }

  /**
   * Without trusted keys, a checkpoint written by the chain's own writer (periodic, close) is signed with the key
   * its start record declares, or unsigned when that declares none: nothing else is genuine.
   */
  #declaredSignature(record: Record<string, unknown>, state: ChainState, at: Where, sig: string | null, keyId: unknown): void {
    const declared = state.declared as { key: KeyObject | null; keyId: string | null };
    if (declared.keyId === null) {
      if (sig === null && (keyId === null || keyId === undefined)) this.#unsignedWarning(state, at);
      else
        this.#issue(
          {
            code: 'checkpoint.unverified',
            severity: 'error',
            message: `signed by key ${String(keyId)}, but the chain's start record declares no key: not written by its writer`,
            ...at,
          },
          state,
        );
      return;
    }
    if (declared.key === null) return; // the declared key does not parse: chain.bad_public_key already
    if (sig === null) {
      this.#unsigned = true;
      this.#issue(
        {
          code: 'checkpoint.unsigned',
          severity: 'error',
          message: `unsigned, but the chain declares key ${declared.keyId}: its writer signs every checkpoint`,
          ...at,
        },
        state,
      );
    } else if (keyId !== declared.keyId)
      this.#issue(
        {
          code: 'checkpoint.unverified',
          severity: 'error',
          message: `signed by key ${String(keyId)}, not the key the chain declares (${declared.keyId}): forged`,
          ...at,
        },
        state,
      );
    else {
      this.#selfDeclared = true;
      if (!verifyBytes(declared.key, signatureInput(record), sig))
        this.#issue(
          {
            code: 'checkpoint.bad_signature',
            severity: 'error',
            message: "signature does not verify with the chain's declared key: forged or altered",
            ...at,
          },
          state,
        );
    }
  }

  #unsignedWarning(state: ChainState, at: Where): void {
    this.#unsigned = true;
    if (state.unsignedWarned) return;
    state.unsignedWarned = true;
    this.#issue({
      code: 'checkpoint.unsigned',
      severity: 'warning',
      message: 'checkpoints are not signed: a rewrite of the whole chain cannot be detected',
      ...at,
    });
  }

  /** A signature no key in the store can check: a warning, but an error on a final seal under `sealed`. */
  #unverifiable(state: ChainState, at: Where, keyId: unknown, final: boolean, why: string): void {
    const error = final && this.#options.sealed === true;
    this.#issue(
      {
        code: 'checkpoint.unverified',
        severity: error ? 'error' : 'warning',
        message: `signed by key ${String(keyId)}, which ${why}; ${
          error ? 'with --sealed a final checkpoint must verify' : 'this seal vouches for nothing'
        }: pass --public-key to check it`,
        ...at,
      },
      state,
    );
  }

  /**
   * A `recovered` seal is written by the next process on the slot with its key, which that successor's start
   * record declares (or with none, when it has none). The chain's own key is accepted too (one key file for both).
   */
  #recoveredSeal(state: ChainState, successor: ChainState | undefined): void {
    const seal = state.seal;
    if (seal === null) return;
    const { at, sig, keyId, input } = seal;
    const candidates = [successor?.declared, state.declared].filter(
      (d): d is { key: KeyObject | null; keyId: string | null } => d !== undefined && d !== null && d.keyId !== null,
    );
    const successorKeyId = successor?.declared?.keyId;
    if (sig === null) {
      if (successorKeyId !== undefined && successorKeyId !== null)
        this.#issue(
          {
            code: 'checkpoint.unsigned',
            severity: 'error',
            message: `unsigned, but the process that wrote this seal (chain ${successor?.report.chain}) signs with key ${successorKeyId}: forged`,
            ...at,
          },
          state,
        );
      else if (successor === undefined && typeof state.declared?.keyId === 'string')
        // Its writer signed; the successor that sealed it is not here to say whether it had a key.
        this.#issue(
          {
            code: 'checkpoint.unsigned',
            severity: this.#options.sealed === true ? 'error' : 'warning',
            message: `an unsigned recovered seal on a chain signed with key ${state.declared.keyId}, and the chain that sealed it is not in this store: it vouches for nothing`,
            ...at,
          },
          state,
        );
      else this.#unsignedWarning(state, at);
      return;
    }
    const match = candidates.find((d) => d.keyId === keyId);
    if (match === undefined) {
      if (successor !== undefined)
        this.#issue(
          {
            code: 'checkpoint.unverified',
            severity: 'error',
            message: `signed by key ${String(keyId)}, but the process that wrote this seal (chain ${successor.report.chain}) declares ${successorKeyId ?? 'no key'}: forged`,
            ...at,
          },
          state,
        );
      else this.#unverifiable(state, at, keyId, true, 'no chain in this store declares (the chain that sealed it is missing)');
      return;
    }
    if (match.key === null) return; // its start record's key does not parse: reported there
    this.#selfDeclared = true;
    if (!verifyBytes(match.key, input, sig))
      this.#issue(
        {
          code: 'checkpoint.bad_signature',
          severity: 'error',
          message: 'signature does not verify with the key its writer declares: forged or altered',
          ...at,
        },
        state,
      );
  }

  /**
   * A chain of the same host and WAL slot as `state`, started and ended before it, that no chain in the store
   * follows: the lineage `older → … → state` lost a link in between — not pruning (which removes the oldest
   * first), nor a sink added later (it held `older`). Host, WAL directory (its id) and slot as the start records
   * give them: two gateways on one host each have a slot 0. Records without a WAL id (older writers), or a
   * gateway whose host name changes on every restart (containers), are not matched, and then a missing
   * predecessor stays the warning it always was.
   */
  #olderOnSlot(state: ChainState, successors: Map<string, ChainState>): ChainState | undefined {
    const host = state.report.host;
    const startedAt = state.report.startedAt;
    if (host === null || state.slot === null || state.wal === null || startedAt === null) return undefined;
    for (const other of this.#chains.values()) {
      if (other === state || other.report.host !== host || other.wal !== state.wal || other.slot !== state.slot) continue;
      const otherStart = other.report.startedAt;
      if (otherStart === null || otherStart >= startedAt || other.lastTs > startedAt) continue;
      if (!successors.has(other.report.chain)) return other;
    }
    return undefined;
  }

  finish(source: string): VerifyReport {
    // A stream ending in the middle of a replay: its writer may still be re-sending; not when all are stopped.
    if (this.#options.sealed === true)
      for (const stream of this.#streams.values()) if (stream.cur !== stream.high) this.#replayCut(stream);
    const successors = new Map<string, ChainState>();
    for (const state of this.#chains.values())
      if (state.after !== null && !successors.has(state.after.chain)) successors.set(state.after.chain, state);
    for (const state of this.#chains.values()) this.#recoveredSeal(state, successors.get(state.report.chain));
    for (const state of this.#chains.values()) {
      const report = state.report;
      if (state.fork !== null) this.#conflict(state.fork, state);
      if (this.#options.requireSigned === true && state.trustedCheckpoints === 0)
        this.#issue(
          {
            code: 'chain.unsigned',
            severity: 'error',
            message: 'no checkpoint signed by a trusted key: nothing shows this chain was written by the gateway',
            chain: report.chain,
            n: report.firstN,
            id: state.lastId,
            position: state.lastPosition,
          },
          state,
        );
      if (report.sealed === null || !state.final) {
        const tail = `${report.unsignedTail} record${report.unsignedTail === 1 ? '' : 's'} after ${
          report.lastCheckpointN === null ? 'the start (no checkpoint yet)' : `the last checkpoint (n=${report.lastCheckpointN})`
        } could be cut without trace`;
        const where = { chain: report.chain, n: report.lastN, id: state.lastId, position: state.lastPosition };
        if (this.#options.sealed === true)
          this.#issue(
            {
              code: 'chain.unsealed',
              severity: 'error',
              message: `the chain ends at n=${report.lastN} without a final checkpoint (truncated?); ${tail}`,
              ...where,
            },
            state,
          );
        else
          this.#issue({
            code: 'chain.open',
            severity: 'warning',
            message: `no final checkpoint: its writer is running, or stopped without closing and was not restarted; ${tail}`,
            ...where,
          });
      }
    }
    // Each successor remembers where its predecessor ended.
    for (const state of this.#chains.values()) {
      const after = state.after;
      if (after === null) continue;
      const predecessor = this.#chains.get(after.chain);
      const from = { chain: state.report.chain, n: state.report.firstN, position: '' };
      if (predecessor === undefined) {
        const older = this.#olderOnSlot(state, successors);
        if (older !== undefined) {
          this.#issue(
            {
              code: 'chain.deleted',
              severity: 'error',
              message: `follows chain ${after.chain}, which is not in this store, while the older chain ${older.report.chain} of the same host and slot is (and nothing follows it): pruning removes the oldest first, so ${after.chain} was deleted`,
              ...(state.startAt ?? from),
            },
            state,
          );
          continue;
        }
        this.#issue({
          code: 'chain.predecessor_missing',
          severity: 'warning',
          message: `follows chain ${after.chain}, which is not in this store (pruned, or written before this sink existed)`,
          ...from,
        });
        continue;
      }
      const p = predecessor.report;
      const where = { chain: p.chain, n: p.lastN, id: predecessor.lastId, position: predecessor.lastPosition };
      if (p.lastN < after.n)
        this.#issue(
          {
            code: 'chain.truncated',
            severity: 'error',
            message: `ends at n=${p.lastN}, but chain ${state.report.chain} records that it ended at n=${after.n}: records were removed from its end`,
            ...where,
          },
          predecessor,
        );
      else if (p.lastN === after.n && p.lastHash !== after.hash)
        this.#issue(
          {
            code: 'chain.truncated',
            severity: 'error',
            message: `its last record differs from the one chain ${state.report.chain} recorded`,
            ...where,
          },
          predecessor,
        );
    }
    for (const anchor of this.#anchors.values()) {
      if (anchor.seen) continue;
      const state = this.#chains.get(anchor.chain);
      if (state === undefined)
        this.#issue({
          code: 'anchor.chain_missing',
          severity: 'error',
          message: `anchored chain ${anchor.chain} is not in this store`,
          chain: anchor.chain,
          n: anchor.n,
        });
      else if (state.report.lastN < anchor.n)
        this.#issue(
          {
            code: 'chain.truncated',
            severity: 'error',
            message: `ends at n=${state.report.lastN}, before the anchor at n=${anchor.n}`,
            chain: anchor.chain,
            n: state.report.lastN,
            position: state.lastPosition,
          },
          state,
        );
      else
        this.#issue(
          {
            code: 'anchor.mismatch',
            severity: 'error',
            message: `no record n=${anchor.n} where the anchor expects one`,
            chain: anchor.chain,
            n: anchor.n,
          },
          state,
        );
    }
    // Nothing to verify is not "intact": every chain begins with a start record, so a store without a
    // single record was emptied (or is not an audit store at all).
    if (this.#records === 0)
      this.#issue({
        code: 'store.empty',
        severity: 'error',
        message: 'the store holds no records: emptied, or not an audit store',
      });
    if (this.#selfDeclared && !this.#trustedChecked)
      this.#issue({
        code: 'verify.unanchored',
        severity: 'warning',
        message:
          'signatures were checked against keys the chains declare themselves; pass --public-key to detect a rewritten store',
      });
    const signatures = this.#trustedChecked
      ? 'trusted'
      : this.#selfDeclared
        ? 'self-declared'
        : this.#unsigned
          ? 'unsigned'
          : 'none';
    return {
      ok: this.#errors === 0,
      source,
      records: this.#records,
      chains: [...this.#chains.values()].map((s) => s.report),
      gaps: this.#gaps,
      duplicates: this.#duplicates,
      signatures,
      errors: this.#errors,
      warnings: this.#warnings,
      issues: this.#issues,
      firstBad: this.#firstBad,
    };
  }
}

/** Verifies every chain in a store. Throws only when the store cannot be read (missing file, bad URL). */
export async function verifyAudit(source: AuditSource, options: VerifyOptions = {}): Promise<VerifyReport> {
  const verifier = new Verifier(options);
  for await (const row of readSource(source)) verifier.row(row);
  return verifier.finish(describeSource(source));
}

/** Verifies records already in memory (tests, tools); `lines` in storage order. */
export function verifyLines(lines: readonly string[], options: VerifyOptions = {}, source = 'lines'): VerifyReport {
  const verifier = new Verifier(options);
  lines.forEach((line, i) => verifier.row({ position: `line ${i + 1}`, line }));
  return verifier.finish(source);
}

/** A text column's value as the record has it, before indexedText. */
function rawColumn(record: Record<string, unknown>, column: (typeof INDEXED_COLUMNS)[number]): unknown {
  return record[column === 'request_id' ? 'requestId' : column];
}

/**
 * How many records (start included) a writer with this policy lets follow a checkpoint, or the start: the log
 * appends a checkpoint right after the record that brings the count to `checkpointEvery` (log.ts #appendItem),
 * in the same step, so no other record can come between. The start record is appended without that check, so
 * with `checkpointEvery: 1` the start and the first event share one run. null: no (valid) policy recorded.
 */
function checkpointLimit(policy: unknown): number | null {
  if (policy === null || typeof policy !== 'object') return null;
  const every = (policy as Record<string, unknown>)['every'];
  if (typeof every !== 'number' || !Number.isSafeInteger(every) || every < 1) return null;
  return Math.max(every, 2);
}
