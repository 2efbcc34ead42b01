// A gRPC load generator (autocannon speaks HTTP/1 only): a grpc-js client calling the
// example Greeter (examples/grpc/greeter.proto) as fast as it can for a fixed time,
// `--concurrency` calls in flight at once over `--channels` HTTP/2 connections.
//
//   node bench/grpc-load.js --target 127.0.0.1:PORT [--mode unary|stream|bidi] [--concurrency C]
//       [--duration S] [--warmup S] [--size BYTES] [--count N] [--channels N]
//
// - unary:  SayHello in a loop on each of C workers; calls/s, latency percentiles.
// - stream: StreamGreetings (server streaming), N replies per call (≤ 10,000, the
//           Greeter's cap), each ~BYTES bytes (the name is echoed in every reply);
//           C calls in flight, a new one as soon as one ends; messages/s and MB/s.
// - bidi:   Chat (bidirectional): each of C calls writes N names of BYTES bytes (with
//           backpressure) and reads the N replies, then ends; messages/s and MB/s
//           of replies.
// Requests are encoded with the proto (proto-loader); replies are taken as raw bytes
// (not decoded: the byte count is exact and the client spends its CPU on the calls,
// not on protobuf), and checked to be Greeter replies.
//
// Prints `{"event":"start"}` and `{"event":"stop"}` around the measured window, then one JSON line last: {"mode","seconds","calls","callsPerSec","messages",
// "messagesPerSec","bytes","mbPerSec","errors","errorCodes","latencyMs":{p50,p90,p99}|null}.
// Exits 1 if no call succeeded.
import * as grpc from '@grpc/grpc-js';
import { performance } from 'node:perf_hooks';
import { loadGreeter } from '../examples/grpc/server.js';
import { argValue } from './upstream.js';

const argv = process.argv;
const target = argValue(argv, '--target');
const mode = argValue(argv, '--mode') ?? 'unary';
const concurrency = Number(argValue(argv, '--concurrency') ?? 50);
const duration = Number(argValue(argv, '--duration') ?? 5);
const warmup = Number(argValue(argv, '--warmup') ?? 1);
const size = Number(argValue(argv, '--size') ?? (mode === 'unary' ? 16 : 1024));
const count = Number(argValue(argv, '--count') ?? 1000);
const channels = Number(argValue(argv, '--channels') ?? 1);
if (!target || !['unary', 'stream', 'bidi'].includes(mode) || !(concurrency >= 1) || !(duration > 0) || !(channels >= 1)) {
  process.stderr.write(
    'usage: node bench/grpc-load.js --target host:port [--mode unary|stream|bidi] [--concurrency C] [--duration S] [--warmup S] [--size B] [--count N] [--channels N]\n',
  );
  process.exit(2);
}

// The Greeter's definition with raw-byte replies.
const definition = loadGreeter().service;
const identity = (b) => b;
const raw = Object.fromEntries(Object.entries(definition).map(([name, m]) => [name, { ...m, responseDeserialize: identity }]));
const RawGreeter = grpc.makeGenericClientConstructor(raw, 'Greeter');
// Distinct channel options keep grpc-js from sharing one connection between the clients.
const clients = Array.from(
  { length: channels },
  (_, i) => new RawGreeter(target, grpc.credentials.createInsecure(), { 'bench.channel': i }),
);
const clientFor = (i) => clients[i % channels];

// A HelloReply's field 1 (`message`) starts with tag 0x0a; the Greeter's replies all begin "Hello"/"Hi".
const isReply = (b) => Buffer.isBuffer(b) && b.length > 2 && b[0] === 0x0a;
const name = 'x'.repeat(Math.max(1, size));
const deadlineMs = 30_000;

const stats = {
  calls: 0,
  messages: 0,
  bytes: 0,
  errors: 0,
  errorCodes: {},
  latencies: [],
  recording: false,
};
const fail = (err) => {
  stats.errors++;
  const code = err?.code ?? 'unknown';
  stats.errorCodes[code] = (stats.errorCodes[code] ?? 0) + 1;
  if (stats.errors <= 3) process.stderr.write(`grpc-load: ${mode} call failed: ${err?.code} ${err?.details ?? err?.message}\n`);
};

let running = true;

function unaryWorker(i) {
  const client = clientFor(i);
  return new Promise((resolve) => {
    const next = () => {
      if (!running) return resolve();
      const started = performance.now();
      client.SayHello({ name }, { deadline: Date.now() + deadlineMs }, (err, reply) => {
        if (stats.recording) {
          if (err || !isReply(reply)) fail(err ?? new Error('not a HelloReply'));
          else {
            stats.calls++;
            stats.messages++;
            stats.bytes += reply.length;
            stats.latencies.push(performance.now() - started);
          }
        }
        next();
      });
    };
    next();
  });
}

function streamWorker(i) {
  const client = clientFor(i);
  return new Promise((resolve) => {
    const next = () => {
      if (!running) return resolve();
      const call = client.StreamGreetings({ name, count }, { deadline: Date.now() + deadlineMs });
      let n = 0;
      let bad = false;
      let done = false;
      call.on('data', (reply) => {
        if (!isReply(reply)) bad = true;
        if (stats.recording) {
          stats.messages++;
          stats.bytes += reply.length;
        }
        n++;
        if (!running) call.cancel();
      });
      const finish = (err) => {
        if (done) return;
        done = true;
        if (stats.recording) {
          if (err && err.code !== grpc.status.CANCELLED) fail(err);
          else if (!err && (bad || n !== count)) fail(new Error(bad ? 'not a HelloReply' : `${n} replies, expected ${count}`));
          else if (!err) stats.calls++;
        }
        next();
      };
      call.on('error', finish);
      call.on('end', () => finish(null));
    };
    next();
  });
}

function bidiWorker(i) {
  const client = clientFor(i);
  return new Promise((resolve) => {
    const next = () => {
      if (!running) return resolve();
      const call = client.Chat({ deadline: Date.now() + deadlineMs });
      let sent = 0;
      let received = 0;
      let bad = false;
      let done = false;
      const write = () => {
        while (sent < count && running) {
          sent++;
          if (!call.write({ name })) return void call.once('drain', write);
        }
        call.end();
      };
      call.on('data', (reply) => {
        if (!isReply(reply)) bad = true;
        received++;
        if (stats.recording) {
          stats.messages++;
          stats.bytes += reply.length;
        }
      });
      const finish = (err) => {
        if (done) return;
        done = true;
        if (stats.recording) {
          if (err && err.code !== grpc.status.CANCELLED) fail(err);
          else if (!err && (bad || received !== sent))
            fail(new Error(bad ? 'not a HelloReply' : `${received} replies to ${sent}`));
          else if (!err) stats.calls++;
        }
        next();
      };
      call.on('error', finish);
      call.on('end', () => finish(null));
      write();
    };
    next();
  });
}

const worker = { unary: unaryWorker, stream: streamWorker, bidi: bidiWorker }[mode];
const workers = Array.from({ length: concurrency }, (_, i) => worker(i));

// Warm-up (connections, JIT on both sides), then the measured window. Calls that span
// the switch count in the window only for what happens inside it (stream messages) or
// not at all (a unary call started in the warm-up is not recorded).
// `{"event":"start"}` / `{"event":"stop"}` mark the window on stdout (bench/grpc.js samples CPU times there).
await new Promise((r) => setTimeout(r, warmup * 1000));
process.stdout.write('{"event":"start"}\n');
stats.recording = true;
const started = performance.now();
await new Promise((r) => setTimeout(r, duration * 1000));
const seconds = (performance.now() - started) / 1000;
stats.recording = false;
process.stdout.write('{"event":"stop"}\n');
running = false;
// Let the calls in flight finish (or be cancelled), without recording them.
await Promise.race([Promise.all(workers), new Promise((r) => setTimeout(r, 5_000))]);
for (const c of clients) c.close();

const sorted = Float64Array.from(stats.latencies).sort();
const at = (p) =>
  sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] * 1000) / 1000 : null;
const out = {
  mode,
  target,
  concurrency,
  channels,
  size,
  count: mode === 'unary' ? 1 : count,
  seconds: Math.round(seconds * 1000) / 1000,
  calls: stats.calls,
  callsPerSec: stats.calls / seconds,
  messages: stats.messages,
  messagesPerSec: stats.messages / seconds,
  bytes: stats.bytes,
  mbPerSec: stats.bytes / seconds / 1e6,
  errors: stats.errors,
  errorCodes: stats.errorCodes,
  latencyMs: mode === 'unary' ? { p50: at(0.5), p90: at(0.9), p99: at(0.99) } : null,
};
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(stats.messages > 0 ? 0 : 1);
