/**
 * The content sink of convert: every file content handed over while layers
 * stream in is sent, in batches, to the worker pool, which hashes it and
 * compresses it into chunks. Results are taken in submission order (so the
 * spool is deterministic), deduplicated by digest and appended to a spool
 * file. When the tree is known, copyTo() writes the live contents into the
 * .cdimg in tree order. Memory stays bounded: small contents wait in memory
 * only until their batch is compressed, large ones go through a temp file,
 * and the bytes in flight are capped (back-pressure on the layer stream).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { corrupt } from '../errors';
import { ContentRef, ContentSink } from '../tree/flatten';
import { WorkerPool } from '../workers/pool';
import type { CompressResult, ContentItem, StoredChunkInfo } from '../workers/worker';
import { CdimgWriter } from '../format/writer';
import { Blob, Encoding, zstdChunksAt } from '../format/types';
import { readFully } from '../format/reader';
import { writeFully } from '../util/fileio';
import { OrderedWindow } from '../util/ordered';

const SMALL = 1 << 20;
const BATCH_BYTES = 2 * 1024 * 1024;
const BATCH_ITEMS = 512;
const MAX_BYTES_IN_FLIGHT = 96 * 1024 * 1024;

interface Spooled {
  offset: number;
  size: number;
  chunks: StoredChunkInfo[];
}

export class CompressingSpool implements ContentSink {
  private readonly spooled = new Map<string, Spooled>();
  private readonly window: OrderedWindow<CompressResult>;
  private batch: { item: ContentItem; ref: ContentRef; tmp?: string }[] = [];
  private batchBytes = 0;
  private seq = 0;
  private spoolPos = 0;
  private spool: fsp.FileHandle | null = null;

  private constructor(readonly dir: string, private readonly pool: WorkerPool, private readonly level: number, private readonly chunkSize: number) {
    this.window = new OrderedWindow(Math.max(2, pool.threads * 3), MAX_BYTES_IN_FLIGHT);
  }

  static async create(dir: string, pool: WorkerPool, level: number, chunkSize: number): Promise<CompressingSpool> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const s = new CompressingSpool(dir, pool, level, chunkSize);
    s.spool = await fsp.open(join(dir, 'spool'), 'w+', 0o600);
    return s;
  }

  async put(body: AsyncIterable<Buffer>, size: number): Promise<ContentRef> {
    const ref: ContentRef = { digest: '' };
    if (size <= SMALL) {
      const parts: Buffer[] = [];
      let n = 0;
      for await (const c of body) {
        parts.push(c);
        n += c.length;
      }
      if (n !== size) throw corrupt(`file content is ${n} bytes, header said ${size}`);
      await this.add({ item: { data: Buffer.concat(parts, n), size, digest: '' }, ref });
      return ref;
    }
    const tmp = join(this.dir, `c${this.seq++}`);
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
    await this.add({ item: { path: tmp, size, digest: '' }, ref, tmp });
    return ref;
  }

  private async add(x: { item: ContentItem; ref: ContentRef; tmp?: string }): Promise<void> {
    if (this.batch.length && (this.batchBytes + x.item.size > BATCH_BYTES || this.batch.length >= BATCH_ITEMS)) await this.submit();
    this.batch.push(x);
    this.batchBytes += x.item.size;
  }

  private async submit(): Promise<void> {
    if (!this.batch.length) return;
    const b = this.batch;
    const bytes = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    await this.window.push(
      () => this.pool.run('compressContents', { items: b.map((x) => x.item), level: this.level, chunkSize: this.chunkSize }),
      (r) => this.spoolResult(b.map((x) => x.ref), b.flatMap((x) => (x.tmp ? [x.tmp] : [])), r),
      bytes,
    );
  }

  private async spoolResult(refs: ContentRef[], tmpFiles: string[], r: CompressResult): Promise<void> {
    if (!this.spool) throw new Error('spool closed');
    let o = 0;
    for (let i = 0; i < refs.length; i++) {
      const { digest, chunks } = r.items[i];
      const size = chunks.reduce((n, c) => n + c.storedSize, 0);
      refs[i].digest = digest;
      if (!this.spooled.has(digest)) {
        const data = Buffer.from(r.stored.buffer, r.stored.byteOffset + o, size);
        await writeFully(this.spool, data, this.spoolPos);
        this.spooled.set(digest, { offset: this.spoolPos, size, chunks });
        this.spoolPos += size;
      }
      o += size;
    }
    await Promise.all(tmpFiles.map((f) => fsp.rm(f, { force: true })));
  }

  /** Wait until every content handed over is hashed and spooled. */
  async flush(): Promise<void> {
    await this.submit();
    await this.window.flush();
  }

  /** Append the listed contents (tree order) to the writer; returns their blob records. */
  async copyTo(writer: CdimgWriter, contents: { digest: string; size: number }[]): Promise<Blob[]> {
    if (!this.spool) throw new Error('spool closed');
    const blobs: Blob[] = [];
    for (const c of contents) {
      const s = this.spooled.get(c.digest);
      if (!s) throw new Error(`content ${c.digest} is not in the spool`);
      const data = Buffer.allocUnsafe(s.size);
      await readFully(this.spool, data, s.offset);
      const at = await writer.append(data);
      blobs.push({ digest: Buffer.from(c.digest, 'hex'), size: c.size, encoding: Encoding.FULL, chunks: zstdChunksAt(at, s.chunks) });
    }
    return blobs;
  }

  /** Remove the spool and temp files (after success or failure). */
  async destroy(): Promise<void> {
    await this.window.settle();
    if (this.spool) await this.spool.close().catch(() => undefined);
    this.spool = null;
    await fsp.rm(this.dir, { recursive: true, force: true });
  }
}
