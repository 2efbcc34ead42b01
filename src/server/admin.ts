import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { handleAdminTelemetry, type AdminTelemetryOptions } from '../telemetry/index.js';
import { handleRevocationAdmin, isRevocationAdminPath, type RevocationList } from '../revocation/index.js';

export interface AdminState {
  ready(): boolean;
  /** Effective config, secrets already redacted. */
  config(): { hash: string; file: string; loadedAt: string; config: unknown; workers: number };
  /** /metrics and /debug/pprof/*. */
  telemetry?: () => AdminTelemetryOptions;
  /** POST/GET/DELETE /revocations, when revocation is configured. */
  revocation?: () => { list: RevocationList; token: string | undefined } | null;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body, null, 2);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

/** The admin listener: separate port, loopback by default, never on the data path. */
export function createAdminServer(state: AdminState): Server {
  return createServer((req: IncomingMessage, res: ServerResponse) => {
    if (isRevocationAdminPath(req.url)) {
      const r = state.revocation?.();
      if (r != null) {
        // A request routed here must be answered even if the handler disowns it or fails.
        handleRevocationAdmin(req, res, r.list, r.token === undefined ? {} : { token: r.token }).then(
          (handled) => {
            if (!handled && !res.headersSent) json(res, 404, { status: 404, code: 'admin.not_found' });
          },
          () => {
            if (!res.headersSent) json(res, 500, { status: 500, code: 'admin.internal' });
          },
        );
        return;
      }
    }
    const t = state.telemetry?.();
    if (t !== undefined && handleAdminTelemetry(req, res, t)) return;
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { status: 405, code: 'admin.method_not_allowed' });
    switch (path) {
      case '/healthz':
        return json(res, 200, { status: 'ok' });
      case '/readyz':
        return state.ready() ? json(res, 200, { status: 'ready' }) : json(res, 503, { status: 'not_ready' });
      case '/config':
        return json(res, 200, state.config());
      default:
        return json(res, 404, { status: 404, code: 'admin.not_found' });
    }
  });
}

export function listenAdmin(server: Server, port: number, address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}
