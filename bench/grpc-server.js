// The gRPC upstream for bench/grpc.js: the example Greeter (examples/grpc/server.js,
// one method of each call kind) in a process of its own.
//
//   node bench/grpc-server.js [--port N] [--exit-with-stdin]   # prints {"port":N} on stdout
import { startGreeter } from '../examples/grpc/server.js';
import { argValue, exitWithParent } from './upstream.js';

const { server, port } = await startGreeter(Number(argValue(process.argv, '--port') ?? 0));
process.stdout.write(JSON.stringify({ port }) + '\n');
exitWithParent(() => new Promise((resolve) => server.tryShutdown(() => resolve())));
