/**
 * The worker-thread pool of the FUSE manager: every decompression, patch and
 * hash of a content being materialised runs here (tasks in ./tasks.ts), so
 * the thread that answers FUSE requests only dispatches.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import { errorFromWire } from '../errors';
import type * as T from './tasks';

type Tasks = typeof T;
/** Names of the task functions of ./tasks.ts. */
export type FuseTaskName = { [K in keyof Tasks]: Tasks[K] extends (a: never) => unknown ? K : never }[keyof Tasks];

export class FusePool {
  private readonly pool: Piscina;
  readonly threads: number;

  constructor(threads?: number) {
    this.threads = Math.max(1, threads ?? availableParallelism());
    this.pool = new Piscina({
      filename: join(__dirname, 'tasks.js'),
      minThreads: 1,
      maxThreads: this.threads,
      idleTimeout: 60_000,
    });
  }

  /** Runs task `name` with `arg` in a worker. */
  run<K extends FuseTaskName>(name: K, arg: Parameters<Tasks[K]>[0]): Promise<Awaited<ReturnType<Tasks[K]>>> {
    // errors come back with their kind (the tasks send them through errors.errorToWire)
    return (this.pool.run(arg, { name }) as Promise<Awaited<ReturnType<Tasks[K]>>>).catch((e: unknown) => {
      throw errorFromWire(e);
    });
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
