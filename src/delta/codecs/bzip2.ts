/**
 * A bzip2 decoder, used only to re-pack the BSDIFF40 output of bsdiff-node, the fallback
 * encoder of the bsdiff codec (./bsdiff-engine.ts): its three streams are bzip2. Never on
 * a read path; bounded by the caller's `maxOut`.
 */
import { corrupt } from '../../errors';

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

/** The symbol map of a block: the bytes it uses, in order (seqToUnseq[0..nInUse)). */
function readSymbolMap(br: BitReader): { seqToUnseq: Uint8Array; nInUse: number } {
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
  return { seqToUnseq, nInUse };
}

/** The number of Huffman groups and the block's selectors (which group codes each 50 symbols), move-to-front decoded. */
function readSelectors(br: BitReader): { nGroups: number; selectors: Uint8Array } {
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
  return { nGroups, selectors };
}

/** The Huffman table of each group: code lengths delta-coded from a 5-bit start. */
function readHuffTables(br: BitReader, nGroups: number, alphaSize: number): HuffTable[] {
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
  return tables;
}

/**
 * Huffman -> RUNA/RUNB + move-to-front -> the BWT's last column, written to
 * `block`; returns its length and the count of each byte value in it.
 */
function decodeLastColumn(
  br: BitReader,
  symbols: { seqToUnseq: Uint8Array; nInUse: number },
  huffman: { tables: HuffTable[]; selectors: Uint8Array },
  maxBlock: number,
  block: Uint8Array,
): { n: number; counts: Uint32Array } {
  const { seqToUnseq, nInUse } = symbols;
  const { tables, selectors } = huffman;
  const nSelectors = selectors.length;
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
  return { n, counts };
}

/** Inverse Burrows-Wheeler transform of the last column `block[0..n)`: the rows walked from `origPtr` (tt[j] is the row that follows row j). */
function inverseBwt(block: Uint8Array, n: number, counts: Uint32Array, tt: Uint32Array, origPtr: number): Uint8Array {
  let sum = 0;
  const start = new Uint32Array(256);
  for (let b = 0; b < 256; b++) {
    start[b] = sum;
    sum += counts[b];
  }
  for (let i = 0; i < n; i++) tt[start[block[i]]++] = i;
  const walk = new Uint8Array(n);
  let pos = tt[origPtr];
  for (let k = 0; k < n; k++) {
    walk[k] = block[pos];
    pos = tt[pos];
  }
  return walk;
}

/** Undo the initial run-length encoding (4 equal bytes + count) in two passes: the output's length, then its bytes. */
function undoInitialRle(walk: Uint8Array): Buffer {
  const n = walk.length;
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

/** Decode one bzip2 block (after its magic and CRC) into the BWT-inverted, RLE1-decoded bytes. */
function bzDecodeBlock(br: BitReader, maxBlock: number, tt: Uint32Array, block: Uint8Array): Buffer {
  if (br.bit()) throw corrupt('bzip2: randomised blocks are not supported');
  const origPtr = br.bits(24);
  const symbols = readSymbolMap(br);
  const { nGroups, selectors } = readSelectors(br);
  const tables = readHuffTables(br, nGroups, symbols.nInUse + 2);
  const { n, counts } = decodeLastColumn(br, symbols, { tables, selectors }, maxBlock, block);
  if (origPtr >= n) throw corrupt('bzip2: bad BWT origin');
  return undoInitialRle(inverseBwt(block, n, counts, tt, origPtr));
}

/**
 * Decode one complete bzip2 stream (block CRCs and stream CRC checked), refusing
 * more than `maxOut` bytes of output.
 */
export function bunzip2(src: Uint8Array, maxOut: number): Buffer {
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
