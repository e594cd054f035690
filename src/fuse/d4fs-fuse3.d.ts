/**
 * Types of d4fs's own libfuse3 binding (native/fuse3, package d4fs-fuse3).
 *
 * mount() starts a native thread that mounts and then receives requests;
 * each request reaches `handler` on the JavaScript thread as
 * (op, id, ino, a, b, name) and must be answered exactly once with one of the
 * reply functions (a second or late answer is refused: they return false).
 * Errno values are positive. Stat records are Float64Arrays in the layout of
 * ImageTree.stat64.
 */
declare module 'd4fs-fuse3' {
  export interface Session {
    readonly __d4fsFuse3Session: unique symbol;
  }
  export type Handler = (op: number, id: number, ino: number, a: number, b: number, name: string | undefined) => void;
  export interface NativeStats {
    lookup: number;
    forget: number;
    getattr: number;
    readlink: number;
    open: number;
    opendir: number;
    read: number;
    readdir: number;
    readdirplus: number;
    statfs: number;
    getxattr: number;
    getxattrFast: number;
    listxattr: number;
    flush: number;
    release: number;
    writeOps: number;
    access: number;
    /** readdir/readdirplus requests past the end of a kept listing, answered natively (counted in readdir/readdirplus too). */
    readdirEnd: number;
    /** Other readdir/readdirplus requests answered natively from a kept listing (counted in readdir/readdirplus too). */
    readdirNative: number;
    /** Lookups answered natively from the parent's kept listing (counted in lookup too). */
    lookupNative: number;
    /** Times the mount switched to sending files' attributes with listings (see native/fuse3 struct listing). */
    plusSwitch: number;
    /** Bytes of listings the binding keeps (bounded per session). */
    listingBytes: number;
    /** Requests JavaScript has not answered yet. */
    outstanding: number;
    /** The connection ended and the session is gone. */
    closed: boolean;
  }
  /** Mounts `mountpoint` with comma-separated `options`; timeouts in seconds; xattrNames: names some inode has (others get ENODATA without a round trip), or null. */
  export function mount(mountpoint: string, options: string, entryTimeout: number, attrTimeout: number, xattrNames: string[] | null, handler: Handler): Session;
  /** Stops serving: the loop ends, outstanding requests fail with EIO, the "closed" event follows. */
  export function close(s: Session): void;
  export function stats(s: Session): NativeStats;
  export function replyErr(s: Session, id: number, errno: number): boolean;
  export function replyEntry(s: Session, id: number, stat: Float64Array | null): boolean;
  export function replyAttr(s: Session, id: number, stat: Float64Array): boolean;
  export function replyBuf(s: Session, id: number, data: Uint8Array, length: number): boolean;
  export function replyReadlink(s: Session, id: number, target: Uint8Array): boolean;
  export function replyXattr(s: Session, id: number, value: Uint8Array, requestedSize: number): boolean;
  export function replyStatfs(s: Session, id: number, st: Float64Array): boolean;
  /**
   * Answers a readdir(plus) with entries of the whole encoded `listing` of directory `ino` from `offset`;
   * the binding keeps the listing and answers the rest of it, and lookups in the directory, natively.
   */
  export function replyDir(s: Session, id: number, listing: Uint8Array, offset: number, size: number, plus: boolean, ino: number): boolean;
  /** Hands the binding the encoded listing of directory `ino`: lookups in it are answered natively from then on; false when not kept. */
  export function keepListing(s: Session, ino: number, listing: Uint8Array): boolean;
  /** malloc_trim(0): the C heap's free memory back to the system; true when some was released. */
  export function trimMemory(): boolean;
  /** For a session mounted with xattrNames null: the names some inode has, from now on (once); false when not set. */
  export function setXattrNames(session: Session, names: string[]): boolean;
  export function fuseVersion(): number;
  export const EV: { readonly MOUNTED: 1; readonly INIT: 2; readonly CLOSED: 3 };
  export const RQ: {
    readonly LOOKUP: 10;
    readonly GETATTR: 11;
    readonly READLINK: 12;
    readonly READ: 13;
    readonly READDIR: 14;
    readonly READDIRPLUS: 15;
    readonly STATFS: 16;
    readonly GETXATTR: 17;
    readonly LISTXATTR: 18;
  };
}
