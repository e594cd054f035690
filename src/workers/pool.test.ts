/**
 * The worker pool: results and errors come back to the right caller, many
 * tasks share few threads, close() fails what is left, idle threads do not
 * keep a process alive.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { WorkerPool } from './pool';
import { zstdFrame } from '../format/zstd';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('WorkerPool', () => {
  it('runs many tasks on few threads, each result to its caller', async () => {
    for (const eager of [false, true]) {
      const pool = new WorkerPool(2, { eager });
      try {
        const inputs = Array.from({ length: 40 }, (_, i) => Buffer.alloc(1000 + i, i));
        const results = await Promise.all(inputs.map((b) => pool.run('compressContents', { items: [{ data: new Uint8Array(b), size: b.length, digest: '' }], level: 3, chunkSize: 1 << 20 })));
        expect(results.map((r) => r.items[0].digest)).toEqual(inputs.map(sha));
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
      const arg = { items: [{ data: Buffer.alloc(1000, 1), size: 1000, digest: '' }], level: 3, chunkSize: 1 << 20 };
      await Promise.all([pool.run('compressContents', arg), pool.run('compressContents', arg)]); // one running, one waiting
      expect(pool.started).toBe(1);
      await Promise.all([1, 2, 3].map(() => pool.run('compressContents', arg))); // two waiting
      expect(pool.started).toBe(2);
    } finally {
      await pool.close();
    }
    const eager = new WorkerPool(3, { eager: true });
    expect(eager.started).toBe(3);
    await eager.close();
  });

  it('moves transferred buffers and fails a task with its error, then goes on', async () => {
    const pool = new WorkerPool(1);
    try {
      const data = new Uint8Array(4096).fill(7);
      const r = pool.run('compressContents', { items: [{ data, size: data.length, digest: '' }], level: 1, chunkSize: 1 << 20 }, [data.buffer as ArrayBuffer]);
      expect(data.byteLength).toBe(0); // moved, not copied
      expect((await r).items[0].digest).toBe(sha(new Uint8Array(4096).fill(7)));
      const frame = zstdFrame(Buffer.from('hello'), 3);
      await expect(pool.run('decodeChunk', { stored: frame, rawSize: 5, rawDigest: '00'.repeat(32) })).rejects.toThrow(/wrong content/);
      await expect(pool.run('compressContents', { items: [{ data: Buffer.from('abc'), size: 3, digest: 'ff'.repeat(32) }], level: 3, chunkSize: 1 << 20 })).rejects.toThrow(/content changed/);
      await expect(pool.run('nope' as 'decodeChunk', {} as never)).rejects.toThrow(/no worker task named "nope"/);
      expect(Buffer.from(await pool.run('decodeChunk', { stored: frame, rawSize: 5, rawDigest: sha(Buffer.from('hello')) })).toString()).toBe('hello');
    } finally {
      await pool.close();
    }
  });

  it('close() fails queued tasks and later runs', async () => {
    const pool = new WorkerPool(1);
    const big = Buffer.alloc(8 << 20, 1);
    const tasks = Array.from({ length: 5 }, () => pool.run('compressContents', { items: [{ data: big, size: big.length, digest: '' }], level: 19, chunkSize: 1 << 20 }));
    const settled = Promise.allSettled(tasks);
    await pool.close();
    const s = await settled;
    expect(s.some((x) => x.status === 'rejected')).toBe(true);
    for (const x of s) if (x.status === 'rejected') expect(String(x.reason)).toMatch(/worker pool closed/);
    await expect(pool.run('compressContents', { items: [], level: 3, chunkSize: 1 << 20 })).rejects.toThrow(/closed/);
  });

  it('idle threads do not keep the process alive', async () => {
    const script = `const { WorkerPool } = require(${JSON.stringify(require.resolve('./pool'))});
      const p = new WorkerPool(2, { eager: true });
      p.run('compressContents', { items: [{ data: Buffer.from('x'), size: 1, digest: '' }], level: 3, chunkSize: 1 << 20 }).then((r) => console.log(r.items[0].digest));`;
    const t0 = Date.now();
    const r = await promisify(execFile)(process.execPath, ['-e', script], { timeout: 20_000 });
    expect(r.stdout.trim()).toBe(sha(Buffer.from('x')));
    expect(Date.now() - t0).toBeLessThan(15_000); // not the 30 s idle timeout
  });
});
