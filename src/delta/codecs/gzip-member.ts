/**
 * The gzip-member codec: a .gz file (man pages, changelogs) changes as a whole when its
 * text changes a little, so binary patches of it are poor. When the file can be rebuilt
 * byte for byte from its decompressed content (src/delta/gzmember.ts: GNU gzip -9n
 * reproduces Debian's), the recipe is stored and the decompressed content is encoded
 * instead by a codec of bytes, against the base's decompressed content.
 *
 * Stored layout: u8 recipe length | recipe | u8 inner codec (its cdimg.proto value) | inner bytes.
 *
 * A wrapper codec: the registry imports it, so it gets the codecs of bytes from its
 * caller (the chooser to encode with, the lookup of the inner codec to decode with).
 */
import { gunzipSync } from 'node:zlib';
import { corrupt } from '../../errors';
import { Codec } from '../../format/types';
import type { GzipRecipe } from '../gzmember';
import { BytesCodec, defineCodec, InnerChooser } from './types';
import { decodeInnerForm, innerEntry, ofSize } from './wrapper';

/** Largest decompressed content handled (bigger .gz files take the ordinary path). */
export const GZ_MAX_CONTENT = 64 * 1024 * 1024;

/** src/delta/gzmember.ts (gzip inspection, GNU gzip as a child process), loaded on first use, as ./bsdiff.ts loads its container. */
const gzmember = (): typeof import('../gzmember') => require('../gzmember') as typeof import('../gzmember');

export const isGzip = (b: Buffer): boolean => b.length >= 18 && b[0] === 0x1f && b[1] === 0x8b && b[2] === 8;

/** The base as the inner codec sees it: decompressed when it is a gzip file we can read, else as is. */
export function innerBase(base: Buffer): Buffer {
  if (!isGzip(base) || gzmember().gzipHeaderLength(base) < 0) return base;
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
function encodeGzMember(base: Buffer, target: Buffer, inner: InnerChooser): { data: Buffer; usesBase: boolean } | undefined {
  if (!isGzip(target)) return undefined;
  const { encodeRecipe, inspectGzip } = gzmember();
  const m = inspectGzip(target, GZ_MAX_CONTENT);
  if (typeof m === 'string') return undefined;
  const recipe = encodeRecipe(m);
  if (recipe.length > 255) return undefined;
  const chosen = inner(base.length ? innerBase(base) : Buffer.alloc(0), m.content);
  const entry = innerEntry(Buffer.concat([Buffer.from([recipe.length]), recipe]), chosen);
  // Verify what we store: it must give back this recipe and this content. inspectGzip has just
  // rebuilt the file from them byte for byte, so they rebuild it (without running gzip again).
  const back = decodeGzParts(base, entry.data, (p) => (p === chosen.codec.proto ? chosen.codec : undefined));
  const r = back.recipe;
  if (r.level !== m.level || r.engine !== m.engine || !r.header.equals(m.header) || !back.content.equals(m.content)) {
    throw corrupt('gzip member does not rebuild to the original bytes');
  }
  return entry;
}

/** The recipe and the decompressed content stored in a GZIP_MEMBER entry. */
function decodeGzParts(base: Buffer | null, stored: Buffer, codecOf: (proto: number) => BytesCodec | undefined): { recipe: GzipRecipe; content: Buffer } {
  if (stored.length < 2) throw corrupt('gzip member: truncated');
  const rlen = stored[0];
  if (stored.length < 2 + rlen) throw corrupt('gzip member: truncated recipe');
  const recipe = gzmember().decodeRecipe(stored.subarray(1, 1 + rlen));
  // The inner frame or patch names the content size; it is bounded by GZ_MAX_CONTENT.
  const content = decodeInnerForm(stored, 1 + rlen, base, innerBase, codecOf, GZ_MAX_CONTENT, 'gzip member');
  return { recipe, content };
}

/** Rebuild the .gz file from stored bytes (and the base region, for inner patches). */
function decodeGzMember(stored: Buffer, base: Buffer | null, expectedSize: number, codecOf: (proto: number) => BytesCodec | undefined): Buffer {
  const { recipe, content } = decodeGzParts(base, stored, codecOf);
  return ofSize(gzmember().rebuildGzip(recipe, content), expectedSize, 'gzip member');
}

/** The gzip-member row of the registry (./registry.ts): tried on whole contents, kept when smaller. */
export const gzipMember = defineCodec(Codec.GZIP_MEMBER, {
  role: 'wrapper',
  encode: encodeGzMember,
  decode: decodeGzMember,
});
