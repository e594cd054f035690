/**
 * The kernel's view of d4fs FUSE mounts, read from /proc/self/mountinfo, and
 * the cleaning of dead ones: a mount whose serving process died answers
 * ENOTCONN to everything until it is detached. Cleaning never stats the
 * mountpoint (that could hang on a live but stuck server): it aborts the
 * connection through fusectl when that is mounted (so no request can stay
 * blocked), then detaches the mount lazily without canonicalising its path.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { D4fsError } from '../errors';
import { type MountInfo, readMountInfo } from '../util/mountinfo';

/** Filesystem type of d4fs mounts ("fuse." + subtype, with either binding). */
export const D4FS_FSTYPE = 'fuse.d4fs';
const FUSECTL = '/sys/fs/fuse/connections';

/** d4fs mounts at exactly `mountpoint`, last mounted (topmost) last. */
export async function d4fsMountsAt(mountpoint: string): Promise<MountInfo[]> {
  const mp = path.resolve(mountpoint);
  return (await readMountInfo()).filter((m) => m.mountpoint === mp && m.fstype === D4FS_FSTYPE);
}

/** Every d4fs mount (any mountpoint). */
export async function allD4fsMounts(): Promise<MountInfo[]> {
  return (await readMountInfo()).filter((m) => m.fstype === D4FS_FSTYPE);
}

/** Aborts the FUSE connection of `m` through fusectl; false when fusectl is not available. */
export async function abortConnection(m: MountInfo): Promise<boolean> {
  const [major, minor] = m.device.split(':');
  if (major !== '0' || !minor) return false;
  try {
    await fsp.writeFile(path.join(FUSECTL, minor, 'abort'), '1');
    return true;
  } catch {
    return false;
  }
}

/**
 * Detaches every d4fs mount at `mountpoint` (all of them dead or unwanted):
 * abort the connection if fusectl allows, then `umount -l -c`, falling back
 * to `fusermount3 -u -z` (or libfuse2's `fusermount`). Resolves with the
 * number of mounts removed.
 */
export async function cleanDeadMounts(mountpoint: string, timeoutMs = 10_000): Promise<number> {
  let removed = 0;
  for (let round = 0; round < 16; round++) {
    const mounts = await d4fsMountsAt(mountpoint);
    if (mounts.length === 0) return removed;
    const top = mounts[mounts.length - 1];
    await abortConnection(top);
    try {
      await lazyUnmount(top.mountpoint, timeoutMs);
    } catch {
      await fusermountLazy(top.mountpoint, timeoutMs).catch(() => undefined);
    }
    removed++;
  }
  if ((await d4fsMountsAt(mountpoint)).length > 0) throw new Error(`cannot detach the d4fs mounts at ${mountpoint}`);
  return removed;
}

/** Runs a command with a deadline; rejects with its stderr. */
function run(file: string, args: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs }, (err, _out, stderr) => {
      if (err) reject(new D4fsError('INTERNAL', `${file} ${args.join(' ')}: ${String(stderr).trim() || err.message}`));
      else resolve();
    });
  });
}

/** `umount -l` without canonicalising the path (which would stat a dead mount). */
export function lazyUnmount(mountpoint: string, timeoutMs = 20_000): Promise<void> {
  return run('umount', ['-l', '-c', mountpoint], timeoutMs);
}

async function fusermountLazy(mountpoint: string, timeoutMs: number): Promise<void> {
  try {
    await run('fusermount3', ['-u', '-z', mountpoint], timeoutMs);
  } catch {
    await run('fusermount', ['-u', '-z', mountpoint], timeoutMs);
  }
}

/**
 * Kernel read-ahead of d4fs mounts (KiB). The kernel gives a FUSE mount the
 * default 128 KiB, so a sequential reader of a big file sends one 128 KiB
 * read request after another, each a round trip through the serving thread.
 * With 4 MiB, reads arrive as 1 MiB requests (libfuse's largest) and are
 * answered ahead of the reader: a 256 MiB file already in the content cache
 * read at 424 MB/s instead of 158 MB/s here (issue 18), and the build of its
 * chunks overlaps the reader's copies.
 */
export const READAHEAD_KB = 4096;

/**
 * Sets the read-ahead of the newest d4fs mount at `mountpoint` through its
 * backing device (`/sys/class/bdi/0:N/read_ahead_kb`; root only). Never
 * touches the mount itself. Resolves false (nothing changed) when it cannot.
 */
export async function setReadahead(mountpoint: string, kb = READAHEAD_KB): Promise<boolean> {
  const top = (await d4fsMountsAt(mountpoint).catch(() => [])).at(-1);
  if (!top || !/^\d+:\d+$/.test(top.device)) return false;
  try {
    await fsp.writeFile(path.join('/sys/class/bdi', top.device, 'read_ahead_kb'), String(kb));
    return true;
  } catch {
    return false;
  }
}
