/**
 * Choosing an encoding (DESIGN.md decision 4: the differ keeps the smallest of
 * {patch, full zstd}): which patch codecs to try for a content, from the registry's cost
 * model (./registry.ts), the smallest verified result, and how large contents are
 * chunked. The measurements behind the `auto` rule and the chunk size: CODECS.md.
 */
import { D4fsError, invalidArgument } from '../../errors';
import { Codec } from '../../format/types';
import { CodecChoice, CodecId, FRAME_CODEC, PATCH_CODECS, PatchCodecId, WRAPPER_CODECS, bytesCodec, decodeWith } from './registry';
import { BytesCodec, ContentKind, describe, InnerChooser, LevelPreset, LEVELS, PatchCodec, PatchOptions } from './types';
import { zstdPatch } from './zstd-patch';

/** Options of {@link chooseBest}. */
export interface ChooseOptions extends PatchOptions {
  /**
   * `auto`: choose patch codecs by content kind and size (see CODECS.md);
   * `bsdiff`: try bsdiff (falls back to zstd-patch above BSDIFF_MAX_INPUT);
   * `zstd`: try zstd-patch only. The full zstd frame is always a candidate.
   */
  codec: CodecChoice;
  /** Effort; `best` tries both patch codecs. */
  level: LevelPreset;
  /** Kind of the whole content when `target` is one chunk of it (a later chunk of an ELF file has no magic). */
  kind?: ContentKind;
}

/** An encoded entry: the codec and its payload. */
export interface Encoded {
  codec: CodecId;
  data: Buffer;
}

/** Result of {@link chooseBest} with the sizes of every candidate, for logs and benchmarks. */
export interface ChosenEncoding extends Encoded {
  /** Size of each candidate that was tried. */
  tried: Partial<Record<CodecId, number>>;
  /** Candidates that were planned but gave up (bsdiff past its deadline), with the reason. */
  skipped: Partial<Record<CodecId, string>>;
}

/**
 * Chunk size recommended to callers that split large files (bytes). Chosen from the
 * measurements in CODECS.md: patch size grows only a few percent from 16 MiB to
 * 4 MiB chunks while bsdiff memory (17x) and a read's materialisation cost shrink
 * proportionally; below 1 MiB the per-chunk overhead and lost cross-chunk matches grow.
 */
export const RECOMMENDED_CHUNK_SIZE = 4 * 1024 * 1024;

/**
 * Base range to patch chunk [chunkOffset, chunkOffset + chunkLength) of a target
 * against: 2 x chunkLength of the base centred on the same relative offset, clipped to
 * the base (the whole base when it is smaller). Measured as good as the whole base for
 * both codecs from 1 MiB chunks up (CODECS.md), and it lets a reader materialise only the
 * base chunks under the range. Record the range in the patch entry; do not recompute it.
 */
export function chunkBaseRange(baseSize: number, targetSize: number, chunkOffset: number, chunkLength: number): { start: number; end: number } {
  const want = 2 * chunkLength;
  if (baseSize <= want) return { start: 0, end: baseSize };
  const center = Math.round(((chunkOffset + chunkLength / 2) * baseSize) / Math.max(1, targetSize));
  const start = Math.min(baseSize - want, Math.max(0, center - chunkLength));
  return { start, end: start + want };
}

/** Classify content by magic numbers and a sample of its bytes. */
export function contentKind(data: Buffer): ContentKind {
  if (data.length >= 4) {
    const m = data.readUInt32BE(0);
    if (
      m === 0x7f454c46 || // ELF
      m === 0xcffaedfe || m === 0xcefaedfe || m === 0xfeedfacf || m === 0xfeedface || // Mach-O
      m === 0x0061736d || // wasm
      (data[0] === 0x4d && data[1] === 0x5a) // PE / MZ
    ) {
      return 'executable';
    }
    if (
      (data[0] === 0x1f && data[1] === 0x8b) || // gzip
      m === 0x28b52ffd || // zstd
      (m === 0xfd377a58 && data[4] === 0x5a) || // xz
      (data[0] === 0x42 && data[1] === 0x5a && data[2] === 0x68) || // bzip2
      m === 0x504b0304 || // zip, jar, apk
      m === 0x89504e47 || // png
      (data[0] === 0xff && data[1] === 0xd8 && data[2] === 0xff) // jpeg
    ) {
      return 'compressed';
    }
  }
  const sample = data.subarray(0, 65536);
  let odd = 0;
  for (let i = 0; i < sample.length; i++) {
    const c = sample[i];
    if (c === 0) return 'binary';
    if (c < 9 || (c > 13 && c < 32) || c === 127) odd++;
  }
  return odd * 100 <= sample.length ? 'text' : 'binary';
}

/**
 * Smallest target (bytes) for which a patch is attempted; below it the frame
 * header overhead dominates and the full frame is as good.
 */
export const MIN_PATCH_TARGET = 64;

/**
 * Relatedness probe: when a level-1 zstd-patch is not at least this fraction smaller
 * than a level-1 full frame, base and target are treated as unrelated (or the target
 * incompressible and unchanged nowhere) and no patch is attempted.
 */
export const RELATED_RATIO = 0.9;

/**
 * Units at least `minTarget` long whose level-1 zstd-patch is at most
 * `maxPatch` bytes keep that patch: they are (nearly) identical to their base
 * region, and coding them again at the level (or with bsdiff) took 0.4-0.8 s
 * per 4 MiB unit of a 256 MiB text file with 50 edits (issue 18's scale
 * bench) to save tens of bytes.
 */
export const NEAR_IDENTICAL = { minTarget: 1 << 20, maxPatch: 2048 };

/** Bytes of a unit whose level-1 full frame {@link frameSizeLowerBound} compresses instead of the whole unit. */
export const FRAME_BOUND_PREFIX = 1 << 20;
/** zstd's largest block: a block's stored size is at most this plus its 3-byte header (a raw block). */
const ZSTD_BLOCK_MAX = 128 * 1024;

/**
 * A lower bound of the size of the level-1 full frame of `target` (FRAME_CODEC), from the frame of
 * its first FRAME_BOUND_PREFIX bytes; 0 when `target` is not at least twice that long.
 *
 * Why it is a bound: zstd codes a frame block by block (at most 128 KiB each), each block from the
 * bytes before it and at most one block ahead (1.5.7's pre-splitter looks at the next 128 KiB), with
 * parameters that depend on the input's size only up to 2^windowLog (level 1: 512 KiB; both inputs
 * are larger). So every block of the prefix's frame but the last two (the ones that may see the
 * prefix end) is a block of the whole frame, and the whole frame is at least as long as those:
 * the prefix's frame minus its header (at most 18 bytes), its checksum (4) and two blocks of at
 * most 128 KiB + 3. test: src/delta/choose-bound.test.ts checks it on text, binary, random and
 * repetitive inputs.
 */
export function frameSizeLowerBound(target: Buffer): number {
  if (target.length < 2 * FRAME_BOUND_PREFIX) return 0;
  const prefix = FRAME_CODEC.encode(Buffer.alloc(0), target.subarray(0, FRAME_BOUND_PREFIX), 1, {}).length;
  return Math.max(0, prefix - 18 - 4 - 2 * (ZSTD_BLOCK_MAX + 3));
}

/** The patch codec of last resort: it fits any input (chooseBest's fallback and its relatedness probe). */
const LAST_RESORT: PatchCodec = zstdPatch;

/** The patch codecs chooseBest tries for these inputs, in the order it tries them. */
function planCodecs(base: Buffer, target: Buffer, opts: ChooseOptions): PatchCodec[] {
  if (base.length === 0 || target.length < MIN_PATCH_TARGET) return [];
  const fits = (c: PatchCodec): boolean => c.fits(base.length, target.length);
  const only = PATCH_CODECS.find((c) => c.choice === opts.codec);
  if (only) return [fits(only) ? only : LAST_RESORT];
  let kind: ContentKind | undefined;
  const autoTries = (c: PatchCodec): boolean =>
    opts.level === 'best' ? c.auto.best : opts.level === 'fast' ? c.auto.fast : c.auto.default((kind ??= opts.kind ?? contentKind(target)), target.length);
  return PATCH_CODECS.filter((c) => fits(c) && autoTries(c)).sort((a, b) => a.tryOrder - b.tryOrder);
}

/** Which patch codecs `chooseBest` tries for these inputs. */
export function patchPlan(base: Buffer, target: Buffer, opts: ChooseOptions): PatchCodecId[] {
  return planCodecs(base, target, opts).map((c) => c.name as PatchCodecId);
}

/**
 * Encode `target` as the smallest of a full zstd frame and the patches against
 * `base` that {@link patchPlan} selects (see CODECS.md for the rule and the numbers
 * behind it). With `codec: 'auto'` and a level other than `best`, patches are skipped
 * when a cheap probe finds base and target unrelated. The result is verified before it
 * is returned: it is decoded (against `base` for patches) and compared with the
 * target byte for byte; a mismatch throws INTERNAL.
 */
export function chooseBest(base: Buffer, target: Buffer, opts: ChooseOptions): ChosenEncoding {
  const level = LEVELS[opts.level];
  if (level === undefined) throw invalidArgument(`unknown level preset ${String(opts.level)}`);
  let plan = planCodecs(base, target, opts);
  // A cheap level-1 probe: are base and target related at all?
  let full1 = -1;
  const candidates: { codec: BytesCodec; data: Buffer }[] = [];
  if (plan.length > 0 && opts.codec === 'auto' && opts.level !== 'best') {
    const patch1 = LAST_RESORT.encode(base, target, 1, opts);
    const nearIdentical = target.length >= NEAR_IDENTICAL.minTarget && patch1.length <= NEAR_IDENTICAL.maxPatch;
    // A near-identical unit only needs to know that its level-1 full frame is over 4 x patch1 (then
    // patch1 is related, kept, and the full frame is not tried, as below): a bound from a 1 MiB prefix
    // tells it for a quarter of the cost of the whole frame, which was 21 of a 4 MiB unit's ~55 ms
    // (issue 18: 64 such units). Otherwise, or when the bound is too low to tell, the whole frame.
    const bound = nearIdentical ? frameSizeLowerBound(target) : 0;
    if (bound > 4 * patch1.length) {
      full1 = bound;
      plan = [];
      candidates.push({ codec: LAST_RESORT, data: patch1 });
    } else {
      full1 = FRAME_CODEC.encode(base, target, 1, opts).length;
      if (patch1.length >= RELATED_RATIO * full1) plan = [];
      else if (nearIdentical) {
        // a unit (nearly) identical to its base region: a stronger coder saves a few bytes for ~0.5 s per MiB
        plan = [];
        candidates.push({ codec: LAST_RESORT, data: patch1 });
      }
    }
  }
  const skipped: Partial<Record<CodecId, string>> = {};
  for (const codec of plan) {
    // At `default` the first patch that encodes is kept: the plan comes smallest-expected
    // first (bsdiff before zstd-patch, which is about 2x larger on machine code: CODECS.md).
    if (opts.level === 'default' && opts.codec === 'auto' && candidates.length > 0) break;
    try {
      candidates.push({ codec, data: codec.encode(base, target, level, opts) });
    } catch (e) {
      // bsdiff can hit its deadline (pathological input) or die in its child process:
      // fall back to zstd-patch rather than failing the whole entry.
      if (codec === LAST_RESORT || !codec.givesUp?.(e)) throw e;
      skipped[codec.name as CodecId] = describe(e);
      if (!plan.includes(LAST_RESORT)) candidates.push({ codec: LAST_RESORT, data: LAST_RESORT.encode(base, target, level, {}) });
    }
  }
  // The full frame is always a candidate, unless a patch is already far below even a level-1 full frame.
  const bestPatch = Math.min(...candidates.map((c) => c.data.length));
  if (!(full1 > 0 && bestPatch * 4 < full1)) candidates.push({ codec: FRAME_CODEC, data: FRAME_CODEC.encode(base, target, level, opts) });

  const tried: Partial<Record<CodecId, number>> = {};
  for (const c of candidates) tried[c.codec.name as CodecId] = c.data.length;
  // on equal size, the cheaper to decode (the entry that needs no base first)
  candidates.sort((a, b) => a.data.length - b.data.length || a.codec.decodeCost - b.codec.decodeCost);
  const best = candidates[0];

  let decoded: Buffer;
  try {
    decoded = decodeWith(best.codec, best.data, base, target.length);
  } catch (e) {
    throw new D4fsError('INTERNAL', `${best.codec.name} encoding does not decode: ${describe(e)}`, { cause: e });
  }
  // byte for byte (as strong as comparing digests, and cheaper than hashing both)
  if (!decoded.equals(target)) {
    throw new D4fsError('INTERNAL', `${best.codec.name} encoding does not reproduce the target`);
  }
  return { codec: best.codec.name as CodecId, data: best.data, tried, skipped };
}

/** One unit of a content as the differ stores it: the codec (cdimg.proto value), the bytes, and whether they need the base. */
export interface EncodedChunk {
  codec: Codec;
  data: Buffer;
  usesBase: boolean;
}

/**
 * Encode one unit of a new content against its base region (empty: none): the smallest
 * of the codecs of bytes ({@link chooseBest}); when the unit is the `whole` content, also
 * each wrapper codec that applies (gzip-member), kept when strictly smaller.
 */
export function encodeChunk(base: Buffer, target: Buffer, opts: ChooseOptions, whole: boolean): EncodedChunk {
  const chosen = chooseBest(base, target, opts);
  const c = bytesCodec(chosen.codec);
  let out: EncodedChunk = { codec: c.proto, data: chosen.data, usesBase: c.base !== 'none' };
  if (!whole) return out;
  // the wrapped content has its own kind
  const inner: InnerChooser = (b, t) => {
    const r = chooseBest(b, t, { ...opts, kind: undefined });
    return { codec: bytesCodec(r.codec), data: r.data };
  };
  for (const w of WRAPPER_CODECS) {
    const r = w.encode(base, target, inner);
    if (r && r.data.length < out.data.length) out = { codec: w.proto, data: r.data, usesBase: r.usesBase };
  }
  return out;
}
