/**
 * Trust boundaries of the FUSE half (decision 10 of the design), for real:
 * /dev/fuse, the FUSE manager process, two mounted images.
 *
 *  - Cache poisoning across images: a hostile image declares the content
 *    digests of a victim image's large files for bytes of its own, with chunk
 *    digests consistent with those bytes (and an image id recomputed over its
 *    tree, so the file passes every check of its index). Read half-way
 *    first, its chunks must not reach the victim's readers: the victim reads
 *    its true bytes. Read whole, it gets its own bytes (each chunk checked
 *    against its own chunk digest) until its whole-content check, made by a
 *    worker thread once the last chunk is built, fails: from then on every
 *    read of it is EIO, and nothing of it is ever shared.
 *  - Daemon sockets: the FUSE manager's socket lives in a private 0700
 *    directory (its root, or /run/d4fs/fuse-<hash> for long roots; never a
 *    predictable name in /tmp), and a socket directory someone else owns or
 *    may write to is refused, by the manager, its client and the snapshotter.
 *
 * Needs root and /dev/fuse; without them the suite is skipped, loudly
 * (test/helpers/capabilities.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { convertImage } from '../src/convert/convert';
import { computeImageId } from '../src/format/codec';
import { CdimgReader } from '../src/format/reader';
import { FileType, HEADER_SIZE, type Index } from '../src/format/types';
import { CdimgWriter } from '../src/format/writer';
import { FuseFileSystem } from '../src/fuse/client';
import { FuseManager } from '../src/fuse/manager';
import { d4fsMountsAt } from '../src/fuse/mounts';
import { managerPaths } from '../src/fuse/protocol';
import { RUN_DIR } from '../src/snapshotter/sockdir';
import { buildDirImage } from './fixtures/debimages';
import { describeIfCapable } from './helpers/capabilities';
import { processesMentioning, runCommand, snapshotterEntryPoint } from './helpers/containerd';
import { readError } from './helpers/fuse';
import { eventually } from './helpers/wait';

jest.setTimeout(180_000);

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Reads `len` bytes at `pos` of an open file: the bytes, or the error code. */
async function readAt(fh: fsp.FileHandle, pos: number, len: number): Promise<Buffer | string> {
  const buf = Buffer.alloc(len);
  let got = 0;
  try {
    while (got < len) {
      const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
  return buf.subarray(0, got);
}

/**
 * What a hostile publisher makes: a copy of `src` whose contents claim other
 * digests (`claims`: own sha256 hex → claimed digest) in its tree and its blob
 * table, with its own chunks and chunk digests untouched (consistent with its
 * own bytes) and the image id recomputed over the new tree, so that the file
 * passes every check of its index (root digest, image id). Resolves with the
 * new image id.
 */
async function claimDigests(src: string, dst: string, claims: Map<string, Buffer>): Promise<string> {
  const r = await CdimgReader.open(src);
  let index: Index;
  let blobEnd = HEADER_SIZE;
  try {
    const ix = r.index;
    const swap = (d: Buffer): Buffer => claims.get(d.toString('hex')) ?? d;
    const entries = ix.entries.map((e) => (e.type === FileType.REG ? { ...e, digest: swap(e.digest) } : e));
    const blobs = ix.blobs.map((b) => ({ ...b, digest: swap(b.digest) }));
    for (const b of blobs) for (const c of b.chunks) blobEnd = Math.max(blobEnd, c.offset + c.storedSize);
    index = { ...ix, entries, blobs, imageId: computeImageId(entries, ix.image.configJson) };
  } finally {
    await r.close();
  }
  const bytes = await fsp.readFile(src);
  const w = await CdimgWriter.create(dst);
  try {
    await w.append(bytes.subarray(HEADER_SIZE, blobEnd)); // same offsets: the blob section starts after the header
    await w.finish(index);
  } catch (e) {
    await w.abort();
    throw e;
  }
  return `sha256:${index.imageId.toString('hex')}`;
}

describeIfCapable('test/fuse-trust.test.ts', ['root', 'fuse'])('FUSE trust boundaries', () => {
  let dir: string;
  let log: Logger;
  let ffs: FuseFileSystem;
  let cacheDir: string;
  const mp = { victim: '', hostile: '', hostile2: '', lazy: '', lazyBad: '' };
  let forged = '';
  const files: Record<string, string> = {};
  let victimId = '';
  let hostileId = '';
  /** True and hostile bytes of the large (5 chunks) and medium (3 chunks) files. */
  const data: Record<'big' | 'mid', { truth: Buffer; hostile: Buffer; hex: string }> = {
    big: { truth: Buffer.alloc(0), hostile: Buffer.alloc(0), hex: '' },
    mid: { truth: Buffer.alloc(0), hostile: Buffer.alloc(0), hex: '' },
  };

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4trust-');
    log = pino({ level: 'debug' }, pino.destination({ dest: path.join(dir, 'client.log'), sync: true }));
    data.big.truth = randomBytes(20 * MiB);
    data.big.hostile = randomBytes(20 * MiB);
    data.mid.truth = randomBytes(9 * MiB + 7);
    data.mid.hostile = randomBytes(9 * MiB + 7);
    for (const k of ['big', 'mid'] as const) data[k].hex = sha(data[k].truth);

    const claims = new Map<string, Buffer>();
    for (const who of ['victim', 'hostile'] as const) {
      const tree = path.join(dir, `${who}-tree`);
      await fsp.mkdir(path.join(tree, 'data'), { recursive: true });
      await fsp.writeFile(path.join(tree, 'data', 'big.bin'), who === 'victim' ? data.big.truth : data.big.hostile);
      await fsp.writeFile(path.join(tree, 'data', 'mid.bin'), who === 'victim' ? data.mid.truth : data.mid.hostile);
      await fsp.writeFile(path.join(tree, 'data', 'who'), `${who}\n`);
      const img = await buildDirImage([tree], { layout: path.join(dir, 'layout'), tag: who });
      files[who] = path.join(dir, `${who}.cdimg`);
      await convertImage({ ref: img.ref, output: files[who] });
      mp[who] = path.join(dir, 'mnt', who);
      await fsp.mkdir(mp[who], { recursive: true });
    }
    for (const k of ['big', 'mid'] as const) claims.set(sha(data[k].hostile), Buffer.from(data[k].hex, 'hex'));
    forged = path.join(dir, 'hostile-claims.cdimg');
    hostileId = await claimDigests(files.hostile, forged, claims);

    // The hostile file is self-consistent: it opens, its tree claims the victim's digests,
    // its chunks are its own (several of them), its id is recomputed.
    const r = await CdimgReader.open(forged);
    try {
      expect(r.imageId).toBe(hostileId);
      for (const k of ['big', 'mid'] as const) {
        const e = r.byPath.get(`data/${k}.bin`)!;
        expect(e.digest.toString('hex')).toBe(data[k].hex);
        const b = r.blob(e.digest)!;
        expect(b.chunks.length).toBeGreaterThan(1);
        expect(b.chunks[0].rawDigest.equals(createHash('sha256').update(data[k].hostile.subarray(0, b.chunks[0].rawSize)).digest())).toBe(true);
      }
    } finally {
      await r.close();
    }
    victimId = (await CdimgReader.imageInfo(files.victim)).imageId;

    ffs = new FuseFileSystem({ root: path.join(dir, 'fuse'), stores: [], log, watchIntervalMs: 0 });
    cacheDir = managerPaths(path.join(dir, 'fuse')).cache;
    await ffs.ensureManager();
    await ffs.client.mount({ mountpoint: mp.victim, chain: [files.victim], imageId: victimId });
    await ffs.client.mount({ mountpoint: mp.hostile, chain: [forged], imageId: hostileId });
    expect(await fsp.readFile(path.join(mp.hostile, 'data', 'who'), 'utf8')).toBe('hostile\n');
  });

  afterAll(async () => {
    ffs?.close();
    if (!dir) return;
    await ffs?.client.shutdown({ forget: true }).catch(() => undefined);
    await eventually(() => processesMentioning(dir).length === 0, 10_000, 'managers gone').catch(() => {
      for (const pid of processesMentioning(dir)) process.kill(pid, 'SIGKILL');
    });
    for (const m of Object.values(mp)) if (m && (await d4fsMountsAt(m)).length) await runCommand('umount', ['-l', m]);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test('a hostile content that fails its whole digest is never shared, and EIO once its check has failed', async () => {
    const failures0 = (await ffs.client.stats()).cache.failures;
    // Every chunk matches the hostile file's own chunk digests; the whole does not match the digest it
    // claims. A first whole read gets the file's own bytes (its chunks, checked), or EIO when the
    // check (a worker thread's, once the last chunk is built) failed before the read ended.
    const first = await fsp.readFile(path.join(mp.hostile, 'data', 'mid.bin')).then(
      (b) => (b.equals(data.mid.hostile) ? 'its own bytes' : 'other bytes'),
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(['its own bytes', 'EIO']).toContain(first);
    await eventually(async () => (await ffs.client.stats()).cache.failures > failures0, 30_000, 'the whole-content check failed');
    expect(fs.existsSync(path.join(cacheDir, data.mid.hex))).toBe(false);
    expect(fs.readFileSync(managerPaths(path.join(dir, 'fuse')).log, 'utf8')).toMatch(/does not match its digest/);
    // From then on every read that reaches the manager fails: another mount of the same file (its
    // own inodes, nothing in the kernel's page cache) reads EIO, and the content is not built again.
    mp.hostile2 = path.join(dir, 'mnt', 'hostile2');
    await fsp.mkdir(mp.hostile2, { recursive: true });
    await ffs.client.mount({ mountpoint: mp.hostile2, chain: [forged], imageId: hostileId });
    const builds0 = (await ffs.client.stats()).cache.chunkBuilds;
    expect(await readError(path.join(mp.hostile2, 'data', 'mid.bin'))).toBe('EIO');
    expect((await ffs.client.stats()).cache.chunkBuilds).toBe(builds0);
    // The victim's file is built from the victim's own blob: its true bytes.
    expect(sha(await fsp.readFile(path.join(mp.victim, 'data', 'mid.bin')))).toBe(data.mid.hex);
    // …which the cache keeps under its digest once a worker thread has checked it as a whole
    await eventually(() => fs.existsSync(path.join(cacheDir, data.mid.hex)), 30_000, 'the victim content promoted');
    expect(sha(await fsp.readFile(path.join(cacheDir, data.mid.hex)))).toBe(data.mid.hex);
  });

  test('chunks a hostile image built for a digest never reach another image that reads that digest', async () => {
    const { truth, hostile, hex } = data.big;
    const half = 10 * MiB;
    const hfh = await fsp.open(path.join(mp.hostile, 'data', 'big.bin'));
    try {
      // The hostile image reads its own bytes (each chunk checked against its own chunk digests)…
      const first = await readAt(hfh, 0, half);
      expect(Buffer.isBuffer(first) && first.equals(hostile.subarray(0, half))).toBe(true);
      expect(fs.existsSync(path.join(cacheDir, hex))).toBe(false);

      // …and the victim, reading the same digest while that half-built content is held, reads the truth.
      const vfh = await fsp.open(path.join(mp.victim, 'data', 'big.bin'));
      try {
        for (let pos = 0; pos < truth.length; pos += MiB) {
          const piece = await readAt(vfh, pos, MiB);
          const want = truth.subarray(pos, pos + MiB);
          const got = typeof piece === 'string' ? piece : { truth: piece.equals(want), hostile: piece.equals(hostile.subarray(pos, pos + MiB)) };
          expect({ pos, got }).toEqual({ pos, got: { truth: true, hostile: false } });
        }
      } finally {
        await vfh.close();
      }
      expect(sha(await fsp.readFile(path.join(mp.victim, 'data', 'big.bin')))).toBe(hex);

      // The rest of the hostile file: its own bytes (its chunks, checked against its own chunk
      // digests, until its whole-content check fails), EIO (once it has) or, once the verified
      // content is what the cache holds for that digest, the true bytes; never a mix.
      const rest = await readAt(hfh, half, truth.length - half);
      if (typeof rest === 'string') expect(rest).toBe('EIO');
      else expect([rest.equals(truth.subarray(half)), rest.equals(hostile.subarray(half))]).toContain(true);
    } finally {
      await hfh.close();
    }
    // What the cache shares by digest is the verified truth (promoted once a worker thread checked it).
    await eventually(() => fs.existsSync(path.join(cacheDir, hex)), 30_000, 'the victim content promoted');
    expect(sha(await fsp.readFile(path.join(cacheDir, hex)))).toBe(hex);
    for (const name of await fsp.readdir(cacheDir)) {
      if (/^[0-9a-f]{64}$/.test(name)) expect(sha(await fsp.readFile(path.join(cacheDir, name)))).toBe(name);
    }
  });

  describe('lazy mounts (the kernel mount made before the chain is open)', () => {
    test('serve the image once its chain is open; a check waits for that', async () => {
      mp.lazy = path.join(dir, 'mnt', 'lazy');
      await fsp.mkdir(mp.lazy, { recursive: true });
      await ffs.client.mount({ mountpoint: mp.lazy, chain: [files.victim], imageId: victimId, lazy: true });
      expect((await d4fsMountsAt(mp.lazy)).length).toBe(1);
      // a read right away waits for the chain, then gets the image's bytes
      expect(await fsp.readFile(path.join(mp.lazy, 'data', 'who'), 'utf8')).toBe('victim\n');
      expect(sha(await fsp.readFile(path.join(mp.lazy, 'data', 'mid.bin')))).toBe(data.mid.hex);
      await expect(ffs.client.check(mp.lazy)).resolves.toMatchObject({ imageId: victimId });
      // mounting it again (lazily or not) is the same mount
      await ffs.client.mount({ mountpoint: mp.lazy, chain: [files.victim], imageId: victimId });
      expect((await d4fsMountsAt(mp.lazy)).length).toBe(1);
      await ffs.client.unmount(mp.lazy);
      expect((await d4fsMountsAt(mp.lazy)).length).toBe(0);
    });

    test('a chain that cannot be opened answers EIO, fails its check with the reason, and a waited mount reports it', async () => {
      mp.lazyBad = path.join(dir, 'mnt', 'lazy-bad');
      await fsp.mkdir(mp.lazyBad, { recursive: true });
      // a damaged index: its last stored byte flipped
      const damaged = path.join(dir, 'damaged-index.cdimg');
      const bytes = await fsp.readFile(files.victim);
      bytes[bytes.length - 1] ^= 0x40;
      await fsp.writeFile(damaged, bytes);
      await ffs.client.mount({ mountpoint: mp.lazyBad, chain: [damaged], imageId: victimId, lazy: true });
      expect(await readError(path.join(mp.lazyBad, 'data', 'who'))).toBe('EIO');
      await expect(ffs.client.check(mp.lazyBad)).rejects.toMatchObject({ kind: 'UNAVAILABLE', message: expect.stringMatching(/index/) });
      await expect(ffs.client.mount({ mountpoint: mp.lazyBad, chain: [damaged], imageId: victimId })).rejects.toMatchObject({ kind: 'CORRUPT' });
      expect((await d4fsMountsAt(mp.lazyBad)).length).toBe(0);
      // a sound chain that leads to another image than the one asked for
      await ffs.client.mount({ mountpoint: mp.lazyBad, chain: [files.victim], imageId: hostileId, lazy: true });
      expect(await readError(path.join(mp.lazyBad, 'data', 'who'))).toBe('EIO');
      await expect(ffs.client.check(mp.lazyBad)).rejects.toMatchObject({ kind: 'UNAVAILABLE', message: expect.stringMatching(/leads to image/) });
      await ffs.client.unmount(mp.lazyBad);
      expect(fs.readFileSync(managerPaths(path.join(dir, 'fuse')).log, 'utf8')).toMatch(/the chain of a lazy mount cannot be opened/);
    });
  });

  describe('daemon sockets live in private directories', () => {
    const uid = process.getuid?.() ?? 0;

    test('a long root puts the manager socket in a 0700 directory under /run/d4fs, never in /tmp', async () => {
      const root = path.join(dir, 'l'.repeat(110));
      const p = managerPaths(root);
      expect(p.socket.startsWith(`${RUN_DIR}/fuse-`)).toBe(true);
      expect(p.socket.startsWith(os.tmpdir())).toBe(false);
      const sockDir = path.dirname(p.socket);
      const hadRunDir = fs.existsSync(RUN_DIR);
      const long = new FuseFileSystem({ root, stores: [], log, watchIntervalMs: 0 });
      try {
        await long.ensureManager();
        expect(fs.lstatSync(p.socket).isSocket()).toBe(true);
        const st = fs.statSync(sockDir);
        expect({ mode: st.mode & 0o7777, uid: st.uid }).toEqual({ mode: 0o700, uid });
        expect(fs.statSync(RUN_DIR).mode & 0o022).toBe(0);
        expect(fs.statSync(root).mode & 0o7777).toBe(0o700);
      } finally {
        await long.client.shutdown({ forget: true }).catch(() => undefined);
        long.close();
        await eventually(() => processesMentioning(root).length === 0, 10_000, 'long-root manager gone');
        await fsp.rm(sockDir, { recursive: true, force: true });
        if (!hadRunDir) await fsp.rmdir(RUN_DIR).catch(() => undefined);
      }
    });

    test('a socket directory others may write to, or that another user owns, is refused', async () => {
      const start = async (root: string): Promise<string> => {
        try {
          const m = await FuseManager.start({ root, log, threads: 1 });
          await m.stop({ forget: true });
          return 'started';
        } catch (e) {
          return `${(e as { kind?: string }).kind}: ${(e as Error).message}`;
        }
      };
      const open = path.join(dir, 'open-root');
      await fsp.mkdir(open);
      await fsp.chmod(open, 0o777);
      expect(await start(open)).toMatch(/^FAILED_PRECONDITION: socket directory .*open-root is writable by its group or by others \(mode 0777\)/);
      expect(fs.existsSync(path.join(open, 'manager.sock'))).toBe(false);

      const foreign = path.join(dir, 'foreign-root');
      await fsp.mkdir(foreign, { mode: 0o700 });
      await fsp.chown(foreign, 65534, 65534);
      expect(await start(foreign)).toMatch(/^FAILED_PRECONDITION: socket directory .*foreign-root is owned by uid 65534/);

      // The client refuses to talk to (or start) a manager there as well.
      const client = new FuseFileSystem({ root: open, stores: [], log, watchIntervalMs: 0 });
      await expect(client.ensureManager()).rejects.toMatchObject({ kind: 'FAILED_PRECONDITION' });
      client.close();

      // A long root's private directory, made by someone else beforehand: refused.
      const longRoot = path.join(dir, 'm'.repeat(110));
      const planted = path.dirname(managerPaths(longRoot).socket);
      const hadRunDir = fs.existsSync(RUN_DIR);
      await fsp.mkdir(planted, { recursive: true });
      await fsp.chmod(planted, 0o777);
      try {
        expect(await start(longRoot)).toMatch(/^FAILED_PRECONDITION: socket directory \/run\/d4fs\/fuse-[0-9a-f]{16} is writable/);
      } finally {
        await fsp.rm(planted, { recursive: true, force: true });
        if (!hadRunDir) await fsp.rmdir(RUN_DIR).catch(() => undefined);
      }

      // So does the snapshotter, for its own socket.
      const r = await runCommand(process.execPath, [snapshotterEntryPoint(), '--root', path.join(dir, 'sn-root'), '--address', path.join(open, 'd4fs.sock'), '--no-fuse'], { timeoutMs: 20_000 });
      expect(r.code).toBe(5);
      expect(r.stderr).toMatch(/socket directory .*open-root is writable by its group or by others/);
      expect(fs.existsSync(path.join(open, 'd4fs.sock'))).toBe(false);
    });
  });
});
