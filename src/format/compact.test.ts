/**
 * Format version 2's columns (compact.ts): lossless for every tree, edit
 * scripts that rebuild the child's tree and compose along chains, the wire
 * form protobufjs reads from proto/cdimg.proto, and damaged indexes refused
 * with CORRUPT or HOSTILE, never anything else.
 */
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type * as protobuf from 'protobufjs';
import { applyTreeEdit, composeEdits, editScript } from './tree-edit';
import { computeImageId, decodeIndex, encodeIndex, resolveDeltaTree } from './codec';
import { decodeIndexV2 } from './compact';
import { validateIndex, validateIndexContents } from './validate';
import { protoDir } from '../util/paths';
import { D4fsError } from '../errors';
import { type Blob, Codec, Encoding, type Entry, FileType, type Index, type InsertedEntry, Kind, HEADER_SIZE } from './types';
import { Prng } from '../../test/helpers/prng';

const sha = (s: string): Buffer => createHash('sha256').update(s).digest();

function entry(path: string, type: FileType, o: Partial<Entry> = {}): Entry {
  return { path, type, mode: type === FileType.DIR ? 0o755 : 0o644, uid: 0, gid: 0, mtimeSec: 1_700_000_000, mtimeNsec: 0, size: 0, digest: Buffer.alloc(0), linkTarget: '', devMajor: 0, devMinor: 0, xattrs: [], uname: '', gname: '', ...o };
}

/** A random tree in the format's order: directories with files, links, devices, xattrs, owners. */
function randomTree(rnd: Prng, dirs: number, perDir: number, tag = 'v1'): Entry[] {
  const out: Entry[] = [entry('', FileType.DIR)];
  const names = ['bin', 'etc', 'lib', 'usr', 'var', 'é-dir', '日本'];
  const top = names.slice(0, Math.max(1, Math.min(names.length, dirs))).sort();
  for (const d of top) {
    out.push(entry(d, FileType.DIR, { uid: rnd.int(3), uname: rnd.int(2) ? 'root' : 'daemon' }));
    const subs = Array.from({ length: Math.max(1, Math.floor(dirs / top.length)) }, (_, i) => `s${i}`).sort();
    for (const s of subs) {
      out.push(entry(`${d}/${s}`, FileType.DIR));
      const files = Array.from({ length: perDir }, (_, i) => `f${String(i).padStart(3, '0')}`).sort();
      for (const f of files) {
        const p = `${d}/${s}/${f}`;
        const k = rnd.int(20);
        if (k === 0) out.push(entry(p, FileType.SYMLINK, { linkTarget: `../${f}`, size: f.length + 3, mode: 0o777 }));
        else if (k === 1) out.push(entry(p, FileType.CHAR, { devMajor: 1, devMinor: rnd.int(9) }));
        else if (k === 2) out.push(entry(p, FileType.FIFO));
        else {
          const content = `${p} ${rnd.int(4)} ${tag}`;
          out.push(
            entry(p, FileType.REG, {
              size: content.length,
              digest: sha(content),
              mtimeSec: 1_700_000_000 + rnd.int(1000) - 500,
              mtimeNsec: rnd.int(3) ? 0 : rnd.int(1e9),
              xattrs: k === 3 ? [{ name: 'security.capability', value: Buffer.from([1, 0, 0, 2]) }, { name: 'user.x', value: Buffer.from('é') }] : [],
              gid: rnd.int(2) * 1000,
              gname: rnd.int(2) ? '' : 'staff',
            }),
          );
        }
      }
    }
  }
  // a hard link to the first regular file
  const reg = out.find((e) => e.type === FileType.REG) as Entry;
  const at = out.indexOf(reg);
  const dir = reg.path.slice(0, reg.path.lastIndexOf('/'));
  out.splice(at + 1, 0, entry(`${dir}/${reg.path.slice(dir.length + 1)}-hard`, FileType.HARDLINK, { linkTarget: reg.path }));
  return out;
}

/** Blobs of a full image: one FULL zstd content per distinct digest, chunks back to back. */
function fullBlobs(entries: Entry[]): Blob[] {
  const seen = new Map<string, Blob>();
  let off = HEADER_SIZE;
  for (const e of entries) {
    if (e.type !== FileType.REG || seen.has(e.digest.toString('hex'))) continue;
    const stored = 10 + (e.size % 7);
    seen.set(e.digest.toString('hex'), { digest: e.digest, size: e.size, encoding: Encoding.FULL, chunks: [{ offset: off, storedSize: stored, storedDigest: Buffer.alloc(0), rawSize: e.size, rawDigest: e.digest, codec: Codec.ZSTD, baseDigest: Buffer.alloc(0), baseOffset: 0, baseSize: 0 }] });
    off += stored;
  }
  return [...seen.values()];
}

function index(kind: Kind, entries: Entry[], blobs: Blob[], parentId: Buffer = Buffer.alloc(0)): Index {
  const configJson = Buffer.from('{"architecture":"amd64","os":"linux"}');
  return {
    formatVersion: 2,
    kind,
    imageId: computeImageId(entries, configJson),
    parentId,
    image: { sourceRef: 'oci:/x:v', manifestDigest: '', configDigest: 'sha256:00', configJson, layers: [], platform: 'linux/amd64', manifestMediaType: '' },
    entries,
    blobs,
    chunkSize: 4 << 20,
  };
}

const SECTION = sha('section');
const END = 1 << 30;

/** A child tree: some files changed, some removed, some added, a directory's mtime changed. */
function mutate(rnd: Prng, parent: Entry[], tag: string): Entry[] {
  const out: Entry[] = [];
  for (const e of parent) {
    const k = rnd.int(100);
    if (e.path !== '' && e.type !== FileType.DIR && e.type !== FileType.HARDLINK && k < 3) continue; // removed
    if (e.type === FileType.REG && k < 8) {
      const content = `${e.path} changed ${tag}`;
      out.push({ ...e, size: content.length, digest: sha(content) });
    } else if (e.type === FileType.DIR && k < 5) out.push({ ...e, mtimeSec: e.mtimeSec + 1 });
    else out.push(e);
    if (e.type === FileType.DIR && e.path.includes('/') && k > 95) {
      // a new file, first in its directory ("a…" sorts before "f…")
      const content = `${e.path}/a-new ${tag}`;
      out.push(entry(`${e.path}/a-new-${tag}`, FileType.REG, { size: content.length, digest: sha(content) }));
    }
  }
  return out;
}

describe('format version 2 columns', () => {
  it('a full index decodes to the tree and contents it was written from', () => {
    for (const seed of [1, 2, 3]) {
      const rnd = new Prng(seed);
      const entries = randomTree(rnd, 5, 40);
      const ix = index(Kind.FULL, entries, fullBlobs(entries));
      const raw = encodeIndex(ix, { sectionDigest: SECTION });
      const back = decodeIndex(raw);
      expect(back.entries).toEqual(entries);
      expect(back.blobs).toEqual(ix.blobs);
      expect(back.sectionDigest?.equals(SECTION)).toBe(true);
      const v = validateIndex(back, END, HEADER_SIZE);
      expect(v.byPath.size).toBe(entries.length);
    }
  });

  it('protobufjs reads the version 2 index with proto/cdimg.proto (the .proto says what is written)', () => {
    const root = (require('protobufjs') as typeof protobuf).loadSync(join(protoDir(), 'cdimg.proto'));
    const T = root.lookupType('d4fs.cdimg.v1.Index');
    const entries = randomTree(new Prng(7), 3, 10);
    const raw = encodeIndex(index(Kind.FULL, entries, fullBlobs(entries)), { sectionDigest: SECTION });
    const o = T.toObject(T.decode(raw), { longs: Number, bytes: Buffer, arrays: true }) as { formatVersion: number; tree: { depth: number[]; names: Buffer; type: number[] }; digests: Buffer; contents: { content: number[] }; entries: unknown[] };
    expect(o.formatVersion).toBe(2);
    expect(o.entries).toEqual([]);
    expect(o.tree.depth).toHaveLength(entries.length);
    expect(o.tree.type).toEqual(entries.map((e) => e.type));
    expect(o.tree.names.toString('utf8').split('\0').slice(0, -1)).toEqual(entries.map((e) => e.path.slice(e.path.lastIndexOf('/') + 1)));
    expect(o.digests.length % 32).toBe(0);
    expect(o.contents.content.length).toBe(fullBlobs(entries).length);
  });

  it('a delta stores an edit script: applied to the parent it gives the child tree, and unchanged entries cost nothing', () => {
    for (const seed of [11, 12, 13, 14]) {
      const rnd = new Prng(seed);
      const parent = randomTree(rnd, 6, 60);
      const child = mutate(rnd, parent, 'v2');
      const script = editScript(parent, child);
      const changed = child.filter((e, i) => parent[i] !== e).length; // an upper bound of what differs
      expect(script.inserted.length).toBeLessThanOrEqual(changed);
      expect(script.inserted.length).toBeLessThan(child.length / 4);
      const blobs = fullBlobs(script.inserted);
      const ix = index(Kind.DELTA, child, blobs, computeImageId(parent, Buffer.from('{"architecture":"amd64","os":"linux"}')));
      const raw = encodeIndex(ix, { sectionDigest: SECTION, parentEntries: parent });
      const fullRaw = encodeIndex(index(Kind.FULL, child, fullBlobs(child)), { sectionDigest: SECTION });
      expect(raw.length).toBeLessThan(fullRaw.length / 3);
      const alone = decodeIndex(raw);
      expect(alone.entries).toEqual([]);
      expect(alone.treeEdit?.ops).toEqual(script.ops);
      validateIndexContents(alone, END, HEADER_SIZE); // what a reader checks without the parent
      expect(() => validateIndex(alone, END, HEADER_SIZE)).toThrow(/parent/);
      const resolved = resolveDeltaTree(alone, parent);
      expect(resolved.entries).toEqual(child);
      // every content the tree uses is described: the stored ones, the rest SAME
      const v = validateIndex(resolved, END, HEADER_SIZE);
      for (const e of child) if (e.type === FileType.REG) expect(v.blobs.has(e.digest.toString('hex'))).toBe(true);
      expect(resolved.blobs.filter((b) => b.encoding === Encoding.SAME).length).toBeGreaterThan(0);
      // a wrong parent builds another tree, or none: refused
      const other = mutate(new Prng(seed + 100), parent, 'v9');
      let err: unknown;
      try {
        validateIndex(resolveDeltaTree(alone, other), END, HEADER_SIZE);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(D4fsError);
      // a directory the script expects is not there (HOSTILE), or the tree it builds is another (CORRUPT: the id)
      expect(['CORRUPT', 'HOSTILE']).toContain((err as D4fsError).kind);
    }
  });

  it('edit scripts compose along a chain without any of the trees', () => {
    const rnd = new Prng(21);
    const trees = [randomTree(rnd, 5, 50)];
    for (let i = 1; i <= 4; i++) trees.push(mutate(rnd, trees[i - 1], `v${i + 1}`));
    const pending = (s: { ops: number[]; inserted: Entry[] }): { ops: number[]; inserted: InsertedEntry[] } => ({
      ops: s.ops,
      inserted: s.inserted.map((e) => ({ ...e, path: '', depth: e.path === '' ? 0 : e.path.split('/').length, name: e.path.slice(e.path.lastIndexOf('/') + 1) })),
    });
    const edits = trees.slice(1).map((t, i) => pending(editScript(trees[i], t)));
    const composed = composeEdits(edits);
    expect(applyTreeEdit(trees[0], composed)).toEqual(trees[4]);
    // no longer than the direct script
    expect(composed.inserted.length).toBeLessThanOrEqual(editScript(trees[0], trees[4]).inserted.length + edits.reduce((n, e) => n + e.inserted.length, 0));
    // scripts that do not fit each other are refused
    expect(() => composeEdits([edits[0], edits[2]])).toThrow(D4fsError);
  });

  it('refuses hostile names and entries under a non-directory when it decodes (HOSTILE)', () => {
    const cases: Entry[][] = [
      [entry('', FileType.DIR), entry('a', FileType.DIR), entry('a/..', FileType.FIFO)],
      [entry('', FileType.DIR), entry('.', FileType.FIFO)],
      [entry('', FileType.DIR), entry('f', FileType.FIFO), entry('f/x', FileType.FIFO)],
      [entry('', FileType.DIR), entry('d', FileType.DIR), entry(`d/${'n'.repeat(256)}`, FileType.FIFO)],
    ];
    for (const t of cases) {
      const raw = encodeIndex(index(Kind.FULL, t, []), { sectionDigest: SECTION });
      let err: unknown;
      try {
        validateIndex(decodeIndex(raw), END, HEADER_SIZE);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(D4fsError);
      expect((err as D4fsError).kind).toBe('HOSTILE');
    }
  });

  it('refuses a tree that is not in depth-first order instead of writing a wrong one', () => {
    const t = [entry('', FileType.DIR), entry('a', FileType.DIR), entry('b', FileType.DIR), entry('a/x', FileType.FIFO)];
    expect(() => encodeIndex(index(Kind.FULL, t, []), { sectionDigest: SECTION })).toThrow(/depth-first/);
  });

  it('damaged version 2 indexes are CORRUPT or HOSTILE, never another error', () => {
    const rnd = new Prng(31);
    const parent = randomTree(rnd, 4, 30);
    const child = mutate(rnd, parent, 'v2');
    const raws = [
      encodeIndex(index(Kind.FULL, parent, fullBlobs(parent)), { sectionDigest: SECTION }),
      encodeIndex(index(Kind.DELTA, child, fullBlobs(editScript(parent, child).inserted), computeImageId(parent, Buffer.from('{"architecture":"amd64","os":"linux"}'))), { sectionDigest: SECTION, parentEntries: parent }),
    ];
    let refused = 0;
    for (let i = 0; i < 1500; i++) {
      const raw = Buffer.from(raws[i % 2]);
      const mode = rnd.int(3);
      let b = raw;
      if (mode === 0) b[rnd.int(b.length)] ^= 1 << rnd.int(8);
      else if (mode === 1) b = raw.subarray(0, rnd.int(raw.length));
      else for (let k = 0; k < 8; k++) b[rnd.int(b.length)] = rnd.int(256);
      try {
        const ix = decodeIndex(b);
        if (ix.treeEdit) {
          validateIndexContents(ix, END, HEADER_SIZE);
          validateIndex(resolveDeltaTree(ix, parent), END, HEADER_SIZE);
        } else validateIndex(ix, END, HEADER_SIZE);
      } catch (e) {
        if (!(e instanceof D4fsError) || !['CORRUPT', 'HOSTILE'].includes(e.kind)) throw e;
        refused++;
      }
    }
    // flips of bytes that do not matter (e.g. in a name, with the id recomputed nowhere) are still caught by the id check
    expect(refused).toBeGreaterThan(1400);
  });
});

describe('format version 4: contents by parent reference', () => {
  const CONFIG = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const v4 = (kind: Kind, entries: Entry[], blobs: Blob[], parentId?: Buffer): Index => ({ ...index(kind, entries, blobs, parentId), formatVersion: 4 });
  /** Every regular file re-stamped (as a package upgrade does), one moved to a new name, one changed. */
  const restamp = (parent: Entry[], tag: string): Entry[] => {
    const out = parent.map((e) => (e.type === FileType.REG ? { ...e, mtimeSec: e.mtimeSec + 3600 } : e));
    const regs = out.filter((e) => e.type === FileType.REG && !out.some((h) => h.type === FileType.HARDLINK && h.linkTarget === e.path));
    const changed = regs[3];
    const content = `${changed.path} ${tag}`;
    out[out.indexOf(changed)] = { ...changed, size: content.length, digest: sha(content) };
    // moved: the same content under a new name in the same directory ("z…" sorts after "f…")
    const moved = regs[7];
    out.splice(out.indexOf(moved), 1);
    const dir = moved.path.slice(0, moved.path.lastIndexOf('/'));
    const last = out.map((e) => e.path.startsWith(`${dir}/`)).lastIndexOf(true);
    out.splice(last + 1, 0, { ...moved, path: `${dir}/z-moved-${tag}` });
    return out;
  };

  it('a re-stamped or moved file names its parent entry instead of its digest, and reads back the same tree', () => {
    const parent = randomTree(new Prng(41), 6, 60);
    const child = restamp(parent, 'v2');
    const parentId = computeImageId(parent, CONFIG);
    const script = editScript(parent, child);
    const refs = (script.inserted as InsertedEntry[]).filter((e) => e.parentRef !== undefined);
    const regs = child.filter((e) => e.type === FileType.REG).length;
    expect(refs.length).toBe(regs - 1); // every regular file but the changed one (the moved one by its digest)
    const blobs = fullBlobs(script.inserted.filter((e) => (e as InsertedEntry).parentRef === undefined));
    const raw4 = encodeIndex(v4(Kind.DELTA, child, blobs, parentId), { sectionDigest: SECTION, parentEntries: parent });
    const raw3 = encodeIndex({ ...index(Kind.DELTA, child, blobs, parentId), formatVersion: 3 }, { sectionDigest: SECTION, parentEntries: parent });
    // each reference instead of a 32-byte digest
    expect(raw3.length - raw4.length).toBeGreaterThan(refs.length * 28);
    const alone = decodeIndex(raw4);
    const decodedRefs = (alone.treeEdit?.inserted ?? []).filter((e) => e.parentRef !== undefined);
    expect(decodedRefs.map((e) => e.parentRef)).toEqual(refs.map((e) => e.parentRef));
    for (const e of decodedRefs) expect(e.digest.length).toBe(0); // resolved from the parent only
    const resolved = resolveDeltaTree(alone, parent);
    expect(resolved.entries).toEqual(child);
    validateIndex(resolved, END, HEADER_SIZE); // the image id of the child
    // the same delta written in version 3 stores every digest and reads back alike
    expect(resolveDeltaTree(decodeIndex(raw3), parent).entries).toEqual(child);
  });

  it('references compose along a chain (to the base, or to a content inserted on the way), and the composed script writes and reads back', () => {
    const trees = [randomTree(new Prng(43), 5, 50)];
    for (let i = 1; i <= 3; i++) trees.push(restamp(trees[i - 1], `v${i + 1}`));
    // each delta as a reader sees it: decoded alone, references unresolved
    const edits = trees.slice(1).map((t, i) => {
      const raw = encodeIndex(v4(Kind.DELTA, t, fullBlobs(t), computeImageId(trees[i], CONFIG)), { sectionDigest: SECTION, parentEntries: trees[i] });
      return decodeIndex(raw).treeEdit as { ops: number[]; inserted: InsertedEntry[] };
    });
    const composed = composeEdits(edits);
    expect(applyTreeEdit(trees[0], composed)).toEqual(trees[3]);
    // a content changed in the middle delta and re-stamped after it: its digest, not a reference to the base
    const inMiddle = composed.inserted.filter((e) => e.parentRef === undefined && e.type === FileType.REG);
    expect(inMiddle.length).toBeGreaterThan(0);
    // written as a merge writes it (the composed script, no trees) and read back
    const merged = { ...v4(Kind.DELTA, [], fullBlobs(inMiddle), computeImageId(trees[0], CONFIG)), imageId: computeImageId(trees[3], CONFIG), treeEdit: composed };
    const back = resolveDeltaTree(decodeIndex(encodeIndex(merged, { sectionDigest: SECTION })), trees[0]);
    expect(back.entries).toEqual(trees[3]);
    validateIndex(back, END, HEADER_SIZE);
  });

  it('a reference to nothing, to an entry that is not a regular file, or where none may be, is CORRUPT', () => {
    const parent = randomTree(new Prng(45), 3, 20);
    const child = restamp(parent, 'v2');
    const parentId = computeImageId(parent, CONFIG);
    const script = editScript(parent, child);
    const forged = (ref: (e: InsertedEntry, i: number) => number | undefined): Buffer => {
      const inserted = (script.inserted as InsertedEntry[]).map((e, i) => ({ ...e, depth: e.path === '' ? 0 : e.path.split('/').length, name: e.path.slice(e.path.lastIndexOf('/') + 1), parentRef: e.type === FileType.REG ? ref(e, i) : undefined }));
      return encodeIndex({ ...v4(Kind.DELTA, child, fullBlobs(child), parentId), treeEdit: { ops: script.ops, inserted } }, { sectionDigest: SECTION });
    };
    const kindOf = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        return e instanceof D4fsError ? e.kind : `not a D4fsError: ${String(e)}`;
      }
      return undefined;
    };
    // past the parent's entries, to its root directory, to another file (the image id then differs)
    expect(kindOf(() => resolveDeltaTree(decodeIndex(forged(() => parent.length + 5)), parent))).toBe('CORRUPT');
    expect(kindOf(() => resolveDeltaTree(decodeIndex(forged(() => 0)), parent))).toBe('CORRUPT');
    const other = parent.findIndex((e) => e.type === FileType.REG);
    expect(kindOf(() => validateIndex(resolveDeltaTree(decodeIndex(forged(() => other)), parent), END, HEADER_SIZE))).toBe('CORRUPT');
    // references where the file cannot hold them: a full image, a version 3 delta
    const good = forged((e) => e.parentRef);
    expect(kindOf(() => decodeIndexV2(good, Kind.FULL, { version: 4 }))).toBe('CORRUPT');
    expect(kindOf(() => decodeIndexV2(good, Kind.DELTA, { version: 3 }))).toBe('CORRUPT');
    // composing a reference past its parent's entries
    const decoded = decodeIndex(forged(() => parent.length + 5)).treeEdit as { ops: number[]; inserted: InsertedEntry[] };
    expect(kindOf(() => composeEdits([decoded]))).toBe('CORRUPT');
  });
});
