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
 * The context-mixing coder of the diff stream (src/delta/bsdiffcm.ts), in C: encode `diff`
 * given the old bytes under it (same length). Output is identical to the TypeScript coder's.
 */
export function cmEncode(diff: Uint8Array, oldUnder: Uint8Array): Buffer;

/**
 * Decode `oldUnder.length` diff bytes; `consumed` is how many bytes of `packed` the coder
 * read. Throws (code 'ECORRUPT') when the coded stream ends early.
 */
export function cmDecode(packed: Uint8Array, oldUnder: Uint8Array): { diff: Buffer; consumed: number };

/** Version of this addon and of libdivsufsort. */
export const version: string;

/**
 * bspatch's loop: for each control triple (x, y, z), x bytes of `diff` plus the `base`
 * bytes under them (bytes outside the base count as zero), then y bytes of `extra`, then a
 * seek of the base by z. Returns `size` bytes; throws (code 'ECORRUPT') when the triples
 * do not cover diff, extra and the output exactly, or a seek leaves ±2^52.
 */
export function bsApply(diff: Uint8Array, extra: Uint8Array, xs: Float64Array, ys: Float64Array, zs: Float64Array, base: Uint8Array, size: number): Buffer;
