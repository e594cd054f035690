/** convert's worker task: contents hashed, chunked and compressed, given digests checked. */
import { createHash } from 'node:crypto';
import { WorkerPool } from '../workers/pool';
import { zstdUnframe } from '../format/zstd';
import { CONVERT_TASKS } from './sink';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('compressContents', () => {
  const pool = new WorkerPool(1);
  afterAll(() => pool.close());

  it('hashes and compresses contents chunk by chunk', async () => {
    const big = Buffer.alloc(3000, 9);
    const r = await pool.run(CONVERT_TASKS, 'compressContents', { items: [{ data: Buffer.from('abc'), size: 3, digest: '' }, { data: big, size: big.length, digest: sha(big) }], level: 3, chunkSize: 1024 });
    expect(r.items.map((i) => i.digest)).toEqual([sha(Buffer.from('abc')), sha(big)]);
    expect(r.items[1].chunks.map((c) => c.rawSize)).toEqual([1024, 1024, 952]);
    let at = 0;
    const out: Buffer[] = [];
    for (const c of r.items.flatMap((i) => i.chunks)) {
      out.push(zstdUnframe(Buffer.from(r.stored.subarray(at, at + c.storedSize)), c.rawSize));
      at += c.storedSize;
    }
    expect(Buffer.concat(out)).toEqual(Buffer.concat([Buffer.from('abc'), big]));
  });

  it('fails on content that does not match its digest', async () => {
    await expect(pool.run(CONVERT_TASKS, 'compressContents', { items: [{ data: Buffer.from('abc'), size: 3, digest: 'ff'.repeat(32) }], level: 3, chunkSize: 1 << 20 })).rejects.toThrow(/content changed/);
  });
});
