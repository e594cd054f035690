/**
 * Reproducible gzip members: lets the differ patch the *decompressed* content of a
 * `.gz` file (man pages, changelogs) instead of its deflate bytes, where one changed
 * line reshuffles everything after it.
 *
 * A gzip file is "reproducible" when re-compressing its content yields exactly the
 * original deflate stream, with one of two engines:
 *
 *  - `zlib`: Node's zlib, some level 1-9, default strategy, windowBits 15, memLevel 8;
 *  - `gnu`:  GNU gzip's own deflate (`gzip -N -n -c`, run as a child process), which
 *            differs from zlib's: Debian compresses man pages and changelogs with
 *            `gzip -9n` (dh_compress), and measured on 23,208 .gz files zlib reproduces
 *            0.05 % of them while gzip 1.12 reproduces 99.8 % (CODECS.md).
 *
 * The header (mtime, name, OS, ...) is kept verbatim and the trailer is recomputed
 * (CRC-32 and size of the content), so {@link rebuildGzip}({@link GzipRecipe}, content)
 * returns the original file bit for bit. A `gnu` recipe needs the gzip binary on the
 * machine that rebuilds (Essential in Debian); without it rebuilding throws UNSUPPORTED.
 *
 * Synchronous and allocation-bounded, usable in worker threads.
 */

import * as zlib from 'node:zlib';
import { corrupt, invalidArgument, unsupported } from '../errors';
import { runProgramSync } from '../util/process';

/** Which deflate implementation reproduces a member. */
export type GzipEngine = 'zlib' | 'gnu';

/** What is needed besides the decompressed content to rebuild the exact .gz bytes. */
export interface GzipRecipe {
  /** Header bytes verbatim (10 bytes plus optional extra, name, comment, header CRC). */
  header: Buffer;
  /** Compression level (1-9) that reproduces the deflate stream. */
  level: number;
  /** Implementation: Node's zlib (default strategy) or GNU gzip. */
  engine: GzipEngine;
}

/** Options of {@link inspectGzip}. */
export interface InspectOptions {
  /** Also try GNU gzip (child process) when zlib does not reproduce the file. Default true. */
  gnu?: boolean;
}

/** A reproducible gzip file split into recipe and content. */
export interface GzipMember extends GzipRecipe {
  content: Buffer;
}

/** Why a gzip file is not reproducible, for statistics. */
export type GzipRejection = 'not-gzip' | 'multi-member' | 'bad-trailer' | 'too-large' | 'no-level-matches';

/** zlib levels tried, most likely first (dh_compress uses -9; zlib's default is 6). */
const LEVEL_ORDER = [9, 6, 1, 2, 3, 4, 5, 7, 8];

/**
 * The (engine, level) pairs tried on a member, in order: the level the header's XFL names
 * (2: -9, 4: -1) with zlib and then with GNU gzip, before zlib's other levels. Debian's .gz
 * files say XFL 2 and are GNU gzip's: trying zlib's eight other levels first (each a whole
 * deflate of a small file) was half of the time to inspect them (postgresql-15's 239 .gz
 * files: 1.19 s, 2.3 ms of it per file the gzip child process; CODECS.md).
 */
function tryOrder(xfl: number, gnu: boolean): { engine: GzipEngine; level: number }[] {
  const hinted = xfl === 2 ? [9] : xfl === 4 ? [1] : [];
  const out: { engine: GzipEngine; level: number }[] = hinted.map((level) => ({ engine: 'zlib', level }));
  // GNU gzip: the level XFL names, or the levels that leave XFL 0 (-2 to -8), default first
  const gnuLevels = hinted.length ? hinted : [6, 2, 3, 4, 5, 7, 8];
  if (gnu && hinted.length) out.push(...gnuLevels.map((level) => ({ engine: 'gnu' as const, level })));
  out.push(...LEVEL_ORDER.filter((l) => !hinted.includes(l)).map((level) => ({ engine: 'zlib' as const, level })));
  if (gnu && !hinted.length) out.push(...gnuLevels.map((level) => ({ engine: 'gnu' as const, level })));
  return out;
}

/** Length of a gzip header (RFC 1952) at the start of `b`, or -1 when malformed. */
export function gzipHeaderLength(b: Buffer): number {
  if (b.length < 18 || b[0] !== 0x1f || b[1] !== 0x8b || b[2] !== 8) return -1;
  const flg = b[3];
  if (flg & 0xe0) return -1; // reserved bits
  let p = 10;
  if (flg & 0x04) {
    if (p + 2 > b.length) return -1;
    p += 2 + b.readUInt16LE(p);
  }
  for (const bit of [0x08, 0x10]) {
    if (flg & bit) {
      const z = b.indexOf(0, p);
      if (z < 0) return -1;
      p = z + 1;
    }
  }
  if (flg & 0x02) p += 2;
  return p + 8 <= b.length ? p : -1;
}

/**
 * Split a .gz file into recipe and content when zlib reproduces it exactly, or
 * return the reason it does not. Refuses content above `maxContent` bytes (the
 * declared size is checked first and inflation is bounded).
 */
export function inspectGzip(data: Buffer, maxContent: number, opts: InspectOptions = {}): GzipMember | GzipRejection {
  if (!Number.isSafeInteger(maxContent) || maxContent < 0) throw invalidArgument(`invalid maxContent ${maxContent}`);
  const hlen = gzipHeaderLength(data);
  if (hlen < 0) return 'not-gzip';
  const isize = data.readUInt32LE(data.length - 4);
  if (isize > maxContent) return 'too-large';
  const body = data.subarray(hlen, data.length - 8);
  let content: Buffer;
  let consumed: number;
  try {
    // info: true reports how much input the deflate stream used, to detect members after it.
    const r = zlib.inflateRawSync(body, { maxOutputLength: Math.max(1, maxContent), info: true }) as unknown as {
      buffer: Buffer;
      engine: { bytesWritten: number };
    };
    content = r.buffer;
    consumed = r.engine.bytesWritten;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') return 'too-large';
    return 'not-gzip';
  }
  if (consumed !== body.length) return 'multi-member';
  if (content.length !== isize || zlib.crc32(content) !== data.readUInt32LE(data.length - 8)) return 'bad-trailer';
  // GNU gzip is looked for only when a gzip level comes up (a child process to check once per thread)
  let gnu: boolean | undefined;
  for (const { engine, level } of tryOrder(data[8], opts.gnu !== false)) {
    let again: Buffer | null;
    if (engine === 'zlib') {
      if (!zlibHeadMatches(content, body, level)) continue;
      again = zlib.deflateRawSync(content, { level, windowBits: 15, memLevel: 8, strategy: zlib.constants.Z_DEFAULT_STRATEGY });
    } else {
      if (!(gnu ??= gnuGzipAvailable())) continue;
      again = gnuDeflate(content, level);
    }
    if (again && again.equals(body)) return { header: Buffer.from(data.subarray(0, hlen)), level, engine, content };
  }
  return 'no-level-matches';
}

/**
 * A cheap, exact rejection before compressing a large content whole at one zlib level:
 * zlib's output does not depend on how its input is fed, so what it has emitted for a
 * prefix of the content without flushing is a prefix of what it emits for all of it. If
 * that differs from the file's deflate stream, this level cannot reproduce it (GNU gzip's
 * files, nearly all of them, fail within the first block). True when undecided.
 */
function zlibHeadMatches(content: Buffer, body: Buffer, level: number): boolean {
  for (let prefix = 128 * 1024; prefix * 2 <= content.length; prefix *= 4) {
    const head = zlib.deflateRawSync(content.subarray(0, prefix), {
      level,
      windowBits: 15,
      memLevel: 8,
      strategy: zlib.constants.Z_DEFAULT_STRATEGY,
      finishFlush: zlib.constants.Z_NO_FLUSH,
    });
    if (head.length === 0) continue; // no block finished yet: look further
    return head.length <= body.length && head.equals(body.subarray(0, head.length));
  }
  return true;
}

let gnuChecked: boolean | undefined;

/** Is GNU gzip runnable here? (Checked once per thread.) */
export function gnuGzipAvailable(): boolean {
  if (gnuChecked === undefined) {
    const r = runProgramSync('gzip', ['--version'], Buffer.alloc(0), 1 << 16);
    const text = r ? r.stdout.toString('utf8') : '';
    gnuChecked = r !== null && r.status === 0 && /gzip/i.test(text) && !/zlib|pigz|busybox/i.test(text);
  }
  return gnuChecked;
}

/** The raw deflate stream GNU gzip produces for `content` at `level`, or null if gzip failed. */
function gnuDeflate(content: Buffer, level: number): Buffer | null {
  const r = runProgramSync('gzip', [`-${level}`, '-n', '-c'], content, content.length + (content.length >> 3) + 1024 * 1024);
  if (!r || r.status !== 0 || r.stdout.length < 18) return null;
  const out = r.stdout;
  const hlen = gzipHeaderLength(out);
  return hlen < 0 ? null : out.subarray(hlen, out.length - 8);
}

/** Rebuild the original .gz bytes from its recipe and content. */
export function rebuildGzip(recipe: GzipRecipe, content: Buffer): Buffer {
  if (!Number.isInteger(recipe.level) || recipe.level < 1 || recipe.level > 9) throw corrupt(`bad gzip recipe level ${recipe.level}`);
  if (gzipHeaderLength(Buffer.concat([recipe.header, Buffer.alloc(8)])) !== recipe.header.length) throw corrupt('bad gzip recipe header');
  let body: Buffer;
  if (recipe.engine === 'gnu') {
    if (!gnuGzipAvailable()) throw unsupported('rebuilding this .gz file needs GNU gzip, which is not installed');
    const b = gnuDeflate(content, recipe.level);
    if (!b) throw unsupported('GNU gzip failed to compress');
    body = b;
  } else {
    body = zlib.deflateRawSync(content, { level: recipe.level, windowBits: 15, memLevel: 8, strategy: zlib.constants.Z_DEFAULT_STRATEGY });
  }
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(zlib.crc32(content), 0);
  trailer.writeUInt32LE(content.length % 2 ** 32, 4);
  return Buffer.concat([recipe.header, body, trailer]);
}

/**
 * Serialise a recipe compactly: one byte (level 1-9 for zlib, 0x10 + level for GNU
 * gzip), then the header bytes (11 bytes in all for a typical `gzip -n` file).
 */
export function encodeRecipe(recipe: GzipRecipe): Buffer {
  return Buffer.concat([Buffer.from([(recipe.engine === 'gnu' ? 0x10 : 0) | recipe.level]), recipe.header]);
}

/** Parse {@link encodeRecipe}'s output, refusing anything malformed. */
export function decodeRecipe(b: Buffer): GzipRecipe {
  if (b.length < 11) throw corrupt('gzip recipe too short');
  const recipe: GzipRecipe = { level: b[0] & 0x0f, engine: b[0] & 0x10 ? 'gnu' : 'zlib', header: Buffer.from(b.subarray(1)) };
  if ((b[0] & 0xe0) !== 0) throw corrupt(`bad gzip recipe engine byte ${b[0]}`);
  if (recipe.level < 1 || recipe.level > 9) throw corrupt(`bad gzip recipe level ${recipe.level}`);
  if (gzipHeaderLength(Buffer.concat([recipe.header, Buffer.alloc(8)])) !== recipe.header.length) throw corrupt('bad gzip recipe header');
  return recipe;
}
