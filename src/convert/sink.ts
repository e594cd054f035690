/**
 * The content sink of convert. File contents handed over while layers stream
 * in are gathered into batches and sent to the worker pool, which hashes them
 * and compresses them into zstd chunks. Results are taken as they come (their
 * order does not matter: see TaskWindow), deduplicated by digest and held (in
 * memory up to `memMax` compressed bytes, beyond that in a spool file) until
 * the tree is known; writeTo() then writes
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
import { ContentRef, ContentSink, TreeContent } from './flatten';
import { taskModule, WorkerPool } from '../workers/pool';
import type * as ConvertTasks from './tasks';
import type { CompressResult, ContentItem, StoredChunkInfo } from './tasks';
import { CdimgWriter } from '../format/writer';
import { Blob, Chunk, Codec, Encoding, zstdChunksAt } from '../format/types';
import { writeFully } from '../util/fileio';
import { readFully } from '../format/reader';
import { planGroups } from '../format/group';
import { OrderedWindow } from '../util/ordered';

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

/**
 * Measured on the 150k-file image of issue 18 (2 threads; peak RSS of the
 * whole process, /usr/bin/time): batches of 1 MiB instead of 2 MiB (a batch
 * buffer, its result and the thread's output buffer each; up to threads × 3
 * of each) and 8 MiB of compressed contents held in memory instead of 32 MiB
 * (the rest is read back from the spool file, in runs, at no measurable
 * cost) took peak RSS from 537–614 MiB to 478–510 MiB (3 runs each), time
 * unchanged within the noise of the machine.
 */
export const DEFAULT_SINK_LIMITS: SinkLimits = {
  smallMax: 1 << 20,
  inlineMax: 16 << 20,
  batchBytes: 1 << 20,
  batchItems: 512,
  maxBytesInFlight: 48 << 20,
  memMax: 8 << 20,
};

const EMPTY = Buffer.alloc(0);

/**
 * A gathered write takes at most this many bytes (4 MiB: large enough that
 * the writes cost nothing measurable, and the buffers of a group, garbage
 * once written, stay small at the end of a conversion, where the peak RSS is).
 */
const WRITE_GROUP_BYTES = 4 << 20;

/** `Held.where` of a content held in memory (`Held.data`) or in a file of its own (`Held.files`). */
const IN_MEMORY = -1;
const IN_FILE = -2;

/**
 * The contents held until the tree is known, one slot each (first copy of a
 * digest only), as columns rather than an object per content: on the
 * 150k-file image of issue 18 a record object with its chunk list and digest
 * strings cost ~300 bytes per content; this ~40 (the Map's slot, two numbers).
 */
class Held {
  /** digest → slot */
  readonly slots = new Map<string, number>();
  /** stored bytes of each slot (its chunks back to back) */
  private stored: Float64Array<ArrayBuffer> = new Float64Array(1024);
  /** offset in the spool file, or IN_MEMORY, or IN_FILE */
  private whereAt: Float64Array<ArrayBuffer> = new Float64Array(1024);
  private n = 0;
  /** slots held in memory: their stored chunks back to back */
  readonly data = new Map<number, Uint8Array>();
  /** slots held in a file of their own (a large content's frames, written by the worker) */
  readonly files = new Map<number, string>();
  /**
   * the chunk list of the slots whose content is not one chunk with the
   * content's own digest (the worker's answer for every content up to the
   * chunk size: nothing to keep)
   */
  readonly chunks = new Map<number, StoredChunkInfo[]>();

  has(digest: string): boolean {
    return this.slots.has(digest);
  }

  add(digest: string, size: number, where: number, chunks: StoredChunkInfo[]): number {
    if (this.n === this.stored.length) {
      const grow = (a: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> => {
        const b = new Float64Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.stored = grow(this.stored);
      this.whereAt = grow(this.whereAt);
    }
    const slot = this.n++;
    this.stored[slot] = size;
    this.whereAt[slot] = where;
    if (chunks.length !== 1 || chunks[0].rawDigest !== digest || chunks[0].storedSize !== size) this.chunks.set(slot, chunks);
    this.slots.set(digest, slot);
    return slot;
  }

  size(slot: number): number {
    return this.stored[slot];
  }

  where(slot: number): number {
    return this.whereAt[slot];
  }

  /** Forget a slot's bytes once written (its number stays taken). */
  drop(digest: string, slot: number): void {
    this.slots.delete(digest);
    this.data.delete(slot);
    this.files.delete(slot);
    this.chunks.delete(slot);
  }

  clear(): void {
    this.slots.clear();
    this.data.clear();
    this.files.clear();
    this.chunks.clear();
  }
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

/**
 * Tasks started as they come and consumed as they finish, one consume at a
 * time, with a bounded number (and weight) of tasks not yet consumed.
 *
 * Not in submission order (util/ordered's OrderedWindow): the sink's output
 * does not depend on the order results are taken in (a content's stored bytes
 * are a function of its bytes, and writeTo lays contents out in tree order),
 * and in order, one long task (a 256 MiB content staged in a file) held back
 * every result behind it, so the main thread stopped reading the layer and
 * the other threads ran dry until it was done.
 */
class TaskWindow<T> {
  private running = 0;
  private weight = 0;
  private failure: { error: unknown } | undefined;
  /** consumes run one after the other */
  private consuming: Promise<void> = Promise.resolve();
  private waiters: (() => void)[] = [];

  constructor(private readonly maxTasks: number, private readonly maxWeight: number) {}

  private wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private fail(e: unknown): void {
    this.failure ??= { error: e };
  }

  /** Start `start()` once there is room; `consume` runs with its result when it is done. Throws the first failure. */
  async push(start: () => Promise<T>, consume: (r: T) => Promise<void>, weight: number): Promise<void> {
    while (!this.failure && (this.running >= this.maxTasks || (this.running > 0 && this.weight + weight > this.maxWeight))) await this.wait();
    if (this.failure) throw this.failure.error;
    this.running++;
    this.weight += weight;
    const done = (): void => {
      this.running--;
      this.weight -= weight;
      this.wake();
    };
    start().then(
      (r) => {
        this.consuming = this.consuming.then(async () => {
          try {
            if (!this.failure) await consume(r);
          } catch (e) {
            this.fail(e);
          } finally {
            done();
          }
        });
      },
      (e) => {
        this.fail(e);
        done();
      },
    );
  }

  /** Wait until every task is consumed; throws the first failure. */
  async flush(): Promise<void> {
    while (this.running > 0) await this.wait();
    if (this.failure) throw this.failure.error;
  }

  /** After an error: wait for the tasks still running, ignoring their results. */
  async settle(): Promise<void> {
    while (this.running > 0) await this.wait();
  }
}

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

/** A held content taken for writing (see BlobSink.take). */
interface TakenContent {
  /** stored bytes (its frames) */
  stored: number;
  /** content bytes */
  size: number;
  where: number;
  file?: string;
  data?: Uint8Array;
  infos?: StoredChunkInfo[];
  digest: Buffer;
}

/** Appends to a writer in gathered writes of up to WRITE_GROUP_BYTES; `offset` is where the next byte added lands. */
class GatheredWrites {
  private parts: Uint8Array[] = [];
  private bytes = 0;
  constructor(private readonly writer: CdimgWriter) {}
  get offset(): number {
    return this.writer.offset + this.bytes;
  }
  async add(data: Uint8Array): Promise<void> {
    if (this.bytes + data.length > WRITE_GROUP_BYTES) await this.flush();
    this.parts.push(data);
    this.bytes += data.length;
  }
  async flush(): Promise<void> {
    if (this.parts.length) await this.writer.appendv(this.parts);
    this.parts = [];
    this.bytes = 0;
  }
}

export class BlobSink implements ContentSink {
  /** the stored contents by digest (first copy only) */
  private readonly held = new Held();
  private readonly window: TaskWindow<CompressResult>;
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
    this.window = new TaskWindow(Math.max(2, pool.threads * 3), limits.maxBytesInFlight);
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
    // a staged content weighs nothing here: it is on disk, and the thread reads it a chunk at a time
    const weight = b.items.reduce((n, it) => n + (it.data ? it.size : 0), 0);
    await this.window.push(
      () => this.pool.run(CONVERT_TASKS, 'compressContents', { items: b.items, level: this.level, chunkSize: this.chunkSize }, b.buffers),
      (r) => this.consume(b, r),
      weight,
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
        else this.held.files.set(this.held.add(digest, sizes[i], IN_FILE, chunks), outPath);
        continue;
      }
      if (!this.held.has(digest)) {
        if (spoolBase < 0) this.held.data.set(this.held.add(digest, sizes[i], IN_MEMORY, chunks), r.stored.subarray(o, o + sizes[i]));
        else this.held.add(digest, sizes[i], spoolBase + o, chunks);
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
    // no batch comes any more: their buffers (threads × 3 × batchBytes, 12 MiB) need not wait for destroy()
    this.freeShared.length = 0;
  }

  /** A held content's record, taken out of `held` (written once: its record and in-memory bytes can go before the index is built). */
  private take(c: TreeContent): TakenContent {
    const slot = this.held.slots.get(c.digest);
    if (slot === undefined) throw new Error(`content ${c.digest} was never stored`);
    const t: TakenContent = {
      stored: this.held.size(slot),
      size: c.size,
      where: this.held.where(slot),
      file: this.held.files.get(slot),
      data: this.held.data.get(slot),
      infos: this.held.chunks.get(slot),
      // One chunk (every content up to the chunk size): its raw digest is the content's, the same Buffer; the
      // empty digests are one shared Buffer. An own Buffer each (and its ArrayBuffer) cost ~500 bytes per content.
      digest: c.raw ?? Buffer.from(c.digest, 'hex'),
    };
    this.held.drop(c.digest, slot);
    return t;
  }

  /**
   * The stored bytes of contents held in memory or in the spool file, back to
   * back in this order. Spooled contents next to each other in the spool file
   * are read with one read: a read per content (151k reads of ~1.5 KB, each
   * awaited) took 12.6 of the 28.6 s of the 150k-file image of issue 18. The
   * spool holds each batch's contents back to back and batches mostly in layer
   * order, which is mostly tree order, so the runs are long.
   */
  private async storedOf(list: TakenContent[]): Promise<Uint8Array> {
    if (list.length === 1 && list[0].data) return list[0].data;
    const total = list.reduce((n, t) => n + t.stored, 0);
    const out = Buffer.allocUnsafeSlow(total);
    let o = 0;
    for (let k = 0; k < list.length; ) {
      const t = list[k];
      if (t.data) {
        out.set(t.data, o);
        o += t.stored;
        k++;
        continue;
      }
      if (t.where < 0) throw new Error('a content held in a file of its own cannot be read with others');
      let len = t.stored;
      let m = k + 1;
      while (m < list.length && !list[m].data && list[m].where === t.where + len) len += list[m++].stored;
      await readFully(this.spool as fsp.FileHandle, out.subarray(o, o + len), t.where);
      o += len;
      k = m;
    }
    return out;
  }

  /**
   * Append the listed contents (the tree's, in its order) to the writer with
   * gathered writes; returns their blob records. Contents not listed (deleted
   * or replaced by a later layer) are not written. Runs of small contents are
   * stored as solid groups (format/group.ts: planGroups decides from the
   * sizes in tree order alone, so `cdimg patch` lays out the same groups):
   * their frames, compressed one by one while the layers streamed in, are
   * decoded and the group encoded by a worker thread of `groupPool`, several
   * at once.
   */
  async writeTo(writer: CdimgWriter, contents: TreeContent[], groupPool: WorkerPool = this.pool): Promise<Blob[]> {
    await this.flush();
    const sizes = new Float64Array(contents.length);
    for (let i = 0; i < contents.length; i++) sizes[i] = contents[i].size;
    const plan = planGroups(sizes, this.chunkSize);
    const blobs: Blob[] = [];
    const out = new GatheredWrites(writer);
    const window = new OrderedWindow<Uint8Array>(Math.max(2, groupPool.threads * 3), 32 << 20);
    try {
      for (let i = 0; i < contents.length; ) {
        if (plan[i] < 0) {
          const t = this.take(contents[i++]);
          await window.push(
            async () => (t.where === IN_FILE ? EMPTY : await this.storedOf([t])),
            async (bytes) => {
              const at = out.offset;
              const chunks: Chunk[] = t.infos
                ? zstdChunksAt(at, t.infos)
                : [{ offset: at, storedSize: t.stored, storedDigest: EMPTY, rawSize: t.size, rawDigest: t.digest, codec: Codec.ZSTD, baseDigest: EMPTY, baseOffset: 0, baseSize: 0 }];
              blobs.push({ digest: t.digest, size: t.size, encoding: Encoding.FULL, chunks });
              if (t.where === IN_FILE) {
                // a large content's frames: copied from their file in pieces
                await out.flush();
                await copyInPieces(t.file as string, t.stored, writer);
              } else await out.add(bytes);
            },
            t.where === IN_FILE ? 0 : t.stored,
          );
          continue;
        }
        let j = i + 1;
        while (j < contents.length && plan[j] === plan[i]) j++;
        const members: TakenContent[] = [];
        for (; i < j; i++) members.push(this.take(contents[i]));
        if (members.some((m) => m.infos || m.where === IN_FILE)) throw new Error('a grouped content is not one chunk');
        const weight = members.reduce((n, m) => n + m.size, 0);
        await window.push(
          async () => {
            const frames = await this.storedOf(members);
            const r = await groupPool.run(CONVERT_TASKS, 'regroup', { frames, storedSizes: members.map((m) => m.stored), rawSizes: members.map((m) => m.size), level: this.level });
            return r.frame;
          },
          async (frame) => {
            const at = out.offset;
            let g = 0;
            for (const m of members) {
              const chunk: Chunk = { offset: at, storedSize: frame.length, storedDigest: EMPTY, rawSize: m.size, rawDigest: m.digest, codec: Codec.GROUP, baseDigest: EMPTY, baseOffset: 0, baseSize: 0, groupOffset: g };
              blobs.push({ digest: m.digest, size: m.size, encoding: Encoding.FULL, chunks: [chunk] });
              g += m.size;
            }
            await out.add(frame);
          },
          weight,
        );
      }
      await window.flush();
      await out.flush();
    } catch (e) {
      await window.settle();
      throw e;
    }
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
