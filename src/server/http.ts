/** Small HTTP helpers of d4fs-server: request bodies (bounded, paced), JSON in and out, errors, byte ranges. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, TransformCallback } from 'node:stream';
import { D4fsError, hostile, httpCodeOf, invalidArgument, toD4fsError, unavailable } from '../errors';
import type { ErrorJson } from '../distribution/protocol';

/** Send the 100 Continue a client waits for before its body (once, only when it asked). */
export function acceptBody(req: IncomingMessage, res: ServerResponse): void {
  const r = res as ServerResponse & { d4fsContinued?: boolean };
  if (!r.d4fsContinued && !res.headersSent && !res.destroyed && /100-continue/i.test(String(req.headers.expect ?? ''))) {
    r.d4fsContinued = true;
    res.writeContinue();
  }
}

/**
 * How fast a client must send a request body: at least `minBytesPerSecond`
 * averaged over every window of `windowMs` (0 bytes/s: no minimum). A client
 * slower than that (one byte a minute, or nothing after "100 Continue") gets
 * 408 and its connection is closed, so it cannot hold an upload slot.
 */
export interface BodyPace {
  minBytesPerSecond: number;
  windowMs: number;
}

/** The error of a body that came too slowly: DEADLINE_EXCEEDED, answered with 408 (see sendError). */
export function tooSlow(what: string, pace: BodyPace, got: number): D4fsError {
  return new D4fsError(
    'DEADLINE_EXCEEDED',
    `${what}: the client sent ${got} bytes in ${pace.windowMs / 1000} s, under the server's minimum of ${pace.minBytesPerSecond} bytes/s; request timed out`,
    { detail: { httpStatus: 408 } },
  );
}

/** Counts the bytes that pass and notes when the reader falls behind (then a slow window is the server's fault, not the client's). */
class BodyMeter extends Transform {
  bytes = 0;
  lagging = false;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    cb(null, chunk);
    if (this.readableLength >= this.readableHighWaterMark) this.lagging = true;
  }
}

/**
 * The body of a request as a stream of its own. The request is piped into
 * it, never destroyed by it: when the reader gives up (a limit, bad data,
 * a failed write) it destroys this stream, the request is unpiped and left
 * paused, and an answer still reaches the client (the caller closes the
 * connection after it). The stream fails with UNAVAILABLE when the client
 * goes away mid-body and with DEADLINE_EXCEEDED (408) when the body comes
 * slower than `pace`.
 */
export function bodyOf(req: IncomingMessage, what: string, pace?: BodyPace): Transform {
  const meter = new BodyMeter();
  const gone = (): void => {
    if (!req.complete) meter.destroy(unavailable(`${what}: the client went away before the end of the body`));
  };
  const onError = (e: Error): void => {
    meter.destroy(unavailable(`${what} was interrupted: ${e.message}`, e));
  };
  req.on('aborted', gone);
  req.on('close', gone);
  req.on('error', onError);
  let timer: NodeJS.Timeout | undefined;
  if (pace && pace.minBytesPerSecond > 0 && pace.windowMs > 0) {
    const need = (pace.minBytesPerSecond * pace.windowMs) / 1000;
    let last = 0;
    timer = setInterval(() => {
      const got = meter.bytes - last;
      last = meter.bytes;
      const ourFault = meter.lagging || meter.writableNeedDrain;
      meter.lagging = false;
      if (got < need && !ourFault && !req.complete) meter.destroy(tooSlow(what, pace, got));
    }, pace.windowMs);
    timer.unref();
  }
  meter.once('close', () => {
    if (timer) clearInterval(timer);
    req.off('aborted', gone);
    req.off('close', gone);
    req.off('error', onError);
    req.unpipe(meter);
  });
  if (req.destroyed && !req.complete) process.nextTick(gone);
  else req.pipe(meter);
  return meter;
}

/** Whether a request carries a body (a Content-Length over 0, or chunked). */
export function hasBody(req: IncomingMessage): boolean {
  const cl = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
}

/** Whether a body is still on its way (a request without one, or whose body ended, has none pending). */
export function bodyPending(req: IncomingMessage): boolean {
  return hasBody(req) && !req.complete;
}

/** Whether the client waits for "100 Continue" before it sends its body (and none was sent). */
export function awaitingContinue(req: IncomingMessage, res: ServerResponse): boolean {
  return /100-continue/i.test(String(req.headers.expect ?? '')) && !(res as ServerResponse & { d4fsContinued?: boolean }).d4fsContinued;
}

/**
 * Read and drop what is left of a request body, at most `maxBytes` and
 * `maxMs`: an answer given before the body was read, then a close, would
 * otherwise meet the rest of the body and reset the connection (RST), and
 * the client could lose the answer. Resolves true when the body ended.
 */
export function discardBody(req: IncomingMessage, maxBytes: number, maxMs: number): Promise<boolean> {
  if (req.complete || req.readableEnded) return Promise.resolve(true);
  if (req.destroyed) return Promise.resolve(false);
  return new Promise<boolean>((resolve) => {
    let n = 0;
    const done = (ended: boolean): void => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      req.off('error', onClose);
      if (!ended) req.pause();
      resolve(ended);
    };
    const onData = (c: Buffer): void => {
      n += c.length;
      if (n > maxBytes) done(false);
    };
    const onEnd = (): void => done(true);
    const onClose = (): void => done(req.complete);
    const timer = setTimeout(() => done(false), maxMs);
    timer.unref();
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('close', onClose);
    req.once('error', onClose);
    req.resume();
  });
}

/** Read a JSON body of at most `limit` bytes. */
export async function readJson(req: IncomingMessage, res: ServerResponse, limit: number, pace?: BodyPace): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > limit) throw hostile(`request body of ${declared} bytes is over the limit of ${limit}`);
  acceptBody(req, res);
  const parts: Buffer[] = [];
  let total = 0;
  // breaking out of the loop destroys the body stream, not the request: the answer still goes out
  for await (const c of bodyOf(req, 'request body', pace)) {
    total += (c as Buffer).length;
    if (total > limit) throw hostile(`request body is over the limit of ${limit} bytes`);
    parts.push(c as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8'));
  } catch {
    throw invalidArgument('request body is not valid JSON');
  }
}

/** Send a JSON answer (nothing when the connection is gone already). */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.destroyed || res.writableEnded) return;
  const bytes = Buffer.from(JSON.stringify(body) + '\n');
  // a body nobody reads (yet) would hold the connection: close it after the answer
  const closing = res.req && bodyPending(res.req) ? { Connection: 'close' } : {};
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(bytes.length), 'Cache-Control': 'no-store', ...closing, ...headers });
  res.end(bytes);
}

/**
 * Answer a failure: the status comes from the error's kind (httpCodeOf, the
 * one mapping; an error may name a more precise 4xx in detail.httpStatus,
 * e.g. 408 for a body sent too slowly), the body says what went wrong.
 * Internal errors keep their detail in the log, not in the answer. When the
 * answer has started, the connection is cut instead (the client sees a
 * truncated body).
 */
export function sendError(res: ServerResponse, e: unknown): void {
  const err = toD4fsError(e);
  if (res.destroyed || res.writableEnded) return;
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const precise = err.detail?.httpStatus;
  const status = typeof precise === 'number' && precise >= 400 && precise < 600 ? precise : httpCodeOf(err);
  const message = err.kind === 'INTERNAL' ? 'internal server error (see the server log)' : err.message;
  const body: ErrorJson = { error: { kind: err.kind, message } };
  const headers: Record<string, string> = {};
  if (status === 401) headers['WWW-Authenticate'] = 'Bearer realm="d4fs"';
  if (status === 408) headers.Connection = 'close';
  sendJson(res, status, body, headers);
}

/** A satisfiable byte range (inclusive end). */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * Parse a Range header against a size. Returns undefined (serve the whole
 * body) for no header, a malformed header or several ranges; 'unsatisfiable'
 * when the one range lies beyond the end.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  let end = m[2] === '' ? Math.max(start, size - 1) : Number(m[2]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  end = Math.min(end, size - 1);
  return { start, end };
}

/**
 * Starts the answer to a GET or HEAD of `size` bytes with `range` (from
 * parseRange): 416 with its Content-Range, ended here (undefined returned);
 * else 206 with Content-Range, or 200, with Content-Length, and the bytes to
 * send. The d4fs-server's blobs and the peer's mirror answer through it.
 */
export function startRangeAnswer(res: ServerResponse, headers: Record<string, string>, range: ByteRange | 'unsatisfiable' | undefined, size: number): ByteRange | undefined {
  if (range === 'unsatisfiable') {
    res.writeHead(416, { ...headers, 'Content-Range': `bytes */${size}`, 'Content-Length': '0' });
    res.end();
    return undefined;
  }
  const start = range?.start ?? 0;
  const end = range?.end ?? size - 1;
  if (range) headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
  headers['Content-Length'] = String(Math.max(0, end - start + 1));
  res.writeHead(range ? 206 : 200, headers);
  return { start, end };
}
