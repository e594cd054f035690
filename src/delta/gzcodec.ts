/**
 * The GZIP_MEMBER codec: a .gz file (man pages, changelogs) changes as a
 * whole when its text changes a little, so binary patches of it are poor.
 * When the file can be rebuilt byte for byte from its decompressed content
 * (see gzmember.ts: GNU gzip -9n reproduces Debian's), we store the recipe
 * and encode the decompressed content instead, against the base's
 * decompressed content.
 *
 * Stored layout: u8 recipe length | recipe | u8 inner codec | inner bytes.
 */
import { gunzipSync } from 'node:zlib';
import { corrupt } from '../errors';
import { applyPatch, chooseBest, ChooseOptions, decompressFull } from './codecs';
import { GzipRecipe, decodeRecipe, encodeRecipe, gzipHeaderLength, inspectGzip, rebuildGzip } from './gzmember';

/** Largest decompressed content handled (bigger .gz files take the ordinary path). */
export const GZ_MAX_CONTENT = 64 * 1024 * 1024;

const INNER = { zstd: 1, 'zstd-patch': 2, bsdiff: 3 } as const;
const INNER_NAME: Record<number, 'zstd' | 'zstd-patch' | 'bsdiff'> = { 1: 'zstd', 2: 'zstd-patch', 3: 'bsdiff' };

export const isGzip = (b: Buffer): boolean => b.length >= 18 && b[0] === 0x1f && b[1] === 0x8b && b[2] === 8;

/** The base as the inner codec sees it: decompressed when it is a gzip file we can read, else as is. */
export function innerBase(base: Buffer): Buffer {
  if (!isGzip(base) || gzipHeaderLength(base) < 0) return base;
  try {
    return gunzipSync(base, { maxOutputLength: GZ_MAX_CONTENT });
  } catch {
    return base;
  }
}

/**
 * Encode `target` (a .gz file) as recipe + inner encoding, or undefined when it
 * cannot be rebuilt exactly. `usesBase` tells whether the inner encoding is a patch.
 */
export function encodeGzMember(base: Buffer, target: Buffer, opts: ChooseOptions): { data: Buffer; usesBase: boolean } | undefined {
  if (!isGzip(target)) return undefined;
  const m = inspectGzip(target, GZ_MAX_CONTENT);
  if (typeof m === 'string') return undefined;
  const recipe = encodeRecipe(m);
  if (recipe.length > 255) return undefined;
  const chosen = chooseBest(base.length ? innerBase(base) : Buffer.alloc(0), m.content, opts);
  const data = Buffer.concat([Buffer.from([recipe.length]), recipe, Buffer.from([INNER[chosen.codec]]), chosen.data]);
  // Verify what we store: it must give back this recipe and this content. inspectGzip has just
  // rebuilt the file from them byte for byte, so they rebuild it (without running gzip again).
  const back = decodeGzParts(base, data);
  const r = back.recipe;
  if (r.level !== m.level || r.engine !== m.engine || !r.header.equals(m.header) || !back.content.equals(m.content)) {
    throw corrupt('gzip member does not rebuild to the original bytes');
  }
  return { data, usesBase: chosen.codec !== 'zstd' };
}

/** The recipe and the decompressed content stored in a GZIP_MEMBER entry. */
function decodeGzParts(base: Buffer | null, stored: Buffer): { recipe: GzipRecipe; content: Buffer } {
  if (stored.length < 2) throw corrupt('gzip member: truncated');
  const rlen = stored[0];
  if (stored.length < 2 + rlen) throw corrupt('gzip member: truncated recipe');
  const recipe = decodeRecipe(stored.subarray(1, 1 + rlen));
  const inner = INNER_NAME[stored[1 + rlen]];
  if (!inner) throw corrupt(`gzip member: unknown inner codec ${stored[1 + rlen]}`);
  const payload = stored.subarray(2 + rlen);
  // The inner frame or patch names the content size; it is bounded by GZ_MAX_CONTENT.
  let content: Buffer;
  if (inner === 'zstd') {
    content = decompressBounded(payload);
  } else {
    if (!base) throw corrupt('gzip member: patch without a base');
    content = applyPatchBounded(innerBase(base), payload, inner, GZ_MAX_CONTENT);
  }
  return { recipe, content };
}

/** Rebuild the .gz file from stored bytes (and the base region, for inner patches). */
export function decodeGzMember(base: Buffer | null, stored: Buffer, expectedSize: number): Buffer {
  const { recipe, content } = decodeGzParts(base, stored);
  const out = rebuildGzip(recipe, content);
  if (out.length !== expectedSize) throw corrupt(`gzip member rebuilds to ${out.length} bytes, expected ${expectedSize}`);
  return out;
}

/** zstd frames carry their content size: read it, bound it, decode exactly that much. */
function frameContentSize(frame: Buffer): number {
  // zstd frame header: magic(4) FHD(1) [window(1)] [dictID(0-4)] FCS(0-8)
  if (frame.length < 6 || frame.readUInt32LE(0) !== 0xfd2fb528) throw corrupt('gzip member: inner data is not a zstd frame');
  const fhd = frame[4];
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const dictFlag = fhd & 3;
  let pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag];
  const fcsSize = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  if (fcsSize === 0 || frame.length < pos + fcsSize) throw corrupt('gzip member: inner frame without content size');
  let v: number;
  if (fcsSize === 1) v = frame[pos];
  else if (fcsSize === 2) v = frame.readUInt16LE(pos) + 256;
  else if (fcsSize === 4) v = frame.readUInt32LE(pos);
  else v = Number(frame.readBigUInt64LE(pos));
  pos += fcsSize;
  if (v > GZ_MAX_CONTENT) throw corrupt('gzip member: inner content too large');
  return v;
}

function decompressBounded(frame: Buffer): Buffer {
  return decompressFull(frame, frameContentSize(frame));
}

function applyPatchBounded(base: Buffer, patch: Buffer, codec: 'zstd-patch' | 'bsdiff', bound: number): Buffer {
  if (codec === 'zstd-patch') return applyPatch(base, patch, codec, frameContentSize(patch));
  // bsdiff container (v1 "D4BSDIF1" or v2 "D4BSDIF2"), then u64 target size
  const magic = patch.length >= 16 ? patch.toString('latin1', 0, 8) : '';
  if (magic !== 'D4BSDIF1' && magic !== 'D4BSDIF2') throw corrupt('gzip member: bad bsdiff container');
  const size = Number(patch.readBigUInt64LE(8));
  if (size > bound) throw corrupt('gzip member: inner content too large');
  return applyPatch(base, patch, codec, size);
}
