/**
 * The step after a pull: load the image from the local store into containerd
 * (what `ctr-cli load` does), through src/containerd/load.ts.
 */
import { loadImage, type LoadImageResult } from '../containerd/load';
import type { LocalStore } from '../store/store';
import { D4fsError } from '../errors';

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

/**
 * A load into containerd that failed after the image was stored and named:
 * the error says so, and how to finish (the store keeps the image; loading it
 * again needs no download).
 */
export function notLoaded(e: unknown, name: string): unknown {
  if (e instanceof D4fsError && !e.message.includes('ctr-cli load ')) {
    e.message += `; ${name} is in the local store but not in containerd: once that is fixed, \`ctr-cli load ${name}\` finishes the load`;
  }
  return e;
}

/** The containerd loader. */
export function containerdLoader(): LoadImageFn {
  return (o) => loadImage(o);
}

export type { LoadImageResult };
