/**
 * The worker pool: results and errors (with their kind) come back to the
 * right caller, task modules load by path, many tasks share few threads,
 * close() fails what is left, idle threads do not keep a process alive.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TaskModule, taskModule, WorkerPool } from './pool';
import { THREAD_IDLE_MS } from './thread';
import { D4fsError } from '../errors';
import { FORMAT_TASKS } from '../format/tasks';
import { zstdFrame } from '../format/zstd';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The task module of these tests, written as a JavaScript file. */
interface TestTasks {
  digest(a: { data: Uint8Array }): string;
  sleep(a: { ms: number; value: number }): Promise<number>;
  fail(a: { kind: 'corrupt' | 'notFound' | 'plain'; message: string }): never;
  loads(a: Record<string, never>): number;
  remember(a: { value: number }): number;
  remembered(a: Record<string, never>): number;
}

const dir = mkdtempSync(join(tmpdir(), 'd4fs-pool-test-'));
const file = join(dir, 'tasks.js');
writeFileSync(
  file,
  `const { createHash } = require('node:crypto');
   const errors = require(${JSON.stringify(require.resolve('../errors'))});
   globalThis.__d4fsTestLoads = (globalThis.__d4fsTestLoads ?? 0) + 1;
   exports.digest = (a) => createHash('sha256').update(a.data).digest('hex');
   exports.sleep = (a) => new Promise((r) => setTimeout(() => r(a.value), a.ms));
   exports.fail = (a) => { throw a.kind === 'plain' ? new Error(a.message) : errors[a.kind](a.message); };
   exports.loads = () => globalThis.__d4fsTestLoads;
   let kept = 0;
   exports.remember = (a) => (kept = a.value);
   exports.remembered = () => kept;
   exports.onThreadIdle = () => { kept = -1; };
   exports.notATask = 42;`,
);
const TASKS: TaskModule<TestTasks> = taskModule<TestTasks>(file);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('WorkerPool', () => {
  it('runs many tasks on few threads, each result to its caller', async () => {
    for (const eager of [false, true]) {
      const pool = new WorkerPool(2, { eager });
      try {
        const inputs = Array.from({ length: 40 }, (_, i) => Buffer.alloc(1000 + i, i));
        const results = await Promise.all(inputs.map((b) => pool.run(TASKS, 'digest', { data: new Uint8Array(b) })));
        expect(results).toEqual(inputs.map(sha));
        expect(pool.queueSize).toBe(0);
      } finally {
        await pool.close();
      }
    }
  });

  it('a lazy pool adds threads only when `growAt` tasks wait', async () => {
    const pool = new WorkerPool(2, { growAt: 2 });
    try {
      expect(pool.started).toBe(1);
      const arg = { ms: 50, value: 1 };
      await Promise.all([pool.run(TASKS, 'sleep', arg), pool.run(TASKS, 'sleep', arg)]); // one running, one waiting
      expect(pool.started).toBe(1);
      await Promise.all([1, 2, 3].map(() => pool.run(TASKS, 'sleep', arg))); // two waiting
      expect(pool.started).toBe(2);
    } finally {
      await pool.close();
    }
    const eager = new WorkerPool(3, { eager: true });
    expect(eager.started).toBe(3);
    await eager.close();
  });

  it('loads a task module once per thread and runs tasks of several modules', async () => {
    const pool = new WorkerPool(1);
    try {
      expect(await pool.run(TASKS, 'loads', {})).toBe(1);
      const frame = zstdFrame(Buffer.from('hello'), 3);
      expect(Buffer.from(await pool.run(FORMAT_TASKS, 'decodeChunk', { stored: frame, rawSize: 5, rawDigest: sha(Buffer.from('hello')) })).toString()).toBe('hello');
      expect(await pool.run(TASKS, 'loads', {})).toBe(1);
    } finally {
      await pool.close();
    }
  });

  it('moves transferred buffers and fails a task with its error and kind, then goes on', async () => {
    const pool = new WorkerPool(1);
    try {
      const data = new Uint8Array(4096).fill(7);
      const r = pool.run(TASKS, 'digest', { data }, [data.buffer as ArrayBuffer]);
      expect(data.byteLength).toBe(0); // moved, not copied
      expect(await r).toBe(sha(new Uint8Array(4096).fill(7)));
      const corrupt = await pool.run(TASKS, 'fail', { kind: 'corrupt', message: 'bad bytes' }).catch((e: unknown) => e);
      expect(corrupt).toBeInstanceOf(D4fsError);
      expect((corrupt as D4fsError).kind).toBe('CORRUPT');
      expect((corrupt as D4fsError).message).toBe('bad bytes');
      const missing = await pool.run(TASKS, 'fail', { kind: 'notFound', message: 'gone' }).catch((e: unknown) => e);
      expect((missing as D4fsError).kind).toBe('NOT_FOUND');
      const plain = await pool.run(TASKS, 'fail', { kind: 'plain', message: 'oops' }).catch((e: unknown) => e);
      expect(plain).toBeInstanceOf(D4fsError);
      expect((plain as Error).message).toMatch(/oops/);
      const frame = zstdFrame(Buffer.from('hello'), 3);
      await expect(pool.run(FORMAT_TASKS, 'decodeChunk', { stored: frame, rawSize: 5, rawDigest: '00'.repeat(32) })).rejects.toThrow(/wrong content/);
      await expect(pool.run(TASKS, 'nope' as 'digest', {} as never)).rejects.toThrow(/no worker task named "nope"/);
      await expect(pool.run(TASKS, 'notATask' as 'digest', {} as never)).rejects.toThrow(/no worker task named "notATask"/);
      await expect(pool.run(taskModule<TestTasks>(join(dir, 'missing.js')), 'digest', { data: new Uint8Array(1) })).rejects.toThrow(/Cannot find module/);
      expect(await pool.run(TASKS, 'sleep', { ms: 1, value: 5 })).toBe(5);
    } finally {
      await pool.close();
    }
  });

  it("a module's onThreadIdle runs once its thread has been idle THREAD_IDLE_MS, not while tasks come", async () => {
    const pool = new WorkerPool(1);
    try {
      expect(await pool.run(TASKS, 'remember', { value: 7 })).toBe(7);
      for (let i = 0; i < 4; i++) {
        await new Promise((r) => setTimeout(r, THREAD_IDLE_MS / 4));
        expect(await pool.run(TASKS, 'remembered', {})).toBe(7); // requests keep coming: kept
      }
      await new Promise((r) => setTimeout(r, THREAD_IDLE_MS + 300));
      expect(await pool.run(TASKS, 'remembered', {})).toBe(-1); // dropped while idle
    } finally {
      await pool.close();
    }
  });

  it('close() fails queued tasks and later runs', async () => {
    const pool = new WorkerPool(1);
    const tasks = Array.from({ length: 5 }, (_, i) => pool.run(TASKS, 'sleep', { ms: 200, value: i }));
    const settled = Promise.allSettled(tasks);
    await pool.close();
    const s = await settled;
    expect(s.some((x) => x.status === 'rejected')).toBe(true);
    for (const x of s) if (x.status === 'rejected') expect(String(x.reason)).toMatch(/worker pool closed/);
    await expect(pool.run(TASKS, 'sleep', { ms: 1, value: 1 })).rejects.toThrow(/closed/);
  });

  it('idle threads do not keep the process alive', async () => {
    const script = `const { WorkerPool } = require(${JSON.stringify(require.resolve('./pool'))});
      const p = new WorkerPool(2, { eager: true });
      p.run({ file: ${JSON.stringify(file)} }, 'digest', { data: Buffer.from('x') }).then((r) => console.log(r));`;
    const t0 = Date.now();
    const r = await promisify(execFile)(process.execPath, ['-e', script], { timeout: 20_000 });
    expect(r.stdout.trim()).toBe(sha(Buffer.from('x')));
    expect(Date.now() - t0).toBeLessThan(15_000); // not the 30 s idle timeout
  });
});
