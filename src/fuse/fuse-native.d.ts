/**
 * Type declarations for the parts of fuse-native 2.2.6 d4fs uses (the
 * package ships none). fuse-native binds libfuse 2's high-level, path-based
 * API and runs every operation on the JavaScript thread: each handler gets a
 * callback whose first argument is 0 or a negative errno (for read, the
 * number of bytes read; for open, 0 followed by the file handle number).
 *
 * Stat times are milliseconds (numbers or Dates): fuse-native's native side
 * carries them as milliseconds, so sub-millisecond precision is lost.
 */
declare module 'fuse-native' {
  namespace Fuse {
    /** What getattr and readdir report; fields absent are 0 (nlink 1). */
    interface FuseStat {
      mode: number;
      uid: number;
      gid: number;
      size: number;
      dev?: number;
      nlink: number;
      ino: number;
      rdev?: number;
      blksize?: number;
      blocks?: number;
      /** ms since the epoch */
      atime: number | Date;
      mtime: number | Date;
      ctime: number | Date;
    }

    interface FuseStatfs {
      bsize: number;
      frsize: number;
      blocks: number;
      bfree: number;
      bavail: number;
      files: number;
      ffree: number;
      favail: number;
      fsid: number;
      flag: number;
      namemax: number;
    }

    type Done = (code: number) => void;

    interface FuseOps {
      init?(cb: Done): void;
      statfs?(path: string, cb: (code: number, st?: FuseStatfs) => void): void;
      getattr?(path: string, cb: (code: number, st?: FuseStat) => void): void;
      readdir?(path: string, cb: (code: number, names?: string[], stats?: FuseStat[]) => void): void;
      readlink?(path: string, cb: (code: number, target?: string) => void): void;
      getxattr?(path: string, name: string, position: number, cb: (code: number, value?: Buffer | null) => void): void;
      listxattr?(path: string, cb: (code: number, names?: string[]) => void): void;
      open?(path: string, flags: number, cb: (code: number, fd?: number) => void): void;
      read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErrno: number) => void): void;
      release?(path: string, fd: number, cb: Done): void;
      access?(path: string, mode: number, cb: Done): void;
      write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErrno: number) => void): void;
      create?(path: string, mode: number, cb: (code: number, fd?: number) => void): void;
      truncate?(path: string, size: number, cb: Done): void;
      ftruncate?(path: string, fd: number, size: number, cb: Done): void;
      utimens?(path: string, atime: number, mtime: number, cb: Done): void;
      chown?(path: string, uid: number, gid: number, cb: Done): void;
      chmod?(path: string, mode: number, cb: Done): void;
      mknod?(path: string, mode: number, dev: number, cb: Done): void;
      setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Done): void;
      removexattr?(path: string, name: string, cb: Done): void;
      unlink?(path: string, cb: Done): void;
      rename?(src: string, dest: string, cb: Done): void;
      link?(src: string, dest: string, cb: Done): void;
      symlink?(src: string, dest: string, cb: Done): void;
      mkdir?(path: string, mode: number, cb: Done): void;
      rmdir?(path: string, cb: Done): void;
    }

    interface FuseOptions {
      /** Per-operation timeouts in ms (false: none); default 15 s for every op. */
      timeout?: number | false | ({ default?: number } & Record<string, number | false>);
      force?: boolean;
      mkdir?: boolean;
      debug?: boolean;
      allowOther?: boolean;
      allowRoot?: boolean;
      autoUnmount?: boolean;
      defaultPermissions?: boolean;
      maxRead?: number;
      fsname?: string;
      subtype?: string;
      kernelCache?: boolean;
      autoCache?: boolean;
      entryTimeout?: number;
      attrTimeout?: number;
      acAttrTimeout?: number;
    }
  }

  class Fuse {
    constructor(mountpoint: string, ops: Fuse.FuseOps, opts?: Fuse.FuseOptions);
    readonly mnt: string;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mountpoint: string, cb: (err: Error | null) => void): void;
    static isConfigured(cb: (err: Error | null, configured: boolean) => void): void;
  }

  export = Fuse;
}
