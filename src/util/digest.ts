import { createHash, Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, TransformCallback } from 'node:stream';
import { corrupt, invalidArgument } from '../errors';

export const SHA256_RE = /^sha256:[a-f0-9]{64}$/;

export function sha256(data: Uint8Array | string): Buffer {
  return createHash('sha256').update(data).digest();
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** "sha256:<hex>" of the bytes. */
export function digestOf(data: Uint8Array | string): string {
  return `sha256:${sha256Hex(data)}`;
}

/** Validate a digest string from untrusted input; only sha256 is accepted. */
export function parseDigest(d: string, what = 'digest'): string {
  if (typeof d !== 'string' || !SHA256_RE.test(d)) {
    throw invalidArgument(`invalid ${what} ${JSON.stringify(String(d).slice(0, 100))}: expected sha256:<64 hex>`);
  }
  return d;
}

/** sha256 ("sha256:…") of a whole file. */
export async function fileDigestOf(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

export const hexOfDigest = (d: string): string => parseDigest(d).slice(7);
export const digestFromRaw = (raw: Uint8Array): string => `sha256:${Buffer.from(raw).toString('hex')}`;
export const rawFromDigest = (d: string): Buffer => Buffer.from(hexOfDigest(d), 'hex');

/**
 * Pass-through stream that hashes what flows and, at the end, fails with a
 * CORRUPT error when the digest (or size, if given) does not match.
 */
export class VerifyingStream extends Transform {
  private readonly hash: Hash = createHash('sha256');
  private seen = 0;
  constructor(private readonly expected: string, private readonly what: string, private readonly expectedSize?: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.expectedSize !== undefined && this.seen > this.expectedSize) {
      cb(corrupt(`${this.what}: more data than the declared size ${this.expectedSize}`));
      return;
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    if (this.expectedSize !== undefined && this.seen !== this.expectedSize) {
      cb(corrupt(`${this.what}: size ${this.seen} does not match the declared ${this.expectedSize} (truncated?)`));
      return;
    }
    const got = `sha256:${this.hash.digest('hex')}`;
    if (got !== this.expected) {
      cb(corrupt(`${this.what}: digest mismatch: expected ${this.expected}, got ${got}`));
      return;
    }
    cb();
  }
}

/** Hashing pass-through that reports the digest of what flowed, without checking. */
export class HashingStream extends Transform {
  private readonly hash: Hash = createHash('sha256');
  size = 0;
  digest = '';
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.size += chunk.length;
    this.hash.update(chunk);
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    this.digest = `sha256:${this.hash.digest('hex')}`;
    cb();
  }
}
