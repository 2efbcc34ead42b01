/**
 * `holdEnd`: a durable response's end waits for its commit, and meanwhile the response reads as
 * ended (`headersSent`, `writableEnded`) and refuses header changes, as Node's own response does
 * once it has ended. The same for a plain Node response (held through its own properties) and for
 * the gateway's holdable classes (held through a flag their prototype reads, no own property).
 */
import type { ServerResponse } from 'node:http';
import { createServer, request, ServerResponse as NodeServerResponse, type IncomingMessage } from 'node:http';
import type { Http2ServerResponse } from 'node:http2';
import { connect, createServer as createH2Server, type Http2ServerRequest } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createAuditLog } from '../../src/audit/log.js';
import { CONFIG_CHECKS } from '../../src/server/config-source.js';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { echoGatewayYaml } from '../helpers/net.js';
import { HoldableHttp2ServerResponse, HoldableServerResponse, holdEnd } from '../../src/engine/audit.js';

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

type AnyResponse = ServerResponse | Http2ServerResponse;

interface HeldView {
  headersSent: boolean;
  writableEnded: boolean;
  setHeaderCode: unknown;
  ownHoldProperties: string[];
}

const HOLD_PROPERTIES = ['headersSent', 'writableEnded', 'setHeader', 'removeHeader', 'appendHeader', 'flushHeaders'];

/** Answers `ok` through holdEnd; reports what the response looked like while held; `commit()` lets it go. */
function heldHandler() {
  let commit!: () => void;
  const committed = new Promise<void>((resolve) => (commit = resolve));
  let view!: (value: { held: HeldView; res: AnyResponse }) => void;
  const viewed = new Promise<{ held: HeldView; res: AnyResponse }>((resolve) => (view = resolve));
  const handler = (_req: IncomingMessage | Http2ServerRequest, res: AnyResponse) => {
    holdEnd(res as never, () => committed);
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
    res.end('ok');
    let setHeaderCode: unknown = null;
    try {
      res.setHeader('x-late', '1');
    } catch (error) {
      setHeaderCode = (error as { code?: unknown }).code;
    }
    view({
      held: {
        headersSent: res.headersSent,
        writableEnded: res.writableEnded,
        setHeaderCode,
        ownHoldProperties: HOLD_PROPERTIES.filter((name) => Object.prototype.hasOwnProperty.call(res, name)),
      },
      res,
    });
  };
  return { handler, commit, viewed };
}

async function http1(responseClass: typeof ServerResponse | null) {
  const { handler, commit, viewed } = heldHandler();
  const server = createServer(responseClass === null ? {} : { ServerResponse: responseClass }, handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise((resolve) => server.close(() => resolve())));
  let ended = false;
  const body = new Promise<{ status: number; body: string; late: unknown }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, path: '/' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => {
        ended = true;
        resolve({ status: res.statusCode!, body: text, late: res.headers['x-late'] });
      });
    });
    req.on('error', reject);
    req.end();
  });
  return { commit, viewed, body, ended: () => ended };
}

async function http2(responseClass: typeof Http2ServerResponse | null) {
  const { handler, commit, viewed } = heldHandler();
  const server = createH2Server(responseClass === null ? {} : { Http2ServerResponse: responseClass }, handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  closers.push(async () => {
    client.close();
    await new Promise((resolve) => server.close(resolve));
  });
  let ended = false;
  const body = new Promise<{ status: number; body: string; late: unknown }>((resolve, reject) => {
    const stream = client.request({ ':path': '/' });
    let status = 0;
    let late: unknown;
    let text = '';
    stream.setEncoding('utf8');
    stream.on('response', (headers) => {
      status = Number(headers[':status']);
      late = headers['x-late'];
    });
    stream.on('data', (chunk: string) => (text += chunk));
    stream.on('end', () => {
      ended = true;
      resolve({ status, body: text, late });
    });
    stream.on('error', reject);
  });
  return { commit, viewed, body, ended: () => ended };
}

const cases = [
  { name: 'HTTP/1.1, Node’s response (own properties for the hold)', start: () => http1(null), holdable: false },
  { name: 'HTTP/1.1, HoldableServerResponse (a flag)', start: () => http1(HoldableServerResponse), holdable: true },
  { name: 'HTTP/2, Node’s response (own properties for the hold)', start: () => http2(null), holdable: false },
  { name: 'HTTP/2, HoldableHttp2ServerResponse (a flag)', start: () => http2(HoldableHttp2ServerResponse), holdable: true },
];

describe('holdEnd', () => {
  for (const c of cases) {
    it(`${c.name}: reads as ended and refuses headers while held; the client gets it all after the commit`, async () => {
      const { commit, viewed, body, ended } = await c.start();
      const { held, res } = await viewed;
      expect(held.headersSent).toBe(true);
      expect(held.writableEnded).toBe(true);
      expect(held.setHeaderCode).toBe('ERR_HTTP_HEADERS_SENT');
      // The holdable classes change no property of the response itself.
      if (c.holdable) expect(held.ownHoldProperties).toEqual([]);
      else expect(held.ownHoldProperties.length).toBeGreaterThan(0);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(ended()).toBe(false); // the end waits for the commit
      commit();
      expect(await body).toEqual({ status: 200, body: 'ok', late: undefined });
      // Released: the response is Node's again, really ended, nothing of the hold left on it.
      expect(res.writableEnded).toBe(true);
      expect(res.headersSent).toBe(true);
      expect(HOLD_PROPERTIES.filter((name) => Object.prototype.hasOwnProperty.call(res, name))).toEqual([]);
      // Node's own refusal now (ERR_HTTP_HEADERS_SENT, or ERR_HTTP2_HEADERS_SENT for HTTP/2).
      expect(() => res.setHeader('x-after', '1')).toThrow(
        expect.objectContaining({ code: expect.stringMatching(/^ERR_HTTP2?_HEADERS_SENT$/) }) as Error,
      );
    });
  }

  it('a holdable response that is not held is Node’s response: headers open until written', async () => {
    const seen: { before: boolean; after: boolean; header: unknown }[] = [];
    const server = createServer({ ServerResponse: HoldableServerResponse }, (_req, res) => {
      const before = res.headersSent;
      res.setHeader('x-open', 'yes');
      res.end('plain');
      seen.push({ before, after: res.headersSent, header: res.getHeader('x-open') });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise((resolve) => server.close(() => resolve())));
    const answer = await new Promise<{ body: string; header: unknown }>((resolve, reject) => {
      request({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, path: '/' }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ body: text, header: res.headers['x-open'] }));
      })
        .on('error', reject)
        .end();
    });
    expect(answer).toEqual({ body: 'plain', header: 'yes' });
    expect(seen).toEqual([{ before: false, after: true, header: 'yes' }]);
  });

  it('the gateway holds its durable responses with the holdable classes: no property defined on a response', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-hold-'));
    closers.push(async () => rmSync(dir, { recursive: true, force: true }));
    const loaded = parseConfig(
      echoGatewayYaml(`  durability: durable
  wal: { dir: '${dir}/wal' }
  sinks: [{ file: { path: '${dir}/audit.jsonl' } }]
`),
      'hold.yaml',
      { checks: CONFIG_CHECKS },
    );
    const logger = createLogger({ level: 'silent' });
    // As `bulwark serve` builds it: the audit log first, then the gateway around it.
    const audit = await createAuditLog(loaded.config.audit!, { logger });
    const gateway = new Gateway({ logger, audit });
    await gateway.start(loaded.config, loaded.hash);
    closers.push(async () => {
      await gateway.stop(2000);
      await audit.close();
    });
    const url = `http://127.0.0.1:${[...gateway.ports().values()][0]!}`;
    const defineProperty = vi.spyOn(Object, 'defineProperty');
    try {
      const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        request(`${url}/echo/held`, (res) => {
          let text = '';
          res.on('data', (chunk: Buffer) => (text += chunk.toString()));
          res.on('end', () => resolve({ status: res.statusCode!, body: text }));
        })
          .on('error', reject)
          .end();
      });
      expect(answer.status).toBe(200);
      const onResponses = defineProperty.mock.calls.filter(([target]) => target instanceof NodeServerResponse);
      expect(onResponses.map(([, name]) => name)).toEqual([]);
    } finally {
      defineProperty.mockRestore();
    }
  });
});
