/**
 * `ctr-cli cdimg unpack`: write the whole tree of a full .cdimg into a
 * directory with all metadata (owner, mode incl. setuid/setgid/sticky,
 * mtimes, xattrs, hard links, devices, FIFOs). The reference for fidelity
 * tests. Every content is verified before it is written.
 */
import { promises as fsp, constants as FS } from 'node:fs';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { set as setAttribute } from 'fs-xattr';
import { CdimgReader } from '../format/reader';
import { Entry, FileType, Encoding } from '../format/types';
import { WorkerPool } from '../workers/pool';
import { alreadyExists, corrupt, failedPrecondition } from '../errors';

const run = promisify(execFile);

export interface UnpackResult {
  entries: number;
  files: number;
  bytes: number;
  warnings: string[];
  seconds: number;
}

async function prepareDest(dest: string): Promise<void> {
  try {
    const names = await fsp.readdir(dest);
    if (names.length > 0) throw alreadyExists(`${dest} is not empty: unpack writes into an empty or new directory`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    await fsp.mkdir(dest, { recursive: true, mode: 0o700 });
  }
}

async function writeContent(reader: CdimgReader, pool: WorkerPool, e: Entry, target: string): Promise<number> {
  const b = reader.blob(e.digest);
  if (!b || b.encoding !== Encoding.FULL) throw corrupt(`content of ${e.path} is not stored in full`);
  const fh = await fsp.open(target, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
  try {
    let pos = 0;
    for (const c of b.chunks) {
      const stored = await reader.readStored(c);
      const raw = await pool.run('decodeChunk', { stored, rawSize: c.rawSize, rawDigest: c.rawDigest.toString('hex') });
      let w = 0;
      while (w < raw.length) {
        const { bytesWritten } = await fh.write(raw, w, raw.length - w, pos + w);
        w += bytesWritten;
      }
      pos += raw.length;
    }
    return pos;
  } finally {
    await fh.close();
  }
}

export async function unpackImage(cdimg: string, dest: string, opts: { pool?: WorkerPool; threads?: number } = {}): Promise<UnpackResult> {
  const t0 = process.hrtime.bigint();
  const reader = await CdimgReader.open(cdimg);
  const pool = opts.pool ?? new WorkerPool(opts.threads);
  const warnings: string[] = [];
  const isRoot = process.getuid?.() === 0;
  let bytes = 0;
  let files = 0;
  try {
    if (reader.isDelta) throw failedPrecondition(`${cdimg} is a delta (parent ${reader.parentId}); apply it to its base with \`ctr-cli cdimg patch\` first`);
    await prepareDest(dest);
    const entries = reader.index.entries;
    const at = (e: Entry): string => (e.path === '' ? dest : join(dest, e.path));
    // 1. directories, in order (parents first)
    for (const e of entries) if (e.type === FileType.DIR && e.path !== '') await fsp.mkdir(at(e), { mode: 0o700 });
    // 2. regular files, several at a time
    const regs = entries.filter((e) => e.type === FileType.REG);
    let next = 0;
    const workers = Array.from({ length: Math.max(1, pool.threads * 2) }, async () => {
      while (next < regs.length) {
        const e = regs[next++];
        const written = await writeContent(reader, pool, e, at(e)); // not `bytes += await …`: loops run concurrently
        bytes += written;
        files++;
      }
    });
    await Promise.all(workers);
    // 3. links and special files
    for (const e of entries) {
      switch (e.type) {
        case FileType.HARDLINK:
          await fsp.link(join(dest, e.linkTarget), at(e));
          break;
        case FileType.SYMLINK:
          await fsp.symlink(e.linkTarget, at(e));
          break;
        case FileType.FIFO:
          await run('mkfifo', ['-m', '600', at(e)]);
          break;
        case FileType.CHAR:
        case FileType.BLOCK:
          if (!isRoot) {
            warnings.push(`skipped device ${e.path}: creating devices needs root`);
            continue;
          }
          await run('mknod', ['-m', '600', at(e), e.type === FileType.CHAR ? 'c' : 'b', String(e.devMajor), String(e.devMinor)]);
          break;
        default:
          break;
      }
    }
    // 4. metadata: owner before mode (chown clears setuid), xattrs, then times; directories last, deepest first
    const setMeta = async (e: Entry): Promise<void> => {
      const p = at(e);
      if (isRoot) await fsp.lchown(p, e.uid, e.gid);
      else if (e.uid !== process.getuid?.()) warnings.push(`${e.path}: owner ${e.uid}:${e.gid} not set (needs root)`);
      if (e.type !== FileType.SYMLINK) await fsp.chmod(p, e.mode);
      if (e.type !== FileType.SYMLINK) {
        for (const x of e.xattrs) {
          try {
            await setAttribute(p, x.name, x.value);
          } catch (err) {
            warnings.push(`${e.path}: xattr ${x.name} not set (${(err as Error).message})`);
          }
        }
      } else if (e.xattrs.length) {
        warnings.push(`${e.path}: xattrs on symlinks are not set`);
      }
      if (e.mtimeNsec % 1000 === 0) {
        const t = e.mtimeSec + e.mtimeNsec / 1e9;
        await fsp.lutimes(p, t, t);
      } else {
        // Node's utimes keeps microseconds at best; touch sets nanoseconds.
        const stamp = `@${e.mtimeSec}.${String(e.mtimeNsec).padStart(9, '0')}`;
        await run('touch', ['-h', '-d', stamp, '--', p]);
      }
    };
    // Hard links share their target's inode; devices exist only when created as root.
    const skipMeta = (e: Entry): boolean =>
      e.type === FileType.DIR || e.type === FileType.HARDLINK || ((e.type === FileType.CHAR || e.type === FileType.BLOCK) && !isRoot);
    for (const e of entries) if (!skipMeta(e)) await setMeta(e);
    for (let i = entries.length - 1; i >= 0; i--) if (entries[i].type === FileType.DIR) await setMeta(entries[i]);
    return { entries: entries.length, files, bytes, warnings, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  } finally {
    await reader.close();
    if (!opts.pool) await pool.close();
  }
}

