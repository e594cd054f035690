/**
 * The one small interface between the FUSE manager and the filesystem of one
 * image (ImageFileSystem), and what both bindings share (ImageFileSystemBase,
 * deadlines, counters). The bindings (./fuse3.ts, ./filesystem.ts) import
 * this module; ./binding.ts chooses and creates one.
 */
import type { Logger } from 'pino';
import type { FuseBindingName } from '../snapshotter/fuse-binding';
import type { ContentCache } from './cache';
import { D4fsError, failedPrecondition } from '../errors';
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
  /**
   * The image's chain, or (a lazy mount, fuse3 only) its opening: the kernel
   * mount is made at once and requests wait until the chain is open (see
   * ImageFileSystemBase.ready).
   */
  chain: ChainIndex | Promise<ChainIndex>;
  /** The image the chain must lead to (required with a chain still opening). */
  imageId?: string;
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
  readonly mountpoint: string;
  protected readonly cache: ContentCache;
  protected readonly log: Logger;
  protected readonly timeouts: OpTimeouts;
  /**
   * Resolves when the chain is open and the tree built (at once for an open
   * chain); rejects with why it could not be (also kept in `failure`).
   */
  readonly ready: Promise<void>;
  /** Why the chain of a lazy mount could not be opened. */
  protected failure?: Error;
  private opened?: { chain: ChainIndex; tree: ImageTree };
  private readonly wantedId?: string;

  constructor(o: ImageFileSystemOptions) {
    this.mountpoint = o.mountpoint;
    this.cache = o.cache;
    this.log = o.log.child({ mountpoint: o.mountpoint });
    this.timeouts = { ...DEFAULT_OP_TIMEOUTS, ...o.timeouts };
    this.wantedId = o.imageId;
    if (!(o.chain instanceof Promise)) {
      this.opened = this.build(o.chain);
      this.ready = Promise.resolve();
      return;
    }
    if (!o.imageId) throw new D4fsError('INVALID_ARGUMENT', 'a lazy mount needs the image id its chain leads to');
    this.ready = o.chain.then(
      (chain) => {
        this.opened = this.build(chain);
      },
      (e: unknown) => {
        throw e instanceof Error ? e : new Error(String(e));
      },
    );
    this.ready.catch((e: unknown) => {
      this.failure = e as Error;
    });
  }

  private build(chain: ChainIndex): { chain: ChainIndex; tree: ImageTree } {
    if (this.wantedId !== undefined && chain.imageId !== this.wantedId) {
      throw failedPrecondition(`the chain ${chain.paths.join(' → ')} leads to image ${chain.imageId}, not ${this.wantedId}`);
    }
    return { chain, tree: ImageTree.fromIndex(chain.top) };
  }

  /** True once the chain is open (always, but for a lazy mount still opening or failed). */
  get isReady(): boolean {
    return this.opened !== undefined;
  }

  /** The image's tree (only once ready: the bindings answer nothing before). */
  get tree(): ImageTree {
    return this.openedOrThrow().tree;
  }

  protected get chain(): ChainIndex {
    return this.openedOrThrow().chain;
  }

  private openedOrThrow(): { chain: ChainIndex; tree: ImageTree } {
    if (this.opened) return this.opened;
    throw this.failure ?? new D4fsError('UNAVAILABLE', `the index of the image mounted at ${this.mountpoint} is still being read`);
  }

  get imageId(): string {
    return this.opened?.chain.imageId ?? (this.wantedId as string);
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

  /**
   * True when the image's chain stores content `hex` (sha256 hex), itself or
   * as a patch base; also while a lazy mount's chain is still opening (its
   * contents are not known yet: nothing may be collected for it).
   */
  holds(hex: string): boolean {
    if (!this.opened) return this.failure === undefined;
    return this.opened.chain.locate(hex) !== undefined;
  }
}

/** The filesystem of one image, as the FUSE manager uses it. */
export interface ImageFileSystem {
  readonly mountpoint: string;
  readonly imageId: string;
  readonly binding: FuseBindingName;
  /** The image's tree (throws before `ready`). */
  readonly tree: ImageTree;
  /** Resolves when the image's chain is open (a lazy mount: later than mount()); rejects when it cannot be. */
  readonly ready: Promise<void>;
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
