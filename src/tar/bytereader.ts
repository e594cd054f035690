/**
 * Pull-based reader over an async iterable of Buffers: exact reads, skips and
 * bounded sub-streams, without copying more than needed.
 */
import { corrupt } from '../errors';

export class ByteReader {
  private readonly it: AsyncIterator<Buffer>;
  private buf: Buffer = Buffer.alloc(0);
  private done = false;
  private pending: { left: number; msg: string } | null = null;
  /** Bytes consumed so far. */
  position = 0;

  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }

  /** The next piece of the source, or null at its end. */
  private async next(): Promise<Buffer | null> {
    if (this.done) return null;
    const { value, done } = await this.it.next();
    if (done) {
      this.done = true;
      return null;
    }
    return Buffer.isBuffer(value) ? value : Buffer.from(value as Uint8Array);
  }

  /** Refill an empty buffer. */
  private async fill(): Promise<boolean> {
    const chunk = await this.next();
    if (!chunk) return false;
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    return true;
  }

  /** Read exactly n bytes; null when the source ended before the first byte; CORRUPT when it ended midway. */
  async readExact(n: number): Promise<Buffer | null> {
    if (this.buf.length < n) {
      // Gather pieces and copy only the n bytes wanted (a header across two
      // source chunks), not the rest of the next chunk.
      const parts = [this.buf];
      let have = this.buf.length;
      while (have < n) {
        const c = await this.next();
        if (!c) {
          this.buf = parts.length === 1 ? parts[0] : Buffer.concat(parts, have);
          if (have === 0) return null;
          throw corrupt(`truncated data: wanted ${n} bytes, got ${have}`);
        }
        parts.push(c);
        have += c.length;
      }
      const last = parts[parts.length - 1];
      const keep = have - n;
      parts[parts.length - 1] = last.subarray(0, last.length - keep);
      this.buf = last.subarray(last.length - keep);
      this.position += n;
      return Buffer.concat(parts, n);
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    this.position += n;
    return out;
  }

  async skipExact(n: number, msg: string): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.buf.length === 0 && !(await this.fill())) throw corrupt(msg);
      const k = Math.min(left, this.buf.length);
      this.buf = this.buf.subarray(k);
      this.position += k;
      left -= k;
    }
  }

  /** Yield exactly n bytes in pieces. */
  async *stream(n: number, msg: string): AsyncGenerator<Buffer> {
    this.pending = { left: n, msg };
    while (this.pending.left > 0) {
      if (this.buf.length === 0 && !(await this.fill())) throw corrupt(msg);
      const k = Math.min(this.pending.left, this.buf.length);
      const piece = this.buf.subarray(0, k);
      this.buf = this.buf.subarray(k);
      this.position += k;
      this.pending.left -= k;
      yield piece;
    }
    this.pending = null;
  }

  /** Read and discard everything left in the source. */
  async drainAll(): Promise<void> {
    this.position += this.buf.length;
    this.buf = Buffer.alloc(0);
    while (await this.fill()) {
      this.position += this.buf.length;
      this.buf = Buffer.alloc(0);
    }
  }

  /** Skip what a partially consumed stream() left. */
  async drainStream(): Promise<void> {
    if (!this.pending) return;
    const { left, msg } = this.pending;
    this.pending = null;
    await this.skipExact(left, msg);
  }
}
