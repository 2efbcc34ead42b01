// A tiny keep-alive upstream for the benchmarks: every request gets 200 and the
// same small JSON body, after its request body (if any) has been drained.
//
//   import { startUpstream } from './upstream.js';  const up = await startUpstream({ port: 0 });
//   node bench/upstream.js [--port N] [--exit-with-stdin]   # prints {"port":N} on stdout
import http from 'node:http';
import { fileURLToPath } from 'node:url';

const BODY = Buffer.from(
  JSON.stringify({ ok: true, service: 'bench-upstream', message: 'hello from the benchmark upstream', n: 42 }) + '\n',
);
const HEADERS = { 'content-type': 'application/json', 'content-length': String(BODY.length) };

/**
 * @param {{ port?: number, host?: string }} [options]
 * @returns {Promise<{ port: number, close: () => Promise<void> }>}
 */
export function startUpstream({ port = 0, host = '127.0.0.1' } = {}) {
  const server = http.createServer((req, res) => {
    const respond = () => {
      res.writeHead(200, HEADERS);
      res.end(BODY);
    };
    if (req.complete) respond();
    else {
      req.on('end', respond);
      req.on('error', () => res.destroy());
      req.resume();
    }
  });
  // Proxies in front keep pooled connections open between bursts: don't be the
  // side that closes an idle socket just as a request is being written to it.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 0;
  server.maxRequestsPerSocket = 0;

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const address = server.address();
      resolve({
        port: typeof address === 'object' && address ? address.port : port,
        close: () =>
          new Promise((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

/** `--name value` from argv, or undefined. */
export function argValue(argv, name) {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : undefined;
}

/**
 * Close and exit on SIGTERM/SIGINT; with `--exit-with-stdin` (what bench/run.js
 * passes), also when stdin closes, i.e. when the parent process goes away.
 */
export function exitWithParent(close, argv = process.argv) {
  let closing = false;
  const stop = () => {
    if (closing) return;
    closing = true;
    Promise.resolve(close()).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (argv.includes('--exit-with-stdin')) {
    process.stdin.on('end', stop);
    process.stdin.on('error', stop);
    process.stdin.resume();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const up = await startUpstream({ port: Number(argValue(process.argv, '--port') ?? 0) });
  process.stdout.write(JSON.stringify({ port: up.port }) + '\n');
  exitWithParent(up.close);
}
