/**
 * The lean check of a version 2 index (check.ts) against the full path
 * (decodeIndex + validateIndex / validateIndexContents, what
 * CdimgReader.open runs): it accepts sound indexes with the same ids, and it
 * never accepts an index the full path refuses — on hand-made hostile trees
 * and on many damaged indexes whose image id is made to match again, so
 * that the damage reaches the checks behind it.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CdimgReader, forgetOpenedIndexes, sameStoredIndex } from './reader';
import { encodeHeader } from './writer';
import { zstdFrame } from './zstd';
import { D4fsError } from '../errors';
import { checkIndexLean } from './check';
import { readPbFields } from './columns-pb';
import { computeImageId, decodeIndex, encodeIndex } from './codec';
import { validateIndex, validateIndexContents } from './validate';
import { type Blob, Codec, Encoding, type Entry, FileType, GROUP_MAX_RAW, GROUP_MAX_STORED, type Index, Kind, HEADER_SIZE } from './types';
import { Prng } from '../../test/helpers/prng';

const sha = (s: string): Buffer => createHash('sha256').update(s).digest();
const SECTION = sha('section');
const END = 1 << 30;

function entry(path: string, type: FileType, o: Partial<Entry> = {}): Entry {
  return { path, type, mode: type === FileType.DIR ? 0o755 : 0o644, uid: 0, gid: 0, mtimeSec: 1_700_000_000, mtimeNsec: 0, size: 0, digest: Buffer.alloc(0), linkTarget: '', devMajor: 0, devMinor: 0, xattrs: [], uname: '', gname: '', ...o };
}

/** A tree in the format's order with every entry type, xattrs, owners, big ids, negative mtimes, hard links. */
function tree(rnd: Prng, dirs: number, perDir: number): Entry[] {
  const out: Entry[] = [entry('', FileType.DIR, { uname: 'root' })];
  for (const d of ['bin', 'etc', 'é-dir', '日本'].slice(0, dirs)) {
    out.push(entry(d, FileType.DIR, { uid: rnd.int(3), uname: rnd.int(2) ? 'root' : 'daemon' }));
    for (const s of ['a', 's0', 's1']) {
      out.push(entry(`${d}/${s}`, FileType.DIR, { mtimeSec: -5 + rnd.int(3) }));
      for (let i = 0; i < perDir; i++) {
        const p = `${d}/${s}/f${String(i).padStart(3, '0')}`;
        const k = rnd.int(12);
        if (k === 0) out.push(entry(p, FileType.SYMLINK, { linkTarget: `../x${i}`, size: 5, mode: 0o777 }));
        else if (k === 1) out.push(entry(p, FileType.CHAR, { devMajor: 1, devMinor: rnd.int(9) }));
        else if (k === 2) out.push(entry(p, FileType.FIFO));
        else if (k === 3 && out.at(-1)?.type === FileType.REG) out.push(entry(p, FileType.HARDLINK, { linkTarget: (out.at(-1) as Entry).path }));
        else {
          const content = `${rnd.int(k === 4 ? 3 : 1000)} ${k}`; // some contents shared by several files
          out.push(
            entry(p, FileType.REG, {
              size: content.length,
              digest: sha(content),
              mtimeSec: 1_700_000_000 + rnd.int(1000) - 500,
              mtimeNsec: rnd.int(3) ? 0 : rnd.int(1e9),
              xattrs: k === 5 ? [{ name: 'security.capability', value: Buffer.from([1, 0, 0, 2]) }, { name: 'user.x', value: Buffer.from('é') }] : [],
              uid: k === 6 ? 2 ** 32 + 7 : 0,
              gid: rnd.int(2) * 1000,
              gname: rnd.int(2) ? '' : 'staff',
            }),
          );
        }
      }
    }
  }
  return out;
}

/** One FULL blob per distinct digest; every third one in two chunks. */
function blobsOf(entries: Entry[]): Blob[] {
  const seen = new Map<string, Blob>();
  let off = HEADER_SIZE;
  const chunk = (rawSize: number, rawDigest: Buffer) => {
    const c = { offset: off, storedSize: 10 + (rawSize % 7), storedDigest: Buffer.alloc(0), rawSize, rawDigest, codec: Codec.ZSTD, baseDigest: Buffer.alloc(0), baseOffset: 0, baseSize: 0 };
    off += c.storedSize;
    return c;
  };
  for (const e of entries) {
    if (e.type !== FileType.REG || seen.has(e.digest.toString('hex'))) continue;
    const two = seen.size % 3 === 0 && e.size > 1;
    const chunks = two ? [chunk(1, sha(`${e.path}/0`)), chunk(e.size - 1, sha(`${e.path}/1`))] : [chunk(e.size, e.digest)];
    seen.set(e.digest.toString('hex'), { digest: e.digest, size: e.size, encoding: Encoding.FULL, chunks });
  }
  return [...seen.values()];
}

function indexOf(kind: Kind, entries: Entry[], blobs: Blob[], parentId: Buffer = Buffer.alloc(0), formatVersion = 2): Index {
  const configJson = Buffer.from('{"architecture":"amd64","os":"linux"}');
  return {
    formatVersion,
    kind,
    imageId: computeImageId(entries, configJson),
    parentId,
    image: { sourceRef: 'oci:/x:v', manifestDigest: '', configDigest: 'sha256:00', configJson, layers: [], platform: 'linux/amd64', manifestMediaType: '' },
    entries,
    blobs,
    chunkSize: 4 << 20,
  };
}

/**
 * CHECK_ROUNDS (default 1,500) copies of `seeds` with 1-3 bytes damaged (never the image id, which is then
 * recomputed for the damaged tree, so that the damage meets the checks behind it), each judged by the full
 * path and the lean check: how many both accept, only the lean check, only the full path.
 */
function damaged(rnd: Prng, seeds: Buffer[], fullOk: (raw: Buffer) => boolean, leanOk: (raw: Buffer) => boolean): { both: number; leanOnly: number; fullOnly: number } {
  const r = { both: 0, leanOnly: 0, fullOnly: 0 };
  const rounds = Number(process.env.CHECK_ROUNDS ?? 1500);
  for (let round = 0; round < rounds; round++) {
    const raw = Buffer.from(seeds[round % seeds.length]);
    const id = decodeIndex(raw).imageId;
    const idAt = raw.indexOf(Buffer.from(id));
    for (let k = 1 + rnd.int(3); k > 0; k--) {
      const p = rnd.int(raw.length);
      if (p >= idAt && p < idAt + 32) continue;
      if (rnd.int(2)) raw[p] ^= 1 << rnd.int(8);
      else raw[p] = rnd.int(4) === 0 ? 0 : rnd.int(256);
    }
    try {
      const d = decodeIndex(raw);
      if (d.entries.length) computeImageId(d.entries, d.image.configJson).copy(raw, idAt);
    } catch {
      /* does not decode: compared as it is */
    }
    const f = fullOk(raw);
    const l = leanOk(raw);
    if (l && !f) r.leanOnly++;
    if (l && f) r.both++;
    if (!l && f) r.fullOnly++;
  }
  return r;
}

/** What CdimgReader.open (without a parent) concludes: accepted, or the error. */
function full(raw: Buffer): { ok: true; index: Index } | { ok: false; error: unknown } {
  try {
    const index = decodeIndex(raw);
    if (index.formatVersion !== 2 && index.formatVersion !== 3) throw new Error('version');
    if (index.treeEdit) validateIndexContents(index, END, HEADER_SIZE);
    else validateIndex(index, END, HEADER_SIZE);
    return { ok: true, index };
  } catch (error) {
    return { ok: false, error };
  }
}

const lean = (raw: Buffer) => checkIndexLean(raw, 2, END, HEADER_SIZE);

/** A .cdimg holding `raw` as its index, after a blob section of `section` bytes (its chunks are not read here). */
async function fileOf(dir: string, name: string, raw: Buffer, section = 1 << 16): Promise<string> {
  const stored = zstdFrame(raw, 3);
  const header = encodeHeader(HEADER_SIZE + section, stored.length, raw.length, createHash('sha256').update(raw).digest(), 2);
  const path = join(dir, name);
  await fsp.writeFile(path, Buffer.concat([header, Buffer.alloc(section), stored]));
  return path;
}

/** Encode, with the image id of the entries as given (so that only the damage under test is wrong). */
function encode(entries: Entry[], blobs: Blob[] = blobsOf(entries)): Buffer {
  return encodeIndex(indexOf(Kind.FULL, entries, blobs), { sectionDigest: SECTION });
}

/** A delta written as an edit script against its parent's tree: patched contents, a SAME one. */
function delta(): Buffer {
  const parent = tree(new Prng(7), 3, 20);
  const child = parent.map((e) => (e.type === FileType.REG && e.path.endsWith('1') ? { ...e, size: 4, digest: sha(`new ${e.path}`) } : e));
  const changed = child.filter((e, i) => e !== parent[i]);
  const patch = (e: Entry): Blob => ({ digest: e.digest, size: 4, encoding: Encoding.PATCH, chunks: [{ offset: HEADER_SIZE, storedSize: 3, storedDigest: sha('s'), rawSize: 4, rawDigest: e.digest, codec: Codec.ZSTD_PATCH, baseDigest: sha('base'), baseOffset: 0, baseSize: 9 }] });
  const blobs: Blob[] = changed.map(patch);
  blobs.push({ digest: sha('same'), size: 3, encoding: Encoding.SAME, chunks: [] });
  return encodeIndex(indexOf(Kind.DELTA, child, blobs, sha('parent')), { sectionDigest: SECTION, parentEntries: parent });
}


describe('lean check of version 2 indexes', () => {
  it('accepts sound full images with the ids the full path reads', () => {
    for (const seed of [1, 2, 3, 4]) {
      const entries = tree(new Prng(seed), 4, 30);
      const raw = encode(entries);
      const f = full(raw);
      expect(f.ok).toBe(true);
      const l = lean(raw);
      expect(l?.hasTree).toBe(true);
      expect(l?.head.imageId.equals(computeImageId(entries, indexOf(Kind.FULL, entries, []).image.configJson))).toBe(true);
      expect(l?.head.kind).toBe(Kind.FULL);
      expect(l?.head.image.sourceRef).toBe('oci:/x:v');
    }
    // the smallest tree: a root alone
    expect(lean(encode([entry('', FileType.DIR)]))?.hasTree).toBe(true);
  });

  it('accepts a delta written as an edit script as open does without its parent (contents only)', () => {
    const raw = delta();
    expect(full(raw).ok).toBe(true);
    const l = lean(raw);
    expect(l?.hasTree).toBe(false);
    expect(l?.head.parentId.equals(sha('parent'))).toBe(true);
  });

  it('accepts nothing the full path refuses: hostile trees and contents', () => {
    const base = tree(new Prng(11), 2, 12);
    const regAt = base.findIndex((e) => e.type === FileType.REG);
    const reg = base[regAt];
    const dirAt = base.findIndex((e) => e.path === 'bin/s0');
    const set = (i: number, o: Partial<Entry>): Entry[] => base.map((e, j) => (j === i ? { ...e, ...o } : e));
    const cases: [string, () => Buffer][] = [
      ['mode over 07777', () => encode(set(regAt, { mode: 0o10000 }))],
      ['nsec of a second', () => encode(set(regAt, { mtimeNsec: 1e9 }))],
      ['absurd size', () => encode(set(regAt, { size: 2 ** 50 }), blobsOf(base).map((b) => (b.digest.equals(reg.digest) ? { ...b, size: 2 ** 50 } : b)))],
      ['size differs from its content', () => encode(set(regAt, { size: reg.size + 1 }), blobsOf(base))],
      ['content not described', () => encode(base, blobsOf(base).filter((b) => !b.digest.equals(reg.digest)))],
      ['content listed twice', () => encode(base, [...blobsOf(base), blobsOf(base)[0]])],
      ['a patch in a full image', () => encode(base, blobsOf(base).map((b, i) => (i === 0 ? { ...b, encoding: Encoding.PATCH } : b)))],
      ['a SAME content in a full image', () => encode(base, blobsOf(base).map((b, i) => (i === 0 ? { ...b, encoding: Encoding.SAME, chunks: [] } : b)))],
      ['a chunk outside the blob section', () => encode(base, blobsOf(base).map((b, i) => (i === 0 ? { ...b, chunks: b.chunks.map((c) => ({ ...c, offset: END })) } : b)))],
      ['a chunk in the header', () => encode(base, blobsOf(base).map((b, i) => (i === 0 ? { ...b, chunks: b.chunks.map((c) => ({ ...c, offset: 3 })) } : b)))],
      ['a patch chunk in a full image', () => encode(base, blobsOf(base).map((b, i) => (i === 0 ? { ...b, chunks: b.chunks.map((c) => ({ ...c, codec: Codec.BSDIFF, storedDigest: sha('x'), baseDigest: sha('b') })) } : b)))],
      ['a hard link to a directory', () => encode([...base.slice(0, dirAt + 1), entry('bin/s0/0-hard', FileType.HARDLINK, { linkTarget: 'bin' }), ...base.slice(dirAt + 1)])],
      ['a hard link to a later file', () => encode([...base.slice(0, dirAt + 1), entry('bin/s0/0-hard', FileType.HARDLINK, { linkTarget: base.slice(dirAt + 1).find((e) => e.type === FileType.REG)?.path }), ...base.slice(dirAt + 1)])],
      ['a hard link to nothing', () => encode([...base.slice(0, dirAt + 1), entry('bin/s0/0-hard', FileType.HARDLINK, { linkTarget: 'bin/s0/nothing' }), ...base.slice(dirAt + 1)])],
      ['a symlink to nothing', () => encode([...base.slice(0, dirAt + 1), entry('bin/s0/0-link', FileType.SYMLINK, { linkTarget: '' }), ...base.slice(dirAt + 1)])],
      ['a device out of range', () => encode([...base.slice(0, dirAt + 1), entry('bin/s0/0-dev', FileType.BLOCK, { devMajor: 4096 }), ...base.slice(dirAt + 1)])],
      ['an unknown type', () => encode([...base.slice(0, dirAt + 1), entry('bin/s0/0-x', 9 as FileType), ...base.slice(dirAt + 1)])],
      ['an xattr name with a NUL', () => encode(set(regAt, { xattrs: [{ name: 'user.\0x', value: Buffer.from('v') }] }))],
      ['an empty xattr name', () => encode(set(regAt, { xattrs: [{ name: '', value: Buffer.from('v') }] }))],
      ['an owner with a NUL', () => encode(set(regAt, { uname: 'ro\0ot' }))],
      ['a root that is a file', () => encode([entry('', FileType.FIFO)])],
      ['an entry under a file', () => encode([...base.slice(0, regAt + 1), entry(`${reg.path}/under`, FileType.FIFO), ...base.slice(regAt + 1)])],
      ['an entry listed twice', () => encode([...base.slice(0, regAt + 1), base[regAt], ...base.slice(regAt + 1)])],
    ];
    const written: string[] = [];
    for (const [what, make] of cases) {
      let raw: Buffer;
      try {
        raw = make();
      } catch {
        continue; // the writer refuses to write it
      }
      written.push(what);
      expect([what, full(raw).ok]).toEqual([what, false]);
      expect([what, lean(raw)]).toEqual([what, undefined]);
    }
    if (process.env.CHECK_DEBUG) console.log(written);
    expect(written.length).toBeGreaterThan(15);
  });

  it('matches contents by digest, not by slot of the digest table', () => {
    const raw = encode(tree(new Prng(3), 2, 8));
    const table = readPbFields(raw, 'index').get(14)?.[0] as Buffer;
    // two slots with the same digest: two contents listed with one digest
    table.copy(table, 32, 0, 32);
    const d = decodeIndex(raw);
    computeImageId(d.entries, d.image.configJson).copy(raw, raw.indexOf(d.imageId));
    expect(full(raw).ok).toBe(false);
    expect(lean(raw)).toBeUndefined();
  });

  it('leaves siblings out of byte order to the full path', () => {
    const base = tree(new Prng(5), 2, 4);
    const at = base.findIndex((e) => e.path === 'bin/a');
    // "bin/a" and its children moved after "bin/s1"'s subtree: still depth first, names not sorted
    const sub = base.filter((e) => e.path === 'bin/a' || e.path.startsWith('bin/a/'));
    const rest = base.filter((e) => !sub.includes(e));
    const endOfBin = rest.findIndex((e, i) => i > at && !e.path.startsWith('bin'));
    const entries = [...rest.slice(0, endOfBin), ...sub, ...rest.slice(endOfBin)];
    const raw = encode(entries);
    expect(full(raw).ok).toBe(true);
    expect(lean(raw)).toBeUndefined();
  });

  it('accepts no damaged index that the full path refuses (damage behind a matching image id)', () => {
    const r = damaged(new Prng(99), [encode(tree(new Prng(21), 3, 10)), encode(tree(new Prng(22), 1, 6)), delta()], (raw) => full(raw).ok, (raw) => lean(raw) !== undefined);
    if (process.env.CHECK_DEBUG) console.log(r);
    expect(r.leanOnly).toBe(0);
    expect(r.both).toBeGreaterThan(100);
  });

  it('CdimgReader.check tells what open tells, refuses what open refuses with its error, and knows its copies', async () => {
    const dir = await fsp.mkdtemp(join(tmpdir(), 'd4fs-check-'));
    try {
      forgetOpenedIndexes();
      const entries = tree(new Prng(31), 2, 10);
      // the blob section of these files ends where their chunks do
      const blobs = blobsOf(entries);
      const end = Math.max(...blobs.flatMap((b) => b.chunks.map((c) => c.offset + c.storedSize)));
      const good = await fileOf(dir, 'good.cdimg', encode(entries, blobs), end - HEADER_SIZE);
      const c = await CdimgReader.check(good);
      const r = await CdimgReader.open(good);
      await r.close();
      expect([c.imageId, c.rootDigest, c.isDelta, c.hasTree, c.fileSize]).toEqual([r.imageId, r.rootDigest, false, true, r.fileSize]);
      expect(c.storedIndex).toBeDefined();
      // a copy is the checked file; a copy with another index (same size) is not
      const copy = join(dir, 'copy.cdimg');
      await fsp.copyFile(good, copy);
      expect(await sameStoredIndex(copy, c)).toBe(true);
      const bytes = await fsp.readFile(copy);
      bytes[bytes.length - 1] ^= 1;
      await fsp.writeFile(copy, bytes);
      expect(await sameStoredIndex(copy, c)).toBe(false);
      // hostile: refused as open refuses it, with its error
      const at = entries.findIndex((e) => e.type === FileType.REG);
      const bad = await fileOf(dir, 'bad.cdimg', encode(entries.map((e, i) => (i === at ? { ...e, size: e.size + 1 } : e)), blobs), end - HEADER_SIZE);
      const fromOpen = await CdimgReader.open(bad).then(() => undefined, (e: unknown) => e);
      const fromCheck = await CdimgReader.check(bad).then(() => undefined, (e: unknown) => e);
      expect(fromOpen).toBeInstanceOf(D4fsError);
      expect([(fromCheck as D4fsError).kind, (fromCheck as Error).message]).toEqual([(fromOpen as D4fsError).kind, (fromOpen as Error).message]);
      // a chunk past the blob section (the file's own index offset bounds it)
      const short = await fileOf(dir, 'short.cdimg', encode(entries, blobs), end - HEADER_SIZE - 1);
      const shortOpen = (await CdimgReader.open(short).then(() => undefined, (e: unknown) => e)) as D4fsError;
      expect(shortOpen.kind).toBe('HOSTILE');
      await expect(CdimgReader.check(short)).rejects.toMatchObject({ kind: shortOpen.kind, message: shortOpen.message });
      // what the lean check leaves to the full path is still checked and told
      const dirAt = entries.findIndex((e) => e.path === 'bin/a');
      const sub = entries.filter((e) => e.path === 'bin/a' || e.path.startsWith('bin/a/'));
      const rest = entries.filter((e) => !sub.includes(e));
      const unsorted = [...rest.slice(0, rest.findIndex((e, i) => i > dirAt && !e.path.startsWith('bin'))), ...sub, ...rest.slice(rest.findIndex((e, i) => i > dirAt && !e.path.startsWith('bin')))];
      const odd = await fileOf(dir, 'odd.cdimg', encode(unsorted, blobs), end - HEADER_SIZE);
      const co = await CdimgReader.check(odd);
      expect(co.imageId).toBe(`sha256:${computeImageId(unsorted, indexOf(Kind.FULL, unsorted, []).image.configJson).toString('hex')}`);
      // with reuse, a file checked once is told from memory (imageInfo too)
      const again = await CdimgReader.check(good, { reuse: true });
      expect((await CdimgReader.check(good, { reuse: true })).storedIndex).toBeUndefined();
      expect(again.imageId).toBe(c.imageId);
      expect((await CdimgReader.imageInfo(good)).imageId).toBe(c.imageId);
    } finally {
      forgetOpenedIndexes();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('lean check of version 3 indexes (solid groups)', () => {
  /** The blobs of blobsOf with the one-chunk contents in groups of 5 members sharing a frame. */
  function grouped(entries: Entry[]): Blob[] {
    const blobs = blobsOf(entries);
    let n = 0;
    let frame = HEADER_SIZE;
    let g = 0;
    for (const b of blobs) {
      if (b.chunks.length !== 1) continue;
      if (n % 5 === 0) {
        frame = b.chunks[0].offset;
        g = 0;
      }
      b.chunks[0] = { ...b.chunks[0], codec: Codec.GROUP, offset: frame, storedSize: 300, groupOffset: g };
      g += b.size;
      n++;
    }
    return blobs;
  }
  const encode3 = (entries: Entry[], blobs: Blob[]): Buffer => encodeIndex(indexOf(Kind.FULL, entries, blobs, undefined, 3), { sectionDigest: SECTION });
  const lean3 = (raw: Buffer, header = 3) => checkIndexLean(raw, header, END, HEADER_SIZE);

  it('accepts what the full path accepts, and nothing it refuses', () => {
    const base = tree(new Prng(31), 3, 12);
    const ok = encode3(base, grouped(base));
    expect(full(ok).ok).toBe(true);
    expect(lean3(ok)?.hasTree).toBe(true);
    expect(lean3(ok, 2)).toBeUndefined(); // the header's version must be the index's
    const member = (bs: Blob[]): Blob => bs.find((b) => b.chunks[0]?.codec === Codec.GROUP) as Blob;
    const cases: [string, () => Buffer][] = [
      ['a group in a version 2 index', () => encodeIndex(indexOf(Kind.FULL, base, grouped(base)), { sectionDigest: SECTION })],
      ['a member past the group bound', () => { const bs = grouped(base); member(bs).chunks[0].groupOffset = GROUP_MAX_RAW; return encode3(base, bs); }],
      ['a group frame over the bound', () => { const bs = grouped(base); member(bs).chunks[0].storedSize = GROUP_MAX_STORED + 1; return encode3(base, bs); }],
      ['a member of several chunks', () => { const bs = grouped(base); const b = bs.find((x) => x.chunks.length === 2) as Blob; b.chunks[1] = { ...b.chunks[1], codec: Codec.GROUP, groupOffset: 0 }; return encode3(base, bs); }],
    ];
    for (const [what, make] of cases) {
      const raw = make();
      expect([what, full(raw).ok]).toEqual([what, false]);
      expect([what, lean3(raw), lean3(raw, 2)]).toEqual([what, undefined, undefined]);
    }
  });
});

describe('lean check of version 6 indexes (content numbers relative to the table order, paths by reference)', () => {
  /** The full path of CdimgReader.open without a parent, for version 6. */
  function full6(raw: Buffer): boolean {
    try {
      const index = decodeIndex(raw);
      if (index.formatVersion !== 6) throw new Error('version');
      if (index.treeEdit) validateIndexContents(index, END, HEADER_SIZE);
      else validateIndex(index, END, HEADER_SIZE);
      return true;
    } catch {
      return false;
    }
  }
  const encode6 = (entries: Entry[], blobs: Blob[] = blobsOf(entries)): Buffer => encodeIndex(indexOf(Kind.FULL, entries, blobs, undefined, 6), { sectionDigest: SECTION });
  function delta6(): Buffer {
    const parent = tree(new Prng(7), 3, 20);
    // every entry re-stamped (paths by reference), some contents changed (patched), one removed
    const child = parent.filter((_, i) => i !== 5).map((e) => ({ ...e, mtimeSec: e.mtimeSec + 7, ...(e.type === FileType.REG && e.path.endsWith('1') ? { size: 4, digest: sha(`new ${e.path}`) } : {}) }));
    const blobs: Blob[] = child
      .filter((e) => e.type === FileType.REG && e.path.endsWith('1'))
      .map((e) => ({ digest: e.digest, size: 4, encoding: Encoding.PATCH, chunks: [{ offset: HEADER_SIZE, storedSize: 3, storedDigest: sha('s'), rawSize: 4, rawDigest: e.digest, codec: Codec.ZSTD_PATCH, baseDigest: sha('base'), baseOffset: 0, baseSize: 9 }] }));
    return encodeIndex(indexOf(Kind.DELTA, child, blobs, sha('parent'), 6), { sectionDigest: SECTION, parentEntries: parent });
  }
  const lean6 = (raw: Buffer, header = 6) => checkIndexLean(raw, header, END, HEADER_SIZE);

  it('accepts what the full path accepts, with the same ids; smaller than version 2', () => {
    for (const seed of [1, 2, 3]) {
      const entries = tree(new Prng(seed), 4, 30);
      const raw = encode6(entries);
      expect(full6(raw)).toBe(true);
      const l = lean6(raw);
      expect(l?.hasTree).toBe(true);
      expect(l?.head.imageId.equals(computeImageId(entries, indexOf(Kind.FULL, entries, []).image.configJson))).toBe(true);
      expect(decodeIndex(raw).entries.map((e) => e.digest.toString('hex'))).toEqual(entries.map((e) => e.digest.toString('hex')));
      expect(raw.length).toBeLessThan(encode(entries).length);
      expect(lean6(raw, 5)).toBeUndefined();
    }
    const d = delta6();
    expect(full6(d)).toBe(true);
    expect(lean6(d)?.hasTree).toBe(false);
  });

  it('accepts no damaged index that the full path refuses', () => {
    const r = damaged(new Prng(606), [encode6(tree(new Prng(21), 3, 10)), encode6(tree(new Prng(22), 1, 6)), delta6()], full6, (raw) => lean6(raw) !== undefined);
    expect(r.leanOnly).toBe(0);
    expect(r.both).toBeGreaterThan(100);
  });
});
