/**
 * The remote-snapshot hook. containerd prepares each layer's snapshot with
 * the label containerd.io/snapshot.ref = <chain ID>. Before unpacking a tar
 * layer into it, the snapshot core asks the RemoteSnapshotProvider whether
 * it can provide that snapshot itself (for d4fs: from a delta image, through
 * a FUSE mount). When it can, the core commits the snapshot under the chain
 * ID and answers ALREADY_EXISTS, so containerd skips fetching and unpacking
 * the layer (the protocol stargz-snapshotter uses).
 */
import type { FileSystem } from './filesystem';
import type { Labels } from './types';

/** Where the provider must put the snapshot's contents. */
export interface RemotePrepareTarget {
  /** Snapshot id (its directory name under <root>/snapshots). */
  id: string;
  /** The snapshot's upper directory: the provider mounts (or fills) it. */
  mountpoint: string;
  /** Ids of the committed parents, nearest first. */
  parentIds: readonly string[];
  /** Aborted when the request's deadline passes. */
  signal?: AbortSignal;
}

/** Decides and provides remote snapshots. */
export interface RemoteSnapshotProvider {
  /**
   * Tries to provide the snapshot being prepared under `key`. Resolves true
   * when its contents are now served at `target.mountpoint`: the snapshot
   * core then commits it (as labels[containerd.io/snapshot.ref], marked
   * containerd.io/snapshot/d4fs.remote) and answers ALREADY_EXISTS. Resolves
   * false (or rejects) to let containerd unpack the layer normally.
   */
  prepare(key: string, labels: Readonly<Labels>, target: RemotePrepareTarget): Promise<boolean | RemoteProvided>;
  /**
   * Called before the committed remote snapshot `name` becomes a base of
   * another snapshot's mounts: a provider that gave it without contents (a
   * CRI image's lower layer, empty because its top layer holds the whole
   * tree) gives it its contents now, or throws. Optional.
   */
  ensureParent?(name: string, signal?: AbortSignal): Promise<void>;
}

/**
 * What a provider may answer instead of `true`: `standalone` when the
 * snapshot holds the whole image tree by itself (a CRI pull's top layer over
 * FUSE), so its mounts must not stack the layers below it.
 */
export interface RemoteProvided {
  standalone: boolean;
}

/** The default provider: never provides anything (plain overlay snapshotter). */
export class NoRemoteSnapshots implements RemoteSnapshotProvider {
  async prepare(): Promise<boolean> {
    return false;
  }
}

/**
 * A provider that mounts through a FileSystem every snapshot `accepts`
 * approves (e.g. a d4fs image's own snapshot). This is how the FUSE part
 * plugs in: `new FileSystemRemoteProvider(fuseFs, (labels, target) => ...)`.
 * Labels come from whoever pulls an image (any layer annotation under
 * containerd.io/snapshot/ reaches Prepare): `accepts` must treat them as
 * untrusted claims.
 */
export class FileSystemRemoteProvider implements RemoteSnapshotProvider {
  constructor(
    private readonly fs: FileSystem,
    private readonly accepts: (labels: Readonly<Labels>, target: RemotePrepareTarget) => boolean,
  ) {}

  async prepare(_key: string, labels: Readonly<Labels>, target: RemotePrepareTarget): Promise<boolean> {
    if (!this.accepts(labels, target)) return false;
    // lazy: containerd commits the snapshot without waiting for the image's index to be read;
    // the first Mounts of a snapshot over it checks the mount, which waits for that
    await this.fs.mount(target.mountpoint, labels, target.signal, { lazy: true });
    return true;
  }
}
