/**
 * Bounded concurrency with results in submission order: mapLimit (a map with
 * at most N calls in flight) and OrderedWindow (tasks started as they come,
 * consumed in order, bounded in number and size: what makes pool output
 * deterministic while every core works).
 */

/**
 * Runs `fn` over `items` with at most `limit` calls in flight; resolves with
 * the results in input order. After a failure no new call starts; it rejects
 * with the first error once the calls in flight have settled.
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  let failed: { error: unknown } | undefined;
  const lane = async (): Promise<void> => {
    while (next < items.length && !failed) {
      const i = next++;
      try {
        out[i] = await fn(items[i], i);
      } catch (e) {
        failed ??= { error: e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  if (failed) throw failed.error;
  return out;
}

/**
 * Tasks started as they come, their results consumed in submission order,
 * with a bounded number (and size) of tasks in flight.
 */
export class OrderedWindow<T> {
  private readonly queue: { p: Promise<T>; weight: number; consume: (r: T) => Promise<void> | void }[] = [];
  private weightInFlight = 0;

  constructor(private readonly maxTasks: number, private readonly maxWeight = Number.POSITIVE_INFINITY) {}

  /** Start `start()` now (after making room); `consume` runs with its result in submission order. */
  async push(start: () => Promise<T>, consume: (r: T) => Promise<void> | void, weight = 0): Promise<void> {
    while (this.queue.length >= this.maxTasks || (this.queue.length > 0 && this.weightInFlight + weight > this.maxWeight)) await this.drainOne();
    const p = start();
    p.catch(() => undefined); // awaited in order by drainOne
    this.queue.push({ p, weight, consume });
    this.weightInFlight += weight;
  }

  private async drainOne(): Promise<void> {
    const q = this.queue.shift();
    if (!q) return;
    try {
      await q.consume(await q.p);
    } finally {
      this.weightInFlight -= q.weight;
    }
  }

  /** Consume everything still in flight. */
  async flush(): Promise<void> {
    while (this.queue.length) await this.drainOne();
  }

  /** After an error: wait for the tasks still running, ignoring their results. */
  async settle(): Promise<void> {
    await Promise.allSettled(this.queue.map((q) => q.p));
    this.queue.length = 0;
  }
}
