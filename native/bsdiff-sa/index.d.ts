/**
 * The bsdiff-sa addon: everything `init()` of src/bsdiff_sa.c exports (diff, cmEncode,
 * cmDecode, cmbEncode, cmbDecode, bsApply, bcExpand, bcRebuild, version). The one declaration of its shape:
 * d4fs loads the addon in one module, src/delta/codecs/native.ts.
 */

/** Options of {@link diff}. */
export interface DiffOptions {
  /** Give up (throw an Error with code 'ETIMEDOUT') after this many milliseconds; 0 or absent: no deadline. */
  deadlineMs?: number;
  /**
   * Mismatch allowance of the greedy scan: a new match is taken when it beats the current
   * alignment by more than this many bytes (bsdiff uses 8). 1..1024.
   */
  minGain?: number;
  /**
   * Threads that scan parts of `newData` at the same time (1..64, default 1; parts are at
   * least 256 KiB). The output is the same for every thread count.
   */
  threads?: number;
  /**
   * 0 (default): the longest match of every position, by a suffix array of `oldData`
   * (libdivsufsort); 1: hash chains of `oldData`'s 8-byte prefixes, walked 24 deep, and the
   * current alignment (linear time; matches shorter than 8 bytes are not found).
   */
  matcher?: 0 | 1;
}

/** BSDIFF40's three streams, uncompressed. */
export interface DiffStreams {
  /** triples of 8-byte sign-magnitude little-endian integers (add length, copy length, seek) */
  ctrl: Buffer;
  /** new - old bytes (mod 256) of the add sections */
  diff: Buffer;
  /** bytes copied verbatim */
  extra: Buffer;
  /** timings of this call, for benchmarks: suffix sort and scan (ms), longest-match lookups */
  stats: { sortMs: number; scanMs: number; searches: number };
}

/** Compute the streams that turn `oldData` into `newData`. Synchronous; throws on bad input, out of memory or deadline. */
export function diff(oldData: Uint8Array, newData: Uint8Array, opts?: DiffOptions): DiffStreams;

/**
 * The context-mixing coder of the diff stream (src/delta/codecs/bsdiff-cm.ts, section
 * method 3), in C: encode `diff` given the old bytes under it (same length). Output is
 * identical to the TypeScript coder's.
 */
export function cmEncode(diff: Uint8Array, oldUnder: Uint8Array): Buffer;

/**
 * Decode `oldUnder.length` diff bytes of method 3; `consumed` is how many bytes of `packed` the coder
 * read. Throws (code 'ECORRUPT') when the coded stream ends early.
 */
export function cmDecode(packed: Uint8Array, oldUnder: Uint8Array): { diff: Buffer; consumed: number };

/**
 * Section method 4 of the container (src/delta/codecs/bsdiff-cm.ts, `cmbEncodeDiff`): which
 * bytes of `diff` are non-zero, coded by the block model in independent segments given the
 * old bytes under them (same length). `threads`: segments coded at once (absent or <= 0:
 * the machine's cores; at most 8); the output is the same for every count.
 */
export function cmbEncode(diff: Uint8Array, oldUnder: Uint8Array, threads?: number): Buffer;

/**
 * Decode a method-4 section into `oldUnder.length` diff bytes, placing the non-zero bytes
 * `literals` in order; `threads` as for {@link cmbEncode}. Throws (code 'ECORRUPT') on a
 * damaged segment table or segment, or literals that do not match the flagged positions.
 */
export function cmbDecode(packed: Uint8Array, oldUnder: Uint8Array, literals: Uint8Array, threads?: number): Buffer;

/** Version of this addon and of libdivsufsort. */
export const version: string;

/**
 * bspatch's loop: for each control triple (x, y, z), x bytes of `diff` plus the `base`
 * bytes under them (bytes outside the base count as zero), then y bytes of `extra`, then a
 * seek of the base by z. Returns `size` bytes; throws (code 'ECORRUPT') when the triples
 * do not cover diff, extra and the output exactly, or a seek leaves ±2^52.
 */
export function bsApply(diff: Uint8Array, extra: Uint8Array, xs: Float64Array, ys: Float64Array, zs: Float64Array, base: Uint8Array, size: number): Buffer;

/**
 * The expanded form of LLVM bitcode file `file` (src/delta/bitcode.ts: expandBitcodeForm), or null
 * when the TypeScript walk must decide (not bitcode this walk reads, a value past 2^64, …).
 */
export function bcExpand(file: Uint8Array): Buffer | null;
/** The file of at most `maxBytes` whose expanded form is `form` (rebuildBitcode), or null when the TypeScript walk must decide (a damaged form, …). */
export function bcRebuild(form: Uint8Array, maxBytes: number): Buffer | null;
