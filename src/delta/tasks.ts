/**
 * Worker-thread tasks of delta (diff, merge by rediff, patch): they open
 * .cdimg chains themselves (cached per worker), so only digests and results
 * cross threads. Run by the worker pool (src/workers/pool.ts), which loads
 * this file in its threads by path on the first delta task: threads that
 * only compress never load the delta modules.
 */
import { createHash } from 'node:crypto';
import { compressContents, CompressResult, StoredChunkInfo } from '../convert/tasks';
import type { Codec } from '../format/types';
import { promises as fsp } from 'node:fs';
import { corrupt } from '../errors';
import { readZstdChunk } from '../format/reader';
import { Chain } from './chain';
import { BSDIFF_MAX_INPUT, chunkBaseRange, CodecChoice, contentKind, encodeChunk, LevelPreset } from './codecs';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const chains = new Map<string, Promise<Chain>>();

function chainOf(paths: string[]): Promise<Chain> {
  const key = paths.join('\0');
  let c = chains.get(key);
  if (!c) {
    // the main thread opened and checked these chains whole: a worker needs their stored contents only
    c = Chain.open(paths, { contentsOnly: true });
    c.catch(() => chains.delete(key));
    chains.set(key, c);
    // Keep a few chains open per worker; close the oldest.
    if (chains.size > 8) {
      const [oldKey, old] = chains.entries().next().value as [string, Promise<Chain>];
      chains.delete(oldKey);
      old.then((x) => x.close()).catch(() => undefined);
    }
  }
  return c;
}

export interface DeltaChunkInfo extends StoredChunkInfo {
  codec: Codec;
  baseOffset: number;
  baseSize: number;
  /** false when the chunk decodes without its base (full frames, self-contained gzip members) */
  usesBase: boolean;
}

export interface DiffContentArgs {
  /** chain of the old image (full image first) */
  oldChain: string[];
  /** chain of the new image */
  newChain: string[];
  /** sha256 hex of the new content */
  target: string;
  /** sha256 hex of the base content in the old image, '' for none */
  base: string;
  codec: CodecChoice;
  level: LevelPreset;
  chunkSize: number;
  /**
   * Only the units in [start, end) of the new content (multiples of
   * chunkSize; a large content is coded in parts by several threads at once).
   * Default: the whole content.
   */
  start?: number;
  end?: number;
  /**
   * The target's and the base's records when both files are full images and
   * the contents plain zstd chunks (`cdimg diff`): the thread reads those
   * chunks directly instead of decoding both indexes (~200 MB and 2 s per
   * thread for a 150,000-entry image).
   */
  targetBlob?: FullBlobArg;
  baseBlob?: FullBlobArg;
}

/** A FULL content of a full image as a task argument: its zstd chunks. */
export interface FullBlobArg {
  size: number;
  chunks: { offset: number; storedSize: number; rawSize: number; rawDigest: string }[];
}

const NO_DIGEST = Buffer.alloc(0);

/** A FULL content read straight from its file, chunk by chunk, each chunk checked against its digest. */
class FullBlob {
  constructor(
    private readonly path: string,
    private readonly blob: FullBlobArg,
    private readonly digest: string,
  ) {}
  sizeOf(): number {
    return this.blob.size;
  }
  async content(): Promise<Buffer> {
    const data = await this.range(0, this.blob.size);
    if (sha(data) !== this.digest) throw corrupt(`${this.path}: content sha256:${this.digest} does not match its digest after decoding`);
    return data;
  }
  async range(start: number, end: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    const fh = await fsp.open(this.path, 'r');
    try {
      let pos = 0;
      for (const c of this.blob.chunks) {
        const next = pos + c.rawSize;
        if (next > start && pos < end) {
          // version 2 zstd chunks carry no stored digest: the decoded bytes are checked
          const raw = await readZstdChunk(fh, this.path, { ...c, storedDigest: NO_DIGEST, rawDigest: Buffer.from(c.rawDigest, 'hex') });
          parts.push(raw.subarray(Math.max(0, start - pos), Math.min(c.rawSize, end - pos)));
        }
        pos = next;
        if (pos >= end) break;
      }
    } finally {
      await fh.close();
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
}

/** What diffContent reads a content through: a chain, or a full image's chunks given by the main thread. */
interface ContentSource {
  sizeOf(): number;
  content(): Promise<Buffer>;
  range(start: number, end: number): Promise<Buffer>;
}

async function sourceOf(paths: string[], hex: string, blob: FullBlobArg | undefined): Promise<ContentSource> {
  if (blob) return new FullBlob(paths[paths.length - 1], blob, hex);
  const chain = await chainOf(paths);
  const d = Buffer.from(hex, 'hex');
  return { sizeOf: () => chain.sizeOf(d), content: () => chain.content(d), range: (s, e) => chain.range(d, s, e) };
}

/**
 * Encode one new content against its base (or alone): per unit the smallest of
 * full and patches, verified. Contents up to bsdiff's input limit are built
 * whole; larger ones are read unit by unit, each with only the window of the
 * base it is coded against (Chain.range), so memory stays a few chunks.
 */
export async function diffContent(a: DiffContentArgs): Promise<{ stored: Uint8Array; chunks: DeltaChunkInfo[] }> {
  const newSource = await sourceOf(a.newChain, a.target, a.targetBlob);
  const oldSource = a.base ? await sourceOf(a.oldChain, a.base, a.baseBlob) : undefined;
  const targetSize = newSource.sizeOf();
  const baseSize = oldSource ? oldSource.sizeOf() : 0;
  // Whole contents up to bsdiff's input limit are one unit (cutting a binary loses matches across the cut);
  // larger ones go in chunks, each against a window of the base around the same relative offset.
  const whole = baseSize > 0 && targetSize <= BSDIFF_MAX_INPUT;
  const unit = whole ? Math.max(targetSize, 1) : a.chunkSize;
  const small = targetSize <= unit;
  const start = small ? 0 : (a.start ?? 0);
  const stop = small ? targetSize : Math.min(a.end ?? targetSize, targetSize);
  if (start % unit !== 0 || start >= Math.max(stop, 1)) throw new Error(`part ${start}..${stop} of a content is not a whole number of units`);
  const target = small ? await newSource.content() : undefined;
  const base = oldSource && (whole || baseSize <= a.chunkSize) ? await oldSource.content() : undefined;
  const rangeOf = async (pos: number, end: number): Promise<Buffer> => (target ? target.subarray(pos, end) : newSource.range(pos, end));
  const baseOf = async (start: number, end: number): Promise<Buffer> => (base ? base.subarray(start, end) : oldSource ? oldSource.range(start, end) : Buffer.alloc(0));
  const kind = baseSize ? contentKind(await rangeOf(0, Math.min(targetSize, 65536))) : undefined;
  const frames: Buffer[] = [];
  const chunks: DeltaChunkInfo[] = [];
  // read unit by unit, the content is checked whole here (content() checks the ones it builds whole)
  const whole256 = target || start > 0 || stop < targetSize ? undefined : createHash('sha256');
  let pos = start;
  do {
    const raw = await rangeOf(pos, Math.min(pos + unit, stop));
    whole256?.update(raw);
    let bo = 0;
    let bs = 0;
    if (baseSize) {
      if (whole && baseSize <= BSDIFF_MAX_INPUT) bs = baseSize;
      else {
        const r = chunkBaseRange(baseSize, targetSize, pos, raw.length);
        bo = r.start;
        bs = r.end - r.start;
      }
    }
    const region = await baseOf(bo, bo + bs);
    // the smallest of the codecs (the registry, src/delta/codecs); on a whole content also the
    // wrapper codecs (.gz files: their decompressed content, when the file rebuilds byte for byte)
    const { codec, data, usesBase } = encodeChunk(region, raw, { codec: a.codec, level: a.level, kind }, whole || (!baseSize && raw.length === targetSize));
    frames.push(data);
    chunks.push({
      storedSize: data.length,
      storedDigest: sha(data),
      rawSize: raw.length,
      // the whole content: its digest is known (the chain verified it when it built the content)
      rawDigest: raw.length === targetSize ? a.target : sha(raw),
      codec,
      baseOffset: usesBase ? bo : 0,
      baseSize: usesBase ? bs : 0,
      usesBase,
    });
    pos += raw.length;
  } while (pos < stop);
  if (whole256 && whole256.digest('hex') !== a.target) throw corrupt(`content sha256:${a.target} does not match its digest after decoding`);
  return { stored: Buffer.concat(frames), chunks };
}

export interface MaterializeArgs {
  chain: string[];
  digest: string;
  level: number;
  chunkSize: number;
}

/** Build a content through its chain and store it as full zstd chunks (as convert does). */
export async function materializeFull(a: MaterializeArgs): Promise<CompressResult> {
  const data = await (await chainOf(a.chain)).content(Buffer.from(a.digest, 'hex'));
  return compressContents({ items: [{ data, size: data.length, digest: a.digest }], level: a.level, chunkSize: a.chunkSize });
}
