/**
 * Writes a .cdimg: header placeholder, blob section appended in order, index,
 * then the real header. Everything goes to a temp file beside the output that
 * is renamed into place only when complete: no half-written output is left.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { encodeIndex } from './codec';
import { type Entry, HEADER_SIZE, Index, MAGIC, LIMITS } from './types';
import { sha256 } from '../util/digest';
import { invalidArgument } from '../errors';
import { writeFully } from '../util/fileio';
import { zstdBound, zstdFrame, zstdFrameInto } from './zstd';

export const FLAG_INDEX_ZSTD = 1;
/** Pieces per gathered write (Linux IOV_MAX). */
const IOV_MAX = 1024;

/** Load what finish() needs (zstd's binding), e.g. while waiting for workers. */
export function warmFinish(): void {
  zstdFrame(Buffer.alloc(1), 1);
}

export function encodeHeader(indexOffset: number, storedLen: number, rawLen: number, rootDigest: Buffer, version: number): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(version, 8);
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
  /** sha256 of the blob section as it is appended (format version 2 records it). */
  private readonly section: Hash = createHash('sha256');

  private constructor(private readonly out: string) {
    this.tmp = tempPathFor(out);
  }

  static async create(out: string): Promise<CdimgWriter> {
    if (!out) throw invalidArgument('output path is empty');
    const w = new CdimgWriter(out);
    w.fh = await fsp.open(w.tmp, 'wx', 0o644);
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
    this.section.update(data);
    this.pos += data.length;
    return at;
  }

  /** Append several pieces back to back with gathered writes; returns the offset of the first. */
  async appendv(parts: Uint8Array[]): Promise<number> {
    if (!this.fh) throw new Error('writer closed');
    const at = this.pos;
    let pos = at;
    for (let i = 0; i < parts.length; ) {
      const group = parts.slice(i, i + IOV_MAX);
      const total = group.reduce((n, p) => n + p.length, 0);
      const { bytesWritten } = await this.fh.writev(group, pos);
      if (bytesWritten < total) {
        // short gathered write: finish this group piece by piece
        let skip = bytesWritten;
        let p = pos;
        for (const piece of group) {
          if (skip >= piece.length) {
            skip -= piece.length;
            p += piece.length;
            continue;
          }
          await writeFully(this.fh, piece.subarray(skip), p + skip);
          p += piece.length;
          skip = 0;
        }
      }
      for (const piece of group) this.section.update(piece);
      pos += total;
      i += group.length;
    }
    this.pos = pos;
    return at;
  }

  /**
   * Write the index and header, fsync, rename into place. Returns root digest and total size.
   * `indexLevel` is the zstd level of the index (19 by default: a delta is small and its index a
   * large part of it; full images use convert's INDEX_LEVEL, see convert.ts).
   * A delta in format version 2 is written against its parent's tree: `parentEntries`.
   * `basePrefix`: the bases a version 5 delta may name by prefix (format/bases.ts uniquePrefixes).
   */
  async finish(index: Index, opts: { indexLevel?: number; parentEntries?: Entry[]; basePrefix?: (base: Buffer) => boolean } = {}): Promise<{ rootDigest: string; size: number; indexRaw: number; indexStored: number }> {
    if (!this.fh) throw new Error('writer closed');
    const raw = encodeIndex(index, { sectionDigest: this.section.digest(), parentEntries: opts.parentEntries, basePrefix: opts.basePrefix });
    if (raw.length > LIMITS.maxIndexRaw) throw invalidArgument(`index of ${raw.length} bytes exceeds the format limit`);
    // written from the encoder's buffer: zstdFrame's copy of the frame (~6 MB for the 151k-entry index of issue 18)
    // would be alive with the index at the peak RSS of a convert
    const frame = Buffer.allocUnsafe(zstdBound(raw.length));
    const stored = frame.subarray(0, zstdFrameInto(frame, raw, opts.indexLevel ?? 19));
    const root = sha256(raw);
    const indexOffset = this.pos;
    await writeFully(this.fh, stored, indexOffset);
    this.pos += stored.length;
    await this.fh.write(encodeHeader(indexOffset, stored.length, raw.length, root, index.formatVersion), 0, HEADER_SIZE, 0);
    await this.fh.sync();
    await this.fh.close();
    this.fh = null;
    await fsp.rename(this.tmp, this.out);
    this.closed = true;
    return { rootDigest: `sha256:${root.toString('hex')}`, size: this.pos, indexRaw: raw.length, indexStored: stored.length };
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
