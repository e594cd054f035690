/**
 * The in-memory directory tree a FUSE mount serves, built once from the
 * index of the top .cdimg of a chain (which always describes the complete
 * flattened image).
 *
 * Inode numbers are stable: the entry's position in the index plus one (the
 * root, first in DFS order, is inode 1). A hard link shares the inode, and so
 * every attribute, of the regular file it names; that file's link count is
 * one plus the number of hard links to it. A directory's link count is two
 * plus its subdirectories, as on ext4.
 */
import type Fuse from 'fuse-native';
import { corrupt } from '../errors';
import { type Entry, FileType, type Index } from '../format/types';

type FuseStat = Fuse.FuseStat;
type FuseStatfs = Fuse.FuseStatfs;

/** st_mode file-type bits by entry type. */
const TYPE_BITS: Record<FileType, number> = {
  [FileType.UNSPECIFIED]: 0,
  [FileType.REG]: 0o100000,
  [FileType.DIR]: 0o040000,
  [FileType.SYMLINK]: 0o120000,
  [FileType.HARDLINK]: 0o100000,
  [FileType.CHAR]: 0o020000,
  [FileType.BLOCK]: 0o060000,
  [FileType.FIFO]: 0o010000,
};

/** Size a directory reports (as ext4 does for small directories). */
const DIR_SIZE = 4096;
const BLOCK_SIZE = 4096;

/** Linux's dev_t encoding (glibc gnu_dev_makedev), truncated to the 32 bits FUSE carries. */
export function makeDev(major: number, minor: number): number {
  const v = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12);
  return v >>> 0;
}

/** One inode of the tree. Hard links are separate paths pointing at the same node. */
export interface TreeNode {
  readonly ino: number;
  /** The entry holding the node's metadata (for hard links: the regular file they name). */
  readonly entry: Entry;
  /** What getattr and readdir report. */
  readonly stat: FuseStat;
  /** Names of the children of a directory, in index order. */
  readonly children?: string[];
  /** Extended attributes by name. */
  readonly xattrs: ReadonlyMap<string, Buffer>;
}

/**
 * Layout of the stat record the fuse3 binding takes (a Float64Array; every
 * field an exact integer): nanosecond times, our inode numbers.
 */
export const STAT_FIELDS = 15;

/** A read-only tree addressed by FUSE paths ("/", "/usr/bin/env") or by inode number. */
export class ImageTree {
  /** Nodes by inode number (hard links' own index slots stay empty). */
  private readonly byIno: (TreeNode | undefined)[] = [];
  /** Parent directory of each directory, by inode (the root is its own parent). */
  private readonly parentOf = new Map<number, TreeNode>();
  /** Children by name of each directory, built on first lookup. */
  private readonly childMaps = new Map<number, Map<string, TreeNode>>();
  private readonly stats64 = new Map<number, Float64Array>();
  /** Every extended attribute name some inode carries. */
  readonly xattrNames: string[];

  private constructor(
    private readonly byPath: Map<string, TreeNode>,
    /** Totals for statfs. */
    readonly totals: { entries: number; bytes: number },
  ) {
    const names = new Set<string>();
    for (const [p, node] of byPath) {
      this.byIno[node.ino] = node;
      for (const n of node.xattrs.keys()) names.add(n);
      if (node.children) {
        const parent = p === '/' ? node : byPath.get(p.slice(0, p.lastIndexOf('/')) || '/');
        if (parent) this.parentOf.set(node.ino, parent);
      }
    }
    this.xattrNames = [...names].sort();
  }

  /** The node of inode `ino`, or undefined. */
  node(ino: number): TreeNode | undefined {
    return this.byIno[ino];
  }

  /** The child `name` of directory inode `dir`; undefined when absent (or `dir` is not a directory). */
  child(dir: TreeNode, name: string): TreeNode | undefined {
    if (!dir.children) return undefined;
    let m = this.childMaps.get(dir.ino);
    if (!m) {
      m = new Map();
      const prefix = this.pathOf(dir);
      for (const c of dir.children) {
        const n = this.byPath.get(prefix + c);
        if (n) m.set(c, n);
      }
      this.childMaps.set(dir.ino, m);
    }
    return m.get(name);
  }

  /** The parent of directory `dir` (the root's is itself). */
  parent(dir: TreeNode): TreeNode {
    return this.parentOf.get(dir.ino) ?? dir;
  }

  /** The FUSE path prefix of a directory's children ("/" or "/usr/"). */
  private pathOf(dir: TreeNode): string {
    return dir.entry.path === '' ? '/' : `/${dir.entry.path}/`;
  }

  /**
   * The stat record of `node` for the fuse3 binding: ino, mode, nlink, uid,
   * gid, rdev, size, blocks, blksize, then atime, mtime, ctime as seconds and
   * nanoseconds (all the entry's mtime, as the image records one time).
   */
  stat64(node: TreeNode): Float64Array {
    let a = this.stats64.get(node.ino);
    if (!a) {
      const s = node.stat;
      const e = node.entry;
      a = new Float64Array([s.ino, s.mode, s.nlink, s.uid, s.gid, s.rdev ?? 0, s.size, s.blocks ?? 0, s.blksize ?? BLOCK_SIZE,
        e.mtimeSec, e.mtimeNsec, e.mtimeSec, e.mtimeNsec, e.mtimeSec, e.mtimeNsec]);
      this.stats64.set(node.ino, a);
    }
    return a;
  }

  /**
   * The listing of directory `dir` encoded for the fuse3 binding's replyDir:
   * per entry ("." and ".." first) u32 record length, u32 name length, the
   * stat record, the name and a NUL, padded to 8 bytes.
   */
  encodeListing(dir: TreeNode): Buffer {
    const names = ['.', '..'];
    const nodes = [dir, this.parent(dir)];
    for (const c of dir.children ?? []) {
      const n = this.child(dir, c);
      if (!n) continue;
      names.push(c);
      nodes.push(n);
    }
    const head = 8 + 8 * STAT_FIELDS;
    const encoded = names.map((n) => Buffer.from(n, 'utf8'));
    const lens = encoded.map((b) => (head + b.length + 1 + 7) & ~7);
    const out = Buffer.alloc(lens.reduce((a, b) => a + b, 0));
    let off = 0;
    encoded.forEach((name, i) => {
      out.writeUInt32LE(lens[i], off);
      out.writeUInt32LE(name.length, off + 4);
      const st = this.stat64(nodes[i]);
      for (let f = 0; f < STAT_FIELDS; f++) out.writeDoubleLE(st[f], off + 8 + 8 * f);
      name.copy(out, off + head);
      off += lens[i];
    });
    return out;
  }

  /** Builds the tree of `index` (already validated by the reader). */
  static fromIndex(index: Index): ImageTree {
    const entries = index.entries;
    if (entries.length === 0 || entries[0].path !== '' || entries[0].type !== FileType.DIR) {
      throw corrupt('index has no root directory as its first entry');
    }
    // First pass: link counts.
    const linksTo = new Map<string, number>();
    const subdirs = new Map<string, number>();
    for (const e of entries) {
      if (e.type === FileType.HARDLINK) linksTo.set(e.linkTarget, (linksTo.get(e.linkTarget) ?? 0) + 1);
      if (e.type === FileType.DIR && e.path !== '') {
        const parent = parentOf(e.path);
        subdirs.set(parent, (subdirs.get(parent) ?? 0) + 1);
      }
    }

    const byPath = new Map<string, TreeNode>();
    const byEntryPath = new Map<string, TreeNode>();
    const hardlinks: { entry: Entry; index: number }[] = [];
    let bytes = 0;
    entries.forEach((e, i) => {
      if (e.type === FileType.HARDLINK) {
        hardlinks.push({ entry: e, index: i });
        return;
      }
      const nlink = e.type === FileType.DIR ? 2 + (subdirs.get(e.path) ?? 0) : 1 + (linksTo.get(e.path) ?? 0);
      const node: TreeNode = {
        ino: i + 1,
        entry: e,
        stat: statOf(e, i + 1, nlink),
        children: e.type === FileType.DIR ? [] : undefined,
        xattrs: new Map(e.xattrs.map((x) => [x.name, x.value])),
      };
      if (e.type === FileType.REG) bytes += e.size;
      byEntryPath.set(e.path, node);
      byPath.set(fusePath(e.path), node);
    });
    for (const { entry } of hardlinks) {
      const target = byEntryPath.get(entry.linkTarget);
      if (!target || target.entry.type !== FileType.REG) {
        throw corrupt(`hard link ${entry.path} names ${entry.linkTarget}, which is not a regular file of the image`);
      }
      byPath.set(fusePath(entry.path), target);
    }
    // Children lists, in index order (hard links included).
    for (const e of entries) {
      if (e.path === '') continue;
      const parent = byPath.get(fusePath(parentOf(e.path)));
      if (!parent?.children) throw corrupt(`${e.path}: its parent directory is not in the index`);
      parent.children.push(nameOf(e.path));
    }
    return new ImageTree(byPath, { entries: entries.length, bytes });
  }

  /** The node at a FUSE path, or undefined. */
  lookup(path: string): TreeNode | undefined {
    return this.byPath.get(path);
  }

  /** Names (with "." and "..") and their stats, for readdir. */
  list(path: string): { names: string[]; stats: FuseStat[] } | undefined {
    const dir = this.byPath.get(path);
    if (!dir?.children) return undefined;
    const parent = path === '/' ? dir : this.byPath.get(path.slice(0, path.lastIndexOf('/')) || '/') ?? dir;
    const names = ['.', '..'];
    const stats = [dir.stat, parent.stat];
    const prefix = path === '/' ? '/' : `${path}/`;
    for (const name of dir.children) {
      const child = this.byPath.get(prefix + name);
      if (!child) continue;
      names.push(name);
      stats.push(child.stat);
    }
    return { names, stats };
  }

  /** Filesystem statistics: a full, read-only filesystem the size of the image. */
  statfs(): FuseStatfs {
    const clamp = (n: number) => Math.min(0xffffffff, Math.max(0, Math.ceil(n)));
    return {
      bsize: BLOCK_SIZE,
      frsize: BLOCK_SIZE,
      blocks: clamp(this.totals.bytes / BLOCK_SIZE),
      bfree: 0,
      bavail: 0,
      files: clamp(this.totals.entries),
      ffree: 0,
      favail: 0,
      fsid: 0,
      flag: 1, // ST_RDONLY
      namemax: 255,
    };
  }
}

/** "usr/bin" → "/usr/bin", "" → "/". */
export function fusePath(indexPath: string): string {
  return `/${indexPath}`;
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

function nameOf(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}

/** The stat of an entry (times in ms: the precision fuse-native carries). */
function statOf(e: Entry, ino: number, nlink: number): FuseStat {
  const ms = e.mtimeSec * 1000 + Math.floor(e.mtimeNsec / 1e6);
  let size = 0;
  if (e.type === FileType.REG) size = e.size;
  else if (e.type === FileType.SYMLINK) size = Buffer.byteLength(e.linkTarget);
  else if (e.type === FileType.DIR) size = DIR_SIZE;
  const dev = e.type === FileType.CHAR || e.type === FileType.BLOCK;
  return {
    mode: TYPE_BITS[e.type] | (e.mode & 0o7777),
    uid: e.uid,
    gid: e.gid,
    size,
    nlink,
    ino,
    rdev: dev ? makeDev(e.devMajor, e.devMinor) : 0,
    blksize: BLOCK_SIZE,
    blocks: Math.ceil(size / 512),
    atime: ms,
    mtime: ms,
    ctime: ms,
  };
}
