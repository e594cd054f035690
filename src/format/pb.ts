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

class Writer {
  buf: Buffer;
  pos = 0;
  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(Math.max(64, capacity));
  }
  private reserve(n: number): void {
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

function wU32(w: Writer, tag: number, v: number | null | undefined): void {
  if (v == null) return;
  const u = v >>> 0;
  if (u === 0) return;
  w.u32(tag);
  w.u32(u);
}

/** int32 (enums): integers in int32 range only; negatives take ten bytes. */
function wI32(w: Writer, tag: number, v: number | null | undefined): void {
  if (typeof v !== 'number' || v === 0 || (v | 0) !== v) return;
  w.u32(tag);
  if (v >= 0) w.u32(v);
  else w.u64(v >>> 0, 0xffffffff);
}

/** uint64 from a number (Long.fromNumber unsigned: negatives and NaN are 0, fractions truncated, saturating). */
function wU64(w: Writer, tag: number, v: number | null | undefined): void {
  if (v == null) return;
  const n = Number(v);
  if (!(n >= 1)) return;
  w.u32(tag);
  if (n >= TWO64) return w.u64(0xffffffff, 0xffffffff);
  const t = Math.trunc(n);
  w.u64(t % TWO32 >>> 0, Math.floor(t / TWO32) >>> 0);
}

/** int64 from a number (Long.fromNumber signed: NaN is 0, fractions truncated toward zero, saturating). */
function wI64(w: Writer, tag: number, v: number | null | undefined): void {
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

function wBytes(w: Writer, tag: number, v: Uint8Array | null | undefined): void {
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
  for (const x of v) wMessage(w, tag, x, enc);
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

class Reader {
  pos: number;
  constructor(readonly buf: Buffer, start: number, public end: number) {
    this.pos = start;
  }
  /** A varint's low 32 bits (unsigned); the rest of a longer varint is read and dropped. */
  u32(): number {
    const b = this.buf;
    let v = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (this.pos >= this.end) throw new RangeError('truncated varint');
      const c = b[this.pos++];
      v += (c & 127) * 2 ** shift;
      if (c < 128) return v % TWO32;
    }
    for (let i = 5; i < 10; i++) {
      if (this.pos >= this.end) throw new RangeError('truncated varint');
      if (b[this.pos++] < 128) return v % TWO32;
    }
    throw new RangeError('varint longer than 10 bytes');
  }
  /** A varint as [lo, hi] 32-bit halves. */
  u64(): [number, number] {
    const b = this.buf;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new RangeError('truncated varint');
      const c = b[this.pos++];
      const bits = c & 127;
      if (i < 4) lo += bits * 2 ** (7 * i);
      else if (i === 4) {
        lo += (bits & 15) * 2 ** 28;
        hi += bits >>> 4;
      } else hi += bits * 2 ** (7 * i - 32);
      if (c < 128) return [lo >>> 0, hi % TWO32 >>> 0];
    }
    throw new RangeError('varint longer than 10 bytes');
  }
  uint64(): number {
    const [lo, hi] = this.u64();
    return hi * TWO32 + lo;
  }
  int64(): number {
    const [lo, hi] = this.u64();
    if (hi >>> 31) {
      const l = (~lo + 1) >>> 0;
      let h = ~hi >>> 0;
      if (l === 0) h = (h + 1) >>> 0;
      return -(l + h * TWO32);
    }
    return hi * TWO32 + lo;
  }
  int32(): number {
    return this.u32() | 0;
  }
  /** Bounds of a length-delimited field's body. */
  span(): [number, number] {
    const len = this.u32();
    const start = this.pos;
    if (len > this.end - start) throw new RangeError(`length ${len} past the end of its message`);
    this.pos = start + len;
    return [start, start + len];
  }
  bytes(): Buffer {
    const [s, e] = this.span();
    return s === e ? Buffer.alloc(0) : this.buf.subarray(s, e);
  }
  /** Strict UTF-8, as protobufjs reads proto3 strings: invalid sequences throw; a BOM is kept. */
  string(): string {
    const [s, e] = this.span();
    const b = this.buf;
    for (let i = s; i < e; i++) if (b[i] >= 0x80) return utf8Strict.decode(b.subarray(s, e));
    return b.toString('latin1', s, e);
  }
  skip(wireType: number, depth = 0): void {
    switch (wireType) {
      case 0:
        this.u64();
        return;
      case 1:
        this.advance(8);
        return;
      case 2:
        this.span();
        return;
      case 3: {
        if (depth > 100) throw new RangeError('groups nested too deep');
        for (;;) {
          const t = this.u32();
          if ((t & 7) === 4) return;
          this.skip(t & 7, depth + 1);
        }
      }
      case 5:
        this.advance(4);
        return;
      default:
        throw new RangeError(`invalid wire type ${wireType}`);
    }
  }
  private advance(n: number): void {
    if (this.end - this.pos < n) throw new RangeError('truncated field');
    this.pos += n;
  }
}

/** Decode a message body [start, end) field by field; `field` returns false for fields it does not take. */
function readFields(r: Reader, start: number, end: number, field: (no: number, wt: number) => boolean): void {
  const outer = r.end;
  r.pos = start;
  r.end = end;
  while (r.pos < end) {
    const tag = r.u32();
    const no = tag >>> 3;
    const wt = tag & 7;
    if (no === 0) throw new RangeError('field number 0');
    if (!field(no, wt)) r.skip(wt);
  }
  r.end = outer;
}

function decXattr(r: Reader, s: number, e: number): Xattr {
  const x: Xattr = { name: '', value: Buffer.alloc(0) };
  readFields(r, s, e, (no, wt) => {
    if (no === 1 && wt === 2) x.name = r.string();
    else if (no === 2 && wt === 2) x.value = r.bytes();
    else return false;
    return true;
  });
  return x;
}

function decEntry(r: Reader, s: number, e: number): Entry {
  const x: Entry = { xattrs: [], path: '', type: 0, mode: 0, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, size: 0, digest: Buffer.alloc(0), linkTarget: '', devMajor: 0, devMinor: 0, uname: '', gname: '' };
  readFields(r, s, e, (no, wt) => {
    if (wt === 0) {
      switch (no) {
        case 2: x.type = r.int32(); return true;
        case 3: x.mode = r.u32(); return true;
        case 4: x.uid = r.u32(); return true;
        case 5: x.gid = r.u32(); return true;
        case 6: x.mtimeSec = r.int64(); return true;
        case 7: x.mtimeNsec = r.u32(); return true;
        case 8: x.size = r.uint64(); return true;
        case 11: x.devMajor = r.u32(); return true;
        case 12: x.devMinor = r.u32(); return true;
      }
    } else if (wt === 2) {
      switch (no) {
        case 1: x.path = r.string(); return true;
        case 9: x.digest = r.bytes(); return true;
        case 10: x.linkTarget = r.string(); return true;
        case 13: {
          const [a, b] = r.span();
          const at = r.pos;
          x.xattrs.push(decXattr(r, a, b));
          r.pos = at;
          return true;
        }
        case 14: x.uname = r.string(); return true;
        case 15: x.gname = r.string(); return true;
      }
    }
    return false;
  });
  return x;
}

function decChunk(r: Reader, s: number, e: number): Chunk {
  const x: Chunk = { offset: 0, storedSize: 0, storedDigest: Buffer.alloc(0), rawSize: 0, rawDigest: Buffer.alloc(0), codec: 0, baseDigest: Buffer.alloc(0), baseOffset: 0, baseSize: 0 };
  readFields(r, s, e, (no, wt) => {
    if (wt === 0) {
      switch (no) {
        case 1: x.offset = r.uint64(); return true;
        case 2: x.storedSize = r.uint64(); return true;
        case 4: x.rawSize = r.uint64(); return true;
        case 6: x.codec = r.int32(); return true;
        case 8: x.baseOffset = r.uint64(); return true;
        case 9: x.baseSize = r.uint64(); return true;
      }
    } else if (wt === 2) {
      switch (no) {
        case 3: x.storedDigest = r.bytes(); return true;
        case 5: x.rawDigest = r.bytes(); return true;
        case 7: x.baseDigest = r.bytes(); return true;
      }
    }
    return false;
  });
  return x;
}

function decBlob(r: Reader, s: number, e: number): Blob {
  const x: Blob = { chunks: [], digest: Buffer.alloc(0), size: 0, encoding: 0 };
  readFields(r, s, e, (no, wt) => {
    if (no === 1 && wt === 2) x.digest = r.bytes();
    else if (no === 2 && wt === 0) x.size = r.uint64();
    else if (no === 3 && wt === 0) x.encoding = r.int32();
    else if (no === 4 && wt === 2) {
      const [a, b] = r.span();
      const at = r.pos;
      x.chunks.push(decChunk(r, a, b));
      r.pos = at;
    } else return false;
    return true;
  });
  return x;
}

function decLayer(r: Reader, s: number, e: number): Layer {
  const x: Layer = { digest: '', size: 0, mediaType: '', diffId: '' };
  readFields(r, s, e, (no, wt) => {
    if (no === 1 && wt === 2) x.digest = r.string();
    else if (no === 2 && wt === 0) x.size = r.uint64();
    else if (no === 3 && wt === 2) x.mediaType = r.string();
    else if (no === 4 && wt === 2) x.diffId = r.string();
    else return false;
    return true;
  });
  return x;
}

/** An ImageInfo; a repeated occurrence of the field merges into the earlier one (protobuf's rule). */
function decImageInfo(r: Reader, s: number, e: number, into: ImageInfo | null): ImageInfo {
  const x: ImageInfo = into ?? { layers: [], sourceRef: '', manifestDigest: '', configDigest: '', configJson: Buffer.alloc(0), platform: '', manifestMediaType: '' };
  readFields(r, s, e, (no, wt) => {
    if (wt !== 2) return false;
    switch (no) {
      case 1: x.sourceRef = r.string(); return true;
      case 2: x.manifestDigest = r.string(); return true;
      case 3: x.configDigest = r.string(); return true;
      case 4: x.configJson = r.bytes(); return true;
      case 5: {
        const [a, b] = r.span();
        const at = r.pos;
        x.layers.push(decLayer(r, a, b));
        r.pos = at;
        return true;
      }
      case 6: x.platform = r.string(); return true;
      case 7: x.manifestMediaType = r.string(); return true;
    }
    return false;
  });
  return x;
}

/** Decode an Index message. Throws RangeError on malformed input. */
export function decodeIndexPb(buf: Buffer): Index {
  const r = new Reader(buf, 0, buf.length);
  let image: ImageInfo | null = null;
  let parentImage: ImageInfo | null = null;
  const x: Omit<Index, 'image' | 'parentImage'> = { entries: [], blobs: [], formatVersion: 0, kind: 0, imageId: Buffer.alloc(0), parentId: Buffer.alloc(0), chunkSize: 0 };
  const sub = <T>(dec: (r: Reader, s: number, e: number) => T): T => {
    const [a, b] = r.span();
    const at = r.pos;
    const v = dec(r, a, b);
    r.pos = at;
    return v;
  };
  readFields(r, 0, buf.length, (no, wt) => {
    if (wt === 0) {
      switch (no) {
        case 1: x.formatVersion = r.u32(); return true;
        case 2: x.kind = r.int32(); return true;
        case 8: x.chunkSize = r.u32(); return true;
      }
    } else if (wt === 2) {
      switch (no) {
        case 3: x.imageId = r.bytes(); return true;
        case 4: x.parentId = r.bytes(); return true;
        case 5: image = sub((rr, s, e) => decImageInfo(rr, s, e, image)); return true;
        case 6: x.entries.push(sub(decEntry)); return true;
        case 7: x.blobs.push(sub(decBlob)); return true;
        case 9: parentImage = sub((rr, s, e) => decImageInfo(rr, s, e, parentImage)); return true;
      }
    }
    return false;
  });
  return { ...x, image: image as unknown as ImageInfo, parentImage: parentImage as unknown as ImageInfo | undefined };
}
