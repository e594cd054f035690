/**
 * d4fs's bsdiff container, the payload of the bsdiff codec (./bsdiff.ts): version 2 is
 * written ({@link bsdiffPack}), versions 1 and 2 are read ({@link parseBsdiffV1},
 * {@link parseBsdiffV2}) into a checked program for bspatch's loop. The streams come from
 * ./bsdiff-engine.ts; sections are zstd frames (src/format/zstd.ts), brotli, or the
 * context-mixing coders of ./bsdiff-cm.ts. Every length is bounded by the target size
 * before anything is allocated.
 */
import { brotliCompressSync, brotliDecompressSync, constants as zlibConstants, crc32 } from 'node:zlib';
import { corrupt } from '../../errors';
import { zstdCompress, zstdContentSize, zstdDecompressChecked } from '../../format/zstd';
import { cmbDecodeDiff, cmbEncodeDiff, cmDecodeDiff, cmEncodeDiff, oldUnderDiff } from './bsdiff-cm';
import { BsdiffStreams, readOfft } from './bsdiff-engine';
import { describe } from './types';

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

/** Length of container v1's header. */
export const BSDIFF_HEADER_SIZE = 28;

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
 * only) the whole diff stream coded by the context-mixing coder of `bsdiff-cm.ts`, which
 * predicts it from the base bytes under it; its raw length is the diff stream's length and
 * the literals section is then empty and stored; 4 (runs section only) which bytes of the
 * diff stream are non-zero, coded by the block model of `bsdiff-cm.ts` (`cmbEncodeDiff`:
 * segment table, then independent segments of at most 2 MiB of diff), its raw length the
 * diff stream's; the literals section then holds the non-zero bytes as with split streams.
 * Every raw length is bounded by the target size before anything is allocated (see
 * `bsdiffApply` in ./bsdiff.ts).
 */
export const BSDIFF2_CONTAINER_MAGIC = 'D4BSDIF2';

const BSDIFF2_HEADER_SIZE = 72;
const SECTION_NAMES = ['control', 'runs', 'literals', 'extra'] as const;
const enum Method {
  STORED = 0,
  ZSTD = 1,
  BROTLI = 2,
  /** runs section only: the whole diff stream, context-mixing coded against the base (bsdiff-cm.ts); literals section empty */
  CM = 3,
  /** runs section only: which diff bytes are non-zero, block-model coded in segments (bsdiff-cm.ts, cmb*); literals section as with split streams */
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
export function bsdiffPack(s: BsdiffStreams, base: Buffer, target: Buffer, level: number, tryBrotli: boolean, diffCoder: 'split' | 'cm' | 'cmb' = 'cm'): Buffer {
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

/** A decoded control stream and the diff/extra streams it consumes. */
export interface BsdiffProgram {
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
export function parseBsdiffV1(patch: Buffer, expectedSize: number): BsdiffProgram {
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
    ctrlSize = zstdContentSize(ctrlFrame);
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
export function parseBsdiffV2(patch: Buffer, expectedSize: number, base: Buffer): BsdiffProgram {
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
