/**
 * The bsdiff codec: bsdiff's control, diff and extra streams (./bsdiff-engine.ts: the
 * native encoder, or bsdiff-node), packed into d4fs's container (./bsdiff-container.ts:
 * the control stream as columns, the diff stream coded by a context-mixing coder that
 * predicts it from the base, or split into zero runs and literals), applied by a
 * bounds-checked bspatch (the addon's loop, or the TypeScript twin below). Applying
 * needs no temporary files and no bzip2, and a hostile patch cannot make it allocate
 * more than `expectedSize` plus the patch's own streams (each bounded by `expectedSize`)
 * and fixed-size model tables, or run longer than linear time. Measurements: CODECS.md.
 */
import { crc32 } from 'node:zlib';
import { D4fsError, corrupt, invalidArgument } from '../../errors';
import { Codec } from '../../format/types';
import type { BsdiffProgram } from './bsdiff-container';
import { BSDIFF_MAX_INPUT, bsdiffStreams } from './bsdiff-engine';
import { bsdiffSaWith } from './native';
import { checkExpectedSize, ContentKind, defineCodec, PatchOptions } from './types';

/**
 * zstd level of the bsdiff streams for a requested level. The diff stream is mostly
 * zeros with sparse small values, where low levels lose badly (libcrypto.so.3: 276 K at
 * level 3, 225 K at 12, 192 K at 19, bsdiff-node's bzip2 199 K). Container v2 splits the
 * diff stream into zero runs and literals first, which level 19 packs faster than level
 * 17 packs the whole stream (esbuild: 0.27 s vs 0.61 s) and smaller (364 K vs 394 K).
 */
export const BSDIFF_STREAM_MIN_LEVEL = 19;

/** Level of bsdiff's streams for `best` (also tries brotli on every section). */
export const BSDIFF_STREAM_BEST_LEVEL = 19;

/**
 * Executables of at least this size (bytes) are coded by bsdiff alone at `default` (the
 * `auto.default` column below: "enough alone"): it beats zstd-patch by 2-3x on machine
 * code whose addresses shifted, and costs about as much time as zstd level 19. Other
 * binary data from EVERY_CODEC_MIN up gets bsdiff and the strong zstd-patch, the smaller
 * kept (./choose.ts, issue 14); on text zstd-patch is as small and much faster.
 */
export const AUTO_BSDIFF_MIN = 4096;

/**
 * The container and its coders (~1,000 lines and their model tables), loaded on first use:
 * the table of codecs is also read where nothing is encoded or decoded (the CLI's --codec
 * choices, validation), and those should not pay for them.
 */
const container = (): typeof import('./bsdiff-container') => require('./bsdiff-container') as typeof import('./bsdiff-container');

/** Encode with the native encoder (or bsdiff-node) and pack into container v2. */
function bsdiffEncode(base: Buffer, target: Buffer, level: number, opts: PatchOptions): Buffer {
  const { BSDIFF_CM_DEFAULT_MAX, bsdiffPack } = container();
  const s = bsdiffStreams(base, target, opts);
  const best = level >= BSDIFF_STREAM_BEST_LEVEL;
  const coder = best || opts.offline === true || s.diff.length <= BSDIFF_CM_DEFAULT_MAX ? 'cm' : 'cmb';
  return bsdiffPack(s, base, target, best ? BSDIFF_STREAM_BEST_LEVEL : BSDIFF_STREAM_MIN_LEVEL, best, coder);
}

/**
 * Apply a d4fs bsdiff container (v1 or v2). Every length is validated before
 * allocation: the control stream may hold at most expectedSize + 1 triples, diff and
 * extra streams must add up to exactly expectedSize, reads outside the base count as
 * zero bytes (as in bspatch). Time and memory are linear in expectedSize and the patch size.
 */
function bsdiffApply(base: Buffer, patch: Buffer, expectedSize: number): Buffer {
  const { BSDIFF_CONTAINER_MAGIC, BSDIFF_HEADER_SIZE, BSDIFF2_CONTAINER_MAGIC, parseBsdiffV1, parseBsdiffV2 } = container();
  const magic = patch.length >= 8 ? patch.toString('latin1', 0, 8) : '';
  let p: BsdiffProgram;
  if (magic === BSDIFF2_CONTAINER_MAGIC) p = parseBsdiffV2(patch, expectedSize, base);
  else if (magic === BSDIFF_CONTAINER_MAGIC && patch.length >= BSDIFF_HEADER_SIZE) p = parseBsdiffV1(patch, expectedSize);
  else throw corrupt('bsdiff: not a d4fs bsdiff patch');
  const out = assemble(p, base, expectedSize);
  if (crc32(out) !== p.crc) throw corrupt('bsdiff: result does not match the patch CRC (wrong base or damaged patch)');
  return out;
}

/** Which loop {@link assemble} runs: the addon's when it loads ('auto'), or the TypeScript one (tests compare both). */
let bsdiffApplyEngine: 'auto' | 'typescript' = 'auto';
export function setBsdiffApplyEngine(e: 'auto' | 'typescript'): void {
  bsdiffApplyEngine = e;
}

/**
 * bspatch's loop: the new bytes from a decoded program. In C when the addon has it (the
 * per-byte add over a 10 MiB binary takes ~35 ms in JavaScript, ~2 ms there); the
 * TypeScript loop is the fallback. Both refuse the same damaged programs.
 */
function assemble(p: BsdiffProgram, base: Buffer, expectedSize: number): Buffer {
  const { xs, ys, zs, diff, extra } = p;
  const nat = bsdiffApplyEngine === 'auto' ? bsdiffSaWith('bsApply') : null;
  if (nat) {
    try {
      return nat.bsApply(diff, extra, xs, ys, zs, base, expectedSize);
    } catch (e) {
      if ((e as { code?: string }).code === 'ECORRUPT') throw corrupt((e as Error).message);
      throw e;
    }
  }
  const nTriples = xs.length;
  const out = Buffer.allocUnsafe(expectedSize);
  let newPos = 0;
  let oldPos = 0;
  let diffPos = 0;
  let extraPos = 0;
  const oldLen = base.length;
  for (let i = 0; i < nTriples; i++) {
    const x = xs[i];
    const y = ys[i];
    // out = diff + old over [lo, hi), diff alone where the base has no bytes.
    diff.copy(out, newPos, diffPos, diffPos + x);
    const lo = Math.min(x, Math.max(0, -oldPos));
    const hi = Math.max(lo, Math.min(x, oldLen - oldPos));
    for (let k = lo; k < hi; k++) out[newPos + k] = out[newPos + k] + base[oldPos + k];
    newPos += x;
    diffPos += x;
    oldPos += x;
    extra.copy(out, newPos, extraPos, extraPos + y);
    newPos += y;
    extraPos += y;
    oldPos += zs[i];
    // Keep oldPos exact (|oldPos| < 2^53): anything that far out is simply outside the base.
    if (!Number.isSafeInteger(oldPos) || Math.abs(oldPos) > 2 ** 52) throw corrupt('bsdiff: seek out of range');
  }
  return out;
}

/** The size a container says its target has, or null when `stored` is not a d4fs bsdiff container. */
function declaredSize(stored: Buffer): number | null {
  const { BSDIFF_CONTAINER_MAGIC, BSDIFF2_CONTAINER_MAGIC } = container();
  const magic = stored.length >= 16 ? stored.toString('latin1', 0, 8) : '';
  if (magic !== BSDIFF_CONTAINER_MAGIC && magic !== BSDIFF2_CONTAINER_MAGIC) return null;
  return Number(stored.readBigUInt64LE(8));
}

/** The bsdiff row of the registry (./registry.ts). */
export const bsdiff = defineCodec(Codec.BSDIFF, {
  role: 'patch',
  choice: 'bsdiff',
  encode: bsdiffEncode,
  decode(stored: Buffer, base: Buffer | null, expectedSize: number): Buffer {
    if (!base) throw invalidArgument('bsdiff needs a base');
    checkExpectedSize(expectedSize);
    return bsdiffApply(base, stored, expectedSize);
  },
  declaredSize,
  // Cost model (CODECS.md): 2-3x smaller than zstd-patch on machine code whose addresses
  // moved, as slow to encode as zstd -19, the slowest to apply; inputs up to 16 MiB.
  decodeCost: 2,
  fits: (baseLength: number, targetLength: number): boolean => baseLength <= BSDIFF_MAX_INPUT && targetLength <= BSDIFF_MAX_INPUT,
  auto: { fast: false, best: true, default: (kind: ContentKind, targetLength: number): boolean => kind === 'executable' && targetLength >= AUTO_BSDIFF_MIN },
  tryOrder: 0,
  // past its deadline, or its helper process died: the chooser falls back to zstd-patch
  givesUp: (e: unknown): boolean => e instanceof D4fsError && (e.kind === 'DEADLINE_EXCEEDED' || e.kind === 'INTERNAL'),
});
