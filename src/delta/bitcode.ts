/**
 * LLVM bitcode as a byte-aligned stream of its values (issue 14 item 3), and back.
 *
 * A bitcode file (clang's `-flto` objects, PostgreSQL's JIT bitcode in
 * lib/bitcode/, Rust's rlibs) is an LLVM bitstream: records of integers packed
 * at any bit position, in fixed-width or variable-width (VBR) fields chosen by
 * abbreviations the stream itself defines. A small change to the module moves
 * every field after it by a few bits, so byte-wise matchers (bsdiff, zstd) find
 * little: postgresql-15's 939 changed `.bc` files cost 0.85x per-file bsdiff in
 * d4fs's delta, 3.1 of its 4.4 MiB. `expandBitcode` reads the stream and writes
 * every value it reads as a LEB128 varint (blobs as their bytes), in order; the
 * block lengths and the padding are left out (they follow from the rest).
 * `rebuildBitcode` writes the stream back from those values. Diffed as expanded
 * forms, a sample of 51 of those files took 0.34x the bytes of the better of
 * bsdiff and zstd-patch 19 on the files themselves (CODECS.md, "LLVM bitcode").
 *
 * Exactness: the stream is rebuilt with the fields the abbreviations name,
 * VBRs in their shortest form and zero padding, as LLVM writes them. A file
 * written otherwise (a longer VBR, non-zero padding, a block length that is not
 * the block's, values past 2^53) does not rebuild to itself: `expandBitcode`
 * rebuilds every stream it expands and returns undefined unless the bytes are
 * the same, and the codec (codecs/llvm-bitcode.ts) then leaves the file to the
 * others.
 *
 * Written here, not taken from a library: no npm package reads the bitstream
 * container without LLVM itself (the format is LLVM's "Bitstream Format"
 * document; names below are its names). The bsdiff-sa addon has the same walk in
 * C (native/bsdiff-sa/src/bitcode.c, 2.5-4x faster), tried first: it gives this
 * walk's bytes or leaves the input to it (expandFormTs, rebuildTs).
 */
import { corrupt } from '../errors';
import { bsdiffSaWith } from './codecs/native';

/** 'BC' 0xC0DE, the bitstream's magic (big-endian bytes 42 43 C0 DE). */
const MAGIC = 0x4243c0de;
/** The wrapper header's magic (little-endian u32), as Darwin's toolchain writes it: magic, version, offset, size, cpu type. */
const WRAPPER_MAGIC = 0x0b17c0de;
/** Version of the expanded form (its first value). */
const FORM_VERSION = 1;
/** Blocks nested deeper than this are not expanded (LLVM nests a handful). */
const MAX_DEPTH = 64;
/** Operands in one abbreviation definition. */
const MAX_ABBREV_OPS = 1024;

const END_BLOCK = 0;
const ENTER_SUBBLOCK = 1;
const DEFINE_ABBREV = 2;
const UNABBREV_RECORD = 3;
const BLOCKINFO_BLOCK = 0;
const SETBID = 1;

const FIXED = 1;
const VBR = 2;
const ARRAY = 3;
const CHAR6 = 4;
/** A CHAR6 operand's width: [a-zA-Z0-9._] as 6 bits (kept as the 6-bit value in the expanded form). */
const CHAR6_BITS = 6;
const BLOB = 5;

/** One operand of an abbreviation: a literal value, or an encoding (with its width for FIXED and VBR). */
interface Op {
  lit?: number;
  enc: number;
  width: number;
}

/** The stream is bitcode but not one this module rebuilds byte for byte (see the module comment). */
class Unsupported extends Error {}

/** True for a file that starts as LLVM bitcode (bare, or in its wrapper header). */
export function isBitcode(b: Buffer): boolean {
  if (b.length >= 8 && b.readUInt32BE(0) === MAGIC) return true;
  return b.length >= 28 && b.readUInt32LE(0) === WRAPPER_MAGIC && b.readUInt32LE(8) + 4 <= b.length && b.readUInt32BE(b.readUInt32LE(8)) === MAGIC;
}

/**
 * Reads fields of at most 32 bits, least significant bit first, from bytes [start, end) of `b`.
 * A field of up to 25 bits is one 32-bit load shifted by the bit offset (most fields: VBR6
 * chunks, abbreviation ids, small fixed fields): ~10x faster than a byte at a time.
 */
class BitReader {
  /** Position in bits from the start of `b`. */
  private pos: number;
  private readonly endBits: number;
  constructor(
    private readonly b: Buffer,
    start: number,
    end: number,
  ) {
    this.pos = start * 8;
    this.endBits = end * 8;
  }
  /** Bits left. */
  left(): number {
    return this.endBits - this.pos;
  }
  /** A field of n bits (0 to 32). */
  fixed(n: number): number {
    if (n > this.endBits - this.pos) throw new Unsupported('the stream ends inside a field');
    if (n > 25) {
      const low = this.fixed(16);
      return low + this.fixed(n - 16) * 65536;
    }
    const b = this.b;
    const i = this.pos >>> 3;
    // bytes past the end read as 0 (undefined | 0); the check above keeps them out of the value
    const word = (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> (this.pos & 7);
    this.pos += n;
    return n === 0 ? 0 : word & ((1 << n) - 1) & 0x7fffffff;
  }
  /** A VBR field of n-bit chunks (n from 2 to 32). */
  vbr(n: number): number {
    const hi = 2 ** (n - 1);
    let v = 0;
    let scale = 1;
    for (;;) {
      const c = this.fixed(n);
      const payload = c >= hi ? c - hi : c;
      v += payload * scale;
      if (v > Number.MAX_SAFE_INTEGER) throw new Unsupported('a value past 2^53');
      if (c < hi) return v;
      scale *= hi;
    }
  }
  /** A field of n bits (0 to 64), exactly: a bigint past 2^53 (an operand: a 64-bit constant, a hash). */
  wideAny(n: number): number | bigint {
    if (n <= 32) return this.fixed(n);
    const low = this.fixed(32);
    const high = this.fixed(n - 32);
    return high < 2 ** 21 ? low + high * 2 ** 32 : (BigInt(high) << 32n) | BigInt(low);
  }
  /** A VBR field of n-bit chunks, exactly: a bigint past 2^53. */
  vbrAny(n: number): number | bigint {
    const hi = n <= 24 ? 1 << (n - 1) : 2 ** (n - 1);
    const c0 = this.fixed(n);
    if (c0 < hi) return c0;
    let v = c0 - hi;
    let scale = hi;
    let big: bigint | undefined;
    for (;;) {
      const c = this.fixed(n);
      const payload = c >= hi ? c - hi : c;
      if (big === undefined && v + payload * scale <= Number.MAX_SAFE_INTEGER) v += payload * scale;
      else big = (big ?? BigInt(v)) + BigInt(payload) * BigInt(scale);
      if (c < hi) return big ?? v;
      scale *= hi;
      if (scale > 2 ** 80) throw new Unsupported('a VBR field of more than 80 bits');
    }
  }
  /** Skips to the next multiple of 32 bits from the stream's start; the skipped bits must be zeros. */
  align32(start: number): void {
    const r = (this.pos - start * 8) % 32;
    if (r !== 0 && this.fixed(32 - r) !== 0) throw new Unsupported('padding that is not zeros');
  }
}

/** LEB128 varints and bytes into a growing buffer. */
class ValueSink {
  private buf: Buffer;
  n = 0;
  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(Math.max(1024, size));
  }
  private room(k: number): void {
    if (this.n + k <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.n + k));
    this.buf.copy(next, 0, 0, this.n);
    this.buf = next;
  }
  v(x: number): void {
    this.room(8);
    while (x >= 128) {
      this.buf[this.n++] = (x % 128) | 128;
      x = Math.floor(x / 128);
    }
    this.buf[this.n++] = x;
  }
  vAny(x: number | bigint): void {
    if (typeof x === 'number') return this.v(x);
    this.room(16);
    while (x >= 128n) {
      this.buf[this.n++] = Number(x & 127n) | 128;
      x >>= 7n;
    }
    this.buf[this.n++] = Number(x);
  }
  bytes(b: Buffer): void {
    this.room(b.length);
    b.copy(this.buf, this.n);
    this.n += b.length;
  }
  out(): Buffer {
    return this.buf.subarray(0, this.n);
  }
}

/** The values of an expanded form, in order; CORRUPT past its end or on a varint that does not end. */
class ValueSource {
  private p = 0;
  constructor(private readonly b: Buffer) {}
  atEnd(): boolean {
    return this.p >= this.b.length;
  }
  v(): number {
    let x = 0;
    let scale = 1;
    for (;;) {
      if (this.p >= this.b.length) throw corrupt('llvm bitcode: the expanded form ends inside a value');
      const c = this.b[this.p++];
      x += (c & 127) * scale;
      if (x > Number.MAX_SAFE_INTEGER) throw corrupt('llvm bitcode: a value past 2^53 in the expanded form');
      if (c < 128) return x;
      scale *= 128;
    }
  }
  /** A value exactly: a bigint past 2^53 (at most 80 bits: what the reader expands). */
  vAny(): number | bigint {
    let x = 0;
    let scale = 1;
    let big: bigint | undefined;
    for (;;) {
      if (this.p >= this.b.length) throw corrupt('llvm bitcode: the expanded form ends inside a value');
      const c = this.b[this.p++];
      if (big === undefined && x + (c & 127) * scale <= Number.MAX_SAFE_INTEGER) x += (c & 127) * scale;
      else big = (big ?? BigInt(x)) + BigInt(c & 127) * BigInt(scale);
      if (c < 128) return big ?? x;
      scale *= 128;
      if (scale > 2 ** 84) throw corrupt('llvm bitcode: a value of more than 84 bits in the expanded form');
    }
  }
  /** A value at most `max` (a width, a count of what follows). */
  small(max: number, what: string): number {
    const x = this.v();
    if (x > max) throw corrupt(`llvm bitcode: ${what} ${x} out of range`);
    return x;
  }
  bytes(n: number): Buffer {
    if (n > this.b.length - this.p) throw corrupt('llvm bitcode: the expanded form ends inside a blob');
    const out = this.b.subarray(this.p, this.p + n);
    this.p += n;
    return out;
  }
}

/**
 * Writes fields least significant bit first into a buffer of `max` bytes (CORRUPT past it).
 * Fields of up to 24 bits go into a 32-bit accumulator with one check each (rebuilding runs
 * on the FUSE read path: ~4x faster than a loop over each field's bytes).
 */
class BitWriter {
  private readonly buf: Buffer;
  private n = 0;
  private cur = 0;
  private bits = 0;
  constructor(private readonly max: number) {
    this.buf = Buffer.allocUnsafe(max + 8);
  }
  /** Bits written so far. */
  pos(): number {
    return this.n * 8 + this.bits;
  }
  /** Value `v` (an integer, 0 <= v < 2^n) in n bits, n from 0 to 32. */
  fixed(n: number, v: number): void {
    if (n > 24) {
      if (!(v >= 0 && v < 2 ** n)) throw corrupt(`llvm bitcode: value ${v} does not fit in ${n} bits`);
      this.fixed(16, v % 65536);
      this.fixed(n - 16, Math.floor(v / 65536));
      return;
    }
    if (!(v >= 0 && v < 1 << n)) throw corrupt(`llvm bitcode: value ${v} does not fit in ${n} bits`);
    // bits < 8 before, so at most 31 bits held
    this.cur = (this.cur | (v << this.bits)) >>> 0;
    this.bits += n;
    if (this.bits < 8) return;
    if (this.n >= this.max + 4) throw corrupt(`llvm bitcode: the rebuilt file is larger than ${this.max} bytes`);
    const buf = this.buf;
    do {
      buf[this.n++] = this.cur & 255;
      this.cur >>>= 8;
      this.bits -= 8;
    } while (this.bits >= 8);
  }
  wide(n: number, v: number): void {
    if (n <= 32) return this.fixed(n, v);
    this.fixed(32, v % 2 ** 32);
    this.fixed(n - 32, Math.floor(v / 2 ** 32));
  }
  vbr(n: number, v: number): void {
    const hi = n <= 24 ? 1 << (n - 1) : 2 ** (n - 1);
    if (v < hi) return this.fixed(n, v);
    if (n <= 24 && v <= 0x7fffffff) {
      // chunks by bit operations while the value fits 31 bits
      const mask = hi - 1;
      let x = v;
      while (x >= hi) {
        this.fixed(n, (x & mask) | hi);
        x >>>= n - 1;
      }
      return this.fixed(n, x);
    }
    let x = v;
    while (x >= hi) {
      this.fixed(n, (x % hi) + hi);
      x = Math.floor(x / hi);
    }
    this.fixed(n, x);
  }
  wideAny(n: number, v: number | bigint): void {
    if (typeof v === 'number') return this.wide(n, v);
    if (n <= 32 || v >= 1n << BigInt(n)) throw corrupt(`llvm bitcode: value ${v} does not fit in ${n} bits`);
    this.fixed(32, Number(v & 0xffffffffn));
    this.fixed(n - 32, Number(v >> 32n));
  }
  vbrAny(n: number, v: number | bigint): void {
    if (typeof v === 'number') return this.vbr(n, v);
    const hi = 1n << BigInt(n - 1);
    let x = v;
    while (x >= hi) {
      this.fixed(n, Number(x % hi + hi));
      x /= hi;
    }
    this.fixed(n, Number(x));
  }
  align32(): void {
    const r = this.pos() % 32;
    if (r !== 0) this.fixed(32 - r, 0);
  }
  /** Overwrites the 32-bit little-endian word at byte `at` (a block length). */
  patch32(at: number, v: number): void {
    this.buf.writeUInt32LE(v, at);
  }
  bytes(b: Buffer): void {
    if (this.bits !== 0) {
      for (const x of b) this.fixed(8, x);
      return;
    }
    if (b.length > this.max - this.n) throw corrupt(`llvm bitcode: the rebuilt file is larger than ${this.max} bytes`);
    b.copy(this.buf, this.n);
    this.n += b.length;
  }
  out(): Buffer {
    if (this.bits) throw corrupt('llvm bitcode: the rebuilt stream does not end on a byte');
    if (this.n > this.max) throw corrupt(`llvm bitcode: the rebuilt file is larger than ${this.max} bytes`);
    return this.buf.subarray(0, this.n);
  }
}

/** The bitstream's extent in `b`: [start, end) after the magic, and the bytes around it. */
function extent(b: Buffer): { start: number; end: number } {
  if (b.readUInt32BE(0) === MAGIC) return { start: 4, end: b.length };
  const offset = b.readUInt32LE(8);
  const size = b.readUInt32LE(12);
  if (offset < 20 || size < 4 || offset + size > b.length || b.readUInt32BE(offset) !== MAGIC) throw new Unsupported('a wrapper header that does not frame the stream');
  return { start: offset + 4, end: offset + size };
}

/**
 * The expanded form of bitcode file `b`, or undefined when `b` is not bitcode or
 * does not rebuild to itself (then nothing is gained by expanding it).
 */
export function expandBitcode(b: Buffer): Buffer | undefined {
  const out = expandBitcodeForm(b);
  if (!out) return undefined;
  let back: Buffer;
  try {
    back = rebuildBitcode(out, b.length);
  } catch {
    return undefined;
  }
  return back.equals(b) ? out : undefined;
}

/**
 * The expanded form of bitcode file `b` without checking that it rebuilds to `b` (what a
 * patch's base is expanded with), or undefined when `b` is not bitcode this module reads.
 */
export function expandBitcodeForm(b: Buffer): Buffer | undefined {
  if (!isBitcode(b)) return undefined;
  // the addon's walk (4x faster) gives these bytes or leaves the file to this one
  const fast = bsdiffSaWith('bcExpand', 'bcRebuild')?.bcExpand(b);
  if (fast) return fast;
  return expandFormTs(b);
}

/** expandBitcodeForm by the TypeScript walk alone (the reference the addon's is tested against). */
export function expandFormTs(b: Buffer): Buffer | undefined {
  if (!isBitcode(b)) return undefined;
  try {
    return expand(b);
  } catch (e) {
    if (e instanceof Unsupported) return undefined;
    throw e;
  }
}

function expand(b: Buffer): Buffer {
  const { start, end } = extent(b);
  const w = new ValueSink(b.length + (b.length >> 3));
  w.v(FORM_VERSION);
  w.v(start);
  w.bytes(b.subarray(0, start));
  w.v(b.length - end);
  w.bytes(b.subarray(end));
  walk(new Expander(new BitReader(b, start, end), w, start));
  return w.out();
}

/**
 * The bitcode file whose expanded form is `form` (see expandBitcode), at most `maxBytes`
 * long. CORRUPT for anything that is not such a form.
 */
export function rebuildBitcode(form: Buffer, maxBytes: number): Buffer {
  // the addon's walk gives these bytes, or leaves the form (a damaged one: the error) to this one
  const fast = bsdiffSaWith('bcExpand', 'bcRebuild')?.bcRebuild(form, maxBytes);
  if (fast) return fast;
  return rebuildTs(form, maxBytes);
}

/** rebuildBitcode by the TypeScript walk alone (the reference the addon's is tested against). */
export function rebuildTs(form: Buffer, maxBytes: number): Buffer {
  const s = new ValueSource(form);
  if (s.v() !== FORM_VERSION) throw corrupt('llvm bitcode: not an expanded form of this version');
  const start = s.small(maxBytes, 'prefix length');
  const prefix = s.bytes(start);
  const suffix = s.bytes(s.small(maxBytes, 'suffix length'));
  if (prefix.length < 4) throw corrupt('llvm bitcode: no magic');
  const w = new BitWriter(maxBytes);
  w.bytes(prefix);
  walk(new Rebuilder(s, w, w.pos()));
  w.bytes(suffix);
  return w.out();
}

/**
 * One side of the walk over a bitstream (walk): every field the stream has is read from one
 * side and written to the other. Expanding reads the bits and writes the values; rebuilding
 * reads the values and writes the bits. The walk is the same both ways, so the two cannot
 * disagree on what the form holds.
 */
interface Transfer {
  /** A field of n bits (at most 32) that steers the walk (ids, codes, counts, widths). */
  fixed(n: number): number;
  /** A VBR field of n-bit chunks that steers the walk (below 2^53). */
  vbr(n: number): number;
  /** An operand of a record: exact (a bigint past 2^53). */
  operand(op: Op): number | bigint;
  /** To the next 32 bits of the stream; the bits between are zeros. */
  align(): void;
  /** The word after ENTER_SUBBLOCK (the block's length): its byte position when writing it. */
  enterLength(): number;
  /** The block that started at `at` ended: its length is known now. */
  exitLength(at: number): void;
  /** A blob of `n` bytes, aligned before and after. */
  blob(n: number): void;
  /** Nothing more at the top level. */
  atEnd(): boolean;
  fail(message: string): never;
}

/** Reads the bitstream, writes the expanded form (Unsupported: the stream is not one this module rebuilds). */
class Expander implements Transfer {
  constructor(
    private readonly r: BitReader,
    private readonly w: ValueSink,
    private readonly start: number,
  ) {}
  fixed(n: number): number {
    const v = this.r.fixed(n);
    this.w.v(v);
    return v;
  }
  vbr(n: number): number {
    const v = this.r.vbr(n);
    this.w.v(v);
    return v;
  }
  operand(op: Op): number | bigint {
    const x = op.enc === FIXED ? this.r.wideAny(op.width) : op.enc === VBR ? this.r.vbrAny(op.width) : this.r.fixed(CHAR6_BITS);
    this.w.vAny(x);
    return x;
  }
  align(): void {
    this.r.align32(this.start);
  }
  enterLength(): number {
    this.r.fixed(32); // rebuilt from the block's content
    return -1;
  }
  exitLength(): void {}
  blob(n: number): void {
    if (n > this.r.left() / 8) this.fail('a blob past the end of the stream');
    this.r.align32(this.start);
    const bytes = Buffer.allocUnsafe(n);
    for (let k = 0; k < n; k++) bytes[k] = this.r.fixed(8);
    this.w.bytes(bytes);
    this.r.align32(this.start);
  }
  atEnd(): boolean {
    return this.r.left() === 0;
  }
  fail(message: string): never {
    throw new Unsupported(message);
  }
}

/** Reads the expanded form, writes the bitstream (CORRUPT: not a form this module wrote). */
class Rebuilder implements Transfer {
  constructor(
    private readonly s: ValueSource,
    private readonly w: BitWriter,
    private readonly base: number,
  ) {}
  fixed(n: number): number {
    const v = this.s.v();
    this.w.fixed(n, v);
    return v;
  }
  vbr(n: number): number {
    const v = this.s.v();
    this.w.vbr(n, v);
    return v;
  }
  operand(op: Op): number | bigint {
    const x = this.s.vAny();
    if (op.enc === FIXED) this.w.wideAny(op.width, x);
    else if (op.enc === VBR) this.w.vbrAny(op.width, x);
    else if (typeof x === 'number') this.w.fixed(CHAR6_BITS, x);
    else this.fail('a char6 value past 63');
    return x;
  }
  align(): void {
    const r = (this.w.pos() - this.base) % 32;
    if (r !== 0) this.w.fixed(32 - r, 0);
  }
  enterLength(): number {
    const at = this.w.pos() / 8;
    this.w.fixed(32, 0);
    return at;
  }
  exitLength(at: number): void {
    this.w.patch32(at, (this.w.pos() / 8 - at - 4) / 4);
  }
  blob(n: number): void {
    this.align();
    this.w.bytes(this.s.bytes(n));
    this.align();
  }
  atEnd(): boolean {
    return this.s.atEnd();
  }
  fail(message: string): never {
    throw corrupt(`llvm bitcode: ${message}`);
  }
}

/** An unabbreviated record's operands: VBR of 6-bit chunks. */
const VBR6: Op = { enc: VBR, width: 6 };

/** The bitstream's structure (LLVM's "Bitstream Format"), walked through `t`. */
function walk(t: Transfer): void {
  const blockInfo = new Map<number, Op[][]>();
  const block = (width: number, id: number, depth: number): void => {
    if (depth > MAX_DEPTH) t.fail('blocks nested too deep');
    // the block's abbreviations: BLOCKINFO's for its id as they are now, then its own (a view, not a
    // copy: a stream of many blocks would otherwise copy BLOCKINFO's list for each)
    const info = blockInfo.get(id) ?? [];
    const infoLen = info.length;
    const abbrevs: Op[][] = [];
    let infoFor = -1;
    for (;;) {
      if (depth === 0 && t.atEnd()) return;
      const code = t.fixed(width);
      if (code === END_BLOCK) {
        if (depth === 0) t.fail('END_BLOCK outside a block');
        t.align();
        return;
      }
      if (code === ENTER_SUBBLOCK) {
        const sub = t.vbr(8);
        const subWidth = t.vbr(4);
        if (subWidth < 2 || subWidth > 32) t.fail('an abbreviation width out of range');
        t.align();
        const at = t.enterLength();
        block(subWidth, sub, depth + 1);
        t.exitLength(at);
        continue;
      }
      if (code === DEFINE_ABBREV) {
        const n = t.vbr(5);
        if (n > MAX_ABBREV_OPS) t.fail('an abbreviation of too many operands');
        const ops: Op[] = [];
        for (let i = 0; i < n; i++) {
          if (t.fixed(1) === 1) {
            ops.push({ lit: t.vbr(8), enc: 0, width: 0 });
            continue;
          }
          const enc = t.fixed(3);
          if (enc < FIXED || enc > BLOB) t.fail('an unknown operand encoding');
          const width = enc === FIXED || enc === VBR ? t.vbr(5) : 0;
          if ((enc === FIXED && width > 64) || (enc === VBR && (width < 2 || width > 32))) t.fail('an operand width out of range');
          // as LLVM reads it, a fixed field of 0 bits is the literal 0 (reads and writes nothing)
          ops.push(enc === FIXED && width === 0 ? { lit: 0, enc, width } : { enc, width });
        }
        checkAbbrev(ops, t);
        if (id === BLOCKINFO_BLOCK) {
          if (infoFor < 0) t.fail('an abbreviation in BLOCKINFO before SETBID');
          const list = blockInfo.get(infoFor) ?? [];
          list.push(ops);
          blockInfo.set(infoFor, list);
        } else abbrevs.push(ops);
        continue;
      }
      // a record: its code and first operand matter in BLOCKINFO (SETBID names the block its abbreviations are for)
      let rc = -1;
      let first = -1;
      if (code === UNABBREV_RECORD) {
        rc = t.vbr(6);
        const n = t.vbr(6);
        for (let i = 0; i < n; i++) {
          const x = t.operand(VBR6);
          if (i === 0) first = typeof x === 'number' ? x : -1;
        }
      } else {
        const ops = code - 4 < infoLen ? info[code - 4] : abbrevs[code - 4 - infoLen];
        if (!ops) t.fail(`abbreviation ${code} is not defined`);
        for (let i = 0, fields = 0; i < ops.length; i++, fields++) {
          const op = ops[i];
          if (op.enc === ARRAY) {
            const n = t.vbr(6);
            const el = ops[++i];
            if (el.lit === undefined) for (let k = 0; k < n; k++) t.operand(el);
          } else if (op.enc === BLOB) {
            t.blob(t.vbr(6));
          } else {
            const x = op.lit ?? t.operand(op);
            const k = typeof x === 'number' ? x : -1;
            if (fields === 0) rc = k;
            else if (fields === 1) first = k;
          }
        }
      }
      if (id === BLOCKINFO_BLOCK && rc === SETBID) infoFor = first;
    }
  };
  block(2, -1, 0);
}

/** An abbreviation's shape as LLVM allows it: an array's element is the operand after it, the last (not an array or a blob); a blob is last. */
function checkAbbrev(ops: Op[], t: Transfer): void {
  for (let i = 0; i < ops.length; i++) {
    const e = ops[i].enc;
    if (e === ARRAY && (i !== ops.length - 2 || ![0, FIXED, VBR, CHAR6].includes(ops[i + 1].enc))) t.fail('an array that is not the last but one operand, or of arrays or blobs');
    if (e === BLOB && i !== ops.length - 1) t.fail('a blob that is not the last operand');
  }
}
