/**
 * Reading the mount table and unmounting, for the safety checks of the
 * snapshot core: a snapshot directory is never deleted while something is
 * still mounted inside it (a recursive delete would descend into the mount).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Decodes the octal escapes (\040 for space, ...) the kernel uses in mountinfo paths. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Mount points of the calling process's mount namespace, in mount order. */
export async function mountPoints(): Promise<string[]> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    if (fields.length > 4) out.push(unescapeMountPath(fields[4]));
  }
  return out;
}

/** Mount points equal to `dir` or below it, deepest (last mounted) first. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const base = path.resolve(dir);
  const prefix = base.endsWith('/') ? base : `${base}/`;
  return (await mountPoints()).filter((m) => m === base || m.startsWith(prefix)).reverse();
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
