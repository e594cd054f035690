/**
 * The worker-thread pool (piscina) that does d4fs's CPU work: compression,
 * hashing, patching. The JavaScript thread of a command or daemon only
 * dispatches. Task functions live in ./worker.ts.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import type * as W from './worker';

type Tasks = typeof W;
export type TaskName = { [K in keyof Tasks]: Tasks[K] extends (...a: never[]) => unknown ? K : never }[keyof Tasks];

export class WorkerPool {
  private readonly pool: Piscina;
  readonly threads: number;
  /** `eager`: start every thread now, not one now and the others when work queues up. */
  constructor(threads?: number, opts: { eager?: boolean } = {}) {
    this.threads = Math.max(1, threads ?? availableParallelism());
    this.pool = new Piscina({
      filename: join(__dirname, 'worker.js'),
      minThreads: opts.eager ? this.threads : 1,
      maxThreads: this.threads,
      idleTimeout: 30_000,
      // a real export: otherwise each worker, finding no default export at start-up, falls back to
      // import() of the file and pays for starting the ESM loader (~15 ms of CPU per thread)
      name: 'compressContents',
      // nobody reads piscina's run/wait-time histograms
      recordTiming: false,
    });
  }

  run<K extends TaskName>(name: K, arg: Parameters<Tasks[K]>[0], transferList?: ArrayBuffer[]): Promise<Awaited<ReturnType<Tasks[K]>>> {
    return this.pool.run(arg, { name, transferList }) as Promise<Awaited<ReturnType<Tasks[K]>>>;
  }

  get queueSize(): number {
    return this.pool.queueSize;
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
