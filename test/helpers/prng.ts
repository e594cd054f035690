/** A deterministic xorshift32 generator in [0, 1) (tests must not depend on luck). */
export function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

/** Integers in [0, n) from a {@link prng}. */
export class Prng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = prng(seed);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/**
 * The same generator as its 32-bit states: integers in [0, 2^32), the same
 * sequence for the same seed (prng's values times 2^32, exact), for tests
 * that pick bytes and offsets with `& mask` and `% n`.
 */
export function prng32(seed: number): () => number {
  const next = prng(seed);
  return () => next() * 0x100000000;
}
