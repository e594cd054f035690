/**
 * The one worker-thread pool of d4fs: every CPU-heavy job (compression,
 * hashing, patching, the FUSE manager's content builds, regsync's encoding)
 * runs here; the JavaScript thread of a command or daemon only dispatches.
 *
 * The pool is generic: it runs a named function of a task module, a file
 * that each concern keeps with its code (`src/convert/tasks.ts`,
 * `src/delta/tasks.ts`, …) and names by path with {@link taskModule}.
 * ./thread.ts loads that file in the worker thread on the task's first use,
 * so this folder imports no concern above it, and a thread loads only the
 * task modules it has run. A task's error comes back with its kind
 * (errors.errorToWire in the thread, errors.errorFromWire here).
 *
 * A small pool of our own rather than piscina: a command that converts a
 * small image spends a good part of its time starting up, and piscina costs
 * ~12 ms of module loading in the main thread and ~5 ms more per thread.
 * What it does: one task at a time per thread, tasks queued in order; a
 * lazy pool starts one thread and adds a thread whenever `growAt` tasks
 * wait, up to `threads`; threads beyond the first stop after `idleTimeout` without work;
 * idle threads do not keep the process alive; a thread that dies fails its
 * task and is replaced; close() fails what is queued or running and stops
 * every thread.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { errorFromWire } from '../errors';
import type { Reply, Request } from './thread';

/**
 * A task module: the compiled file the worker threads load (by path, with
 * `require`) and, as a type only, the module's exports (`M`, e.g.
 * `typeof import('./tasks')`). Each exported function of one plain-data
 * argument is a task.
 */
export interface TaskModule<M> {
  readonly file: string;
  /** never set: carries the module's type */
  readonly tasks?: M;
}

/** The task module in compiled file `file` (absolute, e.g. `join(__dirname, 'tasks.js')`). */
export function taskModule<M>(file: string): TaskModule<M> {
  return { file };
}

/** Names of the task functions of a task module's exports. */
export type TaskName<M> = { [K in keyof M]: M[K] extends (a: never) => unknown ? K : never }[keyof M] & string;
/** The argument of task `K`. */
export type TaskArg<M, K extends keyof M> = M[K] extends (a: infer A) => unknown ? A : never;
/** What task `K` resolves to. */
export type TaskResult<M, K extends keyof M> = M[K] extends (a: never) => infer R ? Awaited<R> : never;

interface Task {
  id: number;
  file: string;
  name: string;
  arg: unknown;
  transferList?: ArrayBuffer[];
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

interface Thread {
  worker: Worker;
  task: Task | null;
  idleTimer: NodeJS.Timeout | null;
}

const THREAD_FILE = join(__dirname, 'thread.js');

export class WorkerPool {
  readonly threads: number;
  private readonly min: number;
  private readonly idleTimeout: number;
  private readonly growAt: number;
  private readonly all = new Set<Thread>();
  private readonly idle: Thread[] = [];
  private readonly queue: Task[] = [];
  private nextId = 1;
  private closed = false;

  /**
   * `eager`: start every thread now, not one now and the others when work
   * queues up; `growAt`: how many tasks must wait before a lazy pool adds a
   * thread (default 1: as soon as one waits).
   */
  constructor(threads?: number, opts: { eager?: boolean; idleTimeout?: number; growAt?: number } = {}) {
    this.threads = Math.max(1, threads ?? availableParallelism());
    this.min = opts.eager ? this.threads : 1;
    this.idleTimeout = opts.idleTimeout ?? 30_000;
    this.growAt = Math.max(1, opts.growAt ?? 1);
    for (let i = 0; i < this.min; i++) this.idle.push(this.spawn());
  }

  /** Runs task `name` of task module `mod` with `arg` in a thread (`transferList`: buffers moved, not copied). */
  run<M, K extends TaskName<M>>(mod: TaskModule<M>, name: K, arg: TaskArg<M, K>, transferList?: ArrayBuffer[]): Promise<TaskResult<M, K>> {
    if (this.closed) return Promise.reject(new Error('worker pool is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ id: this.nextId++, file: mod.file, name, arg, transferList, resolve: resolve as (v: unknown) => void, reject });
      this.pump();
    });
  }

  /** Tasks waiting for a thread. */
  get queueSize(): number {
    return this.queue.length;
  }

  /** Threads started and not stopped. */
  get started(): number {
    return this.all.size;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new Error('worker pool closed');
    for (const t of this.queue.splice(0)) t.reject(err);
    const exits: Promise<unknown>[] = [];
    for (const th of this.all) {
      if (th.idleTimer) clearTimeout(th.idleTimer);
      th.task?.reject(err);
      th.task = null;
      exits.push(th.worker.terminate());
    }
    this.all.clear();
    this.idle.length = 0;
    await Promise.all(exits);
  }

  private spawn(): Thread {
    const th: Thread = { worker: new Worker(THREAD_FILE), task: null, idleTimer: null };
    th.worker.on('message', (m: Reply) => this.onReply(th, m));
    th.worker.on('error', (e) => this.onGone(th, e));
    th.worker.on('exit', (code) => this.onGone(th, new Error(`worker thread exited with code ${code}`)));
    th.worker.unref(); // after the listeners: adding a 'message' listener refs the port again
    this.all.add(th);
    return th;
  }

  private pump(): void {
    while (this.queue.length && this.idle.length) this.start(this.idle.pop() as Thread, this.queue.shift() as Task);
    // lazy pools grow while tasks wait
    while (this.queue.length >= this.growAt && this.all.size < this.threads) this.start(this.spawn(), this.queue.shift() as Task);
  }

  private start(th: Thread, t: Task): void {
    if (th.idleTimer) clearTimeout(th.idleTimer);
    th.idleTimer = null;
    th.task = t;
    th.worker.ref();
    const msg: Request = { id: t.id, file: t.file, name: t.name, arg: t.arg };
    try {
      th.worker.postMessage(msg, t.transferList);
    } catch (e) {
      // the argument does not clone: fail the task, keep the thread
      th.task = null;
      t.reject(e);
      this.release(th);
    }
  }

  private onReply(th: Thread, m: Reply): void {
    const t = th.task;
    if (!t || t.id !== m.id) return;
    th.task = null;
    if (m.error !== undefined) t.reject(errorFromWire(m.error));
    else t.resolve(m.result);
    this.release(th);
  }

  /** A thread done with its task: next task, or idle (unreferenced, and stopped after a while beyond the minimum). */
  private release(th: Thread): void {
    if (this.closed || !this.all.has(th)) return;
    const next = this.queue.shift();
    if (next) {
      this.start(th, next);
      return;
    }
    th.worker.unref();
    this.idle.push(th);
    if (this.all.size > this.min) {
      th.idleTimer = setTimeout(() => {
        const i = this.idle.indexOf(th);
        if (i < 0 || this.all.size <= this.min) return;
        this.idle.splice(i, 1);
        this.all.delete(th);
        void th.worker.terminate();
      }, this.idleTimeout);
      th.idleTimer.unref();
    }
  }

  /** A thread died (uncaught error, exit): its task fails; a thread takes its place when needed. */
  private onGone(th: Thread, e: Error): void {
    if (!this.all.has(th)) return;
    this.all.delete(th);
    if (th.idleTimer) clearTimeout(th.idleTimer);
    const i = this.idle.indexOf(th);
    if (i >= 0) this.idle.splice(i, 1);
    th.task?.reject(e);
    th.task = null;
    if (this.closed) return;
    if (this.all.size < this.min) this.idle.push(this.spawn());
    this.pump();
  }
}
