/**
 * Entry point of each thread of the WorkerPool (pool.ts): loads a request's
 * task module by path on its first use (kept for the thread's life), runs
 * the named task one request at a time and posts back the result or the
 * error (with its kind: errors.errorToWire).
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
  try {
    reply = { id: m.id, result: await taskOf(m.file, m.name)(m.arg) };
  } catch (e) {
    reply = { id: m.id, error: errorToWire(e) };
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
