/**
 * The FUSE half of d4fs, for real: /dev/fuse, the FUSE manager process,
 * fuse-native, worker threads, and the snapshotter using them.
 *
 *  - a converted nginx image mounted through the manager is, file for file
 *    and attribute for attribute, what `cdimg unpack` writes;
 *  - a hand-made image covers every kind of metadata (hard links, file
 *    capabilities, devices, FIFOs, setuid/setgid/sticky, owners, sub-second
 *    mtimes) and shows that readdir carries stats and that a large file is
 *    materialised chunk by chunk;
 *  - a v1→v2 delta chain equals the unpacked v2, and contents are shared by
 *    digest between mounts (first-open latency of a patched file is printed);
 *  - a damaged blob gives EIO for its file only;
 *  - kill -9 of the manager: the client detaches the dead mount, starts a new
 *    manager and mounts again; nothing is left blocked in the kernel;
 *  - the snapshotter provides a d4fs image as a remote snapshot over FUSE,
 *    an overlay uses it as lower dir, and it survives kill -9 of the
 *    snapshotter;
 *  - at the end nothing is mounted and no manager runs.
 *
 * Needs root and /dev/fuse; without them the suite is skipped, loudly
 * (test/helpers/capabilities.ts).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { convertImage } from '../src/convert/convert';
import { diffImages } from '../src/delta/diff';
import { CdimgReader } from '../src/format/reader';
import { Codec, Encoding, FileType } from '../src/format/types';
import { FuseFileSystem, ManagerClient } from '../src/fuse/client';
import { d4fsMountsAt } from '../src/fuse/mounts';
import { managerPaths } from '../src/fuse/protocol';
import { d4fsDiffId } from '../src/containerd/image';
import { D4FS_IMAGE_ID, D4FS_STORE, SNAPSHOT_REF } from '../src/labels';
import { SnapshotsClient } from '../src/snapshotter';
import { LocalStore } from '../src/store/store';
import { unpackImage } from '../src/unpack/unpack';
import { WorkerPool } from '../src/workers/pool';
import { buildDebImage, buildDirImage } from './fixtures/debimages';
import { compareTrees, type TreeNode, walkTree } from './fixtures/treewalk';
import { describeIfCapable } from './helpers/capabilities';
import { mountAll, mountsUnder, startSnapshotter, type SnapshotterProcess, processesMentioning } from './helpers/containerd';
import { readError } from './helpers/fuse';
import { openTop } from './helpers/cdimg';
import { eventually } from './helpers/wait';

jest.setTimeout(120_000);

/**
 * The fuse3 binding (the default) carries nanoseconds; fuse-native (the
 * fallback, D4FS_FUSE_BINDING=fuse-native) milliseconds: sub-millisecond
 * parts are truncated. Set from the manager's ping.
 */
let binding: 'fuse3' | 'fuse-native' = 'fuse3';
const mtimeTolerance = (): bigint => (binding === 'fuse3' ? 0n : 999_999n);

/** Tasks in uninterruptible sleep inside FUSE (a request nobody will answer). */
function tasksStuckInFuse(): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let tasks: string[];
    try {
      tasks = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        if (stat[stat.lastIndexOf(')') + 2] !== 'D') continue;
        const where = `${fs.readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8')} ${fs.readFileSync(`/proc/${pid}/task/${tid}/stack`, 'utf8')}`;
        if (/fuse|request_wait_answer/.test(where)) out.push(`${pid}/${tid} ${stat.slice(0, 60)}`);
      } catch {
        /* gone */
      }
    }
  }
  return out;
}

/** Directory entries as readdir(3) returns them (d_ino, d_type), without stat. */
function rawDirents(dir: string): { name: string; ino: number; dir: boolean; symlink: boolean }[] {
  const py = 'import os,sys,json; print(json.dumps([[e.name, e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink()] for e in os.scandir(sys.argv[1])]))';
  const rows = JSON.parse(execFileSync('python3', ['-c', py, dir], { encoding: 'utf8' })) as [string, number, boolean, boolean][];
  return rows.map(([name, ino, d, s]) => ({ name, ino, dir: d, symlink: s }));
}

/**
 * A tree with every kind of metadata d4fs must keep. Device numbers, owners
 * and file capabilities need root.
 */
async function makeSpecialTree(root: string): Promise<void> {
  const w = (rel: string, data: string | Buffer, mode = 0o644) => fsp.writeFile(path.join(root, rel), data, { mode });
  const sh = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { cwd: root });
  for (const d of ['bin', 'data', 'dev', 'run', 'tmp', 'data/deep/er']) await fsp.mkdir(path.join(root, d), { recursive: true, mode: 0o755 });
  await fsp.chmod(path.join(root, 'tmp'), 0o1777);
  await w('bin/tool', randomBytes(10_000), 0o755);
  sh('setcap', 'cap_net_bind_service,cap_net_raw+ep', 'bin/tool');
  await w('bin/suid', 'suid', 0o755);
  await fsp.chmod(path.join(root, 'bin/suid'), 0o4755);
  await w('bin/sgid', 'sgid', 0o755);
  await fsp.chmod(path.join(root, 'bin/sgid'), 0o2711);
  await w('data/hard1', 'three names, one inode\n');
  await fsp.link(path.join(root, 'data/hard1'), path.join(root, 'data/hard2'));
  await fsp.link(path.join(root, 'data/hard1'), path.join(root, 'data/deep/hard3'));
  await w('data/empty', '');
  // Three chunks of 4 MiB, not compressible to nothing.
  const big = Buffer.alloc(9 * 1024 * 1024 + 123);
  for (let i = 0; i < big.length; i += 4096) randomBytes(64).copy(big, i);
  await w('data/big.bin', big);
  await w('data/notes', 'with a user xattr\n', 0o600);
  sh('setfattr', '-n', 'user.comment', '-v', 'kept by d4fs', 'data/notes');
  await fsp.chown(path.join(root, 'data/notes'), 1000, 1001);
  sh('mknod', '-m', '0666', 'dev/null', 'c', '1', '3');
  sh('mknod', '-m', '0660', 'dev/loop9', 'b', '7', '9');
  sh('mkfifo', '-m', '0620', 'run/fifo');
  await fsp.symlink('../data/hard1', path.join(root, 'bin/rel-link'));
  await fsp.symlink('/etc/does-not-exist', path.join(root, 'bin/abs-link'));
  // Sub-second mtimes, symlinks included, directories last.
  sh('touch', '-h', '-d', '@1600000000.123456789', 'bin/tool', 'bin/rel-link', 'data/notes', 'run/fifo');
  sh('touch', '-h', '-d', '@1500000000.987654321', 'data/hard1', 'data/big.bin', 'dev/null');
  sh('touch', '-d', '@1400000000.5', 'data/deep/er', 'data/deep', 'data', 'bin', 'dev', 'run', 'tmp');
}

describeIfCapable('test/fuse.test.ts', ['root', 'fuse'])('d4fs FUSE filesystem and manager', () => {
  let dir: string;
  let storeRoot: string;
  let log: Logger;
  let ffs: FuseFileSystem;
  const cd: Record<'v1' | 'v2' | 'delta' | 'special' | 'corrupt', string> = { v1: '', v2: '', delta: '', special: '', corrupt: '' };
  const ids: Record<'v1' | 'v2' | 'special', string> = { v1: '', v2: '', special: '' };
  const ref: Record<'v1' | 'v2' | 'special', Map<string, TreeNode>> = { v1: new Map(), v2: new Map(), special: new Map() };
  const mp: Record<'v1' | 'v2' | 'special' | 'corrupt', string> = { v1: '', v2: '', special: '', corrupt: '' };

  // The snapshot of a d4fs image is named by its chain id; the store comes from the configuration (a store label is ignored).
  const labelsOf = (imageId: string) => ({ [D4FS_IMAGE_ID]: imageId, [SNAPSHOT_REF]: d4fsDiffId(imageId), [D4FS_STORE]: '/nonexistent/ignored' });
  const compare = (a: Map<string, TreeNode>, b: Map<string, TreeNode>) =>
    compareTrees(a, b, { mtimeToleranceNs: mtimeTolerance(), ignoreMtimeOf: (p) => p === '' });

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4fuse-');
    storeRoot = path.join(dir, 'store');
    for (const k of Object.keys(mp) as (keyof typeof mp)[]) {
      mp[k] = path.join(dir, 'mnt', k);
      await fsp.mkdir(mp[k], { recursive: true });
    }
    log = pino({ level: 'debug', base: { pid: process.pid } }, pino.destination({ dest: path.join(dir, 'client.log'), sync: true }));
    const pool = new WorkerPool(2);
    try {
      const [i1, i2] = [await buildDebImage('nginx-v1'), await buildDebImage('nginx-v2')];
      const specialDir = path.join(dir, 'special-tree');
      await fsp.mkdir(specialDir);
      await makeSpecialTree(specialDir);
      const special = await buildDirImage([specialDir], { layout: path.join(dir, 'layout'), tag: 'special' });
      for (const k of ['v1', 'v2', 'delta', 'special'] as const) cd[k] = path.join(dir, `${k}.cdimg`);
      ids.v1 = (await convertImage({ ref: i1.ref, output: cd.v1, pool })).imageId;
      ids.v2 = (await convertImage({ ref: i2.ref, output: cd.v2, pool })).imageId;
      ids.special = (await convertImage({ ref: special.ref, output: cd.special, pool })).imageId;
      await diffImages({ oldPath: cd.v1, newPath: cd.v2, out: cd.delta, pool });
      await fsp.mkdir(path.join(dir, 'unpacked'));
      for (const k of ['v1', 'v2', 'special'] as const) {
        const out = path.join(dir, 'unpacked', k);
        await unpackImage(cd[k], out, { pool });
        ref[k] = await walkTree(out);
      }
    } finally {
      await pool.close();
    }
    const store = await LocalStore.open(storeRoot);
    try {
      for (const f of [cd.v1, cd.delta, cd.special]) await store.add(f);
    } finally {
      store.close();
    }
    ffs = new FuseFileSystem({ root: path.join(dir, 'fuse'), stores: [storeRoot], log, watchIntervalMs: 300 });
  });

  afterAll(async () => {
    ffs?.close();
    if (!dir) return;
    // Whatever a failed test left: stop managers started here, detach mounts.
    for (const pid of processesMentioning(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const m of mountsUnder(dir)) execFileSync('umount', ['-l', '-c', m]);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test('a full image mounted through the manager equals `cdimg unpack`', async () => {
    await ffs.mount(mp.v1, labelsOf(ids.v1));
    binding = (await ffs.client.ping()).binding ?? 'fuse-native';
    expect(binding).toBe(process.env.D4FS_FUSE_BINDING ?? 'fuse3');
    await ffs.mount(mp.v1, labelsOf(ids.v1)); // idempotent
    const kernel = await d4fsMountsAt(mp.v1);
    expect(kernel).toHaveLength(1);
    expect(fs.readFileSync('/proc/self/mounts', 'utf8')).toMatch(new RegExp(`^d4fs ${mp.v1} fuse\\.d4fs ro,`, 'm'));
    await ffs.check(mp.v1, labelsOf(ids.v1));
    expect(compare(await walkTree(mp.v1), ref.v1)).toEqual([]);
    // Read-only: the kernel refuses writes, the filesystem refuses the rest.
    expect(await fsp.writeFile(path.join(mp.v1, 'etc/passwd'), 'x').catch((e: NodeJS.ErrnoException) => e.code)).toBe('EROFS');
    expect(await fsp.mkdir(path.join(mp.v1, 'newdir')).catch((e: NodeJS.ErrnoException) => e.code)).toBe('EROFS');
    const st = await fsp.statfs(mp.v1);
    expect(st.blocks).toBeGreaterThan(0);
  });

  test('every kind of metadata; readdir carries stats; a large file is built chunk by chunk', async () => {
    await ffs.mount(mp.special, labelsOf(ids.special));
    const m = mp.special;

    // Chunk-level laziness: one byte of the third chunk builds one chunk.
    const before = (await ffs.client.stats()).cache;
    const fh = await fsp.open(path.join(m, 'data/big.bin'));
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, 8 * 1024 * 1024 + 5);
    await fh.close();
    const after = (await ffs.client.stats()).cache;
    expect(after.chunkBuilds - before.chunkBuilds).toBe(1);
    expect(after.wholeBuilds).toBe(before.wholeBuilds);

    const tree = await walkTree(m);
    expect(compare(tree, ref.special)).toEqual([]);
    // The same attributes, explicitly.
    const hard = ['data/hard1', 'data/hard2', 'data/deep/hard3'].map((p) => tree.get(p)!);
    expect(new Set(hard.map((n) => n.ino)).size).toBe(1);
    expect(hard.map((n) => n.nlink)).toEqual([3, 3, 3]);
    expect(tree.get('bin/tool')!.xattrs['security.capability']).toBeDefined();
    expect(tree.get('data/notes')!.xattrs['user.comment']).toBe(Buffer.from('kept by d4fs').toString('base64'));
    expect(tree.get('data/notes')).toMatchObject({ uid: 1000, gid: 1001, mode: 0o600 });
    expect(tree.get('bin/suid')!.mode).toBe(0o4755);
    expect(tree.get('bin/sgid')!.mode).toBe(0o2711);
    expect(tree.get('tmp')!.mode).toBe(0o1777);
    expect(tree.get('dev/null')).toMatchObject({ type: 'char', rdevMajor: 1, rdevMinor: 3 });
    expect(tree.get('dev/loop9')).toMatchObject({ type: 'block', rdevMajor: 7, rdevMinor: 9 });
    expect(tree.get('run/fifo')).toMatchObject({ type: 'fifo', mode: 0o620 });
    expect(tree.get('bin/rel-link')).toMatchObject({ type: 'symlink', linkTarget: '../data/hard1' });
    expect(tree.get('data/empty')!.size).toBe(0);
    expect(tree.get('data')!.nlink).toBe(3); // 2 + data/deep
    // mtimes: exact to the nanosecond (fuse3), to the millisecond (what fuse-native carries).
    const mtime = binding === 'fuse3' ? 1_600_000_000_123_456_789n : 1_600_000_000_123_000_000n;
    expect(tree.get('bin/tool')!.mtimeNs).toBe(mtime);
    expect(tree.get('bin/rel-link')!.mtimeNs).toBe(mtime);
    expect(tree.get('data/hard1')!.mtimeNs).toBe(binding === 'fuse3' ? 1_500_000_000_987_654_321n : 1_500_000_000_987_000_000n);
    // Absent xattrs (overlay asks for its own) are ENODATA, not errors.
    expect(() => execFileSync('getfattr', ['-n', 'trusted.overlay.opaque', path.join(m, 'data')], { stdio: 'pipe' })).toThrow(/No such attribute/);

    // readdir returns stats: d_ino is the inode, d_type the type, with no stat call.
    for (const d of ['', 'bin', 'data', 'dev']) {
      const ents = rawDirents(path.join(m, d));
      expect(ents.length).toBeGreaterThan(0);
      for (const e of ents) {
        const n = tree.get(d ? `${d}/${e.name}` : e.name)!;
        expect(BigInt(e.ino)).toBe(n.ino);
        expect(e.dir).toBe(n.type === 'dir');
        expect(e.symlink).toBe(n.type === 'symlink');
      }
    }
  });

  test('a v1→v2 delta chain equals the unpacked v2; contents are shared by digest between mounts', async () => {
    const pf0 = (await ffs.client.stats()).prefetch;
    await ffs.mount(mp.v2, labelsOf(ids.v2));
    // The v1 mount has served every file (the walk of the first test): the
    // new versions of the ones v2 changed are built ahead, in the background.
    await eventually(async () => (await ffs.client.stats()).prefetch.pending === 0, 120_000, 'the prefetch of the update');
    const pf = (await ffs.client.stats()).prefetch;
    expect(pf.built - pf0.built).toBeGreaterThan(0);
    expect(pf.failed).toBe(pf0.failed);

    // First open of a patched file (its base and patch built now) vs. a cached one.
    const r = await openTop([cd.v1, cd.delta]);
    let patched: { path: string; size: number } | undefined;
    let shared: string | undefined;
    try {
      const blobs = [...r.blobs.values()].filter((b) => b.encoding === Encoding.PATCH && b.chunks.length === 1).sort((a, b) => b.size - a.size);
      const entryOf = (d: Buffer) => r.index.entries.find((e) => e.type === FileType.REG && e.digest.equals(d));
      patched = { path: entryOf(blobs[0].digest)!.path, size: blobs[0].size };
      shared = r.index.entries.find((e) => e.type === FileType.REG && e.size > 1000 && r.blob(e.digest)?.encoding === Encoding.SAME)?.path;
    } finally {
      await r.close();
    }
    expect(shared).toBeDefined();
    const timeRead = async (p: string) => {
      const t0 = process.hrtime.bigint();
      await fsp.readFile(path.join(mp.v2, p));
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    // v1 read its version of the patched file, so the prefetch built this one: the first read builds nothing.
    const b0 = (await ffs.client.stats()).cache;
    const first = await timeRead(patched!.path);
    const b1 = (await ffs.client.stats()).cache;
    expect(b1.wholeBuilds + b1.chunkBuilds).toBe(b0.wholeBuilds + b0.chunkBuilds);
    expect(b1.hits).toBeGreaterThan(b0.hits);
    console.log(`first open+read of patched /${patched!.path} (${patched!.size} bytes, prefetched): ${first.toFixed(1)} ms`);

    // /shared has the same digest in v1 and v2; the v1 walk built it: a hit here.
    const before = (await ffs.client.stats()).cache;
    const [inV2, inV1] = [await fsp.readFile(path.join(mp.v2, shared!)), await fsp.readFile(path.join(mp.v1, shared!))];
    expect(inV2.equals(inV1)).toBe(true);
    const after = (await ffs.client.stats()).cache;
    expect(after.hits).toBeGreaterThan(before.hits);
    expect(after.wholeBuilds + after.chunkBuilds).toBe(before.wholeBuilds + before.chunkBuilds);

    expect(compare(await walkTree(mp.v2), ref.v2)).toEqual([]);
  });

  test('a damaged blob gives EIO for its file; other files and mounts keep working', async () => {
    // An image of its own, so that no other mount has its contents cached.
    const tree = path.join(dir, 'corrupt-tree');
    await fsp.mkdir(tree);
    await fsp.writeFile(path.join(tree, 'bad.bin'), randomBytes(300_000));
    await fsp.writeFile(path.join(tree, 'good.txt'), `fine ${Date.now()}\n`);
    const img = await buildDirImage([tree], { layout: path.join(dir, 'layout'), tag: 'corrupt' });
    cd.corrupt = path.join(dir, 'corrupt.cdimg');
    const conv = await convertImage({ ref: img.ref, output: cd.corrupt });
    const r = await CdimgReader.open(cd.corrupt);
    const chunk = r.blob(r.byPath.get('bad.bin')!.digest)!.chunks[0];
    await r.close();
    const fd = fs.openSync(cd.corrupt, 'r+');
    const b = Buffer.alloc(1);
    const at = chunk.offset + Math.floor(chunk.storedSize / 2);
    fs.readSync(fd, b, 0, 1, at);
    b[0] ^= 0x40;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);

    // The manager is asked directly (no store): the index is intact, the blob is not.
    await ffs.client.mount({ mountpoint: mp.corrupt, chain: [cd.corrupt], imageId: conv.imageId });
    expect(await readError(path.join(mp.corrupt, 'bad.bin'))).toBe('EIO');
    expect(await readError(path.join(mp.corrupt, 'bad.bin'))).toBe('EIO'); // still, not cached
    expect(await fsp.readFile(path.join(mp.corrupt, 'good.txt'), 'utf8')).toMatch(/^fine /);
    expect(await readError(path.join(mp.v1, 'etc/passwd'))).toBe('');
    expect((await ffs.client.ping()).pid).toBe(await ffs.managerPid());
    expect((await ffs.client.stats()).cache.failures).toBeGreaterThanOrEqual(2);
    expect(fs.readFileSync(managerPaths(path.join(dir, 'fuse')).log, 'utf8')).toMatch(binding === 'fuse3' ? /"path":"\/bad.bin".*read failed: EIO/ : /"path":"\/bad.bin".*open failed: EIO/);
    await ffs.client.unmount(mp.corrupt);
    expect(await d4fsMountsAt(mp.corrupt)).toEqual([]);
  });

  test('solid groups: members of a full image\'s groups and of a delta\'s groups coded against bases read as `cdimg unpack` writes them', async () => {
    // two versions of a tree of small texts that share their words; v2 edits a tenth of them
    const trees = [path.join(dir, 'grp-v1'), path.join(dir, 'grp-v2')];
    for (const [v, t] of trees.entries()) {
      for (let d = 0; d < 4; d++) {
        await fsp.mkdir(path.join(t, `m${d}`), { recursive: true });
        for (let i = 0; i < 50; i++) {
          let s = `module ${d}/${i}\n`;
          for (let k = 0; k < 20 + ((i * 7) % 40); k++) s += `export const value${(k * 13 + i) % 97} = "setting ${(k * d + i) % 31}";\n`;
          if (v === 1 && i % 10 === 3) s += `// edited in version 2 (${d})\n`;
          await fsp.writeFile(path.join(t, `m${d}`, `f${i}.js`), s);
        }
      }
    }
    const cdg = [path.join(dir, 'grp-v1.cdimg'), path.join(dir, 'grp-v2.cdimg'), path.join(dir, 'grp-d.cdimg')];
    const gids: string[] = [];
    for (const [v, t] of trees.entries()) {
      const img = await buildDirImage([t], { layout: path.join(dir, 'layout'), tag: `grp-v${v + 1}` });
      gids.push((await convertImage({ ref: img.ref, output: cdg[v] })).imageId);
    }
    await diffImages({ oldPath: cdg[0], newPath: cdg[1], out: cdg[2] });
    const r = await openTop([cdg[0], cdg[2]]);
    let patchMembers = 0;
    try {
      const members = [...r.blobs.values()].filter((b) => b.chunks[0]?.codec === Codec.GROUP);
      patchMembers = members.filter((b) => b.encoding === Encoding.PATCH).length;
      expect(patchMembers).toBeGreaterThanOrEqual(20);
    } finally {
      await r.close();
    }
    const r1 = await CdimgReader.open(cdg[0]);
    expect([...r1.blobs.values()].filter((b) => b.chunks[0]?.codec === Codec.GROUP).length).toBeGreaterThan(150);
    await r1.close();
    await unpackImage(cdg[1], path.join(dir, 'unpacked', 'grp-v2'));
    const want = await walkTree(path.join(dir, 'unpacked', 'grp-v2'));
    const mps = [path.join(dir, 'mnt', 'grp-v1'), path.join(dir, 'mnt', 'grp-v2')];
    for (const m of mps) await fsp.mkdir(m, { recursive: true });
    await ffs.client.mount({ mountpoint: mps[0], chain: [cdg[0]], imageId: gids[0] });
    await ffs.client.mount({ mountpoint: mps[1], chain: [cdg[0], cdg[2]], imageId: gids[1] });
    try {
      const before = (await ffs.client.stats()).cache;
      expect(compare(await walkTree(mps[1]), want)).toEqual([]);
      // a group coded against bases is built once: every member's base is built (one build each: the
      // group's dictionary), then the first member, and the others come with it (a build each would be 2x)
      const after = (await ffs.client.stats()).cache;
      expect(after.wholeBuilds - before.wholeBuilds).toBeLessThan(patchMembers * 1.5);
      const walk1 = await walkTree(mps[0]);
      expect([...walk1.values()].filter((n) => n.type === 'file').length).toBe(200);
    } finally {
      for (const m of mps) await ffs.client.unmount(m);
    }
  });

  test('kill -9 of the manager: the client detaches the dead mount and mounts again', async () => {
    const pid = (await ffs.managerPid())!;
    expect(pid).toBeGreaterThan(0);
    process.kill(pid, 'SIGKILL');
    // The watchdog notices (pings are refused), cleans and remounts. (With
    // fuse3 what the kernel has cached stays readable even meanwhile: wait
    // for the new manager first.)
    await eventually(async () => { const p = await ffs.managerPid(); return p !== undefined && p !== pid; }, 20_000, 'a new manager');
    await eventually(async () => (await readError(path.join(mp.v1, 'etc/passwd'))) === '', 20_000, 'v1 readable again');
    await eventually(async () => (await readError(path.join(mp.v2, 'etc/passwd'))) === '', 20_000, 'v2 readable again');
    const newPid = await ffs.managerPid();
    expect(newPid).toBeDefined();
    expect(newPid).not.toBe(pid);
    for (const m of [mp.v1, mp.v2, mp.special]) {
      const now = await d4fsMountsAt(m);
      expect(now).toHaveLength(1); // the dead one was detached, not stacked over
      expect(await readError(path.join(m, m === mp.special ? 'data/hard1' : 'etc/passwd'))).toBe('');
    }
    expect(tasksStuckInFuse()).toEqual([]);
    await ffs.check(mp.v1, labelsOf(ids.v1));
    // Contents built before the crash are served from the cache (verified again).
    expect(compare(await walkTree(mp.v2), ref.v2)).toEqual([]);
  });

  test('the cache is bounded (open contents stay); a restarted manager verifies what it finds', async () => {
    const root = path.join(dir, 'fuse-small');
    const bound = 1_000_000;
    const small = new FuseFileSystem({ root, stores: [storeRoot], log, watchIntervalMs: 0, managerArgs: ['--cache-max-bytes', String(bound)] });
    const m = path.join(dir, 'mnt', 'small');
    await fsp.mkdir(m);
    const cacheDir = managerPaths(root).cache;
    const r = await CdimgReader.open(cd.v1);
    const hexOf = (p: string) => r.byPath.get(p)!.digest.toString('hex');
    const files = [...ref.v1.values()].filter((n) => n.type === 'file' && n.size > 60_000 && n.size < 400_000).slice(0, 20);
    await r.close();
    expect(files.reduce((n, f) => n + f.size, 0)).toBeGreaterThan(2 * bound);
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    try {
      await small.mount(m, labelsOf(ids.v1));
      const held = await fsp.open(path.join(m, files[0].path));
      try {
        for (const f of files.slice(1)) expect(sha(await fsp.readFile(path.join(m, f.path)))).toBe(f.sha256);
        if (binding === 'fuse3') {
          // No open reaches fuse3: a content stays referenced for a moment after
          // its last read (then it may be evicted; a later read builds it again).
          const st = await eventually(async () => {
            const c = (await small.client.stats()).cache;
            return c.evictions > 0 && c.bytes <= bound && c;
          }, 10_000, 'evictions once the contents were let go');
          expect(st.bytes).toBeLessThanOrEqual(bound);
        } else {
          const st = (await small.client.stats()).cache;
          expect(st.evictions).toBeGreaterThan(0);
          expect(st.bytes).toBeLessThanOrEqual(bound);
          expect(fs.existsSync(path.join(cacheDir, hexOf(files[0].path)))).toBe(true); // open: kept
        }
        expect(sha(await held.readFile())).toBe(files[0].sha256);
      } finally {
        await held.close();
      }
      // An evicted content is simply built again.
      expect(sha(await fsp.readFile(path.join(m, files[1].path)))).toBe(files[1].sha256);

      // Restart with a damaged cache file: it is verified, found wrong, rebuilt.
      await small.client.shutdown(); // keeps its state file: the next manager mounts again
      await eventually(() => processesMentioning(root).length === 0, 10_000, 'small manager gone');
      // Chosen once the manager is gone: its shutdown may still evict (the cache is over its bound).
      const victim = files.find((f) => fs.existsSync(path.join(cacheDir, hexOf(f.path))))!;
      expect(victim).toBeDefined();
      const cached = path.join(cacheDir, hexOf(victim.path));
      const fd = fs.openSync(cached, 'r+');
      fs.writeSync(fd, Buffer.from('damaged'), 0, 7, 100);
      fs.closeSync(fd);
      await small.ensureManager();
      expect((await small.client.list()).map((x) => x.mountpoint)).toEqual([m]);
      expect(sha(await fsp.readFile(path.join(m, victim.path)))).toBe(victim.sha256);
      expect(fs.readFileSync(managerPaths(root).log, 'utf8')).toMatch(/cached content does not match its digest/);
    } finally {
      await small.unmount(m).catch(() => undefined);
      await small.client.shutdown({ forget: true }).catch(() => undefined);
      small.close();
      await eventually(() => processesMentioning(root).length === 0, 10_000, 'small manager gone');
    }
  });

  test('the snapshotter provides a d4fs image as a remote snapshot over FUSE, across its own kill -9', async () => {
    const root = path.join(dir, 'sn');
    const sock = path.join(dir, 'sn.sock');
    const args = ['--store', storeRoot];
    let sn: SnapshotterProcess | undefined = await startSnapshotter({ root, address: sock, args });
    const client = new SnapshotsClient(sock);
    const merged = path.join(dir, 'merged');
    await fsp.mkdir(merged);
    try {
      const layer = d4fsDiffId(ids.v1);
      const labels = labelsOf(ids.v1);
      // d4fs labels on a snapshot that is not the image's own (another chain id) mount nothing.
      await client.prepare('d4fs-fuse-test/other', '', { ...labels, [SNAPSHOT_REF]: 'd4fs-fuse-test/not-the-image' });
      expect(mountsUnder(path.join(root, 'snapshots'))).toEqual([]);
      await client.remove('d4fs-fuse-test/other');
      await expect(client.prepare('d4fs-fuse-test/extract', '', labels)).rejects.toMatchObject({ kind: 'ALREADY_EXISTS' });
      const info = await client.stat(layer);
      expect(info.labels[D4FS_IMAGE_ID]).toBe(ids.v1);
      const fuseMounts = mountsUnder(path.join(root, 'snapshots'));
      expect(fuseMounts).toHaveLength(1);
      // A container's rootfs: overlay with the FUSE mount as lower dir.
      const mounts = await client.prepare('d4fs-fuse-test/rootfs', layer);
      await mountAll(mounts, merged);
      expect(await fsp.readFile(path.join(merged, 'etc/passwd'), 'utf8')).toMatch(/^root:/);
      await fsp.writeFile(path.join(merged, 'etc/written'), 'upper');

      // kill -9 of the snapshotter: the files stay readable.
      await sn.kill9();
      sn = undefined;
      expect(await fsp.readFile(path.join(merged, 'usr/sbin/nginx'))).toHaveLength(ref.v1.get('usr/sbin/nginx')!.size);
      sn = await startSnapshotter({ root, address: sock, args });
      expect((await client.stat(layer)).name).toBe(layer);
      expect(mountsUnder(path.join(root, 'snapshots'))).toEqual(fuseMounts);
      expect(await fsp.readFile(path.join(merged, 'etc/written'), 'utf8')).toBe('upper');

      execFileSync('umount', [merged]);
      await client.remove('d4fs-fuse-test/rootfs');
      await client.remove(layer);
      expect(mountsUnder(path.join(root, 'snapshots'))).toEqual([]);
    } finally {
      client.close();
      if (mountsUnder(merged).length) execFileSync('umount', ['-l', merged]);
      expect(await sn?.stop()).toBe(0);
      // The snapshotter's manager outlives it by design: stop it here.
      await new ManagerClient(managerPaths(path.join(root, 'fuse')).socket).shutdown({ forget: true }).catch(() => undefined);
    }
  });

  test('at the end nothing is mounted and no manager runs', async () => {
    for (const m of [mp.v1, mp.v2, mp.special]) await ffs.unmount(m);
    await ffs.unmount(mp.v1); // unmounting twice is fine
    expect(await ffs.client.list()).toEqual([]);
    await ffs.client.shutdown({ forget: true });
    ffs.close();
    await eventually(() => processesMentioning(dir).length === 0, 10_000, 'managers gone');
    expect(mountsUnder(dir)).toEqual([]);
    expect(fs.readFileSync('/proc/mounts', 'utf8')).not.toContain(dir);
    expect(tasksStuckInFuse()).toEqual([]);
  });
});
