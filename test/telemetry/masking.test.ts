/**
 * Identity values leave in spans and access lines as the audit masking rules write their
 * fields (`subject`, `tenant`, `clientIp`): a keyed pseudonym there is the same one as in
 * the audit record, so traces and audit join without the raw value; a redacted field is
 * redacted everywhere. Without a rule, spans hash the value and the access log keeps its
 * documented defaults.
 */
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it } from 'vitest';
import { compileMasking, Masker } from '../../src/audit/mask.js';
import type { MaskingConfig } from '../../src/audit/schema.js';
import { AccessLogger, createTelemetry, hashIdentity, type Telemetry, type TelemetryInput } from '../../src/telemetry/index.js';
import { captureLogger, makeContext } from './helpers.js';

const identity = { subject: 'alice@example.com', tenant: 'acme', roles: [], scopes: [], claims: {}, provider: 'corp' };
const masking: MaskingConfig = {
  hmacKey: 'telemetry-masking-test-key-0123456789abcdef',
  headers: {},
  query: {},
  fields: [
    { path: 'subject', action: 'hash' },
    { path: 'tenant', action: 'redact' },
    { path: 'clientIp', action: 'partial', keep: 3 },
  ],
};

function input(audit: TelemetryInput['audit']): TelemetryInput {
  return {
    telemetry: {
      traces: { exporter: 'otlp', identityAttributes: true },
      logs: { accessLog: { enabled: true, fields: ['subject_hash', 'tenant', 'client_address'] } },
    },
    audit,
  };
}

let open: Telemetry[] = [];
afterEach(async () => {
  await Promise.all(open.map((t) => t.shutdown()));
  open = [];
});

function start(audit: TelemetryInput['audit']) {
  const exporter = new InMemorySpanExporter();
  const capture = captureLogger();
  const telemetry = createTelemetry(input(audit), {
    logger: capture.logger,
    role: 'single',
    spanExporter: exporter,
    simpleSpanProcessor: true,
  });
  open.push(telemetry);
  /** One request with the identity; its server span's attributes and its access line. */
  const serve = () => {
    exporter.reset();
    const ctx = makeContext({ identity });
    telemetry.finishRequest(ctx, telemetry.startRequest(ctx), 200, 10);
    const span = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER)!;
    const line = capture
      .lines()
      .filter((l) => l['log'] === 'access')
      .at(-1)!;
    return { attributes: span.attributes, line, text: capture.text() + JSON.stringify(span.attributes) };
  };
  return { telemetry, serve };
}

describe('identity in spans and access lines follows the audit masking rules', () => {
  it('hash: the audit pseudonym; redact and partial as in the audit record; never the raw values', () => {
    const pseudonym = new Masker(compileMasking(masking)).pseudonym('alice@example.com');
    const { serve } = start({ masking });
    const { attributes, line, text } = serve();
    expect(attributes['enduser.id']).toBe(pseudonym);
    expect(attributes['bulwark.tenant']).toBe('[redacted]');
    expect(line).toMatchObject({ subject_hash: pseudonym, tenant: '[redacted]', client_address: '********3.9' });
    expect(text).not.toContain('alice@example.com');
    expect(text).not.toContain('acme');
    expect(text).not.toContain('203.0.113.9');
  });

  it('without rules: spans hash, the access log keeps tenant and client address (opt-in fields)', () => {
    const { serve } = start(undefined);
    const { attributes, line } = serve();
    expect(attributes['enduser.id']).toBe(hashIdentity('alice@example.com'));
    expect(attributes['bulwark.tenant']).toBe(hashIdentity('acme'));
    expect(line).toMatchObject({
      subject_hash: hashIdentity('alice@example.com'),
      tenant: 'acme',
      client_address: '203.0.113.9',
    });
  });

  it('a `*` rule covers them too', () => {
    const { serve } = start({
      masking: { hmacKey: masking.hmacKey!, fields: [{ path: '*', action: 'redact' }], headers: {}, query: {} },
    });
    const { attributes, line } = serve();
    expect(attributes['enduser.id']).toBe('[redacted]');
    expect(line).toMatchObject({ subject_hash: '[redacted]', tenant: '[redacted]', client_address: '[redacted]' });
  });

  it('the access line names the client as the audit record does: after trusted proxies', () => {
    const capture = captureLogger();
    const access = new AccessLogger(capture.logger, { enabled: true, fields: ['client_address'] });
    const ctx = makeContext();
    ctx.clientAddress = '198.51.100.7'; // what a trusted proxy said; the peer is the proxy
    access.log(ctx, 200, 1, 1);
    expect(capture.lines().at(-1)).toMatchObject({ client_address: '198.51.100.7' });
  });

  it('a reload applies changed rules to both', async () => {
    const { telemetry, serve } = start(undefined);
    expect(serve().line['tenant']).toBe('acme');
    await telemetry.reload(input({ masking }));
    const after = serve();
    expect(after.line['tenant']).toBe('[redacted]');
    expect(after.attributes['bulwark.tenant']).toBe('[redacted]');
    await telemetry.reload(input({ masking: { fields: [], headers: {}, query: {} } }));
    expect(serve().line['tenant']).toBe('acme');
  });
});
