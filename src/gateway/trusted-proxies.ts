import { BlockList, isIP } from 'node:net';

/** Compiled once per listener: is this peer allowed to speak for the client through X-Forwarded-*? */
export class TrustedProxies {
  private readonly list: BlockList | null;

  constructor(entries: readonly string[]) {
    if (entries.length === 0) {
      this.list = null;
      return;
    }
    const list = new BlockList();
    for (const entry of entries) {
      const slash = entry.indexOf('/');
      const address = slash === -1 ? entry : entry.slice(0, slash);
      const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
      if (slash === -1) list.addAddress(address, family);
      else list.addSubnet(address, Number(entry.slice(slash + 1)), family);
    }
    this.list = list;
  }

  get empty(): boolean {
    return this.list === null;
  }

  has(address: string): boolean {
    const list = this.list;
    if (list === null || address === '') return false;
    if (address.startsWith('::ffff:') && isIP(address.slice(7)) === 4) address = address.slice(7);
    return list.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4');
  }

  /**
   * The client address: the right-most X-Forwarded-For hop not itself a trusted proxy.
   * Only hops appended by trusted proxies count, so a client cannot pick its own identity.
   */
  clientAddress(peer: string, xff: string | undefined): string {
    if (xff === undefined || !this.has(peer)) return peer;
    const hops = xff.split(',');
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]!.trim();
      if (isIP(hop) === 0) return peer;
      if (!this.has(hop)) return hop;
    }
    return hops[0]!.trim();
  }
}
