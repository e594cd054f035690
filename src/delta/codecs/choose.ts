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
 * region, and coding them again at the level (or with bsdiff's suffix array)
 * took 0.4-0.8 s per 4 MiB unit of a 256 MiB text file with 50 edits (issue
 * 18's scale bench) to save tens of bytes. Text among them whose level-1 patch
 * is at least `bsdiffFrom` bytes is also coded by bsdiff's hash matcher
 * (TEXT_BSDIFF, ~17 ms per MB), the smaller kept: typescript.js of a patch
 * release (9.1 MB) 1,348 -> 438 bytes. Below that little is left to gain: a
 * 4 MiB unit with one edit against its 8 MiB base window has a 442-byte
 * level-1 patch (a few bytes per 128 KiB block) and a 166-byte bsdiff patch,
 * for 130 ms; on the scale bench's 256 MiB file that would be ~50 such units
 * (~6 s of CPU for ~14 KB).
 */
export const NEAR_IDENTICAL = { minTarget: 1 << 20, maxPatch: 2048, bsdiffFrom: 1024 };

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

/**
 * At `default`, units at least this long (bytes) are tried with every patch codec that fits,
 * whatever their kind (issue 14; text with bsdiff's hash matcher, TEXT_BSDIFF); shorter ones only
 * with the codecs whose `auto.default` says so (zstd-patch; bsdiff for executables of 4 KiB or
 * more). Measured on the changed files of the delta benchmark (CODECS.md, "Every content gets its
 * best codec"): below 16 KiB bsdiff's patch is larger than zstd-patch's in total (its container and
 * coder tables cost more than they save on a few KiB: 8-16 KiB files 176 K against 156 K) and
 * slower; from 16 KiB up it is smaller on binary data (LLVM bitcode, gettext catalogues) and the
 * better of the two is kept. On text it was smaller by 5 bytes of 224 K there, for a quarter more
 * time, and text was left to zstd-patch; on issue 18's node_modules update (JavaScript bundles of
 * patch releases) bsdiff by hash chains took the changed contents from 50.3 to 40.5 KB (CODECS.md,
 * "Text near its base").
 */
export const EVERY_CODEC_MIN = 16 * 1024;

/**
 * At `default`, once a patch is below this fraction of the relatedness probe's level-1 zstd-patch,
 * the patch codecs after it are not tried: on the benchmark's data files a bsdiff patch under
 * 0.6x the probe was never beaten by zstd-patch 19, which then saves 40 % of its time (0.7x would
 * save 64 % and lose 0.75 % of those files' bytes).
 */
export const PATCH_ENOUGH = 0.6;

/**
 * At `default`, binary data the level-1 probe calls unrelated is looked at again with zstd-patch at
 * the level against the full frame at the level (a candidate anyway); it is related when that patch
 * is below this fraction of the frame. LLVM bitcode: postgres.index.bc of postgresql-15 15.18→15.20
 * (1.6 MB) has a level-1 patch 0.999x the level-1 frame but a level-12 patch 0.93x the level-12
 * frame, and bsdiff / zstd-patch 19 then give 0.87x / 0.84x of the frame kept before (−208 KiB, 4.6 %
 * of that pair's delta); unrelated random data gives ~1.0x.
 */
export const SECOND_LOOK_RATIO = 0.97;

/**
 * The full frame at the level is not coded when a patch is already below this fraction of the
 * level-1 full frame (the probe's): it would have to be smaller still to win. On the delta
 * bench's pairs and the node_modules update (2,101 units; session 19) the full frame at level 12
 * was never below 0.746x the level-1 frame (1 % under 0.78x), and of the 172 units with a patch
 * whose full frame was coded (a patch above 0.25x the level-1 frame, the rule before) it won on
 * none; at 0.7 the frames of 119 more units (20.5 MB) are not coded, every delta the same bytes,
 * ~0.4 s less CPU for postgresql-15's and mariadb-server-core's diffs (of ~16 s and ~11 s).
 */
export const FRAME_MIN_SHARE = 0.7;

/**
 * The options bsdiff runs with on text at `default`: its hash matcher (PatchOptions.bsdiffMatcher:
 * linear time, ~20 ms per MB of target here against ~60 for the suffix array). On text near its
 * base (a patch release's bundles) bsdiff's diff stream, coded against the base, is far smaller than
 * a zstd patch, whose every sequence pays for its offsets: on issue 18's node_modules update
 * typescript.js (9.1 MB) took 1,348 bytes as zstd-patch 1 (kept as near-identical), 1,410 at 12,
 * 1,024 at 19 (4.2 s), and 438 by bsdiff with hash chains (0.2 s). Measurements: CODECS.md, "Text
 * near its base".
 */
const TEXT_BSDIFF: PatchOptions = { bsdiffMatcher: 'hash' };

/** Kind of the unit (of the whole content when the caller says it: a later chunk of an ELF file has no magic). */
function kindOf(target: Buffer, opts: ChooseOptions): ContentKind {
  return opts.kind ?? contentKind(target);
}

/** The patch codecs chooseBest tries for these inputs, in the order it tries them. */
function planCodecs(base: Buffer, target: Buffer, opts: ChooseOptions): PatchCodec[] {
  if (base.length === 0 || target.length < MIN_PATCH_TARGET) return [];
  const fits = (c: PatchCodec): boolean => c.fits(base.length, target.length);
  const only = PATCH_CODECS.find((c) => c.choice === opts.codec);
  if (only) return [fits(only) ? only : LAST_RESORT];
  let kind: ContentKind | undefined;
  const autoTries = (c: PatchCodec): boolean =>
    opts.level === 'best'
      ? c.auto.best
      : opts.level === 'fast'
        ? c.auto.fast
        : target.length >= EVERY_CODEC_MIN || c.auto.default((kind ??= kindOf(target, opts)), target.length);
  return PATCH_CODECS.filter((c) => fits(c) && autoTries(c)).sort((a, b) => a.tryOrder - b.tryOrder);
}

/** Which patch codecs `chooseBest` tries for these inputs (before its probe and its pruning). */
export function patchPlan(base: Buffer, target: Buffer, opts: ChooseOptions): PatchCodecId[] {
  return planCodecs(base, target, opts).map((c) => c.name as PatchCodecId);
}

/**
 * Encode `target` as the smallest of a full zstd frame and the patches against
 * `base` that {@link patchPlan} selects (see CODECS.md for the rule and the numbers
 * behind it). With `codec: 'auto'` and a level other than `best`, patches are skipped
 * when a cheap probe finds base and target unrelated; at `default` a patch codec is also
 * skipped when one tried before it is enough (its `auto.default`, or a patch below
 * PATCH_ENOUGH x the probe's). The result is verified before it is returned: it is decoded
 * (against `base` for patches) and compared with the target byte for byte; a mismatch
 * throws INTERNAL.
 */
export function chooseBest(base: Buffer, target: Buffer, opts: ChooseOptions): ChosenEncoding {
  const level = LEVELS[opts.level];
  if (level === undefined) throw invalidArgument(`unknown level preset ${String(opts.level)}`);
  let plan = planCodecs(base, target, opts);
  const atDefault = opts.codec === 'auto' && opts.level === 'default';
  // text at `default`: bsdiff with its hash matcher (TEXT_BSDIFF), when the plan has it
  const textHash = atDefault && plan.some((c) => c.choice === 'bsdiff') && kindOf(target, opts) === 'text';
  const codecOpts: PatchOptions = textHash ? { ...opts, ...TEXT_BSDIFF } : opts;
  // A cheap level-1 probe: are base and target related at all?
  let full1 = -1;
  let probe = -1;
  // the full frame at the level, when the probe already made it
  let frame: Buffer | undefined;
  const candidates: { codec: BytesCodec; data: Buffer }[] = [];
  if (plan.length > 0 && opts.codec === 'auto' && opts.level !== 'best') {
    const patch1 = LAST_RESORT.encode(base, target, 1, opts);
    probe = patch1.length;
    const nearIdentical = target.length >= NEAR_IDENTICAL.minTarget && patch1.length <= NEAR_IDENTICAL.maxPatch;
    // A near-identical unit only needs to know that its level-1 full frame is over 4 x patch1 (then
    // patch1 is related, kept, and the full frame is not tried, as below): a bound from a 1 MiB prefix
    // tells it for a quarter of the cost of the whole frame, which was 21 of a 4 MiB unit's ~55 ms
    // (issue 18: 64 such units). Otherwise, or when the bound is too low to tell, the whole frame.
    const bound = nearIdentical ? frameSizeLowerBound(target) : 0;
    // a unit the level-1 patch already codes well keeps only bsdiff by hash chains (text), which is
    // cheap, when there is enough to gain (NEAR_IDENTICAL.bsdiffFrom)
    const cheapOnly = (): PatchCodec[] => (textHash && patch1.length >= NEAR_IDENTICAL.bsdiffFrom ? plan.filter((c) => c.choice === 'bsdiff') : []);
    if (bound > 4 * patch1.length) {
      full1 = bound;
      plan = cheapOnly();
      candidates.push({ codec: LAST_RESORT, data: patch1 });
    } else {
      full1 = FRAME_CODEC.encode(base, target, 1, opts).length;
      if (patch1.length >= RELATED_RATIO * full1) {
        // Binary data that level 1 finds unrelated may still be: LLVM bitcode is a bit stream whose
        // common parts are not byte-aligned runs that long, which level 1 (and its long-distance
        // matcher) never finds and stronger matchers do (postgres.index.bc: level-1 patch 0.999x the
        // level-1 frame, zstd-patch 19 0.84x the level-12 frame). Look again at the level, with the
        // full frame that is a candidate anyway (CODECS.md).
        const zl = atDefault && kindOf(target, opts) === 'binary' ? LAST_RESORT.encode(base, target, level, opts) : undefined;
        frame = zl ? FRAME_CODEC.encode(base, target, level, opts) : undefined;
        if (zl && frame && zl.length < SECOND_LOOK_RATIO * frame.length) candidates.push({ codec: LAST_RESORT, data: zl });
        else plan = [];
      } else if (nearIdentical) {
        // a unit (nearly) identical to its base region: a stronger zstd level saves a few bytes for ~0.5 s per MiB
        plan = cheapOnly();
        candidates.push({ codec: LAST_RESORT, data: patch1 });
      }
    }
  }
  const skipped: Partial<Record<CodecId, string>> = {};
  let kind: ContentKind | undefined;
  // a codec's level at `default` for this unit (zstd-patch's strong level, STRONG_MIN_SHARE)
  const levelOf = (codec: PatchCodec): number => codec.defaultLevel?.(target.length, probe) ?? level;
  for (const codec of plan) {
    if (atDefault && candidates.length > 0) {
      // Enough already? A patch by a codec tried before this one that is enough alone for this
      // kind (bsdiff on executables), or far below the probe's level-1 patch (PATCH_ENOUGH). Not on
      // text that this codec would code at a strong level (its probe is a large share of the unit:
      // edited throughout), where that level gains far more over level 1 than on binary data:
      // mariadb's fill_help_tables.sql (2.5 MB) bsdiff 270 K at 0.58x the probe, zstd-patch 19 223 K.
      const strongText = textHash && levelOf(codec) > LEVELS.default;
      const done =
        !strongText &&
        candidates.some(
          (c) =>
            c.codec.role === 'patch' &&
            c.codec.tryOrder < codec.tryOrder &&
            (c.data.length < PATCH_ENOUGH * probe || c.codec.auto.default((kind ??= kindOf(target, opts)), target.length)),
        );
      if (done) break;
    }
    try {
      // the strong level at `default`, unless a codec already gave up on this unit (its time is spent)
      const lv = atDefault && Object.keys(skipped).length === 0 ? levelOf(codec) : level;
      candidates.push({ codec, data: codec.encode(base, target, lv, codecOpts) });
    } catch (e) {
      // bsdiff can hit its deadline (pathological input) or die in its child process:
      // fall back to zstd-patch rather than failing the whole entry.
      if (codec === LAST_RESORT || !codec.givesUp?.(e)) throw e;
      skipped[codec.name as CodecId] = describe(e);
      if (!plan.includes(LAST_RESORT)) candidates.push({ codec: LAST_RESORT, data: LAST_RESORT.encode(base, target, level, {}) });
    }
  }
  // The full frame is always a candidate, unless a patch is already well below even a level-1 full frame.
  const bestPatch = Math.min(...candidates.map((c) => c.data.length));
  if (!(full1 > 0 && bestPatch < FRAME_MIN_SHARE * full1)) candidates.push({ codec: FRAME_CODEC, data: frame ?? FRAME_CODEC.encode(base, target, level, opts) });

  const tried: Partial<Record<CodecId, number>> = {};
  // the smallest of each codec (zstd-patch may be there twice: the second look and the strong level)
  for (const c of candidates) tried[c.codec.name as CodecId] = Math.min(c.data.length, tried[c.codec.name as CodecId] ?? Infinity);
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
  // the wrapped content has its own kind
  const inner: InnerChooser = (b, t) => {
    const r = chooseBest(b, t, { ...opts, kind: undefined });
    return { codec: bytesCodec(r.codec), data: r.data };
  };
  if (whole) {
    // a wrapper that replaces the content's own coding when it applies (llvm-bitcode)
    for (const w of WRAPPER_CODECS) {
      if (!w.replaces) continue;
      const r = w.encode(base, target, inner);
      if (r) return { codec: w.proto, data: r.data, usesBase: r.usesBase };
    }
  }
  const chosen = chooseBest(base, target, opts);
  const c = bytesCodec(chosen.codec);
  let out: EncodedChunk = { codec: c.proto, data: chosen.data, usesBase: c.base !== 'none' };
  if (!whole) return out;
  for (const w of WRAPPER_CODECS) {
    if (w.replaces) continue;
    const r = w.encode(base, target, inner);
    if (r && r.data.length < out.data.length) out = { codec: w.proto, data: r.data, usesBase: r.usesBase };
  }
  return out;
}
