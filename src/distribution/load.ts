/**
 * The step after a pull: load the image from the local store into containerd
 * (what `ctr-cli load` does), through src/containerd/load.ts.
 */
import { loadImage, type LoadImageResult } from '../containerd/load';
import { containerdServices } from '../containerd/proto';
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
export type LoadImageFn = ((o: { store: LocalStore; name: string; imageId: string } & LoadTarget) => Promise<LoadImageResult>) & {
  /** Optional: get ready (load code, parse schemas) while the pull waits for the network. */
  warm?: () => void;
};

/** The containerd loader. */
export function containerdLoader(): LoadImageFn {
  const load: LoadImageFn = (o) => loadImage(o);
  // Parsing containerd's .proto files and generating their coders takes ~50-70 ms of a
  // CLI's start: done while the delta downloads, it is off the critical path.
  load.warm = () => {
    try {
      containerdServices();
    } catch {
      /* the load reports it */
    }
  };
  return load;
}

export type { LoadImageResult };
