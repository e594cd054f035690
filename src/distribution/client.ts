/**
 * Client of d4fs-server's HTTP API (see protocol.ts): JSON calls, uploads
 * that wait for "100 Continue" (so a refused upload moves no body), and
 * blob downloads with Range. Errors come back as the server's own error
 * kinds; connection failures are UNAVAILABLE.
 */
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { isIPv4, isIPv6 } from 'node:net';
import type { Readable } from 'node:stream';
import { D4fsError, ErrorKind, EXIT_CODES, invalidArgument, unavailable } from '../errors';
import { ErrorJson } from './protocol';

export interface ServerClientOptions {
  /** Bearer token (read-only or read-write). */
  token?: string;
  /**
   * Send the token over plain http:// to a host that is not loopback
   * (default: refused, the token would cross the network in clear text).
   */
  insecureHttp?: boolean;
  /** false: accept any TLS certificate (self-signed test servers). */
  tlsVerify?: boolean;
  /** PEM file of a CA to trust for the server's certificate. */
  caFile?: string;
  /** Idle timeout of a request in ms (default 60 000). */
  timeoutMs?: number;
  /** User-Agent (default d4fs/0.1). */
  userAgent?: string;
}

/** A request body: bytes, or a stream of known length. */
export type Body = Buffer | { stream: () => Readable; length: number };

const MAX_ERROR_BODY = 64 * 1024;
/** What d4fs-server accepts as a token (src/server/auth.ts). */
const TOKEN_RE = /^[A-Za-z0-9._~+/=-]{16,512}$/;

/** Whether a URL hostname is the loopback interface: localhost, 127.0.0.0/8, ::1 (and ::ffff:127.x.y.z). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, '').replace(/\.$/, '');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIPv4(h)) return h.split('.')[0] === '127';
  if (isIPv6(h)) {
    if (h === '::1' || /^(0{1,4}:){7}0{0,3}1$/.test(h)) return true;
    const mapped = /^::ffff:(?:(\d+\.\d+\.\d+\.\d+)|([0-9a-f]{1,4}):[0-9a-f]{1,4})$/.exec(h); // URL writes ::ffff:127.0.0.1 as ::ffff:7f00:1
    if (mapped) return mapped[1] ? mapped[1].split('.')[0] === '127' : parseInt(mapped[2], 16) >> 8 === 127;
  }
  return false;
}

/**
 * The token in the text of a token file or of $D4FS_TOKEN: a bare token, or
 * the line `ctr-cli serve token` prints ("rw TOKEN name"), so the line a
 * server's tokens file holds works as it is. Blank lines and # comments are
 * skipped; exactly one token line is expected.
 */
export function parseTokenText(text: string, what: string): string {
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.replace(/(^|\s)#.*$/, '').trim())
    .filter((l) => l !== '');
  if (lines.length === 0) throw invalidArgument(`${what} holds no token`);
  if (lines.length > 1) throw invalidArgument(`${what} holds ${lines.length} lines: expected one token (or one "rw|ro TOKEN [name]" line)`);
  const words = lines[0].split(/\s+/);
  const access = words[0] === 'ro' || words[0] === 'rw';
  const token = access ? words[1] : words.length === 1 ? words[0] : undefined;
  if (!token || !TOKEN_RE.test(token)) throw invalidArgument(`${what}: expected a token, or a line "rw|ro TOKEN [name]" as \`ctr-cli serve token\` prints it`);
  return token;
}

/** The token of a token file (see parseTokenText). */
export async function readTokenFile(path: string): Promise<string> {
  let text: string;
  try {
    text = await fsp.readFile(path, 'utf8');
  } catch (e) {
    throw invalidArgument(`cannot read token file ${path}: ${(e as Error).message}`);
  }
  return parseTokenText(text, `token file ${path}`);
}
const MAX_JSON_ANSWER = 64 * 1024 * 1024;

/** Read a response body up to `limit` bytes. */
export async function readBody(res: http.IncomingMessage, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of res) {
    n += (c as Buffer).length;
    if (n > limit) {
      res.destroy();
      throw unavailable(`server answer is larger than ${limit} bytes`);
    }
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

export class ServerClient {
  readonly base: URL;
  /** Path prefix of the API (a server behind a reverse proxy at /d4fs). */
  private readonly prefix: string;
  private readonly agent: http.Agent;
  private ca: Buffer | undefined;

  /** @param url the server's base URL ("http://127.0.0.1:8081") */
  constructor(url: string, private readonly opts: ServerClientOptions = {}) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw invalidArgument(`invalid server URL ${JSON.stringify(url)}: expected http://HOST:PORT or https://HOST:PORT`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw invalidArgument(`server URL must be http:// or https://, not ${u.protocol}`);
    if (u.username || u.password) throw invalidArgument('put the token in --token (or D4FS_TOKEN), not in the URL');
    // a bearer token in clear text only over the loopback interface, unless the user says otherwise
    if (opts.token && u.protocol === 'http:' && !opts.insecureHttp && !isLoopbackHost(u.hostname)) {
      throw invalidArgument(`refusing to send the token to ${u.host} over plain http:// (anyone on the way could read it): use https://, or pass --insecure-http`);
    }
    this.base = new URL(u.origin);
    this.prefix = u.pathname.replace(/\/+$/, '');
    this.agent = u.protocol === 'https:' ? new https.Agent({ keepAlive: true, maxSockets: 16 }) : new http.Agent({ keepAlive: true, maxSockets: 16 });
  }

  /** Close kept-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  private async tlsOptions(): Promise<https.RequestOptions> {
    if (this.base.protocol !== 'https:') return {};
    if (this.opts.caFile && !this.ca) this.ca = await fsp.readFile(this.opts.caFile);
    return { ca: this.ca, rejectUnauthorized: this.opts.tlsVerify !== false };
  }

  /**
   * Send one request; resolves with the response whatever its status (the
   * caller checks). Bodies with `expectContinue` wait for 100 Continue and are
   * not sent at all when the server answers first.
   */
  async request(method: string, path: string, o: { headers?: Record<string, string>; body?: Body; expectContinue?: boolean; timeoutMs?: number } = {}): Promise<http.IncomingMessage> {
    const url = new URL(this.prefix + path, this.base);
    const headers: Record<string, string> = { 'User-Agent': this.opts.userAgent ?? 'd4fs/0.1', ...(o.headers ?? {}) };
    if (this.opts.token) headers.Authorization = `Bearer ${this.opts.token}`;
    const body = o.body;
    if (body !== undefined) headers['Content-Length'] = String(Buffer.isBuffer(body) ? body.length : body.length);
    if (o.expectContinue && body !== undefined) headers.Expect = '100-continue';
    const tls = await this.tlsOptions();
    const timeout = o.timeoutMs ?? this.opts.timeoutMs ?? 60_000;
    return new Promise((resolve, reject) => {
      const mod = url.protocol === 'https:' ? https : http;
      const req = mod.request(url, { method, headers, agent: this.agent, ...tls });
      let settled = false;
      const fail = (e: Error): void => {
        if (settled) return;
        settled = true;
        reject(e instanceof D4fsError ? e : unavailable(`cannot reach d4fs-server ${this.base.origin}: ${e.message}`, e));
      };
      req.setTimeout(timeout, () => req.destroy(unavailable(`d4fs-server ${this.base.origin}: no answer within ${timeout / 1000} s`)));
      req.once('error', fail);
      let sent = false;
      req.once('response', (res) => {
        settled = true;
        // Answered before the body went (a refusal, or "already there"): this connection is done.
        if (!sent) res.once('end', () => req.destroy());
        resolve(res);
      });
      const send = (): void => {
        sent = true;
        if (body === undefined) req.end();
        else if (Buffer.isBuffer(body)) req.end(body);
        else {
          const s = body.stream();
          s.once('error', (e) => req.destroy(e));
          s.pipe(req);
        }
      };
      if (o.expectContinue && body !== undefined) {
        // Some proxies never answer "100 Continue": like curl, send the body anyway after a second.
        const fallback = setTimeout(() => {
          if (!sent && !settled) send();
        }, 1000);
        req.once('continue', () => {
          clearTimeout(fallback);
          if (!sent) send();
        });
        req.once('response', () => clearTimeout(fallback));
        req.once('close', () => clearTimeout(fallback));
        req.flushHeaders();
      } else {
        send();
      }
    });
  }

  /** Turn a failed response into the server's D4fsError. */
  async failure(res: http.IncomingMessage, what: string): Promise<D4fsError> {
    const text = (await readBody(res, MAX_ERROR_BODY).catch(() => Buffer.alloc(0))).toString('utf8');
    let kind: ErrorKind | undefined;
    let message = text.trim().slice(0, 300) || `HTTP ${res.statusCode}`;
    try {
      const doc = JSON.parse(text) as ErrorJson;
      if (doc?.error && typeof doc.error.message === 'string') message = doc.error.message;
      if (doc?.error && typeof doc.error.kind === 'string' && doc.error.kind in EXIT_CODES) kind = doc.error.kind as ErrorKind;
    } catch {
      /* not JSON */
    }
    if (!kind) {
      const s = res.statusCode ?? 0;
      kind = s === 401 ? 'UNAUTHENTICATED' : s === 403 ? 'PERMISSION_DENIED' : s === 404 ? 'NOT_FOUND' : s >= 500 ? 'UNAVAILABLE' : 'INVALID_ARGUMENT';
    }
    return new D4fsError(kind, `d4fs-server ${this.base.origin}: ${what}: ${message}`, { detail: { status: res.statusCode } });
  }

  /** A JSON call; statuses other than 2xx become errors. `timeoutMs` overrides the idle timeout. */
  async json<T>(method: string, path: string, what: string, body?: unknown, timeoutMs?: number): Promise<T> {
    const bytes = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const res = await this.request(method, path, { body: bytes, headers: bytes ? { 'Content-Type': 'application/json' } : {}, timeoutMs });
    if ((res.statusCode ?? 0) < 200 || (res.statusCode ?? 0) >= 300) throw await this.failure(res, what);
    const text = (await readBody(res, MAX_JSON_ANSWER)).toString('utf8');
    try {
      return JSON.parse(text) as T;
    } catch {
      throw unavailable(`d4fs-server ${this.base.origin}: ${what}: answer is not JSON`);
    }
  }
}
