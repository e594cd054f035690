/**
 * `ctr-cli load` into a real, private containerd whose proxy snapshotter
 * "d4fs" is the real d4fs snapshot core and gRPC server, run in this process
 * with a stand-in for the FUSE filesystem: the stand-in "mounts" a d4fs image
 * by unpacking its chain (patching deltas first) into the snapshot's
 * directory. Everything containerd sees is real: content and gc labels,
 * the lease, the remote-snapshot Prepare answered ALREADY_EXISTS, the image
 * record, `ctr run --snapshotter d4fs` (which would fail if containerd tried
 * to unpack the d4fs pointer layer), garbage collection on `rmi`.
 *
 * The same flow over the real FUSE filesystem is test/load.fuse.test.ts.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { makeCdimgChain } from '../bench/distribution';
import { fileDigestIn } from './helpers/cdimg';
import { eventually } from './helpers/wait';
import { type PrivateContainerd, mountsUnder, runCaptured, runCommand, runCtrCli, startContainerd, unmountAllUnder } from './helpers/containerd';
import { patchImage } from '../src/delta/patch';
import { unpackImage } from '../src/unpack/unpack';
import { WorkerPool } from '../src/workers/pool';
import { LocalStore } from '../src/store/store';
import {
  type FileSystem,
  FileSystemRemoteProvider,
  type Labels,
  type RunningSnapshotter,
  SnapshotsClient,
  resolveConfig,
  runSnapshotter,
} from '../src/snapshotter';
import { ContainerdClient, D4FS_LAYER_MEDIA_TYPE, d4fsDiffId, loadImage, sha256Digest, unloadImage } from '../src/containerd';
import { D4FS_ANNOTATIONS, D4FS_IMAGE_ID, D4FS_IMAGE_REF, D4FS_ROOT_DIGEST, D4FS_STORE, SNAPSHOT_REF } from '../src/labels';

jest.setTimeout(300_000);

/**
 * Stand-in for the FUSE filesystem: "mounting" image D4FS_IMAGE_ID of store
 * D4FS_STORE unpacks its chain into the mountpoint directory.
 */
class UnpackFileSystem implements FileSystem {
  /** When false, the provider declines and the snapshotter prepares an ordinary snapshot. */
  enabled = true;
  /** Labels of every mount. */
  readonly mounted: Labels[] = [];
  readonly unmounted: string[] = [];

  constructor(
    private readonly pool: WorkerPool,
    private readonly tmp: string,
  ) {}

  async mount(mountpoint: string, labels: Readonly<Labels>): Promise<void> {
    if (fs.readdirSync(mountpoint).length > 0) return; // already there (restart)
    this.mounted.push({ ...labels });
    const store = await LocalStore.open(labels[D4FS_STORE]);
    let chain: string[];
    try {
      chain = store.chainFor(labels[D4FS_IMAGE_ID]).map((f) => f.path);
    } finally {
      store.close();
    }
    let full = chain[0];
    const patched = path.join(this.tmp, `patched-${process.hrtime.bigint()}.cdimg`);
    if (chain.length > 1) {
      await patchImage({ base: chain[0], deltas: chain.slice(1), out: patched, pool: this.pool });
      full = patched;
    }
    try {
      await unpackImage(full, mountpoint, { pool: this.pool });
    } finally {
      await fsp.rm(patched, { force: true });
    }
  }

  async check(): Promise<void> {}

  async unmount(mountpoint: string): Promise<void> {
    this.unmounted.push(mountpoint);
  }
}

describe('ctr-cli load into a private containerd (d4fs snapshot core, unpacking stand-in for FUSE)', () => {
  let dir: string;
  let store: string;
  let pool: WorkerPool;
  let fake: UnpackFileSystem;
  let snapshotter: RunningSnapshotter | undefined;
  let containerd: PrivateContainerd | undefined;
  let client: ContainerdClient;
  let backend: SnapshotsClient;
  const logs: string[] = [];
  let v1: string;
  let v2: string;
  let delta: string;
  let v1Id: string;
  let v2Id: string;
  const hex: Record<string, string> = {};

  /** ctr-cli with our store; load and rmi talk to our containerd. */
  const cli = (args: string[]) => runCtrCli(args, { store, containerd: containerd! });

  const ctr = (args: string[]): Promise<string> => containerd!.ctrOk(args, { logs: () => `--- snapshotter log ---\n${logs.slice(-30).join('')}` });

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4ld-');
    store = path.join(dir, 'store');
    pool = new WorkerPool(2);
    const chain = await makeCdimgChain(dir, ['nginx-v1', 'nginx-v2'], pool);
    [v1, v2] = chain.full;
    [delta] = chain.deltas;
    [v1Id, v2Id] = chain.imageIds;
    hex.conf1 = await fileDigestIn(v1, 'etc/nginx/nginx.conf');
    hex.nginx1 = await fileDigestIn(v1, 'usr/sbin/nginx');
    hex.nginx2 = await fileDigestIn(v2, 'usr/sbin/nginx');

    fake = new UnpackFileSystem(pool, dir);
    const sock = path.join(dir, 'd4fs.sock');
    const log = pino({ level: 'debug', base: null }, { write: (s: string) => void logs.push(s) });
    snapshotter = await runSnapshotter(resolveConfig({ root: path.join(dir, 'root'), address: sock }), log, {
      fileSystem: fake,
      remote: new FileSystemRemoteProvider(fake, (labels) => fake.enabled && !!labels[D4FS_IMAGE_ID]),
    });
    backend = new SnapshotsClient(sock);
    containerd = await startContainerd({ snapshotterSocket: sock });
    client = await ContainerdClient.connect({ address: containerd.address });
  });

  afterAll(async () => {
    client?.close();
    backend?.close();
    // Containers a failed test may have left.
    if (containerd) {
      await containerd.ctr(['task', 'kill', '-s', 'SIGKILL', 'busy']);
      await containerd.ctr(['task', 'rm', '-f', 'busy']);
      await containerd.ctr(['containers', 'rm', 'busy']);
    }
    await containerd?.stop();
    await snapshotter?.shutdown();
    await pool?.close();
    if (dir) {
      const left = mountsUnder(dir);
      await unmountAllUnder(dir);
      await fsp.rm(dir, { recursive: true, force: true });
      expect(left).toEqual([]);
    }
  });

  test('a snapshotter that does not provide the image: clear error, exit 5, nothing left in containerd', async () => {
    fake.enabled = false;
    try {
      const r = await cli(['load', '--image', 'nginx:1', '--cdimg', v1]);
      expect(r.code).toBe(5);
      expect(r.stderr).toMatch(/the d4fs snapshotter is not serving delta images: is it started with FUSE support\?/);
    } finally {
      fake.enabled = true;
    }
    expect(await client.images.list()).toEqual([]);
    expect(await client.snapshots('d4fs').list()).toEqual([]);
    expect((await client.leases.list()).filter((l) => l.id.startsWith('d4fs-load-'))).toEqual([]);
    // containerd's gc removes the ordinary snapshot from the backend, and the lease's content.
    await eventually(async () => (await backend.list()).length === 0);
    await eventually(async () => (await client.content.list()).length === 0);
  });

  let chain1: string;
  let manifest1: string;

  test('load nginx:1: manifest, config and pointer layer with gc labels, a remote snapshot, the image record', async () => {
    const r = await cli(['load', '--image', 'nginx:1', '--cdimg', v1, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    chain1 = d4fsDiffId(v1Id);
    expect(out.containerd).toMatchObject({ name: 'nginx:1', imageId: v1Id, namespace: 'default', snapshotter: 'd4fs', chainId: chain1, snapshot: 'provided', image: 'created' });
    manifest1 = out.containerd.manifest.digest;
    const configDigest: string = out.containerd.config.digest;
    const layerDigest: string = out.containerd.layer.digest;

    // ctr sees the image and the three blobs.
    expect(await ctr(['images', 'ls'])).toMatch(new RegExp(`^nginx:1\\s+application/vnd\\.oci\\.image\\.manifest\\.v1\\+json\\s+${manifest1}\\s`, 'm'));
    const contentLs = await ctr(['content', 'ls']);
    for (const d of [manifest1, configDigest, layerDigest]) expect(contentLs).toContain(d);
    expect(contentLs).toContain(`containerd.io/gc.ref.content.config=${configDigest}`);
    expect(contentLs).toContain(`containerd.io/gc.ref.content.l.0=${layerDigest}`);
    expect(contentLs).toContain(`containerd.io/gc.ref.snapshot.d4fs=${chain1}`);
    expect((await client.content.info(manifest1)).labels).toEqual({
      'containerd.io/gc.ref.content.config': configDigest,
      'containerd.io/gc.ref.content.l.0': layerDigest,
    });

    // The manifest and config as containerd serves them.
    const manifest = JSON.parse(await ctr(['content', 'get', manifest1]));
    expect(manifest.layers).toHaveLength(1);
    expect(manifest.layers[0]).toMatchObject({ mediaType: D4FS_LAYER_MEDIA_TYPE, digest: layerDigest });
    const config = JSON.parse(await ctr(['content', 'get', configDigest]));
    expect(config.rootfs).toEqual({ type: 'layers', diff_ids: [chain1] });
    expect(config.config.Cmd).toEqual(['/usr/sbin/nginx', '-g', 'daemon off;']);
    expect(config.history.filter((h: { empty_layer?: boolean }) => !h.empty_layer)).toHaveLength(1);
    expect(JSON.parse(await ctr(['content', 'get', layerDigest]))).toMatchObject({ imageId: v1Id });

    // The snapshot: committed under the chain ID, with the d4fs labels.
    expect(await ctr(['snapshots', '--snapshotter', 'd4fs', 'ls'])).toMatch(new RegExp(`^${chain1}\\s+Committed`, 'm'));
    const info = await client.snapshots('d4fs').stat(chain1);
    expect(info.parent).toBe('');
    expect(info.labels).toMatchObject({ [SNAPSHOT_REF]: chain1, [D4FS_IMAGE_ID]: v1Id, [D4FS_STORE]: store, [D4FS_IMAGE_REF]: 'nginx:1', [D4FS_ROOT_DIGEST]: expect.stringMatching(/^sha256:/) });
    expect(fake.mounted).toHaveLength(1);
    expect(fake.mounted[0]).toMatchObject({ [SNAPSHOT_REF]: chain1, [D4FS_IMAGE_ID]: v1Id, [D4FS_STORE]: store });
    expect(logs.join('')).toMatch(/remote snapshot prepared and committed/);

    // The image record, and no lease left behind.
    const img = await client.images.get('nginx:1');
    expect(img.target).toEqual(out.containerd.manifest);
    expect(img.labels[D4FS_ANNOTATIONS.imageId]).toBe(v1Id);
    expect((await client.leases.list()).filter((l) => l.id.startsWith('d4fs-load-'))).toEqual([]);
  });

  test('ctr run --snapshotter d4fs nginx:1 reads the image files without fetching a layer', async () => {
    const out = await runCaptured(ctr, ['--snapshotter', 'd4fs'], 'nginx:1', 'load-c1', 'cat /etc/nginx/nginx.conf | sha256sum; ls /usr/sbin/nginx');
    const lines = out.trim().split('\n');
    expect(lines[0].split(/\s+/)[0]).toBe(hex.conf1);
    expect(lines[1].trim()).toBe('/usr/sbin/nginx');
    expect(containerd!.log()).not.toMatch(/fetch|unpack/i);
  });

  test('loading the same image again changes nothing', async () => {
    const r = await cli(['load', '--image', 'nginx:1', '--cdimg', v1, '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).containerd).toMatchObject({ snapshot: 'existing', image: 'unchanged', manifest: { digest: manifest1 } });
    expect(fake.mounted).toHaveLength(1);
  });

  test('the v1→v2 delta loads and v2 runs', async () => {
    expect(hex.nginx2).not.toBe(hex.nginx1);
    const r = await cli(['load', '--image', 'nginx:2', '--cdimg', delta]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`delta from ${v1Id}`);
    expect(r.stdout).toContain(`snapshot     ${d4fsDiffId(v2Id)} (mounted by d4fs)`);
    expect(r.stdout).toContain('run it with  ctr run --snapshotter d4fs nginx:2 ID');
    expect(fake.mounted).toHaveLength(2);
    expect(fake.mounted[1][D4FS_IMAGE_ID]).toBe(v2Id);
    const out = await runCaptured(ctr, ['--snapshotter', 'd4fs'], 'nginx:2', 'load-c2', 'sha256sum /usr/sbin/nginx; /usr/sbin/nginx -v 2>&1');
    const lines = out.trim().split('\n');
    expect(lines[0].split(/\s+/)[0]).toBe(hex.nginx2);
    expect(lines[1]).toMatch(/^nginx version: nginx\/1\.\d+\.\d+/);
    const listed = (await cli(['images'])).stdout;
    expect(listed).toMatch(/^nginx:1\s+[0-9a-f]{12}\s+full\s+1\s/m);
    expect(listed).toMatch(/^nginx:2\s+[0-9a-f]{12}\s+full\+1 delta\s+2\s/m);
  });

  test('rmi of an image a container still runs on: the record goes, the snapshot and the files stay until the container is gone', async () => {
    await ctr(['run', '-d', '--snapshotter', 'd4fs', 'nginx:2', 'busy', '/bin/sleep', '600']);
    const r = await cli(['rmi', 'nginx:2', '--json']);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.removed).toEqual([{ name: 'nginx:2', imageId: v2Id, store: true, containerd: true }]);
    expect(out.kept).toEqual([v2Id]);
    expect(out.collected).toEqual([]);
    await expect(client.images.get('nginx:2')).rejects.toMatchObject({ kind: 'NOT_FOUND' });
    expect((await client.snapshots('d4fs').stat(d4fsDiffId(v2Id))).name).toBe(d4fsDiffId(v2Id));
    const exec = await ctr(['task', 'exec', '--fifo-dir', path.join(containerd!.dir, 'fifo'), '--exec-id', 'e1', 'busy', '/bin/sha256sum', '/usr/sbin/nginx']);
    expect(exec.split(/\s+/)[0]).toBe(hex.nginx2);
    await ctr(['task', 'kill', '-s', 'SIGKILL', 'busy']);
    await eventually(async () => !/busy\s+\d+\s+RUNNING/.test(await ctr(['task', 'ls'])));
    await ctr(['task', 'rm', 'busy']);
    await ctr(['containers', 'rm', 'busy']);
    // Nothing holds v2's snapshot any more: containerd's gc removes it.
    await eventually(async () => !(await client.snapshots('d4fs').find(d4fsDiffId(v2Id))));
  });

  test('rmi nginx:1: record, content, snapshot and store files all go', async () => {
    const r = await cli(['rmi', 'nginx:1']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/removed nginx:1 \([0-9a-f]{12}\) from local store and containerd \(default\)/);
    expect(r.stdout).toMatch(/collected 2 files/); // the full v1 file and the v1→v2 delta
    expect(await client.images.list()).toEqual([]);
    expect(await client.snapshots('d4fs').list()).toEqual([]); // rmi waits for gc (sync)
    expect(await client.content.list()).toEqual([]);
    expect(await backend.list()).toEqual([]);
    expect(fs.readdirSync(path.join(store, 'files'))).toEqual([]);
    expect(fs.readdirSync(path.join(dir, 'root', 'snapshots'))).toEqual([]);
    expect(fake.unmounted.length).toBeGreaterThanOrEqual(2);
    expect((await cli(['images'])).stdout.trim().split('\n')).toHaveLength(1);
    expect(mountsUnder(dir)).toEqual([]);
    expect(mountsUnder(containerd!.dir)).toEqual([]);
  });

  test('the content client: chunked writes, labels on existing blobs, leases hold what they created', async () => {
    const data = crypto.randomBytes(3 * 1024 * 1024 + 17);
    const desc = { digest: sha256Digest(data), size: data.length };
    await client.leases.create('d4fs-test-lease');
    const leased = client.withLease('d4fs-test-lease');
    expect(await leased.content.writeBlob(desc, data, { 'test.a': '1' })).toEqual({ existed: false });
    expect(await leased.content.writeBlob(desc, data, { 'test.b': '2' })).toEqual({ existed: true });
    const info = await client.content.info(desc.digest);
    expect(info).toMatchObject({ digest: desc.digest, size: desc.size, labels: { 'test.a': '1', 'test.b': '2' } });
    expect(await client.leases.listResources('d4fs-test-lease')).toEqual([{ id: desc.digest, type: 'content' }]);
    // A wrong digest is refused at commit.
    const bad = await leased.content.writeBlob({ digest: sha256Digest('other'), size: data.length }, data).catch((e: unknown) => e);
    expect(bad).toMatchObject({ kind: 'FAILED_PRECONDITION' });
    await client.leases.delete('d4fs-test-lease', true);
    await expect(client.content.info(desc.digest)).rejects.toMatchObject({ kind: 'NOT_FOUND' });
  });

  test('two loads of one image at once: both names, one snapshot; a moved name is updated', async () => {
    const s = await LocalStore.open(store);
    try {
      const f = await s.add(v1);
      s.tag('nginx:a', f.imageId);
      s.tag('nginx:b', f.imageId);
      const before = fake.mounted.length;
      const results = await Promise.all(['nginx:a', 'nginx:b'].map((name) => loadImage({ store: s, name, client })));
      expect(results.map((r) => r.chainId)).toEqual([d4fsDiffId(v1Id), d4fsDiffId(v1Id)]);
      expect(results.map((r) => r.image)).toEqual(['created', 'created']);
      expect((await client.images.list()).map((i) => i.name).sort()).toEqual(['nginx:a', 'nginx:b']);
      expect((await client.snapshots('d4fs').list()).map((i) => i.name)).toEqual([d4fsDiffId(v1Id)]);
      expect((await backend.list()).length).toBeLessThanOrEqual(1); // the losing Prepare's snapshot was removed
      expect(fake.mounted.length - before).toBeGreaterThanOrEqual(1);
      // Moving a name to another image updates the record.
      s.tag('nginx:a', (await s.add(delta)).imageId);
      const moved = await loadImage({ store: s, name: 'nginx:a', client });
      expect(moved).toMatchObject({ imageId: v2Id, image: 'updated', snapshot: 'provided', chainId: d4fsDiffId(v2Id) });
      expect((await client.images.get('nginx:a')).target.digest).toBe(moved.manifest.digest);
      expect(await unloadImage({ client, name: 'nginx:a' })).toBe(true);
      expect((await client.snapshots('d4fs').list()).map((i) => i.name)).toEqual([d4fsDiffId(v1Id)]); // nginx:b still holds v1's
      expect(await unloadImage({ client, name: 'nginx:b' })).toBe(true);
      expect(await unloadImage({ client, name: 'nginx:b' })).toBe(false);
      expect(await client.snapshots('d4fs').list()).toEqual([]);
      s.untag('nginx:a');
      s.untag('nginx:b');
      expect((await s.gc()).length).toBe(2);
    } finally {
      s.close();
    }
    await eventually(async () => (await backend.list()).length === 0);
  });

  test('rmi of a name nobody has: exit 3', async () => {
    const r = await cli(['rmi', 'nginx:9']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/no image named nginx:9 in the local store or in containerd \(namespace default\)/);
  });

  test('another namespace is separate', async () => {
    const r = await cli(['load', '--image', 'nginx:1', '--cdimg', v1, '--namespace', 'd4fs-test', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).containerd).toMatchObject({ namespace: 'd4fs-test', snapshot: 'provided', image: 'created' });
    expect(await client.images.list()).toEqual([]);
    const ns = client.withNamespace('d4fs-test');
    expect((await ns.images.list()).map((i) => i.name)).toEqual(['nginx:1']);
    // ctr's namespace flag goes before the subcommand, so the helper's private run flags are given here.
    const c = containerd!;
    const run = await runCommand('ctr', [
      ...['--address', c.address, '--namespace', 'd4fs-test', 'run', '--fifo-dir', path.join(c.dir, 'fifo'), '--runc-root', path.join(c.dir, 'runc')],
      ...['--rm', '--snapshotter', 'd4fs', 'nginx:1', 'load-ns', '/bin/sh', '-c', 'cat /etc/nginx/nginx.conf | sha256sum'],
    ]);
    expect(run.stderr).toBe('');
    expect(run.stdout.split(/\s+/)[0]).toBe(hex.conf1);
    const rm = await cli(['rmi', 'nginx:1', '--namespace', 'd4fs-test']);
    expect(rm.code).toBe(0);
    expect(await ns.snapshots('d4fs').list()).toEqual([]);
    expect(await backend.list()).toEqual([]);
  });
});
