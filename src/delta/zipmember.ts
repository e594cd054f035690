/**
 * Zip archives (.jar, .war, .whl, .apk, .zip) as their members (issue 14 item 3): a
 * deflated archive changes as a whole when a few of its classes change, so a binary
 * patch of it is poor. Its members are diffed instead, decompressed, and the archive is
 * rebuilt byte for byte at apply time, each member deflated again by the system's zlib
 * (native/deflate zlibRaw: Node's own zlib, Chromium's fork, reproduces none of them).
 * Measured on libtomcat10-java 10.1.55 → 10.1.60 (32 jars, 3,585 deflated entries, all
 * made by zlib at level 6): `zstd -19 --patch-from` of the jars as they are took 4,273
 * KB, of their members decompressed 754 KB.
 *
 * The expanded form of an archive, which the codecs of bytes patch (zip-members codec,
 * ./codecs/zip-members.ts):
 *
 *     "D4ZM" u8 version(1) | varint n | n × (varint gap, varint csize, varint usize)
 *     | n × u8 (level | memLevel << 4) | the archive with each of the n payloads replaced
 *     by its decompressed bytes
 *
 * `gap` counts the archive's bytes kept as they are (headers, central directory, stored
 * or unreproduced members) before each replaced payload. The table comes first so that
 * the new archive's table is patched against the old one's; the levels follow it in one
 * run (a base's, left 0: unknown, is read and never rebuilt). Only members the encoder
 * has rebuilt exactly (same bytes from zlibRaw) are replaced; the others stay compressed.
 *
 * Untrusted input: the archive being encoded is the image's own content, but a base is
 * any content of a chain, and a stored expanded form is the file's claim. Every offset
 * and size is checked before use; the bytes decompressed are bounded (ZIP_MAX_EXPANDED);
 * a payload that does not decompress to its declared size is kept as it is. A base's
 * expansion is a function of its bytes alone, so that encoder and decoder agree.
 */
import { inflateRawSync } from 'node:zlib';
import { corrupt } from '../errors';

/** The decompressed bytes an archive may expand to (bigger archives take the ordinary path). */
export const ZIP_MAX_EXPANDED = 256 * 1024 * 1024;
/** Most members replaced in one archive. */
const ZIP_MAX_MEMBERS = 1_000_000;
const MAGIC = Buffer.from('D4ZM', 'latin1');
const VERSION = 1;
const EMPTY = Buffer.alloc(0);

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_END = 0x06054b50;

/** The system zlib's raw deflate (native/deflate), loaded on first use. */
type ZlibRaw = { (bytes: Uint8Array, level: number, memLevel: number): Buffer; (bytes: Uint8Array, level: number, memLevel: number, expected: Uint8Array): boolean };
let zlibRawFn: ZlibRaw | undefined;
function zlibRaw(): ZlibRaw {
  zlibRawFn ??= (require('d4fs-deflate') as { zlibRaw: ZlibRaw }).zlibRaw;
  return zlibRawFn;
}

let libzOk: boolean | undefined;
/** Whether the system's zlib can be used here (tried once). */
function libzLoads(): boolean {
  if (libzOk === undefined) {
    try {
      zlibRaw()(EMPTY, 6, 8);
      libzOk = true;
    } catch {
      libzOk = false;
    }
  }
  return libzOk;
}

/** (level, memLevel) pairs tried, most common first (zlib's default, then its best, then the rest). */
const PARAMS: readonly [number, number][] = [
  [6, 8],
  [9, 8],
  [1, 8],
  [5, 8],
  [2, 8],
  [3, 8],
  [4, 8],
  [7, 8],
  [8, 8],
  [6, 9],
  [9, 9],
];

/** True when `b` starts as a zip archive does (a local file header). */
export const isZip = (b: Buffer): boolean => b.length >= 30 && b.readUInt32LE(0) === SIG_LOCAL;

interface Payload {
  start: number;
  csize: number;
  usize: number;
}

/** The deflated payloads an archive's central directory names, in file order, not overlapping; undefined when it is not a zip we read. */
function payloadsOf(buf: Buffer): Payload[] | undefined {
  if (!isZip(buf) || buf.length < 22) return undefined;
  // the end of central directory record: within the last 64 KiB + 22 bytes (its comment)
  let end = -1;
  for (let p = buf.length - 22; p >= Math.max(0, buf.length - 22 - 65535); p--) {
    if (buf.readUInt32LE(p) === SIG_END && p + 22 + buf.readUInt16LE(p + 20) === buf.length) {
      end = p;
      break;
    }
  }
  if (end < 0) return undefined;
  const count = buf.readUInt16LE(end + 10);
  const cdSize = buf.readUInt32LE(end + 12);
  const cdOffset = buf.readUInt32LE(end + 16);
  // zip64 (its sizes in another record) is left to the ordinary path
  if (count === 0xffff || cdOffset === 0xffffffff || cdOffset + cdSize > end) return undefined;
  const out: Payload[] = [];
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    if (p + 46 > end || buf.readUInt32LE(p) !== SIG_CENTRAL) return undefined;
    const flags = buf.readUInt16LE(p + 8);
    const method = buf.readUInt16LE(p + 10);
    const csize = buf.readUInt32LE(p + 20);
    const usize = buf.readUInt32LE(p + 24);
    const next = p + 46 + buf.readUInt16LE(p + 28) + buf.readUInt16LE(p + 30) + buf.readUInt16LE(p + 32);
    const lho = buf.readUInt32LE(p + 42);
    p = next;
    // deflated, not encrypted, sizes in this record
    if (method !== 8 || flags & 1 || csize === 0xffffffff || usize === 0xffffffff || csize === 0) continue;
    if (lho + 30 > buf.length || buf.readUInt32LE(lho) !== SIG_LOCAL) continue;
    const start = lho + 30 + buf.readUInt16LE(lho + 26) + buf.readUInt16LE(lho + 28);
    if (start + csize > cdOffset) continue;
    out.push({ start, csize, usize });
  }
  out.sort((a, b) => a.start - b.start);
  const kept: Payload[] = [];
  for (const x of out) if (!kept.length || kept[kept.length - 1].start + kept[kept.length - 1].csize <= x.start) kept.push(x);
  return kept;
}

function varint(out: number[], v: number): void {
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

/**
 * The expanded form of archive `buf` (see the module comment), or undefined when it
 * is not a zip archive with a member to replace. With `reproduce` (the archive to
 * encode), only members the system zlib rebuilds exactly are replaced, with their
 * level; without (a base), every member that decompresses to its declared size is,
 * with level 0.
 */
export function expandZip(buf: Buffer, reproduce: boolean): Buffer | undefined {
  const payloads = payloadsOf(buf);
  if (!payloads?.length) return undefined;
  // no system zlib (libz.so.1) here: archives take the ordinary path
  if (reproduce && !libzLoads()) return undefined;
  const chosen: { p: Payload; raw: Buffer; params: number }[] = [];
  let expanded = 0;
  let last: [number, number] | undefined;
  for (const p of payloads) {
    if (chosen.length >= ZIP_MAX_MEMBERS || expanded + p.usize > ZIP_MAX_EXPANDED) break;
    let raw: Buffer;
    try {
      raw = inflateRawSync(buf.subarray(p.start, p.start + p.csize), { maxOutputLength: Math.max(1, p.usize) });
    } catch {
      continue;
    }
    if (raw.length !== p.usize) continue;
    let params = 0;
    if (reproduce) {
      const compressed = buf.subarray(p.start, p.start + p.csize);
      const order = last ? [last, ...PARAMS] : PARAMS;
      const hit = order.find(([l, m]) => zlibRaw()(raw, l, m, compressed));
      if (!hit) continue;
      last = hit;
      params = hit[0] | (hit[1] << 4);
    }
    chosen.push({ p, raw, params });
    expanded += raw.length;
  }
  if (!chosen.length) return undefined;
  const head: number[] = [...MAGIC, VERSION];
  varint(head, chosen.length);
  let at = 0;
  for (const { p } of chosen) {
    varint(head, p.start - at);
    varint(head, p.csize);
    varint(head, p.usize);
    at = p.start + p.csize;
  }
  for (const { params } of chosen) head.push(params);
  const parts: Buffer[] = [Buffer.from(head)];
  at = 0;
  for (const { p, raw } of chosen) {
    parts.push(buf.subarray(at, p.start), raw);
    at = p.start + p.csize;
  }
  parts.push(buf.subarray(at));
  return Buffer.concat(parts);
}

/** A base as the codecs of bytes see it: expanded when it is a zip archive we read, else as it is. */
export function zipInnerBase(base: Buffer): Buffer {
  return expandZip(base, false) ?? base;
}

/** Reads the varints of an expanded form's table. */
class Reader {
  constructor(
    private readonly b: Buffer,
    public p: number,
  ) {}
  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (this.p >= this.b.length) throw corrupt('zip members: truncated table');
      const c = this.b[this.p++];
      v += (c & 0x7f) * mul;
      if (c < 0x80) return v;
      mul *= 0x80;
    }
    throw corrupt('zip members: varint too long');
  }
}

/** Rebuilds the archive from its expanded form, `expectedSize` bytes; damage is CORRUPT. */
export function rebuildZip(e: Buffer, expectedSize: number): Buffer {
  if (e.length < 6 || !e.subarray(0, 4).equals(MAGIC)) throw corrupt('zip members: not an expanded archive');
  if (e[4] !== VERSION) throw corrupt(`zip members: unknown version ${e[4]}`);
  const r = new Reader(e, 5);
  const n = r.varint();
  if (n < 1 || n > ZIP_MAX_MEMBERS || n > e.length) throw corrupt('zip members: absurd member count');
  const table: { gap: number; csize: number; usize: number }[] = [];
  for (let i = 0; i < n; i++) table.push({ gap: r.varint(), csize: r.varint(), usize: r.varint() });
  if (r.p + n > e.length) throw corrupt('zip members: truncated table');
  const params = e.subarray(r.p, r.p + n);
  let pos = r.p + n;
  const out = Buffer.allocUnsafe(expectedSize);
  let o = 0;
  const put = (b: Uint8Array): void => {
    if (o + b.length > expectedSize) throw corrupt(`zip members: the archive rebuilds to more than ${expectedSize} bytes`);
    out.set(b, o);
    o += b.length;
  };
  for (let i = 0; i < n; i++) {
    const { gap, csize, usize } = table[i];
    const level = params[i] & 0x0f;
    const memLevel = params[i] >> 4;
    if (level > 9 || memLevel < 1 || memLevel > 9) throw corrupt(`zip members: member ${i} has no valid level`);
    if (pos + gap + usize > e.length) throw corrupt('zip members: expanded archive truncated');
    put(e.subarray(pos, pos + gap));
    const c = zlibRaw()(e.subarray(pos + gap, pos + gap + usize), level, memLevel);
    if (c.length !== csize) throw corrupt(`zip members: member ${i} deflates to ${c.length} bytes, the archive had ${csize}`);
    put(c);
    pos += gap + usize;
  }
  put(e.subarray(pos));
  if (o !== expectedSize) throw corrupt(`zip members: the archive rebuilds to ${o} bytes, expected ${expectedSize}`);
  return out;
}
