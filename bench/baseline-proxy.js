// The baseline Bulwark is compared with: the least a Node reverse proxy can do.
// A bare node:http server that forwards each request over a keep-alive pool with
// http.request, streams both bodies, and copies status and end-to-end headers.
//
//   node bench/baseline-proxy.js --upstream-port N [--upstream-host H] [--port P]
//                                [--admin-port A] [--exit-with-stdin]
// prints {"port":P} on stdout once listening. With --admin-port it also serves
// GET /healthz and /readyz there, so it can stand in for the gateway
// (BENCH_GATEWAY_CMD, see bench/README.md).
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { argValue, exitWithParent } from './upstream.js';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host']);

/** Copy a header object without hop-by-hop fields (incl. proxy-* and those named in Connection). */
function endToEnd(headers, { keepHost = false } = {}) {
  const named = new Set();
  const connection = headers.connection;
  if (connection) for (const token of String(connection).split(',')) named.add(token.trim().toLowerCase());
  const out = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    if (name === 'host' ? !keepHost : HOP_BY_HOP.has(name) || named.has(name) || name.startsWith('proxy-')) continue;
    out[name] = value;
  }
  return out;
}

/**
 * @param {{ upstreamPort: number, upstreamHost?: string, port?: number, host?: string, adminPort?: number }} options
 * @returns {Promise<{ port: number, adminPort?: number, close: () => Promise<void> }>}
 */
export async function startBaselineProxy({ upstreamPort, upstreamHost = '127.0.0.1', port = 0, host = '127.0.0.1', adminPort }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 128 });

  const server = http.createServer((req, res) => {
    const upstreamReq = http.request({
      agent,
      host: upstreamHost,
      port: upstreamPort,
      method: req.method,
      path: req.url,
      headers: endToEnd(req.headers, { keepHost: true }),
    });
    upstreamReq.on('response', (upstreamRes) => {
      res.writeHead(upstreamRes.statusCode ?? 502, endToEnd(upstreamRes.headers));
      upstreamRes.pipe(res);
      upstreamRes.on('error', () => res.destroy());
    });
    upstreamReq.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain', connection: 'close' });
        res.end('bad gateway\n');
      } else res.destroy();
    });
    // The client went away before the exchange finished: abandon the upstream request.
    res.on('close', () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
    req.pipe(upstreamReq);
  });
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 0;

  await listen(server, port, host);
  let admin;
  if (adminPort !== undefined) {
    admin = http.createServer((req, res) => {
      const ok = req.url === '/healthz' || req.url === '/readyz';
      res.writeHead(ok ? 200 : 404, { 'content-type': 'application/json' });
      res.end(ok ? '{"status":"ok"}\n' : '{"status":"not found"}\n');
    });
    await listen(admin, adminPort, host);
  }

  return {
    port: server.address().port,
    adminPort: admin?.address().port,
    close: async () => {
      await Promise.all(
        [server, admin].filter(Boolean).map(
          (s) =>
            new Promise((done) => {
              s.close(() => done());
              s.closeAllConnections();
            }),
        ),
      );
      agent.destroy();
    },
  };
}

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const upstreamPort = Number(argValue(process.argv, '--upstream-port'));
  if (!Number.isInteger(upstreamPort) || upstreamPort <= 0) {
    process.stderr.write('usage: node bench/baseline-proxy.js --upstream-port N [--port P] [--admin-port A]\n');
    process.exit(2);
  }
  const adminArg = argValue(process.argv, '--admin-port');
  const proxy = await startBaselineProxy({
    upstreamPort,
    upstreamHost: argValue(process.argv, '--upstream-host') ?? '127.0.0.1',
    port: Number(argValue(process.argv, '--port') ?? 0),
    adminPort: adminArg === undefined ? undefined : Number(adminArg),
  });
  process.stdout.write(JSON.stringify({ port: proxy.port, ...(proxy.adminPort ? { adminPort: proxy.adminPort } : {}) }) + '\n');
  exitWithParent(proxy.close);
}
