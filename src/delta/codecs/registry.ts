/**
 * The codec registry: one row per codec of .cdimg chunks, and the lookups everyone uses
 * (the CLI's --codec choices, the chain decoder, the differ's workers, regsync's encoder,
 * decoder and index validation). Each row is defined in its codec's file; its columns:
 *
 *  - `name`, `proto` (its value of `Codec` in proto/cdimg.proto) and `base` (what its
 *    chunks refer to: none, a required base region, or an optional one): the format's
 *    columns, from CODEC_FORMATS in src/format/types.ts (src/format/validate.ts checks
 *    them there; the format layer cannot import this one);
 *  - `role`: `frame` (self-contained, always a candidate), `patch` (against a base region;
 *    chooseBest picks among frames and patches), `wrapper` (stores a whole content through
 *    a codec of bytes: gzip-member);
 *  - `encode`, `decode` (and `declaredSize` for codecs of bytes);
 *  - the cost model: `decodeCost` (ties of equal size go to the cheaper), and for patches
 *    `choice` (the --codec value that selects it), `fits` (what it can base on), `auto`
 *    (when `--codec auto` tries it per --level), `tryOrder`, `givesUp` (./choose.ts).
 *
 * A new codec: its file in this folder exporting `defineCodec(Codec.X, {...})`, its row
 * below, and its value in proto/cdimg.proto, `Codec` and CODEC_FORMATS.
 */
import { corrupt, invalidArgument } from '../../errors';
import type { Codec, KnownCodec } from '../../format/types';
import { bsdiff } from './bsdiff';
import { gzipMember } from './gzip-member';
import { zipMembers } from './zip-members';
import { llvmBitcode } from './llvm-bitcode';
import type { AnyCodec, BytesCodec, PatchCodec, PatchOptions, WrapperCodec } from './types';
import { zstd } from './zstd';
import { zstdPatch } from './zstd-patch';

/** The table, in cdimg.proto order (./registry.test.ts checks it against the format's). */
export const CODECS = [
  zstd, //       Codec.ZSTD         frame    base none      ./zstd.ts
  zstdPatch, //  Codec.ZSTD_PATCH   patch    base required  ./zstd-patch.ts    --codec zstd
  bsdiff, //     Codec.BSDIFF       patch    base required  ./bsdiff.ts        --codec bsdiff
  gzipMember, // Codec.GZIP_MEMBER  wrapper  base optional  ./gzip-member.ts
  zipMembers, // Codec.ZIP_MEMBERS  wrapper  base optional  ./zip-members.ts
  llvmBitcode, // Codec.LLVM_BITCODE wrapper base optional ./llvm-bitcode.ts
] as const;

type Row = (typeof CODECS)[number];

// Every codec of cdimg.proto has a row: a value of `Codec` without one fails to compile here.
// But GROUP: a member of a solid group is a slice of a frame shared by several chunks, decoded
// by the format layer (src/format/group.ts, CdimgReader.readFullChunk, readZstdChunk), not a
// codec of one chunk's bytes.
type Unregistered = Exclude<KnownCodec, Row['proto'] | Codec.GROUP>;
const everyCodecHasARow: [Unregistered] extends [never] ? true : Unregistered = true;
void everyCodecHasARow;

/** Name of any codec. */
export type CodecName = Row['name'];
/** Name of a codec of bytes (a frame or a patch): what chooseBest returns, what regsync's index names. */
export type CodecId = Extract<Row, { role: 'frame' | 'patch' }>['name'];
/** Name of a patch codec (needs a base). */
export type PatchCodecId = Extract<Row, { role: 'patch' }>['name'];
/** Value of the `codec` option (`--codec`): `auto`, or the choice of one patch codec. */
export type CodecChoice = 'auto' | Extract<Row, { role: 'patch' }>['choice'];

const ROWS: readonly AnyCodec[] = CODECS;

/** The codecs of bytes (frames and patches), in table order. */
export const BYTES_CODECS: readonly BytesCodec[] = ROWS.filter((c): c is BytesCodec => c.role !== 'wrapper');
/** The patch codecs, in table order. */
export const PATCH_CODECS: readonly PatchCodec[] = ROWS.filter((c): c is PatchCodec => c.role === 'patch');
/** The wrapper codecs, in table order. */
export const WRAPPER_CODECS: readonly WrapperCodec[] = ROWS.filter((c): c is WrapperCodec => c.role === 'wrapper');
/** The self-contained codec of bytes (the full frame). */
export const FRAME_CODEC: BytesCodec = BYTES_CODECS.find((c) => c.role === 'frame') as BytesCodec;

/** "a, b or c". */
export function wordList(words: readonly string[]): string {
  return words.length < 2 ? words.join('') : `${words.slice(0, -1).join(', ')} or ${words[words.length - 1]}`;
}

/** Values of the `codec` option: `auto`, then each patch codec's choice (alphabetical). */
export const CODEC_CHOICES: readonly CodecChoice[] = ['auto', ...PATCH_CODECS.map((c) => c.choice as CodecChoice).sort()];

/** Whether `v` is a value of the `codec` option. */
export function isCodecChoice(v: unknown): v is CodecChoice {
  return (CODEC_CHOICES as readonly unknown[]).includes(v);
}

/** Whether `name` names a codec of bytes. */
export function isCodecId(name: unknown): name is CodecId {
  return BYTES_CODECS.some((c) => c.name === name);
}

/** The codec of bytes `name`; INVALID_ARGUMENT for any other name. */
export function bytesCodec(name: string): BytesCodec {
  const c = BYTES_CODECS.find((x) => x.name === name);
  if (!c) throw invalidArgument(`unknown codec ${String(name)}`);
  return c;
}

/** The patch codec `name`; INVALID_ARGUMENT for any other name. */
export function patchCodec(name: string): PatchCodec {
  const c = PATCH_CODECS.find((x) => x.name === name);
  if (!c) throw invalidArgument(`unknown patch codec ${String(name)}`);
  return c;
}

/** The patch codec selected by `choice` (a value of the `codec` option other than auto). */
export function patchCodecOfChoice(choice: string): PatchCodec {
  const c = PATCH_CODECS.find((x) => x.choice === choice);
  if (!c) throw invalidArgument(`unknown codec "${choice}": use ${wordList(CODEC_CHOICES)}`);
  return c;
}

/** The codec of bytes whose cdimg.proto value is `proto`, if any (the inner codec of a wrapper). */
export function bytesCodecByProto(proto: number): BytesCodec | undefined {
  return BYTES_CODECS.find((c) => c.proto === proto);
}

/** The codec whose cdimg.proto value is `proto`; CORRUPT for a value no row has. */
export function codecByProto(proto: number): AnyCodec {
  const c = ROWS.find((x) => x.proto === proto);
  if (!c) throw corrupt(`unknown codec ${proto}`);
  return c;
}

/**
 * Decode bytes stored with `codec` into exactly `expectedSize` bytes (CORRUPT otherwise).
 * `base`: the base region; ignored by self-contained codecs, required by patches.
 */
export function decodeWith(codec: AnyCodec, stored: Buffer, base: Buffer | null, expectedSize: number): Buffer {
  return codec.role === 'wrapper' ? codec.decode(stored, base, expectedSize, bytesCodecByProto) : codec.decode(stored, base, expectedSize);
}

/**
 * Decode any entry of a codec of bytes: a full frame (base ignored, may be null) or a
 * patch against `base`.
 */
export function decodeEntry(codec: CodecId, data: Buffer, base: Buffer | null, expectedSize: number): Buffer {
  return bytesCodec(codec).decode(data, base, expectedSize);
}

/**
 * Encode `target` relative to `base` with a patch codec. `level` is the zstd level (for
 * bsdiff: of its streams, at least BSDIFF_STREAM_MIN_LEVEL). zstd-patch works on any size
 * (bounded by its window, 2^27); bsdiff refuses inputs above BSDIFF_MAX_INPUT with
 * INVALID_ARGUMENT. Deterministic: the same inputs give the same bytes.
 */
export function encodePatch(base: Buffer, target: Buffer, codec: PatchCodecId, level: number, opts: PatchOptions = {}): Buffer {
  return patchCodec(codec).encode(base, target, level, opts);
}

/**
 * Apply a patch made by {@link encodePatch} to `base`, producing exactly
 * `expectedSize` bytes or throwing CORRUPT. Never allocates more than expectedSize
 * plus, for bsdiff, the patch's own streams (each bounded by expectedSize).
 */
export function applyPatch(base: Buffer, patch: Buffer, codec: PatchCodecId, expectedSize: number): Buffer {
  return patchCodec(codec).decode(patch, base, expectedSize);
}
