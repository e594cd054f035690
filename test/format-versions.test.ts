/**
 * Format versions 1 and 2 side by side (issue 18): files written by d4fs
 * before version 2 (test/fixtures/v1: a full image and two deltas, made by
 * make-trees.sh and the version 1 writer) keep reading everywhere, chains
 * mix versions, and a version 2 delta's tree — an edit script against its
 * parent's — is rebuilt and its image id checked wherever it is stored: a
 * forged id is CORRUPT at the store and at the server. Version 3 files
 * (test/fixtures/v3) chain and merge with version 4 deltas, whose re-stamped
 * files name their parent's entries instead of repeating digests. A version
 * 4 delta (test/fixtures/v4, whole base digests) chains and merges with
 * version 5 ones, which name their patch bases by an 8-byte prefix. A version
 * 5 delta (test/fixtures/v5, names written out) chains and merges with
 * version 6 ones, which take a changed entry's path from its parent's entry.
 * A version 6 delta (test/fixtures/v6, sizes written out) chains and merges
 * with version 7 ones, which take sizes from contents and parent entries.
 */
import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CdimgReader } from '../src/format/reader';
import { diffImages } from '../src/delta/diff';
import { mergeDeltas } from '../src/delta/merge';
import { patchImage } from '../src/delta/patch';
import { unpackImage } from '../src/unpack/unpack';
import { verifyCdimg } from '../src/unpack/verify';
import { LocalStore } from '../src/store/store';
import { D4fsError } from '../src/errors';
import { verifyDeltaTree } from '../src/server/blobs';
import { packageRoot } from '../src/util/paths';
import { rewriteIndex } from './helpers/forge';
import { runCli } from './helpers/cli';
import { compareTrees, walkTree } from './fixtures/treewalk';
import { FORMAT_VERSION, FileType, type InsertedEntry } from '../src/format/types';

jest.setTimeout(180_000);

const FIX = path.join(packageRoot(), 'test', 'fixtures', 'v1');
const v1 = path.join(FIX, 'v1.cdimg');
const d12 = path.join(FIX, 'v1-v2.cdimg');
const d23 = path.join(FIX, 'v2-v3.cdimg');
const v3 = path.join(FIX, 'v3.cdimg');
let work: string;
const at = (f: string): string => path.join(work, f);

async function versionOf(p: string): Promise<number> {
  const fh = await fsp.open(p, 'r');
  try {
    const b = Buffer.alloc(12);
    await fh.read(b, 0, 12, 0);
    return b.readUInt32LE(8);
  } finally {
    await fh.close();
  }
}

async function idOf(paths: string[]): Promise<string> {
  const rs = await CdimgReader.openChain(paths);
  const id = rs[rs.length - 1].imageId;
  await Promise.all(rs.map((r) => r.close()));
  return id;
}

async function expectKind(p: Promise<unknown>, kind: string, re?: RegExp): Promise<void> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(D4fsError);
  expect((err as D4fsError).kind).toBe(kind);
  if (re) expect((err as Error).message).toMatch(re);
}

/** The local store admits `files` (a chain, base first; the lean check) and then holds image `id`. */
async function storeAdmits(dir: string, files: string[], id: string): Promise<void> {
  const store = await LocalStore.open(dir);
  try {
    for (const f of files) await store.add(f);
    expect(store.hasImage(id)).toBe(true);
  } finally {
    store.close();
  }
}

/** A forged delta on `base` is CORRUPT where a chain is opened, where the local store admits it and where the server takes an upload. */
async function refusedEverywhere(dir: string, base: string, forged: string): Promise<void> {
  await expectKind(idOf([base, forged]), 'CORRUPT');
  const store = await LocalStore.open(dir);
  try {
    await store.add(base);
    await expectKind(store.add(forged), 'CORRUPT');
  } finally {
    store.close();
  }
  await expectKind(verifyDeltaTree(forged, [base], 'upload of forged'), 'CORRUPT');
}

let v3Id: string;

beforeAll(async () => {
  work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-versions-'));
  v3Id = await idOf([v3]);
});

afterAll(async () => {
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

describe('format version 1 files', () => {
  it('are version 1 and still read: the chain v1 → v2 → v3 patches to the image of v3.cdimg, unpacked byte for byte alike', async () => {
    for (const f of [v1, d12, d23, v3]) expect(await versionOf(f)).toBe(1);
    expect(await idOf([v1, d12, d23])).toBe(v3Id);
    const r = await patchImage({ base: v1, deltas: [d12, d23], out: at('p3.cdimg') });
    expect(r.imageId).toBe(v3Id);
    expect(await versionOf(at('p3.cdimg'))).toBe(FORMAT_VERSION); // what d4fs writes now
    await unpackImage(at('p3.cdimg'), at('u-patched'));
    await unpackImage(v3, at('u-v3'));
    expect(compareTrees(await walkTree(at('u-v3')), await walkTree(at('u-patched')))).toEqual([]);
    const v = await verifyCdimg(d23, 1);
    expect(v.treeChecked).toBe(true); // version 1 deltas carry their whole tree
  });

  it('mix with version 2 in chains, diffs and merges (both directions, with and without the base)', async () => {
    const p2 = at('p2.cdimg');
    await patchImage({ base: v1, deltas: [d12], out: p2 }); // version 2 full image of v2
    await diffImages({ oldPath: p2, newPath: v3, out: at('n23.cdimg') }); // v2 delta on a v2 full
    await diffImages({ oldPath: v1, newPath: p2, out: at('n12.cdimg') }); // v2 delta on a v1 full
    expect(await versionOf(at('n23.cdimg'))).toBe(FORMAT_VERSION);
    expect(await idOf([v1, d12, at('n23.cdimg')])).toBe(v3Id); // v1, v1 delta, v2 delta
    expect(await idOf([v1, at('n12.cdimg'), d23])).toBe(v3Id); // v1, v2 delta, v1 delta
    expect(await idOf([p2, d23])).toBe(v3Id); // v2 full, v1 delta
    for (const [name, deltas, base] of [
      ['m-v1v2', [d12, at('n23.cdimg')], undefined],
      ['m-v2v1', [at('n12.cdimg'), d23], undefined],
      ['m-v2v2', [at('n12.cdimg'), at('n23.cdimg')], undefined],
      ['m-base', [at('n12.cdimg'), at('n23.cdimg')], v1],
    ] as const) {
      await mergeDeltas({ deltas: [...deltas], out: at(`${name}.cdimg`), base });
      expect(await idOf([v1, at(`${name}.cdimg`)])).toBe(v3Id);
    }
    // merged version 2 deltas without their base: the composed edit script, not the whole tree
    const alone = await CdimgReader.open(at('m-v2v2.cdimg'));
    expect(alone.hasTree).toBe(false);
    await alone.close();
  });
});

describe('format version 3 files (test/fixtures/v3)', () => {
  const FIX3 = path.join(packageRoot(), 'test', 'fixtures', 'v3');
  const f2 = path.join(FIX3, 'v2.cdimg');
  const f3 = path.join(FIX3, 'v3.cdimg');
  const f23 = path.join(FIX3, 'v2-v3.cdimg');

  it('still read, and chain and merge with version 4 deltas that take re-stamped contents from their parent', async () => {
    for (const f of [f2, f3, f23]) expect(await versionOf(f)).toBe(3);
    expect(await idOf([f2, f23])).toBe(v3Id);
    // v4: every regular file of v3 re-stamped, as a package upgrade does (contents unchanged)
    const v4 = at('fx3-restamped.cdimg');
    await rewriteIndex(
      f3,
      v4,
      (ix) => {
        for (const e of ix.entries) if (e.type === FileType.REG) e.mtimeSec += 3600;
      },
      { fixId: true },
    );
    const v4Id = await idOf([v4]);
    const d34 = at('fx3-d34.cdimg');
    await diffImages({ oldPath: f3, newPath: v4, out: d34 }); // a version 4 delta on a version 3 full image
    expect(await versionOf(d34)).toBe(FORMAT_VERSION);
    const alone = await CdimgReader.open(d34);
    const inserted = (alone.index.treeEdit?.inserted ?? []) as InsertedEntry[];
    const regs = inserted.filter((e) => e.type === FileType.REG);
    expect(regs.length).toBeGreaterThan(10);
    expect(regs.every((e) => e.parentRef !== undefined && e.digest.length === 0)).toBe(true); // no digest stored again
    expect(alone.index.blobs).toEqual([]); // and no content
    await alone.close();
    expect(await idOf([f2, f23, d34])).toBe(v4Id);
    const p4 = await patchImage({ base: f2, deltas: [f23, d34], out: at('fx3-p4.cdimg') });
    expect(p4.imageId).toBe(v4Id);
    await unpackImage(v4, at('fx3-u4'));
    await unpackImage(at('fx3-p4.cdimg'), at('fx3-up4'));
    expect(compareTrees(await walkTree(at('fx3-u4')), await walkTree(at('fx3-up4')))).toEqual([]);
    // merged with the version 3 delta, without the base (references composed) and with it
    for (const base of [undefined, f2]) {
      const m = at(`fx3-m-${base ? 'base' : 'alone'}.cdimg`);
      await mergeDeltas({ deltas: [f23, d34], out: m, base });
      expect(await idOf([f2, m])).toBe(v4Id);
    }
    // and back: a version 4 delta from the re-stamped image to v2 (the changed files by content, the rest by reference)
    const d42 = at('fx3-d42.cdimg');
    await diffImages({ oldPath: at('fx3-p4.cdimg'), newPath: f2, out: d42 });
    expect(await idOf([at('fx3-p4.cdimg'), d42])).toBe(await idOf([f2]));
    const v = await verifyCdimg(d34, 1, [f2, f23]);
    expect(v.treeChecked).toBe(true);
  });
});

describe('a version 2 delta', () => {
  it('opened alone has no tree; the commands that need one say how to give it', async () => {
    const d = at('n23.cdimg');
    const alone = await CdimgReader.open(d);
    expect(alone.hasTree).toBe(false);
    expect(alone.index.treeEdit?.inserted.length).toBeGreaterThan(0);
    expect(() => alone.requireTree()).toThrow(/--chain|chain/);
    await alone.close();
    const v = await verifyCdimg(d, 1);
    expect(v.treeChecked).toBe(false);
    const withChain = await verifyCdimg(d, 1, [at('p2.cdimg')]);
    expect(withChain.treeChecked).toBe(true);
    const show = await runCli(['cdimg', 'show', d]);
    expect(show.code).toBe(0);
    expect(show.stdout).toMatch(/kept from the parent/);
    const verify = await runCli(['cdimg', 'verify', d, '--chain', at('p2.cdimg')]);
    expect(verify.code).toBe(0);
    const wrong = await runCli(['cdimg', 'verify', d, '--chain', v1]);
    expect(wrong.code).toBe(5); // FAILED_PRECONDITION: v1 is not its parent
    expect(wrong.stderr).toMatch(/does not apply/);
  });

  it('with a forged image id is refused where it is stored: the local store and the server check it against the parent', async () => {
    const forged = at('forged.cdimg');
    await rewriteIndex(at('n23.cdimg'), forged, (ix) => {
      ix.imageId = randomBytes(32);
    });
    // alone it is well formed: only its tree, rebuilt on its parent's, gives it away
    const alone = await CdimgReader.open(forged);
    expect(alone.hasTree).toBe(false);
    await alone.close();
    const store = await LocalStore.open(at('store'));
    try {
      await store.add(v1);
      await store.add(d12);
      await expectKind(store.add(forged), 'CORRUPT', /image id/);
      await store.add(at('n23.cdimg'));
      expect(store.hasImage(v3Id)).toBe(true);
    } finally {
      store.close();
    }
    await expectKind(verifyDeltaTree(forged, [v1, d12], 'upload of forged'), 'CORRUPT', /upload of forged.*image id/);
    await verifyDeltaTree(at('n23.cdimg'), [v1, d12], 'upload');
    await expectKind(verifyDeltaTree(at('n23.cdimg'), undefined, 'upload'), 'FAILED_PRECONDITION', /full image first/);
  });
});

describe('format version 5: patch bases named by an 8-byte prefix (format/bases.ts)', () => {
  const FIX4 = path.join(packageRoot(), 'test', 'fixtures', 'v4');
  const d12v4 = path.join(FIX4, 'v1-v2.cdimg');
  const v2full = path.join(FIX, 'v2.cdimg');
  const basesOf = (r: CdimgReader): Buffer[] => r.index.blobs.flatMap((b) => b.chunks.map((c) => c.baseDigest).filter((d) => d.length > 0));

  it('are resolved against the chain below; version 4 deltas (full base digests) still read, chain and merge with them', async () => {
    expect(await versionOf(d12v4)).toBe(4);
    const v2Id = await idOf([v2full]);
    expect(await idOf([v1, d12v4])).toBe(v2Id);
    const v4alone = await CdimgReader.open(d12v4);
    const fullBases = basesOf(v4alone);
    await v4alone.close();
    expect(fullBases.length).toBeGreaterThan(0);
    expect(fullBases.every((d) => d.length === 32)).toBe(true);

    // the same delta written now: version 5, each base by its prefix, the stored contents the same
    const d12v5 = at('v5-d12.cdimg');
    await diffImages({ oldPath: v1, newPath: v2full, out: d12v5 });
    expect(await versionOf(d12v5)).toBe(FORMAT_VERSION);
    expect(FORMAT_VERSION).toBeGreaterThanOrEqual(5);
    const alone = await CdimgReader.open(d12v5);
    const prefixes = basesOf(alone);
    await alone.close();
    expect(prefixes.length).toBe(fullBases.length);
    expect(prefixes.every((d) => d.length === 8)).toBe(true);
    expect(prefixes.map((d) => d.toString('hex'))).toEqual(fullBases.map((d) => d.subarray(0, 8).toString('hex')));
    expect((await fsp.stat(d12v5)).size).toBeLessThan((await fsp.stat(d12v4)).size);
    // alone it is well formed (its bases are for the chain to resolve)
    expect((await verifyCdimg(d12v5, 1)).treeChecked).toBe(false);
    // in its chain, every base is the whole digest again
    const chain = await CdimgReader.openChain([v1, d12v5]);
    expect(basesOf(chain[1]).map((d) => d.toString('hex'))).toEqual(fullBases.map((d) => d.toString('hex')));
    expect(chain[1].imageId).toBe(v2Id);
    await Promise.all(chain.map((r) => r.close()));
    const p2 = await patchImage({ base: v1, deltas: [d12v5], out: at('v5-p2.cdimg') });
    expect(p2.imageId).toBe(v2Id);
    await unpackImage(v2full, at('v5-u2'));
    await unpackImage(at('v5-p2.cdimg'), at('v5-up2'));
    expect(compareTrees(await walkTree(at('v5-u2')), await walkTree(at('v5-up2')))).toEqual([]);

    // a version 5 delta on a version 4 one: chained, patched, merged (without the base and with it)
    const d23v5 = at('v5-d23.cdimg');
    await diffImages({ oldPath: v2full, newPath: v3, out: d23v5 });
    expect(await idOf([v1, d12v4, d23v5])).toBe(v3Id);
    expect((await patchImage({ base: v1, deltas: [d12v4, d23v5], out: at('v5-p3.cdimg') })).imageId).toBe(v3Id);
    for (const base of [undefined, v1]) {
      const m = at(`v5-m-${base ? 'base' : 'alone'}.cdimg`);
      await mergeDeltas({ deltas: [d12v4, d23v5], out: m, base });
      expect(await versionOf(m)).toBe(FORMAT_VERSION);
      expect(await idOf([v1, m])).toBe(v3Id);
      // and the other way round: a version 4 delta on a version 5 one
      const m2 = at(`v5-m2-${base ? 'base' : 'alone'}.cdimg`);
      await mergeDeltas({ deltas: [d12v5, path.join(FIX, 'v2-v3.cdimg')], out: m2, base });
      expect(await idOf([v1, m2])).toBe(v3Id);
    }
    const v = await verifyCdimg(d12v5, 1, [v1]);
    expect(v.treeChecked).toBe(true);
  });

  it('a prefix no content below begins fails the build of its content (NOT_FOUND or CORRUPT), never the chain or the process', async () => {
    const d = at('v5-d12-b.cdimg');
    await diffImages({ oldPath: v1, newPath: v2full, out: d });
    const lost = at('v5-lost-base.cdimg');
    let target = '';
    await rewriteIndex(d, lost, (ix) => {
      const b = ix.blobs.find((x) => x.chunks.some((c) => c.baseDigest.length === 8));
      if (!b) throw new Error('no base named by prefix');
      target = b.digest.toString('hex');
      for (const x of ix.blobs) for (const c of x.chunks) if (c.baseDigest.length === 8) c.baseDigest = randomBytes(8);
    });
    const { Chain } = await import('../src/delta/chain');
    const chain = await Chain.open([v1, lost]);
    try {
      const err = await chain.content(Buffer.from(target, 'hex')).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(D4fsError);
      expect(['NOT_FOUND', 'CORRUPT']).toContain((err as D4fsError).kind);
    } finally {
      await chain.close();
    }
    const perr = await patchImage({ base: v1, deltas: [lost], out: at('v5-lost-p.cdimg') }).then(() => undefined, (e: unknown) => e);
    expect(perr).toBeInstanceOf(D4fsError);
    expect(['NOT_FOUND', 'CORRUPT']).toContain((perr as D4fsError).kind);
  });
});

describe('format version 6: paths of changed entries by reference to the parent (format/tree-edit.ts)', () => {
  const FIX5 = path.join(packageRoot(), 'test', 'fixtures', 'v5');
  const d12v5 = path.join(FIX5, 'v1-v2.cdimg');
  const v2full = path.join(FIX, 'v2.cdimg');

  it('a version 6 delta takes them by reference, smaller; version 5 deltas still read, chain, patch and merge with it', async () => {
    expect(await versionOf(d12v5)).toBe(5);
    const v2Id = await idOf([v2full]);
    const v3Id = await idOf([v3]);
    expect(await idOf([v1, d12v5])).toBe(v2Id);
    const d12v6 = at('v6-d12.cdimg');
    await diffImages({ oldPath: v1, newPath: v2full, out: d12v6 });
    expect(await versionOf(d12v6)).toBe(FORMAT_VERSION);
    expect(FORMAT_VERSION).toBeGreaterThanOrEqual(6);
    // alone: the inserted entries that replace their parent's name it, without a name of their own
    const alone = await CdimgReader.open(d12v6);
    const refs = (alone.index.treeEdit?.inserted ?? []).filter((e) => e.pathRef !== undefined);
    await alone.close();
    expect(refs.length).toBeGreaterThan(0);
    expect(refs.every((e) => e.name === '')).toBe(true);
    expect((await fsp.stat(d12v6)).size).toBeLessThan((await fsp.stat(d12v5)).size);
    expect(await idOf([v1, d12v6])).toBe(v2Id);
    expect((await verifyCdimg(d12v6, 1, [v1])).treeChecked).toBe(true);
    const p2 = await patchImage({ base: v1, deltas: [d12v6], out: at('v6-p2.cdimg') });
    expect(p2.imageId).toBe(v2Id);
    await unpackImage(v2full, at('v6-u2'));
    await unpackImage(at('v6-p2.cdimg'), at('v6-up2'));
    expect(compareTrees(await walkTree(at('v6-u2')), await walkTree(at('v6-up2')))).toEqual([]);

    // mixed chains: a version 6 delta on the version 5 one, and the other way round; merged with and without the base
    const d23v6 = at('v6-d23.cdimg');
    await diffImages({ oldPath: v2full, newPath: v3, out: d23v6 });
    expect(await idOf([v1, d12v5, d23v6])).toBe(v3Id);
    expect((await patchImage({ base: v1, deltas: [d12v5, d23v6], out: at('v6-p3.cdimg') })).imageId).toBe(v3Id);
    for (const base of [undefined, v1]) {
      const m = at(`v6-m-${base ? 'base' : 'alone'}.cdimg`);
      await mergeDeltas({ deltas: [d12v5, d23v6], out: m, base });
      expect(await versionOf(m)).toBe(FORMAT_VERSION);
      expect(await idOf([v1, m])).toBe(v3Id);
      const m2 = at(`v6-m2-${base ? 'base' : 'alone'}.cdimg`);
      await mergeDeltas({ deltas: [d12v6, path.join(FIX, 'v2-v3.cdimg')], out: m2, base });
      expect(await idOf([v1, m2])).toBe(v3Id);
      // two version 6 deltas: the second's references point into the tree between them
      const m3 = at(`v6-m3-${base ? 'base' : 'alone'}.cdimg`);
      await mergeDeltas({ deltas: [d12v6, d23v6], out: m3, base });
      expect(await idOf([v1, m3])).toBe(v3Id);
    }
    // the local store admits it (the lean check reads the new column) and rebuilds its tree
    await storeAdmits(at('v6-store'), [v1, d12v6, d23v6], v3Id);
  });

  it('a path reference forged to another entry is refused where the tree is rebuilt (image id or tree check), never served', async () => {
    const d = at('v6-d12-f.cdimg');
    await diffImages({ oldPath: v1, newPath: v2full, out: d });
    const forged = at('v6-forged.cdimg');
    await rewriteIndex(d, forged, (ix) => {
      const x = ix.treeEdit?.inserted.find((e) => e.pathRef !== undefined && e.pathRef > 1);
      if (!x) throw new Error('no path reference');
      x.pathRef = (x.pathRef as number) - 1;
    });
    await refusedEverywhere(at('v6-store-f'), v1, forged);
  });
});

describe('format version 7: sizes the index says otherwise are not written (Columns.size)', () => {
  const FIX3 = path.join(packageRoot(), 'test', 'fixtures', 'v3');
  const f3 = path.join(FIX3, 'v3.cdimg');
  const d6 = path.join(packageRoot(), 'test', 'fixtures', 'v6', 'v3-restamped.cdimg');
  /** v3.cdimg with every regular file and symbolic link re-stamped by `hours` (as test/fixtures/v6 was made). */
  async function restamped(from: string, out: string, hours: number): Promise<string> {
    await rewriteIndex(
      from,
      out,
      (ix) => {
        for (const e of ix.entries) if (e.type === FileType.REG || e.type === FileType.SYMLINK) e.mtimeSec += 3600 * hours;
      },
      { fixId: true },
    );
    return idOf([out]);
  }

  it('a version 6 delta (sizes written out) still reads; version 7 ones take them from the parent, chain, patch and merge with it', async () => {
    expect(await versionOf(d6)).toBe(6);
    expect(FORMAT_VERSION).toBe(7);
    const re = at('v7-re.cdimg');
    const reId = await restamped(f3, re, 1);
    expect(await idOf([f3, d6])).toBe(reId);
    // the same change as version 7: every inserted entry takes its size from its parent's entry
    const d7 = at('v7-d.cdimg');
    await diffImages({ oldPath: f3, newPath: re, out: d7 });
    expect(await versionOf(d7)).toBe(7);
    const alone = await CdimgReader.open(d7);
    const ins = alone.index.treeEdit?.inserted ?? [];
    await alone.close();
    const regs = ins.filter((e) => e.type === FileType.REG);
    const links = ins.filter((e) => e.type === FileType.SYMLINK);
    expect(regs.length).toBeGreaterThan(10);
    expect(links.length).toBe(1);
    expect([...regs, ...links].every((e) => e.sizeRef === true && e.size === 0)).toBe(true); // resolved against the parent
    expect((await fsp.stat(d7)).size).toBeLessThan((await fsp.stat(d6)).size);
    expect(await idOf([f3, d7])).toBe(reId);
    expect((await verifyCdimg(d7, 1, [f3])).treeChecked).toBe(true);
    // patched: a version 7 full image, whose regular files' sizes are their contents'
    const p = await patchImage({ base: f3, deltas: [d7], out: at('v7-p.cdimg') });
    expect(p.imageId).toBe(reId);
    expect(await versionOf(at('v7-p.cdimg'))).toBe(7);
    await unpackImage(re, at('v7-u'));
    await unpackImage(at('v7-p.cdimg'), at('v7-up'));
    expect(compareTrees(await walkTree(at('v7-u')), await walkTree(at('v7-up')))).toEqual([]);

    // a version 7 delta on the version 6 one: its size references point into the tree the version 6 delta made
    const re2 = at('v7-re2.cdimg');
    const re2Id = await restamped(re, re2, 2);
    const d7b = at('v7-d2.cdimg');
    await diffImages({ oldPath: re, newPath: re2, out: d7b });
    expect(await idOf([f3, d6, d7b])).toBe(re2Id);
    expect((await patchImage({ base: f3, deltas: [d6, d7b], out: at('v7-p2.cdimg') })).imageId).toBe(re2Id);
    // merged (references composed to the base, sizes with them) with and without the base
    for (const base of [undefined, f3]) {
      for (const [name, deltas] of [['6-7', [d6, d7b]], ['7-7', [d7, d7b]]] as const) {
        const m = at(`v7-m-${name}-${base ? 'base' : 'alone'}.cdimg`);
        await mergeDeltas({ deltas: [...deltas], out: m, base });
        expect(await versionOf(m)).toBe(7);
        expect(await idOf([f3, m])).toBe(re2Id);
      }
    }
    // the local store admits them (the lean check reads the sizes as the decoder does) and rebuilds their trees
    await storeAdmits(at('v7-store'), [f3, d6, d7b], re2Id);
  });

  it('a size taken from the parent that the writer did not mean is refused where the tree is checked (image id), never served', async () => {
    const re = at('v7-f-re.cdimg');
    await restamped(f3, re, 1);
    const d = at('v7-f-d.cdimg');
    await diffImages({ oldPath: f3, newPath: re, out: d });
    // a regular file given a size of its own, one byte off its content's
    const forged = at('v7-forged.cdimg');
    await rewriteIndex(d, forged, (ix) => {
      const x = ix.treeEdit?.inserted.find((e) => e.type === FileType.REG && e.sizeRef);
      if (!x) throw new Error('no size reference');
      x.sizeRef = undefined;
      x.size = 1;
    });
    await refusedEverywhere(at('v7-store-f'), f3, forged);
  });
});
