/**
 * `ctr-cli cdimg unpack`: write the whole tree of a full .cdimg into a
 * directory with all metadata (owner, mode incl. setuid/setgid/sticky,
 * mtimes, xattrs, hard links, devices, FIFOs). The reference for fidelity
 * tests. Every content is verified before it is written.
 */
import { promises as fsp, constants as FS } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { set as setAttribute } from 'fs-xattr';
import { CdimgReader } from '../format/reader';
import { FORMAT_TASKS } from '../format/tasks';
import { Codec, Entry, FileType, Encoding } from '../format/types';
import { WorkerPool } from '../workers/pool';
import { alreadyExists, corrupt, failedPrecondition, permissionDenied } from '../errors';

const run = promisify(execFile);

export interface UnpackResult {
  entries: number;
  files: number;
  bytes: number;
  warnings: string[];
  seconds: number;
}

export interface UnpackOptions {
  pool?: WorkerPool;
  threads?: number;
  /** Do not create device nodes (unpacking an untrusted image). */
  noDevices?: boolean;
  /** Clear setuid/setgid bits on files and drop security.capability xattrs (unpacking an untrusted image). */
  noSetuid?: boolean;
}

const myUid = (): number => process.getuid?.() ?? 0;

/**
 * A directory nobody else can change under us: owned by us or root, and not
 * writable by others unless sticky (as /tmp), so no one can swap a path
 * component for a symlink while we write.
 */
async function checkSafeDir(dir: string, what: string): Promise<void> {
  const st = await fsp.lstat(dir);
  if (!st.isDirectory()) throw failedPrecondition(`${what} ${dir} is not a directory (symlinks are not followed)`);
  if (st.uid !== myUid() && st.uid !== 0) throw permissionDenied(`${what} ${dir} belongs to uid ${st.uid}, not to you: unpack only into directories you own`);
  if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) throw permissionDenied(`${what} ${dir} is writable by other users and not sticky: someone could swap paths under the unpack`);
}

/**
 * Where the tree is written first: a new 0700 directory beside the
 * destination, renamed onto it when complete (a failed unpack leaves nothing).
 * The destination must be new, or an empty directory owned by the caller.
 */
async function prepareDest(dest: string): Promise<{ tmp: string; replaceEmpty: boolean }> {
  const parent = dirname(resolve(dest));
  try {
    await checkSafeDir(parent, 'the parent directory');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw failedPrecondition(`${parent} does not exist: create it first`);
    throw e;
  }
  let replaceEmpty = false;
  const st = await fsp.lstat(dest).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (st) {
    if (!st.isDirectory()) throw alreadyExists(`${dest} exists and is not a directory: unpack writes into an empty or new directory`);
    if (st.uid !== myUid()) throw permissionDenied(`${dest} belongs to uid ${st.uid}, not to you: unpack only into a new directory or an empty one you own`);
    if ((await fsp.readdir(dest)).length > 0) throw alreadyExists(`${dest} is not empty: unpack writes into an empty or new directory`);
    replaceEmpty = true;
  }
  const tmp = await fsp.mkdtemp(join(parent, `.${basename(dest)}.unpack-`));
  return { tmp, replaceEmpty };
}

async function writeContent(reader: CdimgReader, pool: WorkerPool, e: Entry, target: string): Promise<number> {
  const b = reader.blob(e.digest);
  if (!b || b.encoding !== Encoding.FULL) throw corrupt(`content of ${e.path} is not stored in full`);
  const fh = await fsp.open(target, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
  try {
    let pos = 0;
    for (const c of b.chunks) {
      // a member of a solid group: its group is decoded once here and kept for its neighbours (format/group.ts)
      const raw =
        c.codec === Codec.GROUP
          ? await reader.readFullChunk(c)
          : await pool.run(FORMAT_TASKS, 'decodeChunk', { stored: await reader.readStored(c), rawSize: c.rawSize, rawDigest: c.rawDigest.toString('hex') });
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

/** What the phases of one unpack share: where each entry goes, the options, whether we are root, the warnings so far. */
interface UnpackCtx {
  /** The temporary root being filled. */
  root: string;
  /** Where an entry goes below `root`. */
  at: (e: Entry) => string;
  opts: UnpackOptions;
  isRoot: boolean;
  warnings: string[];
}

/** Write the regular files' contents, several at a time. */
async function writeRegularFiles(reader: CdimgReader, pool: WorkerPool, entries: Entry[], at: (e: Entry) => string): Promise<{ files: number; bytes: number }> {
  let bytes = 0;
  let files = 0;
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
  return { files, bytes };
}

/** Make the hard links, symlinks, FIFOs and (as root, unless --no-devices) devices. */
async function makeLinksAndSpecials(entries: Entry[], c: UnpackCtx): Promise<void> {
  for (const e of entries) {
    switch (e.type) {
      case FileType.HARDLINK:
        await fsp.link(join(c.root, e.linkTarget), c.at(e));
        break;
      case FileType.SYMLINK:
        await fsp.symlink(e.linkTarget, c.at(e));
        break;
      case FileType.FIFO:
        await run('mkfifo', ['-m', '600', c.at(e)]);
        break;
      case FileType.CHAR:
      case FileType.BLOCK:
        if (c.opts.noDevices) {
          c.warnings.push(`skipped device ${e.path} (--no-devices)`);
          continue;
        }
        if (!c.isRoot) {
          c.warnings.push(`skipped device ${e.path}: creating devices needs root`);
          continue;
        }
        await run('mknod', ['-m', '600', c.at(e), e.type === FileType.CHAR ? 'c' : 'b', String(e.devMajor), String(e.devMinor)]);
        break;
      default:
        break;
    }
  }
}

/**
 * Set one entry's metadata: owner before mode (chown clears setuid), xattrs,
 * then times. Returns how many setuid/setgid bits or capabilities it dropped
 * (--no-setuid).
 */
async function setMeta(e: Entry, c: UnpackCtx): Promise<number> {
  const { opts, isRoot, warnings } = c;
  let stripped = 0;
  const p = c.at(e);
  // The destination itself stays the caller's, and never writable by others.
  const isDest = e.path === '';
  if (isRoot && !isDest) await fsp.lchown(p, e.uid, e.gid);
  else if (!isDest && e.uid !== process.getuid?.()) warnings.push(`${e.path}: owner ${e.uid}:${e.gid} not set (needs root)`);
  let mode = isDest ? e.mode & 0o755 : e.mode;
  if (opts.noSetuid && e.type === FileType.REG && (mode & 0o6000) !== 0) {
    mode &= ~0o6000;
    stripped++;
  }
  if (e.type !== FileType.SYMLINK) await fsp.chmod(p, mode);
  if (e.type !== FileType.SYMLINK) {
    for (const x of e.xattrs) {
      if (opts.noSetuid && x.name === 'security.capability') {
        stripped++;
        continue;
      }
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
  return stripped;
}

/** Set every entry's metadata, directories last, deepest first; warns of what --no-setuid dropped. */
async function setAllMeta(entries: Entry[], c: UnpackCtx): Promise<void> {
  let stripped = 0;
  // Hard links share their target's inode; devices exist only when created as root.
  const skipMeta = (e: Entry): boolean =>
    e.type === FileType.DIR || e.type === FileType.HARDLINK || ((e.type === FileType.CHAR || e.type === FileType.BLOCK) && (!c.isRoot || !!c.opts.noDevices));
  for (const e of entries) if (!skipMeta(e)) stripped += await setMeta(e, c);
  for (let i = entries.length - 1; i >= 0; i--) if (entries[i].type === FileType.DIR) stripped += await setMeta(entries[i], c);
  if (stripped) c.warnings.push(`${stripped} setuid/setgid bits or file capabilities dropped (--no-setuid)`);
}

export async function unpackImage(cdimg: string, dest: string, opts: UnpackOptions = {}): Promise<UnpackResult> {
  const t0 = process.hrtime.bigint();
  const reader = await CdimgReader.open(cdimg);
  const pool = opts.pool ?? new WorkerPool(opts.threads);
  const warnings: string[] = [];
  const isRoot = process.getuid?.() === 0;
  let tmp: string | undefined;
  try {
    if (reader.isDelta) throw failedPrecondition(`${cdimg} is a delta (parent ${reader.parentId}); apply it to its base with \`ctr-cli cdimg patch\` first`);
    const prepared = await prepareDest(dest);
    tmp = prepared.tmp;
    const root = tmp;
    const entries = reader.index.entries;
    // Every path is below our own 0700 directory and made by us from a
    // validated tree (parents are directories listed earlier, no "..", no
    // duplicates), so no component of it can be a symlink.
    const at = (e: Entry): string => (e.path === '' ? root : join(root, e.path));
    const c: UnpackCtx = { root, at, opts, isRoot, warnings };
    // 1. directories, in order (parents first)
    for (const e of entries) if (e.type === FileType.DIR && e.path !== '') await fsp.mkdir(at(e), { mode: 0o700 });
    // 2. regular files, several at a time
    const { files, bytes } = await writeRegularFiles(reader, pool, entries, at);
    // 3. links and special files
    await makeLinksAndSpecials(entries, c);
    // 4. metadata: owner before mode (chown clears setuid), xattrs, then times; directories last, deepest first
    await setAllMeta(entries, c);
    if (prepared.replaceEmpty) await fsp.rmdir(dest);
    await fsp.rename(tmp, dest);
    tmp = undefined;
    return { entries: entries.length, files, bytes, warnings, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  } finally {
    await reader.close();
    if (!opts.pool) await pool.close();
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
  }
}

