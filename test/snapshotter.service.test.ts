/**
 * The snapshotter's gRPC service through a real gRPC client on a unix
 * socket, with real mounts: the behaviours of containerd's snapshotter test
 * suite (snapshots/testsuite), the mounts containerd's overlayfs snapshotter
 * returns, Update/List/Usage/Cleanup, reconciliation after a crash, the
 * remote-snapshot hook and request deadlines.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { D4fsError } from '../src/errors';
import { D4FS_IMAGE_REF, D4FS_REMOTE, GC_ROOT, SNAPSHOT_REF } from '../src/labels';
import {
  type FileSystem,
  FileSystemRemoteProvider,
  Kind,
  type Labels,
  type Mount,
  OverlaySnapshotter,
  type OverlaySnapshotterOptions,
  type RemoteSnapshotProvider,
  SnapshotsClient,
  type SnapshotterServer,
  compareTimestamps,
  serveSnapshotter,
  toStatus,
} from '../src/snapshotter';
import { mountAll, mountsUnder, mustRun, unmount, unmountAllUnder } from './helpers/containerd';

jest.setTimeout(60_000);

const gcLabels = (): Labels => ({ [GC_ROOT]: new Date().toISOString() });

/** One snapshotter served on a socket, a client, and a work area. */
interface Env {
  dir: string;
  root: string;
  work: string;
  sock: string;
  sn: OverlaySnapshotter;
  server: SnapshotterServer;
  client: SnapshotsClient;
  /** Mounts `mounts` on work/<name> (created). */
  mountAt(mounts: Mount[], name: string): Promise<string>;
  /** Stops serving and closes the snapshotter (the directory stays). */
  stop(): Promise<void>;
  /** Opens the snapshotter again on the same root and serves it. */
  restart(opts?: Partial<OverlaySnapshotterOptions>): Promise<void>;
}

const envs: Env[] = [];

async function setup(opts: Partial<OverlaySnapshotterOptions> & { requestTimeoutMs?: number } = {}): Promise<Env> {
  const dir = await fsp.mkdtemp('/tmp/d4sn-');
  const root = path.join(dir, 'root');
  const work = path.join(dir, 'work');
  const sock = path.join(dir, 's.sock');
  await fsp.mkdir(work);
  const logger = pino({ level: process.env.D4FS_TEST_LOG ?? 'silent' });
  const env = { dir, root, work, sock } as Env;
  const start = async (o: Partial<OverlaySnapshotterOptions>) => {
    env.sn = await OverlaySnapshotter.open({ root, logger, ...opts, ...o });
    env.server = await serveSnapshotter(sock, { snapshotter: env.sn, logger, requestTimeoutMs: opts.requestTimeoutMs });
    env.client = new SnapshotsClient(sock, { timeoutMs: 20_000 });
  };
  env.stop = async () => {
    env.client.close();
    await env.server.shutdown(1000);
    await env.sn.close();
    await fsp.rm(sock, { force: true });
  };
  env.restart = async (o = {}) => {
    await start(o);
  };
  env.mountAt = async (mounts, name) => {
    const target = path.join(work, name);
    await fsp.mkdir(target, { recursive: true });
    await mountAll(mounts, target);
    return target;
  };
  await start({});
  envs.push(env);
  return env;
}

afterEach(async () => {
  for (const env of envs.splice(0)) {
    await env.stop().catch(() => undefined);
    await unmountAllUnder(env.dir);
    await fsp.rm(env.dir, { recursive: true, force: true });
  }
});

/** Rejection of `p` as a D4fsError (fails the test if it resolves). */
async function failure(p: Promise<unknown>): Promise<D4fsError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(D4fsError);
    return e as D4fsError;
  }
  throw new Error('expected a failure');
}

// ---------------------------------------------------------------------------
// Trees: what a directory holds, for comparisons
// ---------------------------------------------------------------------------

/** path → "type mode uid:gid [content digest | link target]" for every entry under `dir` (root included). */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const inodes = new Map<string, string>();
  const visit = async (rel: string) => {
    const p = path.join(dir, rel);
    const st = await fsp.lstat(p);
    const mode = (st.mode & 0o7777).toString(8);
    const owner = `${st.uid}:${st.gid}`;
    if (st.isDirectory()) {
      out[rel || '/'] = `d ${mode} ${owner}`;
      for (const name of (await fsp.readdir(p)).sort()) await visit(path.join(rel, name));
    } else if (st.isSymbolicLink()) {
      out[rel] = `l ${owner} -> ${await fsp.readlink(p)}`;
    } else if (st.isFile()) {
      const digest = createHash('sha256').update(await fsp.readFile(p)).digest('hex').slice(0, 16);
      const ino = `${st.dev}:${st.ino}`;
      // Hard links: the second name of an inode records the first.
      const first = st.nlink > 1 ? inodes.get(ino) : undefined;
      if (st.nlink > 1 && !first) inodes.set(ino, rel);
      out[rel] = `f ${mode} ${owner} ${digest}${first ? ` link=${first}` : ''}`;
    } else {
      out[rel] = `o ${mode} ${owner}`;
    }
  };
  await visit('');
  return out;
}

type Applier = (dir: string) => Promise<void>;

const writeFile = (rel: string, content: string, mode = 0o644): Applier => async (dir) => {
  await fsp.writeFile(path.join(dir, rel), content);
  await fsp.chmod(path.join(dir, rel), mode);
};
const mkdir = (rel: string, mode = 0o755): Applier => async (dir) => {
  await fsp.mkdir(path.join(dir, rel));
  await fsp.chmod(path.join(dir, rel), mode);
};
const removeAll = (rel: string): Applier => (dir) => fsp.rm(path.join(dir, rel), { recursive: true, force: true });
/** Renames like mv(1): overlayfs refuses to rename a lower directory (EXDEV) and mv copies it instead. */
const rename = (from: string, to: string): Applier => async (dir) => {
  await mustRun('mv', ['-T', path.join(dir, from), path.join(dir, to)]);
};
const link = (from: string, to: string): Applier => (dir) => fsp.link(path.join(dir, from), path.join(dir, to));
const symlink = (target: string, rel: string): Applier => (dir) => fsp.symlink(target, path.join(dir, rel));
const chown = (rel: string, uid: number, gid: number): Applier => (dir) => fsp.lchown(path.join(dir, rel), uid, gid);
const apply = (...as: Applier[]): Applier => async (dir) => {
  for (const a of as) await a(dir);
};

/**
 * containerd's checkSnapshots: applies each layer to a flat directory and to
 * an active snapshot on the previous commit (mounted with the returned
 * mounts), commits it, and checks that a view of the commit equals the flat
 * directory.
 */
async function checkLayers(env: Env, layers: Applier[]): Promise<void> {
  const flat = path.join(env.work, 'flat');
  await fsp.mkdir(flat);
  await fsp.chmod(flat, 0o755);
  let parent = '';
  for (const [i, layer] of layers.entries()) {
    const key = `preparing-${i}`;
    const target = await env.mountAt(await env.client.prepare(key, parent, gcLabels()), key);
    await layer(flat);
    await layer(target);
    await unmount(target);
    parent = `committed-${i}`;
    await env.client.commit(parent, key, gcLabels());
    const viewKey = `view-${i}`;
    const view = await env.mountAt(await env.client.view(viewKey, parent, gcLabels()), viewKey);
    try {
      expect(await tree(view)).toEqual(await tree(flat));
    } finally {
      await unmount(view);
    }
    await env.client.remove(viewKey);
  }
  expect(mountsUnder(env.dir)).toEqual([]);
}

// ---------------------------------------------------------------------------

describe('snapshots service: containerd testsuite behaviours', () => {
  test('Basic: prepare, write, commit, next layer, view of the chain, remove order', async () => {
    const env = await setup();
    const c = env.client;
    const initial = apply(writeFile('foo', 'foo\n', 0o777), mkdir('a'), mkdir('a/b'), mkdir('a/b/c'));
    const diff = apply(writeFile('bar', 'bar\n', 0o777), writeFile('foo', 'bar\n', 0o777), removeAll('a/b'));
    const flat = path.join(env.work, 'flat');
    await fsp.mkdir(flat);
    await fsp.chmod(flat, 0o755);

    const preparing = await env.mountAt(await c.prepare('preparing', '', gcLabels()), 'preparing');
    await initial(preparing);
    await initial(flat);
    await unmount(preparing);
    await c.commit('committed', 'preparing', gcLabels());

    const si = await c.stat('committed');
    expect(si).toMatchObject({ name: 'committed', parent: '', kind: Kind.Committed });
    expect((await failure(c.stat('preparing'))).kind).toBe('NOT_FOUND');

    const next = await env.mountAt(await c.prepare('nextlayer', 'committed', gcLabels()), 'nextlayer');
    expect(await tree(next)).toEqual(await tree(flat));
    await diff(next);
    await diff(flat);
    await unmount(next);

    const ni = await c.stat('nextlayer');
    expect(ni).toMatchObject({ parent: 'committed', kind: Kind.Active });
    await c.commit('committed-next', 'nextlayer', gcLabels());
    const si2 = await c.stat('committed-next');
    expect(si2).toMatchObject({ parent: 'committed', kind: Kind.Committed });
    expect((await failure(c.stat('nextlayer'))).kind).toBe('NOT_FOUND');

    const walked = Object.fromEntries((await c.list()).map((i) => [i.name, i]));
    expect(walked).toEqual({ committed: si, 'committed-next': si2 });

    const view = await env.mountAt(await c.view('nextnextlayer', 'committed-next', gcLabels()), 'nextnextlayer');
    const seen = await tree(view);
    await unmount(view);
    expect(seen).toEqual(await tree(flat));
    expect(seen['a/b']).toBeUndefined();
    expect(fs.readFileSync(path.join(flat, 'foo'), 'utf8')).toBe('bar\n');

    await c.remove('nextnextlayer');
    const err = await failure(c.remove('committed'));
    expect(err.kind).toBe('FAILED_PRECONDITION');
    expect(err.message).toMatch(/remove/);
    await c.remove('committed-next');
    await c.remove('committed');
    expect(await c.list()).toEqual([]);
    expect(fs.readdirSync(path.join(env.root, 'snapshots'))).toEqual([]);
    expect(mountsUnder(env.dir)).toEqual([]);
  });

  test('StatActive / StatCommitted / Transitivity', async () => {
    const { client: c, ...env } = await setup();
    const m = await c.prepare('preparing', '', gcLabels());
    const target = await env.mountAt(m, 'preparing');
    await fsp.writeFile(path.join(target, 'foo'), 'foo\n');
    expect(await c.stat('preparing')).toMatchObject({ name: 'preparing', kind: Kind.Active, parent: '' });
    await unmount(target);
    await c.commit('snapA', 'preparing', gcLabels());
    expect(await c.stat('snapA')).toMatchObject({ name: 'snapA', kind: Kind.Committed, parent: '' });

    await c.prepare('next', 'snapA', gcLabels());
    await c.commit('snapB', 'next', gcLabels());
    const b = await c.stat('snapB');
    expect(b.parent).toBe('snapA');
    expect((await c.stat(b.parent)).parent).toBe('');
  });

  test('PrepareView: keys are unique across Prepare and View (ALREADY_EXISTS)', async () => {
    const env = await setup();
    const c = env.client;
    await c.prepare('preparing', '', gcLabels());
    await c.commit('snapA', 'preparing', gcLabels());
    await c.prepare('newlayer', 'snapA', gcLabels());
    expect((await failure(c.view('newlayer', 'snapA', gcLabels()))).kind).toBe('ALREADY_EXISTS');
    await c.prepare('prepLayer', 'snapA', gcLabels());
    expect((await failure(c.prepare('prepLayer', 'snapA', gcLabels()))).kind).toBe('ALREADY_EXISTS');
    await c.view('viewLayer', 'snapA', gcLabels());
    expect((await failure(c.view('viewLayer', 'snapA', gcLabels()))).kind).toBe('ALREADY_EXISTS');
    // a committed name is a key too
    expect((await failure(c.prepare('snapA', '', gcLabels()))).kind).toBe('ALREADY_EXISTS');
    expect((await failure(c.commit('snapA', 'newlayer'))).kind).toBe('ALREADY_EXISTS');
    expect((await failure(c.commit('viewLayer', 'newlayer'))).kind).toBe('ALREADY_EXISTS');
    // a failed create leaves no directory behind
    const dirs = fs.readdirSync(path.join(env.root, 'snapshots')).sort();
    expect(dirs).toEqual(['1', '2', '3', '4']);
  });

  test('errors: NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION where containerd uses them', async () => {
    const { client: c } = await setup();
    for (const p of [c.stat('nope'), c.mounts('nope'), c.remove('nope'), c.usage('nope'), c.commit('x', 'nope')]) {
      expect((await failure(p)).kind).toBe('NOT_FOUND');
    }
    expect((await failure(c.prepare('a', 'missing-parent'))).kind).toBe('NOT_FOUND');
    expect((await failure(c.update({ name: 'nope', parent: '', kind: Kind.Active, labels: {}, created: { seconds: 0, nanos: 0 }, updated: { seconds: 0, nanos: 0 } }))).kind).toBe('NOT_FOUND');

    await c.prepare('active', '');
    await c.view('view', '');
    // parents must be committed
    expect((await failure(c.prepare('child', 'active'))).kind).toBe('INVALID_ARGUMENT');
    expect((await failure(c.view('child', 'view'))).kind).toBe('INVALID_ARGUMENT');
    // only active snapshots commit
    expect((await failure(c.commit('c', 'view'))).kind).toBe('FAILED_PRECONDITION');
    await c.commit('committed', 'active');
    expect((await failure(c.commit('c2', 'committed'))).kind).toBe('FAILED_PRECONDITION');
    // committed snapshots have no mounts
    expect((await failure(c.mounts('committed'))).kind).toBe('FAILED_PRECONDITION');
    // empty keys and oversized labels
    expect((await failure(c.prepare('', ''))).kind).toBe('INVALID_ARGUMENT');
    expect((await failure(c.prepare('big', '', { k: 'x'.repeat(5000) }))).kind).toBe('INVALID_ARGUMENT');
    expect((await failure(c.list(['kind==']))).kind).toBe('INVALID_ARGUMENT');
  });

  test('Remove: keys become reusable; a parent with children cannot go (checkRemove, RemoveIntermediateSnapshot)', async () => {
    const { client: c } = await setup();
    await c.prepare('committed-a', '', gcLabels());
    await c.commit('committed-1', 'committed-a', gcLabels());
    await c.prepare('reuse-1', 'committed-1', gcLabels());
    await c.remove('reuse-1');
    await c.view('reuse-1', 'committed-1', gcLabels());
    await c.remove('reuse-1');
    await c.prepare('reuse-1', '', gcLabels());
    await c.remove('committed-1');
    await c.commit('committed-1', 'reuse-1', gcLabels());

    await c.prepare('base', '', gcLabels());
    await c.commit('committed-base', 'base', gcLabels());
    await c.prepare('intermediate', 'committed-base', gcLabels());
    await c.commit('committed-inter', 'intermediate', gcLabels());
    await c.prepare('toplayer', 'committed-inter', gcLabels());
    expect((await failure(c.remove('committed-inter'))).kind).toBe('FAILED_PRECONDITION');
    expect((await failure(c.remove('committed-base'))).kind).toBe('FAILED_PRECONDITION');
    await c.remove('toplayer');
    await c.remove('committed-inter');
    await c.remove('committed-base');
    expect((await c.list()).map((i) => i.name)).toEqual(['committed-1']);
  });

  test('Update with field masks (checkUpdate)', async () => {
    const { client: c } = await setup();
    const t1 = Date.now();
    await c.prepare('c1-a', '', gcLabels());
    await c.commit('c1', 'c1-a', gcLabels());
    await c.prepare('c2-a', 'c1', gcLabels());
    await c.commit('c2', 'c2-a', gcLabels());
    await c.prepare('a1', 'c2', gcLabels());
    await c.prepare('a2', '', gcLabels());
    await c.view('v1', 'c2', gcLabels());
    await c.view('v2', '', gcLabels());
    const t2 = Date.now();
    const cases: [string, Kind, string][] = [
      ['c1', Kind.Committed, ''],
      ['c2', Kind.Committed, 'c1'],
      ['a1', Kind.Active, 'c2'],
      ['a2', Kind.Active, ''],
      ['v1', Kind.View, 'c2'],
      ['v2', Kind.View, ''],
    ];
    const ms = (ts: { seconds: number; nanos: number }) => ts.seconds * 1000 + ts.nanos / 1e6;
    for (const [name, kind, parent] of cases) {
      let st = await c.stat(name);
      expect(ms(st.created)).toBeGreaterThanOrEqual(t1 - 1);
      expect(ms(st.created)).toBeLessThanOrEqual(t2 + 1);
      expect(st.updated).toEqual(st.created);
      expect(st).toMatchObject({ name, kind, parent });
      const created = st.created;
      const root = st.labels[GC_ROOT];

      // no mask: all mutable fields (labels); parent is ignored
      let expected: Labels = { l1: 'v1', l2: 'v2', l3: 'v3', [GC_ROOT]: root };
      const u1 = Date.now();
      st = await c.update({ ...st, parent: 'doesnotexist', labels: expected });
      const u2 = Date.now();
      expect(st.created).toEqual(created);
      expect(ms(st.updated)).toBeGreaterThanOrEqual(u1 - 1);
      expect(ms(st.updated)).toBeLessThanOrEqual(u2 + 1);
      expect(compareTimestamps(st.updated, st.created)).toBeGreaterThan(0);
      expect(st).toMatchObject({ name, kind, parent, labels: expected });

      // labels.<key>: set the given, delete the absent, ignore the others
      expected = { l1: 'updated', l3: 'v3', [GC_ROOT]: root };
      st = await c.update({ ...st, labels: { l1: 'updated', l4: 'v4' } }, ['labels.l1', 'labels.l2']);
      expect(st.labels).toEqual(expected);

      // labels: replace all
      expected = { l4: 'v4', [GC_ROOT]: root };
      st = await c.update({ ...st, labels: expected }, ['labels']);
      expect(st.labels).toEqual(expected);
      expect((await c.stat(name)).labels).toEqual(expected);

      // immutable fields
      const err = await failure(c.update({ ...st, parent: 'doesnotexist' }, ['parent']));
      expect(err.kind).toBe('INVALID_ARGUMENT');
      // an empty value deletes, as in containerd
      st = await c.update({ ...st, labels: { l4: '' } }, ['labels.l4']);
      expect(st.labels).toEqual({ [GC_ROOT]: root });
    }
  });

  test('List filters (checkWalk), streamed in batches', async () => {
    const { client: c } = await setup();
    const root = { [GC_ROOT]: 'check-walk' };
    await c.prepare('a-np', '', root);
    await c.prepare('p-tmp', '', root);
    await c.commit('p', 'p-tmp', root);
    await c.prepare('a', 'p', root);
    await c.view('v', 'p', root);
    await c.prepare('p-wl-tmp', '', root);
    await c.commit('p-wl', 'p-wl-tmp', { l: '1', ...root });
    await c.prepare('a-wl', 'p-wl', { l: '2', ...root });
    await c.view('v-wl', 'p-wl', { l: '3', ...root });
    await c.prepare('a-np-wl', '', { l: '2', ...root });
    const cases: [string[], string[]][] = [
      [['labels."containerd.io/gc.root"==check-walk'], ['a-np', 'p', 'a', 'v', 'p-wl', 'a-wl', 'v-wl', 'a-np-wl']],
      [['kind==active,labels."containerd.io/gc.root"==check-walk'], ['a-np', 'a', 'a-wl', 'a-np-wl']],
      [['kind==view,labels."containerd.io/gc.root"==check-walk'], ['v', 'v-wl']],
      [['kind==committed,labels."containerd.io/gc.root"==check-walk'], ['p', 'p-wl']],
      [['name==p', 'name==a-np-wl'], ['p', 'a-np-wl']],
      [['name==a-wl,labels.l'], ['a-wl']],
      [['parent==p'], ['a', 'v']],
      [['parent!="",labels."containerd.io/gc.root"==check-walk'], ['a', 'v', 'a-wl', 'v-wl']],
      [['labels.l'], ['p-wl', 'a-wl', 'v-wl', 'a-np-wl']],
      [['labels.l==2'], ['a-wl', 'a-np-wl']],
    ];
    for (const [filters, want] of cases) {
      expect((await c.list(filters)).map((i) => i.name).sort()).toEqual([...want].sort());
    }

    // more than one response message
    for (let i = 0; i < 230; i++) await c.view(`many-${i}`, '', {});
    expect((await c.list(['name~=^many-'])).length).toBe(230);
  });

  test('layers: deletions, opaque directories, renames, hard links, symlinks, ownership and modes', async () => {
    const env = await setup();
    await checkLayers(env, [
      // DeletedFilesInChildSnapshot + LayerFileUpdate + RootPermission
      apply(writeFile('foo', 'foo\n', 0o777), writeFile('foobar', 'foobar\n', 0o777), mkdir('lib'), mkdir('lib/keep'), writeFile('lib/hidden', 'x')),
      apply(removeAll('foobar'), writeFile('foo', 'a longer foo\n', 0o600)),
      // RemoveDirectoryInLowerLayer: the new /lib must not show the old entries
      apply(removeAll('lib'), mkdir('lib', 0o700), writeFile('lib/newfile', 'n')),
      // MoveFileFromLowerLayer / Rename with hard links and symlinks
      apply(mkdir('dir1', 0o700), writeFile('dir1/f1', 'Hello'), mkdir('dir2', 0o700), writeFile('dir2/f2', '...'), symlink('../foo', 'dir2/ln')),
      apply(mkdir('dir3', 0o700), writeFile('dir3/f1', 'Hello'), removeAll('dir1'), link('dir2/f2', 'dir3/f2'), removeAll('dir2/f2'), rename('dir2', 'dir4')),
      // Chown / DirectoryPermissionOnCommit
      apply(mkdir('opt'), mkdir('opt/a', 0o700), writeFile('opt/a/file', 'c'), chown('opt', 1, 1), chown('opt/a', 2, 3), chown('opt/a/file', 4, 5)),
      apply(chown('opt/a/file', 0, 0), writeFile('opt/new', 'n', 0o4755), chown('foo', 1000, 1000)),
      apply(),
    ]);
  });

  test('ViewReadonly: a view is mounted read-only', async () => {
    const env = await setup();
    const c = env.client;
    await c.prepare('p', '', gcLabels());
    await c.commit('committed', 'p', gcLabels());
    const view = await env.mountAt(await c.view('view', 'committed', gcLabels()), 'view');
    await expect(fsp.writeFile(path.join(view, 'testfile'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    await unmount(view);
    // a view on top of two layers (overlay without upper dir) is read-only too
    await c.prepare('p2', 'committed');
    await c.commit('committed2', 'p2');
    const view2 = await env.mountAt(await c.view('view2', 'committed2'), 'view2');
    await expect(fsp.writeFile(path.join(view2, 'testfile'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    await unmount(view2);
  });

  test('Chown: a new snapshot takes the owner of its parent root', async () => {
    const env = await setup();
    const c = env.client;
    const t = await env.mountAt(await c.prepare('p', ''), 'p');
    await fsp.chown(t, 1234, 5678);
    await unmount(t);
    await c.commit('c', 'p');
    const t2 = await env.mountAt(await c.prepare('child', 'c'), 'child');
    const st = await fsp.stat(t2);
    await unmount(t2);
    expect([st.uid, st.gid]).toEqual([1234, 5678]);
    expect(st.mode & 0o777).toBe(0o755);
  });

  test('128 layers: a view over 127 parents sees every layer', async () => {
    const env = await setup();
    const c = env.client;
    let parent = '';
    for (let i = 0; i < 128; i++) {
      const mounts = await c.prepare(`prepare-${i}`, parent, gcLabels());
      // Write straight into the snapshot's own directory (its upper dir).
      const upper = i === 0 ? mounts[0].source : mounts[0].options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
      if (i === 0) {
        await fsp.writeFile(path.join(upper, 'bottom'), 'way at the bottom\n');
        await fsp.mkdir(path.join(upper, 'ADDHERE'));
      } else {
        await fsp.mkdir(path.join(upper, 'ADDHERE'));
        await fsp.writeFile(path.join(upper, 'ADDHERE', `file-${i}`), 'same\n');
      }
      await fsp.writeFile(path.join(upper, 'overwriteme'), `${i} WAS HERE!\n`);
      parent = `committed-${i}`;
      await c.commit(parent, `prepare-${i}`, gcLabels());
    }
    const mounts = await c.view('fullview', parent, gcLabels());
    expect(mounts[0].type).toBe('overlay');
    const lower = mounts[0].options.find((o) => o.startsWith('lowerdir='))!.split(':');
    expect(lower).toHaveLength(128);
    const view = await env.mountAt(mounts, 'fullview');
    try {
      expect(fs.readFileSync(path.join(view, 'overwriteme'), 'utf8')).toBe('127 WAS HERE!\n');
      expect(fs.readFileSync(path.join(view, 'bottom'), 'utf8')).toBe('way at the bottom\n');
      expect(fs.readdirSync(path.join(view, 'ADDHERE'))).toHaveLength(127);
    } finally {
      await unmount(view);
    }
  });
});

describe('snapshots service: overlay specifics', () => {
  test('mounts are exactly those of containerd overlayfs snapshotter', async () => {
    const env = await setup();
    const c = env.client;
    const snap = (id: number) => path.join(env.root, 'snapshots', String(id));
    const opts = fs.existsSync('/sys/module/overlay/parameters/index') ? ['index=off'] : [];

    expect(await c.prepare('a', '')).toEqual([{ type: 'bind', source: `${snap(1)}/fs`, options: ['rw', 'rbind'] }]);
    expect(await c.view('v0', '')).toEqual([{ type: 'bind', source: `${snap(2)}/fs`, options: ['ro', 'rbind'] }]);
    await c.commit('c1', 'a');
    const b = await c.prepare('b', 'c1');
    expect(b).toEqual([
      { type: 'overlay', source: 'overlay', options: [...opts, `workdir=${snap(3)}/work`, `upperdir=${snap(3)}/fs`, `lowerdir=${snap(1)}/fs`] },
    ]);
    expect(await c.mounts('b')).toEqual(b);
    expect(await c.view('v1', 'c1')).toEqual([{ type: 'bind', source: `${snap(1)}/fs`, options: ['ro', 'rbind'] }]);
    await c.commit('c2', 'b');
    expect(await c.view('v2', 'c2')).toEqual([
      { type: 'overlay', source: 'overlay', options: [...opts, `lowerdir=${snap(3)}/fs:${snap(1)}/fs`] },
    ]);
    await c.prepare('top', 'c2');
    expect((await c.mounts('top'))[0].options).toEqual([
      ...opts,
      `workdir=${snap(6)}/work`,
      `upperdir=${snap(6)}/fs`,
      `lowerdir=${snap(3)}/fs:${snap(1)}/fs`,
    ]);
    // directory layout: fs (0755) for all, work (0711) for active snapshots only
    expect(fs.statSync(`${snap(6)}/fs`).mode & 0o777).toBe(0o755);
    expect(fs.statSync(`${snap(6)}/work`).mode & 0o777).toBe(0o711);
    expect(fs.existsSync(`${snap(2)}/work`)).toBe(false);
  });

  test('Usage counts distinct inodes and allocated bytes of the upper dir, recorded at commit', async () => {
    const env = await setup();
    const c = env.client;
    const t = await env.mountAt(await c.prepare('u', ''), 'u');
    await fsp.writeFile(path.join(t, 'a'), Buffer.alloc(10_000, 1));
    await fsp.mkdir(path.join(t, 'd'));
    await fsp.writeFile(path.join(t, 'd', 'b'), Buffer.alloc(100_000, 2));
    await fsp.link(path.join(t, 'a'), path.join(t, 'd', 'a-link'));
    await fsp.symlink('a', path.join(t, 'sym'));
    await unmount(t);
    const upper = path.join(env.root, 'snapshots', '1', 'fs');
    const size = Number((await mustRun('du', ['-s', '--block-size=1', upper])).split(/\s/)[0]);
    const inodes = Number((await mustRun('du', ['-s', '--inodes', upper])).split(/\s/)[0]);
    const u = await c.usage('u');
    expect(u).toEqual({ size, inodes });
    expect(u.inodes).toBe(5); // root, a (= d/a-link), d, d/b, sym
    await c.commit('uc', 'u');
    expect(await c.usage('uc')).toEqual(u);
    // views and empty actives
    await c.view('uv', 'uc');
    expect((await c.usage('uv')).inodes).toBe(0);
    const child = await c.prepare('uchild', 'uc');
    expect(child[0].type).toBe('overlay');
    expect((await c.usage('uchild')).inodes).toBe(1);
  });

  test('Cleanup removes directories without records; asynchronous removal waits for it', async () => {
    const env = await setup({ asyncRemove: true });
    const c = env.client;
    const snaps = path.join(env.root, 'snapshots');
    await c.prepare('a', '');
    await c.prepare('b', '');
    await c.remove('a');
    expect(fs.readdirSync(snaps).sort()).toEqual(['1', '2']);
    await fsp.mkdir(path.join(snaps, '4242', 'fs'), { recursive: true });
    await fsp.mkdir(path.join(snaps, 'new-stale'));
    await c.cleanup();
    expect(fs.readdirSync(snaps)).toEqual(['2']);
    expect((await c.list()).map((i) => i.name)).toEqual(['b']);
  });

  test('start-up reconciles: orphan directories go (even with a stale mount), records without directory go with descendants', async () => {
    const env = await setup();
    const c = env.client;
    const snaps = path.join(env.root, 'snapshots');
    await c.prepare('base', '');
    await c.commit('c1', 'base'); // 1
    await c.prepare('child', 'c1'); // 2
    await c.view('view', 'c1'); // 3
    await c.prepare('other', ''); // 4
    await c.commit('c2', 'other');
    await c.prepare('keep', 'c2'); // 5
    await env.stop();

    await fsp.rm(path.join(snaps, '1'), { recursive: true });
    await fsp.rm(path.join(snaps, '5', 'work'), { recursive: true });
    await fsp.mkdir(path.join(snaps, '777', 'fs'), { recursive: true });
    await mustRun('mount', ['-t', 'tmpfs', 'tmpfs', path.join(snaps, '777', 'fs')]);
    await fsp.mkdir(path.join(snaps, 'new-crashed', 'fs'), { recursive: true });

    await env.restart();
    expect((await env.client.list()).map((i) => i.name).sort()).toEqual(['c2', 'keep']);
    expect(fs.readdirSync(snaps).sort()).toEqual(['4', '5']);
    expect(fs.existsSync(path.join(snaps, '5', 'work'))).toBe(true);
    expect(mountsUnder(env.dir)).toEqual([]);
    // ids are never reused
    await env.client.prepare('fresh', '');
    expect(fs.readdirSync(snaps).sort()).toEqual(['4', '5', '6']);
  });

  test('metadata survives a restart: same infos, same mounts', async () => {
    const env = await setup();
    await env.client.prepare('a', '', { x: '1' });
    await env.client.commit('c', 'a', { y: '2' });
    await env.client.prepare('b', 'c');
    const before = await env.client.list();
    const mounts = await env.client.mounts('b');
    await env.stop();
    await env.restart();
    expect(await env.client.list()).toEqual(before);
    expect(await env.client.mounts('b')).toEqual(mounts);
    expect((await env.client.stat('c')).labels).toEqual({ y: '2' });
  });

  test('upperdir_label reports containerd.io/snapshot/overlay.upperdir like containerd', async () => {
    const env = await setup({ upperdirLabel: true });
    const c = env.client;
    await c.prepare('a', '', { x: '1' });
    const want = { x: '1', 'containerd.io/snapshot/overlay.upperdir': path.join(env.root, 'snapshots', '1', 'fs') };
    expect((await c.stat('a')).labels).toEqual(want);
    expect((await c.list())[0].labels).toEqual(want);
    // sending the reported label back does not store it
    expect((await c.update(await c.stat('a'))).labels).toEqual(want);
    // it is reported, never stored
    await env.stop();
    await env.restart({ upperdirLabel: false });
    expect((await env.client.stat('a')).labels).toEqual({ x: '1' });
  });

  test('errors map to gRPC status codes in one place', () => {
    const cases: [D4fsError, number][] = [
      [new D4fsError('NOT_FOUND', 'x'), grpc.status.NOT_FOUND],
      [new D4fsError('ALREADY_EXISTS', 'x'), grpc.status.ALREADY_EXISTS],
      [new D4fsError('FAILED_PRECONDITION', 'x'), grpc.status.FAILED_PRECONDITION],
      [new D4fsError('INVALID_ARGUMENT', 'x'), grpc.status.INVALID_ARGUMENT],
      [new D4fsError('UNAVAILABLE', 'x'), grpc.status.UNAVAILABLE],
      [new D4fsError('DEADLINE_EXCEEDED', 'x'), grpc.status.DEADLINE_EXCEEDED],
    ];
    for (const [e, code] of cases) expect(toStatus(e)).toMatchObject({ code, details: 'x' });
    expect(toStatus(new Error('boom'))).toMatchObject({ code: grpc.status.INTERNAL, details: 'boom' });
  });
});

// ---------------------------------------------------------------------------
// Remote snapshots
// ---------------------------------------------------------------------------

/** A FileSystem that serves every remote snapshot by bind-mounting one directory (real mounts). */
class BindFileSystem implements FileSystem {
  readonly calls: string[] = [];
  constructor(private readonly source: string) {}
  async mount(mountpoint: string): Promise<void> {
    this.calls.push(`mount ${mountpoint}`);
    if (!mountsUnder(mountpoint).includes(mountpoint)) await mustRun('mount', ['--bind', '-o', 'ro', this.source, mountpoint]);
  }
  async check(mountpoint: string): Promise<void> {
    this.calls.push(`check ${mountpoint}`);
    if (!mountsUnder(mountpoint).includes(mountpoint)) throw new Error(`${mountpoint} is not mounted`);
  }
  async unmount(mountpoint: string): Promise<void> {
    this.calls.push(`unmount ${mountpoint}`);
    if (mountsUnder(mountpoint).includes(mountpoint)) await mustRun('umount', [mountpoint]);
  }
}

describe('snapshots service: remote snapshots', () => {
  async function remoteEnv() {
    const src = await fsp.mkdtemp('/tmp/d4src-');
    await fsp.writeFile(path.join(src, 'from-remote'), 'delta!\n');
    const bindFs = new BindFileSystem(src);
    const remote = new FileSystemRemoteProvider(bindFs, (l) => D4FS_IMAGE_REF in l);
    const env = await setup({ fileSystem: bindFs, remote });
    return { env, bindFs, remote, src };
  }

  test('Prepare with containerd.io/snapshot.ref: provided, committed under the target, ALREADY_EXISTS', async () => {
    const { env, bindFs, remote, src } = await remoteEnv();
    try {
      const c = env.client;
      const labels = { [SNAPSHOT_REF]: 'sha256:aaa', [D4FS_IMAGE_REF]: 'reg/img:1', [GC_ROOT]: 'x' };
      const err = await failure(c.prepare('1/default/extract-1 sha256:aaa', '', labels));
      expect(err.kind).toBe('ALREADY_EXISTS');
      expect(err.message).toMatch(/sha256:aaa/);
      expect((await failure(c.stat('1/default/extract-1 sha256:aaa'))).kind).toBe('NOT_FOUND');
      const info = await c.stat('sha256:aaa');
      expect(info).toMatchObject({ kind: Kind.Committed, parent: '', labels: { ...labels, [D4FS_REMOTE]: 'true' } });
      // what containerd's metadata layer asks after ALREADY_EXISTS
      const found = await c.list([`labels."containerd.io/snapshot.ref"==sha256:aaa,parent==""`]);
      expect(found.map((i) => i.name)).toEqual(['sha256:aaa']);
      expect(await c.usage('sha256:aaa')).toEqual({ size: 0, inodes: 0 });
      const mp = path.join(env.root, 'snapshots', '1', 'fs');
      expect(mountsUnder(mp)).toEqual([mp]);

      // a container on top of the remote layer reads through it
      const mounts = await c.prepare('ctr', 'sha256:aaa', {});
      expect(mounts[0].options).toContain(`lowerdir=${mp}`);
      expect(bindFs.calls).toContain(`check ${mp}`);
      const t = await env.mountAt(mounts, 'ctr');
      expect(fs.readFileSync(path.join(t, 'from-remote'), 'utf8')).toBe('delta!\n');
      await fsp.writeFile(path.join(t, 'mine'), 'x');
      await unmount(t);

      // labels that the provider declines: a normal active snapshot
      const normal = await c.prepare('extract-2 sha256:bbb', '', { [SNAPSHOT_REF]: 'sha256:bbb' });
      expect(normal[0].type).toBe('bind');
      expect((await c.stat('extract-2 sha256:bbb')).kind).toBe(Kind.Active);

      // the remote marker cannot be set or removed by callers
      await c.prepare('fake', '', { [D4FS_REMOTE]: 'true' });
      expect((await c.stat('fake')).labels).toEqual({});
      const upd = await c.update({ ...info, labels: { only: 'this' } }, ['labels']);
      expect(upd.labels).toEqual({ only: 'this', [D4FS_REMOTE]: 'true' });
      await c.update({ ...info, labels }, ['labels']);
      expect((await c.stat('sha256:aaa')).labels).toEqual({ ...labels, [D4FS_REMOTE]: 'true' });

      // restart with the mount lost: it is mounted again
      await env.stop();
      await mustRun('umount', [mp]);
      bindFs.calls.length = 0;
      await env.restart({ fileSystem: bindFs, remote });
      expect(bindFs.calls).toEqual([`check ${mp}`, `mount ${mp}`]);
      expect(mountsUnder(mp)).toEqual([mp]);

      // a second provider answer for an existing target: our active goes, ALREADY_EXISTS
      const again = await failure(env.client.prepare('extract-3 sha256:aaa', '', labels));
      expect(again.kind).toBe('ALREADY_EXISTS');
      expect((await env.client.list(['labels."containerd.io/snapshot.ref"==sha256:aaa'])).map((i) => i.name)).toEqual(['sha256:aaa']);
      expect(mountsUnder(mp)).toEqual([mp]);

      // removal unmounts (children first)
      expect((await failure(env.client.remove('sha256:aaa'))).kind).toBe('FAILED_PRECONDITION');
      await env.client.remove('ctr');
      await env.client.remove('fake');
      await env.client.remove('extract-2 sha256:bbb');
      await env.client.remove('sha256:aaa');
      expect(bindFs.calls).toContain(`unmount ${mp}`);
      expect(mountsUnder(env.dir)).toEqual([]);
      expect(fs.readdirSync(path.join(env.root, 'snapshots'))).toEqual([]);
    } finally {
      await unmountAllUnder(env.dir);
      await fsp.rm(src, { recursive: true, force: true });
    }
  });

  test('a failing provider falls back to a normal snapshot', async () => {
    const failing: RemoteSnapshotProvider = {
      prepare: async () => {
        throw new Error('no delta for this layer');
      },
    };
    const env = await setup({ remote: failing });
    const mounts = await env.client.prepare('k', '', { [SNAPSHOT_REF]: 'sha256:ccc' });
    expect(mounts[0]).toMatchObject({ type: 'bind', options: ['rw', 'rbind'] });
    expect((await env.client.stat('k')).kind).toBe(Kind.Active);
  });

  test('every handler has a deadline: a hanging provider gives DEADLINE_EXCEEDED', async () => {
    let aborted = false;
    const hanging: RemoteSnapshotProvider = {
      prepare: (_k, _l, target) =>
        new Promise<boolean>((_, reject) => {
          const timer = setTimeout(() => reject(new Error('gave up')), 10_000);
          target.signal?.addEventListener('abort', () => {
            aborted = true;
            clearTimeout(timer);
            reject(target.signal!.reason);
          });
        }),
    };
    const env = await setup({ remote: hanging, requestTimeoutMs: 300 });
    const t0 = Date.now();
    const err = await failure(env.client.prepare('slow', '', { [SNAPSHOT_REF]: 'sha256:ddd' }));
    expect(err.kind).toBe('DEADLINE_EXCEEDED');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(aborted).toBe(true);
    // the server keeps serving
    expect((await env.client.stat('slow')).kind).toBe(Kind.Active);

    // and the caller's own deadline is honoured
    const quick = new SnapshotsClient(env.sock, { timeoutMs: 100 });
    try {
      expect((await failure(quick.prepare('slow2', '', { [SNAPSHOT_REF]: 'sha256:eee' }))).kind).toBe('DEADLINE_EXCEEDED');
    } finally {
      quick.close();
    }
  });
});
