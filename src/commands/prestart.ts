/**
 * Start the worker threads of `convert` before the rest of the program loads:
 * they boot on the other cores while this thread loads its modules and
 * resolves the image, instead of after. Called by cli/ctr-cli.ts first thing.
 */
import type { WorkerPool } from '../workers/pool';

let prestarted: WorkerPool | undefined;

/** The thread count `convert`'s arguments ask for: undefined for the default, NaN when unclear. */
export function threadsOf(args: string[]): number | undefined {
  let n: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const m = /^(?:-t|--threads|--threadNum)(?:=(.*))?$/.exec(args[i]) ?? /^-t(\d+)$/.exec(args[i]);
    if (!m) continue;
    const v = m[1] ?? args[++i];
    n = v !== undefined && /^\d+$/.test(v) ? Number(v) : NaN;
  }
  return n;
}

/** Start the pool if `argv` runs `convert` (not for help or unclear arguments: the command decides then). */
export function prestartPool(argv: string[]): void {
  const args = argv.slice(2);
  if (args.find((a) => !a.startsWith('-')) !== 'convert') return;
  if (args.some((a) => a === '-h' || a === '--help')) return;
  const threads = threadsOf(args);
  if (Number.isNaN(threads) || (threads !== undefined && (threads < 1 || threads > 256))) return;
  // lazy on purpose: only `convert` loads the worker pool here
  const { WorkerPool: Pool } = require('../workers/pool') as typeof import('../workers/pool');
  // An asked-for count starts at once. By default one thread starts and a second joins only when
  // tasks back up behind it (two waiting): on a small image the main thread's reading and parsing
  // set the pace and one thread keeps up, so another would only cost its start-up (~25 ms of CPU,
  // on a machine whose cores are all busy).
  prestarted = threads !== undefined ? new Pool(threads, { eager: true }) : new Pool(undefined, { growAt: 2 });
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
