/**
 * What is mounted below a directory (the mount table as src/util/mountinfo
 * reads it) and unmounting, for the safety checks of the snapshot core: a
 * snapshot directory is never deleted while something is still mounted
 * inside it (a recursive delete would descend into the mount).
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { isAtOrBelow, readMountInfo } from '../util/mountinfo';

const execFileP = promisify(execFile);

/** Mount points equal to `dir` or below it, deepest (last mounted) first. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const base = path.resolve(dir);
  return (await readMountInfo())
    .map((m) => m.mountpoint)
    .filter((m) => isAtOrBelow(m, base))
    .reverse();
}

/** Unmounts `target` (`umount`, lazily with `lazy`); rejects with umount's message. */
export async function unmount(target: string, opts: { lazy?: boolean } = {}): Promise<void> {
  const args = opts.lazy ? ['-l', target] : [target];
  try {
    await execFileP('umount', args, { timeout: 30_000 });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`umount ${args.join(' ')}: ${(err.stderr ?? '').trim() || err.message}`);
  }
}
