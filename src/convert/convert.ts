/**
 * `ctr-cli convert`: read an image from any transport, flatten its layers,
 * and write a full .cdimg. Contents are hashed and compressed in the worker
 * pool while layers stream in, held by digest, then written in tree order
 * (see sink.ts); the index follows.
 */
import { promises as fsp } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { openSource } from '../oci/source';
import { classifyLayerError, openLayer, parsePlatform, resolveImage, ResolvedImage } from '../oci/image';
import { RegistryOptions } from '../oci/registry/options';
import { readTar } from '../tar';
import { ContentSink, TreeBuilder } from './flatten';
import { BlobSink, SinkLimits } from './sink';
import { CdimgWriter, warmFinish } from '../format/writer';
import { computeImageId } from '../format/codec';
import { Blob, DEFAULT_CHUNK_SIZE, Entry, FileType, Index, ImageInfo, Kind, FORMAT_VERSION } from '../format/types';
import { WorkerPool } from '../workers/pool';
import { invalidArgument } from '../errors';

/** zstd levels of full contents: `default` matches the zstd tool's default. */
export { LEVELS, type LevelName } from './levels';
import { LEVELS } from './levels';

/**
 * zstd level of a full image's index (convert and patch both use it, so that
 * patching gives convert's bytes). The index is mostly digests: level 9 stores
 * it within ~4% of level 19 (0.03% of the file) at a tenth of the time (27 ms
 * instead of 335 ms for a 9,000-entry index).
 */
export const INDEX_LEVEL = 9;

export interface ProgressEvent {
  phase: 'resolve' | 'layers' | 'compress' | 'write';
  done: number;
  total: number;
  detail?: string;
}

export interface ConvertOptions {
  ref: string;
  output: string;
  platform?: string;
  threads?: number;
  level?: number;
  chunkSize?: number;
  registry?: RegistryOptions;
  onProgress?: (e: ProgressEvent) => void;
  /** Reuse a pool (the caller closes it). */
  pool?: WorkerPool;
  /** Batching and memory limits of the content sink (tests exercise every path with small ones). */
  sinkLimits?: SinkLimits;
}

export interface ConvertResult {
  output: string;
  rootDigest: string;
  imageId: string;
  fileSize: number;
  entries: number;
  regularFiles: number;
  distinctContents: number;
  contentBytes: number;
  layers: number;
  layerBytes: number;
  seconds: number;
}

export function imageInfoOf(image: ResolvedImage, sourceRef: string): ImageInfo {
  return {
    sourceRef,
    manifestDigest: image.manifestDoc.digest,
    configDigest: image.configDigest,
    configJson: image.configBytes,
    layers: image.layers.map((l) => ({ digest: l.desc.digest, size: l.desc.size, mediaType: l.desc.mediaType, diffId: l.diffId })),
    platform: image.platform,
    manifestMediaType: image.manifestDoc.mediaType,
  };
}

/** Flatten every layer of the image into a tree; contents go to `sink`. */
export async function flattenImage(image: ResolvedImage, sink: ContentSink, onProgress?: (e: ProgressEvent) => void): Promise<TreeBuilder> {
  const builder = new TreeBuilder(sink);
  const total = image.layers.reduce((n, l) => n + l.desc.size, 0);
  let done = 0;
  for (let i = 0; i < image.layers.length; i++) {
    const what = `${image.source.description}: layer ${i + 1}/${image.layers.length}`;
    const stream: Readable = await openLayer(image, i);
    try {
      await builder.applyLayer(readTar(stream, { what }), i, what);
    } catch (e) {
      stream.destroy();
      throw classifyLayerError(e as Error, what);
    }
    done += image.layers[i].desc.size;
    onProgress?.({ phase: 'layers', done, total, detail: `layer ${i + 1}/${image.layers.length}` });
  }
  return builder;
}

export function buildFullIndex(entries: Entry[], blobs: Blob[], image: ImageInfo, chunkSize: number): Index {
  return {
    formatVersion: FORMAT_VERSION,
    kind: Kind.FULL,
    imageId: computeImageId(entries, image.configJson),
    parentId: Buffer.alloc(0),
    image,
    entries,
    blobs,
    chunkSize,
  };
}

export async function convertImage(o: ConvertOptions): Promise<ConvertResult> {
  const t0 = process.hrtime.bigint();
  if (!o.output) throw invalidArgument('--output is required');
  const level = o.level ?? LEVELS.default;
  if (!Number.isInteger(level) || level < 1 || level > 22) throw invalidArgument(`compression level ${level} out of range 1..22`);
  const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 64 * 1024 || chunkSize > 64 * 1024 * 1024) throw invalidArgument(`chunk size ${chunkSize} out of range 64 KiB..64 MiB`);
  const platform = o.platform ? parsePlatform(o.platform) : undefined;
  await fsp.mkdir(dirname(o.output), { recursive: true });
  o.onProgress?.({ phase: 'resolve', done: 0, total: 1 });
  const source = await openSource(o.ref, o.registry);
  const pool = o.pool ?? new WorkerPool(o.threads);
  let sink: BlobSink | undefined;
  let writer: CdimgWriter | undefined;
  try {
    sink = new BlobSink(pool, level, chunkSize, join(dirname(o.output), `.${basename(o.output)}.spool-${process.pid}-${randomBytes(4).toString('hex')}`), o.sinkLimits);
    const image = await resolveImage(source, { platform });
    let builder: TreeBuilder | undefined = await flattenImage(image, sink, o.onProgress);
    const flushed = sink.flush();
    warmFinish(); // while the workers finish the last batches
    await flushed;
    // Every content is compressed: the threads (their heaps, buffers and zstd contexts, ~15–25 MB each)
    // need not live on through the tree and the index, which is where the peak RSS of a big image is.
    // The groups are coded by fresh threads, which hold only that work's buffers.
    if (!o.pool) await pool.close();
    const tree = builder.toEntries();
    builder = undefined; // its tree of nodes is not needed any more (~1 KB per entry of a big image)
    const { entries } = tree;
    const distinctContents = tree.contents.length;
    const contentBytes = tree.contents.reduce((n, c) => n + c.size, 0);
    writer = await CdimgWriter.create(o.output);
    const groupPool = o.pool ?? new WorkerPool(o.threads);
    let blobs: Blob[];
    try {
      blobs = await sink.writeTo(writer, tree.contents, groupPool);
    } finally {
      if (!o.pool) await groupPool.close();
    }
    tree.contents = []; // the blobs have what the index needs (its digest strings: ~100 bytes per content)
    // No reference in the index: the same image gives the same bytes (and
    // root digest, and dedup on servers and registries) whatever reference it
    // was converted from; the manifest digest already names the source.
    const index = buildFullIndex(entries, blobs, imageInfoOf(image, ''), chunkSize);
    o.onProgress?.({ phase: 'write', done: 1, total: 1 });
    const fin = await writer.finish(index, { indexLevel: INDEX_LEVEL });
    return {
      output: o.output,
      rootDigest: fin.rootDigest,
      imageId: `sha256:${index.imageId.toString('hex')}`,
      fileSize: fin.size,
      entries: entries.length,
      regularFiles: entries.filter((e) => e.type === FileType.REG).length,
      distinctContents,
      contentBytes,
      layers: image.layers.length,
      layerBytes: image.layers.reduce((n, l) => n + l.desc.size, 0),
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } catch (e) {
    await writer?.abort();
    throw e;
  } finally {
    await sink?.destroy();
    await source.close();
    if (!o.pool) await pool.close();
  }
}
