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
import { Chain } from './chain';
import { BSDIFF_MAX_INPUT, chunkBaseRange, CodecChoice, contentKind, encodeChunk, LevelPreset } from './codecs';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const chains = new Map<string, Promise<Chain>>();

function chainOf(paths: string[]): Promise<Chain> {
  const key = paths.join('\0');
  let c = chains.get(key);
  if (!c) {
    c = Chain.open(paths);
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
}

/** Encode one new content against its base (or alone): per unit the smallest of full and patches, verified. */
export async function diffContent(a: DiffContentArgs): Promise<{ stored: Uint8Array; chunks: DeltaChunkInfo[] }> {
  const target = await (await chainOf(a.newChain)).content(Buffer.from(a.target, 'hex'));
  const base = a.base ? await (await chainOf(a.oldChain)).content(Buffer.from(a.base, 'hex')) : Buffer.alloc(0);
  // Whole contents up to bsdiff's input limit are one unit (cutting a binary loses matches across the cut);
  // larger ones go in chunks, each against a window of the base around the same relative offset.
  const whole = base.length > 0 && target.length <= BSDIFF_MAX_INPUT;
  const unit = whole ? Math.max(target.length, 1) : a.chunkSize;
  const kind = base.length ? contentKind(target) : undefined;
  const frames: Buffer[] = [];
  const chunks: DeltaChunkInfo[] = [];
  let pos = 0;
  do {
    const raw = target.subarray(pos, Math.min(pos + unit, target.length));
    let bo = 0;
    let bs = 0;
    if (base.length) {
      if (whole && base.length <= BSDIFF_MAX_INPUT) bs = base.length;
      else {
        const r = chunkBaseRange(base.length, target.length, pos, raw.length);
        bo = r.start;
        bs = r.end - r.start;
      }
    }
    const region = base.subarray(bo, bo + bs);
    // the smallest of the codecs (the registry, src/delta/codecs); on a whole content also the
    // wrapper codecs (.gz files: their decompressed content, when the file rebuilds byte for byte)
    const { codec, data, usesBase } = encodeChunk(region, raw, { codec: a.codec, level: a.level, kind }, whole || (!base.length && raw.length === target.length));
    frames.push(data);
    chunks.push({
      storedSize: data.length,
      storedDigest: sha(data),
      rawSize: raw.length,
      // the whole content: its digest is known (the chain verified it when it built the content)
      rawDigest: raw.length === target.length ? a.target : sha(raw),
      codec,
      baseOffset: usesBase ? bo : 0,
      baseSize: usesBase ? bs : 0,
      usesBase,
    });
    pos += raw.length;
  } while (pos < target.length);
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
