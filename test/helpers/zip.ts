/** Zip archives for tests, written as jar tools write them (members deflated by the system's zlib or Node's, or stored). */
import * as zlib from 'node:zlib';

const { zlibRaw } = require('d4fs-deflate') as { zlibRaw: (b: Uint8Array, level: number, memLevel: number) => Buffer };

export interface Member {
  name: string;
  data: Buffer;
  /** 'libz' (the system zlib, at level 6 unless `level`), 'node' (Node's zlib, Huffman only: not reproduced), 'stored'. */
  how: 'libz' | 'node' | 'stored';
  level?: number;
  /** Sizes after the data in a data descriptor (flag bit 3), zero in the local header. */
  descriptor?: boolean;
}

/** A zip archive as jar tools write one: local headers and payloads, the central directory, its end record. */
export function zipOf(members: Member[]): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let off = 0;
  for (const m of members) {
    const payload = m.how === 'stored' ? m.data : m.how === 'node' ? zlib.deflateRawSync(m.data, { level: 6, strategy: zlib.constants.Z_HUFFMAN_ONLY }) : zlibRaw(m.data, m.level ?? 6, 8);
    const method = m.how === 'stored' ? 0 : 8;
    const flags = (m.descriptor ? 8 : 0) | 0x800;
    const crc = zlib.crc32(m.data);
    const name = Buffer.from(m.name);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(flags, 6);
    lh.writeUInt16LE(method, 8);
    lh.writeUInt32LE(m.descriptor ? 0 : crc, 14);
    lh.writeUInt32LE(m.descriptor ? 0 : payload.length, 18);
    lh.writeUInt32LE(m.descriptor ? 0 : m.data.length, 22);
    lh.writeUInt16LE(name.length, 26);
    const dd = Buffer.alloc(m.descriptor ? 16 : 0);
    if (m.descriptor) {
      dd.writeUInt32LE(0x08074b50, 0);
      dd.writeUInt32LE(crc, 4);
      dd.writeUInt32LE(payload.length, 8);
      dd.writeUInt32LE(m.data.length, 12);
    }
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt16LE(flags, 8);
    ch.writeUInt16LE(method, 10);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(payload.length, 20);
    ch.writeUInt32LE(m.data.length, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(off, 42);
    locals.push(lh, name, payload, dd);
    central.push(ch, name);
    off += lh.length + name.length + payload.length + dd.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(members.length, 8);
  end.writeUInt16LE(members.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(off, 16);
  return Buffer.concat([...locals, cd, end]);
}

