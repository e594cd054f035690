/**
 * Entry point of each thread of the WorkerPool (pool.ts): runs the task
 * functions of ./worker.ts one request at a time and posts back the result
 * or the error (with its kind: errors.errorToWire).
 */
import { parentPort } from 'node:worker_threads';
import { errorToWire } from '../errors';
import * as tasks from './worker';

export interface Request {
  id: number;
  name: string;
  arg: unknown;
}

export interface Reply {
  id: number;
  result?: unknown;
  error?: unknown;
}

type AnyTask = (arg: unknown) => unknown;

async function handle(port: NonNullable<typeof parentPort>, m: Request): Promise<void> {
  let reply: Reply;
  try {
    const fn = (tasks as unknown as Record<string, AnyTask | undefined>)[m.name];
    if (typeof fn !== 'function') throw new Error(`no worker task named ${JSON.stringify(m.name)}`);
    reply = { id: m.id, result: await fn(m.arg) };
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
