import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { contextFor } from '../../src/engine/admission.js';
import { AccessLogger, applyLogLevel, requestBindings, RequestLogger } from '../../src/telemetry/logging.js';
import { ACCESS_LOG_FIELDS, resolveTelemetryConfig } from '../../src/telemetry/schema.js';
import { createTelemetry, type Telemetry } from '../../src/telemetry/telemetry.js';
import { createTracing, hashIdentity } from '../../src/telemetry/tracing.js';
import { captureLogger, makeContext } from './helpers.js';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_ID = '00f067aa0ba902b7';

const telemetries: Telemetry[] = [];
afterEach(async () => {
  for (const t of telemetries.splice(0)) await t.shutdown();
});

describe('request-scoped logger', () => {
  it('every line carries trace_id, span_id and request_id', () => {
    const { logger, lines } = captureLogger();
    const tracing = createTracing(resolveTelemetryConfig({ traces: { exporter: 'otlp' } }), {
      exporter: new InMemorySpanExporter(),
    });
    const ctx = makeContext({ requestId: 'req-42', headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01` } });
    tracing.startServerSpan(ctx);
    const log = new RequestLogger(logger, ctx);
    log.info({ code: 'upstream.timeout' }, 'upstream failure');
    log.warn('plain message');
    log.logger.error({ a: 1 }, 'through the pino child');
    const out = lines();
    expect(out).toHaveLength(3);
    for (const line of out) {
      expect(line).toMatchObject({ request_id: 'req-42', trace_id: TRACE_ID, span_id: ctx.trace!.spanId });
      expect(line['span_id']).not.toBe(PARENT_ID);
    }
    void tracing.shutdown();
  });

  it('with traces off, lines still carry the caller trace id (and its span)', () => {
    const { logger, lines } = captureLogger();
    const tracing = createTracing(resolveTelemetryConfig({}));
    const ctx = makeContext({ headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01` } });
    tracing.startServerSpan(ctx);
    new RequestLogger(logger, ctx).info({}, 'x');
    expect(lines()[0]).toMatchObject({ trace_id: TRACE_ID, span_id: PARENT_ID, request_id: 'req-1' });
    expect(requestBindings(makeContext())).toEqual({ request_id: 'req-1' });
  });

  it('creates the child only when a line is actually written', () => {
    const { logger } = captureLogger('warn');
    const child = vi.spyOn(logger, 'child');
    const log = new RequestLogger(logger, makeContext());
    log.debug({ big: 'object' }, 'dropped');
    log.info({}, 'dropped too');
    expect(child).not.toHaveBeenCalled();
    log.warn({}, 'written');
    log.error({}, 'written, same child');
    expect(child).toHaveBeenCalledTimes(1);
  });
});

describe('access log', () => {
  const identity = { subject: 'alice@example.com', tenant: 'acme', roles: [], scopes: [], claims: {}, provider: 'corp' };

  it('writes the default fields', () => {
    const { logger, lines } = captureLogger();
    const access = new AccessLogger(logger, resolveTelemetryConfig({ logs: { accessLog: { enabled: true } } }).logs.accessLog);
    const ctx = makeContext({ method: 'POST', path: '/orders/7', route: 'orders', requestId: 'r-7' });
    ctx.trace = { traceId: TRACE_ID, spanId: PARENT_ID, sampled: true };
    access.log(ctx, 201, 12.34567, 321);
    const line = lines()[0]!;
    expect(line).toMatchObject({
      log: 'access',
      msg: 'access',
      request_id: 'r-7',
      trace_id: TRACE_ID,
      span_id: PARENT_ID,
      method: 'POST',
      path: '/orders/7',
      route: 'orders',
      status: 201,
      duration_ms: 12.346,
      bytes: 321,
      protocol: 'http/1.1',
      decision: 'allow',
    });
    expect(line['client_address']).toBeUndefined();
    expect(line['user_agent']).toBeUndefined();
  });

  it('writes exactly the configured fields; identity only hashed', () => {
    const { logger, lines } = captureLogger();
    const access = new AccessLogger(
      logger,
      resolveTelemetryConfig({
        logs: {
          accessLog: {
            enabled: true,
            fields: ['status', 'subject_hash', 'client_address', 'user_agent', 'upstream', 'decision'],
          },
        },
      }).logs.accessLog,
    );
    const ctx = makeContext({ identity, headers: { 'user-agent': 'curl/8.0' } });
    access.log(ctx, 403, 1, 10, { code: 'rbac.denied', upstream: null });
    const line = lines()[0]!;
    const { level, time, pid, hostname, name, log, msg, ...fields } = line;
    void [level, time, pid, hostname, name, log, msg];
    expect(fields).toEqual({
      status: 403,
      subject_hash: hashIdentity('alice@example.com'),
      client_address: '203.0.113.9',
      user_agent: 'curl/8.0',
      decision: 'rbac.denied',
    });
  });

  it('is written at info even when the rest is quieter, and not at all when disabled', () => {
    const { logger, lines } = captureLogger('error');
    new AccessLogger(logger, { enabled: true, fields: ['status'] }).log(makeContext(), 200, 1, 1);
    new AccessLogger(logger, { enabled: false, fields: ['status'] }).log(makeContext(), 200, 1, 1);
    expect(lines()).toHaveLength(1);
  });

  it('BULWARK_LOG_LEVEL wins over the configured level', () => {
    const { logger } = captureLogger('info');
    applyLogLevel(logger, 'debug', {});
    expect(logger.level).toBe('debug');
    applyLogLevel(logger, 'error', { BULWARK_LOG_LEVEL: 'trace' });
    expect(logger.level).toBe('debug');
  });
});

describe('no secrets in any log', () => {
  it('errors are logged as type, message, code and stack, never the payloads they carry', () => {
    const capture = captureLogger('info');
    // As undici reports an upstream that spoke nonsense: the raw bytes ride along in `data`.
    const parser = Object.assign(new Error('Invalid header value char'), {
      name: 'HTTPParserError',
      code: 'HPE_INVALID_HEADER_TOKEN',
      data: 'HTTP/1.1 200 OK\r\nx-upstream-secret: hunter2\r\n',
    });
    const outer = Object.assign(new Error('fetch failed', { cause: parser }), { body: 'upstream body secret' });
    capture.logger.warn({ err: outer, code: 'upstream.bad_response' }, 'upstream failure');
    capture.logger.warn({ err: new AggregateError([parser], 'all failed') }, 'aggregate');
    const [first, second] = capture.lines();
    expect(first!['err']).toMatchObject({
      type: 'Error',
      message: 'fetch failed',
      cause: { type: 'HTTPParserError', code: 'HPE_INVALID_HEADER_TOKEN', message: 'Invalid header value char' },
    });
    expect(second!['err']).toMatchObject({ type: 'AggregateError', errors: [{ code: 'HPE_INVALID_HEADER_TOKEN' }] });
    expect(capture.text()).not.toContain('hunter2');
    expect(capture.text()).not.toContain('upstream body secret');
  });

  it('a request with Authorization and Cookie leaves no token material in the logs', async () => {
    const token = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZUBleGFtcGxlLmNvbSJ9.c2lnbmF0dXJlLXNlY3JldA';
    const cookie = 'session=s3cr3t-session-value; csrf=another-secret';
    const capture = captureLogger('trace');
    const telemetry = createTelemetry(
      {
        telemetry: {
          traces: { exporter: 'otlp' },
          logs: { level: 'trace', accessLog: { enabled: true, fields: [...ACCESS_LOG_FIELDS] } },
        },
        routes: [{ id: 'orders', match: { path: { prefix: '/orders' } } }],
      },
      { logger: capture.logger, role: 'single', spanExporter: new InMemorySpanExporter() },
    );
    telemetries.push(telemetry);
    const server = createServer((req, res) => {
      const ctx = contextFor(req, false);
      const span = telemetry.startRequest(ctx);
      ctx.path = '/orders/1';
      ctx.query = `access_token=${token}`;
      ctx.route = { id: 'orders', params: {} };
      ctx.identity = { subject: 'alice@example.com', tenant: 'acme', roles: [], scopes: [], claims: {}, provider: 'corp' };
      ctx.decisions.push({ stage: 'authn', outcome: 'allow', code: 'authn.valid', detail: { provider: 'corp', kid: 'k1' } });
      const log = telemetry.requestLogger(ctx);
      // Careless callers: the logger's redaction is the net under them.
      log.debug({ headers: req.headers }, 'incoming request');
      log.info({ authorization: req.headers.authorization, cookie: req.headers.cookie }, 'flat copies');
      res.writeHead(200, { 'content-length': 2 });
      res.end('ok');
      telemetry.finishRequest(ctx, span, 200, 2, { upstream: 'orders' });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as AddressInfo).port;
    const res = await fetch(`http://127.0.0.1:${port}/orders/1?access_token=${token}`, {
      headers: { authorization: `Bearer ${token}`, cookie, 'user-agent': 'test-agent' },
    });
    expect(res.status).toBe(200);
    await res.text();
    await new Promise<void>((r) => server.close(() => r()));

    const text = capture.text();
    const lines = capture.lines();
    expect(lines.some((l) => l['msg'] === 'access')).toBe(true);
    expect(lines.some((l) => l['msg'] === 'incoming request')).toBe(true);
    for (const secret of [
      token,
      token.split('.')[1]!,
      token.split('.')[2]!,
      's3cr3t-session-value',
      'another-secret',
      'alice@example.com',
    ]) {
      expect(text).not.toContain(secret);
    }
    expect(text).toContain('[redacted]');
    const access = lines.find((l) => l['msg'] === 'access')!;
    expect(access).toMatchObject({
      path: '/orders/1',
      user_agent: 'test-agent',
      subject_hash: hashIdentity('alice@example.com'),
      tenant: 'acme',
    });
  });
});
