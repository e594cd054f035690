/** Errors of the FUSE manager's worker tasks keep their kind across the thread boundary. */
import { FusePool } from './pool';
import { D4fsError } from '../errors';

describe('FusePool', () => {
  const pool = new FusePool(1);
  afterAll(() => pool.close());

  it('a task that fails comes back as a D4fsError of the right kind', async () => {
    const err = await pool.run('verifyFile', { path: '/nonexistent/d4fs-file', digest: '00'.repeat(32), size: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe('NOT_FOUND');
    expect((err as Error).message).toMatch(/nonexistent\/d4fs-file/);
  });

  it('onIdle: called when the last running task ends, with the tasks since the last call', async () => {
    const calls: number[] = [];
    pool.onIdle = (n) => calls.push(n);
    try {
      const arg = { path: __filename, digest: '00'.repeat(32), size: 1 };
      await Promise.all([pool.run('verifyFile', arg), pool.run('verifyFile', arg), pool.run('verifyFile', arg).catch(() => undefined)]);
      expect(calls).toEqual([3]);
      await pool.run('verifyFile', { ...arg, path: '/nonexistent/d4fs-file' }).catch(() => undefined);
      expect(calls).toEqual([3, 1]);
    } finally {
      pool.onIdle = undefined;
    }
  });

  it('a task that succeeds still returns its result', async () => {
    expect(await pool.run('verifyFile', { path: __filename, digest: '00'.repeat(32), size: 1 })).toBe(false);
  });
});
