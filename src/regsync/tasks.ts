/**
 * Worker-thread tasks of regsync (run through ./pool.ts, a front of the worker
 * pool of src/workers, which loads this file in its threads by path):
 * content encoding and decoding, and compression-recipe detection. Inputs are file
 * ranges or small inline buffers; outputs are plain data.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { bytesCodec, chooseBest, CodecChoice, CodecId, compressFull, decodeWith, InnerChooser, isZip, LEVELS, LevelPreset, llvmBitcode, zipMembers } from '../delta/codecs';
import { isBitcode } from '../delta/bitcode';
import type { WrapperEnc } from './types';
import { corrupt } from '../errors';
import { GzipContentRecipe, gzipRecipeOf, gzipWithRecipe, inflateSingle, looksGzip } from './gzcontent';
import { Detection, detectRecipe } from './recipe';

/** Bytes given inline or as a range of a file. */
export type Bytes = { data: Uint8Array } | { path: string; offset: number; size: number };

async function load(b: Bytes): Promise<Buffer> {
  if ('data' in b) return Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength);
  const out = Buffer.allocUnsafe(b.size);
  const fh = await fsp.open(b.path, 'r');
  try {
    let done = 0;
    while (done < b.size) {
      const { bytesRead } = await fh.read(out, done, b.size - done, b.offset + done);
      if (bytesRead === 0) throw corrupt(`${b.path}: ${b.size} bytes expected at ${b.offset}, file too short`);
      done += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return out;
}

/** Arguments of {@link encode}. */
export interface EncodeArgs {
  target: Bytes;
  base?: Bytes;
  codec: CodecChoice;
  level: LevelPreset;
  /** Try encoding a gzip target as its decompressed content (see ./gzcontent.ts). */
  gzip?: boolean;
}

/** A gzip target encoded through its content. */
export interface GzipEncoding {
  recipe: GzipContentRecipe;
  inner: { size: number; digest: string; codec: CodecId };
  /** The inner content is a patch against the base … decompressed first. */
  usesBase: boolean;
  baseInflate: boolean;
}

/** Result of {@link encode}. */
export interface EncodeResult {
  codec: CodecId | 'gzip' | WrapperEnc;
  data: Uint8Array;
  gzip?: GzipEncoding;
  /** a wrapper codec (zip-members, llvm-bitcode): whether its payload is a patch against the base. */
  usesBase?: boolean;
}

/** Smallest gzip files worth the detour through their content. */
const GZIP_MIN = 512;
/** Bytes of index an encoding through the content costs beyond its payload. */
const GZIP_OVERHEAD = 160;

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Smallest verified encoding of the target: a zstd frame, a patch against the base, or (gzip files) either of those of its content. */
export async function encode(a: EncodeArgs): Promise<EncodeResult> {
  const target = await load(a.target);
  const base = a.base ? await load(a.base) : undefined;
  const innerOf: InnerChooser = (b, t) => {
    const r = b.length ? chooseBest(b, t, { codec: a.codec, level: a.level, offline: true }) : { codec: 'zstd' as const, data: compressFull(t, LEVELS[a.level]) };
    return { codec: bytesCodec(r.codec), data: r.data };
  };
  if (isBitcode(target)) {
    // LLVM bitcode as its values (src/delta/codecs/llvm-bitcode.ts), which replaces the coding of its bytes
    const bc = llvmBitcode.encode(base ?? Buffer.alloc(0), target, innerOf);
    if (bc) return { codec: 'llvm-bitcode', data: bc.data, usesBase: bc.usesBase };
  }
  const plain: EncodeResult = base
    ? (({ codec, data }) => ({ codec, data }))(chooseBest(base, target, { codec: a.codec, level: a.level, offline: true }))
    : { codec: 'zstd', data: compressFull(target, LEVELS[a.level]) };
  if (isZip(target)) {
    // a zip archive as its members (src/delta/codecs/zip-members.ts), when that is smaller
    const z = zipMembers.encode(base ?? Buffer.alloc(0), target, innerOf);
    if (z && z.data.length < plain.data.length) return { codec: 'zip-members', data: z.data, usesBase: z.usesBase };
    return plain;
  }
  if (!a.gzip || target.length < GZIP_MIN || !looksGzip(target)) return plain;
  const g = gzipRecipeOf(target);
  if (!g) return plain;
  const baseInner = base && looksGzip(base) ? inflateSingle(base) : undefined;
  const innerBase = baseInner ?? base;
  const inner = innerBase
    ? chooseBest(innerBase, g.inner, { codec: a.codec, level: a.level, offline: true })
    : { codec: 'zstd' as const, data: compressFull(g.inner, LEVELS[a.level]) };
  if (inner.data.length + GZIP_OVERHEAD >= plain.data.length) return plain;
  const usesBase = bytesCodec(inner.codec).base !== 'none';
  return {
    codec: 'gzip',
    data: inner.data,
    gzip: {
      recipe: g.recipe,
      inner: { size: g.inner.length, digest: sha256(g.inner), codec: inner.codec },
      usesBase,
      baseInflate: usesBase && baseInner !== undefined,
    },
  };
}

/** Arguments of {@link decode}. */
export interface DecodeArgs {
  codec: CodecId | 'gzip' | WrapperEnc;
  /** For codec gzip: the recipe and the inner content's encoding. */
  gzip?: { recipe: GzipContentRecipe; inner: { size: number; digest: string; codec: CodecId }; baseInflate: boolean };
  payload: Bytes;
  base?: Bytes;
  size: number;
  /** Expected "sha256:..." of the result. */
  digest: string;
  /** Write the result here … */
  outPath?: string;
}

/** Decode and verify a content; writes it to outPath or returns it. */
export async function decode(a: DecodeArgs): Promise<Uint8Array | null> {
  const payload = await load(a.payload);
  let out: Buffer;
  if (a.codec === 'gzip') {
    const g = a.gzip;
    if (!g) throw corrupt(`gzip content ${a.digest} without its recipe`);
    let base = a.base ? await load(a.base) : undefined;
    if (base && g.baseInflate) {
      base = inflateSingle(base);
      if (!base) throw corrupt(`gzip content ${a.digest}: its base does not decompress`);
    }
    const innerCodec = bytesCodec(g.inner.codec);
    if (innerCodec.base !== 'none' && !base) throw corrupt(`gzip content ${a.digest} without a base`);
    const inner = innerCodec.decode(payload, innerCodec.base !== 'none' ? (base ?? null) : null, g.inner.size);
    if (sha256(inner) !== g.inner.digest) throw corrupt(`gzip content ${a.digest}: decompressed content does not match its digest`);
    out = gzipWithRecipe(inner, g.recipe);
    if (out.length !== a.size) throw corrupt(`gzip content ${a.digest}: gzip -${g.recipe.level} here gives ${out.length} bytes, not ${a.size} (another gzip version?)`);
  } else if (a.codec === 'zip-members' || a.codec === 'llvm-bitcode') {
    // a wrapper codec of src/delta/codecs: its stored bytes name their inner codec
    const base = a.base ? await load(a.base) : null;
    out = decodeWith(a.codec === 'zip-members' ? zipMembers : llvmBitcode, payload, base, a.size);
  } else {
    // a codec of bytes of the registry (src/delta/codecs)
    const codec = bytesCodec(a.codec);
    if (codec.base !== 'none' && !a.base) throw corrupt(`${a.codec} content ${a.digest} without a base`);
    out = codec.decode(payload, codec.base !== 'none' && a.base ? await load(a.base) : null, a.size);
  }
  const got = sha256(out);
  if (got !== a.digest) throw corrupt(`decoded content hashes to ${got}, expected ${a.digest}`);
  if (a.outPath) {
    await fsp.writeFile(a.outPath, out);
    return null;
  }
  return out;
}

/** Arguments of {@link detect}. */
export interface DetectArgs {
  blobPath: string;
  tarPath: string;
  compression: 'gzip' | 'zstd' | 'none';
  gzipProgram?: boolean;
  goEncoders?: boolean;
  records?: boolean;
}

/** Recipe detection (see ./recipe.ts). */
export function detect(a: DetectArgs): Promise<Detection> {
  return detectRecipe(a.blobPath, a.tarPath, a.compression, { gzipProgram: a.gzipProgram, goEncoders: a.goEncoders, records: a.records });
}
