/**
 * The content cache's fast paths (issue 18): small contents of one zstd
 * chunk are decoded into memory on the serving thread, verified, and never
 * written as cache files; large contents are built chunk by chunk with a
 * read-ahead window and checked as a whole by a worker thread once the last
 * chunk lands (the reads do not wait for it). Then the same small files are read cold through a
 * fuse3 mount of this process.
 *
 * Needs root and /dev/fuse for the mount (and buildDirImage).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs, { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { convertImage } from '../convert/convert';
import { CdimgReader } from '../format/reader';
import { WorkerPool } from '../workers/pool';
import { readMountInfoSync } from '../util/mountinfo';
import { buildDirImage } from '../../test/fixtures/debimages';
import { ContentCache } from './cache';
import { ChainIndex } from './chain-index';
import { Fuse3FileSystem } from './fuse3';
import { FusePool } from './pool';
import { SMALL_MAX_BYTES } from './small';

jest.setTimeout(180_000);
const run = promisify(execFile);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const HEX_RE = /^[0-9a-f]{64}$/;
const SMALL_FILES = 400;
const BIG = 17 * 1024 * 1024 + 999;

describe('content cache: small contents from memory, large ones chunk by chunk', () => {
  let dir: string;
  let cdimg: string;
  let pool: FusePool;
  const log = pino({ level: 'silent' });
  /** rel path → bytes */
  const files = new Map<string, Buffer>();
  let big: Buffer;

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4fs-cache-');
    const src = path.join(dir, 'src');
    for (let d = 0; d < 8; d++) await fsp.mkdir(path.join(src, `d${d}`), { recursive: true });
    for (let i = 0; i < SMALL_FILES; i++) {
      // text-like, 0.5-6 KiB, distinct
      const n = 512 + ((i * 2654435761) % (5.5 * 1024));
      const b = Buffer.from(`${i} ${randomBytes(Math.ceil(n / 2)).toString('hex')}`.slice(0, n));
      const rel = `d${i % 8}/f${i}.txt`;
      files.set(rel, b);
      await fsp.writeFile(path.join(src, rel), b);
    }
    // just over the cap: goes through a worker and a cache file
    const edge = randomBytes(SMALL_MAX_BYTES + 1);
    files.set('edge.bin', edge);
    await fsp.writeFile(path.join(src, 'edge.bin'), edge);
    big = randomBytes(BIG);
    await fsp.writeFile(path.join(src, 'big.bin'), big);
    const img = await buildDirImage([src], { layout: path.join(dir, 'layout'), tag: 'cache' });
    cdimg = path.join(dir, 'cache.cdimg');
    const wp = new WorkerPool(2);
    try {
      await convertImage({ ref: img.ref, output: cdimg, pool: wp });
    } finally {
      await wp.close();
    }
    pool = new FusePool(2);
  });

  afterAll(async () => {
    await pool?.close();
    if (dir) {
      for (const { mountpoint } of readMountInfoSync()) {
        if (mountpoint.startsWith(dir)) await run('umount', ['-l', '-c', mountpoint]).catch(() => undefined);
      }
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  const hexOf = async (rel: string): Promise<string> => {
    const r = await CdimgReader.open(cdimg);
    try {
      return r.byPath.get(rel)!.digest.toString('hex');
    } finally {
      await r.close();
    }
  };

  const readAll = async (cache: ContentCache, chain: ChainIndex, hex: string, size: number, piece = 128 * 1024): Promise<Buffer> => {
    const ref = await cache.acquire(hex, size, chain);
    try {
      const out = Buffer.alloc(size);
      for (let pos = 0; pos < size; pos += piece) {
        const len = Math.min(piece, size - pos);
        if (!ref.complete) await ref.prepare(pos, len);
        const view = out.subarray(pos, pos + len);
        expect(await ref.readInto(view, len, pos)).toBe(len);
      }
      return out;
    } finally {
      ref.release();
    }
  };

  test('small contents: right bytes, decoded once, no cache file; the one past the cap gets one', async () => {
    const cacheDir = path.join(dir, 'cache-small');
    const cache = await ContentCache.open({ dir: cacheDir, pool, log });
    const chain = await ChainIndex.open([cdimg]);
    try {
      const r = await CdimgReader.open(cdimg);
      const entries = [...files.keys()].map((rel) => ({ rel, hex: r.byPath.get(rel)!.digest.toString('hex') }));
      await r.close();
      // cold, several at a time (as the kernel sends them)
      for (let i = 0; i < entries.length; i += 8) {
        await Promise.all(
          entries.slice(i, i + 8).map(async ({ rel, hex }) => {
            const want = files.get(rel)!;
            const got = await readAll(cache, chain, hex, want.length, 4096);
            expect({ rel, ok: got.equals(want) }).toEqual({ rel, ok: true });
          }),
        );
      }
      const st = cache.stats();
      expect(st.memoryDecodes).toBe(SMALL_FILES);
      expect(st.wholeBuilds).toBe(1); // edge.bin only
      expect(st.failures).toBe(0);
      const names = (await fsp.readdir(cacheDir)).filter((n) => HEX_RE.test(n));
      expect(names).toEqual([await hexOf('edge.bin')]);
      // again: from memory, nothing decoded or built
      const { rel, hex } = entries[7];
      expect((await readAll(cache, chain, hex, files.get(rel)!.length)).equals(files.get(rel)!)).toBe(true);
      expect(cache.stats().memoryDecodes).toBe(SMALL_FILES);
      expect(cache.stats().memoryHits).toBe(1);
      expect(cache.has(hex)).toBe(true);
    } finally {
      cache.close();
    }
  });

  test('a small content whose stored chunk is damaged is CORRUPT and not kept', async () => {
    const copy = path.join(dir, 'damaged.cdimg');
    await fsp.copyFile(cdimg, copy);
    const rel = 'd3/f3.txt';
    const r = await CdimgReader.open(copy);
    const hex = r.byPath.get(rel)!.digest.toString('hex');
    const c = r.blob(hex)!.chunks[0];
    await r.close();
    const fd = fs.openSync(copy, 'r+');
    const b = Buffer.alloc(1);
    const at = c.offset + Math.floor(c.storedSize / 2);
    fs.readSync(fd, b, 0, 1, at);
    b[0] ^= 0x40;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);
    const cache = await ContentCache.open({ dir: path.join(dir, 'cache-damaged'), pool, log });
    const chain = await ChainIndex.open([copy]);
    try {
      // a prefetch of it (a lookup) fails quietly and keeps nothing
      cache.prefetchSmall(hex, files.get(rel)!.length, chain);
      expect(cache.stats().prefetches).toBe(1);
      await new Promise((r) => setTimeout(r, 50));
      expect(cache.has(hex)).toBe(false);
      for (let i = 0; i < 2; i++) {
        const err = await cache.acquire(hex, files.get(rel)!.length, chain).then(
          () => undefined,
          (e: unknown) => e as { kind?: string },
        );
        expect(err?.kind).toBe('CORRUPT');
      }
      expect(cache.has(hex)).toBe(false);
      expect(cache.stats().failures).toBe(2);
    } finally {
      cache.close();
    }
  });

  test('a large content read in order: read ahead, checked as a whole by a worker thread once built, promoted', async () => {
    const cacheDir = path.join(dir, 'cache-big');
    const cache = await ContentCache.open({ dir: cacheDir, pool, log });
    const chain = await ChainIndex.open([cdimg]);
    const hex = await hexOf('big.bin');
    const spy = jest.spyOn(pool, 'run');
    try {
      expect(sha(await readAll(cache, chain, hex, BIG, 1024 * 1024))).toBe(sha(big));
      // the whole is checked once, in a worker thread, and then promoted
      for (const until = Date.now() + 30_000; !cache.has(hex) && Date.now() < until; ) await new Promise((r) => setTimeout(r, 20));
      expect(spy.mock.calls.filter(([name]) => name === 'verifyFile').map(([, a]) => a)).toEqual([expect.objectContaining({ digest: hex, size: BIG })]);
      const st = cache.stats();
      const r = await CdimgReader.open(cdimg);
      const chunks = r.blob(hex)!.chunks.length;
      await r.close();
      expect(chunks).toBeGreaterThan(2);
      expect(st.chunkBuilds).toBe(chunks);
      expect(cache.has(hex)).toBe(true);
      expect(sha(await fsp.readFile(path.join(cacheDir, hex)))).toBe(hex);
      expect(await fsp.readdir(path.join(cacheDir, 'partial'))).toEqual([]);
    } finally {
      spy.mockRestore();
      cache.close();
    }
  });

  test('many small files read cold through a fuse3 mount: right bytes, no cache files', async () => {
    const cacheDir = path.join(dir, 'cache-mount');
    const cache = await ContentCache.open({ dir: cacheDir, pool, log });
    const chain = await ChainIndex.open([cdimg]);
    const mp = path.join(dir, 'mnt');
    await fsp.mkdir(mp);
    const fs3 = new Fuse3FileSystem({ mountpoint: mp, chain, cache, log });
    await fs3.mount();
    try {
      // one at a time: this thread serves the mount (see fuse3.test.ts)
      for (const [rel, want] of files) {
        if (rel === 'edge.bin') continue;
        const got = await fsp.readFile(path.join(mp, rel));
        expect({ rel, ok: got.equals(want) }).toEqual({ rel, ok: true });
      }
      // The first lookup of each directory came to JavaScript and started its file's decode
      // (prefetchSmall), which the read then found or awaited (the directory's other lookups
      // were native): still one decode per content.
      expect(cache.stats().prefetches).toBeGreaterThanOrEqual(8);
      expect(cache.stats().memoryDecodes).toBe(SMALL_FILES);
      expect((await fsp.readdir(cacheDir)).filter((n) => HEX_RE.test(n))).toEqual([]);
    } finally {
      await fs3.unmount().catch(() => undefined);
      await fs3.destroy().catch(() => undefined);
      cache.close();
    }
  });
});
