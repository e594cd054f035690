/**
 * The zstd-patch codec: one zstd frame compressed with the base region as a raw-content
 * dictionary, a window covering base + target (at most 2^27) and long-distance matching:
 * what `zstd --patch-from=BASE` produces (src/format/zstd.ts). Decoded like a full frame,
 * with the same dictionary. Works on any size; chunk large contents (the window).
 */
import { invalidArgument } from '../../errors';
import { Codec } from '../../format/types';
import { ZSTD_DICT_MAGIC, zstdCompress, zstdDecompressChecked, zstdDeclaredSize } from '../../format/zstd';
import { checkExpectedSize, defineCodec, LEVELS, PatchOptions } from './types';

/**
 * The dictionary zstd-patch uses for `base`: the base itself, minus any leading
 * copies of zstd's dictionary magic (a dictionary that starts with it would be parsed
 * as a trained dictionary instead of raw content, on both sides), and nothing at all
 * when fewer than 8 bytes remain (zstd ignores such dictionaries when encoding).
 */
export function patchDictionary(base: Buffer): Buffer {
  let off = 0;
  while (base.length - off >= 4 && base.readUInt32LE(off) === ZSTD_DICT_MAGIC) off += 4;
  return base.length - off < 8 ? Buffer.alloc(0) : base.subarray(off);
}

/**
 * zstd level of zstd-patch at the `default` preset (the window already covers base and target,
 * with long-distance matching, at every level). Level 19 (btultra2) against 12 on the delta
 * benchmark's changed data files: 7 % smaller (LLVM bitcode 2,089 → 1,972 KiB, gettext
 * catalogues 504 → 436 KiB) for ~2.5x the time of level 12, about that of a bsdiff; on files
 * under 16 KiB, the only patch codec the chooser tries on data there, it costs next to nothing.
 * Executables rarely get here: bsdiff is enough for them (CODECS.md).
 */
export const ZSTD_PATCH_STRONG_LEVEL = 19;

/**
 * The strong level is used when the level-1 patch (the chooser's probe) is at least 1/64 of the
 * unit: its time grows with the unit, what it can save with the patch. libssl's changelog (774 KB
 * of text, a 5.5 KB probe): level 19 saved 392 bytes for +230 ms (idle machine), +0.3-0.4 s of
 * `cdimg diff` wall time on the libssl pair; on the benchmark's corpus the rule gives up 0.8 KB
 * of 7.2 MB (CODECS.md).
 */
export const STRONG_MIN_SHARE = 64;

/** The zstd-patch row of the registry (./registry.ts). */
export const zstdPatch = defineCodec(Codec.ZSTD_PATCH, {
  role: 'patch',
  choice: 'zstd',
  encode: (base: Buffer, target: Buffer, level: number, opts: PatchOptions): Buffer => zstdCompress(target, level, patchDictionary(base), opts.zstdSearchLog),
  decode(stored: Buffer, base: Buffer | null, expectedSize: number): Buffer {
    if (!base) throw invalidArgument('zstd-patch needs a base');
    checkExpectedSize(expectedSize);
    return zstdDecompressChecked(stored, expectedSize, 'zstd-patch', patchDictionary(base));
  },
  declaredSize: zstdDeclaredSize,
  // Cost model (CODECS.md): fast to apply at any size, as small as bsdiff on text and small
  // data files, about 2x larger on machine code: tried at every level, after bsdiff; at
  // `default` at the strong level (issue 14).
  decodeCost: 1,
  fits: (): boolean => true,
  auto: { fast: true, best: true, default: (): boolean => true },
  tryOrder: 1,
  defaultLevel: (targetLength: number, probeLength: number): number => (probeLength * STRONG_MIN_SHARE >= targetLength ? ZSTD_PATCH_STRONG_LEVEL : LEVELS.default),
});
