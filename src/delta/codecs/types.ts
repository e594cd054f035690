/**
 * What the codecs of src/delta/codecs/ share: the shape of a registry row, the effort
 * presets, the options that reach the encoders, and small helpers. The table itself is
 * ./registry.ts; how they are chosen, ./choose.ts.
 */
import { constants as bufferConstants } from 'node:buffer';
import { invalidArgument } from '../../errors';
import { CODEC_FORMATS, KnownCodec } from '../../format/types';

/** Effort presets of the chooser. */
export type LevelPreset = 'fast' | 'default' | 'best';

/** zstd compression level used for each preset (full frames, zstd-patch and bsdiff streams). */
export const LEVELS: Readonly<Record<LevelPreset, number>> = Object.freeze({ fast: 3, default: 12, best: 19 });

/** The presets, least effort first (the values of `--level`). */
export const LEVEL_PRESETS = Object.keys(LEVELS) as readonly LevelPreset[];

/** Coarse content kinds of the `auto` rule (see `contentKind` in ./choose.ts). */
export type ContentKind = 'executable' | 'text' | 'compressed' | 'binary';

/** Knobs that reach the encoders (so far only bsdiff's). */
export interface PatchOptions {
  /**
   * Deadline for one bsdiff run (ms). When set, bsdiff-node always runs in a child process
   * that is killed at the deadline; default `bsdiffDeadlineMs()` of ./bsdiff-engine.ts for
   * inputs above `BSDIFF_INPROCESS_MAX`.
   */
  bsdiffDeadlineMs?: number;
  /**
   * Directory for bsdiff's temporary files (bsdiff-node only works on files; up to
   * base + target + patch bytes, removed before returning). Default os.tmpdir().
   */
  tmpDir?: string;
  /**
   * Which encoder computes bsdiff's streams: the native `bsdiff-sa` addon (default when
   * it loads) or `bsdiff-node` (the fallback; also used by tests as a cross-check).
   */
  bsdiffEngine?: 'bsdiff-sa' | 'bsdiff-node';
  /** Threads of the native encoder's scan (default `bsdiffThreads()`); the patch is the same for any count. */
  bsdiffThreads?: number;
  /**
   * How the native encoder finds matches: `suffix-array` (default: the longest match at every
   * position, ~45 ms per MiB of base to sort) or `hash` (chains of 16-byte prefixes walked 32
   * deep and the current alignment: linear time, for text near its base; CODECS.md). bsdiff-node
   * ignores it.
   */
  bsdiffMatcher?: 'suffix-array' | 'hash';
  /**
   * zstd-patch only: log2 of the match candidates its binary-tree levels (13 and up) compare at
   * each position (zstd's searchLog; absent: the level's own). Lower is faster and larger.
   */
  zstdSearchLog?: number;
  /**
   * The patch is applied offline, in bulk (a registry patch: `registry apply`, incremental
   * pull and push rebuild whole files), never read lazily through the FUSE mount: bsdiff
   * codes diff streams of every length with the whole context-mixing model (container
   * section method 3, as at `best`), not only up to BSDIFF_CM_DEFAULT_MAX, above which the
   * default's block model (method 4) keeps a patched file's first open fast.
   */
  offline?: boolean;
}

/** A codec of bytes: chooseBest picks among them; `frame` ones are self-contained, `patch` ones need a base. */
interface BytesCodecImpl {
  readonly role: 'frame' | 'patch';
  /**
   * Encode `target` (against `base` for a patch) at zstd level `level`. Deterministic:
   * the same inputs give the same bytes (with the same dependency versions).
   */
  readonly encode: (base: Buffer, target: Buffer, level: number, opts: PatchOptions) => Buffer;
  /**
   * Decode `stored` (against `base` for a patch) into exactly `expectedSize` bytes or
   * throw CORRUPT; never allocates more than `expectedSize` plus the payload's own
   * streams, each bounded by it.
   */
  readonly decode: (stored: Buffer, base: Buffer | null, expectedSize: number) => Buffer;
  /** The size `stored` decodes to, read from its header without decoding; null when it has none. */
  readonly declaredSize: (stored: Buffer) => number | null;
  /** Cost model: relative cost of decoding; of two encodings of equal size the cheaper one is kept. */
  readonly decodeCost: number;
}

/** The self-contained codec (the full frame, always a candidate). */
export interface FrameCodecImpl extends BytesCodecImpl {
  readonly role: 'frame';
}

/** A patch codec; the fields after `role` are its cost model, read by ./choose.ts. */
export interface PatchCodecImpl extends BytesCodecImpl {
  readonly role: 'patch';
  /** Value of `--codec` (the CLI's and the library's `codec` option) that selects it alone. */
  readonly choice: string;
  /** What it can base on: whether it handles a base and a target of these sizes. */
  readonly fits: (baseLength: number, targetLength: number) => boolean;
  /**
   * When `codec: 'auto'` tries it, per level preset (`kind`: of the whole content). At `default`
   * every patch codec that fits is tried on units of at least `EVERY_CODEC_MIN` bytes (./choose.ts);
   * `default` says when it is tried below that, and when it is enough alone: once a codec whose
   * `default` is true for the unit has encoded it, the codecs after it are not tried (bsdiff on
   * executables: zstd-patch would not beat it, CODECS.md).
   */
  readonly auto: { readonly fast: boolean; readonly best: boolean; readonly default: (kind: ContentKind, targetLength: number) => boolean };
  /** Order of trying (lower first): the codec expected smallest first. */
  readonly tryOrder: number;
  /**
   * zstd level it encodes with at the `default` preset, for a unit of this length whose level-1
   * zstd-patch (the chooser's probe) has `probeLength` bytes (absent: the preset's, `LEVELS.default`).
   * zstd-patch's strong level: CODECS.md, "Every content gets its best codec".
   */
  readonly defaultLevel?: (targetLength: number, probeLength: number) => number;
  /** Whether an error of its encoder only means "gave up on this input" (a deadline): the chooser goes on without it. */
  readonly givesUp?: (e: unknown) => boolean;
}

/** Encodes `target` with the best codec of bytes (the chooser, with the caller's options). */
export type InnerChooser = (base: Buffer, target: Buffer) => { codec: BytesCodec; data: Buffer };

/** A codec that stores a content through a codec of bytes (gzip-member: a .gz file as its decompressed content). */
export interface WrapperCodecImpl {
  readonly role: 'wrapper';
  /** Encode a whole content through `inner`; undefined when the codec does not apply to it. */
  readonly encode: (base: Buffer, target: Buffer, inner: InnerChooser) => { data: Buffer; usesBase: boolean } | undefined;
  /** As for a codec of bytes; `inner` finds the codec of bytes the payload names. */
  readonly decode: (stored: Buffer, base: Buffer | null, expectedSize: number, inner: (proto: number) => BytesCodec | undefined) => Buffer;
  /**
   * When it applies, the content's own bytes are not coded at all (encodeChunk): the codec's
   * form is measured never to lose more than a few bytes to them, and coding both doubled the
   * time (llvm-bitcode; see CODECS.md).
   */
  readonly replaces?: boolean;
}

/** The columns every row has: its value in cdimg.proto, and its name and base rule from the format's table. */
export interface CodecIdentity {
  readonly proto: KnownCodec;
  readonly name: string;
  readonly base: (typeof CODEC_FORMATS)[KnownCodec]['base'];
}

export type FrameCodec = CodecIdentity & FrameCodecImpl;
export type PatchCodec = CodecIdentity & PatchCodecImpl;
export type BytesCodec = FrameCodec | PatchCodec;
export type WrapperCodec = CodecIdentity & WrapperCodecImpl;
export type AnyCodec = BytesCodec | WrapperCodec;

/**
 * A registry row: the codec `proto` of cdimg.proto, named and based as the format's table
 * (CODEC_FORMATS in src/format/types.ts) says, with its implementation.
 */
export function defineCodec<const P extends KnownCodec, const I extends FrameCodecImpl | PatchCodecImpl | WrapperCodecImpl>(
  proto: P,
  impl: I,
): { readonly proto: P } & (typeof CODEC_FORMATS)[P] & I {
  return { proto, ...CODEC_FORMATS[proto], ...impl };
}

/** Refuse an expected size no buffer can have. */
export function checkExpectedSize(expectedSize: number): void {
  if (!Number.isSafeInteger(expectedSize) || expectedSize < 0 || expectedSize > bufferConstants.MAX_LENGTH) {
    throw invalidArgument(`invalid expected size ${expectedSize}`);
  }
}

export function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
