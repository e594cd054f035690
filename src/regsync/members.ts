/**
 * Layers of several gzip members, reproduced member by member (issue 16):
 * eStargz and other seekable layouts (a member per file or chunk, then the
 * TOC's and the footer's, all written by Go's compress/gzip), and gzip files
 * simply concatenated. Each member is its recorded header, a deflate body
 * rebuilt from its slice of the tar (Go's compress/flate at a level, or a
 * reconstruction record: ./goflate.ts), and the CRC-32 and size of that
 * slice. The description of every member travels as one payload of the
 * patch (encodeMembers); the recipe names it (`gzm PAYLOAD BLOBSIZE`).
 *
 * Payload ("d4gm", version 1, member count u32 LE, then per member): header
 * length u16, header, inflated size u64, body size u64, method u8 (1: Go
 * level i8; 2: record length u32, record). Read strictly: anything off is
 * CORRUPT.
 */
import { promises as fsp } from 'node:fs';
import * as zlib from 'node:zlib';
import { corrupt } from '../errors';
import { gzipHeaderLength } from '../delta/gzmember';
import { GO_LEVELS, goDeflate, goDeflateSync, recordDeflate, recordEncode, recordScan } from './goflate';

/** One gzip member of a layer. */
export interface Member {
  header: Buffer;
  /** Bytes of the tar it holds. */
  usize: number;
  /** Bytes of its deflate body. */
  bodySize: number;
  /** Go's compress/flate level that writes the body, or… */
  go?: number;
  /** …the body's reconstruction record. */
  record?: Buffer;
}

const MAGIC = Buffer.from('d4gm');
/** Most members a layer may have (eStargz: about one per file). */
export const MAX_MEMBERS = 1_000_000;
/** Largest slice of the tar one member may hold (detection holds it in memory). */
const MAX_MEMBER_SLICE = 1 << 30;
const PIECE = 1 << 20;

/** The payload describing `ms`. */
export function encodeMembers(ms: Member[]): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(9);
  MAGIC.copy(head, 0);
  head[4] = 1;
  head.writeUInt32LE(ms.length, 5);
  parts.push(head);
  for (const m of ms) {
    const fixed = Buffer.alloc(2 + 8 + 8 + 1);
    fixed.writeUInt16LE(m.header.length, 0);
    parts.push(fixed.subarray(0, 2), m.header);
    fixed.writeBigUInt64LE(BigInt(m.usize), 2);
    fixed.writeBigUInt64LE(BigInt(m.bodySize), 10);
    fixed[18] = m.go !== undefined ? 1 : 2;
    parts.push(fixed.subarray(2));
    if (m.go !== undefined) {
      const l = Buffer.alloc(1);
      l.writeInt8(m.go, 0);
      parts.push(l);
    } else {
      const rec = m.record as Buffer;
      const l = Buffer.alloc(4);
      l.writeUInt32LE(rec.length, 0);
      parts.push(l, rec);
    }
  }
  return Buffer.concat(parts);
}

/** The members a payload describes (untrusted: checked strictly, CORRUPT otherwise); they must make `blobSize` bytes. */
export function decodeMembers(b: Buffer, blobSize: number): Member[] {
  const bad = (m: string): never => {
    throw corrupt(`gzip members description: ${m}`);
  };
  if (b.length < 9 || !b.subarray(0, 4).equals(MAGIC)) bad('not one');
  if (b[4] !== 1) bad(`version ${b[4]} is not known`);
  const n = b.readUInt32LE(5);
  if (n < 1 || n > MAX_MEMBERS) bad(`${n} members`);
  let at = 9;
  const need = (k: number): void => {
    if (at + k > b.length) bad('truncated');
  };
  const u64 = (): number => {
    need(8);
    const v = b.readBigUInt64LE(at);
    at += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) bad('a size out of range');
    return Number(v);
  };
  const out: Member[] = [];
  let total = 0;
  for (let i = 0; i < n; i++) {
    need(2);
    const hl = b.readUInt16LE(at);
    at += 2;
    need(hl);
    const header = Buffer.from(b.subarray(at, at + hl));
    at += hl;
    if (hl > 4096 || gzipHeaderLength(Buffer.concat([header, Buffer.alloc(8)])) !== hl) bad(`member ${i + 1}: not a gzip header`);
    const usize = u64();
    const bodySize = u64();
    if (bodySize < 2) bad(`member ${i + 1}: an empty body`);
    need(1);
    const method = b[at++];
    const m: Member = { header, usize, bodySize };
    if (method === 1) {
      need(1);
      const level = b.readInt8(at++);
      if (!GO_LEVELS.includes(level)) bad(`member ${i + 1}: Go level ${level}`);
      m.go = level;
    } else if (method === 2) {
      need(4);
      const rl = b.readUInt32LE(at);
      at += 4;
      need(rl);
      if (rl < 12) bad(`member ${i + 1}: a record too short`);
      m.record = Buffer.from(b.subarray(at, at + rl));
      at += rl;
    } else {
      bad(`member ${i + 1}: method ${method}`);
    }
    total += hl + bodySize + 8;
    out.push(m);
  }
  if (at !== b.length) bad('data after the last member');
  if (total !== blobSize) bad(`the members make ${total} bytes, the layer has ${blobSize}`);
  return out;
}

/** How the members are rebuilt, for reports. */
export function describeMembers(ms: Member[]): string {
  const go = new Map<number, number>();
  let recs = 0;
  let recBytes = 0;
  for (const m of ms) {
    if (m.go !== undefined) go.set(m.go, (go.get(m.go) ?? 0) + 1);
    else {
      recs++;
      recBytes += m.record?.length ?? 0;
    }
  }
  const parts = [...go].map(([l, k]) => `${k} by Go compress/flate level ${l}`);
  if (recs) parts.push(`${recs} by reconstruction records of ${recBytes} bytes`);
  return `${ms.length} gzip members: ${parts.join(', ')}`;
}

/** The gzip trailer of `size` bytes whose CRC-32 is `crc` (the size mod 2^32, as gzip records it). */
export function gzipTrailer(crc: number, size: number): Buffer {
  const t = Buffer.alloc(8);
  t.writeUInt32LE(crc >>> 0, 0);
  t.writeUInt32LE(size % 2 ** 32, 4);
  return t;
}

/** `length` bytes of the open tar from `pos`, in pieces, CRC-32 into `t`. */
async function* sliceOf(fh: fsp.FileHandle, pos: number, length: number, t: { crc: number }): AsyncGenerator<Buffer> {
  for (let done = 0; done < length; ) {
    const k = Math.min(PIECE, length - done);
    const buf = Buffer.allocUnsafe(k);
    const { bytesRead } = await fh.read(buf, 0, k, pos + done);
    if (bytesRead !== k) throw corrupt('the tar is shorter than its gzip members');
    t.crc = zlib.crc32(buf, t.crc);
    done += k;
    yield buf;
  }
}

/** The layer blob the members make from the tar at `tarPath` (headers, bodies, trailers). */
export async function* membersBlob(ms: Member[], tarPath: string): AsyncGenerator<Buffer> {
  const fh = await fsp.open(tarPath, 'r');
  try {
    let pos = 0;
    for (const [i, m] of ms.entries()) {
      yield m.header;
      const t = { crc: 0 };
      const slice = sliceOf(fh, pos, m.usize, t);
      const body = m.go !== undefined ? goDeflate(m.go, slice) : recordDeflate(m.record as Buffer, m.bodySize, slice);
      let n = 0;
      for await (const c of body) {
        n += c.length;
        if (n > m.bodySize) throw corrupt(`gzip member ${i + 1} comes out longer than its ${m.bodySize} bytes`);
        yield c;
      }
      if (n !== m.bodySize) throw corrupt(`gzip member ${i + 1} comes out ${n} bytes, not ${m.bodySize}`);
      yield gzipTrailer(t.crc, m.usize);
      pos += m.usize;
    }
    if (pos !== (await fh.stat()).size) throw corrupt(`the gzip members hold ${pos} bytes of the tar, which has ${(await fh.stat()).size}`);
  } finally {
    await fh.close();
  }
}

/** Go's levels tried on a member: the one the member before used first (one writer, one level), then the likely ones. */
const GO_ORDER = [6, 9, 1, 5, 7, 8, 4, 3, 2, 0, -2];

/**
 * How each member of `blob` (a layer of several gzip members) is rebuilt from the tar: Go's
 * compress/flate at the level that writes it exactly, else (with `records`) a reconstruction record,
 * checked by rebuilding; or why the layer cannot be.
 */
export async function detectMembers(blob: Buffer, tarPath: string, tarSize: number, records: boolean): Promise<{ members: Member[] } | { reason: string }> {
  const fh = await fsp.open(tarPath, 'r');
  try {
    const out: Member[] = [];
    let off = 0;
    let pos = 0;
    let lastGo: number | undefined;
    while (off < blob.length) {
      const i = out.length + 1;
      if (out.length >= MAX_MEMBERS) return { reason: `more than ${MAX_MEMBERS} gzip members` };
      const hlen = gzipHeaderLength(blob.subarray(off, off + 65536 + 8));
      if (hlen < 0) return { reason: `data after gzip member ${i - 1} that is not a gzip member` };
      const body = blob.subarray(off + hlen);
      const sc = recordScan(body);
      if (typeof sc === 'string') return { reason: `gzip member ${i}: ${sc}` };
      const trailer = body.subarray(sc.consumed, sc.consumed + 8);
      if (trailer.length < 8) return { reason: `gzip member ${i} is truncated` };
      if (sc.size > MAX_MEMBER_SLICE || pos + sc.size > tarSize) return { reason: `gzip member ${i} holds ${sc.size} bytes, past the tar or over ${MAX_MEMBER_SLICE}` };
      const slice = Buffer.allocUnsafe(sc.size);
      const { bytesRead } = await fh.read(slice, 0, sc.size, pos);
      if (bytesRead !== sc.size || (zlib.crc32(slice) >>> 0) !== trailer.readUInt32LE(0) || sc.size % 2 ** 32 !== trailer.readUInt32LE(4)) {
        return { reason: `gzip member ${i} does not hold the tar's bytes at ${pos} (its CRC-32 or size differs)` };
      }
      const mbody = body.subarray(0, sc.consumed);
      const m: Member = { header: Buffer.from(blob.subarray(off, off + hlen)), usize: sc.size, bodySize: sc.consumed };
      // Go's encoder: on the first members, and as long as the members before were Go's
      if (out.length < 2 || lastGo !== undefined) {
        for (const level of lastGo !== undefined ? [lastGo, ...GO_ORDER.filter((l) => l !== lastGo)] : GO_ORDER) {
          if (goDeflateSync(level, slice).equals(mbody)) {
            m.go = level;
            break;
          }
        }
      }
      lastGo = m.go;
      if (m.go === undefined) {
        if (!records) return { reason: `gzip member ${i}: no Go level reproduces it (and no records: --no-records)` };
        const made = recordEncode(Buffer.from(mbody));
        if (typeof made === 'string') return { reason: `gzip member ${i}: no reconstruction record: ${made}` };
        const parts: Buffer[] = [];
        for await (const c of recordDeflate(made.record, mbody.length, (async function* () {
          yield slice;
        })())) parts.push(c);
        if (!Buffer.concat(parts).equals(mbody)) return { reason: `gzip member ${i}: the reconstruction record did not rebuild it (a d4fs bug: please report it)` };
        m.record = made.record;
      }
      out.push(m);
      off += hlen + sc.consumed + 8;
      pos += sc.size;
    }
    if (pos !== tarSize) return { reason: `the gzip members hold ${pos} bytes, the tar has ${tarSize}` };
    return { members: out };
  } finally {
    await fh.close();
  }
}
