/**
 * The index encoder (pb.ts) must give protobufjs's bytes (convert, patch
 * and merge rely on the exact bytes: root digests, image ids), for ordinary
 * indexes and for every value protobufjs treats specially.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type * as protobuf from 'protobufjs';
import { encodeIndexPb, encodeTreePb } from './pb';
import { decodeIndex } from './codec';
import { protoDir } from '../util/paths';
import { Blob, Chunk, Codec, Encoding, Entry, FileType, ImageInfo, Index, Kind } from './types';

let root: protobuf.Root | undefined;
/** protobufjs's types of the index, the reference the encoder is checked against. */
function protobufTypes(): { Index: protobuf.Type; Tree: protobuf.Type } {
  root ??= (require('protobufjs') as typeof protobuf).loadSync(join(protoDir(), 'cdimg.proto'));
  return { Index: root.lookupType('d4fs.cdimg.v1.Index'), Tree: root.lookupType('d4fs.cdimg.v1.Tree') };
}

const pbIndex = (x: unknown): Buffer => {
  const T = protobufTypes().Index;
  return Buffer.from(T.encode(T.fromObject(x as Record<string, unknown>)).finish());
};
const pbTree = (entries: unknown[], configJson: Buffer): Buffer => {
  const T = protobufTypes().Tree;
  return Buffer.from(T.encode(T.fromObject({ entries, configJson })).finish());
};

/** Deterministic pseudo-random numbers (tests must not depend on luck). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

function entry(r: () => number, i: number): Entry {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const type = pick([FileType.REG, FileType.REG, FileType.DIR, FileType.SYMLINK, FileType.HARDLINK, FileType.CHAR, FileType.FIFO]);
  return {
    path: pick(['', `usr/lib/f${i}`, `${'d'.repeat(Math.floor(r() * 300))}/x${i}`, `é/ü/${i}`, `emoji/😀${i}`]),
    type,
    mode: pick([0, 0o755, 0o4755, 0o644]),
    uid: pick([0, 1, 1000, 65534, 2 ** 31, 2 ** 32 - 1]),
    gid: pick([0, 7, 3000000]),
    mtimeSec: pick([0, 1, 1700000000, -1, -86400 * 365 * 80, 2 ** 40, 2 ** 53 - 1]),
    mtimeNsec: pick([0, 1, 999999999, 123456789]),
    size: type === FileType.REG ? pick([0, 1, 127, 128, 16383, 16384, 2 ** 32, 2 ** 44]) : 0,
    digest: type === FileType.REG ? digest(String(i)) : Buffer.alloc(0),
    linkTarget: type === FileType.SYMLINK || type === FileType.HARDLINK ? pick(['a', '../'.repeat(60) + 'b']) : '',
    devMajor: type === FileType.CHAR ? pick([0, 1, 259]) : 0,
    devMinor: type === FileType.CHAR ? pick([0, 3, 2 ** 20]) : 0,
    xattrs: r() < 0.3 ? [{ name: 'security.capability', value: Buffer.from('0100000200200000', 'hex') }, { name: 'user.e', value: Buffer.alloc(0) }] : [],
    uname: pick(['', 'root', 'www-data']),
    gname: pick(['', 'root']),
  };
}

function chunk(r: () => number, i: number): Chunk {
  const patch = r() < 0.4;
  return {
    offset: Math.floor(r() * 2 ** 40),
    storedSize: Math.floor(r() * 2 ** 22),
    storedDigest: digest(`s${i}`),
    rawSize: r() < 0.1 ? 0 : Math.floor(r() * 2 ** 22) + 1,
    rawDigest: digest(`r${i}`),
    codec: patch ? [Codec.ZSTD_PATCH, Codec.BSDIFF, Codec.GZIP_MEMBER][i % 3] : Codec.ZSTD,
    baseDigest: patch ? digest(`b${i}`) : Buffer.alloc(0),
    baseOffset: patch ? Math.floor(r() * 2 ** 33) : 0,
    baseSize: patch ? Math.floor(r() * 2 ** 22) : 0,
  };
}

function image(r: () => number, configBytes: number): ImageInfo {
  return {
    sourceRef: 'oci:/tmp/layout:tag',
    manifestDigest: `sha256:${digest('m').toString('hex')}`,
    configDigest: `sha256:${digest('c').toString('hex')}`,
    configJson: Buffer.from(JSON.stringify({ pad: 'x'.repeat(configBytes) })),
    layers: Array.from({ length: 1 + Math.floor(r() * 4) }, (_, i) => ({ digest: `sha256:${digest(`l${i}`).toString('hex')}`, size: Math.floor(r() * 2 ** 30), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', diffId: `sha256:${digest(`d${i}`).toString('hex')}` })),
    platform: 'linux/amd64',
    manifestMediaType: 'application/vnd.oci.image.manifest.v1+json',
  };
}

function randomIndex(seed: number, n: number, delta: boolean): Index {
  const r = rng(seed);
  const entries = Array.from({ length: n }, (_, i) => entry(r, i));
  const blobs: Blob[] = Array.from({ length: Math.ceil(n / 2) }, (_, i) => ({
    digest: digest(String(i)),
    size: Math.floor(r() * 2 ** 34),
    encoding: delta ? [Encoding.SAME, Encoding.FULL, Encoding.PATCH][i % 3] : Encoding.FULL,
    chunks: delta && i % 3 === 0 ? [] : Array.from({ length: 1 + Math.floor(r() * 3) }, (_, j) => chunk(r, i * 7 + j)),
  }));
  return {
    formatVersion: 1,
    kind: delta ? Kind.DELTA : Kind.FULL,
    imageId: digest('id'),
    parentId: delta ? digest('parent') : Buffer.alloc(0),
    image: image(r, seed % 2 ? 20 : 40000),
    entries,
    blobs,
    chunkSize: 4 * 1024 * 1024,
    parentImage: delta ? image(r, 100) : undefined,
  };
}

describe('pb.ts encoder: same bytes as protobufjs on random indexes and special values', () => {
  it.each([
    [1, 0, false],
    [2, 1, false],
    [3, 50, false],
    [4, 400, true],
    [5, 800, false],
    [6, 700, true],
  ])('random index (seed %i, %i entries, delta %s)', (seed, n, delta) => {
    const index = randomIndex(seed, n, delta);
    const mine = encodeIndexPb(index);
    expect(mine.equals(pbIndex(index))).toBe(true);
    expect(encodeTreePb(index.entries, index.image.configJson).equals(pbTree(index.entries, index.image.configJson))).toBe(true);
    // and it decodes back to what went in
    const back = decodeIndex(mine);
    expect(back.entries).toEqual(index.entries);
    expect(back.blobs).toEqual(index.blobs);
    expect(back.image).toEqual(index.image);
  });

  it('values protobufjs converts or leaves out', () => {
    const base = randomIndex(9, 3, true);
    const odd: Record<string, unknown>[] = [
      // defaults are left out; message fields are written even when empty
      { formatVersion: 0, kind: 0, imageId: Buffer.alloc(0), parentId: Buffer.alloc(0), image: {}, entries: [], blobs: [], chunkSize: 0 },
      { image: {}, entries: [{}], blobs: [{ chunks: [{}] }], parentImage: {} },
      { image: null, entries: null, blobs: undefined, parentImage: null },
      // uint32 wrap and truncation, enums outside the schema and negative, fractions
      { kind: 7, image: {}, entries: [{ mode: 2 ** 32 + 5, uid: -1, gid: 1.9, mtimeNsec: 2 ** 32, type: -3, devMajor: '12' as unknown as number }] },
      // 64-bit values: negative, fractional, huge, non-finite, NaN
      ...[-1, -1.5, 0.4, -0.4, 1.5, 2 ** 53, 2 ** 53 + 2, 2 ** 63, 2 ** 63 - 1024, 2 ** 64, 2 ** 70, -(2 ** 63), -(2 ** 64), Infinity, -Infinity, NaN].map((v) => ({
        image: { layers: [{ size: v }] },
        entries: [{ mtimeSec: v, size: v }],
        blobs: [{ size: v, chunks: [{ offset: v, baseSize: v }] }],
      })),
      // strings: UTF-8 of every width, lone surrogates in short (< 40 units) and long strings, lengths around 127/128
      ...['a', 'é', '€', '😀', '\ud800', 'x\udc00y', '\ud83d', 'é'.repeat(39), '\ud800'.repeat(39), '\ud800'.repeat(40), '😀'.repeat(20), 'x'.repeat(127), 'x'.repeat(128), 'é'.repeat(64), '\udfff'.repeat(200)].map((s) => ({
        image: { sourceRef: s, layers: [{ mediaType: s }] },
        entries: [{ path: s, linkTarget: s, xattrs: [{ name: s, value: Buffer.from(s) }], uname: s }],
      })),
      // lengths of nested messages needing 1, 2 and 3 bytes
      { image: { configJson: Buffer.alloc(127, 1) } },
      { image: { configJson: Buffer.alloc(128, 1) } },
      { image: { configJson: Buffer.alloc(16383, 1) } },
      { image: { configJson: Buffer.alloc(16384, 1) } },
      { image: { configJson: Buffer.alloc(3 << 20, 1) } },
      { image: {}, entries: [{ ...base.entries[0], xattrs: [{ name: 'n', value: Buffer.alloc(200000, 2) }] }] },
    ];
    for (const o of odd) {
      const mine = encodeIndexPb(o as unknown as Index);
      const theirs = pbIndex(o);
      if (!mine.equals(theirs)) throw new Error(`differs for ${JSON.stringify(o, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)).slice(0, 300)}`);
    }
  });

  it('refuses what protobufjs refuses', () => {
    expect(() => encodeIndexPb({ image: 'x' } as unknown as Index)).toThrow(TypeError);
    expect(() => encodeIndexPb({ image: {}, entries: {} } as unknown as Index)).toThrow(TypeError);
    expect(() => encodeIndexPb({ image: {}, entries: [null] } as unknown as Index)).toThrow(TypeError);
    expect(() => encodeIndexPb(null as unknown as Index)).toThrow(TypeError);
    expect(() => pbIndex({ image: 'x' })).toThrow(TypeError);
    expect(() => pbIndex({ image: {}, entries: [null] })).toThrow(TypeError);
  });
});
