/**
 * End to end: a private containerd using d4fs-snapshotter as its proxy
 * snapshotter "d4fs" pulls a two-layer busybox image from a private registry
 * on 127.0.0.1, runs a container from it, and removes everything again,
 * leaving no snapshot, no directory and no mount behind.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Kind, SnapshotsClient } from '../src/snapshotter';
import {
  type PrivateContainerd,
  type SnapshotterProcess,
  buildBusyboxImage,
  endProcessesMentioning,
  mountsUnder,
  processesMentioning,
  startContainerd,
  startSnapshotter,
  runCaptured,
  unmountAllUnder,
} from './helpers/containerd';
import { type TestRegistry, pushOciLayout, startRegistry } from './helpers/registry';

jest.setTimeout(180_000);

describe('d4fs-snapshotter with a private containerd', () => {
  let dir: string;
  let root: string;
  let sock: string;
  let registry: TestRegistry | undefined;
  let snapshotter: SnapshotterProcess | undefined;
  let containerd: PrivateContainerd | undefined;
  let client: SnapshotsClient;
  let image: string;

  /** ctr must succeed; returns stdout. */
  const ctr = (args: string[]): Promise<string> => containerd!.ctrOk(args, { logs: () => `--- snapshotter log ---\n${snapshotter!.logs().slice(-4000)}` });

  beforeAll(async () => {
    dir = await fsp.mkdtemp('/tmp/d4e2e-');
    root = path.join(dir, 'root');
    sock = path.join(dir, 'd4fs.sock');
    const layout = path.join(dir, 'layout');
    [registry] = await Promise.all([startRegistry(), buildBusyboxImage(layout, 'v1')]);
    image = `${registry.host}/busybox:1`;
    await pushOciLayout(layout, 'v1', registry.host, 'busybox:1');
    snapshotter = await startSnapshotter({ root, address: sock });
    containerd = await startContainerd({ snapshotterSocket: sock });
    client = new SnapshotsClient(sock);
  });

  afterAll(async () => {
    client?.close();
    await containerd?.stop();
    const code = await snapshotter?.stop();
    await registry?.stop();
    expect(code).toBe(0);
    if (dir) {
      const left = mountsUnder(dir);
      await unmountAllUnder(dir);
      // A FUSE manager may outlive the snapshotter by design (it serves running
      // containers across restarts): end what this test started, as distribution-e2e does.
      await endProcessesMentioning(dir);
      await unmountAllUnder(dir);
      await fsp.rm(dir, { recursive: true, force: true });
      expect(left).toEqual([]);
      expect(processesMentioning(dir)).toEqual([]);
    }
  });

  test('containerd loads the proxy plugin', async () => {
    const out = await ctr(['plugins', 'ls']);
    expect(out).toMatch(/io\.containerd\.snapshotter\.v1\s+d4fs\s+\S+\s+ok/);
  });

  test('ctr images pull --snapshotter d4fs unpacks the layers into d4fs', async () => {
    await ctr(['images', 'pull', '--plain-http', '--snapshotter', 'd4fs', image]);
    const infos = await client.list();
    expect(infos).toHaveLength(2);
    expect(infos.every((i) => i.kind === Kind.Committed)).toBe(true);
    const [bottom, top] = infos;
    expect(bottom.parent).toBe('');
    expect(top.parent).toBe(bottom.name);
    // containerd's metadata layer names backend snapshots "<namespace>/<seq>/<chain ID>"
    for (const i of infos) expect(i.name).toMatch(/^default\/\d+\/sha256:[0-9a-f]{64}$/);
    const listed = await ctr(['snapshots', '--snapshotter', 'd4fs', 'ls']);
    expect(listed.trim().split('\n')).toHaveLength(3); // header + 2
    expect(await client.usage(bottom.name)).toMatchObject({ inodes: expect.any(Number) });
    expect((await client.usage(bottom.name)).size).toBeGreaterThan(1_000_000); // busybox
    expect(mountsUnder(dir)).toEqual([]);
  });

  test('ctr run --snapshotter d4fs runs a container on the overlay of both layers', async () => {
    const out = await runCaptured(ctr, ['--snapshotter', 'd4fs'], image, 'd4fs-e2e', 'echo hi > /tmp/x && cat /tmp/x && ls / && cat /etc/d4fs-release');
    const lines = out.split('\n').map((l) => l.trim());
    expect(lines[0]).toBe('hi');
    for (const entry of ['bin', 'etc', 'tmp', 'usr']) expect(out).toMatch(new RegExp(`\\b${entry}\\b`));
    expect(out).toMatch(/d4fs test image/);
    // The container's rootfs was an active d4fs snapshot on the top layer. --rm
    // deleted it in containerd's metadata; containerd's garbage collector
    // removes it from d4fs later (at the latest with the --sync GC below).
    const infos = await client.list();
    const committed = infos.filter((i) => i.kind === Kind.Committed);
    const active = infos.filter((i) => i.kind === Kind.Active);
    expect(committed).toHaveLength(2);
    expect(active.length).toBeLessThanOrEqual(1);
    for (const a of active) expect(a.parent).toBe(committed[1].name);
    expect(snapshotter!.logs()).toMatch(/"method":"Prepare".*"key":"default\/\d+\/d4fs-e2e"/);
    expect(mountsUnder(dir)).toEqual([]);
    expect(mountsUnder(containerd!.dir)).toEqual([]);
  });

  test('ctr images rm: garbage collection removes the snapshots through d4fs', async () => {
    await ctr(['images', 'rm', '--sync', image]);
    let left = await client.list();
    for (let i = 0; i < 50 && left.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      left = await client.list();
    }
    expect(left).toEqual([]);
    expect((await ctr(['snapshots', '--snapshotter', 'd4fs', 'ls'])).trim().split('\n')).toHaveLength(1);
    expect(fs.readdirSync(path.join(root, 'snapshots'))).toEqual([]);
    expect(mountsUnder(dir)).toEqual([]);
    expect(mountsUnder(containerd!.dir)).toEqual([]);
  });
});
