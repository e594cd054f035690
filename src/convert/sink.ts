/**
 * The content sink of convert. File contents handed over while layers stream
 * in are gathered into batches and sent to the worker pool, which hashes them
 * and compresses them into zstd chunks. Results are taken in submission order,
 * deduplicated by digest and held (in memory up to `memMax` compressed bytes,
 * beyond that in a spool file) until the tree is known; writeTo() then writes
 * the live ones into the .cdimg in tree order with gathered writes.
 *
 * Tree order is what makes the file a function of the tree alone: `cdimg
 * patch` rebuilds a full image from a delta byte for byte (same root digest)
 * because both lay blobs out in the order the entries first use them. Contents
 * a later layer deletes or replaces are simply never written.
 *
 * Memory stays bounded: small contents are copied once, from the tar stream
 * into a batch buffer in shared memory that the worker reads in place (and
 * that is reused once the batch is done); contents up to `inlineMax` go in
 * a buffer of their own, transferred (not copied); larger ones go through a
 * temp file; the bytes in flight are capped (back-pressure on the
 * layer stream); and compressed blobs held in memory are capped by `memMax`.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { corrupt } from '../errors';
import { ContentRef, ContentSink } from './flatten';
import { taskModule, WorkerPool } from '../workers/pool';
import type * as ConvertTasks from './tasks';
import type { CompressResult, ContentItem, StoredChunkInfo } from './tasks';
import { CdimgWriter } from '../format/writer';
import { Blob, Encoding, zstdChunksAt } from '../format/types';
import { OrderedWindow } from '../util/ordered';
import { writeFully } from '../util/fileio';
import { readFully } from '../format/reader';

/** convert's task module (./tasks.ts), run by the worker pool. */
export const CONVERT_TASKS = taskModule<typeof ConvertTasks>(join(__dirname, 'tasks.js'));

export interface SinkLimits {
  /** contents up to this size share a batch buffer */
  smallMax: number;
  /** contents up to this size travel in memory; larger ones through a temp file */
  inlineMax: number;
  /** a batch is sent when it holds this many bytes … */
  batchBytes: number;
  /** … or this many contents */
  batchItems: number;
  /** cap on the bytes handed to workers and not yet taken back */
  maxBytesInFlight: number;
  /** compressed bytes held in memory until the tree is known; more go to a spool file */
  memMax: number;
}

export const DEFAULT_SINK_LIMITS: SinkLimits = {
  smallMax: 1 << 20,
  inlineMax: 16 << 20,
  batchBytes: 2 << 20,
  batchItems: 512,
  maxBytesInFlight: 48 << 20,
  memMax: 32 << 20,
};

/** A gathered write takes at most this many bytes. */
const WRITE_GROUP_BYTES = 16 << 20;

interface Held {
  size: number;
  chunks: StoredChunkInfo[];
  /** the stored chunks back to back, when held in memory … */
  data?: Uint8Array;
  /** … or their offset in the spool file … */
  spoolOffset: number;
  /** … or a file of their own (a large content's frames, written by the worker) */
  file?: string;
}

interface Batch {
  items: ContentItem[];
  refs: ContentRef[];
  buffers: ArrayBuffer[];
  tmpFiles: string[];
  bytes: number;
  /** shared buffer of the small contents, and how much of it is used */
  shared: SharedArrayBuffer | null;
  sharedUsed: number;
}

const newBatch = (): Batch => ({ items: [], refs: [], buffers: [], tmpFiles: [], bytes: 0, shared: null, sharedUsed: 0 });

/** Append `size` bytes of `file` to the writer, WRITE_GROUP_BYTES at a time. */
async function copyInPieces(file: string, size: number, writer: CdimgWriter): Promise<void> {
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(Math.min(size, WRITE_GROUP_BYTES));
    for (let pos = 0; pos < size; ) {
      const n = Math.min(buf.length, size - pos);
      await readFully(fh, buf.subarray(0, n), pos);
      await writer.append(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    await fh.close();
  }
}

export class BlobSink implements ContentSink {
  /** digest → its stored chunks (first copy only) */
  private readonly held = new Map<string, Held>();
  private readonly window: OrderedWindow<CompressResult>;
  private batch: Batch = newBatch();
  private seq = 0;
  private heldInMemory = 0;
  private tmpDirMade = false;
  private spool: fsp.FileHandle | null = null;
  private spoolPos = 0;
  /**
   * Batch buffers whose batch is done, for the next batches: the worker reads
   * a batch in place (shared memory, nothing transferred), so a buffer can be
   * filled again once its result is taken. Fresh memory costs a page fault per
   * 4 KiB on first write; reused memory does not.
   */
  private readonly freeShared: SharedArrayBuffer[] = [];

  /** `tmpDir` (created only when needed) holds staged contents and the spool file. */
  constructor(
    private readonly pool: WorkerPool,
    private readonly level: number,
    private readonly chunkSize: number,
    private readonly tmpDir: string,
    private readonly limits: SinkLimits = DEFAULT_SINK_LIMITS,
  ) {
    this.window = new OrderedWindow(Math.max(2, pool.threads * 3), limits.maxBytesInFlight);
  }

  private async makeTmpDir(): Promise<void> {
    if (this.tmpDirMade) return;
    await fsp.mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
    this.tmpDirMade = true;
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
          this.batch.shared = size <= this.limits.batchBytes ? (this.freeShared.pop() ?? new SharedArrayBuffer(this.limits.batchBytes)) : new SharedArrayBuffer(size);
        }
        dst = new Uint8Array(this.batch.shared as SharedArrayBuffer, this.batch.sharedUsed, size);
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
      if (small) {
        this.batch.sharedUsed += size;
        await this.add({ data: dst, size, digest: '' }, ref);
      } else {
        await this.submitAlone({ data: dst, size, digest: '' }, ref, dst.buffer as ArrayBuffer);
      }
      return ref;
    }
    await this.makeTmpDir();
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
    await this.submitAlone({ path: tmp, outPath: `${tmp}.z`, size, digest: '' }, ref, undefined, tmp);
    return ref;
  }

  /**
   * A large content is a task of its own, and the small ones gathered before
   * it go first as another: the two can run on different workers instead of
   * one after the other (a large content late in the last layer otherwise
   * makes the whole tail of the conversion).
   */
  private async submitAlone(item: ContentItem, ref: ContentRef, buffer?: ArrayBuffer, tmp?: string): Promise<void> {
    await this.submit();
    const b = this.batch;
    if (buffer) b.buffers.push(buffer);
    if (tmp) b.tmpFiles.push(tmp);
    b.items.push(item);
    b.refs.push(ref);
    b.bytes += item.size;
    await this.submit();
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
      () => this.pool.run(CONVERT_TASKS, 'compressContents', { items: b.items, level: this.level, chunkSize: this.chunkSize }, b.buffers),
      (r) => this.consume(b, r),
      b.bytes,
    );
  }

  /**
   * Keep the first copy of each content. A batch's stored bytes stay in memory
   * as one buffer while the buffers held stay under memMax (a slice would keep
   * the whole buffer alive, so whole buffers are counted); otherwise the batch
   * goes to the spool file in one write.
   */
  private async consume(b: Batch, r: CompressResult): Promise<void> {
    if (r.items.length !== b.refs.length) throw new Error(`worker returned ${r.items.length} results for ${b.refs.length} contents`);
    const sizes = r.items.map((it) => it.chunks.reduce((n, c) => n + c.storedSize, 0));
    const total = sizes.reduce((n, x, i) => n + (r.items[i].outPath ? 0 : x), 0);
    if (total !== r.stored.byteLength) throw new Error(`worker returned ${r.stored.byteLength} stored bytes, its chunks say ${total}`);
    const fresh = r.items.some((it) => !this.held.has(it.digest));
    let spoolBase = -1;
    if (fresh) {
      if (this.heldInMemory + total <= this.limits.memMax) this.heldInMemory += total;
      else spoolBase = await this.spoolWrite(r.stored);
    }
    let o = 0;
    for (let i = 0; i < b.refs.length; i++) {
      const { digest, chunks, outPath } = r.items[i];
      b.refs[i].digest = digest;
      if (outPath) {
        if (this.held.has(digest)) await fsp.rm(outPath, { force: true });
        else this.held.set(digest, { size: sizes[i], chunks, spoolOffset: -1, file: outPath });
        continue;
      }
      if (!this.held.has(digest)) {
        if (spoolBase < 0) this.held.set(digest, { size: sizes[i], chunks, data: r.stored.subarray(o, o + sizes[i]), spoolOffset: -1 });
        else this.held.set(digest, { size: sizes[i], chunks, spoolOffset: spoolBase + o });
      }
      o += sizes[i];
    }
    await Promise.all(b.tmpFiles.map((f) => fsp.rm(f, { force: true })));
    // the worker is done with the batch: its buffer can take the next one
    if (b.shared && b.shared.byteLength === this.limits.batchBytes && this.freeShared.length < this.pool.threads * 3) this.freeShared.push(b.shared);
  }

  private async spoolWrite(data: Uint8Array): Promise<number> {
    if (!this.spool) {
      await this.makeTmpDir();
      this.spool = await fsp.open(join(this.tmpDir, 'spool'), 'w+', 0o600);
    }
    const at = this.spoolPos;
    await writeFully(this.spool, data, at);
    this.spoolPos += data.length;
    return at;
  }

  /** Wait until every content handed over is hashed and compressed. */
  async flush(): Promise<void> {
    await this.submit();
    await this.window.flush();
  }

  /**
   * Append the listed contents (the tree's, in its order) to the writer with
   * gathered writes; returns their blob records. Contents not listed (deleted
   * or replaced by a later layer) are not written.
   */
  async writeTo(writer: CdimgWriter, contents: { digest: string; size: number }[]): Promise<Blob[]> {
    await this.flush();
    const blobs: Blob[] = [];
    let group: Uint8Array[] = [];
    let groupBytes = 0;
    const write = async (): Promise<void> => {
      if (group.length) await writer.appendv(group);
      group = [];
      groupBytes = 0;
    };
    let at = writer.offset;
    for (const c of contents) {
      const h = this.held.get(c.digest);
      if (!h) throw new Error(`content ${c.digest} was never stored`);
      this.held.delete(c.digest); // written once: its record (and in-memory bytes) can go before the index is built
      blobs.push({ digest: Buffer.from(c.digest, 'hex'), size: c.size, encoding: Encoding.FULL, chunks: zstdChunksAt(at, h.chunks) });
      at += h.size;
      if (h.file) {
        // a large content's frames: copied from their file in pieces
        await write();
        await copyInPieces(h.file, h.size, writer);
        continue;
      }
      let data = h.data;
      if (!data) {
        // not from Buffer's shared 8 KiB pool: the digests allocated beside would pin each slab (~2 KB per entry of a 150k-file image)
        const buf = Buffer.allocUnsafeSlow(h.size);
        await readFully(this.spool as fsp.FileHandle, buf, h.spoolOffset);
        data = buf;
      }
      if (groupBytes + data.length > WRITE_GROUP_BYTES) await write();
      group.push(data);
      groupBytes += data.length;
    }
    await write();
    if (writer.offset !== at) throw new Error('blob section out of step');
    return blobs;
  }

  /** Wait for tasks still running and remove staged files (after success or failure). */
  async destroy(): Promise<void> {
    await this.window.settle();
    this.held.clear();
    this.freeShared.length = 0;
    if (this.spool) await this.spool.close().catch(() => undefined);
    this.spool = null;
    if (this.tmpDirMade) await fsp.rm(this.tmpDir, { recursive: true, force: true });
  }
}
