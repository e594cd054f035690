/**
 * The codec registry: the table agrees with the format's (every cdimg.proto codec has
 * one row), the values derived from it (CLI choices, plans) are what they were when each
 * place listed the codecs itself, and every row round-trips through the generic paths
 * the chain decoder and the workers use (decodeWith, declaredSize, encodeChunk).
 */
import * as zlib from 'node:zlib';
import { Codec, CODEC_FORMATS, codecFormat } from '../../format/types';
import {
  BYTES_CODECS,
  CODEC_CHOICES,
  CODECS,
  codecByProto,
  bytesCodecByProto,
  decodeWith,
  encodeChunk,
  FRAME_CODEC,
  LEVELS,
  PATCH_CODECS,
  patchPlan,
  WRAPPER_CODECS,
  wordList,
} from './index';
import { D4fsError } from '../../errors';

/** Text of `lines` numbered lines, edited at every `every`-th line. */
function text(lines: number, every = 0): Buffer {
  return Buffer.from(Array.from({ length: lines }, (_, i) => `line ${i}: the quick brown fox ${every && i % every === 0 ? 'leaps' : 'jumps'} over the lazy dog\n`).join(''));
}

/** Something ELF-looking: machine code whose addresses moved is what bsdiff is for. */
function elf(n: number, shift: number): Buffer {
  const b = Buffer.alloc(n);
  b.writeUInt32BE(0x7f454c46, 0);
  for (let i = 8; i + 4 <= n; i += 16) b.writeUInt32LE((i * 2654435761 + shift) >>> 0, i);
  return b;
}

/** A gzip file as GNU gzip -9n writes it (zlib level 9, no name, mtime 0, OS unix). */
function gz(content: Buffer): Buffer {
  const body = zlib.deflateRawSync(content, { level: 9 });
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(zlib.crc32(content), 0);
  trailer.writeUInt32LE(content.length, 4);
  return Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]), body, trailer]);
}

describe('the codec registry', () => {
  it('has one row per codec of cdimg.proto (but GROUP, the format layer\'s solid groups), named and based as the format says', () => {
    const protos = Object.values(Codec).filter((v): v is Codec => typeof v === 'number' && v !== Codec.UNSPECIFIED && v !== Codec.GROUP);
    expect(CODECS.map((c) => c.proto).sort()).toEqual(protos.sort());
    for (const c of CODECS) {
      expect(codecFormat(c.proto)).toEqual({ name: c.name, base: c.base });
      expect(codecByProto(c.proto)).toBe(c);
    }
    expect(new Set(CODECS.map((c) => c.name)).size).toBe(CODECS.length);
    expect(Object.keys(CODEC_FORMATS).length).toBe(CODECS.length + 1);
    expect(() => codecByProto(Codec.GROUP)).toThrow(/unknown codec 5/);
    expect(() => codecByProto(0)).toThrow(D4fsError);
    expect(() => codecByProto(99)).toThrow(/unknown codec 99/);
  });

  it('has one frame codec, decode costs that order ties, and patch codecs that need a base', () => {
    expect(BYTES_CODECS.filter((c) => c.role === 'frame')).toEqual([FRAME_CODEC]);
    expect(FRAME_CODEC.base).toBe('none');
    expect(new Set(BYTES_CODECS.map((c) => c.decodeCost)).size).toBe(BYTES_CODECS.length);
    for (const c of PATCH_CODECS) expect(c.base).toBe('required');
    for (const c of WRAPPER_CODECS) expect(bytesCodecByProto(c.proto)).toBeUndefined();
  });

  it('gives the CLI the choices it always had', () => {
    expect(CODEC_CHOICES).toEqual(['auto', 'bsdiff', 'zstd']);
    expect(wordList(CODEC_CHOICES)).toBe('auto, bsdiff or zstd');
    expect(wordList(BYTES_CODECS.map((c) => c.name))).toBe('zstd, zstd-patch or bsdiff');
  });

  it('plans the patch codecs as the auto rule says (CODECS.md)', () => {
    const exe = elf(64 << 10, 1);
    const txt = text(2000);
    const base = Buffer.alloc(1000, 1);
    expect(patchPlan(base, exe, { codec: 'auto', level: 'default' })).toEqual(['bsdiff', 'zstd-patch']);
    expect(patchPlan(base, exe.subarray(0, 2048), { codec: 'auto', level: 'default' })).toEqual(['zstd-patch']);
    expect(txt.length).toBeGreaterThanOrEqual(16 << 10);
    expect(patchPlan(base, txt, { codec: 'auto', level: 'default' })).toEqual(['bsdiff', 'zstd-patch']);
    expect(patchPlan(base, txt.subarray(0, (16 << 10) - 1), { codec: 'auto', level: 'default' })).toEqual(['zstd-patch']);
    // at default every codec that fits from EVERY_CODEC_MIN (16 KiB) up, whatever the kind (issue 14; text by hash chains)
    const data = Buffer.alloc(16 << 10, 0);
    expect(patchPlan(base, data, { codec: 'auto', level: 'default' })).toEqual(['bsdiff', 'zstd-patch']);
    expect(patchPlan(base, data.subarray(1), { codec: 'auto', level: 'default' })).toEqual(['zstd-patch']);
    expect(patchPlan(base, txt, { codec: 'auto', level: 'default', kind: 'executable' })).toEqual(['bsdiff', 'zstd-patch']);
    expect(patchPlan(base, exe, { codec: 'auto', level: 'fast' })).toEqual(['zstd-patch']);
    expect(patchPlan(base, txt, { codec: 'auto', level: 'best' }).sort()).toEqual(['bsdiff', 'zstd-patch']);
    expect(patchPlan(base, txt, { codec: 'zstd', level: 'best' })).toEqual(['zstd-patch']);
    expect(patchPlan(base, txt, { codec: 'bsdiff', level: 'fast' })).toEqual(['bsdiff']);
    expect(patchPlan(Buffer.alloc(0), txt, { codec: 'bsdiff', level: 'best' })).toEqual([]);
    expect(patchPlan(base, txt.subarray(0, 63), { codec: 'auto', level: 'best' })).toEqual([]);
    // bsdiff stops at 16 MiB: the patch codec that fits everything takes over
    const big = Buffer.alloc((16 << 20) + 1, 7);
    expect(patchPlan(base, big, { codec: 'bsdiff', level: 'default' })).toEqual(['zstd-patch']);
    expect(patchPlan(big, txt, { codec: 'auto', level: 'best' })).toEqual(['zstd-patch']);
  });

  it.each(BYTES_CODECS.map((c) => [c.name, c] as const))('%s round-trips through the generic paths and declares its size', (_name, codec) => {
    const base = text(3000);
    const target = text(3000, 97);
    const data = codec.encode(base, target, LEVELS.default, {});
    expect(codec.declaredSize(data)).toBe(target.length);
    expect(decodeWith(codec, data, codec.base === 'none' ? null : base, target.length).equals(target)).toBe(true);
    expect(codec.declaredSize(Buffer.from('not a payload of any codec'))).toBeNull();
    if (codec.base !== 'none') expect(() => decodeWith(codec, data, null, target.length)).toThrow(D4fsError);
  });

  it('encodes a whole .gz content through the wrapper codec, and decodes it as the chain does', () => {
    const oldGz = gz(text(4000));
    const newGz = gz(text(4000, 101));
    const whole = encodeChunk(oldGz, newGz, { codec: 'auto', level: 'default' }, true);
    expect(whole.codec).toBe(Codec.GZIP_MEMBER);
    expect(whole.usesBase).toBe(true);
    expect(decodeWith(codecByProto(whole.codec), whole.data, oldGz, newGz.length).equals(newGz)).toBe(true);
    // without a base: a frame, of the file or (wrapped) of its content; either needs no base
    const alone = encodeChunk(Buffer.alloc(0), newGz, { codec: 'auto', level: 'default' }, true);
    expect([Codec.ZSTD, Codec.GZIP_MEMBER]).toContain(alone.codec);
    expect(alone.usesBase).toBe(false);
    expect(decodeWith(codecByProto(alone.codec), alone.data, null, newGz.length).equals(newGz)).toBe(true);
    // a part of a content is never wrapped
    expect(encodeChunk(oldGz, newGz, { codec: 'auto', level: 'default' }, false).codec).not.toBe(Codec.GZIP_MEMBER);
  });
});
