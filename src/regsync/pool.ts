/**
 * regsync's front of the worker pool (src/workers/pool.ts): content encoding
 * and decoding and recipe detection (tasks in ./tasks.ts) run off the
 * event loop. Errors come back with their kind.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { taskModule, WorkerPool } from '../workers/pool';
import type * as W from './tasks';

/** regsync's task module (./tasks.ts). */
export const REGSYNC_TASKS = taskModule<typeof W>(join(__dirname, 'tasks.js'));

/** The worker pool running ./tasks.ts tasks. */
export class RegsyncPool {
  private readonly pool: WorkerPool;

  /**
   * @param threads worker threads (default: available parallelism): one
   * starts now, more while tasks wait; those beyond the first stop after 5 s
   * without work
   */
  constructor(readonly threads: number = availableParallelism()) {
    this.pool = new WorkerPool(Math.max(1, threads), { idleTimeout: 5_000 });
  }

  /** Encode a content (see tasks.encode). */
  encode(a: W.EncodeArgs): Promise<W.EncodeResult> {
    return this.pool.run(REGSYNC_TASKS, 'encode', a);
  }

  /** Decode and verify a content (see tasks.decode). */
  decode(a: W.DecodeArgs): Promise<Uint8Array | null> {
    return this.pool.run(REGSYNC_TASKS, 'decode', a);
  }

  /** Detect a compression recipe (see tasks.detect). */
  detect(a: W.DetectArgs): ReturnType<typeof W.detect> {
    return this.pool.run(REGSYNC_TASKS, 'detect', a);
  }

  /** Stop the threads. */
  async close(): Promise<void> {
    await this.pool.close();
  }
}
