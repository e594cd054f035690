/**
 * Run tasks concurrently but consume their results in submission order, with
 * a bounded number (and size) of tasks in flight. This is what makes pool
 * output deterministic while every core works.
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
