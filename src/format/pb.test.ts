/**
 * d4fs's own protobuf coder of the index (pb.ts) against protobufjs, the library it
 * replaces: the same bytes for the same objects (image ids and root digests depend on
 * them) and the same objects for the same bytes.
 */
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type * as protobuf from 'protobufjs';
import { decodeIndexPb, encodeIndexPb, encodeTreePb } from './pb';
import { decodeIndex } from './codec';
import { protoDir } from '../util/paths';
import { D4fsError } from '../errors';
import type { Blob, Entry, FileType, ImageInfo, Index } from './types';
import { prng } from '../../test/helpers/prng';

const root = (require('protobufjs') as typeof protobuf).loadSync(join(protoDir(), 'cdimg.proto'));
const IndexT = root.lookupType('d4fs.cdimg.v1.Index');
const TreeT = root.lookupType('d4fs.cdimg.v1.Tree');
const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, bytes: Buffer, defaults: true, arrays: true };

const pbjsEncode = (i: Index): Buffer => Buffer.from(IndexT.encode(IndexT.fromObject(i as unknown as Record<string, unknown>)).finish());
/** protobufjs's object without format version 2's fields (tests of version 1's, which pb.ts's decodeIndexPb reads). */
const pbjsDecode = (b: Buffer): Index => {
  const o = IndexT.toObject(IndexT.decode(b), TO_OBJECT) as Record<string, unknown>;
  for (const k of ['tree', 'edit', 'contents', 'sectionDigest', 'digests', 'wholeTree']) delete o[k];
  return o as unknown as Index;
};

const NAMES = ['usr', 'lib', 'x86_64-linux-gnu', 'libssl.so.3', 'ĉu-ŝi', '日本語のファイル名', 'emoji-😀', 'a b', '', 'x'.repeat(130), 'é'.repeat(60)];

function image(r: () => number, tag: string): ImageInfo {
  return {
    sourceRef: `oci:/tmp/${tag}:v${Math.floor(r() * 9)}`,
    manifestDigest: r() < 0.8 ? `sha256:${randomBytes(32).toString('hex')}` : '',
    configDigest: `sha256:${randomBytes(32).toString('hex')}`,
    configJson: Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n: r() })),
    layers: Array.from({ length: Math.floor(r() * 4) }, (_, i) => ({ digest: `sha256:${i}`, size: Math.floor(r() * 2 ** 40), mediaType: i % 2 ? 'application/vnd.oci.image.layer.v1.tar+gzip' : '', diffId: `sha256:${i}${i}` })),
    platform: r() < 0.9 ? 'linux/amd64' : '',
    manifestMediaType: 'application/vnd.oci.image.manifest.v1+json',
  };
}

/** A made-up index with every field kind, zero values included, and awkward numbers and strings. */
function madeUp(seed: number, n: number): Index {
  const r = prng(seed);
  const pick = <T>(a: T[]): T => a[Math.floor(r() * a.length)];
  const num = (): number => pick([0, 1, 127, 128, 300, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 7, 2 ** 53 - 1, Math.floor(r() * 1e6)]);
  const entries: Entry[] = Array.from({ length: n }, (_, i) => ({
    path: Array.from({ length: 1 + Math.floor(r() * 4) }, () => pick(NAMES)).join('/') + (i % 7 === 0 ? '' : `-${i}`),
    type: pick([0, 1, 2, 3, 4, 5, 6, 7]),
    mode: pick([0, 0o644, 0o755, 0o4755, 0o1777]),
    uid: pick([0, 1000, 65534, 2 ** 32 - 1]),
    gid: pick([0, 1000, 2 ** 31]),
    mtimeSec: pick([0, 1704067200, -1, -86400 * 365 * 30, 2 ** 33, -(2 ** 40) - 3]),
    mtimeNsec: pick([0, 1, 999_999_999]),
    size: num(),
    digest: r() < 0.7 ? randomBytes(32) : Buffer.alloc(0),
    linkTarget: r() < 0.2 ? pick(NAMES) : '',
    devMajor: pick([0, 8, 259]),
    devMinor: pick([0, 1, 2 ** 20]),
    xattrs: r() < 0.2 ? [{ name: 'security.capability', value: randomBytes(20) }, { name: 'user.empty', value: Buffer.alloc(0) }] : [],
    uname: r() < 0.3 ? 'root' : '',
    gname: r() < 0.3 ? pick(NAMES) : '',
  }));
  const blobs: Blob[] = Array.from({ length: Math.ceil(n / 2) }, () => ({
    digest: randomBytes(32),
    size: num(),
    encoding: pick([0, 1, 2, 3]),
    chunks: Array.from({ length: Math.floor(r() * 3) }, () => ({
      offset: num(),
      storedSize: num(),
      storedDigest: randomBytes(32),
      rawSize: num(),
      rawDigest: r() < 0.5 ? randomBytes(32) : Buffer.alloc(0),
      codec: pick([0, 1, 2, 3, 4]),
      baseDigest: r() < 0.5 ? randomBytes(32) : Buffer.alloc(0),
      baseOffset: num(),
      baseSize: num(),
    })),
  }));
  return {
    formatVersion: 1,
    kind: pick([1, 2]),
    imageId: randomBytes(32),
    parentId: r() < 0.5 ? randomBytes(32) : Buffer.alloc(0),
    image: image(r, 'new'),
    entries,
    blobs,
    chunkSize: 4 << 20,
    ...(r() < 0.5 ? { parentImage: image(r, 'old') } : {}),
  };
}

describe('index protobuf coder (pb.ts) against protobufjs', () => {
  it.each([1, 2, 3, 4, 5, 6])('writes the same bytes and reads back the same objects (made-up index %i)', (seed) => {
    const idx = madeUp(seed, seed === 6 ? 1000 : 60);
    const ours = encodeIndexPb(idx);
    const theirs = pbjsEncode(idx);
    expect(ours.equals(theirs)).toBe(true);
    expect(decodeIndexPb(theirs)).toEqual(pbjsDecode(theirs));
    // and what we read, written again, is what we read it from
    expect(encodeIndexPb(decodeIndexPb(ours)).equals(ours)).toBe(true);
  });

  it('without the tree: everything but entries and blobs, which are skipped', () => {
    for (const seed of [7, 8]) {
      const ours = encodeIndexPb(madeUp(seed, 80));
      const full = decodeIndexPb(ours);
      expect(full.entries.length).toBeGreaterThan(0);
      expect(decodeIndexPb(ours, { tree: false })).toEqual({ ...full, entries: [], blobs: [] });
    }
    // a truncated entry is still noticed (its length runs past the end)
    const cut = encodeIndexPb({ ...madeUp(9, 3), blobs: [] });
    expect(() => decodeIndexPb(cut.subarray(0, cut.length - 3), { tree: false })).toThrow(RangeError);
  });

  it('the tree (image id input) is byte for byte the same', () => {
    const idx = madeUp(11, 200);
    const ours = encodeTreePb(idx.entries, idx.image.configJson);
    const theirs = Buffer.from(TreeT.encode(TreeT.fromObject({ entries: idx.entries, configJson: idx.image.configJson } as unknown as Record<string, unknown>)).finish());
    expect(ours.equals(theirs)).toBe(true);
  });

  it('edge values: unpaired surrogates, out-of-range and negative numbers, empty messages', () => {
    const idx = madeUp(21, 4);
    const e = idx.entries;
    e[0].linkTarget = `${'long'.repeat(12)}\uDC00tail`; // an unpaired surrogate in >= 40 UTF-16 units: written as U+FFFD
    e[0].uname = 'pair \uD83D\uDE00 ok';
    e[1].mode = 2 ** 32 + 5; // uint32 fields wrap
    e[1].uid = -1;
    e[1].size = -5; // uint64: negatives are 0
    e[1].mtimeSec = 1.9;
    e[2].size = 2.5;
    e[2].mtimeSec = -2.5;
    e[2].type = -3 as FileType; // an unknown enum value, negative: ten bytes
    e[3].size = 2 ** 64;
    e[3].mtimeSec = -(2 ** 63);
    e[3].xattrs = [{ name: '', value: Buffer.alloc(0) }];
    idx.image.layers = [{ digest: '', size: 0, mediaType: '', diffId: '' }];
    const ours = encodeIndexPb(idx);
    expect(ours.equals(pbjsEncode(idx))).toBe(true);
    expect(decodeIndexPb(ours)).toEqual(pbjsDecode(ours));
  });

  it('an unpaired surrogate in a short string is written as protobufjs writes it, and refused when read, as protobufjs refuses it', () => {
    const idx = madeUp(22, 2);
    idx.entries[0].path = 'short\uD800lone'; // < 40 UTF-16 units: protobufjs's own encoder keeps the surrogate (3 bytes)
    const ours = encodeIndexPb(idx);
    expect(ours.equals(pbjsEncode(idx))).toBe(true);
    expect(() => pbjsDecode(ours)).toThrow();
    expect(() => decodeIndex(ours)).toThrow(/does not decode/);
  });

  it('skips unknown fields and wrong wire types as protobufjs does; a repeated image merges', () => {
    const idx = madeUp(31, 10);
    const base = encodeIndexPb(idx);
    const extra = Buffer.from([
      0x50, 0x96, 0x01, // field 10, varint 150
      0x5a, 0x03, 1, 2, 3, // field 11, 3 bytes
      0x65, 1, 2, 3, 4, // field 12, fixed32
      0x69, 1, 2, 3, 4, 5, 6, 7, 8, // field 13, fixed64
      0x0a, 0x00, // field 1 (a varint field) as length-delimited: unknown
      0x2a, 0x07, 0x32, 0x05, 0x6c, 0x69, 0x6e, 0x75, 0x78, // field 5 again: platform "linux" merges into image
    ]);
    const withExtra = Buffer.concat([base, extra]);
    const ours = decodeIndexPb(withExtra);
    expect(ours).toEqual(pbjsDecode(withExtra));
    expect(ours.image.platform).toBe('linux');
    expect(ours.image.configDigest).toBe(idx.image.configDigest);
  });

  it('malformed bytes are refused as CORRUPT, never half-read', () => {
    const raw = encodeIndexPb(madeUp(41, 20));
    let refused = 0;
    for (let cut = 1; cut < raw.length; cut += 7) {
      try {
        decodeIndex(raw.subarray(0, cut));
      } catch (e) {
        expect(e).toBeInstanceOf(D4fsError);
        expect((e as D4fsError).kind).toBe('CORRUPT');
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(0);
    for (const bad of [Buffer.from([0x07]), Buffer.from([0x32, 0xff, 0xff, 0xff, 0xff, 0x0f]), Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Buffer.from([0x00, 0x00])]) {
      expect(() => decodeIndex(bad)).toThrow(D4fsError);
    }
  });
});
