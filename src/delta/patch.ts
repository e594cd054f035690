/**
 * `ctr-cli cdimg patch BASE DELTA…`: apply deltas eagerly and write the full
 * image. Contents are stored exactly as convert stores them (same level,
 * chunking and order), so the result has the same bytes as converting the
 * new image directly.
 */
import { CdimgReader } from '../format/reader';
import { CdimgWriter } from '../format/writer';
import { Blob, Codec, Encoding, FileType, Index, Kind, FORMAT_VERSION, zstdChunksAt } from '../format/types';
import { planGroups } from '../format/group';
import { WorkerPool } from '../workers/pool';
import { OrderedWindow } from '../util/ordered';
import { checkChain } from './chain';
import { contentsOf, DELTA_TASKS } from './diff';
import { INDEX_LEVEL, LEVELS } from '../convert/convert';
import type { CompressResult } from '../convert/tasks';
import { invalidArgument } from '../errors';
import { DeltaSummary, summarizeDelta } from './summary';

const EMPTY = Buffer.alloc(0);

export interface PatchOptions {
  base: string;
  deltas: string[];
  out: string;
  threads?: number;
  pool?: WorkerPool;
}

export interface PatchResult {
  output: string;
  imageId: string;
  rootDigest: string;
  fileSize: number;
  contents: number;
  seconds: number;
  /** What the applied deltas did, as every delta command reports it (bytes: all deltas applied). */
  summary: DeltaSummary;
}

export async function patchImage(o: PatchOptions): Promise<PatchResult> {
  const t0 = process.hrtime.bigint();
  if (o.deltas.length === 0) throw invalidArgument('name at least one delta to apply');
  const paths = [o.base, ...o.deltas];
  const readers: CdimgReader[] = [];
  const pool = o.pool ?? new WorkerPool(o.threads);
  let writer: CdimgWriter | undefined;
  const window = new OrderedWindow<CompressResult | { frame: Uint8Array }>(Math.max(2, pool.threads * 3), 256 * 1024 * 1024);
  try {
    readers.push(...(await CdimgReader.openChain(paths)));
    checkChain(readers);
    const top = readers[readers.length - 1].index;
    writer = await CdimgWriter.create(o.out);
    const blobs: Blob[] = [];
    const contents = contentsOf(top.entries);
    // the solid groups convert makes of the same contents in the same order (format/group.ts)
    const plan = planGroups(contents.map((c) => c.size), top.chunkSize);
    const w = writer;
    for (let i = 0; i < contents.length; ) {
      if (plan[i] >= 0) {
        let j = i + 1;
        while (j < contents.length && plan[j] === plan[i]) j++;
        const members = contents.slice(i, j);
        i = j;
        const slots = members.map((m): Blob => ({ digest: m.digest, size: m.size, encoding: Encoding.FULL, chunks: [] }));
        blobs.push(...slots);
        await window.push(
          () => pool.run(DELTA_TASKS, 'materializeGroup', { chain: paths, digests: members.map((m) => m.digest.toString('hex')), level: LEVELS.default }),
          async (r) => {
            if (!('frame' in r)) throw new Error('materializeGroup returned no frame');
            const frame = Buffer.from(r.frame.buffer, r.frame.byteOffset, r.frame.byteLength);
            const at = await w.append(frame);
            let g = 0;
            for (const slot of slots) {
              slot.chunks = [{ offset: at, storedSize: frame.length, storedDigest: EMPTY, rawSize: slot.size, rawDigest: slot.digest, codec: Codec.GROUP, baseDigest: EMPTY, baseOffset: 0, baseSize: 0, groupOffset: g }];
              g += slot.size;
            }
          },
          members.reduce((n, m) => n + m.size, 0),
        );
        continue;
      }
      const c = contents[i++];
      const slot: Blob = { digest: c.digest, size: c.size, encoding: Encoding.FULL, chunks: [] };
      blobs.push(slot);
      await window.push(
        () => pool.run(DELTA_TASKS, 'materializeFull', { chain: paths, digest: c.digest.toString('hex'), level: LEVELS.default, chunkSize: top.chunkSize }),
        async (r) => {
          if (!('items' in r)) throw new Error('materializeFull returned no chunks');
          const at = await w.append(Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength));
          slot.chunks = zstdChunksAt(at, r.items[0].chunks);
        },
        c.size,
      );
    }
    await window.flush();
    const index: Index = {
      formatVersion: FORMAT_VERSION,
      kind: Kind.FULL,
      imageId: top.imageId,
      parentId: Buffer.alloc(0),
      image: top.image,
      entries: top.entries,
      blobs,
      chunkSize: top.chunkSize,
    };
    const fin = await writer.finish(index, { indexLevel: INDEX_LEVEL });
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const deltas = readers.slice(1);
    const top1 = deltas[deltas.length - 1].index;
    // Report against the base image: the tree of the top delta, the base's files, all deltas' bytes.
    const summary = summarizeDelta({ ...top1, parentImage: readers[0].index.image }, deltas.reduce((n, r) => n + r.fileSize, 0), readers[0].index.entries, seconds, o.out);
    if (deltas.length > 1) {
      // with several deltas, "same" must mean "held by the base": recount against the base's contents
      const baseHas = new Set(readers[0].index.blobs.map((b) => b.digest.toString('hex')));
      const f = { same: 0, patched: 0, full: 0, removed: summary.files.removed };
      for (const e of top1.entries) {
        if (e.type !== FileType.REG) continue;
        if (baseHas.has(e.digest.toString('hex'))) f.same++;
        else f.patched++;
      }
      summary.files = f;
    }
    return { output: o.out, imageId: `sha256:${top.imageId.toString('hex')}`, rootDigest: fin.rootDigest, fileSize: fin.size, contents: blobs.length, seconds, summary };
  } catch (e) {
    await window.settle();
    await writer?.abort();
    throw e;
  } finally {
    await Promise.all(readers.map((r) => r.close()));
    if (!o.pool) await pool.close();
  }
}
