/**
 * Issue 12: Kubernetes pulls through CRI become delta pulls. A real
 * containerd with its CRI plugin and the d4fs snapshotter, a real registry,
 * images built from Debian packages, `ctr-cli publish` attaching d4fs data to
 * them; a small CRI client plays kubelet.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { buildTar } from '../src/tar';
import { buildDebImage, BuiltDebImage } from './fixtures/debimages';
import { compareTrees, umociUnpack, walkTree } from './fixtures/treewalk';
import { startCriRig, CriRig, CriPod, d4fsPulls, logSize } from './helpers/cri';
import { buildBusyboxImage } from './helpers/containerd';
import { eventually } from './helpers/wait';
import { LocalStore } from '../src/store/store';
import { packageRoot } from '../src/util/paths';

const run = promisify(execFile);
const CLI = path.join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let rig: CriRig | undefined;
let work: string;
let v1: BuiltDebImage;
let v2: BuiltDebImage;
let host: string;
const pods: CriPod[] = [];

async function skopeoCopy(layout: string, tag: string, to: string): Promise<void> {
  await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:${tag}`, `docker://${to}`], { maxBuffer: 1 << 24 });
}

async function cliJson(args: string[]): Promise<Record<string, unknown>> {
  const r = await run(process.execPath, [CLI, ...args, '--json'], { maxBuffer: 1 << 26 });
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

/** The d4fs-snapshotter's log file (d4fsPulls, logSize). */
const snapshotterLog = (): string => rig?.env.snapshotterLogFile as string;

/** The container's root filesystem as containerd mounted it (host mount namespace). */
const rootfsOf = (containerId: string): string => path.join(rig?.env.containerd.state as string, 'io.containerd.runtime.v2.task', 'k8s.io', containerId, 'rootfs');

/** What the runtime adds to a root filesystem (mount points), not part of the image. */
const RUNTIME_PATHS = new Set(['proc', 'sys', 'dev', 'dev/shm', 'dev/pts', 'dev/mqueue', 'etc/hosts', 'etc/hostname', 'etc/resolv.conf', 'run', 'tmp']);
const runtimePath = (p: string): boolean => RUNTIME_PATHS.has(p) || [...RUNTIME_PATHS].some((r) => p.startsWith(`${r}/`));

async function expectSameAsImage(pod: CriPod, image: BuiltDebImage, name: string): Promise<void> {
  const want = await walkTree(await umociUnpack(image.layout, image.tag, path.join(work, `umoci-${name}`)));
  const got = await walkTree(rootfsOf(pod.containerId));
  const diffs = compareTrees(want, got, {
    ignorePath: runtimePath,
    // directories where the runtime created mount points
    ignoreMtimeOf: (p) => p === '' || p === 'etc',
    ignoreXattr: (x) => x.startsWith('trusted.overlay.'),
  });
  expect(diffs).toEqual([]);
}

/** Layer blobs of `repo@manifest` that containerd's content store holds. */
async function layersInContentStore(manifestLayers: string[]): Promise<string[]> {
  const r = await rig?.env.containerd.ctr(['-n', 'k8s.io', 'content', 'ls', '-q']);
  const have = new Set((r?.stdout ?? '').split('\n').map((s) => s.trim()).filter(Boolean));
  return manifestLayers.filter((d) => have.has(d));
}

async function manifestOf(ref: string): Promise<{ digest: string; layers: string[] }> {
  const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`]);
  const doc = JSON.parse(raw.stdout) as { layers: { digest: string }[] };
  const d = await run('skopeo', ['inspect', '--format', '{{.Digest}}', '--tls-verify=false', `docker://${ref}`]);
  return { digest: d.stdout.trim(), layers: doc.layers.map((l) => l.digest) };
}

/** An OCI layout holding `image`'s layers but its top one, and `tar` as its new top layer. */
async function siblingImage(image: BuiltDebImage, out: string, tag: string, tar: Buffer): Promise<void> {
  await fsp.cp(image.layout, out, { recursive: true });
  const blob = (d: string): string => path.join(out, 'blobs', 'sha256', d.slice(7));
  const put = async (b: Buffer): Promise<string> => {
    const d = `sha256:${createHash('sha256').update(b).digest('hex')}`;
    await fsp.writeFile(blob(d), b);
    return d;
  };
  const index = JSON.parse(await fsp.readFile(path.join(out, 'index.json'), 'utf8')) as { manifests: { digest: string; size: number; annotations?: Record<string, string> }[] };
  const manifest = JSON.parse(await fsp.readFile(blob(index.manifests[0].digest), 'utf8')) as { config: { digest: string; size: number }; layers: { mediaType: string; digest: string; size: number }[] };
  const config = JSON.parse(await fsp.readFile(blob(manifest.config.digest), 'utf8')) as { rootfs: { diff_ids: string[] }; history?: unknown[] };
  const gz = gzipSync(tar);
  const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: await put(gz), size: gz.length };
  config.rootfs.diff_ids = [...config.rootfs.diff_ids.slice(0, -1), `sha256:${createHash('sha256').update(tar).digest('hex')}`];
  delete config.history;
  const cfg = Buffer.from(JSON.stringify(config));
  manifest.config = { ...manifest.config, digest: await put(cfg), size: cfg.length };
  manifest.layers = [...manifest.layers.slice(0, -1), layer];
  const m = Buffer.from(JSON.stringify(manifest));
  index.manifests = [{ ...index.manifests[0], digest: await put(m), size: m.length, annotations: { 'org.opencontainers.image.ref.name': tag } }];
  await fsp.writeFile(path.join(out, 'index.json'), JSON.stringify(index));
}

beforeAll(async () => {
  work = await fsp.mkdtemp(path.join('/tmp', 'd4fs-cri-delta-'));
  [v1, v2] = [await buildDebImage('nginx-v1'), await buildDebImage('nginx-v2')];
  rig = await startCriRig();
  host = rig.registry.host;
  await skopeoCopy(v1.layout, v1.tag, `${host}/app:v1`);
  await skopeoCopy(v2.layout, v2.tag, `${host}/app:v2`);
  // the same v2 image in a repository without d4fs data
  await skopeoCopy(v2.layout, v2.tag, `${host}/plain:v2`);
  await cliJson(['publish', `docker://${host}/app:v1`, '--no-progress']);
  await cliJson(['publish', `docker://${host}/app:v2`, '--base', `docker://${host}/app:v1`, '--no-progress']);
}, 900_000);

afterAll(async () => {
  if (rig) for (const p of pods) await rig.removePod(p).catch(() => undefined);
  await rig?.stop();
  await fsp.rm(work, { recursive: true, force: true });
});

const sleeper = { command: ['/bin/sh', '-c', 'sleep 600'] };

describe('CRI pulls through d4fs', () => {
  it('a node holding nothing pulls v1 as the full .cdimg; no layer reaches containerd; the pod sees the image file by file', async () => {
    const r = rig as CriRig;
    const mark = logSize(snapshotterLog());
    await r.cri.pullImage(`${host}/app:v1`);
    const pulls = d4fsPulls(snapshotterLog(), mark);
    expect(pulls).toHaveLength(1);
    expect(pulls[0].files).toBe(1);
    const m = await manifestOf(`${host}/app:v1`);
    expect(await layersInContentStore(m.layers)).toEqual([]);
    expect(r.env.d4fsMounts().length).toBe(1);
    const pod = await r.runPod(`${host}/app:v1`, sleeper);
    pods.push(pod);
    await expectSameAsImage(pod, v1, 'v1');
  }, 600_000);

  it('a node holding v1 pulls v2 as the delta only; the pod sees v2 file by file', async () => {
    const r = rig as CriRig;
    const mark = logSize(snapshotterLog());
    await r.cri.pullImage(`${host}/app:v2`);
    const pulls = d4fsPulls(snapshotterLog(), mark);
    expect(pulls).toHaveLength(1);
    // the bytes moved are the delta's: far less than v2's layers
    const m = await manifestOf(`${host}/app:v2`);
    const raw = JSON.parse((await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${host}/app:v2`])).stdout) as { layers: { size: number }[] };
    const layerBytes = raw.layers.reduce((n, l) => n + l.size, 0);
    expect(pulls[0].bytes).toBeGreaterThan(0);
    expect(pulls[0].bytes).toBeLessThan(layerBytes / 5);
    expect(await layersInContentStore(m.layers)).toEqual([]);
    const pod = await r.runPod(`${host}/app:v2`, sleeper);
    pods.push(pod);
    await expectSameAsImage(pod, v2, 'v2');
  }, 600_000);

  it('the same image in a repository without d4fs data reuses the snapshots d4fs provided (same chain ids)', async () => {
    const r = rig as CriRig;
    const mark = logSize(snapshotterLog());
    await r.cri.pullImage(`${host}/plain:v2`);
    expect(d4fsPulls(snapshotterLog(), mark)).toEqual([]);
    const pod = await r.runPod(`${host}/plain:v2`, sleeper);
    pods.push(pod);
    await expectSameAsImage(pod, v2, 'plain-v2');
  }, 600_000);

  it('an ordinary image sharing only v1\'s lower layers (provided empty) unpacks on their real files', async () => {
    const r = rig as CriRig;
    // v1's first two layers and a small layer of its own, in a repository without d4fs data
    const layout = path.join(work, 'sibling');
    await siblingImage(v1, layout, 'v1', buildTar([{ header: { name: 'etc/sibling', type: 'file', mode: 0o644 }, data: Buffer.from('sibling\n') }]));
    await skopeoCopy(layout, 'v1', `${host}/sibling:v1`);
    const mark = logSize(snapshotterLog());
    await r.cri.pullImage(`${host}/sibling:v1`);
    const log = fs.readFileSync(r.env.snapshotterLogFile as string, 'utf8').slice(mark);
    expect(d4fsPulls(snapshotterLog(), mark)).toEqual([]);
    expect(log).toContain('lower layer given its files');
    const pod = await r.runPod(`${host}/sibling:v1`, sleeper);
    pods.push(pod);
    const out = await r.cri.execSync(pod.containerId, ['/bin/sh', '-c', 'cat /etc/sibling; ls /bin/busybox /etc/passwd'], 30);
    expect(out.stdout.toString()).toBe('sibling\n/bin/busybox\n/etc/passwd\n');
    // and v1's own pod still sees exactly v1
    const again = await r.runPod(`${host}/app:v1`, sleeper);
    pods.push(again);
    await expectSameAsImage(again, v1, 'v1-again');
  }, 600_000);

  it('an ordinary image (no d4fs data anywhere) pulls and runs', async () => {
    const r = rig as CriRig;
    const layout = path.join(work, 'bb');
    await buildBusyboxImage(layout, 'v1');
    await skopeoCopy(layout, 'v1', `${host}/busybox:v1`);
    const mark = logSize(snapshotterLog());
    await r.cri.pullImage(`${host}/busybox:v1`);
    expect(d4fsPulls(snapshotterLog(), mark)).toEqual([]);
    const pod = await r.runPod(`${host}/busybox:v1`, sleeper);
    pods.push(pod);
    const out = await r.cri.execSync(pod.containerId, ['/bin/cat', '/etc/d4fs-release'], 30);
    expect(out.stdout.toString()).toBe('d4fs test image\n');
  }, 600_000);

  it('RemoveImage: no d4fs mount, no store file and no CRI record is left', async () => {
    const r = rig as CriRig;
    for (const p of pods.splice(0)) await r.removePod(p);
    for (const img of ['app:v1', 'app:v2', 'plain:v2', 'sibling:v1', 'busybox:v1']) await r.cri.removeImage(`${host}/${img}`);
    await eventually(() => r.env.d4fsMounts().length === 0, 60_000, 'd4fs mounts to go');
    await eventually(async () => {
      const s = await LocalStore.open(r.env.store);
      try {
        return s.files().length === 0 && s.images().length === 0;
      } finally {
        s.close();
      }
    }, 60_000, 'the store to be collected');
  }, 600_000);
});
