import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * The built-in demo upstream (`builtin: echo`): reflects method, path and
 * headers so the quickstart needs no external server. One per process, started
 * on first use, on loopback only.
 */
let echo: Promise<{ server: Server; origin: string }> | null = null;

function handle(req: IncomingMessage, res: ServerResponse): void {
  let bytes = 0;
  req.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    const body = JSON.stringify({
      service: 'bulwark-echo',
      method: req.method,
      path: req.url,
      headers: req.headers,
      bodyBytes: bytes,
    });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
}

export function echoOrigin(): Promise<string> {
  echo ??= new Promise((resolve, reject) => {
    const server = createServer({ keepAliveTimeout: 60_000 }, handle);
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.unref();
      resolve({ server, origin: `http://127.0.0.1:${port}` });
    });
  });
  return echo.then((e) => e.origin);
}

export async function closeEcho(): Promise<void> {
  if (echo === null) return;
  const { server } = await echo;
  echo = null;
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}
