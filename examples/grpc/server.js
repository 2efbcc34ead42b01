// The example Greeter: a plain grpc-js service that trusts the gateway in front of it.
// It reads the caller from `x-user-id`, which the gateway sets from the verified token (and
// strips from what clients send), so the service itself never handles tokens.
//
//   node examples/grpc/server.js            # listens on 127.0.0.1:50051 (GREETER_PORT)
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

const PROTO = fileURLToPath(new URL('./greeter.proto', import.meta.url));

export function loadGreeter() {
  const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, defaults: true });
  return grpc.loadPackageDefinition(definition).demo.v1.Greeter;
}

const callerOf = (call) => String(call.metadata.get('x-user-id')[0] ?? 'anonymous');

const handlers = {
  SayHello(call, callback) {
    callback(null, { message: `Hello, ${call.request.name || 'world'}!`, caller: callerOf(call) });
  },
  StreamGreetings(call) {
    const count = Math.min(call.request.count || 3, 10_000);
    let i = 0;
    // Honour backpressure: write until the stream is full, continue on 'drain'.
    const more = () => {
      while (i < count && !call.cancelled) {
        i++;
        if (!call.write({ message: `Hello #${i}, ${call.request.name || 'world'}!`, caller: callerOf(call) })) {
          return void call.once('drain', more);
        }
      }
      if (!call.cancelled) call.end();
    };
    more();
  },
  CollectNames(call, callback) {
    const names = [];
    call.on('data', (req) => names.push(req.name));
    call.on('end', () => callback(null, { count: names.length, names: names.slice(0, 100) }));
    call.on('error', () => {});
  },
  Chat(call) {
    call.on('data', (req) => call.write({ message: `Hi ${req.name}, nice to meet you.`, caller: callerOf(call) }));
    call.on('end', () => call.end());
    call.on('error', () => {});
  },
};

/** Starts the Greeter; resolves with the server and its port (0 picks a free one). */
export function startGreeter(port = Number(process.env.GREETER_PORT ?? 50051), host = '127.0.0.1') {
  const server = new grpc.Server();
  server.addService(loadGreeter().service, handlers);
  return new Promise((resolve, reject) =>
    server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(err) : resolve({ server, port: bound }),
    ),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { server, port } = await startGreeter();
  process.stderr.write(`Greeter listening on 127.0.0.1:${port}\n`);
  const stop = () => server.tryShutdown(() => process.exit(0));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
