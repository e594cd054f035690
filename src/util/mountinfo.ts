/**
 * The one reader of /proc/self/mountinfo: the FUSE layer (its own mounts by
 * filesystem type), the snapshot core (what is still mounted below a
 * snapshot directory) and the tests all parse it here.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

const MOUNTINFO = '/proc/self/mountinfo';

/** One line of mountinfo. */
export interface MountInfo {
  mountId: number;
  /** "major:minor" of the filesystem (for FUSE, minor is the connection number). */
  device: string;
  mountpoint: string;
  /** Per-mount options ("ro,nosuid,…"). */
  mountOptions: string;
  fstype: string;
  source: string;
  /** Per-superblock options (for FUSE: "rw,user_id=0,…,allow_other"). */
  superOptions: string;
}

/** Decodes the octal escapes (\040 for space, ...) the kernel uses in mountinfo and /proc/mounts fields. */
export function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** The mounts listed in a mountinfo text, in mount order (lines without the " - " separator are skipped). */
export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const a = line.slice(0, sep).split(' ');
    const b = line.slice(sep + 3).split(' ');
    if (a.length < 5) continue;
    out.push({
      mountId: Number(a[0]),
      device: a[2],
      mountpoint: unescapeMountField(a[4]),
      mountOptions: a[5] ?? '',
      fstype: b[0],
      source: unescapeMountField(b[1] ?? ''),
      superOptions: b[2] ?? '',
    });
  }
  return out;
}

/** Every mount of this process's mount namespace, in mount order. */
export async function readMountInfo(): Promise<MountInfo[]> {
  return parseMountInfo(await readFile(MOUNTINFO, 'utf8'));
}

/** {@link readMountInfo}, synchronously (for process-exit paths and tests). */
export function readMountInfoSync(): MountInfo[] {
  return parseMountInfo(readFileSync(MOUNTINFO, 'utf8'));
}

/** Whether `mountpoint` is `base` or below it (`base` absolute and resolved). */
export function isAtOrBelow(mountpoint: string, base: string): boolean {
  const prefix = base.endsWith('/') ? base : `${base}/`;
  return mountpoint === base || mountpoint.startsWith(prefix);
}
