/**
 * The in-memory directory tree a FUSE mount serves, built once from the
 * entries of the top .cdimg of a chain (which always describe the complete
 * flattened image).
 *
 * Inode numbers are stable: the entry's position in the index plus one (the
 * root, first in DFS order, is inode 1). A hard link shares the inode, and so
 * every attribute, of the regular file it names; that file's link count is
 * one plus the number of hard links to it. A directory's link count is two
 * plus its subdirectories, as on ext4.
 *
 * Memory is bounded by design (issue 18: a 150,000-entry image in a manager
 * of 256 MiB): the tree keeps the index's own Entry objects (not copies) and,
 * per inode, a few numbers in typed arrays (parent, link count, where its
 * children are listed); stats, xattr maps and nodes are made when asked for
 * (nothing per inode is cached: the kernel caches attributes itself).
 * Lookups by name use per-directory maps built on first use for directories
 * with many children, held in a bounded LRU (dropped ones are rebuilt), and
 * a scan of the children for small directories; there is no map of every
 * path. Measured on a synthetic index of 151,412 entries (test/fuse-memory
 * .test.ts): the tree adds ~20 bytes per entry to the entries themselves.
 */
import type Fuse from 'fuse-native';
import { corrupt } from '../errors';
import { type Entry, FileType } from '../format/types';

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

/** Directories with more children than this get a name → inode map on first lookup. */
const SCAN_MAX = 32;
/** Names the lookup maps of directories may hold together (least recently used dropped first). */
const CHILD_MAP_NAMES = 64 * 1024;
/** Stat records for the fuse3 binding made per allocation (see ImageTree.stat64). */
const STAT_SLAB = 512;

/** Linux's dev_t encoding (glibc gnu_dev_makedev), truncated to the 32 bits FUSE carries. */
export function makeDev(major: number, minor: number): number {
  const v = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12);
  return v >>> 0;
}

/**
 * One inode of the tree, made on demand (cheap; not kept). Hard links are
 * separate paths resolving to the same inode.
 */
export interface TreeNode {
  readonly ino: number;
  /** The entry holding the node's metadata (for hard links: the regular file they name). */
  readonly entry: Entry;
  /** True for a directory. */
  readonly isDir: boolean;
  /** Extended attributes by name (one shared empty map for the many inodes without any). */
  readonly xattrs: ReadonlyMap<string, Buffer>;
}

const NO_XATTRS: ReadonlyMap<string, Buffer> = new Map();

/**
 * Layout of the stat record the fuse3 binding takes (a Float64Array; every
 * field an exact integer): nanosecond times, our inode numbers.
 */
export const STAT_FIELDS = 15;

/** A read-only tree addressed by FUSE paths ("/", "/usr/bin/env") or by inode number. */
export class ImageTree {
  /** Slot (position + 1) → the directory inode holding it (the root's is itself). */
  private readonly parentOf: Int32Array;
  /** Inode → link count (0 for hard links' own slots). */
  private readonly nlink: Uint32Array;
  /** Hard link's own slot (its position + 1) → the inode it names; 0 for every other slot. */
  private readonly linkTo: Int32Array;
  /** Directory inode → [childStart[ino], childStart[ino + 1]) in `childSlots`. */
  private readonly childStart: Int32Array;
  /** Children of every directory, grouped by directory, each group in index order: slots (position + 1), hard links' own. */
  private readonly childSlots: Int32Array;
  /** Lookup maps of large directories (name → slot), least recently used first. */
  private readonly childMaps = new Map<number, Map<string, number>>();
  private childMapNames = 0;
  /** Where stat64 records are made (see stat64). */
  private slab = new Float64Array(0);
  private slabUsed = 0;
  /** Every extended attribute name some inode carries. */
  readonly xattrNames: string[];

  private constructor(
    private readonly entries: readonly Entry[],
    t: { parentOf: Int32Array; nlink: Uint32Array; linkTo: Int32Array; childStart: Int32Array; childSlots: Int32Array; xattrNames: string[] },
    /** Totals for statfs. */
    readonly totals: { entries: number; bytes: number },
  ) {
    this.parentOf = t.parentOf;
    this.nlink = t.nlink;
    this.linkTo = t.linkTo;
    this.childStart = t.childStart;
    this.childSlots = t.childSlots;
    this.xattrNames = t.xattrNames;
  }

  /** The node of inode `ino`, or undefined (hard links' own slots have none: they are their target's). */
  node(ino: number): TreeNode | undefined {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.entries.length || this.linkTo[ino] !== 0) return undefined;
    const entry = this.entries[ino - 1];
    return { ino, entry, isDir: entry.type === FileType.DIR, xattrs: entry.xattrs.length ? new Map(entry.xattrs.map((x) => [x.name, x.value])) : NO_XATTRS };
  }

  /** The inode a slot (position + 1) stands for: itself, or the file a hard link names. */
  private inoOf(slot: number): number {
    return this.linkTo[slot] || slot;
  }

  /** Number of children of directory `dir` (0 for other nodes). */
  childCount(dir: TreeNode): number {
    return dir.isDir ? this.childStart[dir.ino + 1] - this.childStart[dir.ino] : 0;
  }

  /** The child `name` of directory `dir`; undefined when absent (or `dir` is not a directory). */
  child(dir: TreeNode, name: string): TreeNode | undefined {
    const slot = this.childSlot(dir.ino, name);
    return slot ? this.node(this.inoOf(slot)) : undefined;
  }

  /** The slot of child `name` of directory inode `dir`, or 0. */
  private childSlot(dir: number, name: string): number {
    if (this.entries[dir - 1]?.type !== FileType.DIR || name === '' || name.includes('/')) return 0;
    const from = this.childStart[dir];
    const to = this.childStart[dir + 1];
    if (to - from <= SCAN_MAX) {
      // The children's paths are "<dir>/<name>" (or "<name>" under the root): compare their ends.
      const want = (dir === 1 ? 0 : this.entries[dir - 1].path.length + 1) + name.length;
      for (let i = from; i < to; i++) {
        const p = this.entries[this.childSlots[i] - 1].path;
        if (p.length === want && p.endsWith(name)) return this.childSlots[i];
      }
      return 0;
    }
    let m = this.childMaps.get(dir);
    if (m) {
      this.childMaps.delete(dir);
      this.childMaps.set(dir, m);
    } else {
      m = new Map();
      for (let i = from; i < to; i++) {
        const slot = this.childSlots[i];
        m.set(nameOf(this.entries[slot - 1].path), slot);
      }
      this.childMaps.set(dir, m);
      this.childMapNames += m.size;
      for (const [d, old] of this.childMaps) {
        if (this.childMapNames <= CHILD_MAP_NAMES || d === dir) break;
        this.childMaps.delete(d);
        this.childMapNames -= old.size;
      }
    }
    return m.get(name) ?? 0;
  }

  /** The parent of directory `dir` (the root's is itself). */
  parent(dir: TreeNode): TreeNode {
    return this.node(this.parentOf[dir.ino] || dir.ino) ?? dir;
  }

  /** What getattr and readdir report (fuse-native: times in ms, the precision it carries). */
  stat(node: TreeNode): FuseStat {
    const e = node.entry;
    const ms = e.mtimeSec * 1000 + Math.floor(e.mtimeNsec / 1e6);
    const size = sizeOf(e);
    return {
      mode: TYPE_BITS[e.type] | (e.mode & 0o7777),
      uid: e.uid,
      gid: e.gid,
      size,
      nlink: this.nlink[node.ino],
      ino: node.ino,
      rdev: rdevOf(e),
      blksize: BLOCK_SIZE,
      blocks: Math.ceil(size / 512),
      atime: ms,
      mtime: ms,
      ctime: ms,
    };
  }

  /**
   * The stat record of `node` for the fuse3 binding: ino, mode, nlink, uid,
   * gid, rdev, size, blocks, blksize, then atime, mtime, ctime as seconds and
   * nanoseconds (all the entry's mtime, as the image records one time).
   */
  stat64(node: TreeNode): Float64Array {
    // Views into shared slabs: one allocation per STAT_SLAB records, not one per record (a walk
    // of a big tree otherwise leaves the allocator with many small freed blocks).
    if (this.slabUsed + STAT_FIELDS > this.slab.length) {
      this.slab = new Float64Array(STAT_SLAB * STAT_FIELDS);
      this.slabUsed = 0;
    }
    const a = this.slab.subarray(this.slabUsed, this.slabUsed + STAT_FIELDS);
    this.slabUsed += STAT_FIELDS;
    this.fillStat64(node, a);
    return a;
  }

  private fillStat64(node: TreeNode, a: Float64Array): void {
    this.fillStatOf(node.ino, a, 0);
  }

  /** The stat record of inode `ino` (not a hard link's slot) into a[at .. at + STAT_FIELDS). */
  private fillStatOf(ino: number, a: Float64Array, at: number): void {
    const e = this.entries[ino - 1];
    const size = sizeOf(e);
    a[at] = ino;
    a[at + 1] = TYPE_BITS[e.type] | (e.mode & 0o7777);
    a[at + 2] = this.nlink[ino];
    a[at + 3] = e.uid;
    a[at + 4] = e.gid;
    a[at + 5] = rdevOf(e);
    a[at + 6] = size;
    a[at + 7] = Math.ceil(size / 512);
    a[at + 8] = BLOCK_SIZE;
    a[at + 9] = a[at + 11] = a[at + 13] = e.mtimeSec;
    a[at + 10] = a[at + 12] = a[at + 14] = e.mtimeNsec;
  }

  /** Children of directory `dir` in index order: name and node (hard links as their target's). */
  private children(dir: TreeNode): { name: string; node: TreeNode }[] {
    const out: { name: string; node: TreeNode }[] = [];
    if (!dir.isDir) return out;
    for (let i = this.childStart[dir.ino]; i < this.childStart[dir.ino + 1]; i++) {
      const slot = this.childSlots[i];
      const node = this.node(this.inoOf(slot));
      if (node) out.push({ name: nameOf(this.entries[slot - 1].path), node });
    }
    return out;
  }

  /**
   * The listing of directory `dir` encoded for the fuse3 binding's replyDir:
   * per entry ("." and ".." first) u32 record length, u32 name length, the
   * stat record, the name and a NUL, padded to 8 bytes.
   */
  encodeListing(dir: TreeNode): Buffer {
    // Straight from the typed arrays into one aligned buffer, no object per child: a cold walk of
    // the 151k-entry image encodes 1,516 listings (writeDoubleLE per field and a node per child
    // took about twice as long).
    const inos = [dir.ino, this.parent(dir).ino];
    const names = ['.', '..'];
    if (dir.isDir) {
      for (let i = this.childStart[dir.ino]; i < this.childStart[dir.ino + 1]; i++) {
        const slot = this.childSlots[i];
        const ino = this.inoOf(slot);
        if (ino < 1 || ino > this.entries.length || this.linkTo[ino] !== 0) continue;
        inos.push(ino);
        names.push(nameOf(this.entries[slot - 1].path));
      }
    }
    const head = 8 + 8 * STAT_FIELDS;
    const nameBytes = names.map((n) => Buffer.byteLength(n, 'utf8'));
    let total = 0;
    for (const n of nameBytes) total += (head + n + 1 + 7) & ~7;
    const ab = new ArrayBuffer(total); // zeroed: the names' NULs and the padding
    const out = Buffer.from(ab);
    const u32 = new Uint32Array(ab);
    const f64 = new Float64Array(ab);
    let off = 0;
    for (let k = 0; k < names.length; k++) {
      const rec = (head + nameBytes[k] + 1 + 7) & ~7;
      u32[off >> 2] = rec;
      u32[(off >> 2) + 1] = nameBytes[k];
      this.fillStatOf(inos[k], f64, (off >> 3) + 1);
      out.write(names[k], off + head, 'utf8');
      off += rec;
    }
    return out;
  }

  /** Builds the tree of an index's `entries` (already validated by the reader); keeps the array and its entries. */
  static fromIndex(index: { readonly entries: readonly Entry[] }): ImageTree {
    const entries = index.entries;
    const n = entries.length;
    if (n === 0 || entries[0].path !== '' || entries[0].type !== FileType.DIR) {
      throw corrupt('index has no root directory as its first entry');
    }
    // Directories by path (while building only), link targets, xattr names.
    const dirs = new Map<string, number>();
    const linksTo = new Map<string, number>();
    const names = new Set<string>();
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      const e = entries[i];
      if (e.type === FileType.DIR) dirs.set(e.path, i + 1);
      else if (e.type === FileType.HARDLINK) linksTo.set(e.linkTarget, 0);
      else if (e.type === FileType.REG) bytes += e.size;
      for (const x of e.xattrs) names.add(x.name);
    }
    const parentOf = new Int32Array(n + 1);
    const nlink = new Uint32Array(n + 1);
    const linkTo = new Int32Array(n + 1);
    const childStart = new Int32Array(n + 2);
    parentOf[1] = 1;
    // Parents, child counts, link counts.
    for (let i = 0; i < n; i++) {
      const e = entries[i];
      const slot = i + 1;
      if (e.type === FileType.DIR) nlink[slot] += 2;
      else if (e.type !== FileType.HARDLINK) nlink[slot] += 1;
      if (e.type === FileType.REG && linksTo.has(e.path)) linksTo.set(e.path, slot);
      if (i === 0) continue;
      const parent = dirs.get(parentPathOf(e.path));
      if (!parent) throw corrupt(`${e.path}: its parent directory is not in the index`);
      parentOf[slot] = parent;
      childStart[parent]++;
      if (e.type === FileType.DIR) nlink[parent]++;
    }
    for (let i = 0; i < n; i++) {
      const e = entries[i];
      if (e.type !== FileType.HARDLINK) continue;
      const target = linksTo.get(e.linkTarget) ?? 0;
      if (target === 0) {
        throw corrupt(`hard link ${e.path} names ${e.linkTarget}, which is not a regular file of the image`);
      }
      linkTo[i + 1] = target;
      nlink[target]++;
    }
    // Counts → start offsets; then every child in index order.
    let total = 0;
    for (let d = 0; d <= n + 1; d++) {
      const c = childStart[d];
      childStart[d] = total;
      total += c;
    }
    const childSlots = new Int32Array(Math.max(0, n - 1));
    const fill = childStart.slice(0, n + 1);
    for (let slot = 2; slot <= n; slot++) childSlots[fill[parentOf[slot]]++] = slot;
    return new ImageTree(entries, { parentOf, nlink, linkTo, childStart, childSlots, xattrNames: [...names].sort() }, { entries: n, bytes });
  }

  /** The node at a FUSE path ("/", "/usr/bin"), or undefined. */
  lookup(path: string): TreeNode | undefined {
    // Paths as the kernel passes them: absolute, no empty component, no trailing slash.
    if (!path.startsWith('/') || (path.length > 1 && path.endsWith('/'))) return undefined;
    let ino = 1;
    let from = 1;
    while (from < path.length) {
      let to = path.indexOf('/', from);
      if (to < 0) to = path.length;
      const slot = this.childSlot(ino, path.slice(from, to));
      if (!slot) return undefined;
      ino = this.inoOf(slot);
      from = to + 1;
    }
    return this.node(ino);
  }

  /** Names (with "." and "..") and their stats, for readdir. */
  list(path: string): { names: string[]; stats: FuseStat[] } | undefined {
    const dir = this.lookup(path);
    if (!dir?.isDir) return undefined;
    const names = ['.', '..'];
    const stats = [this.stat(dir), this.stat(this.parent(dir))];
    for (const c of this.children(dir)) {
      names.push(c.name);
      stats.push(this.stat(c.node));
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

function parentPathOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

function nameOf(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}

function sizeOf(e: Entry): number {
  if (e.type === FileType.REG) return e.size;
  if (e.type === FileType.SYMLINK) return Buffer.byteLength(e.linkTarget);
  if (e.type === FileType.DIR) return DIR_SIZE;
  return 0;
}

function rdevOf(e: Entry): number {
  return e.type === FileType.CHAR || e.type === FileType.BLOCK ? makeDev(e.devMajor, e.devMinor) : 0;
}
