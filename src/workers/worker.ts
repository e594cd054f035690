/**
 * Task functions run inside worker threads (see pool.ts). Inputs and outputs
 * are plain data (structured clone); contents come either inline or as a
 * staged file path.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { zstdFrame, zstdUnframe } from '../format/zstd';
import type { Chain } from '../delta/chain';
import type { LevelPreset } from '../delta/codecs';
import { Codec } from '../format/types';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export interface ContentItem {
  /** inline content (small files) … */
  data?: Uint8Array;
  /** … or a file holding it */
  path?: string;
  size: number;
  /** expected sha256 hex of the whole content; '' to compute it */
  digest: string;
}

export interface CompressArgs {
  items: ContentItem[];
  level: number;
  chunkSize: number;
}

export interface StoredChunkInfo {
  storedSize: number;
  storedDigest: string;
  rawSize: number;
  rawDigest: string;
}

export interface CompressResult {
  /** all stored chunks of all items back to back */
  stored: Uint8Array;
  /** per item: its content digest and its chunks in order */
  items: { digest: string; chunks: StoredChunkInfo[] }[];
}

async function* chunksOf(item: ContentItem, chunkSize: number): AsyncGenerator<Buffer> {
  if (item.data) {
    const d = Buffer.from(item.data.buffer, item.data.byteOffset, item.data.byteLength);
    if (d.length !== item.size) throw new Error(`content ${item.digest}: ${d.length} bytes, expected ${item.size}`);
    let pos = 0;
    do {
      yield d.subarray(pos, Math.min(pos + chunkSize, d.length));
      pos += chunkSize;
    } while (pos < d.length);
    return;
  }
  if (!item.path) throw new Error(`content ${item.digest}: neither data nor path`);
  const fh = await fsp.open(item.path, 'r');
  try {
    let pos = 0;
    do {
      const len = Math.min(chunkSize, item.size - pos);
      const raw = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(raw, got, len - got, pos + got);
        if (bytesRead === 0) throw new Error(`staged content ${item.digest} is shorter than ${item.size} bytes`);
        got += bytesRead;
      }
      yield raw;
      pos += len;
    } while (pos < item.size);
  } finally {
    await fh.close();
  }
}

/** Hash contents, split them into chunks and zstd each (verifying given digests). */
export async function compressContents(a: CompressArgs): Promise<CompressResult> {
  const frames: Buffer[] = [];
  const items: CompressResult['items'] = [];
  for (const item of a.items) {
    const whole = createHash('sha256');
    const chunks: StoredChunkInfo[] = [];
    for await (const raw of chunksOf(item, a.chunkSize)) {
      whole.update(raw);
      const frame = zstdFrame(raw, a.level);
      frames.push(frame);
      chunks.push({ storedSize: frame.length, storedDigest: sha(frame), rawSize: raw.length, rawDigest: sha(raw) });
    }
    const got = whole.digest('hex');
    if (item.digest && got !== item.digest) throw new Error(`content changed: expected ${item.digest}, got ${got}`);
    items.push({ digest: got, chunks });
  }
  // Structured clone copies `stored` once; cheap next to compressing it.
  return { stored: Buffer.concat(frames), items };
}

export interface DecodeChunkArgs {
  stored: Uint8Array;
  rawSize: number;
  rawDigest: string;
}

/** Decompress one ZSTD chunk and verify it. */
export function decodeChunk(a: DecodeChunkArgs): Uint8Array {
  const raw = zstdUnframe(Buffer.from(a.stored.buffer, a.stored.byteOffset, a.stored.byteLength), a.rawSize);
  if (sha(raw) !== a.rawDigest) throw new Error(`chunk decodes to the wrong content (expected ${a.rawDigest})`);
  return raw;
}

// ---------------------------------------------------------------------------
// Deltas: tasks that open .cdimg chains themselves (cached per worker), so
// only digests and results cross threads.
// ---------------------------------------------------------------------------

const chains = new Map<string, Promise<Chain>>();
/** Delta modules are loaded on first use: workers that only compress start faster. */
const delta = (): { Chain: typeof import('../delta/chain').Chain; codecs: typeof import('../delta/codecs') } => ({
  Chain: (require('../delta/chain') as typeof import('../delta/chain')).Chain,
  codecs: require('../delta/codecs') as typeof import('../delta/codecs'),
});

function chainOf(paths: string[]): Promise<Chain> {
  const key = paths.join('\0');
  let c = chains.get(key);
  if (!c) {
    c = delta().Chain.open(paths);
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
  codec: 'auto' | 'bsdiff' | 'zstd';
  level: LevelPreset;
  chunkSize: number;
}

/** Region of the base a target unit is patched against: the whole base when it fits bsdiff, else a window around the same relative offset. */
export function baseRegion(baseSize: number, targetSize: number, chunkStart: number, chunkSize: number): [number, number] {
  if (baseSize <= Math.max(PATCH_UNIT, chunkSize)) return [0, baseSize];
  const center = Math.floor((chunkStart * baseSize) / Math.max(1, targetSize));
  const start = Math.max(0, Math.min(baseSize - 2 * chunkSize, center - Math.floor(chunkSize / 2)));
  return [start, Math.min(baseSize - start, 2 * chunkSize)];
}

/**
 * Patched contents are cut in units this large (whole files up to bsdiff's
 * input limit: chunking a binary costs bytes at every cut); contents with no
 * base keep the image's chunk size, so reads can build only what they touch.
 */
export const PATCH_UNIT = 16 * 1024 * 1024; // = codecs.BSDIFF_MAX_INPUT (checked in diffContent)

/** Encode one new content against its base (or alone): per unit the smallest of full and patches, verified. */
export async function diffContent(a: DiffContentArgs): Promise<{ stored: Uint8Array; chunks: DeltaChunkInfo[] }> {
  const target = await (await chainOf(a.newChain)).content(Buffer.from(a.target, 'hex'));
  const base = a.base ? await (await chainOf(a.oldChain)).content(Buffer.from(a.base, 'hex')) : Buffer.alloc(0);
  const { chooseBest, BSDIFF_MAX_INPUT } = delta().codecs;
  if (PATCH_UNIT !== BSDIFF_MAX_INPUT) throw new Error('PATCH_UNIT must equal BSDIFF_MAX_INPUT');
  const unit = base.length ? Math.max(a.chunkSize, PATCH_UNIT) : a.chunkSize;
  const frames: Buffer[] = [];
  const chunks: DeltaChunkInfo[] = [];
  let pos = 0;
  do {
    const raw = target.subarray(pos, Math.min(pos + unit, target.length));
    const [bo, bs] = base.length ? baseRegion(base.length, target.length, pos, unit) : [0, 0];
    const chosen = chooseBest(base.subarray(bo, bo + bs), raw, { codec: a.codec, level: a.level });
    const codec = chosen.codec === 'zstd' ? Codec.ZSTD : chosen.codec === 'zstd-patch' ? Codec.ZSTD_PATCH : Codec.BSDIFF;
    frames.push(chosen.data);
    chunks.push({
      storedSize: chosen.data.length,
      storedDigest: sha(chosen.data),
      rawSize: raw.length,
      rawDigest: sha(raw),
      codec,
      baseOffset: codec === Codec.ZSTD ? 0 : bo,
      baseSize: codec === Codec.ZSTD ? 0 : bs,
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

