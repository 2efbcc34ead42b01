// Calls every method of the example Greeter through the gateway and prints what happened.
//
//   node examples/grpc/client.js [host:port] [token]     # defaults: 127.0.0.1:8081, $TOKEN
import * as grpc from '@grpc/grpc-js';
import { fileURLToPath } from 'node:url';
import { loadGreeter } from './server.js';

/** One call of each kind; resolves with `{ method: { code, details?, result? } }`. */
export async function runDemo(target, token) {
  const Greeter = loadGreeter();
  const client = new Greeter(target, grpc.credentials.createInsecure());
  const metadata = () => {
    const md = new grpc.Metadata();
    if (token) md.set('authorization', `Bearer ${token}`);
    return md;
  };
  const outcome = (err, result) => (err ? { code: err.code, details: err.details } : { code: 0, result });
  const deadline = () => ({ deadline: Date.now() + 5000 });
  const unary = () =>
    new Promise((resolve) => client.SayHello({ name: 'Ada' }, metadata(), deadline(), (err, res) => resolve(outcome(err, res))));
  const serverStream = () =>
    new Promise((resolve) => {
      const replies = [];
      const call = client.StreamGreetings({ name: 'Ada', count: 3 }, metadata(), deadline());
      call.on('data', (r) => replies.push(r));
      call.on('error', (err) => resolve(outcome(err)));
      call.on('end', () => resolve(outcome(null, replies)));
    });
  const clientStream = () =>
    new Promise((resolve) => {
      const call = client.CollectNames(metadata(), deadline(), (err, res) => resolve(outcome(err, res)));
      for (const name of ['Ada', 'Grace', 'Barbara']) call.write({ name });
      call.end();
    });
  const bidi = () =>
    new Promise((resolve) => {
      const replies = [];
      const call = client.Chat(metadata(), deadline());
      call.on('data', (r) => replies.push(r));
      call.on('error', (err) => resolve(outcome(err)));
      call.on('end', () => resolve(outcome(null, replies)));
      call.write({ name: 'Ada' });
      call.write({ name: 'Grace' });
      call.end();
    });
  try {
    return {
      SayHello: await unary(),
      StreamGreetings: await serverStream(),
      CollectNames: await clientStream(),
      Chat: await bidi(),
    };
  } finally {
    client.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [target = '127.0.0.1:8081', token = process.env.TOKEN] = process.argv.slice(2);
  const results = await runDemo(target, token);
  const names = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));
  for (const [method, r] of Object.entries(results)) {
    const what = r.code === 0 ? JSON.stringify(r.result) : `${r.details}`;
    process.stdout.write(`${method.padEnd(16)} ${names[r.code]} (${r.code})  ${what}\n`);
  }
}
