/**
 * Disk usage of a directory tree, counted like containerd (continuity's
 * fs.DiskUsage): every distinct inode once, size as allocated blocks × 512.
 */
import type { BigIntStats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Usage } from './types';

/** Bytes per st_blocks unit. */
const BLOCK_UNIT = 512n;

/**
 * Walks `root` (without following symlinks) and returns its usage. The root
 * itself counts as one inode. Rejects with the signal's reason when aborted.
 */
export async function diskUsage(root: string, signal?: AbortSignal): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0n;
  const visit = async (p: string): Promise<void> => {
    signal?.throwIfAborted();
    let st: BigIntStats;
    try {
      st = await fs.lstat(p, { bigint: true });
    } catch (e) {
      // A file deleted while we walk (a running container) is simply not counted.
      if (p !== root && (e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    const key = `${st.dev}:${st.ino}`;
    if (!seen.has(key)) {
      seen.add(key);
      size += st.blocks * BLOCK_UNIT;
    }
    if (st.isDirectory()) {
      let names: string[];
      try {
        names = await fs.readdir(p);
      } catch (e) {
        if (p !== root && (e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      for (const name of names) await visit(path.join(p, name));
    }
  };
  await visit(root);
  return { inodes: seen.size, size: Number(size) };
}
