/** Small HTTP helpers of d4fs-server: JSON in and out, errors, byte ranges. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { hostile, httpCodeOf, invalidArgument, toD4fsError } from '../errors';
import type { ErrorJson } from '../distribution/protocol';

/** Send the 100 Continue a client waits for before its body (once, only when it asked). */
export function acceptBody(req: IncomingMessage, res: ServerResponse): void {
  const r = res as ServerResponse & { d4fsContinued?: boolean };
  if (!r.d4fsContinued && /100-continue/i.test(String(req.headers.expect ?? ''))) {
    r.d4fsContinued = true;
    res.writeContinue();
  }
}

/** Read a JSON body of at most `limit` bytes. */
export async function readJson(req: IncomingMessage, res: ServerResponse, limit: number): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > limit) throw hostile(`request body of ${declared} bytes is over the limit of ${limit}`);
  acceptBody(req, res);
  const parts: Buffer[] = [];
  let total = 0;
  for await (const c of req) {
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

/** Send a JSON answer. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const bytes = Buffer.from(JSON.stringify(body) + '\n');
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(bytes.length), 'Cache-Control': 'no-store', ...headers });
  res.end(bytes);
}

/**
 * Answer a failure: the status comes from the error's kind (httpCodeOf, the
 * one mapping), the body says what went wrong. Internal errors keep their
 * detail in the log, not in the answer. When the answer has started, the
 * connection is cut instead (the client sees a truncated body).
 */
export function sendError(res: ServerResponse, e: unknown): void {
  const err = toD4fsError(e);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const status = httpCodeOf(err);
  const message = err.kind === 'INTERNAL' ? 'internal server error (see the server log)' : err.message;
  const body: ErrorJson = { error: { kind: err.kind, message } };
  const headers: Record<string, string> = {};
  if (status === 401) headers['WWW-Authenticate'] = 'Bearer realm="d4fs"';
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
