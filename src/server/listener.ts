/** d4fs-server's HTTP(S) listener: timeouts, TLS, and the answers to what never reaches a route (CONNECT, client errors). */
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { Logger } from 'pino';
import { DEFAULT_HEADERS_MS, DEFAULT_IDLE_MS, DEFAULT_LISTEN, parseListen, ServerOptions } from './options';

/** A server listening on `opts.listen` (HTTPS with `opts.tls`) that passes every request, "100 Continue" ones included, to `handler`. */
export async function createListener(opts: ServerOptions, handler: (req: http.IncomingMessage, res: http.ServerResponse) => void, log: Logger): Promise<http.Server> {
  const { host, port } = parseListen(opts.listen ?? DEFAULT_LISTEN);
  const headersTimeout = opts.headersTimeoutMs ?? DEFAULT_HEADERS_MS;
  const serverOpts: http.ServerOptions = {
    // long uploads over slow links: no overall deadline; request bodies must keep a minimum pace instead (bodyOf)
    requestTimeout: 0,
    headersTimeout,
    // how often headers deadlines are checked (Node's default, 30 s, would let a short deadline run long)
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(headersTimeout / 4))),
    keepAliveTimeout: 5_000,
  };
  let server: http.Server;
  if (opts.tls) {
    const [cert, key] = await Promise.all([fsp.readFile(opts.tls.cert), fsp.readFile(opts.tls.key)]);
    server = https.createServer({ ...serverOpts, cert, key }, handler);
    server.on('tlsClientError', (err: Error, sock: import('node:net').Socket) => {
      log.debug({ err: err.message }, 'TLS client error');
      sock.destroy();
    });
  } else {
    server = http.createServer(serverOpts, handler);
  }
  // Uploads wait for "100 Continue": auth and validation happen before any body byte moves.
  server.on('checkContinue', handler);
  server.setTimeout(opts.idleTimeoutMs ?? DEFAULT_IDLE_MS, (sock) => sock.destroy());
  server.on('connection', (sock: import('node:net').Socket) => {
    // Node's own handler turns socket errors into clientError; this one outlives it (a socket error never throws)
    sock.on('error', (err) => log.debug({ err: err.message }, 'socket error'));
  });
  // CONNECT is no method of this API (without a listener Node would drop the connection unanswered)
  server.on('connect', (_req: http.IncomingMessage, sock: import('node:stream').Duplex) => {
    sock.on('error', () => undefined);
    sock.end('HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    setTimeout(() => sock.destroy(), 2_000).unref();
  });
  server.on('clientError', (err: NodeJS.ErrnoException, sock: import('node:stream').Duplex) => {
    log.debug({ err: err.message, code: err.code }, 'client error');
    // answer only when no response is under way on this connection (else its bytes would be corrupted)
    const inFlight = (sock as { _httpMessage?: http.ServerResponse })._httpMessage;
    if (!sock.writable || (inFlight && inFlight.headersSent)) {
      sock.destroy();
      return;
    }
    const status =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? '431 Request Header Fields Too Large'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? '408 Request Timeout'
          : err.code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW'
            ? '413 Payload Too Large'
            : '400 Bad Request';
    sock.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    setTimeout(() => sock.destroy(), 2_000).unref();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
