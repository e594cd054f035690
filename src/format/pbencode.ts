/**
 * Protobuf encoding of the index (Index) and of the image id's Tree
 * (proto/cdimg.proto), written by hand: the same bytes as protobufjs's
 * `encode(fromObject(x))`, without loading protobufjs (~30 ms of start-up:
 * module graph, .proto parse, generated coders) on the way out of convert,
 * patch or merge. Decoding still goes through protobufjs (codec.ts).
 *
 * protobufjs's rules this follows (proto3, no field has explicit presence):
 * fields in field-number order; a scalar is left out when it is its type's
 * default (0, "", empty bytes, enum 0); a message field is written when not
 * null, even when empty; repeated fields element by element. Values are
 * converted as fromObject converts them: uint32 `>>> 0`, enums are numbers,
 * 64-bit integers are truncated and clamped like Long.fromNumber (uint64:
 * negatives are 0). Strings shorter than 40 UTF-16 units are encoded by
 * protobufjs's own UTF-8 writer (a lone surrogate becomes three bytes),
 * longer ones by Node's (a lone surrogate becomes U+FFFD): so is it here.
 * pbencode.test.ts checks byte equality with protobufjs.
 */
import { Blob, Chunk, Entry, ImageInfo, Index, Layer, Xattr } from './types';

class PbWriter {
  buf: Buffer;
  pos = 0;
  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(Math.max(size, 256));
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** Varint of an integer in [0, 2^53). */
  varint(v: number): void {
    this.ensure(10);
    const b = this.buf;
    let p = this.pos;
    while (v >= 0x80) {
      b[p++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    b[p++] = v;
    this.pos = p;
  }

  /** Varint of a 64-bit pattern given as a non-negative bigint below 2^64. */
  varintBig(v: bigint): void {
    this.ensure(10);
    while (v >= 0x80n) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }

  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  /** Field of wire type 0 holding a uint32 (fromObject's `>>> 0`); left out when 0. */
  uint32(field: number, v: number): void {
    const u = v >>> 0;
    if (u === 0) return;
    this.tag(field, 0);
    this.varint(u);
  }

  /** Enum field (written as int32: negatives take ten bytes); left out when 0 or not an int32. */
  enumValue(field: number, v: number): void {
    if (typeof v !== 'number' || (v | 0) !== v || v === 0) return;
    this.tag(field, 0);
    if (v > 0) this.varint(v);
    else this.varintBig(BigInt.asUintN(64, BigInt(v)));
  }

  /** int64 / uint64 field from a number, as Long.fromNumber converts it; left out when 0. */
  int64(field: number, x: number, unsigned: boolean): void {
    const v = Number(x);
    if (Number.isNaN(v) || v === 0) return;
    if (v >= 1 && v < 2 ** 53) {
      const t = Math.floor(v);
      this.tag(field, 0);
      this.varint(t);
      return;
    }
    let big: bigint;
    if (unsigned) {
      if (v < 1) return; // negatives (and fractions) become 0
      big = v >= 2 ** 64 ? (1n << 64n) - 1n : BigInt(Math.trunc(v));
    } else {
      if (v <= -(2 ** 63)) big = -(1n << 63n);
      else if (v + 1 >= 2 ** 63) big = (1n << 63n) - 1n;
      else big = BigInt(Math.trunc(v));
      if (big === 0n) return;
      big = BigInt.asUintN(64, big);
    }
    this.tag(field, 0);
    this.varintBig(big);
  }

  bytes(field: number, v: Uint8Array | null | undefined): void {
    if (v == null || !v.length) return;
    this.tag(field, 2);
    this.varint(v.length);
    this.ensure(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
  }

  string(field: number, x: string | null | undefined): void {
    if (x == null) return;
    const s = String(x);
    if (!s.length) return;
    this.tag(field, 2);
    if (s.length < 40) {
      this.ensure(1 + s.length * 3);
      const at = this.pos;
      const n = utf8Short(s, this.buf, at + 1);
      this.buf[at] = n; // at most 117 bytes: a one-byte length
      this.pos = at + 1 + n;
      return;
    }
    const n = Buffer.byteLength(s);
    this.varint(n);
    this.ensure(n);
    this.buf.write(s, this.pos);
    this.pos += n;
  }

  /** Start a length-delimited field; returns where its length goes (one byte reserved). */
  begin(field: number): number {
    this.tag(field, 2);
    this.ensure(1);
    return this.pos++;
  }

  /** Close what begin() opened: write the length, moving the body when the length needs more than a byte. */
  end(at: number): void {
    const len = this.pos - at - 1;
    if (len < 0x80) {
      this.buf[at] = len;
      return;
    }
    let k = 1;
    for (let x = len; x >= 0x80; x = Math.floor(x / 0x80)) k++;
    this.ensure(k - 1);
    const b = this.buf;
    b.copyWithin(at + k, at + 1, this.pos);
    this.pos += k - 1;
    let v = len;
    for (let p = at; v >= 0x80; p++) {
      b[p] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    b[at + k - 1] = v;
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** protobufjs's UTF-8 writer (used for strings under 40 units): a lone surrogate is written as its own three bytes. */
function utf8Short(s: string, b: Buffer, at: number): number {
  let p = at;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) b[p++] = c;
    else if (c < 0x800) {
      b[p++] = (c >> 6) | 0xc0;
      b[p++] = (c & 0x3f) | 0x80;
    } else if ((c & 0xfc00) === 0xd800 && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      c = 0x10000 + ((c & 0x3ff) << 10) + (s.charCodeAt(++i) & 0x3ff);
      b[p++] = (c >> 18) | 0xf0;
      b[p++] = ((c >> 12) & 0x3f) | 0x80;
      b[p++] = ((c >> 6) & 0x3f) | 0x80;
      b[p++] = (c & 0x3f) | 0x80;
    } else {
      b[p++] = (c >> 12) | 0xe0;
      b[p++] = ((c >> 6) & 0x3f) | 0x80;
      b[p++] = (c & 0x3f) | 0x80;
    }
  }
  return p - at;
}

function objectOf<T>(v: T, what: string): T {
  if (v === null || typeof v !== 'object') throw new TypeError(`${what}: object expected`);
  return v;
}

function each<T>(w: PbWriter, field: number, list: T[] | null | undefined, what: string, write: (w: PbWriter, v: T) => void): void {
  if (!list) return;
  if (!Array.isArray(list)) throw new TypeError(`${what}: array expected`);
  for (const v of list) {
    objectOf(v, what);
    const at = w.begin(field);
    write(w, v);
    w.end(at);
  }
}

function message<T>(w: PbWriter, field: number, v: T | null | undefined, what: string, write: (w: PbWriter, v: T) => void): void {
  if (v == null) return;
  objectOf(v, what);
  const at = w.begin(field);
  write(w, v);
  w.end(at);
}

function xattr(w: PbWriter, x: Xattr): void {
  w.string(1, x.name);
  w.bytes(2, x.value);
}

function entry(w: PbWriter, e: Entry): void {
  w.string(1, e.path);
  w.enumValue(2, e.type);
  w.uint32(3, e.mode);
  w.uint32(4, e.uid);
  w.uint32(5, e.gid);
  w.int64(6, e.mtimeSec, false);
  w.uint32(7, e.mtimeNsec);
  w.int64(8, e.size, true);
  w.bytes(9, e.digest);
  w.string(10, e.linkTarget);
  w.uint32(11, e.devMajor);
  w.uint32(12, e.devMinor);
  each(w, 13, e.xattrs, 'd4fs.cdimg.v1.Entry.xattrs', xattr);
  w.string(14, e.uname);
  w.string(15, e.gname);
}

function chunk(w: PbWriter, c: Chunk): void {
  w.int64(1, c.offset, true);
  w.int64(2, c.storedSize, true);
  w.bytes(3, c.storedDigest);
  w.int64(4, c.rawSize, true);
  w.bytes(5, c.rawDigest);
  w.enumValue(6, c.codec);
  w.bytes(7, c.baseDigest);
  w.int64(8, c.baseOffset, true);
  w.int64(9, c.baseSize, true);
}

function blob(w: PbWriter, b: Blob): void {
  w.bytes(1, b.digest);
  w.int64(2, b.size, true);
  w.enumValue(3, b.encoding);
  each(w, 4, b.chunks, 'd4fs.cdimg.v1.Blob.chunks', chunk);
}

function layer(w: PbWriter, l: Layer): void {
  w.string(1, l.digest);
  w.int64(2, l.size, true);
  w.string(3, l.mediaType);
  w.string(4, l.diffId);
}

function imageInfo(w: PbWriter, i: ImageInfo): void {
  w.string(1, i.sourceRef);
  w.string(2, i.manifestDigest);
  w.string(3, i.configDigest);
  w.bytes(4, i.configJson);
  each(w, 5, i.layers, 'd4fs.cdimg.v1.ImageInfo.layers', layer);
  w.string(6, i.platform);
  w.string(7, i.manifestMediaType);
}

/** A guess of the encoded size, so that the buffer rarely grows. */
const sizeHint = (entries: number, blobs: number, config: number): number => 256 + entries * 160 + blobs * 180 + config;

/** Index → protobuf bytes (as protobufjs encodes it). */
export function encodeIndexPb(index: Index): Buffer {
  objectOf(index, 'd4fs.cdimg.v1.Index');
  const w = new PbWriter(sizeHint(index.entries?.length ?? 0, index.blobs?.length ?? 0, (index.image?.configJson?.length ?? 0) + (index.parentImage?.configJson?.length ?? 0)));
  w.uint32(1, index.formatVersion);
  w.enumValue(2, index.kind);
  w.bytes(3, index.imageId);
  w.bytes(4, index.parentId);
  message(w, 5, index.image, 'd4fs.cdimg.v1.Index.image', imageInfo);
  each(w, 6, index.entries, 'd4fs.cdimg.v1.Index.entries', entry);
  each(w, 7, index.blobs, 'd4fs.cdimg.v1.Index.blobs', blob);
  w.uint32(8, index.chunkSize);
  message(w, 9, index.parentImage, 'd4fs.cdimg.v1.Index.parentImage', imageInfo);
  return w.finish();
}

/** Tree (what the image id hashes) → protobuf bytes (as protobufjs encodes it). */
export function encodeTreePb(entries: Entry[], configJson: Uint8Array): Buffer {
  const w = new PbWriter(sizeHint(entries.length, 0, configJson.length));
  each(w, 1, entries, 'd4fs.cdimg.v1.Tree.entries', entry);
  w.bytes(2, configJson);
  return w.finish();
}
