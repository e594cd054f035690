/**
 * The protobuf wire format of proto/cdimg.proto (Index and Tree), written out by
 * hand for d4fs: loading protobufjs, parsing the schema and generating its coders
 * cost every process ~40-60 ms before the first index is read (and `cdimg merge`
 * is mostly that). Output is byte for byte what protobufjs 7/8 writes for the same
 * objects (proto3: fields at their default value are left out, fields in number
 * order, minimal varints), so image ids and root digests do not change; decoding
 * gives the objects protobufjs's `toObject` gave with d4fs's options (longs and
 * enums as numbers, bytes as Buffers viewing the input, every field present,
 * absent messages as null). Unknown fields are skipped. Malformed input throws
 * (the caller turns it into a CORRUPT error).
 *
 * Tests cross-check both directions against protobufjs on real and made-up indexes
 * (src/format/pb.test.ts).
 */
import type { Blob, Chunk, Entry, ImageInfo, Index, Layer, Xattr } from './types';

const TWO32 = 4294967296;
const TWO63 = 9223372036854775808;
const TWO64 = 18446744073709551616;

// ---------------------------------------------------------------------------
// writing
// ---------------------------------------------------------------------------

/** The protobuf writer (exported for format version 2's column writer, columns-pb.ts). */
export class Writer {
  buf: Buffer;
  pos = 0;
  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(Math.max(64, capacity));
  }
  /** Room for `n` more bytes at `pos` (format/check.ts writes into `buf` directly after it). */
  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.pos + n) cap *= 2;
    const b = Buffer.allocUnsafe(cap);
    this.buf.copy(b, 0, 0, this.pos);
    this.buf = b;
  }
  /** Unsigned varint of a value < 2^32. */
  u32(v: number): void {
    this.reserve(5);
    while (v > 127) {
      this.buf[this.pos++] = (v & 127) | 128;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }
  /** Varint of the 64-bit value hi:lo (two 32-bit unsigned halves). */
  u64(lo: number, hi: number): void {
    if (hi === 0) return this.u32(lo);
    this.reserve(10);
    while (hi > 0 || lo > 127) {
      this.buf[this.pos++] = (lo & 127) | 128;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.buf[this.pos++] = lo;
  }
  bytes(b: Uint8Array): void {
    this.u32(b.length);
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  /** Bytes [start, end) of `src` as a bytes field's length and body (no view of `src` made: format/check.ts writes ~150,000 digests and paths so). */
  bytesFrom(src: Buffer, start: number, end: number): void {
    const n = end - start;
    this.u32(n);
    this.reserve(n);
    // short runs byte by byte: Buffer#copy's argument handling cost more than the copy (~60 ms for 300,000 names and digests)
    if (n <= 64) {
      const b = this.buf;
      let p = this.pos;
      for (let i = start; i < end; i++) b[p++] = src[i];
    } else src.copy(this.buf, this.pos, start, end);
    this.pos += n;
  }
  /** Raw bytes, no length. */
  bytesRaw(b: Uint8Array, n: number): void {
    this.reserve(n);
    this.buf.set(b, this.pos);
    this.pos += n;
  }
  string(s: string): void {
    // protobufjs writes strings of fewer than 40 UTF-16 units with its own UTF-8 encoder, which
    // keeps unpaired surrogates as 3-byte sequences (Buffer would write U+FFFD); longer ones as Buffer does.
    if (s.length < 40 && hasLoneSurrogate(s)) return this.bytes(wtf8(s));
    const n = Buffer.byteLength(s);
    this.u32(n);
    this.reserve(n);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }
  /** Start a length-delimited field (its tag already written); returns the mark for end(). */
  begin(): number {
    this.reserve(1);
    return this.pos++;
  }
  /** Close the field begun at `mark`: write its length there (moving the body when it needs more than one byte). */
  end(mark: number): void {
    const len = this.pos - mark - 1;
    let k = 1;
    for (let v = len; v > 127; v >>>= 7) k++;
    if (k > 1) {
      this.reserve(k - 1);
      this.buf.copyWithin(mark + k, mark + 1, this.pos);
      this.pos += k - 1;
    }
    let v = len;
    let p = mark;
    while (v > 127) {
      this.buf[p++] = (v & 127) | 128;
      v >>>= 7;
    }
    this.buf[p] = v;
  }
  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}

function hasLoneSurrogate(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++;
        continue;
      }
    }
    return true;
  }
  return false;
}

/** UTF-8 with unpaired surrogates encoded like any other code unit (WTF-8). */
function wtf8(s: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Buffer.from(out);
}

// Field writers: each leaves out the proto3 default, as protobufjs does (after its fromObject coercions).

export function wU32(w: Writer, tag: number, v: number | null | undefined): void {
  if (v == null) return;
  const u = v >>> 0;
  if (u === 0) return;
  w.u32(tag);
  w.u32(u);
}

/** int32 (enums): integers in int32 range only; negatives take ten bytes. */
export function wI32(w: Writer, tag: number, v: number | null | undefined): void {
  if (typeof v !== 'number' || v === 0 || (v | 0) !== v) return;
  w.u32(tag);
  if (v >= 0) w.u32(v);
  else w.u64(v >>> 0, 0xffffffff);
}

/** uint64 from a number (Long.fromNumber unsigned: negatives and NaN are 0, fractions truncated, saturating). */
export function wU64(w: Writer, tag: number, v: number | null | undefined): void {
  if (v == null) return;
  const n = Number(v);
  if (!(n >= 1)) return;
  w.u32(tag);
  if (n >= TWO64) return w.u64(0xffffffff, 0xffffffff);
  const t = Math.trunc(n);
  w.u64(t % TWO32 >>> 0, Math.floor(t / TWO32) >>> 0);
}

/** int64 from a number (Long.fromNumber signed: NaN is 0, fractions truncated toward zero, saturating). */
export function wI64(w: Writer, tag: number, v: number | null | undefined): void {
  if (v == null) return;
  const n = Number(v);
  if (Number.isNaN(n) || n === 0) return;
  let lo: number;
  let hi: number;
  if (n <= -TWO63) [lo, hi] = [0, 0x80000000];
  else if (n + 1 >= TWO63) [lo, hi] = [0xffffffff, 0x7fffffff];
  else {
    const t = Math.trunc(Math.abs(n));
    lo = t % TWO32 >>> 0;
    hi = Math.floor(t / TWO32) >>> 0;
    if (n < 0) {
      // two's complement
      lo = (~lo + 1) >>> 0;
      hi = (~hi + (lo === 0 ? 1 : 0)) >>> 0;
    }
  }
  if (lo === 0 && hi === 0) return;
  w.u32(tag);
  w.u64(lo, hi);
}

export function wBytes(w: Writer, tag: number, v: Uint8Array | null | undefined): void {
  if (v == null || v.length === 0) return;
  w.u32(tag);
  w.bytes(v);
}

function wString(w: Writer, tag: number, v: string | null | undefined): void {
  if (v == null) return;
  const s = String(v);
  if (s.length === 0) return;
  w.u32(tag);
  w.string(s);
}

function wMessage<T>(w: Writer, tag: number, v: T | null | undefined, enc: (w: Writer, v: T) => void): void {
  if (v == null) return;
  if (typeof v !== 'object') throw new TypeError(`field ${tag >>> 3}: object expected`);
  w.u32(tag);
  const m = w.begin();
  enc(w, v);
  w.end(m);
}

function wRepeated<T>(w: Writer, tag: number, v: T[] | null | undefined, enc: (w: Writer, v: T) => void): void {
  if (!v) return;
  if (!Array.isArray(v)) throw new TypeError(`field ${tag >>> 3}: array expected`);
  for (const x of v) {
    // protobufjs refuses a null or non-object element of a repeated message field
    if (x === null || typeof x !== 'object') throw new TypeError(`field ${tag >>> 3}: object expected`);
    wMessage(w, tag, x, enc);
  }
}

function encXattr(w: Writer, x: Xattr): void {
  wString(w, 10, x.name);
  wBytes(w, 18, x.value);
}

function encEntry(w: Writer, e: Entry): void {
  wString(w, 10, e.path);
  wI32(w, 16, e.type);
  wU32(w, 24, e.mode);
  wU32(w, 32, e.uid);
  wU32(w, 40, e.gid);
  wI64(w, 48, e.mtimeSec);
  wU32(w, 56, e.mtimeNsec);
  wU64(w, 64, e.size);
  wBytes(w, 74, e.digest);
  wString(w, 82, e.linkTarget);
  wU32(w, 88, e.devMajor);
  wU32(w, 96, e.devMinor);
  wRepeated(w, 106, e.xattrs, encXattr);
  wString(w, 114, e.uname);
  wString(w, 122, e.gname);
}

function encChunk(w: Writer, c: Chunk): void {
  wU64(w, 8, c.offset);
  wU64(w, 16, c.storedSize);
  wBytes(w, 26, c.storedDigest);
  wU64(w, 32, c.rawSize);
  wBytes(w, 42, c.rawDigest);
  wI32(w, 48, c.codec);
  wBytes(w, 58, c.baseDigest);
  wU64(w, 64, c.baseOffset);
  wU64(w, 72, c.baseSize);
}

function encBlob(w: Writer, b: Blob): void {
  wBytes(w, 10, b.digest);
  wU64(w, 16, b.size);
  wI32(w, 24, b.encoding);
  wRepeated(w, 34, b.chunks, encChunk);
}

function encLayer(w: Writer, l: Layer): void {
  wString(w, 10, l.digest);
  wU64(w, 16, l.size);
  wString(w, 26, l.mediaType);
  wString(w, 34, l.diffId);
}

function encImageInfo(w: Writer, i: ImageInfo): void {
  wString(w, 10, i.sourceRef);
  wString(w, 18, i.manifestDigest);
  wString(w, 26, i.configDigest);
  wBytes(w, 34, i.configJson);
  wRepeated(w, 42, i.layers, encLayer);
  wString(w, 50, i.platform);
  wString(w, 58, i.manifestMediaType);
}

/** The Index message, as protobufjs encodes it. */
export function encodeIndexPb(index: Index): Buffer {
  const w = new Writer(64 + (index.entries?.length ?? 0) * 128 + (index.blobs?.length ?? 0) * 128);
  wU32(w, 8, index.formatVersion);
  wI32(w, 16, index.kind);
  wBytes(w, 26, index.imageId);
  wBytes(w, 34, index.parentId);
  wMessage(w, 42, index.image, encImageInfo);
  wRepeated(w, 50, index.entries, encEntry);
  wRepeated(w, 58, index.blobs, encBlob);
  wU32(w, 64, index.chunkSize);
  wMessage(w, 74, index.parentImage, encImageInfo);
  return w.finish();
}

/** The fields of an Index that both format versions write the same way (ids, image information, chunk size). */
export function encodeIndexHeadPb(w: Writer, index: Index): void {
  wU32(w, 8, index.formatVersion);
  wI32(w, 16, index.kind);
  wBytes(w, 26, index.imageId);
  wBytes(w, 34, index.parentId);
  wMessage(w, 42, index.image, encImageInfo);
  wU32(w, 64, index.chunkSize);
  wMessage(w, 74, index.parentImage, encImageInfo);
}

/** The Tree message (what the image id is the sha256 of). */
export function encodeTreePb(entries: Entry[], configJson: Uint8Array): Buffer {
  const w = new Writer(64 + entries.length * 128 + configJson.length);
  wRepeated(w, 10, entries, encEntry);
  wBytes(w, 18, configJson);
  return w.finish();
}

// ---------------------------------------------------------------------------
// reading
// ---------------------------------------------------------------------------

const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// The decoder is a set of flat loops over one cursor (buf, pos) — no objects or closures per field —
// because an index is decoded once per process, mostly before V8 has optimised anything.
let buf: Buffer = Buffer.alloc(0);
let pos = 0;
/** Absent and empty bytes fields share one zero-length Buffer (nothing can be written into it). */
const EMPTY = Buffer.alloc(0);

function truncated(): never {
  throw new RangeError('truncated field');
}

/** A varint's low 32 bits (unsigned); the rest of a longer varint is read and dropped. */
function u32(end: number): number {
  if (pos >= end) truncated();
  let c = buf[pos++];
  if (c < 128) return c;
  let v = c & 127;
  let mul = 128;
  for (let i = 1; i < 10; i++) {
    if (pos >= end) truncated();
    c = buf[pos++];
    if (i < 5) {
      v += (c & 127) * mul;
      mul *= 128;
    }
    if (c < 128) return v % TWO32;
  }
  throw new RangeError('varint longer than 10 bytes');
}

let hi32 = 0;
/** A varint's low 32 bits, its high 32 bits left in hi32. */
function lo64(end: number): number {
  let lo = 0;
  let hi = 0;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) truncated();
    const c = buf[pos++];
    const bits = c & 127;
    if (i < 4) lo += bits * 2 ** (7 * i);
    else if (i === 4) {
      lo += (bits & 15) * 2 ** 28;
      hi += bits >>> 4;
    } else hi += bits * 2 ** (7 * i - 32);
    if (c < 128) {
      hi32 = hi % TWO32;
      return lo;
    }
  }
  throw new RangeError('varint longer than 10 bytes');
}

function uint64(end: number): number {
  if (pos < end && buf[pos] < 128) return buf[pos++];
  const lo = lo64(end);
  return hi32 * TWO32 + lo;
}

function int64(end: number): number {
  if (pos < end && buf[pos] < 128) return buf[pos++];
  const lo = lo64(end);
  const hi = hi32;
  if (hi >>> 31) {
    const l = (~lo + 1) >>> 0;
    let h = ~hi >>> 0;
    if (l === 0) h = (h + 1) >>> 0;
    return -(l + h * TWO32);
  }
  return hi * TWO32 + lo;
}

/** Length of a length-delimited field; checks it fits before `end`. */
function len(end: number): number {
  const n = u32(end);
  if (n > end - pos) throw new RangeError(`length ${n} past the end of its message`);
  return n;
}

function bytes(end: number): Buffer {
  const n = len(end);
  if (n === 0) return EMPTY;
  pos += n;
  return buf.subarray(pos - n, pos);
}

/** Strict UTF-8, as protobufjs reads proto3 strings: invalid sequences throw; a BOM is kept. */
function string(end: number): string {
  const n = len(end);
  const s = pos;
  pos += n;
  for (let i = s; i < pos; i++) if (buf[i] >= 0x80) return utf8Strict.decode(buf.subarray(s, pos));
  return (buf as unknown as { latin1Slice(start: number, end: number): string }).latin1Slice(s, pos);
}

function skip(tag: number, end: number, depth = 0): void {
  if (tag >>> 3 === 0) throw new RangeError('field number 0');
  switch (tag & 7) {
    case 0:
      lo64(end);
      return;
    case 1:
      if (end - pos < 8) truncated();
      pos += 8;
      return;
    case 2: {
      const n = len(end); // (not `pos += len(end)`: that would add to pos as it was before len read)
      pos += n;
      return;
    }
    case 3: {
      if (depth > 100) throw new RangeError('groups nested too deep');
      for (;;) {
        const t = u32(end);
        if ((t & 7) === 4) return;
        skip(t, end, depth + 1);
      }
    }
    case 5:
      if (end - pos < 4) truncated();
      pos += 4;
      return;
    default:
      throw new RangeError(`invalid wire type ${tag & 7}`);
  }
}

// Tags below are (field number << 3) | wire type. A known field with another wire type is skipped,
// as protobufjs does.

function decXattr(end: number): Xattr {
  const x: Xattr = { name: '', value: EMPTY };
  while (pos < end) {
    const t = u32(end);
    if (t === 10) x.name = string(end);
    else if (t === 18) x.value = bytes(end);
    else skip(t, end);
  }
  return x;
}

function decEntry(end: number): Entry {
  const x: Entry = { xattrs: [], path: '', type: 0, mode: 0, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, size: 0, digest: EMPTY, linkTarget: '', devMajor: 0, devMinor: 0, uname: '', gname: '' };
  while (pos < end) {
    const t = u32(end);
    switch (t) {
      case 10: x.path = string(end); break;
      case 16: x.type = u32(end) | 0; break;
      case 24: x.mode = u32(end); break;
      case 32: x.uid = u32(end); break;
      case 40: x.gid = u32(end); break;
      case 48: x.mtimeSec = int64(end); break;
      case 56: x.mtimeNsec = u32(end); break;
      case 64: x.size = uint64(end); break;
      case 74: x.digest = bytes(end); break;
      case 82: x.linkTarget = string(end); break;
      case 88: x.devMajor = u32(end); break;
      case 96: x.devMinor = u32(end); break;
      case 106: {
        const n = len(end);
        x.xattrs.push(decXattr(pos + n));
        break;
      }
      case 114: x.uname = string(end); break;
      case 122: x.gname = string(end); break;
      default: skip(t, end);
    }
  }
  return x;
}

function decChunk(end: number): Chunk {
  const x: Chunk = { offset: 0, storedSize: 0, storedDigest: EMPTY, rawSize: 0, rawDigest: EMPTY, codec: 0, baseDigest: EMPTY, baseOffset: 0, baseSize: 0 };
  while (pos < end) {
    const t = u32(end);
    switch (t) {
      case 8: x.offset = uint64(end); break;
      case 16: x.storedSize = uint64(end); break;
      case 26: x.storedDigest = bytes(end); break;
      case 32: x.rawSize = uint64(end); break;
      case 42: x.rawDigest = bytes(end); break;
      case 48: x.codec = u32(end) | 0; break;
      case 58: x.baseDigest = bytes(end); break;
      case 64: x.baseOffset = uint64(end); break;
      case 72: x.baseSize = uint64(end); break;
      default: skip(t, end);
    }
  }
  return x;
}

function decBlob(end: number): Blob {
  const x: Blob = { chunks: [], digest: EMPTY, size: 0, encoding: 0 };
  while (pos < end) {
    const t = u32(end);
    switch (t) {
      case 10: x.digest = bytes(end); break;
      case 16: x.size = uint64(end); break;
      case 24: x.encoding = u32(end) | 0; break;
      case 34: {
        const n = len(end);
        x.chunks.push(decChunk(pos + n));
        break;
      }
      default: skip(t, end);
    }
  }
  return x;
}

function decLayer(end: number): Layer {
  const x: Layer = { digest: '', size: 0, mediaType: '', diffId: '' };
  while (pos < end) {
    const t = u32(end);
    switch (t) {
      case 10: x.digest = string(end); break;
      case 16: x.size = uint64(end); break;
      case 26: x.mediaType = string(end); break;
      case 34: x.diffId = string(end); break;
      default: skip(t, end);
    }
  }
  return x;
}

/** An ImageInfo; a repeated occurrence of the field merges into the earlier one (protobuf's rule). */
function decImageInfo(end: number, into: ImageInfo | null): ImageInfo {
  const x: ImageInfo = into ?? { layers: [], sourceRef: '', manifestDigest: '', configDigest: '', configJson: EMPTY, platform: '', manifestMediaType: '' };
  while (pos < end) {
    const t = u32(end);
    switch (t) {
      case 10: x.sourceRef = string(end); break;
      case 18: x.manifestDigest = string(end); break;
      case 26: x.configDigest = string(end); break;
      case 34: x.configJson = bytes(end); break;
      case 42: {
        const n = len(end);
        x.layers.push(decLayer(pos + n));
        break;
      }
      case 50: x.platform = string(end); break;
      case 58: x.manifestMediaType = string(end); break;
      default: skip(t, end);
    }
  }
  return x;
}

/**
 * Decode an Index message. Throws RangeError on malformed input. With
 * `{ tree: false }` the entries and blobs are skipped (checked to be well
 * formed length-delimited fields, not decoded) and come back empty: for
 * callers that need only the ids and the image information of a file whose
 * index is verified by its digest.
 */
export function decodeIndexPb(input: Buffer, opts: { tree?: boolean } = {}): Index {
  const tree = opts.tree ?? true;
  buf = input;
  pos = 0;
  const end = input.length;
  let image: ImageInfo | null = null;
  let parentImage: ImageInfo | null = null;
  const x: Omit<Index, 'image' | 'parentImage'> = { entries: [], blobs: [], formatVersion: 0, kind: 0, imageId: EMPTY, parentId: EMPTY, chunkSize: 0 };
  try {
    while (pos < end) {
      const t = u32(end);
      switch (t) {
        case 8: x.formatVersion = u32(end); break;
        case 16: x.kind = u32(end) | 0; break;
        case 26: x.imageId = bytes(end); break;
        case 34: x.parentId = bytes(end); break;
        case 42: {
          const n = len(end);
          image = decImageInfo(pos + n, image);
          break;
        }
        case 50: {
          const n = len(end);
          if (tree) x.entries.push(decEntry(pos + n));
          else pos += n;
          break;
        }
        case 58: {
          const n = len(end);
          if (tree) x.blobs.push(decBlob(pos + n));
          else pos += n;
          break;
        }
        case 64: x.chunkSize = u32(end); break;
        case 74: {
          const n = len(end);
          parentImage = decImageInfo(pos + n, parentImage);
          break;
        }
        default: skip(t, end);
      }
    }
  } finally {
    buf = EMPTY;
  }
  return { ...x, image: image as unknown as ImageInfo, parentImage: parentImage as unknown as ImageInfo | undefined };
}
