/** The registry client's HTTP layer: one exchange on keep-alive agents (timeouts, TLS checks, one retry on a closed reused socket), and helpers for bodies and headers. */
import * as http from 'node:http';
import * as https from 'node:https';
import { Readable, Transform, TransformCallback } from 'node:stream';
import { hostile, unavailable } from '../../errors';
import { isLoopbackHost } from './auth';
import type { RegistryOptions } from './options';

const DEFAULT_USER_AGENT = 'd4fs/0.1';

/** Read a whole response body, refusing more than `limit` bytes. */
export function readAll(stream: Readable, limit: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let total = 0;
    stream.on('data', (chunk: Buffer) => {
      total += chunk.length;
      if (total > limit) {
        stream.destroy();
        reject(hostile(`${what} is larger than ${limit} bytes`));
        return;
      }
      parts.push(chunk);
    });
    stream.once('end', () => resolve(Buffer.concat(parts)));
    stream.once('error', reject);
  });
}

/** Let a response go without reading it (frees the socket). */
export function discard(res: http.IncomingMessage): void {
  res.resume();
  res.on('error', () => undefined);
}

/** The registry's error text from a JSON body `{"errors":[{code,message}]}` (or the raw text). */
export function registryMessage(body: Buffer): string {
  const text = body.toString('utf8').trim();
  try {
    const doc = JSON.parse(text) as { errors?: Array<{ code?: unknown; message?: unknown }> };
    if (Array.isArray(doc.errors) && doc.errors.length) {
      return doc.errors.map((e) => [e.code, e.message].filter((x) => typeof x === 'string' && x).join(': ')).join('; ');
    }
  } catch {
    // not JSON: fall through to the raw text
  }
  return text.replace(/\s+/g, ' ').slice(0, 300);
}

/** Yield the stream's bytes in buffers of exactly `size` bytes (the last may be shorter). */
export async function* chunksOf(src: Readable, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let held = 0;
  for await (const data of src) {
    let buf: Buffer = Buffer.isBuffer(data) ? data : typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data as Uint8Array);
    while (held + buf.length >= size) {
      const take = size - held;
      parts.push(buf.subarray(0, take));
      yield Buffer.concat(parts);
      buf = buf.subarray(take);
      parts = [];
      held = 0;
    }
    if (buf.length) {
      parts.push(buf);
      held += buf.length;
    }
  }
  if (held) yield Buffer.concat(parts);
}

export const firstHeader = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

/** One HTTP exchange as the wire layer sends it. */
export interface WireRequest {
  method: string;
  url: URL;
  headers: Record<string, string>;
  body?: Buffer;
}

/** Passes `length` bytes from offset `skip` of what flows through it, then ends. */
export class Slice extends Transform {
  private pos = 0;
  private ended = false;
  constructor(private readonly skip: number, private readonly length: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.ended) return cb(); // the rest of a whole-blob answer: read and dropped
    const from = Math.max(0, this.skip - this.pos);
    const to = Math.min(chunk.length, this.skip + this.length - this.pos);
    this.pos += chunk.length;
    if (to > from) this.push(chunk.subarray(from, to));
    if (this.pos >= this.skip + this.length) {
      this.ended = true;
      this.push(null);
    }
    cb();
  }
}

/** Thrown by the wire layer when a request stays silent too long. */
class TimeoutError extends Error {
  readonly code = 'ETIMEDOUT';
}

/** HTTP exchanges with one registry's hosts (and its mirror): keep-alive agents, a timeout, TLS checks as the options say. */
export class RegistryWire {
  private readonly httpAgent = new http.Agent({ keepAlive: true });
  private readonly httpsAgent = new https.Agent({ keepAlive: true });

  constructor(private readonly opts: RegistryOptions, private readonly timeoutMs: number) {}

  /** Close idle connections. */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  /** Whether TLS certificates of `hostname` are checked (not with --tls-verify=false, nor by default on loopback). */
  private verifiesTls(hostname: string): boolean {
    if (this.opts.tlsVerify === false) return false;
    return this.opts.tlsVerify === true || !isLoopbackHost(hostname);
  }

  /** Send and map connection-level failures to UNAVAILABLE. */
  async send(r: WireRequest): Promise<http.IncomingMessage> {
    try {
      return await this.wire(r);
    } catch (e) {
      if (e instanceof TimeoutError) throw unavailable(`registry ${r.url.host}: ${e.message}`, e);
      throw unavailable(`cannot reach registry ${r.url.host}: ${(e as Error).message}`, e);
    }
  }

  /** One HTTP exchange; retried once when a reused keep-alive connection was closed under us. */
  async wire(r: WireRequest): Promise<http.IncomingMessage> {
    try {
      return await this.wireOnce(r);
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { reusedSocket?: boolean };
      if (err.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) return this.wireOnce(r);
      throw e;
    }
  }

  private wireOnce(r: WireRequest): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const secure = r.url.protocol === 'https:';
      const headers: Record<string, string> = { 'User-Agent': this.opts.userAgent ?? DEFAULT_USER_AGENT, ...r.headers };
      if (r.body !== undefined || !['GET', 'HEAD', 'DELETE'].includes(r.method)) headers['Content-Length'] = String(r.body?.length ?? 0);
      const options: https.RequestOptions = { method: r.method, headers, agent: secure ? this.httpsAgent : this.httpAgent };
      if (secure) options.rejectUnauthorized = this.verifiesTls(r.url.hostname);
      const req = (secure ? https : http).request(r.url, options);
      req.setTimeout(this.timeoutMs, () => req.destroy(new TimeoutError(`no answer within ${this.timeoutMs / 1000} s`)));
      req.once('response', resolve);
      req.once('error', (e: Error) => reject(Object.assign(e, { reusedSocket: req.reusedSocket })));
      req.end(r.body);
    });
  }
}
