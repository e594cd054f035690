/**
 * Writes a .cdimg: header placeholder, blob section appended in order, index,
 * then the real header. Everything goes to a temp file beside the output that
 * is renamed into place only when complete: no half-written output is left.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { compress } from 'zstd-napi';
import { encodeIndex } from './codec';
import { HEADER_SIZE, Index, MAGIC, FORMAT_VERSION, LIMITS } from './types';
import { sha256 } from '../util/digest';
import { invalidArgument } from '../errors';
import { writeFully } from '../util/fileio';

export const FLAG_INDEX_ZSTD = 1;
/** Piece size when moving blobs inside the file. */
const MOVE_PIECE = 8 * 1024 * 1024;

export function encodeHeader(indexOffset: number, storedLen: number, rawLen: number, rootDigest: Buffer): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(FORMAT_VERSION, 8);
  h.writeUInt32LE(FLAG_INDEX_ZSTD, 12);
  h.writeBigUInt64LE(BigInt(indexOffset), 16);
  h.writeBigUInt64LE(BigInt(storedLen), 24);
  h.writeBigUInt64LE(BigInt(rawLen), 32);
  rootDigest.copy(h, 48);
  return h;
}

/** Temp path beside `out` (same filesystem, so rename is atomic). */
export function tempPathFor(out: string): string {
  return join(dirname(out), `.${basename(out)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

export class CdimgWriter {
  private fh: fsp.FileHandle | null = null;
  private pos = HEADER_SIZE;
  private readonly tmp: string;
  private closed = false;

  private constructor(private readonly out: string) {
    this.tmp = tempPathFor(out);
  }

  static async create(out: string): Promise<CdimgWriter> {
    if (!out) throw invalidArgument('output path is empty');
    const w = new CdimgWriter(out);
    w.fh = await fsp.open(w.tmp, 'wx+', 0o644); // read too: moveDown()
    await w.fh.write(Buffer.alloc(HEADER_SIZE), 0, HEADER_SIZE, 0);
    return w;
  }

  /** Current offset where the next blob lands. */
  get offset(): number {
    return this.pos;
  }

  /** Append stored bytes; returns their offset. */
  async append(data: Uint8Array): Promise<number> {
    if (!this.fh) throw new Error('writer closed');
    const at = this.pos;
    await writeFully(this.fh, data, at);
    this.pos += data.length;
    return at;
  }

  /**
   * Move `size` bytes already written at `from` down to `to` (to <= from), in
   * pieces from front to back, so a piece is read before anything overwrites
   * it. Used to close the gaps left by blobs that turned out to be dead.
   */
  async moveDown(from: number, to: number, size: number): Promise<void> {
    if (!this.fh) throw new Error('writer closed');
    if (to > from || to < HEADER_SIZE || from + size > this.pos) throw new Error(`bad move ${from}+${size} -> ${to}`);
    if (to === from || size === 0) return;
    const buf = Buffer.allocUnsafe(Math.min(size, MOVE_PIECE));
    for (let done = 0; done < size; ) {
      const n = Math.min(buf.length, size - done);
      const piece = buf.subarray(0, n);
      let got = 0;
      while (got < n) {
        const { bytesRead } = await this.fh.read(piece, got, n - got, from + done + got);
        if (bytesRead === 0) throw new Error(`${this.tmp}: short read while compacting`);
        got += bytesRead;
      }
      await writeFully(this.fh, piece, to + done);
      done += n;
    }
  }

  /** Drop everything from `pos` on: the next blob (or the index) lands there. */
  async truncate(pos: number): Promise<void> {
    if (!this.fh) throw new Error('writer closed');
    if (pos < HEADER_SIZE || pos > this.pos) throw new Error(`bad truncate to ${pos}`);
    await this.fh.truncate(pos);
    this.pos = pos;
  }

  /**
   * Write the index and header, fsync, rename into place. Returns root digest and total size.
   * `indexLevel` is the zstd level of the index (19 by default: deltas are small and their index
   * is a large part of them; convert picks a cheaper level, see convert.ts).
   */
  async finish(index: Index, opts: { indexLevel?: number } = {}): Promise<{ rootDigest: string; size: number; indexRaw: number }> {
    if (!this.fh) throw new Error('writer closed');
    const raw = encodeIndex(index);
    if (raw.length > LIMITS.maxIndexRaw) throw invalidArgument(`index of ${raw.length} bytes exceeds the format limit`);
    const stored = compress(raw, { compressionLevel: opts.indexLevel ?? 19, checksumFlag: true, contentSizeFlag: true });
    const root = sha256(raw);
    const indexOffset = this.pos;
    await this.append(stored);
    await this.fh.write(encodeHeader(indexOffset, stored.length, raw.length, root), 0, HEADER_SIZE, 0);
    await this.fh.sync();
    await this.fh.close();
    this.fh = null;
    await fsp.rename(this.tmp, this.out);
    this.closed = true;
    return { rootDigest: `sha256:${root.toString('hex')}`, size: this.pos, indexRaw: raw.length };
  }

  /** Drop the temp file (on error). Safe to call twice. */
  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.fh) await this.fh.close().catch(() => undefined);
    this.fh = null;
    await fsp.rm(this.tmp, { force: true });
  }
}
