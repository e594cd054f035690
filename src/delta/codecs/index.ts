/**
 * Binary delta codecs of d4fs (DESIGN.md, decision 4): what the rest of d4fs imports.
 *
 *  - ./registry.ts   the table of codecs (one row per codec) and its lookups
 *  - ./choose.ts     choosing among them (`chooseBest`, the `auto` rule) and chunking
 *  - ./zstd.ts, ./zstd-patch.ts, ./bsdiff.ts, ./gzip-member.ts, ./zip-members.ts   one file per codec
 *    (bsdiff's helpers: ./bsdiff-engine.ts, ./bsdiff-container.ts, ./bsdiff-cm.ts,
 *    ./bzip2.ts; its native addon, loaded in one place: ./native.ts)
 *  - src/format/zstd.ts   the project's one zstd module, which the codecs use
 *
 * Everything here is synchronous and self-contained so that it can run inside a worker
 * thread. Decoding never allocates more than the caller-supplied `expectedSize` (plus the
 * patch's own declared, bounded stream sizes), refuses any frame or patch whose declared
 * size differs, and reports damage as a `CORRUPT` D4fsError; it never returns wrong bytes
 * without an error (zstd checksums, CRC-32 and exact-size checks; callers still verify
 * the sha256 of every materialised file, as decision 3 requires). Measurements and the
 * reasoning behind the `auto` rule and the recommended chunk size: src/delta/CODECS.md.
 */
import { ZSTD_MAX_WINDOW_LOG, releaseZstdContexts } from '../../format/zstd';
import { bsdiffPack } from './bsdiff-container';
import { parseBsdiff40 } from './bsdiff-engine';
import { bunzip2 } from './bzip2';
import { patchDictionary } from './zstd-patch';

export * from './registry';
export * from './choose';
export { LEVEL_PRESETS, LEVELS } from './types';
export type { ContentKind, LevelPreset, PatchOptions } from './types';
export { compressFull, decompressFull } from './zstd';
export { ZSTD_MAX_LEVEL, ZSTD_MIN_LEVEL } from '../../format/zstd';
export { AUTO_BSDIFF_MIN, BSDIFF_STREAM_BEST_LEVEL, BSDIFF_STREAM_MIN_LEVEL, setBsdiffApplyEngine } from './bsdiff';
export { BSDIFF_CM_DEFAULT_MAX, BSDIFF_CONTAINER_MAGIC, BSDIFF2_CONTAINER_MAGIC } from './bsdiff-container';
export { BSDIFF_INPROCESS_MAX, BSDIFF_MAX_INPUT, bsdiffDeadlineMs, bsdiffEngine, bsdiffNodeRaw, bsdiffStreams, bsdiffThreads } from './bsdiff-engine';
export { bsdiffSa } from './native';
export { zipMembers } from './zip-members';
export { llvmBitcode } from './llvm-bitcode';
export { isZip } from '../zipmember';
export type { InnerChooser } from './types';

/** Largest zstd window used by zstd-patch (2^27): see src/format/zstd.ts. */
export const ZSTD_PATCH_MAX_WINDOW_LOG = ZSTD_MAX_WINDOW_LOG;

/**
 * Drop this thread's cached zstd contexts (call when a worker goes idle after big
 * jobs; the memory is returned once the event loop runs their finalizers).
 */
export const releaseCodecMemory = releaseZstdContexts;

/** @internal exported for tests: the bzip2 decoder used to re-pack bsdiff output, and other parts of the codecs. */
export const _internal = { bunzip2, parseBsdiff40, patchDictionary, bsdiffPack };
