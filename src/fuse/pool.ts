/**
 * The FUSE manager's front of the worker pool (src/workers/pool.ts): every
 * decompression, patch and hash of a content being materialised runs in its
 * threads (tasks in ./tasks.ts), so the thread that answers FUSE requests
 * only dispatches. Errors come back with their kind.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { TaskArg, TaskModule, TaskName, TaskResult, WorkerPool } from '../workers/pool';
import type * as T from './tasks';

type Tasks = typeof T;
/** Names of the task functions of ./tasks.ts. */
export type FuseTaskName = TaskName<Tasks>;

/** The FUSE manager's task module (./tasks.ts). */
export const FUSE_TASKS: TaskModule<Tasks> = { file: join(__dirname, 'tasks.js') };

export class FusePool {
  private readonly pool: WorkerPool;
  readonly threads: number;
  private running = 0;
  /** Tasks finished since the pool was last idle. */
  private finished = 0;
  /** Called when the last running task ends, with the number of tasks that ran since the pool was last idle (the manager reclaims memory after bursts). */
  onIdle?: (tasks: number) => void;

  /**
   * `threads` (default: available parallelism): one starts now, more while
   * tasks wait; those beyond the first stop after a minute without work.
   */
  constructor(threads?: number) {
    this.threads = Math.max(1, threads ?? availableParallelism());
    this.pool = new WorkerPool(this.threads, { idleTimeout: 60_000 });
  }

  /** Runs task `name` with `arg` in a worker. */
  run<K extends FuseTaskName>(name: K, arg: TaskArg<Tasks, K>): Promise<TaskResult<Tasks, K>> {
    this.running++;
    return this.pool.run(FUSE_TASKS, name, arg).finally(() => {
      this.finished++;
      if (--this.running > 0) return;
      const n = this.finished;
      this.finished = 0;
      this.onIdle?.(n);
    });
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}
