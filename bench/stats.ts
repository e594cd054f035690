/** Small statistics shared by the benchmarks. */

/** The middle value of `xs` (the upper of the two middle ones for an even count). */
export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
