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
 */
export function editScript(parent: Entry[], entries: Entry[]): { ops: number[]; inserted: Entry[] } {
  const at = new Map<string, number>();
  for (let i = 0; i < parent.length; i++) at.set(parent[i].path, i);
  const script = new ScriptBuilder();
  const inserted: Entry[] = [];
  let cursor = 0;
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
      inserted.push(e);
    }
  }
  if (cursor < parent.length) script.drop(parent.length - cursor);
  return { ops: script.finish(), inserted };
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
      if (d > 0) {
        const dir = d <= stack.length ? stack[d - 1] : undefined;
        const under = dir !== undefined && (d === 1 ? dir === '' : e.path.length > dir.length && e.path.charCodeAt(dir.length) === 47 && e.path.startsWith(dir));
        if (!under || types[d - 1] !== FileType.DIR) throw hostile(`entry "${e.path}": parent is missing or not a directory (entries must come after their directory)`);
      }
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
      const d = x.depth;
      if (d > stack.length || (d === 0) !== (x.name === '')) throw corrupt(`inserted entry "${x.name}" at depth ${d} has no directory before it`);
      if (d > 0 && types[d - 1] !== FileType.DIR) throw hostile(`entry "${x.name}": parent is missing or not a directory (entries must come after their directory)`);
      const path = d === 0 ? '' : d === 1 ? x.name : `${stack[d - 1]}/${x.name}`;
      if (path.length > MAX_PATH_BYTES / 3 && Buffer.byteLength(path) > MAX_PATH_BYTES) throw hostile(`path longer than ${MAX_PATH_BYTES} bytes: "${path.slice(0, 80)}…"`);
      stack.length = d;
      types.length = d;
      stack.push(path);
      types.push(x.type);
      out.push(plainEntry(x, path));
    }
  }
  if (cursor !== parent.length || next !== inserted.length) throw corrupt("the tree edit script does not account for every entry (of the parent's or its own)");
  return out;
}

function plainEntry(x: InsertedEntry, path: string): Entry {
  return { path, type: x.type, mode: x.mode, uid: x.uid, gid: x.gid, mtimeSec: x.mtimeSec, mtimeNsec: x.mtimeNsec, size: x.size, digest: x.digest, linkTarget: x.linkTarget, devMajor: x.devMajor, devMinor: x.devMinor, xattrs: x.xattrs, uname: x.uname, gname: x.gname };
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
 * The edit script of A→Z from those of A→B, B→C, …, Y→Z, without any of the
 * trees: each script consumes its parent's entries exactly, so A's length is
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
        items.push(inserted[next++]);
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
