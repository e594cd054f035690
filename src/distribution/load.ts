/**
 * The step after a pull: load the image from the local store into containerd
 * (what `ctr-cli load` does), through src/containerd/load.ts.
 */
import { loadImage, type LoadImageResult } from '../containerd/load';
import type { LocalStore } from '../store/store';

/** Where and how to load. */
export interface LoadTarget {
  /** containerd's socket (default /run/containerd/containerd.sock). */
  address?: string;
  /** containerd namespace (default "default"). */
  namespace?: string;
  /** Snapshotter the image is prepared for (default "d4fs"). */
  snapshotter?: string;
}

/** The loader a pull calls (tests may pass another). */
export type LoadImageFn = (o: { store: LocalStore; name: string; imageId: string } & LoadTarget) => Promise<LoadImageResult>;

/** The containerd loader. */
export function containerdLoader(): LoadImageFn {
  return (o) => loadImage(o);
}

export type { LoadImageResult };
