/**
 * `ctr-cli convert`: read an image from any transport, flatten its layers,
 * and write a full .cdimg. Contents are staged by digest while layers stream
 * in, then compressed in the worker pool and written in a deterministic order.
 */
import { promises as fsp } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { openSource } from '../oci/source';
import { classifyLayerError, openLayer, parsePlatform, resolveImage, ResolvedImage } from '../oci/image';
import { RegistryOptions } from '../oci/registry/options';
import { readTar } from '../tar';
import { TreeBuilder } from '../tree/flatten';
import { StagingStore } from './staging';
import { CdimgWriter } from '../format/writer';
import { computeImageId } from '../format/codec';
import { Blob, Codec, DEFAULT_CHUNK_SIZE, Encoding, Entry, FileType, Index, ImageInfo, Kind, FORMAT_VERSION } from '../format/types';
import { WorkerPool } from '../workers/pool';
import { invalidArgument } from '../errors';

export const LEVELS = { fast: 3, default: 9, best: 19 } as const;
export type LevelName = keyof typeof LEVELS;

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

/** Flatten every layer of the image into a tree; contents land in `staging`. */
export async function flattenImage(image: ResolvedImage, staging: StagingStore, onProgress?: (e: ProgressEvent) => void): Promise<TreeBuilder> {
  const builder = new TreeBuilder(staging);
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

/**
 * Compress the listed staged contents in the pool and append them to the
 * writer in list order (deterministic), with a bounded window in flight.
 */
export async function writeFullContents(
  contents: { digest: string; size: number }[],
  staging: StagingStore,
  writer: CdimgWriter,
  pool: WorkerPool,
  level: number,
  chunkSize: number,
  onProgress?: (e: ProgressEvent) => void,
): Promise<Blob[]> {
  const blobs: Blob[] = [];
  const window = Math.max(2, pool.threads * 4);
  const maxBytesInFlight = 256 * 1024 * 1024;
  const queue: { size: number; p: Promise<Awaited<ReturnType<typeof runOne>>> }[] = [];
  let bytesInFlight = 0;
  const total = contents.reduce((n, c) => n + c.size, 0);
  let done = 0;
  const runOne = (c: { digest: string; size: number }) =>
    pool.run('compressFile', { path: staging.path(c.digest), size: c.size, digest: c.digest, level, chunkSize });
  const drainOne = async (): Promise<void> => {
    const item = queue.shift();
    if (!item) return;
    const r = await item.p;
    bytesInFlight -= item.size;
    const c = contents[blobs.length];
    const stored = Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength);
    const base = await writer.append(stored);
    let o = 0;
    blobs.push({
      digest: Buffer.from(c.digest, 'hex'),
      size: c.size,
      encoding: Encoding.FULL,
      chunks: r.chunks.map((ch) => {
        const chunk = {
          offset: base + o,
          storedSize: ch.storedSize,
          storedDigest: Buffer.from(ch.storedDigest, 'hex'),
          rawSize: ch.rawSize,
          rawDigest: Buffer.from(ch.rawDigest, 'hex'),
          codec: Codec.ZSTD,
          baseDigest: Buffer.alloc(0),
          baseOffset: 0,
          baseSize: 0,
        };
        o += ch.storedSize;
        return chunk;
      }),
    });
    done += c.size;
    onProgress?.({ phase: 'compress', done, total });
  };
  try {
    for (const c of contents) {
      while (queue.length >= window || (queue.length > 0 && bytesInFlight + c.size > maxBytesInFlight)) await drainOne();
      const p = runOne(c);
      p.catch(() => undefined); // awaited in order by drainOne; avoid unhandled-rejection noise
      queue.push({ size: c.size, p });
      bytesInFlight += c.size;
    }
    while (queue.length) await drainOne();
  } finally {
    // On error, let the remaining tasks settle before the caller tears down.
    await Promise.allSettled(queue.map((q) => q.p));
  }
  return blobs;
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
  const staging = await StagingStore.create(join(dirname(o.output), `.${basename(o.output)}.staging-${process.pid}-${randomBytes(4).toString('hex')}`));
  const pool = o.pool ?? new WorkerPool(o.threads);
  let writer: CdimgWriter | undefined;
  try {
    const image = await resolveImage(source, { platform });
    const builder = await flattenImage(image, staging, o.onProgress);
    const { entries, contents } = builder.toEntries();
    writer = await CdimgWriter.create(o.output);
    const blobs = await writeFullContents(contents, staging, writer, pool, level, chunkSize, o.onProgress);
    const index = buildFullIndex(entries, blobs, imageInfoOf(image, source.description), chunkSize);
    o.onProgress?.({ phase: 'write', done: 1, total: 1 });
    const fin = await writer.finish(index);
    return {
      output: o.output,
      rootDigest: fin.rootDigest,
      imageId: `sha256:${index.imageId.toString('hex')}`,
      fileSize: fin.size,
      entries: entries.length,
      regularFiles: entries.filter((e) => e.type === FileType.REG).length,
      distinctContents: contents.length,
      contentBytes: contents.reduce((n, c) => n + c.size, 0),
      layers: image.layers.length,
      layerBytes: image.layers.reduce((n, l) => n + l.desc.size, 0),
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } catch (e) {
    await writer?.abort();
    throw e;
  } finally {
    await staging.destroy();
    await source.close();
    if (!o.pool) await pool.close();
  }
}
