/**
 * gzip files inside layers (Debian's changelogs and man pages, compressed by
 * dh_compress with `gzip -9n`): one changed line reshuffles the whole deflate
 * stream, so a binary patch of the .gz bytes is as large as the file. When the
 * GNU gzip program reproduces the file exactly from its decompressed content,
 * the patch carries the content's delta instead plus the recipe (level and
 * the original header), and apply recompresses it; the content digest is
 * checked on both sides.
 *
 * Only the gzip program is used at this level, not Node's zlib: a file inside
 * a tar cannot fall back to another compression (the tar's diff_id would
 * change), so the recipe must give the same bytes everywhere, and GNU gzip's
 * deflate output has been stable for decades while Node's bundled zlib (a
 * Chromium fork) changes with Node releases.
 *
 * Synchronous (util/process.ts runProgramSync: posix_spawn, no fork), for worker threads.
 */
import * as zlib from 'node:zlib';
import { corrupt } from '../errors';
import { runProgramSync } from '../util/process';
import { gzipHeaderLength } from '../delta/gzmember';
import { gzipProgram } from './recipe';

/** How to recompress a gzip content: `gzip -n -LEVEL`, then the recorded header instead of gzip's. */
export interface GzipContentRecipe {
  level: number;
  /** Original header, base64. */
  header: string;
}

/** Largest decompressed content handled (bytes). */
export const GZ_MAX_INNER = 256 * 1024 * 1024;

/** Whether bytes start like a gzip file. */
export const looksGzip = (b: Buffer): boolean => b.length >= 18 && b[0] === 0x1f && b[1] === 0x8b && b[2] === 8;

/**
 * Decompress a single-member gzip file (bounded); undefined when it is not
 * one (bad header, several members, trailing data, too large).
 */
export function inflateSingle(b: Buffer, max = GZ_MAX_INNER): Buffer | undefined {
  const hlen = gzipHeaderLength(b);
  if (hlen < 0) return undefined;
  const declared = b.readUInt32LE(b.length - 4);
  if (declared > max) return undefined;
  try {
    const r = zlib.inflateRawSync(b.subarray(hlen, b.length - 8), { maxOutputLength: Math.max(1, max), info: true }) as unknown as {
      buffer: Buffer;
      engine: { bytesWritten: number };
    };
    if (r.engine.bytesWritten !== b.length - 8 - hlen) return undefined;
    const inner = r.buffer;
    if (inner.length % 2 ** 32 !== declared || (zlib.crc32(inner) >>> 0) !== b.readUInt32LE(b.length - 8)) return undefined;
    return inner;
  } catch {
    return undefined;
  }
}

/** `gzip -c -n -LEVEL` of `inner`; undefined when the program is missing or fails. */
function gzipOf(inner: Buffer, level: number): Buffer | undefined {
  const r = runProgramSync('gzip', ['-c', '-n', `-${level}`], inner, inner.length + (inner.length >> 3) + 1024 * 1024);
  if (!r || r.status !== 0 || r.stdout.length < 18 || r.stdout[3] !== 0) return undefined;
  return r.stdout;
}

/** Levels tried, dh_compress's first. */
const LEVELS = [9, 6, 1, 2, 3, 4, 5, 7, 8];

/**
 * Find the gzip level that reproduces `file` from its content, or undefined.
 * Returns the content too.
 */
export function gzipRecipeOf(file: Buffer): { recipe: GzipContentRecipe; inner: Buffer } | undefined {
  if (!looksGzip(file) || !gzipProgram()) return undefined;
  const inner = inflateSingle(file);
  if (!inner) return undefined;
  const hlen = gzipHeaderLength(file);
  const body = file.subarray(hlen);
  for (const level of LEVELS) {
    const out = gzipOf(inner, level);
    if (out && out.length - 10 === body.length && out.subarray(10).equals(body)) {
      return { recipe: { level, header: file.subarray(0, hlen).toString('base64') }, inner };
    }
  }
  return undefined;
}

/** Recompress a content with its recipe (the caller checks the digest). */
export function gzipWithRecipe(inner: Buffer, recipe: GzipContentRecipe): Buffer {
  if (!Number.isInteger(recipe.level) || recipe.level < 1 || recipe.level > 9) throw corrupt('gzip content recipe: bad level');
  const header = Buffer.from(recipe.header, 'base64');
  if (gzipHeaderLength(Buffer.concat([header, Buffer.alloc(8)])) !== header.length) throw corrupt('gzip content recipe: bad header');
  if (!gzipProgram()) throw corrupt('this patch recompresses gzip files inside layers with the gzip program, which is not installed');
  const out = gzipOf(inner, recipe.level);
  if (!out) throw corrupt(`gzip -${recipe.level} failed`);
  return Buffer.concat([header, out.subarray(10)]);
}
