/**
 * Directories of the daemons' unix sockets (the snapshotter's gRPC socket,
 * the FUSE manager's). Whoever can write to the directory of a socket can
 * replace the socket with one of their own, and answer in the daemon's name
 * (a FUSE manager that claims every mount is healthy, a snapshotter that
 * hands containerd any mounts): a socket lives only in a directory that is
 * owned by the daemon's user and writable by nobody else.
 *
 * A missing directory is created 0700. An existing one that another user
 * owns, or that its group or others may write to, is refused with a clear
 * error (FAILED_PRECONDITION) rather than fixed: it was made by someone
 * else, and what it holds cannot be trusted. A symbolic link is followed
 * only when it belongs to the daemon's user too (an administrator's
 * /var/run → /run, not someone's trap in /tmp).
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { failedPrecondition } from '../errors';

/** Where sockets go whose natural place makes too long a path (sun_path holds 107 bytes). */
export const RUN_DIR = '/run/d4fs';

/** Longest unix socket path (sun_path is 108 bytes including the terminating NUL). */
export const MAX_SOCKET_PATH = 107;

function ownUid(): number {
  return typeof process.getuid === 'function' ? process.getuid() : 0;
}

const octal = (mode: number): string => `0${(mode & 0o7777).toString(8)}`;

/**
 * Throws FAILED_PRECONDITION unless `dir` is a directory owned by this
 * process's user that neither its group nor others can write to. Resolves
 * false when `dir` does not exist.
 */
export async function checkSocketDir(dir: string): Promise<boolean> {
  const uid = ownUid();
  let lst: fs.Stats;
  try {
    lst = await fsp.lstat(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  if (lst.isSymbolicLink() && lst.uid !== uid) {
    throw failedPrecondition(`socket directory ${dir} is a symbolic link owned by uid ${lst.uid}, not by this daemon (uid ${uid}): refusing to use it`);
  }
  let st: fs.Stats;
  try {
    st = await fsp.stat(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw failedPrecondition(`socket directory ${dir} is a dangling symbolic link: refusing to use it`);
    }
    throw e;
  }
  if (!st.isDirectory()) throw failedPrecondition(`socket directory ${dir} is not a directory`);
  if (st.uid !== uid) {
    throw failedPrecondition(
      `socket directory ${dir} is owned by uid ${st.uid}, not by this daemon (uid ${uid}): refusing to serve or use a socket there ` +
        `(remove it, or give it to uid ${uid} with mode 0700)`,
    );
  }
  if ((st.mode & 0o022) !== 0) {
    throw failedPrecondition(
      `socket directory ${dir} is writable by its group or by others (mode ${octal(st.mode)}): refusing to serve or use a socket there ` +
        `(chmod 700 ${dir})`,
    );
  }
  return true;
}

/**
 * Makes sure `dir` may hold a daemon's socket: creates it (and missing
 * parents) 0700, or checks an existing one (see checkSocketDir). With
 * `exclusive` (a directory the daemon owns alone, e.g. its state directory),
 * an existing directory that others may read or search is made 0700.
 */
export async function ensureSocketDir(dir: string, opts: { exclusive?: boolean } = {}): Promise<void> {
  const abs = path.resolve(dir);
  if (!(await checkSocketDir(abs))) {
    await fsp.mkdir(path.dirname(abs), { recursive: true, mode: 0o700 });
    try {
      await fsp.mkdir(abs, { mode: 0o700 });
      await fsp.chmod(abs, 0o700);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    // Made by us, or by someone else in between: checked either way.
    await checkSocketDir(abs);
  }
  if (opts.exclusive) {
    const st = await fsp.stat(abs);
    if ((st.mode & 0o077) !== 0) await fsp.chmod(abs, 0o700);
  }
}
