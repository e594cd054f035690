/**
 * The read-only delta filesystem of one image, served through d4fs's own
 * binding of libfuse3's low-level API (native/fuse3; the default binding,
 * see ./binding.ts).
 *
 * The kernel addresses inodes, not paths: inode numbers are the tree's
 * (hard links share one). A native thread receives the requests; those that
 * need the tree come to this (JavaScript) thread and are answered at once
 * from the in-memory tree, except reads, which come from the shared content
 * cache. The binding answers the rest itself: open and opendir with ENOSYS,
 * after which the kernel sends neither any more and keeps each file's page
 * cache across opens (no-open implies FOPEN_KEEP_CACHE, and FOPEN_CACHE_DIR
 * for directories) — so a warm read of a cached file never leaves the
 * kernel; forget (inodes live as long as the mount); writes (EROFS; the
 * mount is also `ro`); getxattr of a name no inode has (ENODATA; overlayfs
 * asks for trusted.overlay.* on every lookup). It also keeps the listings
 * this thread encodes (bounded) and answers from them the rest of a listing
 * and the lookups in that directory (see native/fuse3's struct listing):
 * one round trip per directory, and a cold walk of the tree instantiates no
 * kernel inode for the files it does not look at.
 *
 * Entries (negative ones too), attributes and symlink targets are cached by
 * the kernel for a year: the image never changes. Times carry nanoseconds.
 *
 * Without open there is no file handle to pin a content: a read acquires the
 * content from the cache (building it, or the chunks the read touches, in
 * worker threads) and the mount keeps that reference while reads keep coming,
 * releasing it HOLD_MS after the last one, so the cache may evict it. A read
 * that waits for a build longer than its deadline gets ETIMEDOUT; a content
 * that cannot be built gives EIO (and a log line) for that file only.
 *
 * Unmounting detaches lazily (umount -l in a child process: this process
 * never touches its own mountpoint); the session keeps serving whatever still
 * uses the mount (an overlay's lower dir) until the kernel drops it, then the
 * native thread ends and the session is destroyed.
 */
import * as fuse3 from 'd4fs-fuse3';
import { D4fsError, toD4fsError } from '../errors';
import { FileType } from '../format/types';
import {
  type ImageFileSystem,
  ImageFileSystemBase,
  type MountStats,
} from './imagefs';
import type { ContentRef } from './cache';
import { lazyUnmount, READAHEAD_KB, setReadahead } from './mounts';
import type { TreeNode } from './tree';

/** Kernel cache lifetime of entries and attributes, in seconds. */
const KERNEL_TIMEOUT_S = 365 * 24 * 3600;
/** How long a content stays referenced after the last read of it. */
const HOLD_MS = 2000;
/** At most this many contents are held (each keeps a file descriptor of the cache open). */
const MAX_HELD = 256;
/** Bytes of encoded directory listings a mount keeps (a listing is ~144 bytes per entry). */
const LISTING_BYTES = 4 * 1024 * 1024;
/** Directories of at most this many children are handed to the binding at their first lookup (see noteLookup). */
const LISTING_AT_FIRST_LOOKUP = 256;
/** Directories remembered by noteLookup (forgotten all at once past this). */
const LOOKED_UP_MAX = 65_536;
/** Read buffers kept for reuse, and the smallest one made (see Fuse3FileSystem.readBuffer). */
const READ_BUFFERS_KEPT = 8;
const READ_BUFFER_MIN = 128 * 1024;
const MOUNT_OPTIONS = 'ro,allow_other,default_permissions,suid,dev,fsname=d4fs,subtype=d4fs';

const E = { ENOENT: 2, EIO: 5, ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENODATA: 61, ETIMEDOUT: 110 } as const;
const { EV, RQ } = fuse3;

interface Held {
  ref?: ContentRef;
  pending?: Promise<ContentRef>;
  lastUse: number;
  /** Reads using the reference now. */
  busy: number;
}

export class Fuse3FileSystem extends ImageFileSystemBase implements ImageFileSystem {
  readonly binding = 'fuse3' as const;
  private session?: fuse3.Session;
  /** The kernel mount exists (until unmount). */
  private mounted = false;
  /** The session runs (until its connection ends). */
  private alive = false;
  private closedWaiters: (() => void)[] = [];
  private mountWaiter?: { resolve: () => void; reject: (e: Error) => void };
  private readonly held = new Map<number, Held>();
  private sweeper?: NodeJS.Timeout;
  /** Encoded listings of directories being read (a listing is read in several requests), least recently used first. */
  private readonly listings = new Map<number, Buffer>();
  /** Directories with one lookup answered here (see noteLookup). */
  private readonly lookedUp = new Set<number>();
  private listingBytes = 0;
  private statfs64?: Float64Array;
  private readonly counters = { reads: 0, errors: 0 };



  serving(): boolean {
    return this.alive;
  }

  stats(): MountStats {
    const n = this.session ? fuse3.stats(this.session) : undefined;
    const requests: Record<string, number> = {};
    if (n) for (const [k, v] of Object.entries(n)) if (typeof v === 'number') requests[k] = v;
    return { binding: this.binding, opens: n?.open ?? 0, reads: this.counters.reads, errors: this.counters.errors, openFiles: this.held.size, requests };
  }

  /** Mounts; resolves once the kernel has initialised the connection. */
  mount(timeoutMs = 30_000): Promise<void> {
    if (this.session && this.alive) {
      return Promise.reject(new D4fsError('FAILED_PRECONDITION', `${this.mountpoint} is already mounted by this filesystem`));
    }
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.mountWaiter) return;
        this.mountWaiter = undefined;
        reject(new D4fsError('DEADLINE_EXCEEDED', `mounting ${this.mountpoint} did not complete within ${timeoutMs} ms`));
        const wasMounted = this.mounted;
        this.mounted = false;
        void this.destroy().then(() => (wasMounted ? lazyUnmount(this.mountpoint) : undefined)).catch(() => undefined);
      }, timeoutMs);
      this.mountWaiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      try {
        // a lazy mount: every xattr request is asked of this thread until the tree tells which names exist
        this.session = fuse3.mount(this.mountpoint, MOUNT_OPTIONS, KERNEL_TIMEOUT_S, KERNEL_TIMEOUT_S, this.isReady ? this.tree.xattrNames : null, this.onRequest);
        this.alive = true;
        if (!this.isReady) this.whenReady(this.session);
      } catch (e) {
        this.mountWaiter = undefined;
        clearTimeout(timer);
        reject(new D4fsError('INTERNAL', `cannot mount ${this.mountpoint}: ${(e as Error).message}`, { cause: e }));
      }
    });
  }

  /** Detaches the mount lazily; the session serves whatever still uses it, then ends. */
  async unmount(timeoutMs = 20_000): Promise<void> {
    if (!this.mounted) return;
    this.mounted = false;
    try {
      await lazyUnmount(this.mountpoint, timeoutMs);
    } catch (e) {
      // Detaching failed (already gone?): stop serving, so nothing can hang on this connection.
      this.log.warn({ err: (e as Error).message }, 'umount -l failed; closing the FUSE session');
      await this.destroy();
    }
    // Unused, the connection ends at once: wait a little for that, so the caller sees serving() settled.
    await this.waitClosed(300);
    // Whatever is idle is let go now (not HOLD_MS later), so that the cache may collect it.
    this.releaseIdle();
    this.log.info({ stillServing: this.alive }, 'unmounted');
  }

  /** Stops serving at once (requests left fail with EIO; a mount still attached answers ENOTCONN). */
  async destroy(timeoutMs = 2000): Promise<void> {
    if (this.session && this.alive) fuse3.close(this.session);
    await this.waitClosed(timeoutMs);
  }

  private waitClosed(ms: number): Promise<void> {
    if (!this.alive) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.closedWaiters.push(done);
    });
  }

  // -------------------------------------------------------------------------
  // Requests
  // -------------------------------------------------------------------------

  /**
   * A lazy mount (the chain still opening when the kernel mount was made):
   * requests wait in `waiting` until the tree is built, then are answered in
   * order; if the chain cannot be opened, they and every later one get EIO
   * (the manager's check reports why, and the snapshotter mounts again).
   */
  private whenReady(s: fuse3.Session): void {
    this.waiting = [];
    const drain = (): void => {
      const queued = this.waiting ?? [];
      this.waiting = undefined;
      for (const q of queued) this.onRequest(...q);
    };
    this.ready.then(
      () => {
        if (this.session === s && this.alive) fuse3.setXattrNames(s, this.tree.xattrNames);
        this.log.info({ imageId: this.imageId, entries: this.tree.totals.entries, waited: this.waiting?.length ?? 0 }, 'index read: serving');
        drain();
      },
      (e: unknown) => {
        this.log.error({ err: toD4fsError(e).message, imageId: this.imageId }, 'cannot read the index of a lazy mount: every request fails with EIO');
        drain();
      },
    );
  }

  /** Requests that came before the chain of a lazy mount was open (see whenReady). */
  private waiting?: [number, number, number, number, number, string | undefined][];

  private readonly onRequest = (op: number, id: number, ino: number, a: number, b: number, name: string | undefined): void => {
    const s = this.session!;
    if (op !== EV.MOUNTED && op !== EV.INIT && op !== EV.CLOSED) {
      if (this.waiting) {
        this.waiting.push([op, id, ino, a, b, name]);
        return;
      }
      if (this.failure) {
        if (id) fuse3.replyErr(s, id, E.EIO);
        return;
      }
    }
    try {
      switch (op) {
        case RQ.LOOKUP: {
          const dir = this.tree.node(ino);
          if (!dir) return void fuse3.replyErr(s, id, E.ENOENT);
          if (!dir.isDir) return void fuse3.replyErr(s, id, E.ENOTDIR);
          const n = this.tree.child(dir, name ?? '');
          // Absent: a negative entry, cached by the kernel like the others.
          fuse3.replyEntry(s, id, n ? this.tree.stat64(n) : null);
          this.noteLookup(s, dir);
          // A path walk that reaches a small file mostly reads it next: its decode starts now,
          // its disk read overlapping the rest of the reader's open and read.
          if (n?.entry.type === FileType.REG && !this.held.has(n.ino)) this.cache.prefetchSmall(n.entry.digest.toString('hex'), n.entry.size, this.chain);
          return;
        }
        case RQ.GETATTR: {
          const n = this.tree.node(ino);
          if (n) fuse3.replyAttr(s, id, this.tree.stat64(n));
          else fuse3.replyErr(s, id, E.ENOENT);
          return;
        }
        case RQ.READ:
          return this.read(s, id, ino, a, b);
        case RQ.READDIR:
        case RQ.READDIRPLUS: {
          const n = this.tree.node(ino);
          if (!n) return void fuse3.replyErr(s, id, E.ENOENT);
          if (!n.isDir) return void fuse3.replyErr(s, id, E.ENOTDIR);
          // A continuation reaching here: the binding did not keep the listing (too big), so this thread does.
          const l = this.listing(n, b > 0);
          fuse3.replyDir(s, id, l, b, a, op === RQ.READDIRPLUS, ino);
          return;
        }
        case RQ.READLINK: {
          const n = this.tree.node(ino);
          if (!n) fuse3.replyErr(s, id, E.ENOENT);
          else if (n.entry.type !== FileType.SYMLINK) fuse3.replyErr(s, id, E.EINVAL);
          else fuse3.replyReadlink(s, id, Buffer.from(n.entry.linkTarget, 'utf8'));
          return;
        }
        case RQ.GETXATTR: {
          const n = this.tree.node(ino);
          const v = n?.xattrs.get(name ?? '');
          if (!n) fuse3.replyErr(s, id, E.ENOENT);
          else if (!v) fuse3.replyErr(s, id, E.ENODATA);
          else fuse3.replyXattr(s, id, v, a);
          return;
        }
        case RQ.LISTXATTR: {
          const n = this.tree.node(ino);
          if (!n) return void fuse3.replyErr(s, id, E.ENOENT);
          const list = Buffer.from([...n.xattrs.keys()].map((k) => `${k}\0`).join(''), 'utf8');
          fuse3.replyXattr(s, id, list, a);
          return;
        }
        case RQ.STATFS: {
          if (!this.statfs64) {
            const f = this.tree.statfs();
            this.statfs64 = new Float64Array([f.bsize, f.frsize, f.blocks, f.bfree, f.bavail, f.files, f.ffree, f.favail, f.fsid, f.flag, f.namemax]);
          }
          fuse3.replyStatfs(s, id, this.statfs64);
          return;
        }
        case EV.MOUNTED:
          if (a === 0) {
            this.mounted = true;
          } else {
            const w = this.mountWaiter;
            this.mountWaiter = undefined;
            w?.reject(new D4fsError('INTERNAL', `cannot mount ${this.mountpoint} (libfuse3 mount failed; see its message on stderr)`));
          }
          return;
        case EV.INIT: {
          const w = this.mountWaiter;
          this.mountWaiter = undefined;
          // larger kernel read-ahead before the first read (./mounts.ts READAHEAD_KB)
          void setReadahead(this.mountpoint).then((readahead) => {
            this.log.info({ imageId: this.imageId, entries: this.isReady ? this.tree.totals.entries : undefined, lazy: !this.isReady, capable: a, want: b, readaheadKiB: readahead ? READAHEAD_KB : undefined }, 'mounted');
            w?.resolve();
          });
          return;
        }
        case EV.CLOSED:
          return this.onClosed();
        default:
          if (id) fuse3.replyErr(s, id, 38 /* ENOSYS */);
      }
    } catch (e) {
      this.counters.errors++;
      this.log.error({ err: e, op, ino }, 'FUSE request handler failed: EIO');
      if (id) fuse3.replyErr(s, id, E.EIO);
    }
  };

  /**
   * A lookup in directory `dir` came here (the binding does not keep its
   * listing): the listing is handed to the binding, which answers the
   * directory's further lookups natively. For a big directory only at the
   * second lookup: a path walk touches one name of most directories it
   * crosses, and encoding a listing of thousands of entries costs more than
   * a round trip (a listing of LISTING_AT_FIRST_LOOKUP entries is encoded in
   * ~30 us here, about a third of a JavaScript lookup's round trip).
   */
  private noteLookup(s: fuse3.Session, dir: TreeNode): void {
    if (this.tree.childCount(dir) > LISTING_AT_FIRST_LOOKUP && !this.lookedUp.delete(dir.ino)) {
      if (this.lookedUp.size >= LOOKED_UP_MAX) this.lookedUp.clear();
      this.lookedUp.add(dir.ino);
      return;
    }
    fuse3.keepListing(s, dir.ino, this.listing(dir, false));
  }

  /**
   * The encoded listing of directory `n`. The binding keeps listings itself
   * (bounded); this thread keeps those it is asked to (`keep`, while
   * LISTING_BYTES allow), so that one read in many requests is encoded once.
   */
  private listing(n: TreeNode, keep: boolean): Buffer {
    let l = this.listings.get(n.ino);
    if (l) {
      this.listings.delete(n.ino);
      this.listings.set(n.ino, l);
      return l;
    }
    l = this.tree.encodeListing(n);
    if (!keep) return l;
    this.listings.set(n.ino, l);
    this.listingBytes += l.length;
    for (const [ino, old] of this.listings) {
      if (this.listingBytes <= LISTING_BYTES || ino === n.ino) break;
      this.listings.delete(ino);
      this.listingBytes -= old.length;
    }
    return l;
  }

  private onClosed(): void {
    this.alive = false;
    this.mounted = false;
    const w = this.mountWaiter;
    this.mountWaiter = undefined;
    w?.reject(new D4fsError('INTERNAL', `the FUSE connection of ${this.mountpoint} ended before it was initialised`));
    for (const [ino, h] of this.held) {
      h.ref?.release();
      this.held.delete(ino);
    }
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    for (const done of this.closedWaiters.splice(0)) done();
    this.log.debug('FUSE session ended');
  }

  private read(s: fuse3.Session, id: number, ino: number, size: number, pos: number): void {
    const n = this.tree.node(ino);
    if (!n) return void fuse3.replyErr(s, id, E.ENOENT);
    if (n.entry.type === FileType.DIR) return void fuse3.replyErr(s, id, E.EISDIR);
    if (n.entry.type !== FileType.REG) return void fuse3.replyErr(s, id, E.EINVAL);
    this.counters.reads++;
    const fileSize = n.entry.size;
    if (pos >= fileSize) return void fuse3.replyBuf(s, id, Buffer.alloc(0), 0);
    const len = Math.min(size, fileSize - pos);
    const h = this.hold(n);
    h.busy++;
    let timer: NodeJS.Timeout | undefined;
    let late = false;
    if (!h.ref?.complete) {
      // Building may take long: answer ETIMEDOUT past the deadline (the binding refuses the late answer).
      const ms = h.ref ? this.timeouts.readMs : Math.max(this.timeouts.openMs, this.timeouts.readMs);
      timer = setTimeout(() => {
        late = true;
        this.counters.errors++;
        this.log.error({ ino, path: `/${n.entry.path}`, pos, len, ms }, 'read timed out while the content was being built');
        fuse3.replyErr(s, id, E.ETIMEDOUT);
      }, ms);
    }
    const run = async (): Promise<number> => {
      const ref = h.ref ?? (await h.pending!);
      if (!ref.complete) await ref.prepare(pos, len);
      if (late) return -1;
      // bytes held in memory (small contents): answered from
      // there, no copy; replyBuf hands them to the kernel before it returns
      const view = ref.view?.(pos, len);
      if (view) {
        fuse3.replyBuf(s, id, view, view.length);
        return view.length;
      }
      const buf = this.readBuffer(len);
      try {
        const got = await ref.readInto(buf, len, pos);
        if (!late) fuse3.replyBuf(s, id, buf, got);
        return got;
      } finally {
        this.giveBack(buf);
      }
    };
    run()
      .catch((e: unknown) => {
        if (late) return;
        this.fail(n, pos, e);
        fuse3.replyErr(s, id, E.EIO);
      })
      .finally(() => {
        clearTimeout(timer);
        h.busy--;
        h.lastUse = Date.now();
      });
  }

  /**
   * A buffer of at least `len` bytes for a read (given back after its reply): reads reuse a
   * few buffers instead of allocating one each. Each allocation counts against V8's external
   * memory, and 256 MiB of them for one sequential read set off major collections that mark
   * the whole heap (the tree of a 151k-entry image) in V8's threads: ~0.8 s of CPU (perf).
   */
  private readBuffer(len: number): Buffer {
    const b = this.freeBuffers.pop();
    if (b && b.length >= len) return b.subarray(0, len);
    return Buffer.allocUnsafeSlow(Math.max(len, READ_BUFFER_MIN)).subarray(0, len);
  }

  private giveBack(b: Buffer): void {
    // the whole buffer readBuffer made (its own ArrayBuffer, from offset 0)
    const whole = Buffer.from(b.buffer, 0, b.buffer.byteLength);
    if (this.freeBuffers.length < READ_BUFFERS_KEPT) this.freeBuffers.push(whole);
  }

  private readonly freeBuffers: Buffer[] = [];

  /** The held reference to `n`'s content (acquired on first use; released HOLD_MS after the last). */
  private hold(n: TreeNode): Held {
    const h = this.held.get(n.ino);
    if (h) {
      h.lastUse = Date.now();
      return h;
    }
    const held: Held = { lastUse: Date.now(), busy: 0 };
    const hex = n.entry.digest.toString('hex');
    this.noteRead(n.entry.path, hex);
    held.pending = this.cache.acquire(hex, n.entry.size, this.chain).then(
      (ref) => {
        held.pending = undefined;
        if (this.held.get(n.ino) !== held) {
          // Let go meanwhile (the session ended): do not keep it.
          ref.release();
          return ref;
        }
        held.ref = ref;
        return ref;
      },
      (e: unknown) => {
        // Not kept: the next read tries again.
        if (this.held.get(n.ino) === held) this.held.delete(n.ino);
        throw e;
      },
    );
    held.pending.catch(() => undefined);
    this.held.set(n.ino, held);
    if (this.held.size > MAX_HELD) this.sweep(true);
    this.sweeper ??= setInterval(() => this.sweep(), HOLD_MS / 2);
    this.sweeper.unref();
    return held;
  }

  /** Releases every held content no read is using. */
  private releaseIdle(): void {
    for (const [ino, h] of this.held) {
      if (h.busy > 0 || h.pending) continue;
      this.held.delete(ino);
      h.ref?.release();
    }
  }

  /** Releases contents nobody read for HOLD_MS (`full`: every idle one, oldest first, down to half the bound). */
  private sweep(full = false): void {
    const old = Date.now() - HOLD_MS;
    for (const [ino, h] of this.held) {
      if (h.busy > 0 || h.pending || h.lastUse > old) continue;
      this.held.delete(ino);
      h.ref?.release();
    }
    if (full && this.held.size > MAX_HELD / 2) {
      const idle = [...this.held].filter(([, h]) => h.busy === 0 && !h.pending).sort((a, b) => a[1].lastUse - b[1].lastUse);
      for (const [ino, h] of idle.slice(0, this.held.size - MAX_HELD / 2)) {
        this.held.delete(ino);
        h.ref?.release();
      }
    }
    if (this.held.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  private fail(n: TreeNode, pos: number, e: unknown): void {
    this.counters.errors++;
    const err = toD4fsError(e);
    this.log.error({ op: 'read', path: `/${n.entry.path}`, pos, digest: n.entry.digest.toString('hex'), kind: err.kind, err: err.message }, 'read failed: EIO');
  }
}
