/**
 * Format version 6: a delta's changed entry at the same path as its parent's
 * entry names that entry for its path, and for its link target when that did
 * not change (Columns.path_ref; tree-edit.ts, compact.ts). Written by the
 * edit script, read back, rebuilt against the parent, composed along a chain
 * (references into trees in between), refused in earlier versions by the
 * decoder and the lean check, and hostile references are CORRUPT (or
 * refused as hostile paths), never a crash.
 */
import { createHash } from 'node:crypto';
import { D4fsError } from '../errors';
import { kindThrown } from '../../test/helpers/errors';
import { decodeIndex, encodeIndex } from './codec';
import { checkIndexLean } from './check';
import { applyTreeEdit, baseName, composeEdits, depthOf, editScript } from './tree-edit';
import { type Entry, FileType, type Index, type InsertedEntry, Kind, HEADER_SIZE, FORMAT_VERSION } from './types';

const sha = (s: string): Buffer => createHash('sha256').update(s).digest();

function entry(path: string, type: FileType, o: Partial<Entry> = {}): Entry {
  return {
    path,
    type,
    mode: type === FileType.DIR ? 0o755 : 0o644,
    uid: 0,
    gid: 0,
    mtimeSec: 1_700_000_000,
    mtimeNsec: 0,
    size: type === FileType.REG ? 10 : type === FileType.SYMLINK ? (o.linkTarget ?? '').length : 0,
    digest: type === FileType.REG ? sha(path) : Buffer.alloc(0),
    linkTarget: '',
    devMajor: 0,
    devMinor: 0,
    xattrs: [],
    uname: '',
    gname: '',
    ...o,
  };
}

/** A small tree: directories, files, symlinks and a hard link, in the format's order. */
function parentTree(): Entry[] {
  return [
    entry('', FileType.DIR),
    entry('etc', FileType.DIR),
    entry('etc/a.conf', FileType.REG),
    entry('etc/b.conf', FileType.REG),
    entry('etc/link', FileType.SYMLINK, { linkTarget: 'a.conf', size: 6 }),
    entry('etc/old', FileType.REG),
    entry('usr', FileType.DIR),
    entry('usr/bin', FileType.DIR),
    entry('usr/bin/tool', FileType.REG),
    entry('usr/bin/tool2', FileType.HARDLINK, { linkTarget: 'usr/bin/tool' }),
    entry('usr/bin/zz', FileType.SYMLINK, { linkTarget: 'tool', size: 4 }),
  ];
}

/** The parent re-stamped (a package upgrade), one file edited, one link retargeted, one file gone, one new. */
function childTree(parent: Entry[]): Entry[] {
  const out = parent.filter((e) => e.path !== 'etc/old').map((e) => ({ ...e, mtimeSec: e.mtimeSec + 3600 }));
  const at = (p: string): Entry => out.find((e) => e.path === p) as Entry;
  at('etc/b.conf').digest = sha('b.conf v2');
  at('usr/bin/zz').linkTarget = 'tool2';
  at('usr/bin/zz').size = 5;
  out.splice(out.indexOf(at('etc/link')) + 1, 0, { ...entry('etc/new', FileType.REG), mtimeSec: 1_700_003_600 });
  return out;
}

/** What the writer gets from diff.ts: the script's entries with their depth and name. */
function asInserted(edit: { ops: number[]; inserted: Entry[] }): { ops: number[]; inserted: InsertedEntry[] } {
  return { ops: edit.ops, inserted: edit.inserted.map((e) => ({ ...e, depth: depthOf(e.path), name: baseName(e.path) })) };
}

function deltaIndex(edit: { ops: number[]; inserted: InsertedEntry[] }, version = FORMAT_VERSION): Index {
  return {
    formatVersion: version,
    kind: Kind.DELTA,
    imageId: sha('child'),
    parentId: sha('parent'),
    image: { configJson: Buffer.from('{}'), manifestDigest: '', platform: { os: 'linux', architecture: 'amd64' } } as unknown as Index['image'],
    parentImage: undefined,
    entries: [],
    blobs: [],
    chunkSize: 4 << 20,
    treeEdit: edit,
  } as Index;
}

const key = (e: Entry): string => JSON.stringify([e.path, e.type, e.mode, e.mtimeSec, e.size, e.digest.toString('hex'), e.linkTarget]);
const section = Buffer.alloc(32);

describe('paths by parent reference (format version 6)', () => {
  const parent = parentTree();
  const child = childTree(parent);
  const script = editScript(parent, child);

  it('name the replaced entry for its path, and for its link target when it did not change', () => {
    expect(FORMAT_VERSION).toBeGreaterThanOrEqual(6);
    const ins = script.inserted as InsertedEntry[];
    const byPath = new Map(ins.map((e) => [e.path, e]));
    // every changed entry at an old path refers to it; the new file does not
    for (const e of ins) {
      const j = parent.findIndex((p) => p.path === e.path);
      expect(e.pathRef).toBe(j >= 0 ? j : undefined);
    }
    expect(byPath.get('etc/link')?.linkRef).toBe(true);
    expect(byPath.get('usr/bin/tool2')?.linkRef).toBe(true);
    expect(byPath.get('usr/bin/zz')?.linkRef).toBeUndefined(); // retargeted: written
    expect(byPath.get('etc/new')?.pathRef).toBeUndefined();
  });

  it('are written without the names and link targets, read back, and rebuild the tree against the parent', () => {
    const edit = asInserted(script);
    const raw = encodeIndex(deltaIndex(edit), { sectionDigest: section });
    const back = decodeIndex(raw);
    const dec = back.treeEdit?.inserted ?? [];
    expect(dec.length).toBe(edit.inserted.length);
    // decoded: the referenced paths and link targets are not in the file
    for (const [i, e] of dec.entries()) {
      const w = edit.inserted[i];
      expect(e.pathRef).toBe(w.pathRef);
      if (w.pathRef !== undefined) expect([e.name, e.depth]).toEqual(['', 0]);
      else expect([e.name, e.depth]).toEqual([w.name, w.depth]);
      if (w.linkRef) expect(e.linkTarget).toBe('');
    }
    expect(applyTreeEdit(parent, back.treeEdit!).map(key)).toEqual(child.map(key));
    expect(checkIndexLean(raw, FORMAT_VERSION, HEADER_SIZE + 1000, HEADER_SIZE)).toBeTruthy();
    // version 5 writes the names and targets again: larger
    const v5 = encodeIndex(deltaIndex(edit, 5), { sectionDigest: section });
    expect(v5.length).toBeGreaterThan(raw.length);
    expect(applyTreeEdit(parent, decodeIndex(v5).treeEdit!).map(key)).toEqual(child.map(key));
  });

  it('are refused in files of earlier versions (decoder and lean check)', () => {
    const raw = encodeIndex(deltaIndex(asInserted(script)), { sectionDigest: section });
    const asV5 = Buffer.from(raw);
    // the version field of the index head is field 1: rewrite it as 5 where it is
    expect(asV5[0]).toBe(8);
    expect(asV5[1]).toBe(FORMAT_VERSION);
    asV5[1] = 5;
    expect(() => decodeIndex(asV5)).toThrow(expect.objectContaining({ kind: 'CORRUPT' }));
    expect(checkIndexLean(asV5, 5, HEADER_SIZE + 1000, HEADER_SIZE)).toBeUndefined();
    // and a version 5 writer given decoded references (no names) refuses to write them as nothing
    const decoded = decodeIndex(raw).treeEdit!;
    expect(() => encodeIndex(deltaIndex(decoded, 5), { sectionDigest: section })).toThrow(D4fsError);
  });

  it('compose along a chain: references into the tree in between become references to the base, or names', () => {
    // C2 re-stamps C1 again, edits the new file C1 added and retargets nothing: its references point into C1's tree
    const c1 = child;
    const c2 = c1.map((e) => ({ ...e, mtimeSec: e.mtimeSec + 60 }));
    (c2.find((e) => e.path === 'etc/new') as Entry).digest = sha('new v2');
    const e1 = decodeIndex(encodeIndex(deltaIndex(asInserted(script)), { sectionDigest: section })).treeEdit!;
    const e2 = decodeIndex(encodeIndex(deltaIndex(asInserted(editScript(c1, c2))), { sectionDigest: section })).treeEdit!;
    expect(applyTreeEdit(applyTreeEdit(parent, e1), e2).map(key)).toEqual(c2.map(key));
    const composed = composeEdits([e1, e2]);
    expect(applyTreeEdit(parent, composed).map(key)).toEqual(c2.map(key));
    const newer = composed.inserted.find((e) => e.name === 'new');
    expect(newer?.pathRef).toBeUndefined(); // C1's own file: its name, taken from C1's entry
    // the composition written as one version 6 delta and read back
    const again = decodeIndex(encodeIndex(deltaIndex(composed), { sectionDigest: section })).treeEdit!;
    expect(applyTreeEdit(parent, again).map(key)).toEqual(c2.map(key));
  });

  it('hostile references are CORRUPT or refused as hostile, never a crash', () => {
    const edit = asInserted(script);
    const expectBad = (f: () => unknown): void => expect(['CORRUPT', 'HOSTILE']).toContain(kindThrown(f));
    const withRef = (i: number, ref: number, o: Partial<InsertedEntry> = {}): InsertedEntry[] => edit.inserted.map((e, k) => (k === i ? { ...e, pathRef: ref, ...o } : e));
    const decodeWith = (ins: InsertedEntry[]) => decodeIndex(encodeIndex(deltaIndex({ ops: edit.ops, inserted: ins }), { sectionDigest: section })).treeEdit!;
    // past the parent's entries
    expectBad(() => applyTreeEdit(parent, decodeWith(withRef(0, parent.length + 5))));
    // the path of an entry in another directory than the one the script is in
    const inUsr = edit.inserted.findIndex((e) => e.path === 'usr/bin/tool');
    expectBad(() => applyTreeEdit(parent, decodeWith(withRef(inUsr, parent.findIndex((p) => p.path === 'etc/a.conf')))));
    // the root's path for an entry that is not the root
    expectBad(() => applyTreeEdit(parent, decodeWith(withRef(inUsr, 0))));
    // a link target by reference from a parent entry that is not a link
    const link = edit.inserted.findIndex((e) => e.path === 'etc/link');
    expectBad(() => applyTreeEdit(parent, decodeWith(withRef(link, parent.findIndex((p) => p.path === 'etc/a.conf'), { linkRef: true }))));
    // a link target by reference on an entry that is not a link: the decoder and the lean check refuse it
    const file = edit.inserted.findIndex((e) => e.path === 'etc/a.conf');
    const raw = encodeIndex(deltaIndex({ ops: edit.ops, inserted: withRef(file, edit.inserted[file].pathRef as number, { linkRef: true }) }), { sectionDigest: section });
    expectBad(() => decodeIndex(raw));
    expect(checkIndexLean(raw, FORMAT_VERSION, HEADER_SIZE + 1000, HEADER_SIZE)).toBeUndefined();
    // the same path twice: the tree is refused where it is validated (not here: applyTreeEdit builds, validateIndex judges)
    // flipped bytes: D4fsError or a tree, never anything else
    const good = encodeIndex(deltaIndex(edit), { sectionDigest: section });
    for (let k = 0; k < 300; k++) {
      const b = Buffer.from(good);
      const at = Math.floor(Math.random() * b.length);
      b[at] ^= 1 + Math.floor(Math.random() * 255);
      try {
        const ix = decodeIndex(b);
        if (ix.treeEdit) applyTreeEdit(parent, ix.treeEdit);
      } catch (e) {
        expect(e).toBeInstanceOf(D4fsError);
      }
      // the lean check answers (a head, or undefined), never throws
      checkIndexLean(b, FORMAT_VERSION, HEADER_SIZE + 1000, HEADER_SIZE);
    }
  });
});
