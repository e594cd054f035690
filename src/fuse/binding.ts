/**
 * The choice of the FUSE binding that serves an image (the interface both
 * implement is ./imagefs.ts):
 *
 *  - `fuse3` (default when it loads): d4fs's own Node-API binding of
 *    libfuse3's low-level API (native/fuse3). Inode-based; tells the kernel
 *    it needs no open/opendir, so warm reads of cached files never leave the
 *    kernel; nanosecond timestamps. See ./fuse3.ts.
 *  - `fuse-native`: libfuse2's high-level API through fuse-native; every
 *    open and release is a round trip to JavaScript; millisecond timestamps.
 *    See ./filesystem.ts. The fallback, and selectable by configuration.
 *
 * Selection: the manager's `binding` option (`--fuse-binding`, config
 * `fuse_binding`), else $D4FS_FUSE_BINDING, else fuse3 when its addon loads,
 * else fuse-native.
 */
import { invalidArgument } from '../errors';
import { type FuseBindingName, parseBinding } from '../snapshotter/fuse-binding';
import type { ImageFileSystem, ImageFileSystemOptions } from './imagefs';

// The names are the snapshotter's contract (its `fuse_binding`); re-exported for the manager's side.
export { type FuseBindingName, FUSE_BINDINGS, parseBinding } from '../snapshotter/fuse-binding';

let fuse3LoadError: Error | undefined;
let fuse3Loaded: boolean | undefined;

/** Whether d4fs's libfuse3 binding loads here (why not: fuse3LoadFailure()). */
export function fuse3Available(): boolean {
  if (fuse3Loaded === undefined) {
    try {
      require('d4fs-fuse3'); // lazy on purpose: an optional native addon, probed without failing
      fuse3Loaded = true;
    } catch (e) {
      fuse3LoadError = e as Error;
      fuse3Loaded = false;
    }
  }
  return fuse3Loaded;
}

export function fuse3LoadFailure(): string | undefined {
  fuse3Available();
  return fuse3LoadError?.message;
}

/** The binding to use: `wanted`, else $D4FS_FUSE_BINDING, else fuse3 when it loads, else fuse-native. */
export function chooseBinding(wanted?: FuseBindingName): FuseBindingName {
  const env = process.env.D4FS_FUSE_BINDING;
  const choice = wanted ?? (env ? parseBinding(env, 'D4FS_FUSE_BINDING') : undefined);
  if (choice === 'fuse3' && !fuse3Available()) {
    throw invalidArgument(`the fuse3 binding was asked for but does not load: ${fuse3LoadFailure()}`);
  }
  return choice ?? (fuse3Available() ? 'fuse3' : 'fuse-native');
}

/** A filesystem of `binding` for one image (not mounted yet). */
export function createImageFileSystem(binding: FuseBindingName, o: ImageFileSystemOptions): ImageFileSystem {
  // Lazy on purpose: each binding loads its native addon (d4fs-fuse3, fuse-native) only when chosen.
  if (binding === 'fuse3') {
    const { Fuse3FileSystem } = require('./fuse3') as typeof import('./fuse3');
    return new Fuse3FileSystem(o);
  }
  const { DeltaFileSystem } = require('./filesystem') as typeof import('./filesystem');
  return new DeltaFileSystem(o);
}

/**
 * Gives the C heap's free memory back to the system (glibc's malloc_trim,
 * through d4fs-fuse3). Decoding a 151k-entry index frees ~50 MiB that glibc
 * otherwise keeps, counted in the manager's RSS (256 -> 205 MiB after the
 * mount, issue 18). False when nothing was released or the addon is absent.
 */
export function trimMemory(): boolean {
  if (!fuse3Available()) return false;
  const addon = require('d4fs-fuse3') as { trimMemory?: () => boolean }; // loaded above
  return addon.trimMemory?.() ?? false;
}
