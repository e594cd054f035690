/**
 * The read-only delta filesystem of one image, served by fuse-native
 * (libfuse2; the fallback binding, see ./binding.ts).
 *
 * Metadata comes from the in-memory tree (ImageTree) and is answered at once;
 * file contents come from the shared content cache, which materialises them
 * lazily (open builds a small content, a read of a large one builds the
 * chunks it touches) in worker threads. The serving thread never touches the
 * mountpoint itself and only reads cache files asynchronously.
 *
 * The mount is read-only (`ro`), served to every user (`allow_other`) with
 * the kernel checking permissions against the image's modes
 * (`default_permissions`); inode numbers are ours (`use_ino`), so hard links
 * share one; since images never change, the kernel keeps attributes, entries
 * and page cache (`kernel_cache`) for an hour. setuid and device files keep
 * their meaning (`suid`, `dev`), as in the image.
 *
 * A content that cannot be built (damaged or missing blob) gives EIO for that
 * file and a log line; everything else keeps being served.
 */
import Fuse from 'fuse-native';
import { D4fsError, toD4fsError } from '../errors';
import { FileType } from '../format/types';
import type { ContentRef } from './cache';
import { Errno } from './errno';
import { lazyUnmount, READAHEAD_KB, setReadahead } from './mounts';
import {
  type ImageFileSystem,
  ImageFileSystemBase,
  type ImageFileSystemOptions,
  KERNEL_CACHE_SECONDS,
  type MountStats,
} from './imagefs';

export { DEFAULT_OP_TIMEOUTS, type MountStats, type OpTimeouts } from './imagefs';
export type DeltaFileSystemOptions = ImageFileSystemOptions;

const O_ACCMODE = 0o3;
const O_WRITE_FLAGS = 0o1000 /* O_TRUNC */ | 0o100 /* O_CREAT */ | 0o2000; /* O_APPEND */

export class DeltaFileSystem extends ImageFileSystemBase implements ImageFileSystem {
  readonly binding = 'fuse-native' as const;
  private readonly handles = new Map<number, ContentRef>();
  private nextFd = 1;
  private fuse?: Fuse;
  private readonly counters = { opens: 0, reads: 0, errors: 0 };



  stats(): MountStats {
    return { binding: this.binding, ...this.counters, openFiles: this.handles.size };
  }

  /** Mounted, or detached with files still open. */
  serving(): boolean {
    return !!this.fuse || this.handles.size > 0;
  }

  /** Mounts the filesystem; resolves once the kernel has initialised the connection. */
  mount(timeoutMs = 30_000): Promise<void> {
    // this binding answers from the tree in its own callbacks: a lazy mount is mounted once the chain is open
    if (!this.isReady) return this.ready.then(() => this.mount(timeoutMs));
    if (this.fuse) return Promise.reject(new D4fsError('FAILED_PRECONDITION', `${this.mountpoint} is already mounted by this filesystem`));
    const fuse = new Fuse(this.mountpoint, this.ops(), {
      // fuse-native has no option for these; its fsname is passed on verbatim.
      fsname: `d4fs,use_ino,ro,suid,dev,negative_timeout=${KERNEL_CACHE_SECONDS}`,
      subtype: 'd4fs',
      allowOther: true,
      defaultPermissions: true,
      kernelCache: true,
      entryTimeout: KERNEL_CACHE_SECONDS,
      attrTimeout: KERNEL_CACHE_SECONDS,
      // Deadlines are ours (see open and read): fuse-native's would answer
      // while a read may still write into the request's buffer.
      timeout: false,
    });
    this.fuse = fuse;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        reject(new D4fsError('DEADLINE_EXCEEDED', `mounting ${this.mountpoint} did not complete within ${timeoutMs} ms`));
      }, timeoutMs);
      fuse.mount((err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          this.fuse = undefined;
          reject(new D4fsError('INTERNAL', `cannot mount ${this.mountpoint}: ${err.message}`, { cause: err }));
        } else {
          // larger kernel read-ahead before the first read (./mounts.ts READAHEAD_KB)
          void setReadahead(this.mountpoint).then((readahead) => {
            this.log.info({ imageId: this.imageId, entries: this.tree.totals.entries, readaheadKiB: readahead ? READAHEAD_KB : undefined }, 'mounted');
            resolve();
          });
        }
      });
    });
  }

  /**
   * Detaches the mount (lazily: an overlay that still uses it as a lower
   * directory keeps working, and this object keeps serving it).
   */
  async unmount(timeoutMs = 20_000): Promise<void> {
    const fuse = this.fuse;
    if (!fuse) return;
    this.fuse = undefined;
    const viaFuse = new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())));
    viaFuse.catch(() => undefined); // a late failure after the deadline is not news
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`fusermount -uz did not finish within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([viaFuse, deadline]);
    } catch (e) {
      this.log.warn({ err: e }, 'unmount through fuse-native failed; detaching with umount -l');
      await lazyUnmount(this.mountpoint, timeoutMs);
    } finally {
      clearTimeout(timer);
    }
    this.log.info('unmounted');
  }

  // -------------------------------------------------------------------------
  // Operations
  // -------------------------------------------------------------------------

  private ops(): Fuse.FuseOps {
    const tree = this.tree;
    const rofs = (...args: unknown[]) => (args[args.length - 1] as (c: number) => void)(Errno.EROFS);
    return {
      init: (cb) => cb(0),
      getattr: (path, cb) => {
        const n = tree.lookup(path);
        if (n) cb(0, tree.stat(n));
        else cb(Errno.ENOENT);
      },
      readdir: (path, cb) => {
        const l = tree.list(path);
        if (l) cb(0, l.names, l.stats);
        else cb(tree.lookup(path) ? Errno.ENOTDIR : Errno.ENOENT);
      },
      readlink: (path, cb) => {
        const n = tree.lookup(path);
        if (!n) cb(Errno.ENOENT);
        else if (n.entry.type !== FileType.SYMLINK) cb(Errno.EINVAL);
        else cb(0, n.entry.linkTarget);
      },
      getxattr: (path, name, _position, cb) => {
        const n = tree.lookup(path);
        if (!n) return cb(Errno.ENOENT);
        const v = n.xattrs.get(name);
        if (v) cb(0, v);
        else cb(Errno.ENODATA);
      },
      listxattr: (path, cb) => {
        const n = tree.lookup(path);
        if (n) cb(0, [...n.xattrs.keys()]);
        else cb(Errno.ENOENT);
      },
      statfs: (_path, cb) => cb(0, tree.statfs()),
      open: (path, flags, cb) => this.open(path, flags, cb),
      read: (path, fd, buf, len, pos, cb) => this.read(path, fd, buf, len, pos, cb),
      release: (_path, fd, cb) => {
        const ref = this.handles.get(fd);
        this.handles.delete(fd);
        ref?.release();
        cb(0);
      },
      write: (_p, _fd, _b, _l, _pos, cb) => cb(Errno.EROFS),
      create: (_p, _m, cb) => cb(Errno.EROFS),
      truncate: rofs,
      ftruncate: rofs,
      utimens: rofs,
      chown: rofs,
      chmod: rofs,
      mknod: rofs,
      setxattr: rofs,
      removexattr: rofs,
      unlink: rofs,
      rename: rofs,
      link: rofs,
      symlink: rofs,
      mkdir: rofs,
      rmdir: rofs,
    };
  }

  private open(path: string, flags: number, cb: (code: number, fd?: number) => void): void {
    const n = this.tree.lookup(path);
    if (!n) return cb(Errno.ENOENT);
    if ((flags & O_ACCMODE) !== 0 || (flags & O_WRITE_FLAGS) !== 0) return cb(Errno.EROFS);
    if (n.entry.type === FileType.DIR) return cb(Errno.EISDIR);
    this.counters.opens++;
    if (n.entry.type !== FileType.REG) return cb(0, 0);
    const hex = n.entry.digest.toString('hex');
    this.noteRead(n.entry.path, hex);
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      this.counters.errors++;
      this.log.error({ path, digest: hex, ms: this.timeouts.openMs }, 'open timed out while the content was being built');
      cb(Errno.ETIMEDOUT);
    }, this.timeouts.openMs);
    this.cache.acquire(hex, n.entry.size, this.chain).then(
      (ref) => {
        if (late) return ref.release();
        clearTimeout(timer);
        const fd = this.allocFd();
        this.handles.set(fd, ref);
        cb(0, fd);
      },
      (e: unknown) => {
        if (late) return;
        clearTimeout(timer);
        this.fail('open', path, hex, e);
        cb(Errno.EIO);
      },
    );
  }

  private read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void): void {
    const ref = this.handles.get(fd);
    if (!ref) return cb(Errno.EBADF);
    this.counters.reads++;
    const finish = (): void => {
      ref.readInto(buf, len, pos).then(cb, (e: unknown) => {
        this.fail('read', path, undefined, e);
        cb(Errno.EIO);
      });
    };
    if (ref.complete) return finish();
    // Building chunks may take long: answer ETIMEDOUT past the deadline. The
    // read into the kernel's buffer starts only while the request is alive.
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      this.counters.errors++;
      this.log.error({ path, pos, len, ms: this.timeouts.readMs }, 'read timed out while chunks were being built');
      cb(Errno.ETIMEDOUT);
    }, this.timeouts.readMs);
    ref.prepare(pos, len).then(
      () => {
        if (late) return;
        clearTimeout(timer);
        finish();
      },
      (e: unknown) => {
        if (late) return;
        clearTimeout(timer);
        this.fail('read', path, undefined, e);
        cb(Errno.EIO);
      },
    );
  }

  private allocFd(): number {
    // fuse-native carries handles as 32-bit numbers; 0 means "no handle".
    do {
      this.nextFd = this.nextFd >= 0x7fffffff ? 1 : this.nextFd + 1;
    } while (this.handles.has(this.nextFd));
    return this.nextFd;
  }

  private fail(op: string, path: string, digest: string | undefined, e: unknown): void {
    this.counters.errors++;
    const err = toD4fsError(e);
    this.log.error({ op, path, digest, kind: err.kind, err: err.message }, `${op} failed: EIO`);
  }
}
