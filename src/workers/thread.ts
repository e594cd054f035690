/**
 * Entry point of each thread of the WorkerPool (pool.ts): loads a request's
 * task module by path on its first use (kept for the thread's life), runs
 * the named task one request at a time and posts back the result or the
 * error (with its kind: errors.errorToWire).
 *
 * A task module may export `onThreadIdle()`: it is called once the thread has
 * had no request for THREAD_IDLE_MS, to drop what the module keeps for the
 * next task (decoded groups, bases), after which the thread collects its
 * garbage when the process runs with --expose-gc. Per-thread caches are
 * otherwise held for as long as the thread lives: in the FUSE manager, 20-45
 * MiB of decoded groups per thread after reading a few hundred small files of
 * the 151k-entry image (issue 18).
 */
import { parentPort } from 'node:worker_threads';
import { errorToWire } from '../errors';

export interface Request {
  id: number;
  /** compiled task module (absolute path) */
  file: string;
  name: string;
  arg: unknown;
}

export interface Reply {
  id: number;
  result?: unknown;
  error?: unknown;
}

type AnyTask = (arg: unknown) => unknown;

const modules = new Map<string, Record<string, unknown>>();

/** How long a thread waits without a request before its modules drop their caches. */
export const THREAD_IDLE_MS = 500;
let running = 0;
let idleTimer: NodeJS.Timeout | undefined;

/** Each loaded module's `onThreadIdle`, then a collection (when exposed). */
function onIdle(): void {
  idleTimer = undefined;
  if (running) return;
  for (const mod of modules.values()) {
    const fn = mod.onThreadIdle;
    if (typeof fn !== 'function') continue;
    try {
      (fn as () => void)();
    } catch {
      /* a cache that cannot be dropped stays; the next task still runs */
    }
  }
  (globalThis as { gc?: () => void }).gc?.();
}

function taskOf(file: string, name: string): AnyTask {
  let mod = modules.get(file);
  if (!mod) {
    // a task module is named by the concern that owns it (pool.ts: taskModule), never imported here
    mod = require(file) as Record<string, unknown>;
    modules.set(file, mod);
  }
  const fn = mod[name];
  if (typeof fn !== 'function') throw new Error(`no worker task named ${JSON.stringify(name)} in ${file}`);
  return fn as AnyTask;
}

async function handle(port: NonNullable<typeof parentPort>, m: Request): Promise<void> {
  let reply: Reply;
  running++;
  if (idleTimer) clearTimeout(idleTimer);
  idleTimer = undefined;
  try {
    reply = { id: m.id, result: await taskOf(m.file, m.name)(m.arg) };
  } catch (e) {
    reply = { id: m.id, error: errorToWire(e) };
  } finally {
    if (--running === 0) {
      idleTimer = setTimeout(onIdle, THREAD_IDLE_MS);
      idleTimer.unref();
    }
  }
  try {
    port.postMessage(reply);
  } catch (e) {
    // a result or error that does not clone: report that instead
    const why = reply.error !== undefined ? `task ${m.name} failed: ${String((reply.error as Error)?.message ?? reply.error)}` : `result of ${m.name} cannot be sent back: ${(e as Error).message}`;
    port.postMessage({ id: m.id, error: errorToWire(new Error(why)) } satisfies Reply);
  }
}

if (parentPort) {
  const port = parentPort;
  port.on('message', (m: Request) => void handle(port, m));
}
