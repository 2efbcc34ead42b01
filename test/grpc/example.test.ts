/** examples/grpc end to end: its service, its client and its gateway config, per-method policy included. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Server } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKeys, mintToken, writeKeys } from '../../src/cli/dev-tokens.js';
import { startGrpcHarness, type Harness } from './harness.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/grpc/', import.meta.url));

interface Outcome {
  code: number;
  details?: string;
  result?: unknown;
}
type Demo = (target: string, token?: string) => Promise<Record<string, Outcome>>;

describe('examples/grpc', () => {
  let greeter: Server;
  let gw: Harness;
  let runDemo: Demo;
  let keyFile: string;
  beforeAll(async () => {
    // Plain JS modules, loaded as users run them.
    const server = (await import(pathToFileURL(join(EXAMPLE, 'server.js')).href)) as {
      startGreeter(port: number): Promise<{ server: Server; port: number }>;
    };
    ({ runDemo } = (await import(pathToFileURL(join(EXAMPLE, 'client.js')).href)) as { runDemo: Demo });
    const started = await server.startGreeter(0);
    greeter = started.server;
    const keys = mkdtempSync(join(tmpdir(), 'bulwark-grpc-example-'));
    keyFile = writeKeys(keys, await generateKeys('ES256', 'demo')).privateKey;
    gw = await startGrpcHarness({
      upstream: '',
      file: join(EXAMPLE, 'gateway.yaml'),
      env: {
        ...process.env,
        BULWARK_PORT: '0',
        BULWARK_ADMIN_PORT: '0',
        GREETER_ORIGIN: `http://127.0.0.1:${started.port}`,
        GRPC_EXAMPLE_KEYS: keys,
      },
    });
  });
  afterAll(async () => {
    await gw?.close();
    greeter?.forceShutdown();
  });

  const mint = (subject: string, roles: string[]) =>
    mintToken({ keyFile, issuer: 'https://demo.bulwark.local', audience: ['greeter'], subject, roles });

  it('without a token: only the public method', async () => {
    const r = await runDemo(`127.0.0.1:${gw.port}`);
    expect(r['SayHello']).toMatchObject({ code: 0, result: { message: 'Hello, Ada!', caller: 'anonymous' } });
    expect(r['StreamGreetings']!.code).toBe(16);
    expect(r['CollectNames']!.code).toBe(16);
    expect(r['Chat']!.code).toBe(16);
  });

  it('a token without the role: streaming greetings too, not the greeter-only methods', async () => {
    const r = await runDemo(`127.0.0.1:${gw.port}`, await mint('bob', []));
    expect(r['StreamGreetings']).toMatchObject({
      code: 0,
      result: [1, 2, 3].map((i) => ({ message: `Hello #${i}, Ada!`, caller: 'bob' })),
    });
    expect(r['CollectNames']!.code).toBe(7);
    expect(r['Chat']!.code).toBe(7);
  });

  it('a greeter: every method, and the service sees the verified caller', async () => {
    const r = await runDemo(`127.0.0.1:${gw.port}`, await mint('ada', ['greeter']));
    // A public route authenticates nobody: the token is not even looked at there.
    expect(r['SayHello']).toMatchObject({ code: 0, result: { caller: 'anonymous' } });
    expect(r['CollectNames']).toMatchObject({ code: 0, result: { count: 3, names: ['Ada', 'Grace', 'Barbara'] } });
    expect(r['Chat']).toMatchObject({
      code: 0,
      result: [
        { message: 'Hi Ada, nice to meet you.', caller: 'ada' },
        { message: 'Hi Grace, nice to meet you.', caller: 'ada' },
      ],
    });
  });
});
