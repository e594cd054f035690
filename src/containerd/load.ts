/**
 * Registering a d4fs image held by the local store with containerd, and
 * removing it again.
 *
 * loadImage writes, under a lease (so that nothing is collected half-way):
 *
 *   pointer layer  tiny JSON naming the image          (no labels)
 *   config         original config, rootfs = [diffId]  gc.ref.snapshot.<snapshotter> = chainId
 *   manifest       OCI manifest: config + layer        gc.ref.content.config, gc.ref.content.l.0
 *   snapshot       <chainId> in snapshotter "d4fs": Prepare with
 *                  containerd.io/snapshot.ref = chainId and the d4fs labels;
 *                  the snapshotter FUSE-mounts the image, commits it as
 *                  chainId and answers ALREADY_EXISTS (remote snapshot)
 *   image record   NAME → manifest
 *
 * then deletes the lease. From then on the image record holds the manifest,
 * which holds config and layer, and the config holds the snapshot; deleting
 * the record lets containerd's garbage collector remove all of it (and the
 * snapshotter unmounts the image). `ctr run --snapshotter d4fs NAME ID` finds
 * the chain ID's snapshot and never fetches or unpacks a layer.
 */
import { randomBytes } from 'node:crypto';
import { D4fsError, failedPrecondition, toD4fsError } from '../errors';
import { CdimgReader } from '../format/reader';
import {
  D4FS_ANNOTATIONS,
  D4FS_IMAGE_ID,
  D4FS_IMAGE_REF,
  D4FS_ROOT_DIGEST,
  D4FS_STORE,
  GC_EXPIRE,
  GC_REF_CONTENT_CONFIG,
  SNAPSHOT_REF,
  gcRefContentLayer,
  gcRefSnapshot,
} from '../labels';
import type { Labels, SnapshotInfo } from './snapshots';
import { Kind } from './snapshots';
import { type LocalStore, checkImageName } from '../store/store';
import { ContainerdClient, type Descriptor, type SnapshotsApi, isKind } from './client';
import { buildContainerdImage } from './image';

/** The snapshotter d4fs images are loaded for. */
export const DEFAULT_SNAPSHOTTER = 'd4fs';

/** How long the load's lease lives if the loader dies before deleting it. */
const LEASE_EXPIRY_MS = 60 * 60_000;

/** Default deadline of the Prepare that makes the snapshotter mount the image. */
const PREPARE_TIMEOUT_MS = 5 * 60_000;

/** Where containerd is and which namespace and snapshotter to use. */
export interface ContainerdTarget {
  /** containerd's socket (default /run/containerd/containerd.sock); ignored with `client`. */
  address?: string;
  /** containerd namespace (default "default"); ignored with `client`. */
  namespace?: string;
  /** An open client to use (not closed by these functions). */
  client?: ContainerdClient;
}

export interface LoadImageOptions extends ContainerdTarget {
  /** The local store holding the image's chain. */
  store: LocalStore;
  /** Image name in containerd, REPO[:TAG] (":latest" is added when no tag is given). */
  name: string;
  /** d4fs image id; default: the image `name` stands for in the store. */
  imageId?: string;
  /** Snapshotter name in containerd (default "d4fs"). */
  snapshotter?: string;
  /** Deadline of the Prepare that mounts the image (default 5 min). */
  prepareTimeoutMs?: number;
}

/** What loadImage did. */
export interface LoadImageResult {
  name: string;
  imageId: string;
  namespace: string;
  snapshotter: string;
  manifest: Descriptor;
  config: Descriptor;
  layer: Descriptor;
  /** Name of the image's snapshot in containerd (chain ID of its single layer). */
  chainId: string;
  /** "provided": the snapshotter mounted it now; "existing": it was already there. */
  snapshot: 'provided' | 'existing';
  /** What happened to the image record. */
  image: 'created' | 'updated' | 'unchanged';
}

/** A random hex string for keys and lease ids. */
function randomId(): string {
  return randomBytes(8).toString('hex');
}

/** Opens a client for `t` unless it carries one; `owned` says whether to close it. */
async function clientFor(t: ContainerdTarget): Promise<{ client: ContainerdClient; owned: boolean }> {
  if (t.client) return { client: t.client, owned: false };
  return { client: await ContainerdClient.connect({ address: t.address, namespace: t.namespace }), owned: true };
}

/** Rewords "containerd does not know this snapshotter" so the user knows what to fix. */
function snapshotterError(e: unknown, snapshotter: string): D4fsError {
  const err = toD4fsError(e);
  if (/snapshotter not loaded/i.test(err.message)) {
    return failedPrecondition(
      `containerd has no snapshotter "${snapshotter}": register the d4fs snapshotter as a proxy plugin (install_snapshotter.sh) and restart containerd (${err.message})`,
    );
  }
  return err;
}

/** Stat of `chainId`, undefined when absent; a missing snapshotter becomes a clear error. */
async function findSnapshot(sn: SnapshotsApi, chainId: string): Promise<SnapshotInfo | undefined> {
  try {
    return await sn.find(chainId);
  } catch (e) {
    throw snapshotterError(e, sn.snapshotter);
  }
}

/**
 * Has the snapshotter provide snapshot `chainId` (a FUSE mount of the image)
 * through containerd's remote-snapshot protocol. Resolves when containerd
 * holds the committed snapshot; a snapshotter that prepares an ordinary
 * (empty) snapshot instead is an error, and that snapshot is removed.
 */
async function provideSnapshot(sn: SnapshotsApi, chainId: string, labels: Labels, timeoutMs: number, storeRoot: string): Promise<void> {
  const key = `d4fs-load-${randomId()}`;
  try {
    await sn.prepare(key, '', { ...labels, [SNAPSHOT_REF]: chainId }, timeoutMs);
  } catch (e) {
    if (!isKind(e, 'ALREADY_EXISTS')) throw snapshotterError(e, sn.snapshotter);
    const info = await sn.find(chainId);
    if (!info) throw new D4fsError('INTERNAL', `snapshotter "${sn.snapshotter}" answered ALREADY_EXISTS but containerd has no snapshot ${chainId}`);
    return;
  }
  // An ordinary active snapshot: nobody mounted the image.
  await sn.remove(key).catch(() => undefined);
  throw failedPrecondition(
    `the ${sn.snapshotter} snapshotter is not serving delta images: is it started with FUSE support? ` +
      `Does it serve this store (d4fs-snapshotter --store ${storeRoot}: it serves images only from the stores of its own configuration)? ` +
      `(it prepared an empty snapshot instead of mounting ${labels[D4FS_IMAGE_ID]}; its log says why)`,
  );
}

/** What a load needs of the image before its file is in the store. */
export interface LoadTarget extends ContainerdTarget {
  /** Image name in containerd, REPO[:TAG]. */
  name: string;
  /** d4fs image id. */
  imageId: string;
  /** Root digest of the image's top file (the snapshot's label). */
  rootDigest: string;
  /** A .cdimg holding the image's index (its config); checked to hold `imageId` and `rootDigest`. */
  path: string;
  /** Snapshotter name in containerd (default "d4fs"). */
  snapshotter?: string;
}

/**
 * A load whose content is written (under a lease) but whose snapshot and
 * image record are not: `finish` once the image's chain is in the store,
 * or `abort` (what was written goes with the lease).
 */
export interface PendingLoad {
  finish(store: LocalStore, opts?: { prepareTimeoutMs?: number }): Promise<LoadImageResult>;
  abort(): Promise<void>;
}

/**
 * The first half of a load, which needs only the image's index: connects,
 * fails early when containerd lacks the snapshotter, and writes the pointer
 * layer, config and manifest under a lease. `ctr-cli load` runs it while the
 * store still copies the file (~0.2 s of a 1 s load of a 150k-file image).
 */
export async function beginLoad(t: LoadTarget): Promise<PendingLoad> {
  const name = checkImageName(t.name);
  const snapshotter = t.snapshotter ?? DEFAULT_SNAPSHOTTER;
  const info = await CdimgReader.imageInfo(t.path);
  if (info.imageId !== t.imageId || info.rootDigest !== t.rootDigest) {
    throw failedPrecondition(`${t.path} holds image ${info.imageId} (root ${info.rootDigest}), not ${t.imageId} (root ${t.rootDigest}): the file changed or the local store is damaged`);
  }
  const { layer, config, manifest, chainId } = buildContainerdImage({ imageId: t.imageId, rootDigest: info.rootDigest, configJson: info.image.configJson });
  const { client, owned } = await clientFor(t);
  let leaseId: string | undefined;
  const end = async (sync: boolean): Promise<void> => {
    // Loaded: not sync, what the image record now holds stays and the rest is collected
    // when containerd next collects. Failed: sync, so that what this load wrote is gone
    // when the command reports the error, not at some later collection.
    if (leaseId) await client.leases.delete(leaseId, sync).catch(() => undefined);
    if (owned) client.close();
  };
  try {
    // Fails early (before writing anything) when containerd lacks the snapshotter.
    await findSnapshot(client.snapshots(snapshotter), chainId);
    const id = `d4fs-load-${randomId()}`;
    await client.leases.create(id, { [GC_EXPIRE]: new Date(Date.now() + LEASE_EXPIRY_MS).toISOString() });
    leaseId = id;
    const leased = client.withLease(id);
    // The lease holds all three, so they may land in any order.
    await Promise.all([
      leased.content.writeBlob(layer.descriptor, layer.bytes),
      leased.content.writeBlob(config.descriptor, config.bytes, { [gcRefSnapshot(snapshotter)]: chainId }),
      leased.content.writeBlob(manifest.descriptor, manifest.bytes, {
        [GC_REF_CONTENT_CONFIG]: config.descriptor.digest,
        [gcRefContentLayer(0)]: layer.descriptor.digest,
      }),
    ]);
    let done = false;
    return {
      abort: async () => {
        if (done) return;
        done = true;
        await end(true);
      },
      finish: async (store, o = {}) => {
        if (done) throw new D4fsError('INTERNAL', 'this load has ended');
        done = true;
        let loaded = false;
        try {
          // The config (held by the lease) now references the snapshot, so an
          // existing one cannot be collected any more: decide now.
          const sn = leased.snapshots(snapshotter);
          const existing = await findSnapshot(sn, chainId);
          if (existing && existing.kind !== Kind.Committed) {
            throw failedPrecondition(`containerd's snapshot ${chainId} in "${snapshotter}" exists but is not committed; remove it (ctr snapshots --snapshotter ${snapshotter} rm ${chainId}) and load again`);
          }
          if (!existing) {
            if (!store.hasImage(t.imageId)) throw failedPrecondition(`the local store ${store.root} does not hold image ${t.imageId}`);
            await provideSnapshot(
              sn,
              chainId,
              { [D4FS_IMAGE_ID]: t.imageId, [D4FS_STORE]: store.root, [D4FS_ROOT_DIGEST]: t.rootDigest, [D4FS_IMAGE_REF]: name },
              o.prepareTimeoutMs ?? PREPARE_TIMEOUT_MS,
              store.root,
            );
          }
          const image = await putImageRecord(leased, name, manifest.descriptor, { [D4FS_ANNOTATIONS.imageId]: t.imageId });
          loaded = true;
          return {
            name,
            imageId: t.imageId,
            namespace: client.namespace,
            snapshotter,
            manifest: manifest.descriptor,
            config: config.descriptor,
            layer: layer.descriptor,
            chainId,
            snapshot: existing ? 'existing' : 'provided',
            image,
          };
        } finally {
          await end(!loaded);
        }
      },
    };
  } catch (e) {
    await end(true);
    throw e;
  }
}

/**
 * Registers d4fs image `imageId` (default: the image `name` stands for in
 * the store) with containerd as `name`: content, snapshot and image record,
 * as described in this module's comment. Idempotent: loading the same image
 * again changes nothing; loading another image under the same name moves the
 * name.
 */
export async function loadImage(opts: LoadImageOptions): Promise<LoadImageResult> {
  const imageId = opts.imageId ?? opts.store.resolveName(checkImageName(opts.name));
  const chain = opts.store.chainFor(imageId);
  const top = chain[chain.length - 1];
  // The store validated the file when it took it; the config is all a load needs of its index.
  const pending = await beginLoad({ ...opts, imageId, rootDigest: top.rootDigest, path: top.path });
  return pending.finish(opts.store, { prepareTimeoutMs: opts.prepareTimeoutMs });
}

/** Creates image record `name` → `target`, or points an existing one there. */
async function putImageRecord(client: ContainerdClient, name: string, target: Descriptor, labels: Labels): Promise<LoadImageResult['image']> {
  try {
    await client.images.create({ name, target, labels });
    return 'created';
  } catch (e) {
    if (!isKind(e, 'ALREADY_EXISTS')) throw e;
  }
  const cur = await client.images.get(name);
  const same =
    cur.target.digest === target.digest &&
    cur.target.mediaType === target.mediaType &&
    cur.target.size === target.size &&
    Object.entries(labels).every(([k, v]) => cur.labels[k] === v);
  if (same) return 'unchanged';
  await client.images.update({ name, target, labels }, ['target', ...Object.keys(labels).map((k) => `labels.${k}`)]);
  return 'updated';
}

export interface UnloadImageOptions extends ContainerdTarget {
  /** Image name in containerd. */
  name: string;
  /** Wait for containerd's garbage collection (default true): content, snapshot and mount are gone when this resolves. */
  sync?: boolean;
}

/**
 * Deletes image record `name` from containerd. Resolves false when there was
 * no such record. containerd's garbage collector then removes the manifest,
 * config and pointer layer and, unless a container still uses it, the
 * snapshot (and the snapshotter unmounts the image).
 */
export async function unloadImage(opts: UnloadImageOptions): Promise<boolean> {
  const name = checkImageName(opts.name);
  const { client, owned } = await clientFor(opts);
  try {
    await client.images.delete(name, opts.sync ?? true);
    return true;
  } catch (e) {
    if (isKind(e, 'NOT_FOUND')) return false;
    throw e;
  } finally {
    if (owned) client.close();
  }
}

/**
 * Image ids whose d4fs snapshots containerd still holds in the client's
 * namespace and that were loaded from the store at `storeRoot` (e.g. under a
 * running container after its image was removed). The store must keep their
 * files: the FUSE mounts read them.
 */
export async function imagesInUse(opts: ContainerdTarget & { storeRoot: string; snapshotter?: string }): Promise<string[]> {
  const { client, owned } = await clientFor(opts);
  try {
    const infos = await client.snapshots(opts.snapshotter ?? DEFAULT_SNAPSHOTTER).list([`labels."${D4FS_IMAGE_ID}"`]);
    const ids = new Set<string>();
    for (const i of infos) {
      const id = i.labels[D4FS_IMAGE_ID];
      if (id && (i.labels[D4FS_STORE] ?? opts.storeRoot) === opts.storeRoot) ids.add(id);
    }
    return [...ids];
  } catch (e) {
    throw snapshotterError(e, opts.snapshotter ?? DEFAULT_SNAPSHOTTER);
  } finally {
    if (owned) client.close();
  }
}
