/**
 * Kubernetes pulls through CRI become delta pulls (DESIGN.md decision 11).
 *
 * containerd's CRI plugin, with `disable_snapshot_annotations = false`,
 * prepares every layer of an image it pulls with labels naming the image
 * (`cri.image-ref`, `cri.manifest-digest`, `cri.layer-digest`) and the
 * layer's chain id (`containerd.io/snapshot.ref`). On the first such Prepare
 * of an image, this provider, in the snapshotter's own long-lived process:
 *
 *  1. fetches the manifest by the digest containerd is unpacking (verified)
 *     and its config (verified), and computes the layers' chain ids;
 *  2. finds the d4fs artifacts attached to that manifest (OCI referrers,
 *     `ctr-cli publish`); none: the layers are unpacked as usual;
 *  3. fetches the cheapest chain from what the store holds (fetchChain:
 *     resumable, every byte verified, image id recomputed, signature policy)
 *     and checks that the d4fs image's config is the manifest's config;
 *  4. answers each layer's Prepare as a remote snapshot: the lower layers
 *     empty, the top one a FUSE mount of the whole image tree (standalone:
 *     its mounts do not stack the layers below), so containerd downloads no
 *     layer.
 *
 * Concurrent Prepares of one image share one pull (single flight). Any
 * failure before a mount falls back to containerd's normal unpack, logged.
 * Labels are untrusted: they only say which manifest to look at; what is
 * mounted is decided from the manifest fetched by digest, the chain id being
 * prepared must be one that manifest's layers give, and the d4fs data must
 * carry that manifest's config.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import { CdimgReader } from '../format/reader';
import { corrupt, toD4fsError } from '../errors';
import { CRI_IMAGE_REF, CRI_LAYER_DIGEST, CRI_MANIFEST_DIGEST, SNAPSHOT_REF } from '../labels';
import { openLayer, resolveImage } from '../oci/image';
import { parseRegistryRef } from '../oci/ref';
import { RegistrySource } from '../oci/registry/source';
import type { RegistryOptions } from '../oci/registry/options';
import type { SignaturePolicy } from '../signing';
import { LocalStore } from '../store/store';
import { digestOf, SHA256_RE } from '../util/digest';
import { fetchChain } from '../distribution/registry';
import { findD4fsReferrers } from '../distribution/referrers';
import type { FuseFileSystem } from '../fuse/client';
import type { FileSystem } from '../snapshotter/filesystem';
import type { RemotePrepareTarget, RemoteProvided, RemoteSnapshotProvider } from '../snapshotter/remote';
import type { Labels } from '../snapshotter/types';
import { applyLayer } from './apply';
import { CriLayer, CriState } from './state';

/** What a CRI pull through d4fs established about an image. */
export interface CriImage {
  imageId: string;
  manifest: string;
  ref: string;
  chainIds: string[];
  layers: { digest: string; mediaType: string; size: number }[];
  /** Bytes downloaded for it (0 when the store held it). */
  bytes: number;
}

export interface CriPullOptions {
  fuse: FuseFileSystem;
  /** The snapshotter's state directory (cri.db lives there). */
  root: string;
  /** The local store CRI pulls go to (the first configured store). */
  store: string;
  policy?: SignaturePolicy;
  registry?: RegistryOptions;
  log: Logger;
  /** How long "this image has no d4fs data" is remembered (default 60 s). */
  negativeTtlMs?: number;
}

/** The chain ids of layers with these diff ids (OCI image spec: ChainID). */
export function chainIdsOf(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const [i, d] of diffIds.entries()) {
    out.push(i === 0 ? d : `sha256:${createHash('sha256').update(`${out[i - 1]} ${d}`).digest('hex')}`);
  }
  return out;
}

/** How long a pulled image's facts serve the Prepares of its other layers. */
const DONE_TTL_MS = 10 * 60_000;

/** The store name a CRI-pulled image is kept under (so that `ctr-cli rmi`'s collection keeps it). */
export const criStoreName = (manifest: string): string => `cri/${manifest.replace(/^sha256:/, '')}:latest`;

export class CriPullProvider implements RemoteSnapshotProvider {
  readonly state: CriState;
  private readonly inflight = new Map<string, Promise<CriImage | undefined>>();
  private readonly negative = new Map<string, number>();
  private readonly filling = new Map<string, Promise<void>>();
  private readonly done = new Map<string, { image: CriImage; until: number }>();
  private readonly log: Logger;

  constructor(private readonly o: CriPullOptions) {
    this.state = new CriState(o.root);
    this.log = o.log.child({ component: 'cri-pull' });
  }

  async prepare(key: string, labels: Readonly<Labels>, target: RemotePrepareTarget): Promise<boolean | RemoteProvided> {
    const ref = labels[CRI_IMAGE_REF];
    const manifest = labels[CRI_MANIFEST_DIGEST];
    const name = labels[SNAPSHOT_REF];
    if (!ref || !manifest || !name || !SHA256_RE.test(manifest)) return false;
    let img: CriImage | undefined;
    try {
      img = await this.image(ref, manifest);
    } catch (e) {
      this.log.warn({ err: toD4fsError(e), ref, manifest }, 'CRI pull through d4fs failed; unpacking the layers as usual');
      return false;
    }
    if (!img) return false;
    const i = img.chainIds.indexOf(name);
    const layerDigest = labels[CRI_LAYER_DIGEST];
    if (i < 0 || (layerDigest && layerDigest !== img.layers[i].digest)) {
      this.log.warn({ key, name, ref, manifest, layerDigest }, 'snapshot is not a layer of the manifest its labels name; unpacking it as usual');
      return false;
    }
    const row = { name, imageId: img.imageId, manifest, ref, index: i, layerDigest: img.layers[i].digest, mediaType: img.layers[i].mediaType, size: img.layers[i].size, mountpoint: target.mountpoint };
    if (i < img.chainIds.length - 1) {
      this.state.put({ ...row, role: 'lower' });
      this.log.debug({ name, ref, layer: i }, 'lower layer provided (empty: the top layer holds the whole tree)');
      return true;
    }
    // lazy: the pull does not wait for the image's index to be read (the container's mounts do)
    await this.o.fuse.mountImage(target.mountpoint, img.imageId, target.signal, { lazy: true });
    this.state.put({ ...row, role: 'top' });
    this.log.info({ name, ref, manifest, imageId: img.imageId, bytes: img.bytes }, 'image provided by d4fs over FUSE');
    return { standalone: true };
  }

  /**
   * A lower layer provided empty is given its real files the first time
   * something other than its image's top (which stands alone) needs it as a
   * base: an ordinary image sharing the layer, a view of it. Its layers, and
   * the empty ones below it, are downloaded, verified against their digests
   * and diff ids, and applied as containerd's overlay applier would.
   */
  ensureParent(name: string): Promise<void> {
    const row = this.state.byName(name);
    if (row?.role !== 'lower') return Promise.resolve();
    let p = this.filling.get(name);
    if (!p) {
      p = this.fill(row).finally(() => this.filling.delete(name));
      this.filling.set(name, p);
    }
    return p;
  }

  private async fill(row: CriLayer): Promise<void> {
    const t0 = Date.now();
    const ref = parseRegistryRef(row.ref);
    const source = new RegistrySource({ ...ref, tag: undefined, digest: row.manifest }, this.o.registry ?? {});
    try {
      const image = await resolveImage(source, { expectedRootDigest: row.manifest });
      for (const l of this.state.layersOf(row.manifest, row.index)) {
        if (l.role !== 'lower') continue;
        const what = `${row.ref} layer ${l.index + 1} (${l.layerDigest})`;
        try {
          const n = await applyLayer(l.mountpoint, await openLayer(image, l.index), what);
          this.state.put({ ...l, role: 'filled' });
          this.log.info({ name: l.name, ref: row.ref, layer: l.index, entries: n }, 'lower layer given its files (another image builds on it)');
        } catch (e) {
          // leave it empty, as it was: a later attempt starts again
          for (const f of await fsp.readdir(l.mountpoint).catch(() => [] as string[])) await fsp.rm(`${l.mountpoint}/${f}`, { recursive: true, force: true });
          throw e;
        }
      }
      this.log.info({ name: row.name, ms: Date.now() - t0 }, 'lower layers filled');
    } finally {
      await source.client.close();
    }
  }

  /** The image a CRI pull names, pulled through d4fs (once per manifest at a time); undefined when it has no d4fs data. */
  image(ref: string, manifest: string): Promise<CriImage | undefined> {
    const until = this.negative.get(manifest);
    if (until !== undefined && until > Date.now()) return Promise.resolve(undefined);
    // the layers of one image are prepared one after the other: the pull of the first serves them all
    const done = this.done.get(manifest);
    if (done && done.until > Date.now()) return Promise.resolve(done.image);
    let p = this.inflight.get(manifest);
    if (!p) {
      p = this.pull(ref, manifest)
        .then((image) => {
          if (image) this.done.set(manifest, { image, until: Date.now() + DONE_TTL_MS });
          return image;
        })
        .finally(() => this.inflight.delete(manifest));
      this.inflight.set(manifest, p);
    }
    return p;
  }

  private async pull(refText: string, manifest: string): Promise<CriImage | undefined> {
    const t0 = Date.now();
    const ref = parseRegistryRef(refText);
    const source = new RegistrySource({ ...ref, tag: undefined, digest: manifest }, this.o.registry ?? {});
    const where = `${ref.registry}/${ref.repository}@${manifest}`;
    try {
      // the manifest and config, and the referrers, at once: one round trip less before containerd may start
      const [image, found] = await Promise.all([resolveImage(source, { expectedRootDigest: manifest }), findD4fsReferrers(source.client, ref.repository, manifest)]);
      if (!found) {
        this.negative.set(manifest, Date.now() + (this.o.negativeTtlMs ?? 60_000));
        this.log.info({ ref: refText, manifest }, 'no d4fs data attached to the image; containerd unpacks it');
        return undefined;
      }
      const store = await LocalStore.open(this.o.store);
      try {
        const { files } = await fetchChain({ client: source.client, repo: ref.repository, registry: ref.registry, where, entries: found.entries, target: found.target, store, policy: this.o.policy });
        await store.checkChainSignatures(found.target, this.o.policy);
        const chain = store.chainFor(found.target);
        const top = await CdimgReader.open(chain[chain.length - 1].path, { reuse: true });
        try {
          // the d4fs data must be this image's: its config is the manifest's config
          const cfg = digestOf(top.index.image.configJson);
          if (cfg !== image.configDigest) throw corrupt(`${where}: the d4fs data attached to it is for config ${cfg}, the manifest names ${image.configDigest}`);
        } finally {
          await top.close();
        }
        store.tag(criStoreName(manifest), found.target);
        const bytes = files.reduce((n, f) => n + f.bytes, 0);
        this.log.info({ ref: refText, manifest, imageId: found.target, files: files.length, bytes, ms: Date.now() - t0 }, 'pulled through d4fs');
        return {
          imageId: found.target,
          manifest,
          ref: refText,
          chainIds: chainIdsOf(image.layers.map((l) => l.diffId)),
          layers: image.layers.map((l) => ({ digest: l.desc.digest, mediaType: l.desc.mediaType, size: l.desc.size })),
          bytes,
        };
      } finally {
        store.close();
      }
    } finally {
      await source.client.close();
    }
  }

  /**
   * The snapshotter's FileSystem with the CRI layers known: their mounts come
   * back by name after a restart (the top one over FUSE, the lower ones are
   * plain directories), and removing a top layer unmounts it and lets the
   * store collect the image's files.
   */
  fileSystem(): FileSystem {
    const fuse = this.o.fuse;
    return {
      mount: async (mountpoint, labels, signal, opts) => {
        const row = this.state.byName(labels[SNAPSHOT_REF]);
        if (row?.role === 'lower' || row?.role === 'filled') return;
        if (row?.role === 'top') return fuse.mountImage(mountpoint, row.imageId, signal, opts);
        return fuse.mount(mountpoint, labels, signal, opts);
      },
      check: async (mountpoint, labels, signal) => {
        const row = this.state.byName(labels[SNAPSHOT_REF]);
        if (row?.role === 'lower' || row?.role === 'filled') return;
        return fuse.check(mountpoint, labels, signal);
      },
      unmount: async (mountpoint, signal) => {
        const row = this.state.byMountpoint(mountpoint);
        if (row?.role === 'lower' || row?.role === 'filled') {
          this.state.delete(row.name);
          return;
        }
        await fuse.unmount(mountpoint, signal);
        if (row?.role === 'top') {
          this.state.delete(row.name);
          await this.release(row.manifest, row.imageId);
        }
      },
    };
  }

  /** An image's top layer is gone: its store name goes, and the files no image needs are collected. */
  private async release(manifest: string, imageId: string): Promise<void> {
    this.done.delete(manifest);
    try {
      const store = await LocalStore.open(this.o.store);
      try {
        if (!this.state.mountedImages().includes(imageId)) {
          try {
            store.untag(criStoreName(manifest));
          } catch {
            /* already gone */
          }
          const removed = await store.gc(this.state.mountedImages());
          this.log.info({ manifest, imageId, removed: removed.length }, 'CRI image released from the store');
        }
      } finally {
        store.close();
      }
    } catch (e) {
      this.log.warn({ err: toD4fsError(e), manifest }, 'releasing a CRI image from the store failed');
    }
  }

  close(): void {
    this.state.close();
  }
}
