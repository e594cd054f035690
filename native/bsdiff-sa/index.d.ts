/** Options of {@link diff}. */
export interface DiffOptions {
  /** Give up (throw an Error with code 'ETIMEDOUT') after this many milliseconds; 0 or absent: no deadline. */
  deadlineMs?: number;
  /**
   * Mismatch allowance of the greedy scan: a new match is taken when it beats the current
   * alignment by more than this many bytes (bsdiff uses 8). 1..1024.
   */
  minGain?: number;
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

/** Version of this addon and of libdivsufsort. */
export const version: string;
