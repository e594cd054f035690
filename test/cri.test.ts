/**
 * Kubernetes' CRI against a real containerd (Debian's 1.6, CRI plugin on)
 * whose CRI snapshotter is d4fs, and a real registry: an ordinary image
 * (no d4fs data) pulls through the d4fs snapshotter acting as overlay, a
 * host-network pod runs it, exec works, everything is removed again and
 * nothing stays mounted. Also records what containerd tells the snapshotter
 * on a CRI pull (the cri.* labels of each layer's Prepare and Commit), and
 * checks that a containerd config edited by `install_snapshotter.sh --cri`
 * starts a CRI plugin that pulls through d4fs.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { packageRoot } from '../src/util/paths';
import { buildBusyboxImage, mountsUnder, pidsMentioning, runCommand } from './helpers/containerd';
import { CRI_LABELS, type CriRig, type RegistryImageFacts, type SnapshotterCall, containerLogLines, execOk, registryImageFacts, startCriRig } from './helpers/cri';
import { eventually } from './helpers/wait';
import { pushOciLayout } from './helpers/registry';

jest.setTimeout(600_000);

const criKeys = (c: SnapshotterCall) => Object.keys(c.labels).filter((k) => k.startsWith('containerd.io/snapshot/cri.'));

describe('CRI through the d4fs snapshotter (ordinary image)', () => {
  let rig: CriRig;
  let work: string;
  let image: string;
  let facts: RegistryImageFacts;

  beforeAll(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-cri-test-'));
    rig = await startCriRig();
    const layout = path.join(work, 'busybox');
    await buildBusyboxImage(layout, '1');
    await pushOciLayout(layout, '1', rig.registry.host, 'd4fs/busybox:1');
    image = `${rig.registry.host}/d4fs/busybox:1`;
    facts = await registryImageFacts(rig.registry.url, 'd4fs/busybox', '1');
  });

  afterAll(async () => {
    await rig?.stop();
    if (work) await fsp.rm(work, { recursive: true, force: true });
  });

  test('Version answers: containerd speaking CRI v1', async () => {
    const v = await rig.cri.version();
    expect(v.runtime_name).toBe('containerd');
    expect(v.runtime_api_version).toBe('v1');
    expect(v.runtime_version).toMatch(/^\d+\.\d+\.\d+/);
  });

  test('pull, run a host-network pod, exec, remove: normal unpack through d4fs, cri.* labels on each layer, nothing left mounted', async () => {
    const before = rig.snapshotterCalls().length;
    const ref = await rig.cri.pullImage(image);
    expect(ref).toBe(facts.configDigest);

    const st = await rig.cri.imageStatus(image);
    expect(st).toBeDefined();
    expect(st!.id).toBe(facts.configDigest);
    expect(st!.repo_tags).toContain(image);
    expect(st!.repo_digests).toContain(`${rig.registry.host}/d4fs/busybox@${facts.manifestDigest}`);
    expect((await rig.cri.listImages()).map((i) => i.id)).toContain(facts.configDigest);

    // What the snapshotter was told: each layer's Prepare (and Commit) carries
    // the chain id and the cri.* labels; the bottom layer's image-layers lists
    // every layer from it upwards.
    const pullCalls = rig.snapshotterCalls().slice(before);
    const labelled = pullCalls.filter((c) => c.method === 'Prepare' && c.labels[CRI_LABELS.imageRef] === image);
    expect(labelled.map((c) => c.labels[CRI_LABELS.layerDigest])).toEqual(facts.layers);
    labelled.forEach((c, i) => {
      expect(c.labels[CRI_LABELS.ref]).toBe(facts.chainIds[i]);
      expect(c.labels[CRI_LABELS.manifestDigest]).toBe(facts.manifestDigest);
      expect(c.labels[CRI_LABELS.imageLayers]).toBe(facts.layers.slice(i).join(','));
      expect(c.ok).toBe(true); // no d4fs data: an ordinary active snapshot, unpacked by containerd
      expect(c.parent.endsWith(i === 0 ? '' : facts.chainIds[i - 1])).toBe(true);
    });
    const commits = pullCalls.filter((c) => c.method === 'Commit' && c.labels[CRI_LABELS.imageRef] === image);
    expect(commits.map((c) => c.name.replace(/^.*\//, ''))).toEqual(facts.chainIds);
    for (const c of commits) expect(c.labels[CRI_LABELS.manifestDigest]).toBe(facts.manifestDigest);
    console.log(
      'snapshotter calls of the CRI pull:\n' +
        pullCalls
          .filter((c) => ['Prepare', 'Commit', 'View'].includes(c.method))
          .map((c) => `  ${c.method} ${c.method === 'Commit' ? c.name : c.key} ${c.ok ? 'ok' : c.code} labels: ${Object.keys(c.labels).sort().join(' ')}`)
          .join('\n'),
    );

    // A pod runs it.
    const beforePod = rig.snapshotterCalls().length;
    const pod = await rig.runPod(image, { name: 'busybox', command: ['/bin/sh', '-c', 'cat /etc/d4fs-release; echo started; sleep 30'] });
    await eventually(() => containerLogLines(pod.logFile).includes('started'), 30_000, 'the container writing its first lines');
    expect(containerLogLines(pod.logFile)).toEqual(['d4fs test image', 'started']);

    const status = await rig.cri.containerStatus(pod.containerId);
    expect(status.state).toBe('CONTAINER_RUNNING');
    // containerd 1.6 answers the repo digest here (PullImage answered the image id)
    expect(status.image_ref).toBe(`${rig.registry.host}/d4fs/busybox@${facts.manifestDigest}`);

    expect(await execOk(rig.cri, pod.containerId, ['/bin/sh', '-c', 'cat /etc/d4fs-release; echo $((6 * 7)); ls /bin/busybox'])).toBe('d4fs test image\n42\n/bin/busybox\n');
    const failing = await rig.cri.execSync(pod.containerId, ['/bin/sh', '-c', 'echo oops >&2; exit 3']);
    expect(failing.exit_code).toBe(3);
    expect(failing.stderr.toString()).toBe('oops\n');
    // the container's writable layer works
    expect(await execOk(rig.cri, pod.containerId, ['/bin/sh', '-c', 'echo hi > /tmp/x && cat /tmp/x'])).toBe('hi\n');

    // The pod's root filesystems came from the snapshotter too, prepared
    // without cri.* labels on top of the image's (and pause's) top layer.
    const podCalls = rig.snapshotterCalls().slice(beforePod);
    const rootfs = podCalls.find((c) => c.method === 'Prepare' && c.key.endsWith(`/${pod.containerId}`));
    expect(rootfs).toBeDefined();
    expect(rootfs!.parent.endsWith(`/${facts.chainIds[facts.chainIds.length - 1]}`)).toBe(true);
    expect(criKeys(rootfs!)).toEqual([]);
    expect(podCalls.some((c) => c.method === 'Prepare' && c.key.endsWith(`/${pod.podId}`))).toBe(true);

    // Remove container and pod, then the image.
    await rig.cri.stopContainer(pod.containerId, 0);
    expect((await rig.cri.containerStatus(pod.containerId)).state).toBe('CONTAINER_EXITED');
    await rig.cri.removeContainer(pod.containerId);
    await rig.cri.stopPodSandbox(pod.podId);
    await rig.cri.removePodSandbox(pod.podId);
    expect(await rig.cri.listPodSandbox()).toEqual([]);

    await rig.cri.removeImage(image);
    expect(await rig.cri.imageStatus(image)).toBeUndefined();
    expect((await rig.cri.listImages()).map((i) => i.id)).not.toContain(facts.configDigest);
    // containerd's garbage collection removed the layers' snapshots from d4fs
    await eventually(
      async () => {
        const ls = await rig.env.ctr(['-n', 'k8s.io', 'snapshots', '--snapshotter', 'd4fs', 'ls']);
        return ls.code === 0 && facts.chainIds.every((id) => !ls.stdout.includes(id));
      },
      30_000,
      'the image snapshots removed',
    );
    const removed = rig.snapshotterCalls().filter((c) => c.method === 'Remove');
    for (const id of facts.chainIds) expect(removed.some((c) => c.key.endsWith(`/${id}`))).toBe(true);

    expect(rig.mountsLeft()).toEqual([]);
  });

  test('a second pod of the same image after a pull again; removing everything leaves no mounts', async () => {
    await rig.cri.pullImage(image);
    const pods = [];
    for (const name of ['a', 'b']) pods.push(await rig.runPod(image, { name, command: ['/bin/sleep', '60'] }));
    for (const p of pods) expect(await execOk(rig.cri, p.containerId, ['/bin/cat', '/etc/d4fs-release'])).toBe('d4fs test image\n');
    for (const p of pods) await rig.removePod(p);
    await rig.cri.removeImage(image);
    expect(await rig.cri.listPodSandbox()).toEqual([]);
    expect(rig.mountsLeft()).toEqual([]);
  });

  test('stop() ends everything: no mount, no process and no directory of the rig is left', async () => {
    const pod = await rig.runPod(rig.pauseImage, { name: 'left-running' }); // stop() must remove pods itself
    expect(pod.containerId).toBeTruthy();
    const dirs = [rig.env.dir, rig.env.containerd.dir, rig.registry.dataDir];
    await rig.stop();
    for (const d of dirs) {
      expect(mountsUnder(d)).toEqual([]);
      expect(pidsMentioning(d)).toEqual([]);
      expect(fs.existsSync(d)).toBe(false);
    }
  });
});

describe('a node set up with install_snapshotter.sh --cri', () => {
  test('containerd whose CRI plugin used overlayfs without annotations pulls through d4fs with the cri.* labels once the script edited its config', async () => {
    const script = path.join(packageRoot(), 'install_snapshotter.sh');
    const scratch = await fsp.mkdtemp('/tmp/d4inst-cri-');
    let edited = '';
    let out = '';
    const rig = await startCriRig({
      cri: { snapshotter: 'overlayfs', disableSnapshotAnnotations: true },
      containerdConfigHook: async (configFile) => {
        const r = await runCommand('bash', [script, '--cri'], {
          env: {
            ...process.env,
            CONTAINERD_CONFIG: configFile,
            D4FS_ROOT: path.join(scratch, 'var'),
            D4FS_ADDRESS: path.join(scratch, 'run', 'd4fs.sock'),
            SYSTEMD_UNIT_DIR: path.join(scratch, 'systemd'),
          },
        });
        if (r.code !== 0) throw new Error(`install_snapshotter.sh --cri exited ${r.code}: ${r.stderr}`);
        out = r.stdout + r.stderr;
        edited = await fsp.readFile(configFile, 'utf8');
      },
    });
    try {
      expect(out).toMatch(/set the CRI plugin's snapshotter to d4fs/);
      const conf = parseToml(edited) as { plugins: Record<string, { containerd: Record<string, unknown> }> };
      expect(conf.plugins['io.containerd.grpc.v1.cri'].containerd).toMatchObject({ snapshotter: 'd4fs', disable_snapshot_annotations: false });

      const layout = path.join(scratch, 'busybox');
      await buildBusyboxImage(layout, '1');
      await pushOciLayout(layout, '1', rig.registry.host, 'd4fs/busybox:1');
      const image = `${rig.registry.host}/d4fs/busybox:1`;
      const facts = await registryImageFacts(rig.registry.url, 'd4fs/busybox', '1');
      await rig.cri.pullImage(image);
      const labelled = rig.snapshotterCalls().filter((c) => c.method === 'Prepare' && c.labels[CRI_LABELS.imageRef] === image);
      expect(labelled.map((c) => c.labels[CRI_LABELS.layerDigest])).toEqual(facts.layers);
      const pod = await rig.runPod(image, { command: ['/bin/sleep', '60'] });
      expect(await execOk(rig.cri, pod.containerId, ['/bin/cat', '/etc/d4fs-release'])).toBe('d4fs test image\n');
      await rig.removePod(pod);
      await rig.cri.removeImage(image);
      expect(rig.mountsLeft()).toEqual([]);
    } finally {
      await rig.stop();
      await fsp.rm(scratch, { recursive: true, force: true });
    }
  });
});
