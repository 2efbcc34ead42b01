// A local OTLP/HTTP trace receiver for the benchmarks: answers 200 (an empty
// ExportTraceServiceResponse) to every POST whose path ends in /v1/traces, and
// discards the spans after counting them. A real exporter then does all its work
// (batching, protobuf encoding, an HTTP round trip per batch) without a collector's
// cost or latency in the way.
//
// Counting walks the protobuf wire format just deep enough to find each Span and its
// `kind` (ExportTraceServiceRequest.resource_spans[1] → ResourceSpans.scope_spans[2]
// → ScopeSpans.spans[2] → Span.kind[6]); gzip bodies are inflated first, JSON bodies
// (application/json) parsed. Counts are kept per path, so several gateways can share
// one sink with endpoints like http://127.0.0.1:N/<variant>/v1/traces.
//
//   node bench/otlp-sink.js [--port N] [--exit-with-stdin]   # prints {"port":N} on stdout
//   GET /stats  → {"paths":{"/1/v1/traces":{"posts":N,"bytes":N,"spans":N,"server":N,"client":N,"internal":N,"other":N,"errors":N}}}
//   DELETE /stats → resets the counts
import http from 'node:http';
import { gunzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { argValue, exitWithParent } from './upstream.js';

const KIND = { 1: 'internal', 2: 'server', 3: 'client' };

/** Calls `onField(fieldNumber, wireType, value, start, end)` for each top-level field of a protobuf message. */
function walk(buf, start, end, onField) {
  let i = start;
  const varint = () => {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (i >= end) throw new Error('truncated varint');
      const b = buf[i++];
      // Numbers beyond 2^53 only occur in fields we skip; keep the arithmetic in doubles.
      result += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return result;
      shift += 7;
      if (shift > 63) throw new Error('bad varint');
    }
  };
  while (i < end) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) onField(field, wire, varint());
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = varint();
      if (i + len > end) throw new Error('truncated field');
      onField(field, wire, null, i, i + len);
      i += len;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
}

function countProtobuf(buf, counts) {
  walk(buf, 0, buf.length, (f, w, _v, s, e) => {
    if (f !== 1 || w !== 2) return; // resource_spans
    walk(buf, s, e, (f2, w2, _v2, s2, e2) => {
      if (f2 !== 2 || w2 !== 2) return; // scope_spans
      walk(buf, s2, e2, (f3, w3, _v3, s3, e3) => {
        if (f3 !== 2 || w3 !== 2) return; // spans
        let kind = 0;
        walk(buf, s3, e3, (f4, w4, v4) => {
          if (f4 === 6 && w4 === 0) kind = v4;
        });
        counts.spans++;
        counts[KIND[kind] ?? 'other']++;
      });
    });
  });
}

function countJson(text, counts) {
  const KIND_NAMES = { SPAN_KIND_INTERNAL: 1, SPAN_KIND_SERVER: 2, SPAN_KIND_CLIENT: 3 };
  for (const rs of JSON.parse(text).resourceSpans ?? []) {
    for (const ss of rs.scopeSpans ?? []) {
      for (const span of ss.spans ?? []) {
        const kind = typeof span.kind === 'string' ? KIND_NAMES[span.kind] : span.kind;
        counts.spans++;
        counts[KIND[kind] ?? 'other']++;
      }
    }
  }
}

/**
 * @param {{ port?: number, host?: string }} [options]
 * @returns {Promise<{ port: number, stats: () => object, close: () => Promise<void> }>}
 */
export function startOtlpSink({ port = 0, host = '127.0.0.1' } = {}) {
  let paths = new Map();
  const countsFor = (p) => {
    let c = paths.get(p);
    if (!c) paths.set(p, (c = { posts: 0, bytes: 0, spans: 0, server: 0, client: 0, internal: 0, other: 0, errors: 0 }));
    return c;
  };
  const stats = () => ({ paths: Object.fromEntries(paths) });

  const server = http.createServer((req, res) => {
    const reqPath = (req.url ?? '/').split('?')[0];
    if (reqPath === '/stats') {
      if (req.method === 'DELETE') paths = new Map();
      const body = JSON.stringify(stats());
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      return void res.end(body);
    }
    if (req.method !== 'POST' || !reqPath.endsWith('/v1/traces')) {
      res.writeHead(404, { 'content-length': '0' });
      return void res.end();
    }
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('error', () => res.destroy());
    req.on('end', () => {
      const counts = countsFor(reqPath);
      let body = Buffer.concat(chunks);
      counts.posts++;
      counts.bytes += body.length;
      const json = String(req.headers['content-type'] ?? '').includes('json');
      try {
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        if (json) countJson(body.toString('utf8'), counts);
        else countProtobuf(body, counts);
      } catch {
        counts.errors++; // still accepted: the sink measures nothing about the payload but its count
      }
      // An empty ExportTraceServiceResponse (no partial_success) is a zero-length message.
      const reply = json ? Buffer.from('{}') : Buffer.alloc(0);
      res.writeHead(200, {
        'content-type': json ? 'application/json' : 'application/x-protobuf',
        'content-length': String(reply.length),
      });
      res.end(reply);
    });
  });
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 0;

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const address = server.address();
      resolve({
        port: typeof address === 'object' && address ? address.port : port,
        stats,
        close: () =>
          new Promise((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const sink = await startOtlpSink({ port: Number(argValue(process.argv, '--port') ?? 0) });
  process.stdout.write(JSON.stringify({ port: sink.port }) + '\n');
  exitWithParent(sink.close);
}
