/**
 * Issuer store in Redis (ioredis): several instances without a database. Every
 * change that spans keys is one Lua script, so it is atomic: of two instances
 * rotating one refresh token, the script that runs second sees it used.
 *
 * Keys (`<prefix>` default `bulwark:issuer:`):
 * - `clients`: hash id → ClientRecord JSON.
 * - `rt:<id>`: hash per refresh token. `d` holds what neither changes nor matters to
 *   the scripts (subject, client, scope, audience, claims) as JSON the scripts copy
 *   verbatim (never decoded in Lua, so claims round-trip exactly); `fam`, `fexp`,
 *   `c`, `exp`, `bind`, `used`, `rev` are fields the scripts read and write (an
 *   absent field is null). Expires (PEXPIREAT) with its family.
 * - `fam:<familyId>`: set of the family's token ids, expiring with the family.
 * - `sub:<subject>`: set of the subject's family ids, expiring with its last family.
 * - `families`: sorted set familyId → family expiry, and `family-subject`: hash
 *   familyId → subject, so `sweep` can clear what the TTLs do not.
 *
 * Key expiry follows Redis's clock, while rotation decisions follow the caller's
 * `now`; the two agree in production (both wall time). The scripts build key names
 * from the prefix, which suits a single Redis (not Redis Cluster).
 *
 * No offline queue and a command timeout: with Redis down a call fails at once with
 * `IssuerStoreError` (the issuer answers 503) instead of hanging; the connection keeps
 * retrying in the background.
 */
import { Redis } from 'ioredis';
import { storeError, successorOf } from './store-rules.js';
import {
  IssuerStoreError,
  type ClientRecord,
  type IssuerStore,
  type RefreshRecord,
  type RotateRequest,
  type RotateResult,
} from './types.js';

/** Shared by the scripts: marks every token of a family revoked; returns how many were live. */
const REVOKE_FAMILY_FN = `
local function revoke_family(p, fam, now)
  local live = 0
  for _, id in ipairs(redis.call('SMEMBERS', p .. 'fam:' .. fam)) do
    local k = p .. 'rt:' .. id
    local st = redis.call('HMGET', k, 'fam', 'used', 'rev')
    if st[1] and not st[3] then
      if not st[2] then live = live + 1 end
      redis.call('HSET', k, 'rev', now)
    end
  end
  return live
end
`;

/**
 * ARGV: prefix, id, familyId, subject, familyExpiresAt, d, createdAt, expiresAt,
 * hasBinding (1/0), binding, usedAt ('' = null), revokedAt ('' = null).
 */
export const INSERT_SCRIPT = `
local p = ARGV[1]
local function extend(key, at)
  local ttl = redis.call('PTTL', key)
  if ttl == -1 then redis.call('PEXPIREAT', key, at) return end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now + ttl < tonumber(at) then redis.call('PEXPIREAT', key, at) end
end
local k = p .. 'rt:' .. ARGV[2]
local fields = {'d', ARGV[6], 'fam', ARGV[3], 'fexp', ARGV[5], 'c', ARGV[7], 'exp', ARGV[8]}
if ARGV[9] == '1' then fields[#fields + 1] = 'bind'; fields[#fields + 1] = ARGV[10] end
if ARGV[11] ~= '' then fields[#fields + 1] = 'used'; fields[#fields + 1] = ARGV[11] end
if ARGV[12] ~= '' then fields[#fields + 1] = 'rev'; fields[#fields + 1] = ARGV[12] end
redis.call('DEL', k)
redis.call('HSET', k, unpack(fields))
redis.call('PEXPIREAT', k, ARGV[5])
local fk = p .. 'fam:' .. ARGV[3]
redis.call('SADD', fk, ARGV[2])
extend(fk, ARGV[5])
local sk = p .. 'sub:' .. ARGV[4]
redis.call('SADD', sk, ARGV[3])
extend(sk, ARGV[5])
redis.call('ZADD', p .. 'families', ARGV[5], ARGV[3])
redis.call('HSET', p .. 'family-subject', ARGV[3], ARGV[4])
return 1
`;

/**
 * KEYS: presented token, successor token. ARGV: prefix, now, nextId, nextExpiresAt,
 * hasBinding (1/0), binding. Returns {status, presented token's fields before the call}
 * (status `rotate` when it was rotated); {'unknown'} when there is no such token.
 * Classification order as `classifyPresented` (store-sqlite.ts).
 */
export const ROTATE_SCRIPT = `${REVOKE_FAMILY_FN}
local p = ARGV[1]
local now = ARGV[2]
local cur = redis.call('HGETALL', KEYS[1])
if #cur == 0 then return {'unknown'} end
local h = {}
for i = 1, #cur, 2 do h[cur[i]] = cur[i + 1] end
local status = 'rotate'
if h.rev then status = 'revoked'
elseif h.used then status = 'reused'
elseif tonumber(now) >= tonumber(h.exp) or tonumber(now) >= tonumber(h.fexp) then status = 'expired'
elseif h.bind and (ARGV[5] ~= '1' or ARGV[6] ~= h.bind) then status = 'binding_mismatch'
end
if status == 'reused' then revoke_family(p, h.fam, now) end
if status ~= 'rotate' then return {status, cur} end
redis.call('HSET', KEYS[1], 'used', now)
local exp = ARGV[4]
if tonumber(exp) > tonumber(h.fexp) then exp = h.fexp end
local fields = {'d', h.d, 'fam', h.fam, 'fexp', h.fexp, 'c', now, 'exp', exp}
if h.bind then fields[#fields + 1] = 'bind'; fields[#fields + 1] = h.bind end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIREAT', KEYS[2], h.fexp)
redis.call('SADD', p .. 'fam:' .. h.fam, ARGV[3])
return {status, cur}
`;

/** ARGV: prefix, familyId, now. Returns how many tokens were live. */
export const REVOKE_FAMILY_SCRIPT = `${REVOKE_FAMILY_FN}
return revoke_family(ARGV[1], ARGV[2], ARGV[3])
`;

/** ARGV: prefix, subject, now. Revokes the subject's families that still had an unrevoked token; returns their ids. */
export const REVOKE_SUBJECT_SCRIPT = `${REVOKE_FAMILY_FN}
local p = ARGV[1]
local sk = p .. 'sub:' .. ARGV[2]
local revoked = {}
for _, fam in ipairs(redis.call('SMEMBERS', sk)) do
  local pending = false
  local any = false
  for _, id in ipairs(redis.call('SMEMBERS', p .. 'fam:' .. fam)) do
    local st = redis.call('HMGET', p .. 'rt:' .. id, 'fam', 'rev')
    if st[1] then
      any = true
      if not st[2] then pending = true end
    end
  end
  if pending then
    revoke_family(p, fam, ARGV[3])
    revoked[#revoked + 1] = fam
  elseif not any then
    redis.call('SREM', sk, fam)
  end
end
return revoked
`;

/** ARGV: prefix, now, limit. Deletes up to `limit` families expired before now; returns {tokens deleted, families}. */
export const SWEEP_SCRIPT = `
local p = ARGV[1]
local fams = redis.call('ZRANGEBYSCORE', p .. 'families', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local deleted = 0
for _, fam in ipairs(fams) do
  local fk = p .. 'fam:' .. fam
  for _, id in ipairs(redis.call('SMEMBERS', fk)) do
    deleted = deleted + redis.call('DEL', p .. 'rt:' .. id)
  end
  redis.call('DEL', fk)
  local subject = redis.call('HGET', p .. 'family-subject', fam)
  if subject then redis.call('SREM', p .. 'sub:' .. subject, fam) end
  redis.call('HDEL', p .. 'family-subject', fam)
  redis.call('ZREM', p .. 'families', fam)
end
return {deleted, #fams}
`;

const SWEEP_BATCH = 500;

type Script = 'issuerInsert' | 'issuerRotate' | 'issuerRevokeFamily' | 'issuerRevokeSubject' | 'issuerSweep';

/** What `d` holds. */
interface TokenData {
  subject: string;
  clientId: string;
  scope: string;
  audience: string[];
  claims: Record<string, unknown>;
}

function fieldsOf(flat: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!;
  return out;
}

function refreshOf(id: string, h: Record<string, string>): RefreshRecord {
  const d = JSON.parse(h['d'] ?? '{}') as TokenData;
  const num = (v: string | undefined): number | null => (v === undefined ? null : Number(v));
  return {
    id,
    familyId: h['fam'] ?? '',
    subject: d.subject,
    clientId: d.clientId,
    scope: d.scope,
    audience: d.audience,
    claims: d.claims,
    binding: h['bind'] ?? null,
    createdAt: Number(h['c']),
    expiresAt: Number(h['exp']),
    familyExpiresAt: Number(h['fexp']),
    usedAt: num(h['used']),
    revokedAt: num(h['rev']),
  };
}

export interface RedisIssuerStoreOptions {
  url: string;
  /** Default `bulwark:issuer:`. */
  keyPrefix?: string;
  /** Bound on connecting (ms). Default 2000. */
  connectTimeoutMs?: number;
  /** Bound on one command (ms). Default 2000. */
  commandTimeoutMs?: number;
}

export class RedisIssuerStore implements IssuerStore {
  readonly kind = 'redis';
  readonly keyPrefix: string;
  readonly client: Redis;
  private readonly clientsKey: string;
  private connecting: Promise<void> | null = null;
  private lastError: unknown = null;
  private closed = false;

  constructor(options: RedisIssuerStoreOptions) {
    this.keyPrefix = options.keyPrefix ?? 'bulwark:issuer:';
    this.clientsKey = `${this.keyPrefix}clients`;
    this.client = new Redis(options.url, {
      lazyConnect: true,
      connectTimeout: options.connectTimeoutMs ?? 2000,
      commandTimeout: options.commandTimeoutMs ?? 2000,
      maxRetriesPerRequest: 1,
      enableOfflineQueue: false,
      // Keep trying in the background, backing off to 1 s; calls meanwhile fail fast.
      retryStrategy: (times: number) => Math.min(25 * 2 ** Math.min(times, 6), 1000),
    });
    // Errors surface as failed calls; an unhandled 'error' event would crash the process.
    this.client.on('error', (error: unknown) => {
      this.lastError = error;
    });
    this.client.defineCommand('issuerInsert', { numberOfKeys: 0, lua: INSERT_SCRIPT });
    this.client.defineCommand('issuerRotate', { numberOfKeys: 2, lua: ROTATE_SCRIPT });
    this.client.defineCommand('issuerRevokeFamily', { numberOfKeys: 0, lua: REVOKE_FAMILY_SCRIPT });
    this.client.defineCommand('issuerRevokeSubject', { numberOfKeys: 0, lua: REVOKE_SUBJECT_SCRIPT });
    this.client.defineCommand('issuerSweep', { numberOfKeys: 0, lua: SWEEP_SCRIPT });
  }

  /** Connects; there is nothing to create. Rejects (`IssuerStoreError`) when Redis cannot be reached within the timeout. */
  async init(): Promise<void> {
    await this.connected();
    await this.call(() => this.client.ping());
  }

  async getClient(id: string): Promise<ClientRecord | null> {
    const text = await this.call(() => this.client.hget(this.clientsKey, id));
    return text === null ? null : (JSON.parse(text) as ClientRecord);
  }

  async putClient(client: ClientRecord): Promise<void> {
    const record: ClientRecord = {
      id: client.id,
      secretHash: client.secretHash,
      audiences: client.audiences,
      scopes: client.scopes,
      grants: client.grants,
      tokenTtlSec: client.tokenTtlSec,
      createdAt: client.createdAt,
      disabled: client.disabled,
    };
    await this.call(() => this.client.hset(this.clientsKey, client.id, JSON.stringify(record)));
  }

  async deleteClient(id: string): Promise<boolean> {
    return (await this.call(() => this.client.hdel(this.clientsKey, id))) > 0;
  }

  async listClients(): Promise<ClientRecord[]> {
    const all = await this.call(() => this.client.hgetall(this.clientsKey));
    return Object.keys(all)
      .sort()
      .map((id) => JSON.parse(all[id]!) as ClientRecord);
  }

  async insertRefresh(r: RefreshRecord): Promise<void> {
    const d: TokenData = {
      subject: r.subject,
      clientId: r.clientId,
      scope: r.scope,
      audience: [...r.audience],
      claims: r.claims,
    };
    await this.script(
      'issuerInsert',
      this.keyPrefix,
      r.id,
      r.familyId,
      r.subject,
      r.familyExpiresAt,
      JSON.stringify(d),
      r.createdAt,
      r.expiresAt,
      r.binding === null ? '0' : '1',
      r.binding ?? '',
      r.usedAt ?? '',
      r.revokedAt ?? '',
    );
  }

  async rotateRefresh(request: RotateRequest): Promise<RotateResult> {
    const reply = (await this.script(
      'issuerRotate',
      this.tokenKey(request.id),
      this.tokenKey(request.nextId),
      this.keyPrefix,
      request.now,
      request.nextId,
      request.nextExpiresAt,
      request.binding === null ? '0' : '1',
      request.binding ?? '',
    )) as [string, string[]?];
    const [status, flat] = reply;
    if (status === 'unknown' || flat === undefined) return { status: 'unknown' };
    const record = refreshOf(request.id, fieldsOf(flat));
    switch (status) {
      case 'rotate':
        return { status: 'rotated', record, next: successorOf(record, request) };
      case 'revoked':
      case 'reused':
      case 'expired':
      case 'binding_mismatch':
        return { status, record };
      default:
        throw new IssuerStoreError(`issuer store (redis): unexpected rotation reply ${JSON.stringify(status)}`);
    }
  }

  async revokeFamily(familyId: string, now: number): Promise<number> {
    return Number(await this.script('issuerRevokeFamily', this.keyPrefix, familyId, now));
  }

  async revokeSubject(subject: string, now: number): Promise<string[]> {
    return (await this.script('issuerRevokeSubject', this.keyPrefix, subject, now)) as string[];
  }

  async getRefresh(id: string): Promise<RefreshRecord | null> {
    const h = await this.call(() => this.client.hgetall(this.tokenKey(id)));
    return Object.keys(h).length === 0 ? null : refreshOf(id, h);
  }

  /** In batches, so one sweep never holds Redis for long. */
  async sweep(now: number): Promise<number> {
    let total = 0;
    for (;;) {
      const [deleted, families] = (await this.script('issuerSweep', this.keyPrefix, now, SWEEP_BATCH)) as [number, number];
      total += deleted;
      if (families < SWEEP_BATCH) return total;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.client.status === 'ready') await this.client.quit();
      else this.client.disconnect();
    } catch {
      this.client.disconnect();
    }
  }

  // -------------------------------------------------------------------------

  private tokenKey(id: string): string {
    return `${this.keyPrefix}rt:${id}`;
  }

  /** The first call connects (lazyConnect); later ones fail fast while a reconnect is under way. */
  private async connected(): Promise<void> {
    if (this.closed) throw new IssuerStoreError('issuer store (redis): closed');
    if (this.client.status === 'wait') {
      this.connecting ??= this.client.connect().finally(() => {
        this.connecting = null;
      });
    }
    if (this.connecting === null) return;
    try {
      await this.connecting;
    } catch (error) {
      const cause = this.lastError ?? error;
      throw storeError('redis', cause);
    }
  }

  private async call<T>(fn: () => Promise<T>): Promise<T> {
    await this.connected();
    try {
      return await fn();
    } catch (error) {
      throw storeError('redis', error);
    }
  }

  private script(name: Script, ...args: (string | number)[]): Promise<unknown> {
    const fn = (this.client as unknown as Record<Script, (...a: (string | number)[]) => Promise<unknown>>)[name];
    return this.call(() => fn.apply(this.client, args));
  }
}
