/**
 * Binary delta codecs of d4fs (DESIGN.md, decision 4).
 *
 * Three encodings of a file's content (or of one chunk of it):
 *
 *  - `zstd`       one self-contained zstd frame (content size + checksum flags on).
 *  - `zstd-patch` one zstd frame compressed with the base content as a raw-content
 *                 dictionary, a window covering base + target and long-distance
 *                 matching: what `zstd --patch-from=BASE` produces.
 *  - `bsdiff`     bsdiff's control, diff and extra streams, computed by d4fs's own
 *                 native encoder (`native/bsdiff-sa`: libdivsufsort suffix array and a
 *                 bsdiff-style scan, run in the calling worker thread with a deadline;
 *                 bsdiff-node is the fallback when the addon cannot load), packed by
 *                 d4fs into a small container (v2, {@link BSDIFF2_CONTAINER_MAGIC}: the
 *                 control stream as columns, the diff stream coded by a context-mixing
 *                 coder that predicts it from the base, or split into zero runs and
 *                 literals; v1, {@link BSDIFF_CONTAINER_MAGIC}, three zstd frames, still
 *                 decodes) and applied by a bounds-checked TypeScript bspatch. Applying
 *                 therefore needs no native code, no temporary files and no bzip2, and a
 *                 hostile patch cannot make it allocate more than `expectedSize` plus the
 *                 patch's own streams (each bounded by `expectedSize`) and fixed-size model
 *                 tables, or run longer than linear time (bsdiff-node's C bspatch leaks
 *                 descriptors and memory on every corrupt patch and spins on bzip2 bombs).
 *
 * Everything here is synchronous and self-contained so that it can run inside a
 * worker thread (piscina). Decoding never allocates more than the caller-supplied
 * `expectedSize` (plus the patch's own declared, bounded stream sizes), refuses any
 * frame or patch whose declared size differs, and reports damage as a `CORRUPT`
 * {@link D4fsError}; it never returns wrong bytes without an error (zstd checksums and
 * exact-size checks; callers still verify the sha256 of every materialised file, as
 * decision 3 requires).
 *
 * Measurements and the reasoning behind {@link chooseBest}'s `auto` rule and the
 * recommended chunk size are in `src/delta/CODECS.md`.
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { brotliCompressSync, brotliDecompressSync, constants as zlibConstants, crc32 } from 'node:zlib';
import { constants as bufferConstants } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import * as zstd from 'zstd-napi/binding';
import { D4fsError, corrupt, invalidArgument } from '../errors';
import { cmbDecodeDiff, cmbEncodeDiff, cmDecodeDiff, cmEncodeDiff, oldUnderDiff } from './bsdiffcm';

// ---------------------------------------------------------------------------
// Public types and constants
// ---------------------------------------------------------------------------

/** How an entry's bytes are encoded. */
export type CodecId = 'zstd' | 'zstd-patch' | 'bsdiff';

/** The codecs that need a base. */
export type PatchCodecId = Exclude<CodecId, 'zstd'>;

/** Effort presets of {@link chooseBest}. */
export type LevelPreset = 'fast' | 'default' | 'best';

/** Options of {@link chooseBest}. */
export interface ChooseOptions extends PatchOptions {
  /**
   * `auto`: choose patch codecs by content kind and size (see CODECS.md);
   * `bsdiff`: try bsdiff (falls back to zstd-patch above {@link BSDIFF_MAX_INPUT});
   * `zstd`: try zstd-patch only. The full zstd frame is always a candidate.
   */
  codec: 'auto' | 'bsdiff' | 'zstd';
  /** Effort; `best` tries both patch codecs. */
  level: LevelPreset;
  /** Kind of the whole content when `target` is one chunk of it (a later chunk of an ELF file has no magic). */
  kind?: ContentKind;
}

/** An encoded entry: the codec and its payload. */
export interface Encoded {
  codec: CodecId;
  data: Buffer;
}

/** zstd compression level used for each preset (full frames, zstd-patch and bsdiff streams). */
export const LEVELS: Readonly<Record<LevelPreset, number>> = Object.freeze({ fast: 3, default: 12, best: 19 });

/**
 * Highest zstd level used. Levels 20-22 ("ultra") raise windowLog and chainLog to
 * 27 and need over 1 GiB of encoder memory on large inputs; they are clamped.
 */
export const ZSTD_MAX_LEVEL = 19;

/** Lowest zstd level used (negative "fast" levels are clamped). */
export const ZSTD_MIN_LEVEL = 1;

/**
 * Largest base or target (bytes) that is ever given to bsdiff. The native encoder
 * needs base + 4 x base (int32 suffix array) + 2 x target (diff and extra streams) +
 * the control stream, ~8x at this size; bsdiff-node's qsufsort ~17x and it calls exit(1)
 * if malloc fails. Callers split larger files into chunks (see {@link RECOMMENDED_CHUNK_SIZE}).
 */
export const BSDIFF_MAX_INPUT = 16 * 1024 * 1024;

/**
 * Largest zstd window used by zstd-patch (2^27 = 128 MiB, the default maximum every
 * zstd decoder accepts). When base + target exceed it the encoder still works, but
 * the beginning of the base is out of reach; chunk large files instead.
 */
export const ZSTD_PATCH_MAX_WINDOW_LOG = 27;

/**
 * Chunk size recommended to callers that split large files (bytes). Chosen from the
 * measurements in CODECS.md: patch size grows only a few percent from 16 MiB to
 * 4 MiB chunks while bsdiff memory (17x) and a read's materialisation cost shrink
 * proportionally; below 1 MiB the per-chunk overhead and lost cross-chunk matches grow.
 */
export const RECOMMENDED_CHUNK_SIZE = 4 * 1024 * 1024;

/**
 * Base range to patch chunk [chunkOffset, chunkOffset + chunkLength) of a target
 * against: 2 x chunkLength of the base centred on the same relative offset, clipped to
 * the base (the whole base when it is smaller). Measured as good as the whole base for
 * both codecs from 1 MiB chunks up (CODECS.md), and it lets a reader materialise only the
 * base chunks under the range. Record the range in the patch entry; do not recompute it.
 */
export function chunkBaseRange(baseSize: number, targetSize: number, chunkOffset: number, chunkLength: number): { start: number; end: number } {
  const want = 2 * chunkLength;
  if (baseSize <= want) return { start: 0, end: baseSize };
  const center = Math.round(((chunkOffset + chunkLength / 2) * baseSize) / Math.max(1, targetSize));
  const start = Math.min(baseSize - want, Math.max(0, center - chunkLength));
  return { start, end: start + want };
}

/**
 * Magic of d4fs's bsdiff container, version 1 (written until container v2,
 * {@link BSDIFF2_CONTAINER_MAGIC}; still decoded). Layout, little-endian:
 *
 * ```
 *  0  8  "D4BSDIF1"
 *  8  8  size of the target (u64, < 2^53)
 * 16  4  length of the control frame (u32)
 * 20  4  length of the diff frame (u32)
 * 24  4  CRC-32 (zlib's) of the target
 * 28  .  control frame | diff frame | extra frame (rest of the patch)
 * ```
 *
 * The CRC makes a patch applied to the wrong base, or a self-consistent but wrong
 * patch, fail instead of producing wrong bytes (zstd-patch has the same property
 * through the frame checksum).
 *
 * Each frame is one zstd frame (content size and checksum present). The control
 * stream is BSDIFF40's: triples of 8-byte sign-magnitude integers (x, y, z) meaning
 * "add x bytes of diff to x bytes of base, copy y bytes of extra, seek the base by z".
 */
export const BSDIFF_CONTAINER_MAGIC = 'D4BSDIF1';

const BSDIFF_HEADER_SIZE = 28;
const ZSTD_FRAME_MAGIC = 0xfd2fb528;
const ZSTD_DICT_MAGIC = 0xec30a437;
/** `ZSTD_c_forceAttachDict` (ZSTD_c_experimentalParam4) in zstd 1.4.x-1.5.x. */
const ZSTD_C_FORCE_ATTACH_DICT = 1001;
/** `ZSTD_dictForceLoad`: load the dictionary content into the working context, so LDM sees it. */
const ZSTD_DICT_FORCE_LOAD = 3;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

function clampLevel(level: number): number {
  if (!Number.isFinite(level)) throw invalidArgument(`invalid zstd level ${level}`);
  return Math.min(ZSTD_MAX_LEVEL, Math.max(ZSTD_MIN_LEVEL, Math.round(level)));
}

function checkExpectedSize(expectedSize: number): void {
  if (!Number.isSafeInteger(expectedSize) || expectedSize < 0 || expectedSize > bufferConstants.MAX_LENGTH) {
    throw invalidArgument(`invalid expected size ${expectedSize}`);
  }
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Make a Buffer view of any Uint8Array without copying. */
function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

// ---------------------------------------------------------------------------
// zstd primitives
// ---------------------------------------------------------------------------

/** Supported zstd versions for the experimental `forceAttachDict` parameter (1.4.5 - 1.5.x). */
const FORCE_LOAD_SUPPORTED = zstd.versionNumber() >= 10405 && zstd.versionNumber() < 10600;

let cachedDctx: zstd.DCtx | undefined;

/** One decompression context per thread (it is small and stateless between calls). */
function dctx(): zstd.DCtx {
  if (!cachedDctx) {
    cachedDctx = new zstd.DCtx();
    // Patches may use windows up to 2^27; single-pass decoding does not allocate the window.
    cachedDctx.setParameter(zstd.DParameter.windowLogMax, ZSTD_PATCH_MAX_WINDOW_LOG);
  }
  return cachedDctx;
}

let cachedCctx: zstd.CCtx | undefined;

/**
 * One compression context per thread, reused. zstd-napi frees native contexts in
 * N-API finalizers, which Node runs only when the event loop turns: creating a context
 * per call inside one long synchronous task (a worker diffing many chunks) grew a
 * benchmark to 19 GB RSS. A reused context keeps its workspace sized for the largest
 * recent job (zstd shrinks it after ~128 smaller uses) and is reset after every call,
 * which frees the dictionary copy and the CDict built from it.
 */
function cctx(): zstd.CCtx {
  if (!cachedCctx) cachedCctx = new zstd.CCtx();
  return cachedCctx;
}

/**
 * Drop this thread's cached zstd contexts (call when a worker goes idle after big
 * jobs; the memory is returned once the event loop runs their finalizers).
 */
export function releaseCodecMemory(): void {
  cachedCctx = undefined;
  cachedDctx = undefined;
}

/** Compress one frame (optionally against a raw-content dictionary) with the per-thread context. */
function zstdCompress(data: Uint8Array, level: number, dict?: Uint8Array): Buffer {
  const c = cctx();
  const P = zstd.CParameter;
  c.reset(zstd.ResetDirective.sessionAndParameters);
  try {
    c.setParameter(P.compressionLevel, clampLevel(level));
    c.setParameter(P.contentSizeFlag, 1);
    c.setParameter(P.checksumFlag, 1);
    c.setParameter(P.dictIDFlag, 0);
    c.setParameter(P.nbWorkers, 0);
    if (dict && dict.length > 0) {
      const need = Math.ceil(Math.log2(dict.length + data.length + 1));
      c.setParameter(P.windowLog, Math.min(ZSTD_PATCH_MAX_WINDOW_LOG, Math.max(10, need)));
      c.setParameter(P.enableLongDistanceMatching, 1);
      // Without this zstd attaches or copies a CDict built for the dictionary, which
      // long-distance matching does not search: measured 1.94 MB instead of 656 KB at
      // level 3 on libcrypto.so.3 (CODECS.md). Only affects the encoder.
      if (FORCE_LOAD_SUPPORTED) c.setParameter(ZSTD_C_FORCE_ATTACH_DICT as zstd.CParameter, ZSTD_DICT_FORCE_LOAD);
      c.loadDictionary(dict);
    }
    const dst = Buffer.allocUnsafe(zstd.compressBound(data.length));
    const n = c.compress2(dst, data);
    return Buffer.from(dst.subarray(0, n)); // copy: do not pin the oversized buffer
  } finally {
    c.reset(zstd.ResetDirective.sessionAndParameters);
  }
}

/**
 * Check that `frame` is exactly one zstd frame that declares `expectedSize` bytes of
 * content and carries a checksum, without decoding it. Throws CORRUPT otherwise.
 */
function checkZstdFrame(frame: Uint8Array, expectedSize: number, what: string): void {
  if (frame.length < 9 || asBuffer(frame).readUInt32LE(0) !== ZSTD_FRAME_MAGIC) {
    throw corrupt(`${what}: not a zstd frame`);
  }
  const fhd = frame[4];
  if ((fhd & 0x04) === 0) throw corrupt(`${what}: zstd frame without checksum`);
  if ((fhd & 0x03) !== 0) throw corrupt(`${what}: zstd frame names a dictionary id`);
  // Bit 4 is "unused" (decoders ignore it, encoders write 0) and bit 3 reserved: refusing
  // them keeps accepted frames canonical, so any altered byte is detected.
  if ((fhd & 0x18) !== 0) throw corrupt(`${what}: zstd frame header has reserved bits set`);
  let declared: number | null;
  let frameLen: number;
  try {
    declared = zstd.getFrameContentSize(frame);
    frameLen = zstd.findFrameCompressedSize(frame);
  } catch (e) {
    throw corrupt(`${what}: damaged zstd frame: ${describe(e)}`, e);
  }
  if (declared === null) throw corrupt(`${what}: zstd frame without content size`);
  if (declared !== expectedSize) {
    throw corrupt(`${what}: zstd frame declares ${declared} bytes, expected ${expectedSize}`);
  }
  if (frameLen !== frame.length) throw corrupt(`${what}: ${frame.length - frameLen} bytes after the zstd frame`);
}

/** Decode a checked frame into exactly `expectedSize` bytes. */
function zstdDecompressChecked(frame: Uint8Array, expectedSize: number, what: string, dict?: Uint8Array): Buffer {
  checkZstdFrame(frame, expectedSize, what);
  const out = Buffer.allocUnsafe(expectedSize);
  let n: number;
  try {
    n = dict && dict.length > 0 ? dctx().decompressUsingDict(out, frame, dict) : dctx().decompress(out, frame);
  } catch (e) {
    throw corrupt(`${what}: ${describe(e)}`, e);
  }
  if (n !== expectedSize) throw corrupt(`${what}: decoded ${n} bytes, expected ${expectedSize}`);
  return out;
}

/**
 * The dictionary zstd-patch uses for `base`: the base itself, minus any leading
 * copies of zstd's dictionary magic (a dictionary that starts with it would be parsed
 * as a trained dictionary instead of raw content, on both sides), and nothing at all
 * when fewer than 8 bytes remain (zstd ignores such dictionaries when encoding).
 */
function patchDictionary(base: Buffer): Buffer {
  let off = 0;
  while (base.length - off >= 4 && base.readUInt32LE(off) === ZSTD_DICT_MAGIC) off += 4;
  return base.length - off < 8 ? Buffer.alloc(0) : base.subarray(off);
}

/**
 * Compress `data` into one deterministic zstd frame with the content size and a
 * checksum. `level` is clamped to [{@link ZSTD_MIN_LEVEL}, {@link ZSTD_MAX_LEVEL}].
 */
export function compressFull(data: Buffer, level: number): Buffer {
  return zstdCompress(data, level);
}

/**
 * Decompress a frame made by {@link compressFull}. Throws CORRUPT unless the input is
 * exactly one zstd frame with a checksum, whose declared content size is
 * `expectedSize` and whose content decodes to that size with a matching checksum.
 * Allocates exactly `expectedSize` bytes for the output (the declared size is checked
 * before any allocation; `expectedSize` itself must be bounded by the caller).
 */
export function decompressFull(frame: Buffer, expectedSize: number): Buffer {
  checkExpectedSize(expectedSize);
  return zstdDecompressChecked(frame, expectedSize, 'zstd');
}

// ---------------------------------------------------------------------------
// bzip2 decoder (only used to re-pack bsdiff-node's own output; see the header)
// ---------------------------------------------------------------------------

/** Big-endian bit reader over a byte array. */
class BitReader {
  private pos = 0;
  private acc = 0;
  private nbits = 0;
  constructor(private readonly buf: Uint8Array) {}

  /** Read `n` (1..24) bits, most significant first. */
  bits(n: number): number {
    while (this.nbits < n) {
      if (this.pos >= this.buf.length) throw corrupt('bzip2: unexpected end of stream');
      this.acc = ((this.acc << 8) | this.buf[this.pos++]) >>> 0;
      this.nbits += 8;
    }
    this.nbits -= n;
    const v = (this.acc >>> this.nbits) & ((1 << n) - 1);
    this.acc &= (1 << this.nbits) - 1;
    return v;
  }

  bit(): number {
    return this.bits(1);
  }
}

/** bzip2's CRC-32 (polynomial 0x04c11db7, most significant bit first). */
const BZ_CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 24;
    for (let k = 0; k < 8; k++) c = c & 0x80000000 ? (c << 1) ^ 0x04c11db7 : c << 1;
    t[i] = c >>> 0;
  }
  return t;
})();

function bzCrc(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = ((crc << 8) ^ BZ_CRC_TABLE[((crc >>> 24) ^ data[i]) & 0xff]) >>> 0;
  return ~crc >>> 0;
}

/** Canonical Huffman table as bzip2 assigns codes: by length, then by symbol. */
interface HuffTable {
  count: Uint16Array; // codes per length 0..20
  symbols: Uint16Array; // symbols sorted by (length, symbol)
}

function buildHuffTable(lengths: Uint8Array): HuffTable {
  const count = new Uint16Array(21);
  for (const l of lengths) count[l]++;
  const offs = new Uint16Array(22);
  for (let l = 1; l <= 20; l++) offs[l + 1] = offs[l] + count[l];
  const symbols = new Uint16Array(lengths.length);
  for (let s = 0; s < lengths.length; s++) symbols[offs[lengths[s]]++] = s;
  return { count, symbols };
}

function decodeSymbol(br: BitReader, t: HuffTable): number {
  let code = 0;
  let first = 0;
  let index = 0;
  for (let len = 1; len <= 20; len++) {
    code |= br.bit();
    const c = t.count[len];
    if (code - first < c) return t.symbols[index + code - first];
    index += c;
    first = (first + c) << 1;
    code <<= 1;
  }
  throw corrupt('bzip2: invalid Huffman code');
}

/** Decode one bzip2 block (after its magic and CRC) into the BWT-inverted, RLE1-decoded bytes. */
function bzDecodeBlock(br: BitReader, maxBlock: number, tt: Uint32Array, block: Uint8Array): Buffer {
  if (br.bit()) throw corrupt('bzip2: randomised blocks are not supported');
  const origPtr = br.bits(24);
  const used = br.bits(16);
  const seqToUnseq = new Uint8Array(256);
  let nInUse = 0;
  for (let i = 0; i < 16; i++) {
    if (used & (0x8000 >>> i)) {
      const w = br.bits(16);
      for (let j = 0; j < 16; j++) if (w & (0x8000 >>> j)) seqToUnseq[nInUse++] = i * 16 + j;
    }
  }
  if (nInUse === 0) throw corrupt('bzip2: empty symbol map');
  const alphaSize = nInUse + 2;
  const nGroups = br.bits(3);
  if (nGroups < 2 || nGroups > 6) throw corrupt('bzip2: bad number of Huffman groups');
  const nSelectors = br.bits(15);
  if (nSelectors < 1) throw corrupt('bzip2: no selectors');
  const groupMtf = [0, 1, 2, 3, 4, 5].slice(0, nGroups);
  const selectors = new Uint8Array(nSelectors);
  for (let i = 0; i < nSelectors; i++) {
    let j = 0;
    while (br.bit()) if (++j >= nGroups) throw corrupt('bzip2: bad selector');
    const g = groupMtf[j];
    groupMtf.splice(j, 1);
    groupMtf.unshift(g);
    selectors[i] = g;
  }
  const tables: HuffTable[] = [];
  for (let g = 0; g < nGroups; g++) {
    const lengths = new Uint8Array(alphaSize);
    let len = br.bits(5);
    for (let s = 0; s < alphaSize; s++) {
      for (;;) {
        if (len < 1 || len > 20) throw corrupt('bzip2: bad code length');
        if (!br.bit()) break;
        len += br.bit() ? -1 : 1;
      }
      lengths[s] = len;
    }
    tables.push(buildHuffTable(lengths));
  }

  // Huffman -> RUNA/RUNB + move-to-front -> the BWT's last column.
  const eob = nInUse + 1;
  const mtf = new Uint8Array(256);
  for (let i = 0; i < 256; i++) mtf[i] = i;
  const counts = new Uint32Array(256);
  let n = 0;
  let left = 0;
  let sel = 0;
  let table = tables[0];
  let run = 0;
  let runWeight = 1;
  for (;;) {
    if (left === 0) {
      if (sel >= nSelectors) throw corrupt('bzip2: ran out of selectors');
      table = tables[selectors[sel++]];
      left = 50;
    }
    left--;
    const sym = decodeSymbol(br, table);
    if (sym <= 1) {
      run += runWeight * (sym + 1);
      runWeight *= 2;
      if (run > maxBlock) throw corrupt('bzip2: run exceeds block size');
      continue;
    }
    if (run > 0) {
      if (n + run > maxBlock) throw corrupt('bzip2: block too large');
      const b = seqToUnseq[mtf[0]];
      block.fill(b, n, n + run);
      counts[b] += run;
      n += run;
      run = 0;
      runWeight = 1;
    }
    if (sym === eob) break;
    const idx = sym - 1;
    if (idx >= nInUse) throw corrupt('bzip2: bad symbol');
    const v = mtf[idx];
    mtf.copyWithin(1, 0, idx);
    mtf[0] = v;
    if (n >= maxBlock) throw corrupt('bzip2: block too large');
    const b = seqToUnseq[v];
    block[n++] = b;
    counts[b]++;
  }
  if (origPtr >= n) throw corrupt('bzip2: bad BWT origin');

  // Inverse Burrows-Wheeler transform: tt[j] is the row that follows row j.
  let sum = 0;
  const start = new Uint32Array(256);
  for (let b = 0; b < 256; b++) {
    start[b] = sum;
    sum += counts[b];
  }
  for (let i = 0; i < n; i++) tt[start[block[i]]++] = i;

  // Walk the rows and undo the initial run-length encoding (4 equal bytes + count) in two passes.
  const walk = new Uint8Array(n);
  let pos = tt[origPtr];
  for (let k = 0; k < n; k++) {
    walk[k] = block[pos];
    pos = tt[pos];
  }
  let outLen = 0;
  for (let k = 0, last = -1, same = 0; k < n; k++) {
    const b = walk[k];
    if (same === 4) {
      outLen += b;
      same = 0;
      last = -1;
      continue;
    }
    outLen++;
    if (b === last) same++;
    else {
      last = b;
      same = 1;
    }
  }
  const out = Buffer.allocUnsafe(outLen);
  let o = 0;
  for (let k = 0, last = -1, same = 0; k < n; k++) {
    const b = walk[k];
    if (same === 4) {
      out.fill(last, o, o + b);
      o += b;
      same = 0;
      last = -1;
      continue;
    }
    out[o++] = b;
    if (b === last) same++;
    else {
      last = b;
      same = 1;
    }
  }
  return out;
}

/**
 * Decode one complete bzip2 stream (block CRCs and stream CRC checked), refusing
 * more than `maxOut` bytes of output.
 */
function bunzip2(src: Uint8Array, maxOut: number): Buffer {
  if (src.length < 4 || src[0] !== 0x42 || src[1] !== 0x5a || src[2] !== 0x68) throw corrupt('bzip2: bad magic');
  const blockLevel = src[3] - 0x30;
  if (blockLevel < 1 || blockLevel > 9) throw corrupt('bzip2: bad block size');
  const maxBlock = blockLevel * 100000;
  const br = new BitReader(src.subarray(4));
  const tt = new Uint32Array(maxBlock);
  const block = new Uint8Array(maxBlock);
  const parts: Buffer[] = [];
  let total = 0;
  let combined = 0;
  for (;;) {
    const m1 = br.bits(24);
    const m2 = br.bits(24);
    const crc = ((br.bits(16) << 16) | br.bits(16)) >>> 0;
    if (m1 === 0x314159 && m2 === 0x265359) {
      const out = bzDecodeBlock(br, maxBlock, tt, block);
      if (bzCrc(out) !== crc) throw corrupt('bzip2: block CRC mismatch');
      combined = (((combined << 1) | (combined >>> 31)) ^ crc) >>> 0;
      total += out.length;
      if (total > maxOut) throw corrupt('bzip2: stream larger than allowed');
      parts.push(out);
    } else if (m1 === 0x177245 && m2 === 0x385090) {
      if (crc !== combined) throw corrupt('bzip2: stream CRC mismatch');
      return Buffer.concat(parts, total);
    } else {
      throw corrupt('bzip2: bad block magic');
    }
  }
}

// ---------------------------------------------------------------------------
// bsdiff
// ---------------------------------------------------------------------------

interface BsdiffNode {
  diffSync(oldFile: string, newFile: string, patchFile: string): void;
  patchSync(oldFile: string, newFile: string, patchFile: string): void;
}

let bsdiffModule: BsdiffNode | undefined;

/** bsdiff-node, loaded on first use (decoding never needs it). */
function bsdiffNode(): BsdiffNode {
  if (!bsdiffModule) bsdiffModule = require('bsdiff-node') as BsdiffNode;
  return bsdiffModule;
}

/** Read BSDIFF40's 8-byte sign-magnitude integer; refuses magnitudes >= 2^48. */
function readOfft(buf: Buffer, off: number): number {
  const hi = buf.readUInt16LE(off + 6);
  if ((hi & 0x7fff) !== 0) throw corrupt('bsdiff: integer out of range');
  const v = buf.readUIntLE(off, 6);
  return hi & 0x8000 ? -v : v;
}

/**
 * bsdiff-node only (the fallback engine; the native encoder always runs in the calling
 * thread and checks its own deadline, and its longest-match search skips the prefix
 * already known to match, so periodic input is not quadratic for it: 4 MiB of
 * "aaaa..."/"abab..." in ~50 ms). Inputs up to this size (bytes, base and target each)
 * are diffed inside the calling thread; larger ones in a child process that is killed
 * at its deadline. bsdiff's
 * match search is quadratic on long periodic runs (measured: 0.35 s at 256 KiB,
 * 5.5 s at 1 MiB, 140 s at 4 MiB of "aaaa..."/"abab..."), and bsdiff-node calls
 * exit(1) when malloc fails: a child contains both.
 */
export const BSDIFF_INPROCESS_MAX = 256 * 1024;

/**
 * Deadline (ms) for one bsdiff run (native encoder, or bsdiff-node's child process):
 * 5 s plus 1 s per MiB of base + target. Normal inputs need about 0.15 s per MiB with
 * the native encoder (its slowest case, unrelated random data, ~0.5-1 s per MiB of
 * target), so this only stops pathological ones.
 */
export function bsdiffDeadlineMs(baseLength: number, targetLength: number): number {
  return 5000 + Math.ceil((baseLength + targetLength) / (1024 * 1024)) * 1000;
}

/** Script run by the bsdiff child: argv = [node, module, old, new, patch]. */
const BSDIFF_CHILD_SCRIPT = 'require(process.argv[1]).diffSync(process.argv[2], process.argv[3], process.argv[4])';

/**
 * Run bsdiff-node on two buffers (it only works on files: a private directory under
 * os.tmpdir() is created and always removed) and return its BSDIFF40 patch verbatim.
 * Large inputs run in a child process with {@link bsdiffDeadlineMs}; exceeding it
 * throws DEADLINE_EXCEEDED.
 * @internal exported for the benchmark and tests.
 */
export function bsdiffNodeRaw(base: Buffer, target: Buffer, opts: PatchOptions = {}): Buffer {
  const deadlineMs = opts.bsdiffDeadlineMs;
  if (base.length > BSDIFF_MAX_INPUT || target.length > BSDIFF_MAX_INPUT) {
    throw invalidArgument(`bsdiff input above ${BSDIFF_MAX_INPUT} bytes (base ${base.length}, target ${target.length}): chunk it`);
  }
  const dir = fs.mkdtempSync(path.join(opts.tmpDir ?? os.tmpdir(), 'd4fs-bsdiff-'));
  try {
    const oldFile = path.join(dir, 'old');
    const newFile = path.join(dir, 'new');
    const patchFile = path.join(dir, 'patch');
    fs.writeFileSync(oldFile, base, { mode: 0o600 });
    fs.writeFileSync(newFile, target, { mode: 0o600 });
    if (deadlineMs === undefined && base.length <= BSDIFF_INPROCESS_MAX && target.length <= BSDIFF_INPROCESS_MAX) {
      bsdiffNode().diffSync(oldFile, newFile, patchFile);
    } else {
      const timeout = deadlineMs ?? bsdiffDeadlineMs(base.length, target.length);
      const r = spawnSync(process.execPath, ['-e', BSDIFF_CHILD_SCRIPT, require.resolve('bsdiff-node'), oldFile, newFile, patchFile], {
        timeout,
        killSignal: 'SIGKILL',
        stdio: ['ignore', 'ignore', 'pipe'],
        maxBuffer: 64 * 1024,
      });
      if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') {
        throw new D4fsError('DEADLINE_EXCEEDED', `bsdiff exceeded its ${timeout} ms deadline (base ${base.length}, target ${target.length} bytes)`);
      }
      if (r.error || r.status !== 0) {
        const why = r.error ? describe(r.error) : r.signal ? `signal ${r.signal}` : `exit ${r.status}: ${String(r.stderr).trim().slice(0, 500)}`;
        throw new D4fsError('INTERNAL', `bsdiff failed: ${why}`);
      }
    }
    return fs.readFileSync(patchFile);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The three streams of a BSDIFF40 patch, decompressed. */
interface BsdiffStreams {
  newSize: number;
  ctrl: Buffer;
  diff: Buffer;
  extra: Buffer;
}

/** Split bsdiff-node's BSDIFF40 output into its decompressed streams. */
function parseBsdiff40(raw: Buffer): BsdiffStreams {
  if (raw.length < 32 || raw.toString('latin1', 0, 8) !== 'BSDIFF40') throw corrupt('bsdiff: not a BSDIFF40 patch');
  const ctrlLen = readOfft(raw, 8);
  const diffLen = readOfft(raw, 16);
  const newSize = readOfft(raw, 24);
  if (ctrlLen < 0 || diffLen < 0 || newSize < 0 || 32 + ctrlLen + diffLen > raw.length) {
    throw corrupt('bsdiff: bad BSDIFF40 header');
  }
  const ctrl = bunzip2(raw.subarray(32, 32 + ctrlLen), 24 * (newSize + 2));
  const diff = bunzip2(raw.subarray(32 + ctrlLen, 32 + ctrlLen + diffLen), newSize);
  const extra = bunzip2(raw.subarray(32 + ctrlLen + diffLen), newSize);
  return { newSize, ctrl, diff, extra };
}

/**
 * zstd level of the bsdiff streams for a requested level. The diff stream is mostly
 * zeros with sparse small values, where low levels lose badly (libcrypto.so.3: 276 K at
 * level 3, 225 K at 12, 192 K at 19, bsdiff-node's bzip2 199 K). Container v2 splits the
 * diff stream into zero runs and literals first, which level 19 packs faster than level
 * 17 packs the whole stream (esbuild: 0.27 s vs 0.61 s) and smaller (364 K vs 394 K).
 */
export const BSDIFF_STREAM_MIN_LEVEL = 19;

/** Level of bsdiff's streams for `best` (also tries brotli on every section). */
export const BSDIFF_STREAM_BEST_LEVEL = 19;

// --- the native encoder (native/bsdiff-sa) ----------------------------------

/** The `bsdiff-sa` addon (native/bsdiff-sa): libdivsufsort + a bsdiff-style scan, streams uncompressed. */
interface BsdiffSa {
  diff(oldData: Uint8Array, newData: Uint8Array, opts?: { deadlineMs?: number; minGain?: number; threads?: number }): { ctrl: Buffer; diff: Buffer; extra: Buffer };
  /** bspatch's loop in C (absent from addons built before it) */
  bsApply?(diff: Uint8Array, extra: Uint8Array, xs: Float64Array, ys: Float64Array, zs: Float64Array, base: Uint8Array, size: number): Buffer;
  version: string;
}

let bsdiffSaState: BsdiffSa | null | undefined;
let bsdiffSaError = '';

/**
 * The native encoder, or null when it cannot be loaded (not built on this machine):
 * then bsdiff-node computes the same kind of streams, slower (see {@link bsdiffEngine}).
 */
export function bsdiffSa(): BsdiffSa | null {
  if (bsdiffSaState === undefined) {
    try {
      bsdiffSaState = require('bsdiff-sa') as BsdiffSa;
    } catch (e) {
      bsdiffSaState = null;
      bsdiffSaError = describe(e);
    }
  }
  return bsdiffSaState;
}

/** Which encoder makes bsdiff streams here, and why bsdiff-node if it is the fallback. */
export function bsdiffEngine(): { engine: 'bsdiff-sa' | 'bsdiff-node'; detail: string } {
  const sa = bsdiffSa();
  return sa ? { engine: 'bsdiff-sa', detail: sa.version } : { engine: 'bsdiff-node', detail: `bsdiff-sa not loadable: ${bsdiffSaError}` };
}

/**
 * Threads the native encoder scans one target with by default: the machine's, up to 4. The
 * scan's output does not depend on it (see native/bsdiff-sa), so neither do patches; it
 * lets one large binary, which otherwise sets the pace of a whole diff, use every core.
 */
export function bsdiffThreads(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()));
}

/**
 * BSDIFF40's three uncompressed streams for (base, target). The native encoder runs in
 * the calling thread: it never exits the process, reports out-of-memory as an error,
 * and stops itself at the deadline ({@link bsdiffDeadlineMs} unless
 * `opts.bsdiffDeadlineMs`), which then throws DEADLINE_EXCEEDED. With
 * `opts.bsdiffEngine: 'bsdiff-node'` (or when the addon is missing) bsdiff-node runs as
 * before, in a child process for inputs above {@link BSDIFF_INPROCESS_MAX}.
 * @internal exported for tests and the benchmark.
 */
export function bsdiffStreams(base: Buffer, target: Buffer, opts: PatchOptions = {}): BsdiffStreams {
  if (base.length > BSDIFF_MAX_INPUT || target.length > BSDIFF_MAX_INPUT) {
    throw invalidArgument(`bsdiff input above ${BSDIFF_MAX_INPUT} bytes (base ${base.length}, target ${target.length}): chunk it`);
  }
  const sa = opts.bsdiffEngine === 'bsdiff-node' ? null : bsdiffSa();
  if (!sa) {
    const s = parseBsdiff40(bsdiffNodeRaw(base, target, opts));
    if (s.newSize !== target.length) throw new D4fsError('INTERNAL', 'bsdiff: patch size does not match the target');
    return s;
  }
  const deadline = opts.bsdiffDeadlineMs ?? bsdiffDeadlineMs(base.length, target.length);
  try {
    const r = sa.diff(base, target, { deadlineMs: Math.max(1, deadline), threads: opts.bsdiffThreads ?? bsdiffThreads() });
    return { newSize: target.length, ctrl: r.ctrl, diff: r.diff, extra: r.extra };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ETIMEDOUT') {
      throw new D4fsError('DEADLINE_EXCEEDED', `bsdiff exceeded its ${deadline} ms deadline (base ${base.length}, target ${target.length} bytes)`);
    }
    throw new D4fsError('INTERNAL', `bsdiff failed: ${describe(e)}`, { cause: e });
  }
}

// --- container v2 ------------------------------------------------------------

/**
 * Magic of d4fs's bsdiff container, version 2 (what the encoder writes; version 1,
 * {@link BSDIFF_CONTAINER_MAGIC}, stays decodable). Little-endian:
 *
 * ```
 *  0  8  "D4BSDIF2"
 *  8  8  size of the target (u64, < 2^48)
 * 16  4  CRC-32 (zlib's) of the target
 * 20  4  number of control triples (u32)
 * 24 48  four section headers of 12 bytes: method (u8), 0 (u8), raw length (u48), packed length (u32)
 * 72  .  the four packed sections back to back, in this order:
 *        control  the triples as columns: all x, all y (LEB128), all z (zigzag LEB128)
 *        runs     per non-zero byte of the diff stream, the number of zero bytes before it (LEB128)
 *        literals the non-zero bytes of the diff stream
 *        extra    BSDIFF40's extra stream
 * ```
 *
 * Methods: 0 stored, 1 one zstd frame (content size + checksum, checked as full frames
 * are), 2 brotli (decoded with the raw length as hard output limit), 3 (runs section
 * only) the whole diff stream coded by the context-mixing coder of `bsdiffcm.ts`, which
 * predicts it from the base bytes under it; its raw length is the diff stream's length and
 * the literals section is then empty and stored; 4 (runs section only) which bytes of the
 * diff stream are non-zero, coded by the block model of `bsdiffcm.ts` (`cmbEncodeDiff`:
 * segment table, then independent segments of at most 2 MiB of diff), its raw length the
 * diff stream's; the literals section then holds the non-zero bytes as with split streams.
 * Every raw length is bounded by the target size before anything is allocated (see
 * {@link bsdiffApply}).
 */
export const BSDIFF2_CONTAINER_MAGIC = 'D4BSDIF2';

const BSDIFF2_HEADER_SIZE = 72;
const SECTION_NAMES = ['control', 'runs', 'literals', 'extra'] as const;
const enum Method {
  STORED = 0,
  ZSTD = 1,
  BROTLI = 2,
  /** runs section only: the whole diff stream, context-mixing coded against the base (bsdiffcm.ts); literals section empty */
  CM = 3,
  /** runs section only: which diff bytes are non-zero, block-model coded in segments (bsdiffcm.ts, cmb*); literals section as with split streams */
  CMB = 4,
}

/** Methods that code the diff stream's layout in the runs section against the base. */
function isCoded(method: number): boolean {
  return method === Method.CM || method === Method.CMB;
}

/** LEB128 writer into a growing buffer. */
class VarintWriter {
  private buf: Buffer;
  len = 0;
  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(Math.max(16, capacity));
  }
  put(v: number): void {
    if (this.len + 8 > this.buf.length) {
      const b = Buffer.allocUnsafe(this.buf.length * 2);
      this.buf.copy(b, 0, 0, this.len);
      this.buf = b;
    }
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.len++] = v;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

/** LEB128 reader; values must stay below 2^49 (7 bytes). */
class VarintReader {
  pos = 0;
  constructor(private readonly buf: Buffer, private readonly what: string) {}
  get done(): boolean {
    return this.pos >= this.buf.length;
  }
  get(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 7; i++) {
      if (this.pos >= this.buf.length) throw corrupt(`bsdiff ${this.what}: truncated integer`);
      const b = this.buf[this.pos++];
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 0x80;
    }
    throw corrupt(`bsdiff ${this.what}: integer too large`);
  }
}

function brotliPack(raw: Buffer): Buffer {
  return brotliCompressSync(raw, {
    params: {
      [zlibConstants.BROTLI_PARAM_QUALITY]: 11,
      [zlibConstants.BROTLI_PARAM_LGWIN]: 24,
      [zlibConstants.BROTLI_PARAM_SIZE_HINT]: raw.length,
    },
  });
}

/** The smallest of the methods tried for one section. */
function packSection(raw: Buffer, level: number, tryBrotli: boolean): { method: Method; data: Buffer } {
  let best = { method: Method.STORED, data: raw };
  if (raw.length === 0) return best;
  const z = zstdCompress(raw, level);
  if (z.length < best.data.length) best = { method: Method.ZSTD, data: z };
  if (tryBrotli) {
    const b = brotliPack(raw);
    if (b.length < best.data.length) best = { method: Method.BROTLI, data: b };
  }
  return best;
}

function unpackSection(method: number, packed: Buffer, rawLen: number, what: string): Buffer {
  switch (method) {
    case Method.STORED:
      if (packed.length !== rawLen) throw corrupt(`bsdiff ${what}: stored length mismatch`);
      return packed;
    case Method.ZSTD:
      return zstdDecompressChecked(packed, rawLen, `bsdiff ${what} stream`);
    case Method.BROTLI: {
      let out: Buffer;
      try {
        out = brotliDecompressSync(packed, { maxOutputLength: Math.max(1, rawLen) });
      } catch (e) {
        throw corrupt(`bsdiff ${what}: damaged brotli stream: ${describe(e)}`, e);
      }
      if (out.length !== rawLen) throw corrupt(`bsdiff ${what}: brotli stream decodes to ${out.length} bytes, expected ${rawLen}`);
      return out;
    }
    default:
      throw corrupt(`bsdiff ${what}: unknown method ${method}`);
  }
}

/**
 * Diff streams up to this size (bytes) are also packed as split zstd streams and the
 * smaller packing is kept; above it only the context-mixing coder runs (it has always
 * been smaller on executables: esbuild 225 K vs 364 K, libcrypto 113 K vs 172 K).
 */
const BSDIFF_CM_ONLY_ABOVE = 1 << 20;

/**
 * Largest diff stream (bytes) coded with method 3 (the full context-mixing model) at the
 * default levels; at `best` method 3 codes every size. Its decoder costs ~25 ns per diff
 * byte in C on an idle core (~3x that in the TypeScript fallback), paid at the first open
 * of the patched file: 2 MiB adds ~50 ms. Longer diff streams get method 4 (block model
 * of the non-zero positions in segments, decoded on several threads, literals
 * zstd-packed: esbuild's 11.3 MB of diff in ~70 ms on two threads instead of ~300 ms,
 * for diff coding 1.2x the size of method 3's; CODECS.md).
 */
export const BSDIFF_CM_DEFAULT_MAX = 2 << 20;

/** Pack BSDIFF40 streams into container v2. */
function bsdiffPack(s: BsdiffStreams, base: Buffer, target: Buffer, level: number, tryBrotli: boolean, diffCoder: 'split' | 'cm' | 'cmb' = 'cm'): Buffer {
  // 'split': split streams only; 'cm': method 3; 'cmb': method 4
  const coder = diffCoder === 'split' ? null : diffCoder === 'cmb' ? Method.CMB : Method.CM;
  const n = s.ctrl.length / 24;
  const cx = new VarintWriter(n * 2);
  const cy = new VarintWriter(n * 2);
  const cz = new VarintWriter(n * 3);
  const xs = new Float64Array(n);
  const zs = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const x = readOfft(s.ctrl, i * 24);
    cx.put(x);
    cy.put(readOfft(s.ctrl, i * 24 + 8));
    const z = readOfft(s.ctrl, i * 24 + 16);
    cz.put(z < 0 ? -2 * z - 1 : 2 * z);
    xs[i] = x;
    zs[i] = z;
  }
  const control = Buffer.concat([cx.bytes(), cy.bytes(), cz.bytes()]);
  const d = s.diff;
  let nz = 0;
  for (let i = 0; i < d.length; i++) if (d[i] !== 0) nz++;
  const runs = new VarintWriter(nz + 16);
  const lits = Buffer.allocUnsafe(nz);
  let last = 0;
  for (let i = 0, k = 0; i < d.length; i++) {
    if (d[i] !== 0) {
      runs.put(i - last);
      lits[k++] = d[i];
      last = i + 1;
    }
  }
  const raws = [control, runs.bytes(), lits, s.extra];
  let packed: { method: Method; data: Buffer }[];
  let coded: { method: Method; data: Buffer } | null = null;
  if (coder !== null && d.length > 0) {
    const ou = oldUnderDiff(base, xs, zs, d.length);
    coded = { method: coder, data: coder === Method.CMB ? cmbEncodeDiff(d, ou) : cmEncodeDiff(d, ou) };
  }
  // method 4 keeps the literals section; method 3 codes the literals too
  const cmLits = () => (coder === Method.CMB ? packSection(lits, level, tryBrotli) : { method: Method.STORED, data: Buffer.alloc(0) });
  if (coded && (d.length > BSDIFF_CM_ONLY_ABOVE || tryBrotli)) {
    packed = [packSection(control, level, tryBrotli), coded, cmLits(), packSection(s.extra, level, tryBrotli)];
  } else {
    packed = raws.map((r) => packSection(r, level, tryBrotli));
    if (coded) {
      const l = cmLits();
      if (coded.data.length + l.data.length < packed[1].data.length + packed[2].data.length) {
        packed[1] = coded;
        packed[2] = l;
      }
    }
  }
  if (isCoded(packed[1].method)) {
    raws[1] = d; // raw length of a coded runs section: the diff stream's
    if (packed[1].method === Method.CM) raws[2] = Buffer.alloc(0);
  }
  const header = Buffer.alloc(BSDIFF2_HEADER_SIZE);
  header.write(BSDIFF2_CONTAINER_MAGIC, 0, 'latin1');
  header.writeUIntLE(target.length, 8, 6);
  header.writeUInt32LE(crc32(target), 16);
  header.writeUInt32LE(n, 20);
  packed.forEach((p, i) => {
    const o = 24 + i * 12;
    header[o] = p.method;
    header.writeUIntLE(raws[i].length, o + 2, 6);
    header.writeUInt32LE(p.data.length, o + 8);
  });
  return Buffer.concat([header, ...packed.map((p) => p.data)]);
}

/** Encode with the native encoder (or bsdiff-node) and pack into container v2. */
function bsdiffEncode(base: Buffer, target: Buffer, level: number, opts: PatchOptions): Buffer {
  const s = bsdiffStreams(base, target, opts);
  const best = level >= BSDIFF_STREAM_BEST_LEVEL;
  const coder = best || s.diff.length <= BSDIFF_CM_DEFAULT_MAX ? 'cm' : 'cmb';
  return bsdiffPack(s, base, target, best ? BSDIFF_STREAM_BEST_LEVEL : BSDIFF_STREAM_MIN_LEVEL, best, coder);
}

/** A decoded control stream and the diff/extra streams it consumes. */
interface BsdiffProgram {
  xs: Float64Array;
  ys: Float64Array;
  zs: Float64Array;
  diff: Buffer;
  extra: Buffer;
  crc: number;
}

/** Check the triples against the target size; returns the diff and extra totals. */
function checkTriples(xs: Float64Array, ys: Float64Array, expectedSize: number): { diffTotal: number; extraTotal: number } {
  let diffTotal = 0;
  let extraTotal = 0;
  for (let i = 0; i < xs.length; i++) {
    if (xs[i] < 0 || ys[i] < 0) throw corrupt('bsdiff: negative length in control stream');
    diffTotal += xs[i];
    extraTotal += ys[i];
    if (diffTotal + extraTotal > expectedSize) throw corrupt('bsdiff: control stream exceeds the target size');
  }
  if (diffTotal + extraTotal !== expectedSize) throw corrupt('bsdiff: control stream does not cover the target');
  return { diffTotal, extraTotal };
}

/** Parse container v1 (three zstd frames, BSDIFF40 control triples). */
function parseBsdiffV1(patch: Buffer, expectedSize: number): BsdiffProgram {
  const hi = patch.readUInt16LE(14);
  const newSize = patch.readUIntLE(8, 6);
  if (hi !== 0 || newSize !== expectedSize) {
    throw corrupt(`bsdiff: patch produces ${hi !== 0 ? 'more than 2^48' : newSize} bytes, expected ${expectedSize}`);
  }
  const ctrlLen = patch.readUInt32LE(16);
  const diffLen = patch.readUInt32LE(20);
  if (BSDIFF_HEADER_SIZE + ctrlLen + diffLen > patch.length) throw corrupt('bsdiff: truncated patch');
  const ctrlFrame = patch.subarray(BSDIFF_HEADER_SIZE, BSDIFF_HEADER_SIZE + ctrlLen);
  const diffFrame = patch.subarray(BSDIFF_HEADER_SIZE + ctrlLen, BSDIFF_HEADER_SIZE + ctrlLen + diffLen);
  const extraFrame = patch.subarray(BSDIFF_HEADER_SIZE + ctrlLen + diffLen);

  // Control stream: its declared size is bounded before decoding.
  let ctrlSize: number | null;
  try {
    ctrlSize = zstd.getFrameContentSize(ctrlFrame);
  } catch (e) {
    throw corrupt(`bsdiff control stream: ${describe(e)}`, e);
  }
  if (ctrlSize === null || ctrlSize % 24 !== 0 || ctrlSize > 24 * (expectedSize + 1)) {
    throw corrupt('bsdiff: bad control stream size');
  }
  const ctrl = zstdDecompressChecked(ctrlFrame, ctrlSize, 'bsdiff control stream');
  const nTriples = ctrlSize / 24;
  const xs = new Float64Array(nTriples);
  const ys = new Float64Array(nTriples);
  const zs = new Float64Array(nTriples);
  for (let i = 0; i < nTriples; i++) {
    xs[i] = readOfft(ctrl, i * 24);
    ys[i] = readOfft(ctrl, i * 24 + 8);
    zs[i] = readOfft(ctrl, i * 24 + 16);
  }
  const { diffTotal, extraTotal } = checkTriples(xs, ys, expectedSize);
  const diff = zstdDecompressChecked(diffFrame, diffTotal, 'bsdiff diff stream');
  const extra = zstdDecompressChecked(extraFrame, extraTotal, 'bsdiff extra stream');
  return { xs, ys, zs, diff, extra, crc: patch.readUInt32LE(24) };
}

/** Parse container v2 (see {@link BSDIFF2_CONTAINER_MAGIC}); every length is bounded before allocation. */
function parseBsdiffV2(patch: Buffer, expectedSize: number, base: Buffer): BsdiffProgram {
  if (patch.length < BSDIFF2_HEADER_SIZE) throw corrupt('bsdiff: truncated header');
  const hi = patch.readUInt16LE(14);
  const newSize = patch.readUIntLE(8, 6);
  if (hi !== 0 || newSize !== expectedSize) {
    throw corrupt(`bsdiff: patch produces ${hi !== 0 ? 'more than 2^48' : newSize} bytes, expected ${expectedSize}`);
  }
  const crc = patch.readUInt32LE(16);
  const n = patch.readUInt32LE(20);
  if (n > expectedSize + 1) throw corrupt('bsdiff: too many control triples');
  // Largest raw length each section may declare: 3 varints of <= 7 bytes per triple;
  // one varint per literal; literals and extra within the target.
  const limits = [21 * n, 7 * expectedSize, expectedSize, expectedSize];
  const sections: Buffer[] = [];
  let off = BSDIFF2_HEADER_SIZE;
  let cmRaw = -1;
  let cmMethod = -1;
  let cmPacked: Buffer = Buffer.alloc(0);
  for (let i = 0; i < 4; i++) {
    const h = 24 + i * 12;
    const method = patch[h];
    const rawLen = patch.readUIntLE(h + 2, 6);
    const packedLen = patch.readUInt32LE(h + 8);
    if (patch[h + 1] !== 0) throw corrupt('bsdiff: reserved header byte set');
    if (rawLen > (isCoded(method) ? expectedSize : limits[i])) throw corrupt(`bsdiff: ${SECTION_NAMES[i]} section too large`);
    if (off + packedLen > patch.length) throw corrupt('bsdiff: truncated patch');
    const packed = patch.subarray(off, off + packedLen);
    if (isCoded(method)) {
      if (i !== 1) throw corrupt(`bsdiff: ${SECTION_NAMES[i]} section cannot use the context-mixing coder`);
      cmRaw = rawLen;
      cmMethod = method; // decoded once the control stream (and so the base bytes under the diff) is known
      cmPacked = packed;
      sections.push(Buffer.alloc(0));
    } else {
      sections.push(unpackSection(method, packed, rawLen, SECTION_NAMES[i]));
    }
    off += packedLen;
  }
  if (off !== patch.length) throw corrupt('bsdiff: trailing bytes after the last section');
  const [control, runs, lits, extra] = sections;
  if (cmMethod === Method.CM && (lits.length !== 0 || patch[24 + 2 * 12] !== Method.STORED)) throw corrupt('bsdiff: literals section must be empty with a coded diff stream');

  const xs = new Float64Array(n);
  const ys = new Float64Array(n);
  const zs = new Float64Array(n);
  const cr = new VarintReader(control, 'control');
  for (let i = 0; i < n; i++) xs[i] = cr.get();
  for (let i = 0; i < n; i++) ys[i] = cr.get();
  for (let i = 0; i < n; i++) {
    const v = cr.get();
    zs[i] = v % 2 === 1 ? -(v + 1) / 2 : v / 2;
  }
  if (!cr.done) throw corrupt('bsdiff: trailing bytes in the control section');
  const { diffTotal, extraTotal } = checkTriples(xs, ys, expectedSize);
  if (extra.length !== extraTotal) throw corrupt('bsdiff: extra section does not match the control stream');
  if (cmRaw >= 0) {
    if (cmRaw !== diffTotal) throw corrupt('bsdiff: coded diff stream does not match the control stream');
    const ou = oldUnderDiff(base, xs, zs, diffTotal);
    if (cmMethod === Method.CMB) {
      if (lits.length > diffTotal) throw corrupt('bsdiff: more literals than diff bytes');
      return { xs, ys, zs, diff: cmbDecodeDiff(cmPacked, ou, lits), extra, crc };
    }
    const r = cmDecodeDiff(cmPacked, ou);
    if (r.consumed !== cmPacked.length) throw corrupt('bsdiff: coded diff stream has the wrong length');
    return { xs, ys, zs, diff: r.diff, extra, crc };
  }
  if (lits.length > diffTotal) throw corrupt('bsdiff: more literals than diff bytes');
  const diff = Buffer.alloc(diffTotal);
  const rr = new VarintReader(runs, 'runs');
  let pos = 0;
  for (let k = 0; k < lits.length; k++) {
    pos += rr.get();
    if (pos >= diffTotal) throw corrupt('bsdiff: literal outside the diff stream');
    if (lits[k] === 0) throw corrupt('bsdiff: zero literal');
    diff[pos++] = lits[k];
  }
  if (!rr.done) throw corrupt('bsdiff: trailing bytes in the runs section');
  return { xs, ys, zs, diff, extra, crc };
}

/**
 * Apply a d4fs bsdiff container (v1 or v2). Every length is validated before
 * allocation: the control stream may hold at most expectedSize + 1 triples, diff and
 * extra streams must add up to exactly expectedSize, reads outside the base count as
 * zero bytes (as in bspatch). Time and memory are linear in expectedSize and the patch size.
 */
function bsdiffApply(base: Buffer, patch: Buffer, expectedSize: number): Buffer {
  const magic = patch.length >= 8 ? patch.toString('latin1', 0, 8) : '';
  let p: BsdiffProgram;
  if (magic === BSDIFF2_CONTAINER_MAGIC) p = parseBsdiffV2(patch, expectedSize, base);
  else if (magic === BSDIFF_CONTAINER_MAGIC && patch.length >= BSDIFF_HEADER_SIZE) p = parseBsdiffV1(patch, expectedSize);
  else throw corrupt('bsdiff: not a d4fs bsdiff patch');
  const out = assemble(p, base, expectedSize);
  if (crc32(out) !== p.crc) throw corrupt('bsdiff: result does not match the patch CRC (wrong base or damaged patch)');
  return out;
}

/** Which loop {@link assemble} runs: the addon's when it loads ('auto'), or the TypeScript one (tests compare both). */
let bsdiffApplyEngine: 'auto' | 'typescript' = 'auto';
export function setBsdiffApplyEngine(e: 'auto' | 'typescript'): void {
  bsdiffApplyEngine = e;
}

/**
 * bspatch's loop: the new bytes from a decoded program. In C when the addon has it (the
 * per-byte add over a 10 MiB binary takes ~35 ms in JavaScript, ~2 ms there); the
 * TypeScript loop is the fallback. Both refuse the same damaged programs.
 */
function assemble(p: BsdiffProgram, base: Buffer, expectedSize: number): Buffer {
  const { xs, ys, zs, diff, extra } = p;
  const nat = bsdiffApplyEngine === 'auto' ? bsdiffSa() : null;
  if (nat?.bsApply) {
    try {
      return nat.bsApply(diff, extra, xs, ys, zs, base, expectedSize);
    } catch (e) {
      if ((e as { code?: string }).code === 'ECORRUPT') throw corrupt((e as Error).message);
      throw e;
    }
  }
  const nTriples = xs.length;
  const out = Buffer.allocUnsafe(expectedSize);
  let newPos = 0;
  let oldPos = 0;
  let diffPos = 0;
  let extraPos = 0;
  const oldLen = base.length;
  for (let i = 0; i < nTriples; i++) {
    const x = xs[i];
    const y = ys[i];
    // out = diff + old over [lo, hi), diff alone where the base has no bytes.
    diff.copy(out, newPos, diffPos, diffPos + x);
    const lo = Math.min(x, Math.max(0, -oldPos));
    const hi = Math.max(lo, Math.min(x, oldLen - oldPos));
    for (let k = lo; k < hi; k++) out[newPos + k] = out[newPos + k] + base[oldPos + k];
    newPos += x;
    diffPos += x;
    oldPos += x;
    extra.copy(out, newPos, extraPos, extraPos + y);
    newPos += y;
    extraPos += y;
    oldPos += zs[i];
    // Keep oldPos exact (|oldPos| < 2^53): anything that far out is simply outside the base.
    if (!Number.isSafeInteger(oldPos) || Math.abs(oldPos) > 2 ** 52) throw corrupt('bsdiff: seek out of range');
  }
  return out;
}

// ---------------------------------------------------------------------------
// Patches
// ---------------------------------------------------------------------------

/** Extra knobs of {@link encodePatch} and {@link chooseBest}. */
export interface PatchOptions {
  /**
   * Deadline for one bsdiff run (ms). When set, bsdiff always runs in a child process
   * that is killed at the deadline; default {@link bsdiffDeadlineMs} for inputs above
   * {@link BSDIFF_INPROCESS_MAX}.
   */
  bsdiffDeadlineMs?: number;
  /**
   * Directory for bsdiff's temporary files (bsdiff-node only works on files; up to
   * base + target + patch bytes, removed before returning). Default os.tmpdir().
   */
  tmpDir?: string;
  /**
   * Which encoder computes bsdiff's streams: the native `bsdiff-sa` addon (default when
   * it loads) or `bsdiff-node` (the fallback; also used by tests as a cross-check).
   */
  bsdiffEngine?: 'bsdiff-sa' | 'bsdiff-node';
  /** Threads of the native encoder's scan (default {@link bsdiffThreads}); the patch is the same for any count. */
  bsdiffThreads?: number;
}

/**
 * Encode `target` relative to `base`. `level` is the zstd level (for bsdiff: of its
 * streams, at least {@link BSDIFF_STREAM_MIN_LEVEL}). zstd-patch works on any size (bounded by {@link ZSTD_PATCH_MAX_WINDOW_LOG});
 * bsdiff refuses inputs above {@link BSDIFF_MAX_INPUT} with INVALID_ARGUMENT.
 * Deterministic: the same inputs give the same bytes (with the same dependency versions).
 */
export function encodePatch(base: Buffer, target: Buffer, codec: PatchCodecId, level: number, opts: PatchOptions = {}): Buffer {
  switch (codec) {
    case 'zstd-patch':
      return zstdCompress(target, level, patchDictionary(base));
    case 'bsdiff':
      return bsdiffEncode(base, target, level, opts);
    default:
      throw invalidArgument(`unknown patch codec ${String(codec)}`);
  }
}

/**
 * Apply a patch made by {@link encodePatch} to `base`, producing exactly
 * `expectedSize` bytes or throwing CORRUPT. Never allocates more than expectedSize
 * plus, for bsdiff, the patch's own streams (each bounded by expectedSize).
 */
export function applyPatch(base: Buffer, patch: Buffer, codec: PatchCodecId, expectedSize: number): Buffer {
  checkExpectedSize(expectedSize);
  switch (codec) {
    case 'zstd-patch':
      return zstdDecompressChecked(patch, expectedSize, 'zstd-patch', patchDictionary(base));
    case 'bsdiff':
      return bsdiffApply(base, patch, expectedSize);
    default:
      throw invalidArgument(`unknown patch codec ${String(codec)}`);
  }
}

/**
 * Decode any entry: a full frame (base ignored, may be null) or a patch against `base`.
 */
export function decodeEntry(codec: CodecId, data: Buffer, base: Buffer | null, expectedSize: number): Buffer {
  if (codec === 'zstd') return decompressFull(data, expectedSize);
  if (!base) throw invalidArgument(`${codec} needs a base`);
  return applyPatch(base, data, codec, expectedSize);
}

// ---------------------------------------------------------------------------
// Choosing
// ---------------------------------------------------------------------------

/** Coarse content kinds used by the `auto` rule. */
export type ContentKind = 'executable' | 'text' | 'compressed' | 'binary';

/** Classify content by magic numbers and a sample of its bytes. */
export function contentKind(data: Buffer): ContentKind {
  if (data.length >= 4) {
    const m = data.readUInt32BE(0);
    if (
      m === 0x7f454c46 || // ELF
      m === 0xcffaedfe || m === 0xcefaedfe || m === 0xfeedfacf || m === 0xfeedface || // Mach-O
      m === 0x0061736d || // wasm
      (data[0] === 0x4d && data[1] === 0x5a) // PE / MZ
    ) {
      return 'executable';
    }
    if (
      (data[0] === 0x1f && data[1] === 0x8b) || // gzip
      m === 0x28b52ffd || // zstd
      (m === 0xfd377a58 && data[4] === 0x5a) || // xz
      (data[0] === 0x42 && data[1] === 0x5a && data[2] === 0x68) || // bzip2
      m === 0x504b0304 || // zip, jar, apk
      m === 0x89504e47 || // png
      (data[0] === 0xff && data[1] === 0xd8 && data[2] === 0xff) // jpeg
    ) {
      return 'compressed';
    }
  }
  const sample = data.subarray(0, 65536);
  let odd = 0;
  for (let i = 0; i < sample.length; i++) {
    const c = sample[i];
    if (c === 0) return 'binary';
    if (c < 9 || (c > 13 && c < 32) || c === 127) odd++;
  }
  return odd * 100 <= sample.length ? 'text' : 'binary';
}

/** Result of {@link chooseBest} with the sizes of every candidate, for logs and benchmarks. */
export interface ChosenEncoding extends Encoded {
  /** Size of each candidate that was tried. */
  tried: Partial<Record<CodecId, number>>;
  /** Candidates that were planned but gave up (bsdiff past its deadline), with the reason. */
  skipped: Partial<Record<CodecId, string>>;
}

/**
 * Smallest target (bytes) for which a patch is attempted; below it the frame
 * header overhead dominates and the full frame is as good.
 */
export const MIN_PATCH_TARGET = 64;

/**
 * Relatedness probe: when a level-1 zstd-patch is not at least this fraction smaller
 * than a level-1 full frame, base and target are treated as unrelated (or the target
 * incompressible and unchanged nowhere) and no patch is attempted.
 */
export const RELATED_RATIO = 0.9;

/**
 * bsdiff is tried by `auto` only for executables of at least this size (bytes): it
 * beats zstd-patch by 2-3x on machine code whose addresses shifted, and costs about
 * as much time as zstd level 19; on text zstd-patch is as small and much faster.
 */
export const AUTO_BSDIFF_MIN = 4096;

/** Which patch codecs `chooseBest` tries for these inputs. */
export function patchPlan(base: Buffer, target: Buffer, opts: ChooseOptions): PatchCodecId[] {
  if (base.length === 0 || target.length < MIN_PATCH_TARGET) return [];
  const bsdiffOk = base.length <= BSDIFF_MAX_INPUT && target.length <= BSDIFF_MAX_INPUT;
  if (opts.codec === 'zstd') return ['zstd-patch'];
  if (opts.codec === 'bsdiff') return bsdiffOk ? ['bsdiff'] : ['zstd-patch'];
  if (opts.level === 'best') return bsdiffOk ? ['zstd-patch', 'bsdiff'] : ['zstd-patch'];
  if (opts.level === 'fast') return ['zstd-patch'];
  const kind = opts.kind ?? contentKind(target);
  if (bsdiffOk && kind === 'executable' && target.length >= AUTO_BSDIFF_MIN) return ['bsdiff', 'zstd-patch'];
  return ['zstd-patch'];
}

/** Order of preference on equal size: the entry that needs no base first. */
const TIE_ORDER: Readonly<Record<CodecId, number>> = { zstd: 0, 'zstd-patch': 1, bsdiff: 2 };

/**
 * Encode `target` as the smallest of a full zstd frame and the patches against
 * `base` that {@link patchPlan} selects (see CODECS.md for the rule and the numbers
 * behind it). With `codec: 'auto'` and a level other than `best`, patches are skipped
 * when a cheap probe finds base and target unrelated. The result is verified before it
 * is returned: it is decoded (against `base` for patches) and compared with the
 * target byte for byte; a mismatch throws INTERNAL.
 */
export function chooseBest(base: Buffer, target: Buffer, opts: ChooseOptions): ChosenEncoding {
  const level = LEVELS[opts.level];
  if (level === undefined) throw invalidArgument(`unknown level preset ${String(opts.level)}`);
  let plan = patchPlan(base, target, opts);
  // A cheap level-1 probe: are base and target related at all?
  let full1 = -1;
  if (plan.length > 0 && opts.codec === 'auto' && opts.level !== 'best') {
    full1 = zstdCompress(target, 1).length;
    const patch1 = zstdCompress(target, 1, patchDictionary(base)).length;
    if (patch1 >= RELATED_RATIO * full1) plan = [];
  }
  const candidates: Encoded[] = [];
  const skipped: Partial<Record<CodecId, string>> = {};
  for (const codec of plan) {
    // At `default`, once bsdiff has encoded an executable, zstd-patch is not worth its time
    // (it is about 2x larger on machine code: see CODECS.md).
    if (codec === 'zstd-patch' && opts.level === 'default' && opts.codec === 'auto' && candidates.some((c) => c.codec === 'bsdiff')) continue;
    try {
      candidates.push({ codec, data: encodePatch(base, target, codec, level, opts) });
    } catch (e) {
      // bsdiff can hit its deadline (pathological input) or die in its child process:
      // fall back to zstd-patch rather than failing the whole entry.
      if (codec !== 'bsdiff' || !(e instanceof D4fsError) || (e.kind !== 'DEADLINE_EXCEEDED' && e.kind !== 'INTERNAL')) throw e;
      skipped.bsdiff = e.message;
      if (!plan.includes('zstd-patch')) candidates.push({ codec: 'zstd-patch', data: encodePatch(base, target, 'zstd-patch', level) });
    }
  }
  // The full frame is always a candidate, unless a patch is already far below even a level-1 full frame.
  const bestPatch = Math.min(...candidates.map((c) => c.data.length));
  if (!(full1 > 0 && bestPatch * 4 < full1)) candidates.push({ codec: 'zstd', data: compressFull(target, level) });

  const tried: Partial<Record<CodecId, number>> = {};
  for (const c of candidates) tried[c.codec] = c.data.length;
  candidates.sort((a, b) => a.data.length - b.data.length || TIE_ORDER[a.codec] - TIE_ORDER[b.codec]);
  const best = candidates[0];

  let decoded: Buffer;
  try {
    decoded = decodeEntry(best.codec, best.data, base, target.length);
  } catch (e) {
    throw new D4fsError('INTERNAL', `${best.codec} encoding does not decode: ${describe(e)}`, { cause: e });
  }
  // byte for byte (as strong as comparing digests, and cheaper than hashing both)
  if (!decoded.equals(target)) {
    throw new D4fsError('INTERNAL', `${best.codec} encoding does not reproduce the target`);
  }
  return { codec: best.codec, data: best.data, tried, skipped };
}

/** @internal exported for tests: the bzip2 decoder used to re-pack bsdiff output. */
export const _internal = { bunzip2, parseBsdiff40, patchDictionary, bsdiffPack };
