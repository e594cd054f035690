/**
 * The content sink of convert. File contents handed over while layers stream
 * in are gathered into batches and sent to the worker pool, which hashes them
 * and compresses them into zstd chunks. Results are taken in submission order
 * (so the output is deterministic), deduplicated by digest and appended
 * straight to the blob section of the .cdimg being written: no spool file,
 * and no copy once the tree is known.
 *
 * Blobs therefore lie in the order their contents first appear in the layers
 * (tar order; for layers written with sorted names that is depth first, layer
 * by layer), not in the final tree's order; readers locate every chunk by its
 * offset and do not depend on the order. Contents that a later layer deletes
 * or replaces are dead: blobsFor() closes their gaps by moving the live blobs
 * down, so the file never carries bytes no entry refers to.
 *
 * Memory stays bounded: small contents are copied once, from the tar stream
 * into a batch buffer that is transferred (not copied) to a worker; contents
 * up to `inlineMax` travel the same way in a buffer of their own; larger ones
 * go through a temp file; and the bytes in flight are capped (back-pressure on
 * the layer stream).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { corrupt } from '../errors';
import { ContentRef, ContentSink } from '../tree/flatten';
import { WorkerPool } from '../workers/pool';
import type { CompressResult, ContentItem, StoredChunkInfo } from '../workers/worker';
import { CdimgWriter } from '../format/writer';
import { Blob, Encoding, zstdChunksAt } from '../format/types';
import { OrderedWindow } from '../util/ordered';

export interface SinkLimits {
  /** contents up to this size share a batch buffer */
  smallMax: number;
  /** contents up to this size travel in memory; larger ones through a temp file */
  inlineMax: number;
  /** a batch is sent when it holds this many bytes … */
  batchBytes: number;
  /** … or this many contents */
  batchItems: number;
  /** cap on the bytes handed to workers and not yet written */
  maxBytesInFlight: number;
}

export const DEFAULT_SINK_LIMITS: SinkLimits = {
  smallMax: 1 << 20,
  inlineMax: 64 << 20,
  batchBytes: 2 << 20,
  batchItems: 512,
  maxBytesInFlight: 96 << 20,
};

interface Written {
  offset: number;
  size: number;
  chunks: StoredChunkInfo[];
}

interface Batch {
  items: ContentItem[];
  refs: ContentRef[];
  buffers: ArrayBuffer[];
  tmpFiles: string[];
  bytes: number;
  /** shared buffer of the small contents, and how much of it is used */
  shared: ArrayBuffer | null;
  sharedUsed: number;
}

const newBatch = (): Batch => ({ items: [], refs: [], buffers: [], tmpFiles: [], bytes: 0, shared: null, sharedUsed: 0 });

export class BlobSink implements ContentSink {
  /** digest → where its blob was written (insertion order = offset order) */
  private readonly written = new Map<string, Written>();
  private readonly window: OrderedWindow<CompressResult>;
  private readonly start: number;
  private batch: Batch = newBatch();
  private seq = 0;
  private tmpDirMade = false;

  /**
   * `writer` receives the blobs from its current offset on; `tmpDir` (created
   * only if a content is larger than `limits.inlineMax`) holds staged contents.
   */
  constructor(
    private readonly writer: CdimgWriter,
    private readonly pool: WorkerPool,
    private readonly level: number,
    private readonly chunkSize: number,
    private readonly tmpDir: string,
    private readonly limits: SinkLimits = DEFAULT_SINK_LIMITS,
  ) {
    this.start = writer.offset;
    this.window = new OrderedWindow(Math.max(2, pool.threads * 3), limits.maxBytesInFlight);
  }

  async put(body: AsyncIterable<Buffer>, size: number): Promise<ContentRef> {
    const ref: ContentRef = { digest: '' };
    if (size <= this.limits.inlineMax) {
      let dst: Uint8Array;
      const small = size <= this.limits.smallMax;
      if (small) {
        const b = this.batch;
        if (!b.shared || b.sharedUsed + size > b.shared.byteLength) {
          if (b.shared) await this.submit();
          this.batch.shared = new ArrayBuffer(Math.max(this.limits.batchBytes, size));
          this.batch.buffers.push(this.batch.shared);
        }
        dst = new Uint8Array(this.batch.shared as ArrayBuffer, this.batch.sharedUsed, size);
      } else {
        dst = new Uint8Array(size);
      }
      let n = 0;
      for await (const c of body) {
        if (n + c.length > size) throw corrupt(`file content is more than the ${size} bytes its header said`);
        dst.set(c, n);
        n += c.length;
      }
      if (n !== size) throw corrupt(`file content is ${n} bytes, header said ${size}`);
      if (small) this.batch.sharedUsed += size;
      else this.batch.buffers.push(dst.buffer as ArrayBuffer);
      await this.add({ data: dst, size, digest: '' }, ref);
      return ref;
    }
    if (!this.tmpDirMade) {
      await fsp.mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
      this.tmpDirMade = true;
    }
    const tmp = join(this.tmpDir, `c${this.seq++}`);
    const fh = await fsp.open(tmp, 'w', 0o600);
    let n = 0;
    try {
      for await (const c of body) {
        n += c.length;
        await fh.write(c);
      }
    } finally {
      await fh.close();
    }
    if (n !== size) throw corrupt(`file content is ${n} bytes, header said ${size}`);
    this.batch.tmpFiles.push(tmp);
    await this.add({ path: tmp, size, digest: '' }, ref);
    return ref;
  }

  private async add(item: ContentItem, ref: ContentRef): Promise<void> {
    const b = this.batch;
    b.items.push(item);
    b.refs.push(ref);
    b.bytes += item.size;
    if (b.bytes >= this.limits.batchBytes || b.items.length >= this.limits.batchItems) await this.submit();
  }

  private async submit(): Promise<void> {
    const b = this.batch;
    this.batch = newBatch();
    if (!b.items.length) return;
    await this.window.push(
      () => this.pool.run('compressContents', { items: b.items, level: this.level, chunkSize: this.chunkSize }, b.buffers),
      (r) => this.consume(b, r),
      b.bytes,
    );
  }

  /** Append the first copy of each content to the output (adjacent blobs in one write). */
  private async consume(b: Batch, r: CompressResult): Promise<void> {
    if (r.items.length !== b.refs.length) throw new Error(`worker returned ${r.items.length} results for ${b.refs.length} contents`);
    const runs: { from: number; len: number }[] = [];
    let next = this.writer.offset;
    let o = 0;
    for (let i = 0; i < b.refs.length; i++) {
      const { digest, chunks } = r.items[i];
      const size = chunks.reduce((n, c) => n + c.storedSize, 0);
      b.refs[i].digest = digest;
      if (!this.written.has(digest)) {
        this.written.set(digest, { offset: next, size, chunks });
        next += size;
        const last = runs[runs.length - 1];
        if (last && last.from + last.len === o) last.len += size;
        else runs.push({ from: o, len: size });
      }
      o += size;
    }
    if (o !== r.stored.byteLength) throw new Error(`worker returned ${r.stored.byteLength} stored bytes, its chunks say ${o}`);
    for (const run of runs) await this.writer.append(r.stored.subarray(run.from, run.from + run.len));
    if (this.writer.offset !== next) throw new Error('blob section out of step');
    await Promise.all(b.tmpFiles.map((f) => fsp.rm(f, { force: true })));
  }

  /** Wait until every content handed over is hashed and written. */
  async flush(): Promise<void> {
    await this.submit();
    await this.window.flush();
  }

  /**
   * The blob records of the listed contents (the tree's, in its order). Blobs
   * of contents not listed (deleted or replaced by a later layer) are dropped
   * from the file first, moving the blobs after them down.
   */
  async blobsFor(contents: { digest: string; size: number }[]): Promise<Blob[]> {
    await this.flush();
    const live = new Set(contents.map((c) => c.digest));
    for (const d of live) if (!this.written.has(d)) throw new Error(`content ${d} was never written`);
    if (live.size !== this.written.size) await this.compact(live);
    return contents.map((c) => {
      const w = this.written.get(c.digest) as Written;
      return { digest: Buffer.from(c.digest, 'hex'), size: c.size, encoding: Encoding.FULL, chunks: zstdChunksAt(w.offset, w.chunks) };
    });
  }

  /** Bytes of the blob section (after blobsFor: live blobs only). */
  get blobBytes(): number {
    return this.writer.offset - this.start;
  }

  private async compact(live: Set<string>): Promise<void> {
    let to = this.start;
    for (const [digest, w] of this.written) {
      if (!live.has(digest)) {
        this.written.delete(digest);
        continue;
      }
      if (w.offset !== to) {
        await this.writer.moveDown(w.offset, to, w.size);
        w.offset = to;
      }
      to += w.size;
    }
    await this.writer.truncate(to);
  }

  /** Wait for tasks still running and remove staged files (after success or failure). */
  async destroy(): Promise<void> {
    await this.window.settle();
    if (this.tmpDirMade) await fsp.rm(this.tmpDir, { recursive: true, force: true });
  }
}
