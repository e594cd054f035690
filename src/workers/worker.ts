/**
 * Task functions run inside worker threads (see pool.ts). Inputs and outputs
 * are plain data (structured clone); contents come either inline or as a
 * staged file path.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { zstdBound, zstdFrame, zstdFrameInto, zstdUnframe } from '../format/zstd';
import type { Chain } from '../delta/chain';
import type { CodecChoice, LevelPreset } from '../delta/codecs';
import type { Codec } from '../format/types';

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

/** Output buffer of compressContents, kept between tasks while small. */
let scratch: Buffer | undefined;
const SCRATCH_KEEP = 16 * 1024 * 1024;

/** Upper bound of the frames of an inline content. */
function boundOf(size: number, chunkSize: number): number {
  const full = Math.floor(size / chunkSize);
  const rest = size - full * chunkSize;
  return full * zstdBound(chunkSize) + (rest > 0 || size === 0 ? zstdBound(rest) : 0);
}

/** Hash contents, split them into chunks and zstd each (verifying given digests). */
export async function compressContents(a: CompressArgs): Promise<CompressResult> {
  // Frames of inline contents go back to back into one buffer; staged (huge) contents get a buffer per frame.
  const bound = a.items.reduce((n, it) => n + (it.data ? boundOf(it.size, a.chunkSize) : 0), 0);
  const out = scratch && scratch.length >= bound ? scratch : Buffer.allocUnsafe(bound);
  if (bound <= SCRATCH_KEEP && out !== scratch) scratch = out;
  let pos = 0;
  const parts: Uint8Array[] = [];
  let runStart = 0;
  const items: CompressResult['items'] = [];
  for (const item of a.items) {
    const whole = createHash('sha256');
    const chunks: StoredChunkInfo[] = [];
    // A content of one chunk is that chunk: its digest is the chunk's raw digest (hashed once).
    const single = item.size <= a.chunkSize;
    for await (const raw of chunksOf(item, a.chunkSize)) {
      whole.update(raw);
      let frame: Uint8Array;
      if (item.data) {
        const n = zstdFrameInto(out.subarray(pos), raw, a.level);
        frame = out.subarray(pos, pos + n);
        pos += n;
      } else {
        if (pos > runStart) parts.push(out.subarray(runStart, pos));
        frame = zstdFrame(raw, a.level);
        parts.push(frame);
        runStart = pos;
      }
      chunks.push({ storedSize: frame.length, storedDigest: sha(frame), rawSize: raw.length, rawDigest: single ? '' : sha(raw) });
    }
    const got = whole.digest('hex');
    if (item.digest && got !== item.digest) throw new Error(`content changed: expected ${item.digest}, got ${got}`);
    if (single) {
      if (chunks.length !== 1 || chunks[0].rawSize !== item.size) throw new Error(`content ${got}: expected one chunk of ${item.size} bytes`);
      chunks[0].rawDigest = got;
    }
    items.push({ digest: got, chunks });
  }
  if (pos > runStart) parts.push(out.subarray(runStart, pos));
  // One copy, into shared memory: posting it back to the caller then copies nothing.
  const stored = new Uint8Array(new SharedArrayBuffer(parts.reduce((n, p) => n + p.length, 0)));
  let at = 0;
  for (const p of parts) {
    stored.set(p, at);
    at += p.length;
  }
  return { stored, items };
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
  const { encodeChunk, contentKind, chunkBaseRange, BSDIFF_MAX_INPUT } = delta().codecs;
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

