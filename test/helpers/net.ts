import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { ClientHttp2Stream } from 'node:http2';
import { connect, type AddressInfo } from 'node:net';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { createLogger } from '../../src/telemetry/logger.js';

export interface TestUpstream {
  port: number;
  origin: string;
  server: Server;
  requests: { method: string; url: string; headers: IncomingMessage['headers']; body: Buffer }[];
  close(): Promise<void>;
}

/** A real upstream; by default it records each request and answers 200 with JSON about it. */
export async function startUpstream(
  handler?: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void,
): Promise<TestUpstream> {
  const requests: TestUpstream['requests'] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      if (handler) return handler(req, res, body);
      const text = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyBytes: body.length });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    server,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

export interface TestGateway {
  gateway: Gateway;
  port: number;
  url: string;
  close(): Promise<void>;
}

/** A gateway config: one public route, `/echo`, to the built-in echo upstream; `audit` is the audit section's lines. */
export function echoGatewayYaml(audit: string): string {
  return `version: 1
listeners: [{ address: 127.0.0.1, port: 0 }]
upstreams: { demo: { builtin: echo } }
routes: [{ id: echo, match: { path: { prefix: /echo } }, upstream: demo, auth: { public: true } }]
audit:
${audit}`;
}

/** An in-process gateway from YAML, validated exactly as `bulwark serve` would. */
export async function startGateway(yaml: string): Promise<TestGateway> {
  const loaded = parseConfig(yaml, 'test.yaml', { checks: CONFIG_CHECKS });
  const level = process.env['BULWARK_TEST_LOG'] ?? 'silent';
  // The config's `telemetry.logs.level` (default info) would otherwise override the test's level.
  process.env['BULWARK_LOG_LEVEL'] = level;
  const gateway = new Gateway({ logger: createLogger({ level }) });
  await gateway.start(loaded.config, loaded.hash);
  const port = [...gateway.ports().values()][0]!;
  return { gateway, port, url: `http://127.0.0.1:${port}`, close: async () => void (await gateway.stop(2000)) };
}

/** Writes raw bytes and collects the whole reply until the server closes or `waitMs` passes. */
export function rawRequest(port: number, data: string | Buffer, waitMs = 1500): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => socket.destroy(), waitMs);
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', (err) => (chunks.length > 0 ? undefined : reject(err)));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
    socket.write(data);
  });
}

export function statusOf(rawResponse: string): number {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(rawResponse);
  return m ? Number(m[1]) : 0;
}

export function bodyOf(rawResponse: string): string {
  const i = rawResponse.indexOf('\r\n\r\n');
  return i === -1 ? '' : rawResponse.slice(i + 4);
}

/**
 * A throwaway self-signed P-256 certificate for TLS listeners (localhost, 127.0.0.1): in a new
 * temporary directory as cert.pem / key.pem, or in `dir` as `<cn>.crt` / `<cn>.key`.
 */
export function selfSignedCert(options: { dir?: string; cn?: string } = {}): { cert: string; key: string; dir: string } {
  const cn = options.cn ?? 'localhost';
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'bulwark-tls-'));
  mkdirSync(dir, { recursive: true });
  const cert = join(dir, options.dir === undefined ? 'cert.pem' : `${cn}.crt`);
  const key = join(dir, options.dir === undefined ? 'key.pem' : `${cn}.key`);
  const subject = ['-subj', `/CN=${cn}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'];
  const pair = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert];
  execFileSync('openssl', ['req', '-x509', ...pair, '-days', '2', ...subject], { stdio: 'ignore' });
  return { cert, key, dir };
}

export function tempFile(name: string, content: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'bulwark-'));
  const file = join(dir, name);
  writeFileSync(file, content);
  return file;
}

/** One HTTP/2 frame by hand (RFC 9113 §4.1): for the protocol errors Node's client will not send. */
export function h2Frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/** An HPACK block of literal fields without indexing, new names, no Huffman (names and values under 127 bytes). */
export function hpackLiterals(fields: readonly (readonly [string, string])[]): Buffer {
  return Buffer.concat(
    fields.map(([name, value]) =>
      Buffer.concat([Buffer.from([0, name.length]), Buffer.from(name), Buffer.from([value.length]), Buffer.from(value)]),
    ),
  );
}

/** An HTTP/2 stream's answer: status, content type and the whole body as text. */
export function h2Answer(stream: ClientHttp2Stream): Promise<{ status: number; type: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    let type: string | undefined;
    let body = '';
    stream.on('response', (h) => {
      status = Number(h[':status']);
      type = h['content-type'];
    });
    stream.setEncoding('utf8');
    stream.on('data', (c: string) => (body += c));
    stream.on('end', () => resolve({ status, type, body }));
    stream.on('error', reject);
  });
}
