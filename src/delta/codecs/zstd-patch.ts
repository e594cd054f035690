/**
 * The zstd-patch codec: one zstd frame compressed with the base region as a raw-content
 * dictionary, a window covering base + target (at most 2^27) and long-distance matching:
 * what `zstd --patch-from=BASE` produces (src/format/zstd.ts). Decoded like a full frame,
 * with the same dictionary. Works on any size; chunk large contents (the window).
 */
import { invalidArgument } from '../../errors';
import { Codec } from '../../format/types';
import { ZSTD_DICT_MAGIC, zstdCompress, zstdDecompressChecked, zstdDeclaredSize } from '../../format/zstd';
import { checkExpectedSize, defineCodec } from './types';

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

/** The zstd-patch row of the registry (./registry.ts). */
export const zstdPatch = defineCodec(Codec.ZSTD_PATCH, {
  role: 'patch',
  choice: 'zstd',
  encode: (base: Buffer, target: Buffer, level: number): Buffer => zstdCompress(target, level, patchDictionary(base)),
  decode(stored: Buffer, base: Buffer | null, expectedSize: number): Buffer {
    if (!base) throw invalidArgument('zstd-patch needs a base');
    checkExpectedSize(expectedSize);
    return zstdDecompressChecked(stored, expectedSize, 'zstd-patch', patchDictionary(base));
  },
  declaredSize: zstdDeclaredSize,
  // Cost model (CODECS.md): fast to encode and to apply at any size, as small as bsdiff on
  // text, about 2x larger on machine code: tried at every level, after bsdiff.
  decodeCost: 1,
  fits: (): boolean => true,
  auto: { fast: true, best: true, default: (): boolean => true },
  tryOrder: 1,
});
