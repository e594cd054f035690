/**
 * The edit script of a format version 2 delta's tree (proto/cdimg.proto,
 * Index.edit): made against the parent's entries, applied to them (with
 * every entry's directory checked), composed along a chain without the
 * trees, and the check that a tree can be written as names under depths.
 */
import { corrupt, hostile } from '../errors';
import { MAX_PATH_BYTES } from '../tree/paths';
import { type Entry, FileType, type InsertedEntry, LIMITS, type TreeEdit } from './types';

export function depthOf(path: string): number {
  if (path === '') return 0;
  let d = 1;
  for (let i = 0; i < path.length; i++) if (path.charCodeAt(i) === 47) d++;
  return d;
}

export function baseName(path: string): string {
  const s = path.lastIndexOf('/');
  return s < 0 ? path : path.slice(s + 1);
}

function sameXattrs(a: Entry, b: Entry): boolean {
  if (a.xattrs.length !== b.xattrs.length) return false;
  for (let i = 0; i < a.xattrs.length; i++) if (a.xattrs[i].name !== b.xattrs[i].name || !a.xattrs[i].value.equals(b.xattrs[i].value)) return false;
  return true;
}

/** Whether two entries are the same in every field the image id covers. */
export function sameEntry(a: Entry, b: Entry): boolean {
  return (
    a.path === b.path && a.type === b.type && a.mode === b.mode && a.uid === b.uid && a.gid === b.gid && a.mtimeSec === b.mtimeSec && a.mtimeNsec === b.mtimeNsec &&
    a.size === b.size && a.digest.equals(b.digest) && a.linkTarget === b.linkTarget && a.devMajor === b.devMajor && a.devMinor === b.devMinor &&
    a.uname === b.uname && a.gname === b.gname && sameXattrs(a, b)
  );
}

/**
 * The edit script turning `parent` into `entries`: a walk over both, keeping
 * runs of equal entries. Works for any order; when both trees are in the
 * format's order (depth first, names sorted) it is the shortest script.
 * An inserted regular file whose content a regular file of the parent has
 * (the same path first, else the first with that digest: a file re-stamped,
 * moved or copied) names that entry (InsertedEntry.parentRef; written from
 * format version 4): its 32-byte digest is not stored again.
 */
export function editScript(parent: Entry[], entries: Entry[]): { ops: number[]; inserted: Entry[] } {
  const at = new Map<string, number>();
  for (let i = 0; i < parent.length; i++) at.set(parent[i].path, i);
  const script = new ScriptBuilder();
  const inserted: Entry[] = [];
  let cursor = 0;
  // inserted regular files whose content the parent's entry at their path does not have
  const unmatched: Entry[] = [];
  for (const e of entries) {
    const j = at.get(e.path);
    if (j !== undefined && j >= cursor && sameEntry(parent[j], e)) {
      if (j > cursor) script.drop(j - cursor);
      script.keep(1);
      cursor = j + 1;
    } else {
      // a changed entry replaces its old self: the parent's entries up to it go first (one triple, not two)
      if (j !== undefined && j >= cursor) {
        script.drop(j + 1 - cursor);
        cursor = j + 1;
      }
      script.insert(1);
      // replacing its old self: its path (and its link target, when that is the same) by reference (version 6)
      let x: Entry & Partial<Pick<InsertedEntry, 'pathRef' | 'linkRef' | 'sizeRef'>> = e;
      if (j !== undefined && j + 1 === cursor) {
        const p = parent[j];
        const links = (t: FileType): boolean => t === FileType.SYMLINK || t === FileType.HARDLINK;
        const linkRef = links(e.type) && links(p.type) && p.linkTarget === e.linkTarget;
        // a symbolic link with its parent's target: its size too when it is the same (version 7)
        x = { ...e, pathRef: j, ...(linkRef ? { linkRef: true } : {}), ...(linkRef && e.type === FileType.SYMLINK && p.size === e.size ? { sizeRef: true } : {}) };
      }
      if (e.type === FileType.REG && j !== undefined && parent[j].type === FileType.REG && parent[j].digest.equals(e.digest)) {
        inserted.push({ ...x, parentRef: j, ...(parent[j].size === e.size ? { sizeRef: true } : {}) } as Entry & Pick<InsertedEntry, 'parentRef'>);
      } else {
        if (e.type === FileType.REG) unmatched.push(x);
        inserted.push(x);
      }
    }
  }
  if (cursor < parent.length) script.drop(parent.length - cursor);
  if (unmatched.length) refByDigest(parent, inserted, unmatched);
  return { ops: script.finish(), inserted };
}

/**
 * Gives each inserted regular file of `unmatched` the first regular file of
 * `parent` with its content as its parentRef (moved or copied contents). One
 * pass over the parent, keyed by the digests wanted only: memory follows the
 * change, not the tree.
 */
function refByDigest(parent: Entry[], inserted: Entry[], unmatched: Entry[]): void {
  const want = new Map<string, number>();
  for (const e of unmatched) want.set(e.digest.toString('latin1'), -1);
  let left = want.size;
  for (let i = 0; i < parent.length && left > 0; i++) {
    const p = parent[i];
    if (p.type !== FileType.REG) continue;
    const k = p.digest.toString('latin1');
    if (want.get(k) === -1) {
      want.set(k, i);
      left--;
    }
  }
  const of = new Set(unmatched);
  for (let i = 0; i < inserted.length; i++) {
    const e = inserted[i];
    if (!of.has(e)) continue;
    const j = want.get(e.digest.toString('latin1')) ?? -1;
    if (j >= 0) inserted[i] = { ...e, parentRef: j, ...(parent[j].size === e.size ? { sizeRef: true } : {}) } as Entry;
  }
}

/** Builds the triples (keep, drop, insert) of an edit script from single steps. */
class ScriptBuilder {
  private readonly ops: number[] = [];
  private k = 0;
  private d = 0;
  private i = 0;
  keep(n: number): void {
    if (this.d || this.i) this.flush();
    this.k += n;
  }
  /** Drops emit nothing, so they commute with the inserts of the same triple. */
  drop(n: number): void {
    this.d += n;
  }
  insert(n: number): void {
    this.i += n;
  }
  finish(): number[] {
    this.flush();
    return this.ops;
  }
  private flush(): void {
    if (this.k || this.d || this.i) this.ops.push(this.k, this.d, this.i);
    this.k = this.d = this.i = 0;
  }
}

/**
 * The tree of a version 2 delta from its parent's: applies the edit script,
 * giving inserted entries their paths from the directories before them.
 * Malformed scripts are CORRUPT; the caller validates the tree and checks the
 * image id, so a script that builds the wrong tree is refused there.
 */
export function applyTreeEdit(parent: Entry[], edit: TreeEdit): Entry[] {
  const out: Entry[] = [];
  // the path and type of the last entry at each depth: an entry's directory is the one at depth - 1
  const stack: string[] = [];
  const types: number[] = [];
  let cursor = 0;
  let next = 0;
  const { ops, inserted } = edit;
  if (ops.length % 3 !== 0) throw corrupt('the tree edit script is not made of triples');
  for (let k = 0; k < ops.length; k += 3) {
    const [keep, drop, ins] = [ops[k], ops[k + 1], ops[k + 2]];
    if (cursor + keep + drop > parent.length) throw corrupt(`the tree edit script runs past the parent's ${parent.length} entries`);
    for (let i = 0; i < keep; i++) {
      const e = parent[cursor++];
      const d = depthOf(e.path);
      // a kept entry's directory must still be there, before it, and still a directory
      checkUnderItsDirectory(e.path, d, stack, types);
      stack.length = d;
      types.length = d;
      stack.push(e.path);
      types.push(e.type);
      out.push(e);
    }
    cursor += drop;
    if (next + ins > inserted.length) throw corrupt('the tree edit script inserts more entries than the delta holds');
    for (let i = 0; i < ins; i++) {
      const x = inserted[next++];
      let path: string;
      let d: number;
      let linkTarget = x.linkTarget;
      if (x.pathRef !== undefined) {
        // the path of a parent entry (version 6): its directory must be there, as for a kept entry
        const p = parent[x.pathRef];
        if (!p) throw corrupt(`an inserted entry takes its path from parent entry ${x.pathRef}, past the parent's ${parent.length} entries`);
        path = p.path;
        d = depthOf(path);
        if (d === 0 && stack.length !== 0) throw corrupt('an inserted entry takes the path of the root where the root cannot be');
        checkUnderItsDirectory(path, d, stack, types);
        if (x.linkRef) {
          if ((x.type !== FileType.SYMLINK && x.type !== FileType.HARDLINK) || (p.type !== FileType.SYMLINK && p.type !== FileType.HARDLINK)) throw corrupt(`entry "${path}" takes a link target from a parent entry, and one of them is not a link`);
          linkTarget = p.linkTarget;
        }
      } else {
        d = x.depth;
        if (d > stack.length || (d === 0) !== (x.name === '')) throw corrupt(`inserted entry "${x.name}" at depth ${d} has no directory before it`);
        if (d > 0 && types[d - 1] !== FileType.DIR) throw hostile(`entry "${x.name}": parent is missing or not a directory (entries must come after their directory)`);
        path = d === 0 ? '' : d === 1 ? x.name : `${stack[d - 1]}/${x.name}`;
        if (x.linkRef) throw corrupt(`entry "${path}" takes a link target from no parent entry`);
      }
      if (path.length > MAX_PATH_BYTES / 3 && Buffer.byteLength(path) > MAX_PATH_BYTES) throw hostile(`path longer than ${MAX_PATH_BYTES} bytes: "${path.slice(0, 80)}…"`);
      stack.length = d;
      types.length = d;
      stack.push(path);
      types.push(x.type);
      out.push(plainEntry({ ...x, linkTarget, size: x.sizeRef ? sizeOfParent(parent, x, path) : x.size }, path, x.parentRef === undefined ? x.digest : digestOfParent(parent, x.parentRef, path)));
    }
  }
  if (cursor !== parent.length || next !== inserted.length) throw corrupt("the tree edit script does not account for every entry (of the parent's or its own)");
  return out;
}

/** An entry at `path` (depth `d`) taken whole from the parent's tree: its directory must be the last entry one level up, and a directory. */
function checkUnderItsDirectory(path: string, d: number, stack: string[], types: number[]): void {
  if (d === 0) return;
  const dir = d <= stack.length ? stack[d - 1] : undefined;
  const under = dir !== undefined && (d === 1 ? dir === '' : path.length > dir.length && path.charCodeAt(dir.length) === 47 && path.startsWith(dir));
  if (!under || types[d - 1] !== FileType.DIR) throw hostile(`entry "${path}": parent is missing or not a directory (entries must come after their directory)`);
}

function plainEntry(x: InsertedEntry, path: string, digest: Buffer): Entry {
  return { path, type: x.type, mode: x.mode, uid: x.uid, gid: x.gid, mtimeSec: x.mtimeSec, mtimeNsec: x.mtimeNsec, size: x.size, digest, linkTarget: x.linkTarget, devMajor: x.devMajor, devMinor: x.devMinor, xattrs: x.xattrs, uname: x.uname, gname: x.gname };
}

/** The content digest of the parent's entry `ref`, which an inserted regular file names as its content (version 4). */
function digestOfParent(parent: Entry[], ref: number, path: string): Buffer {
  const p = parent[ref];
  if (!p || p.type !== FileType.REG || p.digest.length !== 32) throw corrupt(`entry "${path}" takes its content from parent entry ${ref}, which is not a regular file of the parent`);
  return p.digest;
}

/**
 * The size of the parent's entry that inserted entry `x` takes its size from (version 7,
 * InsertedEntry.sizeRef): the regular file it takes its content from, or the link it takes its
 * target from (applyTreeEdit checks their types).
 */
function sizeOfParent(parent: Entry[], x: InsertedEntry, path: string): number {
  const ref = x.type === FileType.REG ? x.parentRef : x.type === FileType.SYMLINK && x.linkRef ? x.pathRef : undefined;
  const p = ref === undefined ? undefined : parent[ref];
  if (!p) throw corrupt(`entry "${path}" takes its size from no parent entry`);
  return p.size;
}

/** Entries of a full version 2 index (the script is "insert everything"). */
export function fullTree(inserted: InsertedEntry[]): Entry[] {
  return applyTreeEdit([], { ops: inserted.length ? [0, 0, inserted.length] : [], inserted });
}

/**
 * The columns give an entry's path from its depth and the directories before
 * it: a tree that is not in depth-first order (children right after their
 * directory) cannot be written so. Checked on every write, by rebuilding the paths.
 */
export function checkRebuilds(parent: Entry[], script: { ops: number[]; inserted: Entry[] }, entries: Entry[]): void {
  // the paths applyTreeEdit would give, without building entries (a 150,000-entry image is written often)
  const stack: string[] = [];
  let cursor = 0;
  let next = 0;
  let out = 0;
  const { ops, inserted } = script;
  for (let k = 0; k < ops.length; k += 3) {
    for (let i = 0; i < ops[k]; i++, out++) {
      const p = parent[cursor++].path;
      stack.length = depthOf(p);
      stack.push(p);
    }
    cursor += ops[k + 1];
    for (let i = 0; i < ops[k + 2]; i++, out++) {
      const p = inserted[next++].path;
      const d = depthOf(p);
      const name = baseName(p);
      const rebuilt = d > stack.length ? undefined : d === 0 ? '' : d === 1 ? name : `${stack[d - 1]}/${name}`;
      if (rebuilt !== entries[out].path) throw corrupt(`the tree is not in depth-first order at "${entries[out].path}": it cannot be written in format version 2`);
      stack.length = d;
      stack.push(p);
    }
  }
}

/**
 * Entry `x` of the script of Y→Z with its content reference (an ordinal of
 * Y) made one to A, the base of the composition: Y's entry there is an entry
 * of A (`refs` ≥ 0: its ordinal) or one inserted on the way (`items`), whose
 * own reference or digest it takes. A copy: decoded entries may be shared.
 */
function rebased(x: InsertedEntry, refs: number[], items: InsertedEntry[]): InsertedEntry {
  return rebasedContent(rebasedPath(x, refs, items), refs, items);
}

/**
 * Entry `x` with its path reference (version 6) made one to A, as rebased does
 * for contents: to A's entry, or to the path (and link target) of the entry
 * inserted on the way that Y's entry is.
 */
function rebasedPath(x: InsertedEntry, refs: number[], items: InsertedEntry[]): InsertedEntry {
  if (x.pathRef === undefined) return x;
  const r = refs[x.pathRef];
  if (r === undefined) throw corrupt(`an inserted entry takes its path from parent entry ${x.pathRef}, past the parent's ${refs.length} entries`);
  if (r >= 0) return r === x.pathRef ? x : { ...x, pathRef: r };
  const y = items[-r - 1];
  const link = x.linkRef ? (y.linkRef ? { linkRef: true } : { linkRef: undefined, linkTarget: y.linkTarget }) : {};
  if (x.linkRef && y.type !== FileType.SYMLINK && y.type !== FileType.HARDLINK) throw corrupt('an inserted entry takes a link target from an entry that is not a link');
  // a link's size taken with its target (version 7): from A's entry as y's is, else y's own
  const size = x.sizeRef && x.type === FileType.SYMLINK ? (y.linkRef && y.sizeRef ? {} : { sizeRef: undefined, size: y.size }) : {};
  return y.pathRef !== undefined ? { ...x, ...link, ...size, pathRef: y.pathRef } : { ...x, ...link, ...size, pathRef: undefined, depth: y.depth, name: y.name };
}

function rebasedContent(x: InsertedEntry, refs: number[], items: InsertedEntry[]): InsertedEntry {
  if (x.parentRef === undefined) return x;
  const r = refs[x.parentRef];
  if (r === undefined) throw corrupt(`inserted entry "${x.name}" takes its content from parent entry ${x.parentRef}, past the parent's ${refs.length} entries`);
  if (r >= 0) return r === x.parentRef ? x : { ...x, parentRef: r };
  const y = items[-r - 1];
  if (y.type !== FileType.REG) throw corrupt(`inserted entry "${x.name}" takes its content from an entry that is not a regular file`);
  // a size taken with the content (version 7): from A's entry as y's is, else y's own
  const size = x.sizeRef ? (y.parentRef !== undefined && y.sizeRef ? {} : { sizeRef: undefined, size: y.size }) : {};
  return y.parentRef !== undefined ? { ...x, ...size, parentRef: y.parentRef } : { ...x, ...size, parentRef: undefined, digest: y.digest };
}

/**
 * The edit script of A→Z from those of A→B, B→C, …, Y→Z, without any of the
 * trees (content references made references to A: rebased): each script consumes its parent's entries exactly, so A's length is
 * what the first one keeps and drops. Entries are followed as references to
 * A or to an inserted entry; the result keeps A's entries in order.
 */
export function composeEdits(edits: TreeEdit[]): TreeEdit {
  if (edits.length === 0) throw corrupt('no tree edit to compose');
  let aLen = 0;
  const first = edits[0].ops;
  for (let k = 0; k + 2 < first.length; k += 3) aLen += first[k] + first[k + 1];
  if (aLen > LIMITS.maxEntries) throw corrupt('the tree edit script refers to more entries than a tree may hold');
  const items: InsertedEntry[] = [];
  let refs: number[] = Array.from({ length: aLen }, (_, i) => i);
  for (const edit of edits) {
    const { ops, inserted } = edit;
    if (ops.length % 3 !== 0) throw corrupt('the tree edit script is not made of triples');
    const out: number[] = [];
    let cursor = 0;
    let next = 0;
    for (let k = 0; k < ops.length; k += 3) {
      const [keep, drop, ins] = [ops[k], ops[k + 1], ops[k + 2]];
      if (cursor + keep + drop > refs.length || next + ins > inserted.length) throw corrupt('the tree edit scripts of the chain do not fit each other');
      for (let i = 0; i < keep; i++) out.push(refs[cursor++]);
      cursor += drop;
      for (let i = 0; i < ins; i++) {
        out.push(-(items.length + 1));
        items.push(rebased(inserted[next++], refs, items));
      }
      if (out.length > LIMITS.maxEntries) throw corrupt('the composed tree has more entries than a tree may hold');
    }
    if (cursor !== refs.length || next !== inserted.length) throw corrupt('the tree edit scripts of the chain do not fit each other');
    refs = out;
  }
  const script = new ScriptBuilder();
  const inserted: InsertedEntry[] = [];
  let cursor = 0;
  for (const r of refs) {
    if (r >= 0) {
      if (r < cursor) throw corrupt('the tree edit scripts of the chain reorder entries');
      if (r > cursor) script.drop(r - cursor);
      script.keep(1);
      cursor = r + 1;
    } else {
      script.insert(1);
      inserted.push(items[-r - 1]);
    }
  }
  if (cursor < aLen) script.drop(aLen - cursor);
  return { ops: script.finish(), inserted };
}
