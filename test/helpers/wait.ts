/** Waiting in tests: the one polling helper. */

/**
 * Polls `fn` (every `intervalMs`) until it returns something truthy and
 * resolves with that value; rejects naming `what` after `ms` milliseconds.
 */
export async function eventually<T>(
  fn: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  ms = 30_000,
  what = 'condition',
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${ms} ms`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
