/**
 * `convert`'s worker threads start before the program loads (cli/ctr-cli.ts):
 * only for convert, with the thread count its arguments ask for, and a pool of
 * another size is never handed out.
 */
import { availableParallelism } from 'node:os';
import { CONVERT_TASKS } from '../convert/sink';
import { prestartPool, takePrestartedPool, threadsOf } from './prestart';

const argv = (...a: string[]): string[] => ['node', 'ctr-cli', ...a];

describe('prestarted worker pool', () => {
  afterEach(async () => {
    await takePrestartedPool()?.close();
  });

  it('reads the thread count in every spelling, NaN when unclear', () => {
    expect(threadsOf(['--image', 'oci:x'])).toBeUndefined();
    expect(threadsOf(['-t', '3'])).toBe(3);
    expect(threadsOf(['-t3'])).toBe(3);
    expect(threadsOf(['--threads', '2'])).toBe(2);
    expect(threadsOf(['--threads=5'])).toBe(5);
    expect(threadsOf(['--threadNum', '4'])).toBe(4);
    expect(threadsOf(['-t', 'x'])).toBeNaN();
    expect(threadsOf(['--threads'])).toBeNaN();
  });

  it('starts for convert only, not for help, other commands or bad counts', () => {
    for (const a of [argv('cdimg', 'show', 'x'), argv('convert', '--help'), argv('convert', '-h'), argv('convert', '-t', '0'), argv('convert', '-t', 'many'), argv()]) {
      prestartPool(a);
      expect(takePrestartedPool()).toBeUndefined();
    }
  });

  it('hands out a started pool of the asked size once', async () => {
    prestartPool(argv('--debug', 'convert', '-t', '2', '--image', 'oci:x', '--output', 'y'));
    const pool = takePrestartedPool(2);
    expect(pool?.threads).toBe(2);
    expect(takePrestartedPool(2)).toBeUndefined();
    const r = await pool!.run(CONVERT_TASKS, 'compressContents', { items: [{ data: Buffer.from('abc'), size: 3, digest: '' }], level: 3, chunkSize: 1 << 20 });
    expect(r.items[0].digest).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    await pool!.close();
  });

  it('starts one thread by default, every asked-for thread at once', async () => {
    prestartPool(argv('convert', '--image', 'oci:x', '--output', 'y'));
    const lazy = takePrestartedPool();
    expect(lazy?.started).toBe(1);
    expect(lazy?.threads).toBe(availableParallelism());
    await lazy?.close();
    prestartPool(argv('convert', '-t', '3', '--image', 'oci:x', '--output', 'y'));
    const eager = takePrestartedPool(3);
    expect(eager?.started).toBe(3);
    await eager?.close();
  });

  it('closes a pool of another size instead of handing it out', () => {
    prestartPool(argv('convert', '--threads=1'));
    expect(takePrestartedPool(3)).toBeUndefined();
    expect(takePrestartedPool()).toBeUndefined();
  });
});
