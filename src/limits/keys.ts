import { hash, randomBytes } from 'node:crypto';
import type { RequestContext } from '../core/context.js';
import type { TrustedProxies } from '../gateway/trusted-proxies.js';
import type { Descriptor } from './schema.js';
import { isGrpcContentType } from '../grpc/proxy.js';

/** Who the client is for `client_ip`: the listener's trusted-proxies rule applied to the peer and X-Forwarded-For. */
export type ClientAddress = (ctx: RequestContext) => string;

/**
 * `client_ip` the only safe way: X-Forwarded-For counts only when the peer is a
 * trusted proxy, so a client cannot name itself a fresh bucket.
 */
export function clientAddressFrom(trusted: TrustedProxies): ClientAddress {
  return (ctx) => {
    const xff = ctx.headers['x-forwarded-for'];
    return trusted.clientAddress(ctx.peerAddress, typeof xff === 'string' ? xff : undefined);
  };
}

/** Longest descriptor value kept: header and claim values are client- or issuer-chosen, keys stay bounded. */
const MAX_VALUE = 256;

type Extract = (ctx: RequestContext) => string;

function extractor(descriptor: Descriptor, clientAddress: ClientAddress): Extract {
  switch (descriptor.kind) {
    case 'route':
      return (ctx) => ctx.route?.id ?? '';
    case 'method':
      // gRPC: the method is the path (`/pkg.Service/Method`); HTTP: the verb.
      // Only a real gRPC call (HTTP/2, gRPC content type): a plain request claiming `application/grpc`
      // would otherwise get a fresh bucket for every path it invents.
      return (ctx) => {
        const type = ctx.headers['content-type'];
        return ctx.protocol !== 'http/1.1' && ctx.protocol !== 'http/1.0' && typeof type === 'string' && isGrpcContentType(type)
          ? ctx.path
          : ctx.method;
      };
    case 'tenant':
      return (ctx) => ctx.identity?.tenant ?? '';
    case 'subject':
      return (ctx) => ctx.identity?.subject ?? '';
    case 'client_ip':
      return clientAddress;
    case 'header': {
      const name = descriptor.name;
      return (ctx) => {
        const value = ctx.headers[name];
        const text = value === undefined ? '' : typeof value === 'string' ? value : value.join(',');
        return text.length > MAX_VALUE ? text.slice(0, MAX_VALUE) : text;
      };
    }
    case 'claim': {
      const path = descriptor.path;
      return (ctx) => {
        const text = claimText(ctx.identity?.claims, path);
        return text.length > MAX_VALUE ? text.slice(0, MAX_VALUE) : text;
      };
    }
  }
}

/** A claim's value as text ('' when absent or not a scalar). */
export function claimText(claims: Readonly<Record<string, unknown>> | undefined, path: readonly string[]): string {
  let value: unknown = claims;
  for (let i = 0; i < path.length; i++) {
    if (typeof value !== 'object' || value === null) return '';
    value = (value as Record<string, unknown>)[path[i]!];
  }
  return typeof value === 'string' ? value : typeof value === 'number' || typeof value === 'boolean' ? String(value) : '';
}

/**
 * The raw bucket key of a policy for a request: the policy id and each
 * descriptor's value, length-prefixed so no value can forge a separator. Raw key
 * material (IPs, subjects) stays in process memory; anything that leaves it —
 * Redis keys, decisions, headers — gets a hash (see `KeyHasher`).
 */
export function compileKey(policyId: string, descriptors: readonly Descriptor[], clientAddress: ClientAddress): Extract {
  const parts = descriptors.map((d) => extractor(d, clientAddress));
  const head = `${policyId}|`;
  switch (parts.length) {
    case 0:
      return () => head;
    case 1: {
      const a = parts[0]!;
      return (ctx) => {
        const va = a(ctx);
        return `${head}${va.length}:${va}`;
      };
    }
    case 2: {
      const a = parts[0]!;
      const b = parts[1]!;
      return (ctx) => {
        const va = a(ctx);
        const vb = b(ctx);
        return `${head}${va.length}:${va}|${vb.length}:${vb}`;
      };
    }
    default:
      return (ctx) => {
        let key = head;
        for (let i = 0; i < parts.length; i++) {
          const v = parts[i]!(ctx);
          key += `${i === 0 ? '' : '|'}${v.length}:${v}`;
        }
        return key;
      };
  }
}

const LABEL_CACHE = 10_000;

/**
 * Key hashing. Two uses with different needs:
 * - labels (`key` in decisions, audit, explanations): must not be reversible,
 *   and an IPv4 address is trivially brute-forced from an unkeyed hash — so they
 *   are keyed with `keySecret`, or a random per-process secret when none is set;
 * - Redis keys: must be the same on every instance — keyed with `keySecret` when
 *   set, unkeyed otherwise.
 * Labels are cached (bounded) since one is needed per decision.
 */
export class KeyHasher {
  private readonly labelSecret: string;
  private readonly storeSecret: string;
  private readonly labels: Map<string, string>;

  constructor(keySecret: string | undefined) {
    this.labelSecret = keySecret ?? randomBytes(32).toString('base64url');
    this.storeSecret = keySecret ?? '';
    this.labels = new Map();
  }

  /** 96-bit label for decisions: stable for one key (and across instances when `keySecret` is set). */
  label(key: string): string {
    let label = this.labels.get(key);
    if (label === undefined) {
      label = hash('sha256', `${this.labelSecret}\u0000${key}`, 'base64url').slice(0, 16);
      if (this.labels.size >= LABEL_CACHE) this.labels.clear();
      this.labels.set(key, label);
    }
    return label;
  }

  /**
   * A Redis key: `prefix` + `kind:policy:` + `{hash}`. The hash is the hash tag,
   * so in Redis Cluster every key of one bucket maps to one slot (each script
   * touches exactly one key, and related keys share the tag).
   */
  storeKey(prefix: string, kind: 'rl' | 'cc', policyId: string, key: string): string {
    return `${prefix}${kind}:${policyId}:{${hash('sha256', `${this.storeSecret}\u0000${key}`, 'base64url').slice(0, 22)}}`;
  }
}
