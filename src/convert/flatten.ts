/**
 * Flatten image layers into one tree with OCI whiteout semantics:
 * `.wh.NAME` hides NAME from lower layers, `.wh..wh..opq` hides everything
 * lower in its directory; a whiteout never hides what its own layer adds.
 * Hard links (also across layers) share one inode; contents go to a
 * ContentSink and are named by their sha256.
 */
import { corrupt, hostile } from '../errors';
import { TarEntry, TarHeader } from '../tar';
import { Entry, FileType, Xattr } from '../format/types';
import { checkDeviceNumbers, checkLinkTarget, normalizeTarPath } from '../tree/paths';

export interface Meta {
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  mtimeSec: number;
  mtimeNsec: number;
  xattrs: Map<string, Buffer>;
}

interface Inode {
  meta: Meta;
  size: number;
  content: ContentRef;
  /** set when a hard link shares it: toEntries then remembers its first path */
  linked?: true;
}

/** A content handed to a sink; its digest may be filled in later (before toEntries). */
export interface ContentRef {
  /** sha256 hex of the content, once known */
  digest: string;
}

type Node =
  | { t: 'dir'; meta: Meta; children: Map<string, Node>; layer: number }
  | { t: 'reg'; inode: Inode; layer: number }
  | { t: 'symlink'; meta: Meta; target: string; layer: number }
  | { t: 'char' | 'block'; meta: Meta; major: number; minor: number; layer: number }
  | { t: 'fifo'; meta: Meta; layer: number };

type DirNode = Extract<Node, { t: 'dir' }>;

/** A content of the flattened tree, in order of first use. */
export interface TreeContent {
  /** sha256 hex */
  digest: string;
  size: number;
  /** the digest as bytes (shared with the entries that use it) */
  raw?: Buffer;
}

/** Where file contents go while flattening. */
export interface ContentSink {
  /** Consume the body; the returned ref's digest is set by the time the sink is flushed. */
  put(body: AsyncIterable<Buffer>, size: number): Promise<ContentRef>;
}

export interface FlattenLimits {
  maxEntries: number;
}

const WH = '.wh.';
const OPAQUE = '.wh..wh..opq';

/** The xattrs of every Meta without any (never mutated: Metas are shared). */
const NO_XATTRS: ReadonlyMap<string, Buffer> = new Map();
/** Entries without xattrs share this (frozen: the encoders only read it). */
const NO_XATTR_LIST = Object.freeze([]) as unknown as Xattr[];
const EMPTY = Buffer.alloc(0);

const IMPLICIT_META: Meta = Object.freeze({ mode: 0o755, uid: 0, gid: 0, uname: '', gname: '', mtimeSec: 0, mtimeNsec: 0, xattrs: NO_XATTRS as Map<string, Buffer> });

/**
 * Distinct Metas kept for sharing. Files of a layer mostly have the same
 * owner, mode and mtime: sharing one Meta (and no Map of xattrs per file)
 * saved ~300 bytes per entry (a Meta, its Map, two name strings) on the
 * 150k-file image of issue 18. Bounded: an image whose every file differs
 * costs a table no larger than this.
 */
const MAX_SHARED_METAS = 1 << 16;

export class TreeBuilder {
  private readonly root: DirNode = { t: 'dir', meta: IMPLICIT_META, children: new Map(), layer: -1 };
  private count = 0;
  /** shared Metas by their fields (see MAX_SHARED_METAS) */
  private readonly metas = new Map<string, Meta>();
  /** Counters for reports. */
  readonly stats = { entries: 0, whiteouts: 0, opaques: 0, hardlinks: 0 };

  constructor(private readonly sink: ContentSink, private readonly limits: FlattenLimits = { maxEntries: 5_000_000 }) {}

  /** Apply one layer's tar entries in order. */
  async applyLayer(entries: AsyncIterable<TarEntry>, layer: number, what: string): Promise<void> {
    for await (const e of entries) {
      this.stats.entries++;
      if (++this.count > this.limits.maxEntries) throw hostile(`${what}: more than ${this.limits.maxEntries} entries`);
      await this.applyEntry(e, layer, what);
    }
  }

  private async applyEntry(e: TarEntry, layer: number, what: string): Promise<void> {
    const h = e.header;
    const p = normalizeTarPath(h.name);
    const slash = p.lastIndexOf('/');
    const name = p.slice(slash + 1);
    const parentPath = slash < 0 ? '' : p.slice(0, slash);

    if (p === '') {
      if (h.type !== 'dir') throw corrupt(`${what}: the root of the layer is not a directory`);
      this.root.meta = this.metaOf(h);
      return;
    }
    if (name === OPAQUE) {
      this.stats.opaques++;
      const dir = this.ensureDir(parentPath, layer, what);
      pruneLower(dir, layer);
      return;
    }
    if (name.startsWith(WH)) {
      this.stats.whiteouts++;
      const victim = name.slice(WH.length);
      if (victim === '' || victim === '.' || victim === '..') throw hostile(`${what}: invalid whiteout "${h.name}"`);
      const dir = this.lookupDir(parentPath);
      const node = dir?.children.get(victim);
      if (dir && node && node.layer < layer) dir.children.delete(victim);
      return;
    }
    const parent = this.ensureDir(parentPath, layer, what);
    const existing = parent.children.get(name);
    switch (h.type) {
      case 'dir':
        if (existing && existing.t === 'dir') {
          existing.meta = this.metaOf(h);
          existing.layer = layer;
        } else {
          parent.children.set(name, { t: 'dir', meta: this.metaOf(h), children: new Map(), layer });
        }
        return;
      case 'file': {
        const content = await this.sink.put(e.body(), h.size);
        parent.children.set(name, { t: 'reg', inode: { meta: this.metaOf(h), size: h.size, content }, layer });
        return;
      }
      case 'link': {
        this.stats.hardlinks++;
        const targetPath = normalizeTarPath(h.linkname);
        if (targetPath === p) return;
        const target = this.lookup(targetPath);
        if (!target) throw corrupt(`${what}: hard link "${h.name}" points to "${h.linkname}", which does not exist`);
        if (target.t === 'dir') throw hostile(`${what}: hard link "${h.name}" points to a directory`);
        // Regular files share the inode; other types are copied.
        if (target.t === 'reg') target.inode.linked = true;
        parent.children.set(name, target.t === 'reg' ? { t: 'reg', inode: target.inode, layer } : { ...target, layer });
        return;
      }
      case 'symlink':
        if (!h.linkname) throw corrupt(`${what}: symlink "${h.name}" has an empty target`);
        checkLinkTarget(p, h.linkname);
        parent.children.set(name, { t: 'symlink', meta: this.metaOf(h), target: h.linkname, layer });
        return;
      case 'char':
      case 'block':
        checkDeviceNumbers(p, h.devmajor, h.devminor);
        parent.children.set(name, { t: h.type, meta: this.metaOf(h), major: h.devmajor, minor: h.devminor, layer });
        return;
      case 'fifo':
        parent.children.set(name, { t: 'fifo', meta: this.metaOf(h), layer });
        return;
    }
  }

  /** The Meta of a header: a shared one when an equal one without xattrs was seen (Metas are never mutated). */
  private metaOf(h: TarHeader): Meta {
    if (h.xattrs.size) return { mode: h.mode, uid: h.uid, gid: h.gid, uname: h.uname, gname: h.gname, mtimeSec: h.mtimeSec, mtimeNsec: h.mtimeNsec, xattrs: h.xattrs };
    const key = `${h.mode} ${h.uid} ${h.gid} ${h.mtimeSec} ${h.mtimeNsec} ${h.uname.length} ${h.uname}${h.gname}`;
    let m = this.metas.get(key);
    if (!m) {
      m = { mode: h.mode, uid: h.uid, gid: h.gid, uname: h.uname, gname: h.gname, mtimeSec: h.mtimeSec, mtimeNsec: h.mtimeNsec, xattrs: NO_XATTRS as Map<string, Buffer> };
      if (this.metas.size < MAX_SHARED_METAS) this.metas.set(key, m);
    }
    return m;
  }

  private lookup(p: string): Node | undefined {
    if (p === '') return this.root;
    let cur: Node = this.root;
    for (const c of p.split('/')) {
      if (cur.t !== 'dir') return undefined;
      const next: Node | undefined = cur.children.get(c);
      if (!next) return undefined;
      cur = next;
    }
    return cur;
  }

  private lookupDir(p: string): DirNode | undefined {
    const n = this.lookup(p);
    return n && n.t === 'dir' ? n : undefined;
  }

  /** Walk to a directory, creating missing parents; refuse to pass through symlinks or files. */
  private ensureDir(p: string, layer: number, what: string): DirNode {
    let cur: DirNode = this.root;
    if (p === '') return cur;
    let sofar = '';
    for (const c of p.split('/')) {
      sofar = sofar ? `${sofar}/${c}` : c;
      const next = cur.children.get(c);
      if (!next) {
        const d: DirNode = { t: 'dir', meta: IMPLICIT_META, children: new Map(), layer };
        cur.children.set(c, d);
        cur = d;
      } else if (next.t === 'dir') {
        cur = next;
      } else if (next.t === 'symlink') {
        throw hostile(`${what}: entry below "${sofar}" would be written through a symlink (to "${next.target}")`);
      } else {
        throw corrupt(`${what}: entry below "${sofar}", which is not a directory`);
      }
    }
    return cur;
  }

  /**
   * The flattened tree as index entries, depth first with children sorted by
   * name bytes; hard-link groups become one REG plus HARDLINK entries.
   * Also returns the content digests in order of first use.
   */
  toEntries(): { entries: Entry[]; contents: TreeContent[] } {
    const entries: Entry[] = [];
    const contents: TreeContent[] = [];
    /** each content's digest as bytes: one Buffer shared by its entries and its blob */
    const seenContent = new Map<string, Buffer>();
    /** first paths of the inodes hard links share (only those: a Map of every file cost ~50 bytes per entry) */
    const firstPathOfInode = new Map<Inode, string>();
    const visit = (node: Node, path: string): void => {
      switch (node.t) {
        case 'dir': {
          entries.push(entry(path, FileType.DIR, node.meta));
          const names = [...node.children.keys()].sort(compareBytes);
          for (const n of names) visit(node.children.get(n) as Node, path ? `${path}/${n}` : n);
          return;
        }
        case 'reg': {
          if (node.inode.linked) {
            const first = firstPathOfInode.get(node.inode);
            if (first !== undefined) {
              const e = entry(path, FileType.HARDLINK, node.inode.meta);
              e.linkTarget = first;
              entries.push(e);
              return;
            }
            firstPathOfInode.set(node.inode, path);
          }
          const digest = node.inode.content.digest;
          if (!digest) throw new Error(`content of ${path} was never hashed (sink not flushed)`);
          const e = entry(path, FileType.REG, node.inode.meta);
          e.size = node.inode.size;
          let raw = seenContent.get(digest);
          if (!raw) {
            raw = Buffer.from(digest, 'hex');
            seenContent.set(digest, raw);
            contents.push({ digest, size: node.inode.size, raw });
          }
          e.digest = raw;
          entries.push(e);
          return;
        }
        case 'symlink': {
          const e = entry(path, FileType.SYMLINK, node.meta);
          e.linkTarget = node.target;
          e.size = Buffer.byteLength(node.target);
          entries.push(e);
          return;
        }
        case 'char':
        case 'block': {
          const e = entry(path, node.t === 'char' ? FileType.CHAR : FileType.BLOCK, node.meta);
          e.devMajor = node.major;
          e.devMinor = node.minor;
          entries.push(e);
          return;
        }
        case 'fifo':
          entries.push(entry(path, FileType.FIFO, node.meta));
          return;
      }
    };
    visit(this.root, '');
    return { entries, contents };
  }
}

/** Remove what lower layers put under `dir`; keep (and descend into) what this layer put there. */
function pruneLower(dir: DirNode, layer: number): void {
  for (const [name, child] of [...dir.children]) {
    if (child.layer < layer) dir.children.delete(name);
    else if (child.t === 'dir') pruneLower(child, layer);
  }
}

/**
 * Order of the UTF-8 bytes of two names, without encoding them: UTF-16 code
 * units order names as their UTF-8 bytes do (code point order) except where a
 * surrogate meets a character above it in the BMP, which takes the encoding
 * path. Sorting the 151k names of issue 18's image with two Buffers per
 * comparison allocated ~2M Buffers (garbage the main thread's heap grew for).
 */
export function compareBytes(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    if ((x >= 0xd800 && x <= 0xdfff) || (y >= 0xd800 && y <= 0xdfff)) return Buffer.compare(Buffer.from(a), Buffer.from(b));
    return x - y;
  }
  return a.length - b.length;
}

function entry(path: string, type: FileType, m: Meta): Entry {
  const xattrs: Xattr[] = m.xattrs.size ? [...m.xattrs.keys()].sort(compareBytes).map((name) => ({ name, value: m.xattrs.get(name) as Buffer })) : NO_XATTR_LIST;
  return {
    path,
    type,
    mode: m.mode & 0o7777,
    uid: m.uid,
    gid: m.gid,
    mtimeSec: m.mtimeSec,
    mtimeNsec: m.mtimeNsec,
    size: 0,
    digest: EMPTY,
    linkTarget: '',
    devMajor: 0,
    devMinor: 0,
    xattrs,
    uname: m.uname,
    gname: m.gname,
  };
}
