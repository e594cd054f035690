/**
 * Labels are untrusted input of the snapshotter (decision 10 of the design),
 * end to end: a private containerd, the d4fs snapshotter (FUSE on, serving
 * the store of its own configuration) and a private registry.
 *
 * An ordinary image (never converted) whose layer annotations carry every
 * d4fs label, pointing at a real d4fs image of the snapshotter's store and
 * at a store path of the attacker's choice, is unpacked as an ordinary image
 * with --snapshotter d4fs: nothing is mounted, no file appears at that path,
 * and the layer's files are what the image holds.
 *
 * containerd passes layer annotations under containerd.io/snapshot/ to
 * Prepare in its pull unpacker (the CRI path, and `ctr` from 1.7 on); ctr
 * 1.6's own `images pull` unpacks without them. So the test does both: the
 * ctr pull, and the unpacker's steps through containerd's API (Prepare with
 * containerd.io/snapshot.ref = chain id and the inherited annotations, apply
 * the layer into the mounts, Commit), checking that the labels did reach the
 * snapshotter.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { ContainerdClient } from '../src/containerd/client';
import { d4fsDiffId } from '../src/containerd/image';
import { convertImage } from '../src/convert/convert';
import {
  D4FS_IMAGE_ID,
  D4FS_IMAGE_REF,
  D4FS_REMOTE,
  D4FS_ROOT_DIGEST,
  D4FS_STORE,
  SNAPSHOT_REF,
  filterInheritedLabels,
} from '../src/labels';
import { SnapshotsClient } from '../src/snapshotter';
import { LocalStore } from '../src/store/store';
import { buildDirImage } from './fixtures/debimages';
import { mountAll, unmount } from './helpers/containerd';
import { describeIfCapable } from './helpers/capabilities';
import { type D4fsEnv, startD4fsEnv } from './helpers/d4fs-env';
import { buildOciLayout, pushOciLayout, startRegistry, type TestRegistry } from './helpers/registry';

jest.setTimeout(300_000);

interface Layout {
  layout: string;
  tag: string;
  /** The layer's descriptor (with the annotations) and its gzip tar. */
  layer: { digest: string; annotations: Record<string, string>; blob: string };
  /** Chain id of the one layer (= its diff id). */
  chainId: string;
}

/** Adds `annotations` to every layer descriptor of oci:LAYOUT:TAG (new manifest blob, index updated). */
async function annotateLayers(layout: string, tag: string, annotations: Record<string, string>): Promise<Layout> {
  const blob = (digest: string) => path.join(layout, 'blobs', ...digest.split(':'));
  const indexFile = path.join(layout, 'index.json');
  const index = JSON.parse(await fsp.readFile(indexFile, 'utf8')) as { manifests: { digest: string; size: number; annotations?: Record<string, string> }[] };
  const desc = index.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === tag)!;
  const manifest = JSON.parse(await fsp.readFile(blob(desc.digest), 'utf8')) as { config: { digest: string }; layers: { digest: string; annotations?: Record<string, string> }[] };
  manifest.layers = manifest.layers.map((l) => ({ ...l, annotations: { ...l.annotations, ...annotations } }));
  const bytes = Buffer.from(JSON.stringify(manifest));
  desc.digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  desc.size = bytes.length;
  await fsp.writeFile(blob(desc.digest), bytes);
  await fsp.writeFile(indexFile, JSON.stringify(index));
  const config = JSON.parse(await fsp.readFile(blob(manifest.config.digest), 'utf8')) as { rootfs: { diff_ids: string[] } };
  expect(manifest.layers).toHaveLength(1);
  const l = manifest.layers[0];
  return { layout, tag, layer: { digest: l.digest, annotations: l.annotations!, blob: blob(l.digest) }, chainId: config.rootfs.diff_ids[0] };
}

describeIfCapable('test/snapshotter-labels.test.ts', ['root', 'fuse', 'containerd', 'registry'])('snapshot labels are untrusted', () => {
  let env: D4fsEnv;
  let registry: TestRegistry;
  let work: string;
  let d4fsId: string;
  let rootDigest: string;
  /** Where the annotations say the store is: must never appear. */
  let evilStore: string;
  const images: Record<'evil' | 'sneaky', Layout | undefined> = { evil: undefined, sneaky: undefined };
  const content: Record<'evil' | 'sneaky', string> = { evil: `ordinary evil ${Date.now()}\n`, sneaky: `ordinary sneaky ${Date.now()}\n` };

  beforeAll(async () => {
    work = await fsp.mkdtemp('/tmp/d4lbl-');
    evilStore = `/tmp/d4fs-evil-${randomBytes(6).toString('hex')}`;
    env = await startD4fsEnv();
    // A real d4fs image in the snapshotter's store (not loaded into containerd).
    const tree = path.join(work, 'd4fs-tree');
    await fsp.mkdir(tree);
    await fsp.writeFile(path.join(tree, 'secret'), 'the d4fs image\n');
    const img = await buildDirImage([tree], { layout: path.join(work, 'd4fs-layout'), tag: 'd4fs' });
    const file = path.join(work, 'd4fs.cdimg');
    d4fsId = (await convertImage({ ref: img.ref, output: file })).imageId;
    const store = await LocalStore.open(env.store);
    try {
      rootDigest = (await store.add(file)).rootDigest;
    } finally {
      store.close();
    }

    // Two ordinary images carrying every d4fs label: one names a store path of its own, one the real store.
    registry = await startRegistry();
    for (const name of ['evil', 'sneaky'] as const) {
      const layout = path.join(work, `${name}-layout`);
      await buildOciLayout(layout, name, { 'hello.txt': content[name] });
      images[name] = await annotateLayers(layout, name, {
        [D4FS_IMAGE_ID]: d4fsId,
        [D4FS_STORE]: name === 'evil' ? evilStore : env.store,
        [D4FS_ROOT_DIGEST]: rootDigest,
        [D4FS_IMAGE_REF]: 'victim:1',
        [D4FS_REMOTE]: 'true',
        'io.example.other': 'not inherited',
      });
      await pushOciLayout(layout, name, registry.host, `d4fs/${name}:1`);
    }
  });

  afterAll(async () => {
    await env?.stop();
    await registry?.stop();
    if (work) await fsp.rm(work, { recursive: true, force: true });
    await fsp.rm(evilStore, { recursive: true, force: true }).catch(() => undefined);
  });

  test('ctr images pull --snapshotter d4fs unpacks the annotated images as ordinary images', async () => {
    for (const name of ['evil', 'sneaky'] as const) {
      await env.ctrOk(['images', 'pull', '--plain-http', '--snapshotter', 'd4fs', `${registry.host}/d4fs/${name}:1`]);
    }
    expect(env.d4fsMounts()).toEqual([]);
    expect(fs.existsSync(evilStore)).toBe(false);
    const backend = new SnapshotsClient(env.socket);
    try {
      const committed = (await backend.list()).filter((i) => i.kind === 3);
      for (const name of ['evil', 'sneaky'] as const) {
        expect(committed.some((i) => i.name.endsWith(images[name]!.chainId))).toBe(true);
      }
      expect(committed.every((i) => i.labels[D4FS_REMOTE] === undefined)).toBe(true);
    } finally {
      backend.close();
    }
  });

  test("containerd's pull unpacker steps: the labels reach Prepare, nothing is mounted, the layer unpacks normally", async () => {
    // Another namespace: containerd asks the snapshotter again (the default namespace holds the chain ids now).
    const client = await ContainerdClient.connect({ address: env.containerd.address, namespace: 'labels-test' });
    const backend = new SnapshotsClient(env.socket);
    // Under a lease, as the unpacker works (unreferenced snapshots are collected otherwise).
    await client.leases.create('labels-test');
    const sn = client.withLease('labels-test').snapshots('d4fs');
    const mnt = path.join(work, 'mnt');
    await fsp.mkdir(mnt);
    try {
      for (const name of ['evil', 'sneaky'] as const) {
        const img = images[name]!;
        expect(img.chainId).not.toBe(d4fsDiffId(d4fsId));
        // What the unpacker passes: the layer's inherited annotations and the target chain id.
        const labels: Record<string, string> = { ...filterInheritedLabels(img.layer.annotations), [SNAPSHOT_REF]: img.chainId };
        expect(labels[D4FS_STORE]).toBeDefined();
        const key = `extract-${name}-${img.chainId}`;
        const mounts = await sn.prepare(key, '', labels); // not ALREADY_EXISTS: nothing was provided remotely
        expect(env.d4fsMounts()).toEqual([]);
        // The labels did reach the snapshotter (this is not a vacuous test).
        const active = (await backend.list()).find((i) => i.name.endsWith(key))!;
        expect(active.labels).toMatchObject({ [D4FS_IMAGE_ID]: d4fsId, [D4FS_STORE]: name === 'evil' ? evilStore : env.store });
        expect(active.labels[D4FS_REMOTE]).toBeUndefined();
        // Apply the layer as containerd's applier does, then commit.
        await mountAll(mounts, mnt);
        try {
          // umoci's layers end without the last record's padding and the end-of-archive blocks (Go's
          // tar reader, containerd's, does not mind; GNU tar does): padded here.
          const raw = gunzipSync(await fsp.readFile(img.layer.blob));
          const tar = Buffer.concat([raw, Buffer.alloc(((512 - (raw.length % 512)) % 512) + 1024)]);
          execFileSync('tar', ['-xf', '-', '-C', mnt], { input: tar, stdio: ['pipe', 'ignore', 'ignore'] });
        } finally {
          await unmount(mnt);
        }
        await sn.commit(img.chainId, key, labels);
        const view = await sn.view(`view-${name}`, img.chainId);
        await mountAll(view, mnt);
        try {
          expect(await fsp.readFile(path.join(mnt, 'hello.txt'), 'utf8')).toBe(content[name]);
          expect(fs.existsSync(path.join(mnt, 'secret'))).toBe(false);
        } finally {
          await unmount(mnt);
        }
        await sn.remove(`view-${name}`);
        await sn.remove(img.chainId);
      }
      expect(env.d4fsMounts()).toEqual([]);
      expect(fs.existsSync(evilStore)).toBe(false);
      expect(env.snapshotter.logs()).toMatch(/ignoring d4fs labels/);
      // Nothing was written into the real store either (the snapshotter only reads it).
      expect(fs.readdirSync(path.join(env.store, 'files'))).toHaveLength(1);
    } finally {
      await client.leases.delete('labels-test', true).catch(() => undefined);
      client.close();
      backend.close();
    }
  });

  test("the d4fs image's own snapshot (named by its chain id) is still served from the configured store", async () => {
    // What `ctr-cli load` does, with the store label pointing elsewhere: ignored, the configured store is used.
    const client = await ContainerdClient.connect({ address: env.containerd.address, namespace: 'labels-test' });
    try {
      const chainId = d4fsDiffId(d4fsId);
      const labels = { [D4FS_IMAGE_ID]: d4fsId, [D4FS_STORE]: evilStore, [SNAPSHOT_REF]: chainId };
      await expect(client.snapshots('d4fs').prepare('load-like', '', labels)).rejects.toMatchObject({ kind: 'ALREADY_EXISTS' });
      expect(env.d4fsMounts(env.root)).toHaveLength(1);
      expect(fs.existsSync(evilStore)).toBe(false);
      await client.snapshots('d4fs').remove(chainId);
    } finally {
      client.close();
    }
  });
});
