/**
 * The zstd codec: one self-contained zstd frame (content size and checksum flags on, no
 * dictionary id), decoded single pass into a buffer of exactly the expected size after
 * the frame header was checked (src/format/zstd.ts, the project's zstd module). The full
 * frame is always a candidate of the chooser.
 */
import { Codec } from '../../format/types';
import { zstdCompress, zstdDecompressChecked, zstdDeclaredSize } from '../../format/zstd';
import { checkExpectedSize, defineCodec } from './types';

/**
 * Compress `data` into one deterministic zstd frame with the content size and a
 * checksum. `level` is clamped to [ZSTD_MIN_LEVEL, ZSTD_MAX_LEVEL] (1, 19).
 */
export function compressFull(data: Buffer, level: number): Buffer {
  return zstdCompress(data, level);
}

/**
 * Decompress a frame made by {@link compressFull}. Throws CORRUPT unless the input is
 * exactly one zstd frame with a checksum, whose declared content size is
 * `expectedSize` and whose content decodes to that size with a matching checksum.
 * Allocates exactly `expectedSize` bytes for the output (the declared size is checked
 * before any allocation; `expectedSize` itself must be bounded by the caller).
 */
export function decompressFull(frame: Buffer, expectedSize: number): Buffer {
  checkExpectedSize(expectedSize);
  return zstdDecompressChecked(frame, expectedSize, 'zstd');
}

/** The zstd row of the registry (./registry.ts). */
export const zstd = defineCodec(Codec.ZSTD, {
  role: 'frame',
  encode: (_base: Buffer, target: Buffer, level: number): Buffer => compressFull(target, level),
  decode: (stored: Buffer, _base: Buffer | null, expectedSize: number): Buffer => decompressFull(stored, expectedSize),
  declaredSize: zstdDeclaredSize,
  // cost model: needs no base, the cheapest to decode
  decodeCost: 0,
});
