/**
 * The libfuse3 binding (native/fuse3 + ./fuse3.ts), mounted in this process
 * on a small hand-made image. This thread answers the requests, and reading
 * the cache needs libuv's thread pool: accesses from here are asynchronous and
 * few at a time (a pool full of reads of our own mount would wait for itself);
 * concurrent ones come from child processes.
 *
 * Needs root and /dev/fuse (the suite fails, loudly, without them).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { convertImage } from '../convert/convert';
import { CdimgReader } from '../format/reader';
import { WorkerPool } from '../workers/pool';
import { buildDirImage } from '../../test/fixtures/debimages';
import { errorCodeOf } from '../../test/helpers/errors';
import { eventually } from '../../test/helpers/wait';
import { ContentCache } from './cache';
import { ChainIndex } from './chain-index';
import { Fuse3FileSystem } from './fuse3';
import { D4FS_FSTYPE, READAHEAD_KB } from './mounts';
import { FusePool } from './pool';
import { type MountInfo, readMountInfoSync } from '../util/mountinfo';

jest.setTimeout(120_000);
const run = promisify(execFile);

const BIG = 9 * 1024 * 1024 + 4321;
const NS_FILE = 1_600_000_000_123_456_789n;
const NS_DIR = 1_400_000_000_500_000_000n;

function fuseMountsAt(mp: string): MountInfo[] {
  return readMountInfoSync().filter((m) => m.mountpoint === mp && m.fstype === D4FS_FSTYPE);
}

describe('fuse3 binding: a small image mounted in this process', () => {
  let dir: string;
  let mp: string;
  let big: Buffer;
  let cdimg: string;
  let pool: FusePool;
  let cache: ContentCache;
  let chain: ChainIndex;
  let fs3: Fuse3FileSystem;
  const log = pino({ level: 'silent' });
  const at = (rel: string) => path.join(mp, rel);

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4fs-fuse3-');
    const src = path.join(dir, 'src');
    for (const d of ['bin', 'data/deep', 'data/walk', 'data/wide', 'dev', 'empty-dir']) await fsp.mkdir(path.join(src, d), { recursive: true });
    await fsp.writeFile(path.join(src, 'data/hello'), 'hello, fuse3\n');
    await fsp.link(path.join(src, 'data/hello'), path.join(src, 'data/deep/hello-again'));
    await fsp.writeFile(path.join(src, 'data/empty'), '');
    for (const f of ['a', 'b', 'c', 'd']) await fsp.writeFile(path.join(src, 'data/walk', f), `${f}\n`);
    for (let i = 0; i < 300; i++) await fsp.writeFile(path.join(src, 'data/wide', `w${i}`), `${i}\n`);
    big = randomBytes(BIG);
    await fsp.writeFile(path.join(src, 'data/big.bin'), big);
    await fsp.writeFile(path.join(src, 'bin/tool'), randomBytes(5000), { mode: 0o4755 });
    await fsp.chmod(path.join(src, 'bin/tool'), 0o4755);
    await run('setcap', ['cap_net_raw+ep', path.join(src, 'bin/tool')]);
    await run('setfattr', ['-n', 'user.note', '-v', 'kept', path.join(src, 'data/hello')]);
    await fsp.symlink('../data/hello', path.join(src, 'bin/link'));
    await run('mknod', ['-m', '0640', path.join(src, 'dev/loop9'), 'b', '7', '9']);
    for (let i = 0; i < 300; i++) await fsp.writeFile(path.join(src, 'data/deep', `f${String(i).padStart(3, '0')}-${'x'.repeat(40)}`), `${i}\n`);
    await run('touch', ['-h', '-d', '@1600000000.123456789', path.join(src, 'data/hello'), path.join(src, 'bin/link')]);
    await run('touch', ['-d', '@1400000000.5', path.join(src, 'data/deep'), path.join(src, 'data')]);
    const img = await buildDirImage([src], { layout: path.join(dir, 'layout'), tag: 'small' });
    cdimg = path.join(dir, 'small.cdimg');
    const wp = new WorkerPool(2);
    try {
      await convertImage({ ref: img.ref, output: cdimg, pool: wp });
    } finally {
      await wp.close();
    }
    pool = new FusePool(2);
    cache = await ContentCache.open({ dir: path.join(dir, 'cache'), pool, log });
    chain = await ChainIndex.open([cdimg]);
    mp = path.join(dir, 'mnt');
    await fsp.mkdir(mp);
    fs3 = new Fuse3FileSystem({ mountpoint: mp, chain, cache, log });
    await fs3.mount();
  });

  afterAll(async () => {
    await fs3?.unmount().catch(() => undefined);
    await fs3?.destroy().catch(() => undefined);
    await pool?.close();
    if (dir) {
      for (const { mountpoint } of readMountInfoSync()) {
        if (mountpoint.startsWith(dir)) await run('umount', ['-l', '-c', mountpoint]).catch(() => undefined);
      }
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  test('mounted as fuse.d4fs, read-only, allow_other, suid and dev kept', () => {
    const mounts = fuseMountsAt(mp);
    expect(mounts).toHaveLength(1);
    const [m] = mounts;
    const mountOpts = m.mountOptions.split(',');
    expect(mountOpts).toContain('ro');
    expect(mountOpts).not.toContain('nosuid');
    expect(mountOpts).not.toContain('nodev');
    expect(`${m.fstype} ${m.source} ${m.superOptions}`).toMatch(/^fuse\.d4fs d4fs .*allow_other/);
    expect(m.superOptions).toMatch(/default_permissions/);
  });

  test('the kernel reads ahead READAHEAD_KB of a file (set on the backing device of the mount once mounted)', async () => {
    const [m] = fuseMountsAt(mp);
    expect(Number((await fsp.readFile(`/sys/class/bdi/${m.device}/read_ahead_kb`, 'utf8')).trim())).toBe(READAHEAD_KB);
  });

  test('lookup and stat: modes, owners, nanosecond mtimes, device numbers, sizes', async () => {
    const st = await fsp.stat(at('data/hello'), { bigint: true });
    expect(st.isFile()).toBe(true);
    expect(st.size).toBe(13n);
    expect(st.mtimeNs).toBe(NS_FILE);
    const dst = await fsp.stat(at('data/deep'), { bigint: true });
    expect(dst.isDirectory()).toBe(true);
    expect(dst.mtimeNs).toBe(NS_DIR);
    const lst = await fsp.lstat(at('bin/link'), { bigint: true });
    expect(lst.isSymbolicLink()).toBe(true);
    expect(lst.mtimeNs).toBe(NS_FILE);
    const tool = await fsp.stat(at('bin/tool'));
    expect(tool.mode & 0o7777).toBe(0o4755);
    expect(tool.uid).toBe(0);
    const dev = await fsp.stat(at('dev/loop9'));
    expect(dev.isBlockDevice()).toBe(true);
    expect([Math.floor(dev.rdev / 256), dev.rdev % 256]).toEqual([7, 9]);
    expect((await fsp.stat(mp)).ino).toBe(1);
  });

  test('ENOENT for missing names (also cached negative entries), ENOTDIR below a file', async () => {
    expect(await errorCodeOf(fsp.stat(at('data/nope')))).toBe('ENOENT');
    const before = fs3.stats().requests!.lookup;
    expect(await errorCodeOf(fsp.stat(at('data/nope')))).toBe('ENOENT');
    expect(fs3.stats().requests!.lookup).toBe(before); // the kernel kept the negative entry
    expect(await errorCodeOf(fsp.stat(at('data/hello/x')))).toBe('ENOTDIR');
  });

  test('hard links share one inode and its link count', async () => {
    const [a, b] = [await fsp.stat(at('data/hello')), await fsp.stat(at('data/deep/hello-again'))];
    expect(a.ino).toBe(b.ino);
    expect(a.nlink).toBe(2);
    expect(b.nlink).toBe(2);
    expect(await fsp.readFile(at('data/deep/hello-again'), 'utf8')).toBe('hello, fuse3\n');
  });

  test('lookups: a small directory is handed to the binding at its first lookup, a big one at its second; then lookups in it are native', async () => {
    expect((await fsp.stat(at('data/walk'))).isDirectory()).toBe(true);
    expect((await fsp.stat(at('data/wide'))).isDirectory()).toBe(true);
    const jsLookups = (): number => fs3.stats().requests!.lookup - fs3.stats().requests!.lookupNative;
    const js0 = jsLookups();
    const native0 = fs3.stats().requests!.lookupNative;
    // data/walk: 4 children
    expect((await fsp.stat(at('data/walk/a'))).size).toBe(2);
    expect(jsLookups() - js0).toBe(1);
    expect(await fsp.readFile(at('data/walk/b'), 'utf8')).toBe('b\n');
    const [c, d] = [await fsp.stat(at('data/walk/c')), await fsp.stat(at('data/walk/d'))];
    expect(await errorCodeOf(fsp.stat(at('data/walk/e')))).toBe('ENOENT');
    expect(jsLookups() - js0).toBe(1);
    expect(fs3.stats().requests!.lookupNative - native0).toBe(4);
    // the native answers are the tree's
    expect([c.isFile(), c.size, c.mode & 0o777, d.nlink]).toEqual([true, 2, 0o644, 1]);
    expect(c.ino).not.toBe(d.ino);
    expect(await fsp.readFile(at('data/walk/d'), 'utf8')).toBe('d\n');
    expect((await fsp.readdir(at('data/walk'))).sort()).toEqual(['a', 'b', 'c', 'd']);
    // data/wide: 300 children, more than a listing encoded at the first lookup
    const js1 = jsLookups();
    expect(await fsp.readFile(at('data/wide/w0'), 'utf8')).toBe('0\n');
    expect(await fsp.readFile(at('data/wide/w1'), 'utf8')).toBe('1\n');
    expect(jsLookups() - js1).toBe(2);
    expect(await fsp.readFile(at('data/wide/w299'), 'utf8')).toBe('299\n');
    expect(await errorCodeOf(fsp.stat(at('data/wide/w300')))).toBe('ENOENT');
    expect(jsLookups() - js1).toBe(2);
  });

  test('readdir lists every entry with its stats (readdirplus), continuing across buffers', async () => {
    await run('sh', ['-c', 'echo 2 > /proc/sys/vm/drop_caches']);
    const pre = fs3.stats().requests!;
    const names = await fsp.readdir(at('data/deep'));
    expect(names).toHaveLength(301);
    expect(names).toContain('hello-again');
    const req0 = fs3.stats().requests!;
    expect(req0.readdirplus).toBeGreaterThanOrEqual(2); // 301 long names do not fit one 4 KiB buffer
    expect(req0.readdir).toBe(0);
    // the request past the end, once the listing was sent in full, was answered natively
    expect(req0.readdirEnd).toBeGreaterThanOrEqual(1);
    expect(req0.readdirEnd).toBeLessThan(req0.readdirplus);
    // Only the first request of the listing went to JavaScript: its continuations were answered
    // natively from the listing kept by that first reply, and so was the request past its end.
    const listed = (k: 'readdirplus' | 'readdirEnd' | 'readdirNative'): number => req0[k] - pre[k];
    expect(listed('readdirplus')).toBeGreaterThanOrEqual(3);
    expect(listed('readdirEnd')).toBe(1);
    expect(listed('readdirNative')).toBe(listed('readdirplus') - 2);
    // Readdirplus entries of files carry no node id (the kernel instantiates no inode while listing);
    // a stat of each is a lookup answered natively from the kept listing, with the same attributes.
    const sts = await Promise.all(names.map((n) => fsp.stat(path.join(at('data/deep'), n))));
    expect(sts.filter((s) => s.isFile())).toHaveLength(301);
    const req1 = fs3.stats().requests!;
    expect(req1.lookup - req0.lookup).toBe(301);
    expect(req1.lookupNative - req0.lookupNative).toBe(301);
    expect(req1.getattr - req0.getattr).toBe(0);
    expect(req1.listingBytes).toBeGreaterThan(301 * 128);
    // absent names in a kept directory: negative entries, natively
    expect(await errorCodeOf(fsp.stat(at('data/deep/no-such-name')))).toBe('ENOENT');
    expect(fs3.stats().requests!.lookupNative).toBe(req1.lookupNative + 1);
    // Those lookups of names sent without attributes made the mount send attributes from now
    // on (the reader stats what it lists): another directory listed, then statted, needs none.
    expect(req1.plusSwitch).toBe(1);
    await run('sh', ['-c', 'echo 2 > /proc/sys/vm/drop_caches']);
    const wide = await fsp.readdir(at('data/wide'));
    const req2 = fs3.stats().requests!;
    await Promise.all(wide.map((n) => fsp.stat(path.join(at('data/wide'), n))));
    expect(fs3.stats().requests!.lookup - req2.lookup).toBe(0);
    const hello = sts[names.indexOf('hello-again')];
    expect([hello.ino, hello.nlink, hello.size]).toEqual([(await fsp.stat(at('data/hello'))).ino, 2, 13]);
    const root = await fsp.readdir(mp, { withFileTypes: true });
    expect(root.map((d) => `${d.name}:${d.isDirectory()}`).sort()).toEqual(['bin:true', 'data:true', 'dev:true', 'empty-dir:true']);
    expect(await fsp.readdir(at('empty-dir'))).toEqual([]);
    // listed again (the kernel dropped its cached entries): the same names, the end answered natively again
    await run('sh', ['-c', 'echo 2 > /proc/sys/vm/drop_caches']);
    const again = fs3.stats().requests!.readdirEnd;
    expect((await fsp.readdir(at('data/deep'))).sort()).toEqual([...names].sort());
    expect(fs3.stats().requests!.readdirEnd).toBeGreaterThan(again);
    expect(fs3.stats().requests!.readdirNative).toBeGreaterThan(req1.readdirNative);
  });

  test('symlinks: readlink and following', async () => {
    expect(await fsp.readlink(at('bin/link'))).toBe('../data/hello');
    expect(await fsp.readFile(at('bin/link'), 'utf8')).toBe('hello, fuse3\n');
    expect(await errorCodeOf(fsp.readlink(at('data/hello')))).toBe('EINVAL');
  });

  test('xattrs: values, lists, capabilities; overlayfs names answered ENODATA without a round trip', async () => {
    const { stdout } = await run('getfattr', ['--absolute-names', '-d', '-m', '-', at('data/hello')]);
    expect(stdout).toContain('user.note="kept"');
    const caps = await run('getcap', [at('bin/tool')]);
    expect(caps.stdout).toContain('cap_net_raw=ep');
    const fast0 = fs3.stats().requests!.getxattrFast;
    const r = await run('getfattr', ['--absolute-names', '-n', 'trusted.overlay.opaque', at('data')]).catch((e: { stderr: string }) => e);
    expect((r as { stderr: string }).stderr).toMatch(/No such attribute/);
    expect(fs3.stats().requests!.getxattrFast).toBe(fast0 + 1);
    const none = await run('getfattr', ['--absolute-names', '-d', '-m', '-', at('data/empty')]);
    expect(none.stdout.trim()).toBe('');
  });

  test('a big file: concurrent cold reads from other processes, then whole', async () => {
    // Eight readers at once, each a range in another chunk (chunks build concurrently).
    const py = 'import sys,hashlib; f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])); print(hashlib.sha256(f.read(int(sys.argv[3]))).hexdigest())';
    const ranges = Array.from({ length: 8 }, (_, i) => ({ pos: Math.floor((i * BIG) / 8) + 777 * i, len: 300_000 + i * 1000 }));
    const before = fs3.stats().reads;
    const got = await Promise.all(ranges.map((r) => run('python3', ['-c', py, at('data/big.bin'), String(r.pos), String(r.len)]).then((o) => o.stdout.trim())));
    expect(got).toEqual(ranges.map((r) => createHash('sha256').update(big.subarray(r.pos, r.pos + r.len)).digest('hex')));
    expect(fs3.stats().reads - before).toBeGreaterThanOrEqual(8);
    expect(fs3.stats().requests!.outstanding).toBe(0);
    const whole = await fsp.readFile(at('data/big.bin'));
    expect(createHash('sha256').update(whole).digest('hex')).toBe(createHash('sha256').update(big).digest('hex'));
    expect(await fsp.readFile(at('data/empty'))).toHaveLength(0);
  });

  test('warm reads: no OPEN after the first, and the page cache is kept across opens', async () => {
    await fsp.readFile(at('data/hello'));
    const s0 = fs3.stats();
    for (let i = 0; i < 200; i++) expect(await fsp.readFile(at('data/hello'), 'utf8')).toBe('hello, fuse3\n');
    const whole = await fsp.readFile(at('data/big.bin'));
    expect(whole.equals(big)).toBe(true);
    const s1 = fs3.stats();
    expect(s1.opens).toBeLessThanOrEqual(1); // the kernel asked once, was told "no open needed"
    expect(s1.requests!.opendir).toBeLessThanOrEqual(1);
    expect(s1.requests!.release).toBe(0);
    expect(s1.reads).toBe(s0.reads); // served from the page cache
    expect(s1.requests!.outstanding).toBe(0);
  });

  test('contents read are held only briefly and boundedly (each holds a cache file descriptor)', async () => {
    const names = await fsp.readdir(at('data/deep'));
    const texts: string[] = [];
    let most = 0;
    for (const n of names.filter((x) => x.startsWith('f'))) {
      texts.push(await fsp.readFile(path.join(at('data/deep'), n), 'utf8'));
      most = Math.max(most, fs3.stats().openFiles);
    }
    expect(texts).toHaveLength(300);
    expect(most).toBeGreaterThan(100); // held after their reads…
    expect(texts[7]).toBe('7\n');
    expect(most).toBeLessThanOrEqual(257); // …but never more than the bound
    await eventually(() => fs3.stats().openFiles === 0, 10_000, 'held contents let go');
  });

  test('writes are refused with EROFS', async () => {
    expect(await errorCodeOf(fsp.writeFile(at('data/hello'), 'x'))).toBe('EROFS');
    expect(await errorCodeOf(fsp.writeFile(at('data/new'), 'x'))).toBe('EROFS');
    expect(await errorCodeOf(fsp.mkdir(at('newdir')))).toBe('EROFS');
    expect(await errorCodeOf(fsp.unlink(at('data/hello')))).toBe('EROFS');
    expect(await errorCodeOf(fsp.chmod(at('data/hello'), 0o600))).toBe('EROFS');
    expect(await errorCodeOf(fsp.rename(at('data/hello'), at('data/h2')))).toBe('EROFS');
  });

  test('statfs: a full read-only filesystem', async () => {
    const s = await fsp.statfs(mp);
    expect(s.bfree).toBe(0);
    expect(s.blocks).toBeGreaterThanOrEqual(Math.floor(BIG / 4096));
  });

  test('a read that waits for a build past its deadline gets ETIMEDOUT; damaged content gives EIO', async () => {
    const mp2 = path.join(dir, 'mnt-deadline');
    await fsp.mkdir(mp2);
    const cache2 = await ContentCache.open({ dir: path.join(dir, 'cache2'), pool, log });
    const slow = new Fuse3FileSystem({ mountpoint: mp2, chain, cache: cache2, log, timeouts: { openMs: 1, readMs: 1 } });
    await slow.mount();
    try {
      expect(await errorCodeOf(fsp.readFile(path.join(mp2, 'data/big.bin')))).toBe('ETIMEDOUT');
      expect(slow.stats().errors).toBeGreaterThanOrEqual(1);
    } finally {
      await slow.unmount();
    }
    await eventually(() => !slow.serving(), 5000, 'the deadline mount ends');

    // A chain whose blob bytes are damaged: that file reads EIO, the rest is served.
    const bad = path.join(dir, 'bad.cdimg');
    const bytes = await fsp.readFile(cdimg);
    const r = await CdimgReader.open(cdimg);
    const chunks = r.blob(r.byPath.get('data/big.bin')!.digest)!.chunks;
    await r.close();
    expect(chunks.length).toBeGreaterThan(1);
    // Flip one byte in the middle of the big file's first stored chunk.
    bytes[chunks[0].offset + Math.floor(chunks[0].storedSize / 2)] ^= 0x40;
    await fsp.writeFile(bad, bytes);
    const mp3 = path.join(dir, 'mnt-bad');
    await fsp.mkdir(mp3);
    const cache3 = await ContentCache.open({ dir: path.join(dir, 'cache3'), pool, log });
    const damaged = new Fuse3FileSystem({ mountpoint: mp3, chain: await ChainIndex.open([bad]), cache: cache3, log });
    await damaged.mount();
    try {
      expect(await errorCodeOf(fsp.readFile(path.join(mp3, 'data/big.bin')))).toBe('EIO');
      expect(await fsp.readFile(path.join(mp3, 'data/hello'), 'utf8')).toBe('hello, fuse3\n');
    } finally {
      await damaged.unmount();
    }
  });

  test('a lazy mount: requests made before its chain is open wait for it, then xattr names are answered natively; a chain that fails gives EIO', async () => {
    const lazyMp = path.join(dir, 'lazy');
    await fsp.mkdir(lazyMp);
    let open!: (c: ChainIndex) => void;
    const lazy = new Fuse3FileSystem({ mountpoint: lazyMp, chain: new Promise<ChainIndex>((resolve) => (open = resolve)), imageId: chain.imageId, cache, log });
    await lazy.mount();
    try {
      expect(fuseMountsAt(lazyMp)).toHaveLength(1);
      expect(lazy.isReady).toBe(false);
      let settled = false;
      const read = fsp.readFile(path.join(lazyMp, 'data/hello'), 'utf8').finally(() => (settled = true));
      const xattr = run('getfattr', ['--only-values', '-n', 'user.note', path.join(lazyMp, 'data/hello')]);
      await new Promise((r) => setTimeout(r, 300));
      expect(settled).toBe(false);
      open(chain);
      expect(await read).toBe('hello, fuse3\n');
      expect((await xattr).stdout).toBe('kept');
      expect(lazy.isReady).toBe(true);
      // names no inode has: ENODATA from the binding, no round trip (the list was set once the tree was built)
      const fast0 = lazy.stats().requests?.getxattrFast ?? 0;
      await expect(run('getfattr', ['-n', 'user.absent', path.join(lazyMp, 'data/hello')])).rejects.toThrow(/No such attribute/);
      expect(lazy.stats().requests?.getxattrFast ?? 0).toBeGreaterThan(fast0);
    } finally {
      await lazy.unmount();
      await lazy.destroy();
    }

    let fail!: (e: Error) => void;
    const broken = new Fuse3FileSystem({ mountpoint: lazyMp, chain: new Promise<ChainIndex>((_resolve, reject) => (fail = reject)), imageId: chain.imageId, cache, log });
    await broken.mount();
    try {
      const read = fsp.readFile(path.join(lazyMp, 'data/hello'), 'utf8').then(
        () => 'read',
        (e: NodeJS.ErrnoException) => e.code,
      );
      await new Promise((r) => setTimeout(r, 100));
      fail(new Error('index is damaged'));
      expect(await read).toBe('EIO');
      await expect(broken.ready).rejects.toThrow(/damaged/);
      expect(await fsp.stat(path.join(lazyMp, 'data')).then(() => 'ok', (e: NodeJS.ErrnoException) => e.code)).toBe('EIO');
    } finally {
      await broken.unmount();
      await broken.destroy();
    }
  });

  test('unmount while busy: an open file keeps working until closed, then the session ends; nothing stays mounted', async () => {
    const fh = await fsp.open(at('data/big.bin'), 'r');
    const dh = await fsp.opendir(at('data/deep'));
    await fs3.unmount();
    expect(fuseMountsAt(mp)).toEqual([]);
    expect(fs3.serving()).toBe(true); // detached, still in use
    const buf = Buffer.alloc(65536);
    const { bytesRead } = await fh.read(buf, 0, buf.length, BIG - 1000);
    expect(bytesRead).toBe(1000);
    expect(buf.subarray(0, 1000).equals(big.subarray(BIG - 1000))).toBe(true);
    let n = 0;
    for await (const _ of dh) n++;
    expect(n).toBe(301);
    await fh.close();
    await eventually(() => !fs3.serving(), 10_000, 'the session ends once the last user closed');
    expect(fs3.stats().openFiles).toBe(0);
    const left = readMountInfoSync().filter((m) => m.mountpoint.includes(dir));
    expect(left).toEqual([]);
  });
});
