/**
 * The FUSE manager's protocol: JSON over HTTP/1.1 on a unix socket.
 *
 *     GET  /v1/ping                       → PingReply (answered only once the manager is ready)
 *     POST /v1/mount    MountRequest      → MountRecord (idempotent)
 *     POST /v1/unmount  {mountpoint}      → {} (also when nothing was mounted)
 *     POST /v1/check    {mountpoint}      → CheckReply, or 404/503
 *     GET  /v1/list                       → {mounts: MountRecord[]}
 *     GET  /v1/stats                      → StatsReply
 *     POST /v1/shutdown {forget?}         → {} then exits, unmounting everything
 *
 * Errors are {error: {kind, message}} with the HTTP status of the kind
 * (errors/index.ts), so both sides speak D4fsError.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { ErrorKind } from '../errors';
import { MAX_SOCKET_PATH, RUN_DIR } from '../snapshotter/sockdir';
import type { FuseBindingName } from '../snapshotter/fuse-binding';
import type { CacheStats } from './cache';
import type { MountStats } from './imagefs';

export const PROTOCOL_VERSION = 1;

/**
 * Files of a manager under its root directory (which the manager keeps 0700:
 * its socket lives there). A socket path longer than a unix socket address
 * allows moves to a private directory of its own, named after the root,
 * under /run/d4fs (never to a shared directory such as /tmp, where anyone
 * could take the name first): see ../snapshotter/sockdir.ts.
 */
export function managerPaths(root: string): { socket: string; state: string; pid: string; cache: string; log: string } {
  let socket = path.join(root, 'manager.sock');
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
    socket = path.join(RUN_DIR, `fuse-${createHash('sha256').update(path.resolve(root)).digest('hex').slice(0, 16)}`, 'manager.sock');
  }
  return {
    socket,
    state: path.join(root, 'mounts.json'),
    pid: path.join(root, 'manager.pid'),
    cache: path.join(root, 'cache'),
    log: path.join(root, 'manager.log'),
  };
}

/** Mount the image `imageId`, rebuilt by `chain` (.cdimg paths, full image first), at `mountpoint`. */
export interface MountRequest {
  mountpoint: string;
  chain: string[];
  imageId: string;
  /**
   * Mount at once and open the chain meanwhile (requests wait for it; the
   * binding fuse3 only): the reply no longer waits for the index of a big
   * image. A check of the mount waits for it, and reports a chain that could
   * not be opened.
   */
  lazy?: boolean;
}

/** A mount the manager serves (and remounts after its own restart). */
export interface MountRecord extends MountRequest {
  mountedAt: string;
}

export interface PingReply {
  version: number;
  pid: number;
  startedAt: string;
  mounts: number;
  /** The FUSE binding serving the mounts (absent from managers before it was reported). */
  binding?: FuseBindingName;
}

export interface CheckReply {
  mountpoint: string;
  imageId: string;
  /** FUSE requests the kernel is waiting on (when fusectl is mounted). */
  waiting?: number;
}

/** What the prefetch of updates did (stats). */
export interface PrefetchStats {
  /** Contents built ahead of their first read. */
  built: number;
  bytes: number;
  failed: number;
  /** Contents queued and not done yet. */
  pending: number;
}

export interface StatsReply {
  cache: CacheStats;
  /** What the prefetch of updates did. */
  prefetch: PrefetchStats;
  mounts: (MountStats & { mountpoint: string; imageId: string })[];
  /** Unmounted filesystems still referenced (e.g. by an overlay) and served. */
  detached: number;
}

export interface ErrorReply {
  error: { kind: ErrorKind; message: string };
}

/** Checks the shape of a MountRequest received over the wire. */
export function isMountRequest(v: unknown): v is MountRequest {
  const r = v as MountRequest;
  return (
    !!r &&
    typeof r.mountpoint === 'string' &&
    typeof r.imageId === 'string' &&
    Array.isArray(r.chain) &&
    r.chain.length > 0 &&
    r.chain.every((p) => typeof p === 'string' && path.isAbsolute(p)) &&
    (r.lazy === undefined || typeof r.lazy === 'boolean')
  );
}
