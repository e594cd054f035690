/**
 * Start the worker threads of `convert` before the rest of the program loads:
 * they boot on the other cores while this thread loads its modules and
 * resolves the image, instead of after. Called by cli/ctr-cli.ts first thing.
 */
import type { WorkerPool } from '../workers/pool';

let prestarted: WorkerPool | undefined;

/** Start the pool if `argv` runs `convert` with the default thread count. */
export function prestartPool(argv: string[]): void {
  const args = argv.slice(2);
  if (args.find((a) => !a.startsWith('-')) !== 'convert') return;
  // An explicit thread count (or only help) is left to the command itself.
  if (args.some((a) => /^(-t|--threads|--threadNum|-h|--help)(=|$)/.test(a) || /^-t\d/.test(a))) return;
  const { WorkerPool: Pool } = require('../workers/pool') as typeof import('../workers/pool');
  prestarted = new Pool(undefined, { eager: true });
}

/**
 * The prestarted pool if it has `threads` threads (any count when undefined);
 * the caller owns it and closes it. A pool of another size is closed.
 */
export function takePrestartedPool(threads?: number): WorkerPool | undefined {
  const p = prestarted;
  prestarted = undefined;
  if (p && threads !== undefined && p.threads !== Math.max(1, threads)) {
    void p.close();
    return undefined;
  }
  return p;
}
