/**
 * The one small interface between the FUSE manager and the filesystem of one
 * image (ImageFileSystem), and what both bindings share (ImageFileSystemBase,
 * deadlines, counters). The bindings (./fuse3.ts, ./filesystem.ts) import
 * this module; ./binding.ts chooses and creates one.
 */
import type { Logger } from 'pino';
import type { FuseBindingName } from '../snapshotter/fuse-binding';
import type { ContentCache } from './cache';
import type { ChainIndex } from './chain-index';
import { ImageTree } from './tree';

/** Deadlines of operations that may build contents. */
export interface OpTimeouts {
  /** open (fuse-native) or first read (fuse3) of a file whose content must be built first (default 300 s). */
  openMs: number;
  /** read that must build chunks first (default 300 s). */
  readMs: number;
}

export const DEFAULT_OP_TIMEOUTS: Readonly<OpTimeouts> = { openMs: 300_000, readMs: 300_000 };

/** How long the kernel may keep attributes and entries, in seconds (images are immutable). */
export const KERNEL_CACHE_SECONDS = 3600;

/** How many contents a mount remembers having served (for the prefetch of its updates). */
export const READ_LOG_MAX = 4096;

export interface ImageFileSystemOptions {
  mountpoint: string;
  chain: ChainIndex;
  cache: ContentCache;
  log: Logger;
  timeouts?: Partial<OpTimeouts>;
}

/** Counters of one mount. */
export interface MountStats {
  binding: FuseBindingName;
  /** OPEN requests the kernel sent (fuse3: one at most, answered "no open needed"). */
  opens: number;
  /** READ requests. */
  reads: number;
  errors: number;
  /** Contents held open for the mount (fuse-native: open files; fuse3: contents read in the last moments). */
  openFiles: number;
  /** Every request kind the kernel sent (fuse3 only). */
  requests?: Record<string, number>;
}

/** What both bindings keep of their options: the image's tree, chain, cache, log and deadlines. */
export abstract class ImageFileSystemBase {
  readonly tree: ImageTree;
  readonly mountpoint: string;
  protected readonly chain: ChainIndex;
  protected readonly cache: ContentCache;
  protected readonly log: Logger;
  protected readonly timeouts: OpTimeouts;

  constructor(o: ImageFileSystemOptions) {
    this.mountpoint = o.mountpoint;
    this.chain = o.chain;
    this.cache = o.cache;
    this.log = o.log.child({ mountpoint: o.mountpoint });
    this.timeouts = { ...DEFAULT_OP_TIMEOUTS, ...o.timeouts };
    this.tree = ImageTree.fromIndex(o.chain.top);
  }

  get imageId(): string {
    return this.chain.imageId;
  }

  /**
   * Contents this mount was asked for (digest hex → the first path read),
   * in the order of first use, at most {@link READ_LOG_MAX}: what an update
   * of this image prefetches (see FuseManager.prefetchUpdate).
   */
  readonly readLog = new Map<string, string>();

  /** Records the first use of a node's content. */
  protected noteRead(path: string, hex: string): void {
    if (this.readLog.size < READ_LOG_MAX && !this.readLog.has(hex)) this.readLog.set(hex, path);
  }

  /** True when the image's chain stores content `hex` (sha256 hex), itself or as a patch base. */
  holds(hex: string): boolean {
    return this.chain.locate(hex) !== undefined;
  }
}

/** The filesystem of one image, as the FUSE manager uses it. */
export interface ImageFileSystem {
  readonly mountpoint: string;
  readonly imageId: string;
  readonly binding: FuseBindingName;
  /** The image's tree. */
  readonly tree: ImageTree;
  /** Contents served so far (digest hex → first path), in the order of first use. */
  readonly readLog: ReadonlyMap<string, string>;
  /** Mounts; resolves once the kernel has initialised the connection. */
  mount(timeoutMs?: number): Promise<void>;
  /** Detaches the mount lazily: whatever still uses it (an overlay's lower dir) keeps being served. */
  unmount(timeoutMs?: number): Promise<void>;
  /** True while the kernel may still send requests (mounted, or detached but in use). */
  serving(): boolean;
  /** True when the image's chain stores content `hex` (sha256 hex), itself or as a patch base. */
  holds(hex: string): boolean;
  stats(): MountStats;
}
