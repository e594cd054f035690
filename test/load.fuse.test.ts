/**
 * End to end over the real FUSE filesystem: a private containerd, the
 * d4fs-snapshotter process (with its FUSE manager), `ctr-cli load` of nginx
 * v1 and of the v1→v2 delta, `ctr run --snapshotter d4fs` of both, and
 * `ctr-cli rmi` leaving no image, snapshot, FUSE mount or process behind.
 *
 * Needs root, /dev/fuse and containerd (test/helpers/capabilities.ts): on a
 * machine without them the suite is skipped, loudly.
 * test/load.containerd.test.ts covers the same containerd side with a
 * stand-in for FUSE.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { makeCdimgChain } from '../bench/distribution';
import { describeIfCapable } from './helpers/capabilities';
import { fileDigestIn } from './helpers/cdimg';
import { eventually } from './helpers/wait';
import { type PrivateContainerd, type SnapshotterProcess, endProcessesMentioning, fuseMountsUnder, mountsUnder, runCaptured, runCtrCli, startContainerd, startSnapshotter, unmountAllUnder } from './helpers/containerd';
import { WorkerPool } from '../src/workers/pool';
import { SnapshotsClient } from '../src/snapshotter';
import { ContainerdClient, d4fsDiffId } from '../src/containerd';

jest.setTimeout(600_000);

describeIfCapable('test/load.fuse.test.ts', ['root', 'fuse', 'containerd'])('ctr-cli load + ctr run over the d4fs FUSE snapshotter', () => {
  let dir: string;
  let root: string;
  let store: string;
  let snapshotter: SnapshotterProcess | undefined;
  let containerd: PrivateContainerd | undefined;
  let client: ContainerdClient;
  let backend: SnapshotsClient;
  let v1: string;
  let delta: string;
  let v1Id: string;
  let v2Id: string;
  const hex: Record<string, string> = {};

  const cli = (args: string[]) => runCtrCli(args, { store, containerd: containerd! });

  /** ctr must succeed; returns stdout. */
  const ctr = (args: string[]): Promise<string> =>
    containerd!.ctrOk(args, { timeoutMs: 300_000, logs: () => `--- snapshotter log ---\n${snapshotter!.logs().slice(-6000)}` });

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4lf-');
    root = path.join(dir, 'root');
    store = path.join(dir, 'store');
    const pool = new WorkerPool(2);
    try {
      const chain = await makeCdimgChain(dir, ['nginx-v1', 'nginx-v2'], pool);
      [v1] = chain.full;
      const v2 = chain.full[1];
      [delta] = chain.deltas;
      [v1Id, v2Id] = chain.imageIds;
      hex.conf1 = await fileDigestIn(v1, 'etc/nginx/nginx.conf');
      hex.nginx1 = await fileDigestIn(v1, 'usr/sbin/nginx');
      hex.nginx2 = await fileDigestIn(v2, 'usr/sbin/nginx');
      await fsp.rm(v2); // only the delta leads to v2
    } finally {
      await pool.close();
    }
    const sock = path.join(dir, 'd4fs.sock');
    snapshotter = await startSnapshotter({ root, address: sock, args: ['--store', store] });
    containerd = await startContainerd({ snapshotterSocket: sock });
    client = await ContainerdClient.connect({ address: containerd.address });
    backend = new SnapshotsClient(sock);
  });

  afterAll(async () => {
    client?.close();
    backend?.close();
    await containerd?.stop();
    const code = await snapshotter?.stop();
    if (dir) {
      const left = mountsUnder(dir);
      await unmountAllUnder(dir);
      // A FUSE manager may outlive the snapshotter by design (it serves
      // running containers across restarts): end what this test started.
      await endProcessesMentioning(dir);
      await unmountAllUnder(dir);
      await fsp.rm(dir, { recursive: true, force: true });
      expect(left).toEqual([]);
    }
    expect(code).toBe(0);
  });

  test('load nginx:1 mounts it over FUSE; ctr run reads its files', async () => {
    const r = await cli(['load', '--image', 'nginx:1', '--cdimg', v1, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).containerd).toMatchObject({ chainId: d4fsDiffId(v1Id), snapshot: 'provided', image: 'created' });
    expect(fuseMountsUnder(root)).toHaveLength(1);
    const out = await runCaptured(ctr, ['--snapshotter', 'd4fs'], 'nginx:1', 'fuse-c1', 'cat /etc/nginx/nginx.conf | sha256sum; ls /usr/sbin/nginx');
    const lines = out.trim().split('\n');
    expect(lines[0].split(/\s+/)[0]).toBe(hex.conf1);
    expect(lines[1].trim()).toBe('/usr/sbin/nginx');
  });

  test('the v1→v2 delta loads; v2 runs the new nginx', async () => {
    expect(hex.nginx2).not.toBe(hex.nginx1);
    const r = await cli(['load', '--image', 'nginx:2', '--cdimg', delta, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).containerd).toMatchObject({ chainId: d4fsDiffId(v2Id), snapshot: 'provided' });
    expect(fuseMountsUnder(root)).toHaveLength(2);
    const out = await runCaptured(ctr, ['--snapshotter', 'd4fs'], 'nginx:2', 'fuse-c2', 'sha256sum /usr/sbin/nginx; /usr/sbin/nginx -v 2>&1');
    const lines = out.trim().split('\n');
    expect(lines[0].split(/\s+/)[0]).toBe(hex.nginx2);
    expect(lines[1]).toMatch(/^nginx version: nginx\/1\.\d+\.\d+/);
  });

  test('rmi: no image, no snapshot, no FUSE mount, no store file left', async () => {
    const r = await cli(['rmi', 'nginx:1', 'nginx:2']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/collected 2 files/);
    expect(await client.images.list()).toEqual([]);
    expect(await client.snapshots('d4fs').list()).toEqual([]);
    await eventually(async () => (await backend.list()).length === 0);
    await eventually(() => fuseMountsUnder(dir).length === 0);
    expect(mountsUnder(containerd!.dir)).toEqual([]);
    expect(fs.readdirSync(path.join(store, 'files'))).toEqual([]);
    expect(await client.content.list()).toEqual([]);
  });
});
