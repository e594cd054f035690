/**
 * The filesystem side of the snapshot core: one small interface, as
 * stargz-snapshotter's FileSystem. The snapshot core calls it for snapshots
 * that d4fs provides itself (labelled containerd.io/snapshot/d4fs.remote):
 *
 *  - mount:   make the snapshot's contents appear at `mountpoint`
 *             (the FUSE part mounts a delta image there);
 *  - check:   verify that the mount at `mountpoint` still serves;
 *  - unmount: tear it down before the snapshot's directory is removed.
 *
 * Implementations must be safe to call again after a restart of the
 * snapshotter (mount of an already mounted mountpoint succeeds).
 */
import type { Labels } from './types';

/** How a snapshot is mounted. */
export interface MountOptions {
  /** Resolve once the mount exists, before it can answer (see FileSystem.mount). */
  lazy?: boolean;
}

/** The filesystem that serves remote (d4fs-provided) snapshots. */
export interface FileSystem {
  /**
   * Mounts the snapshot described by `labels` at `mountpoint` (an existing,
   * empty directory). With `lazy`, it may resolve once the mount exists but
   * before it can answer (its requests wait): a later `check` waits for it
   * and reports a mount that cannot serve.
   */
  mount(mountpoint: string, labels: Readonly<Labels>, signal?: AbortSignal, opts?: MountOptions): Promise<void>;
  /** Resolves when the mount at `mountpoint` is healthy; rejects otherwise. */
  check(mountpoint: string, labels: Readonly<Labels>, signal?: AbortSignal): Promise<void>;
  /** Unmounts `mountpoint`; resolves when nothing is mounted there any more. */
  unmount(mountpoint: string, signal?: AbortSignal): Promise<void>;
}

/**
 * The filesystem of a plain overlay snapshotter: it provides nothing, so no
 * snapshot is ever remote and every call is a no-op.
 */
export class NoopFileSystem implements FileSystem {
  async mount(): Promise<void> {}
  async check(): Promise<void> {}
  async unmount(): Promise<void> {}
}
