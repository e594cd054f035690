/**
 * Solid groups of small contents (format version 3, issues 14 and 18): convert
 * writes them, every reader takes members out of them (each checked against its
 * digest), `cdimg patch` lays out the same groups as convert (same bytes), a
 * damaged group or a hostile member record is CORRUPT or HOSTILE (never wrong
 * bytes, never a crash), and version 2 files (test/fixtures/v2) still read and
 * mix with version 3 in chains, diffs and merges.
 */
import { createHash } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { imageOfFiles } from './helpers/cdimg';
import { convertImage } from '../src/convert/convert';
import { CdimgReader } from '../src/format/reader';
import { Codec, Encoding, FORMAT_VERSION, GROUP_MAX_RAW } from '../src/format/types';
import { GROUP_SMALL_MAX, GROUP_TARGET_RAW, planGroups } from '../src/format/group';
import { diffImages } from '../src/delta/diff';
import { patchImage } from '../src/delta/patch';
import { mergeDeltas } from '../src/delta/merge';
import { unpackImage } from '../src/unpack/unpack';
import { verifyCdimg } from '../src/unpack/verify';
import { D4fsError } from '../src/errors';
import { packageRoot } from '../src/util/paths';
import { rewriteIndex } from './helpers/forge';
import { Prng } from './helpers/prng';
import { compareTrees, walkTree } from './fixtures/treewalk';

jest.setTimeout(180_000);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
let work: string;
const at = (f: string): string => path.join(work, f);

async function expectKind(p: Promise<unknown>, kinds: string[]): Promise<D4fsError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(D4fsError);
  expect(kinds).toContain((err as D4fsError).kind);
  return err as D4fsError;
}

/** Files of a small "package tree": texts with shared words, a few binaries, one large file. */
function files(version: number): { name: string; data: Buffer }[] {
  const rnd = new Prng(42);
  const words = ['alpha', 'beta', 'gamma', 'delta', 'config', 'value', 'module', 'export', 'function', 'return'];
  const out: { name: string; data: Buffer }[] = [];
  for (let d = 0; d < 6; d++) {
    for (let i = 0; i < 60; i++) {
      const n = 200 + rnd.int(3000);
      let s = `// file ${d}/${i}\n`;
      while (s.length < n) s += `${words[rnd.int(words.length)]} ${words[rnd.int(words.length)]} = ${rnd.int(1000)};\n`;
      if (version >= 2 && i % 17 === 0) s += 'changed in version 2\n';
      if (version >= 3 && i % 13 === 0) s += 'changed in version 3\n';
      out.push({ name: `pkg${d}/lib/f${String(i).padStart(3, '0')}.js`, data: Buffer.from(s) });
    }
    out.push({ name: `pkg${d}/bin/tool`, data: Buffer.from(Array.from({ length: d === 0 ? 20_000 : 70_000 }, () => rnd.int(256))) });
  }
  out.push({ name: 'data/big.bin', data: Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7 + version) & 0xff)) });
  if (version >= 2) out.push({ name: 'pkg0/lib/new.js', data: Buffer.from('a new file\n') });
  return out;
}

async function image(version: number): Promise<string> {
  return imageOfFiles(at(`img${version}`), files(version));
}

beforeAll(async () => {
  work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-groups-'));
  await convertImage({ ref: await image(1), output: at('v1.cdimg') });
  await convertImage({ ref: await image(2), output: at('v2.cdimg') });
  await convertImage({ ref: await image(3), output: at('v3.cdimg') });
});
afterAll(async () => {
  await fsp.rm(work, { recursive: true, force: true });
});

describe('planGroups', () => {
  it('groups runs of small contents, closed at the target size or by a content it does not group', () => {
    const small = 1000;
    const plan = Array.from(planGroups([small, small, GROUP_SMALL_MAX + 1, small, 0, small, small, small]));
    expect(plan).toEqual([0, 0, -1, -1, -1, 1, 1, 1]);
    // a run holds at most GROUP_TARGET_RAW bytes: cut before the content that would take it past
    const n = Math.floor(GROUP_TARGET_RAW / small) + 3;
    const long = Array.from(planGroups(new Array<number>(n).fill(small)));
    expect(long.filter((g) => g === 0)).toHaveLength(Math.floor(GROUP_TARGET_RAW / small));
    expect(long.at(-1)).toBe(1);
    expect(Array.from(planGroups([GROUP_SMALL_MAX, GROUP_SMALL_MAX, GROUP_SMALL_MAX, 1]))).toEqual(GROUP_SMALL_MAX * 2 <= GROUP_TARGET_RAW ? [0, 0, 1, 1] : [-1, -1, 0, 0]);
    // a content of more than one chunk is never grouped
    expect(Array.from(planGroups([5000, 5000, 5000], 4096))).toEqual([-1, -1, -1]);
  });
});

describe('convert writes solid groups', () => {
  it('of the small files; every reader gets each file back, checked', async () => {
    const r = await CdimgReader.open(at('v1.cdimg'));
    try {
      expect(r.index.formatVersion).toBe(FORMAT_VERSION);
      const members = r.index.blobs.filter((b) => b.chunks[0]?.codec === Codec.GROUP);
      const groups = new Set(members.map((b) => b.chunks[0].offset));
      expect(members.length).toBeGreaterThan(300);
      expect(groups.size).toBeLessThan(members.length / 10);
      // a 20 KB binary is a member (≤ 32 KiB); the 70 KB ones and the 300 KB file are stored alone
      const codecOf = (name: string): Codec | undefined => r.blob(sha((files(1).find((f) => f.name === name) as { data: Buffer }).data))?.chunks[0].codec;
      expect([codecOf('pkg0/bin/tool'), codecOf('pkg1/bin/tool'), codecOf('data/big.bin')]).toEqual([Codec.GROUP, Codec.ZSTD, Codec.ZSTD]);
      for (const f of files(1)) expect((await r.readContent(Buffer.from(sha(f.data), 'hex'))).equals(f.data)).toBe(true);
    } finally {
      await r.close();
    }
    await unpackImage(at('v1.cdimg'), at('u1'));
    for (const f of files(1)) expect(readFileSync(at(`u1/${f.name}`)).equals(f.data)).toBe(true);
    const v = await verifyCdimg(at('v1.cdimg'));
    expect(v.contentsVerified).toBe(files(1).length);
    // a group's frame counted once: the stored bytes are the blob section
    const h = await CdimgReader.open(at('v1.cdimg'));
    expect(v.storedBytes).toBe(h.header.indexOffset - 128);
    await h.close();
  });

  it('and the stored image is smaller than with a frame per file', async () => {
    // the same image with groups undone (each member a frame of its own at the same level, as version 2 wrote it)
    await rewriteIndex(at('v1.cdimg'), at('v1-ungrouped.cdimg'), () => undefined, { version: 1 });
    const g = await CdimgReader.open(at('v1.cdimg'));
    const u = await CdimgReader.open(at('v1-ungrouped.cdimg'));
    try {
      const frames = new Map<number, number>();
      let ownFrames = 0;
      for (const b of g.index.blobs) {
        const c = b.chunks[0];
        if (c?.codec !== Codec.GROUP) continue;
        frames.set(c.offset, c.storedSize);
        ownFrames += u.blob(b.digest)!.chunks[0].storedSize;
      }
      const groupFrames = [...frames.values()].reduce((n, x) => n + x, 0);
      expect(groupFrames).toBeGreaterThan(0);
      // texts sharing their words (and one 20 KB random binary)
      expect(groupFrames).toBeLessThan(0.85 * ownFrames);
    } finally {
      await g.close();
      await u.close();
    }
  });

  it('that `cdimg patch` lays out alike: patch(v1, diff(v1, v2)) has the bytes of convert(v2)', async () => {
    await diffImages({ oldPath: at('v1.cdimg'), newPath: at('v2.cdimg'), out: at('d12.cdimg') });
    await patchImage({ base: at('v1.cdimg'), deltas: [at('d12.cdimg')], out: at('p2.cdimg') });
    expect(sha(readFileSync(at('p2.cdimg')))).toBe(sha(readFileSync(at('v2.cdimg'))));
  });
});

describe('a delta codes small changed contents in groups', () => {
  it('against the concatenation of their bases, smaller than coded alone; chains, merges and patch decode them', async () => {
    await diffImages({ oldPath: at('v1.cdimg'), newPath: at('v2.cdimg'), out: at('g12.cdimg') });
    await diffImages({ oldPath: at('v1.cdimg'), newPath: at('v2.cdimg'), out: at('a12.cdimg'), groups: false });
    const [g, a] = [(await fsp.stat(at('g12.cdimg'))).size, (await fsp.stat(at('a12.cdimg'))).size];
    expect(g).toBeLessThan(a);
    const r = await CdimgReader.open(at('g12.cdimg'), { parent: await CdimgReader.open(at('v1.cdimg')) });
    try {
      const members = r.index.blobs.filter((b) => b.chunks[0]?.codec === Codec.GROUP);
      // the 21 edited .js files against their old versions (and the new one, no base): one group, every member PATCH
      expect(members.length).toBeGreaterThanOrEqual(20);
      expect(members.every((b) => b.encoding === Encoding.PATCH)).toBe(true);
      expect(members.filter((b) => b.chunks[0].baseDigest.length === 32).length).toBeGreaterThanOrEqual(20);
      expect(new Set(members.map((b) => b.chunks[0].offset)).size).toBe(1);
      // a member cannot be read without its bases
      await expect(r.readFullChunk(members[0].chunks[0])).rejects.toThrow();
    } finally {
      await r.close();
    }
    // v2 back from v1 and either delta, through the chain decoder: the same bytes as converting v2
    for (const d of ['g12', 'a12']) {
      await patchImage({ base: at('v1.cdimg'), deltas: [at(`${d}.cdimg`)], out: at(`${d}-p.cdimg`) });
      expect(sha(readFileSync(at(`${d}-p.cdimg`)))).toBe(sha(readFileSync(at('v2.cdimg'))));
    }
    // v1 → v2 → v3, merged by composition (group frames and all their members' bases copied) and by rediff
    await diffImages({ oldPath: at('v2.cdimg'), newPath: at('v3.cdimg'), out: at('g23.cdimg') });
    for (const strategy of ['compose', 'rediff'] as const) {
      await mergeDeltas({ deltas: [at('g12.cdimg'), at('g23.cdimg')], out: at(`gm-${strategy}.cdimg`), strategy, base: at('v1.cdimg') });
      await patchImage({ base: at('v1.cdimg'), deltas: [at(`gm-${strategy}.cdimg`)], out: at(`gm-${strategy}-p.cdimg`) });
      expect(sha(readFileSync(at(`gm-${strategy}-p.cdimg`)))).toBe(sha(readFileSync(at('v3.cdimg'))));
    }
    // a rediff is diff(A, last): the same bytes, groups and all
    await diffImages({ oldPath: at('v1.cdimg'), newPath: at('v3.cdimg'), out: at('g13.cdimg') });
    expect(sha(readFileSync(at('gm-rediff.cdimg')))).toBe(sha(readFileSync(at('g13.cdimg'))));
    // back and forth (v1 → v2 → v1 → v2, and v1 → v2 → v1): composition copies each content from the lowest
    // delta that stores it, and A's contents not at all, so no two contents patch one another; rediff merges too
    await diffImages({ oldPath: at('v2.cdimg'), newPath: at('v1.cdimg'), out: at('g21.cdimg') });
    for (const strategy of ['compose', 'rediff'] as const) {
      await mergeDeltas({ deltas: [at('g12.cdimg'), at('g21.cdimg'), at('g12.cdimg')], out: at(`gbf-${strategy}.cdimg`), strategy, base: strategy === 'rediff' ? at('v1.cdimg') : undefined });
      await patchImage({ base: at('v1.cdimg'), deltas: [at(`gbf-${strategy}.cdimg`)], out: at(`gbf-${strategy}-p.cdimg`) });
      expect(sha(readFileSync(at(`gbf-${strategy}-p.cdimg`)))).toBe(sha(readFileSync(at('v2.cdimg'))));
    }
    // composed without the base, the round trip stores nothing: every content is A's
    const back = await mergeDeltas({ deltas: [at('g12.cdimg'), at('g21.cdimg')], out: at('gback.cdimg') });
    expect(back.contents.patched + back.contents.full).toBe(0);
    await patchImage({ base: at('v1.cdimg'), deltas: [at('gback.cdimg')], out: at('gback-p.cdimg') });
    expect(sha(readFileSync(at('gback-p.cdimg')))).toBe(sha(readFileSync(at('v1.cdimg'))));
    // and the chain of both deltas
    await patchImage({ base: at('v1.cdimg'), deltas: [at('g12.cdimg'), at('g23.cdimg')], out: at('g123-p.cdimg') });
    expect(sha(readFileSync(at('g123-p.cdimg')))).toBe(sha(readFileSync(at('v3.cdimg'))));
    // verify checks what it can decode alone and counts group members coded against bases as patches
    const v = await verifyCdimg(at('g12.cdimg'), undefined, [at('v1.cdimg')]);
    expect(v.patchChunks).toBeGreaterThanOrEqual(20);
  });

  it('damaged: CORRUPT when a member is built, never wrong bytes', async () => {
    const r = await CdimgReader.open(at('g12.cdimg'), { parent: await CdimgReader.open(at('v1.cdimg')) });
    const c = r.index.blobs.find((b) => b.chunks[0]?.codec === Codec.GROUP)!.chunks[0];
    await r.close();
    const good = readFileSync(at('g12.cdimg'));
    const rnd = new Prng(9);
    for (let k = 0; k < 6; k++) {
      const bad = Buffer.from(good);
      bad[c.offset + rnd.int(c.storedSize)] ^= 1 << rnd.int(8);
      await fsp.writeFile(at(`gflip${k}.cdimg`), bad);
      await expectKind(patchImage({ base: at('v1.cdimg'), deltas: [at(`gflip${k}.cdimg`)], out: at(`gflip${k}-p.cdimg`) }), ['CORRUPT']);
    }
  });
});

describe('a damaged or hostile group', () => {
  async function firstGroup(): Promise<{ offset: number; storedSize: number; members: string[] }> {
    const r = await CdimgReader.open(at('v1.cdimg'));
    try {
      const b0 = r.index.blobs.find((b) => b.chunks[0]?.codec === Codec.GROUP);
      const c0 = b0!.chunks[0];
      const members = r.index.blobs.filter((b) => b.chunks[0]?.offset === c0.offset).map((b) => b.digest.toString('hex'));
      return { offset: c0.offset, storedSize: c0.storedSize, members };
    } finally {
      await r.close();
    }
  }

  it('with flipped or cut bytes is CORRUPT for every member, never wrong bytes', async () => {
    const g = await firstGroup();
    const good = readFileSync(at('v1.cdimg'));
    const rnd = new Prng(5);
    for (let k = 0; k < 12; k++) {
      const bad = Buffer.from(good);
      const pos = g.offset + (k < 4 ? k : rnd.int(g.storedSize)); // the frame's magic and header, then anywhere
      bad[pos] ^= 1 << rnd.int(8);
      const p = at(`flip${k}.cdimg`);
      await fsp.writeFile(p, bad);
      const r = await CdimgReader.open(p);
      try {
        for (const m of g.members.slice(0, 3)) await expectKind(r.readContent(Buffer.from(m, 'hex')), ['CORRUPT']);
      } finally {
        await r.close();
      }
      await expectKind(verifyCdimg(p), ['CORRUPT']);
      await expectKind(unpackImage(p, at(`uflip${k}`)), ['CORRUPT']);
    }
  });

  it('with a member outside its group or a group over the bounds is refused', async () => {
    const g = await firstGroup();
    const cases: [string, (c: import('../src/format/types').Chunk) => void, string[]][] = [
      ['offset past the group', (c) => (c.groupOffset = GROUP_MAX_RAW - 1), ['HOSTILE', 'CORRUPT']],
      ['offset inside the group, wrong member', (c) => (c.groupOffset = (c.groupOffset as number) + 1), ['CORRUPT']],
      ['negative offset', (c) => (c.groupOffset = -1), ['HOSTILE', 'CORRUPT']],
      ['frame over the bound', (c) => (c.storedSize = GROUP_MAX_RAW * 2), ['HOSTILE', 'CORRUPT']],
    ];
    let tried = 0;
    for (const [what, mutate, kinds] of cases) {
      const p = at(`hostile-${what.replace(/\W+/g, '-')}.cdimg`);
      try {
        await rewriteIndex(at('v1.cdimg'), p, (ix) => {
          const b = ix.blobs.find((x) => x.digest.toString('hex') === g.members[1]);
          mutate(b!.chunks[0]);
        });
      } catch {
        continue; // the writer refuses to write it (a negative varint)
      }
      tried++;
      const opened = await CdimgReader.open(p).then(
        (r) => r,
        (e: unknown) => e as Error,
      );
      if (opened instanceof CdimgReader) {
        try {
          await expectKind(opened.readContent(Buffer.from(g.members[1], 'hex')), kinds);
          // its neighbours still read
          expect(sha(await opened.readContent(Buffer.from(g.members[0], 'hex')))).toBe(g.members[0]);
        } finally {
          await opened.close();
        }
      } else {
        expect(opened).toBeInstanceOf(D4fsError);
        expect(kinds).toContain((opened as D4fsError).kind);
      }
    }
    expect(tried).toBeGreaterThanOrEqual(3);
  });

  it('in a file of version 2 is refused when the file is opened', async () => {
    const p = at('v2-with-group.cdimg');
    await rewriteIndex(at('v1.cdimg'), p, (ix) => {
      ix.formatVersion = 2;
    });
    await expectKind(CdimgReader.open(p), ['CORRUPT']);
  });
});

describe('format version 2 files (test/fixtures/v2)', () => {
  const FIX = path.join(packageRoot(), 'test', 'fixtures', 'v2');
  it('still read, chain with version 3 deltas and merge', async () => {
    const v2 = path.join(FIX, 'v2.cdimg');
    const v3 = path.join(FIX, 'v3.cdimg');
    const d23 = path.join(FIX, 'v2-v3.cdimg');
    const [r2, r3] = [await CdimgReader.open(v2), await CdimgReader.open(v3)];
    expect([r2.index.formatVersion, r3.index.formatVersion]).toEqual([2, 2]);
    const v3Id = r3.imageId;
    await r2.close();
    await r3.close();
    // the version 2 chain patches to the image of v3.cdimg, written in version 3 with groups
    const p = await patchImage({ base: v2, deltas: [d23], out: at('fx-p3.cdimg') });
    expect(p.imageId).toBe(v3Id);
    const rp = await CdimgReader.open(at('fx-p3.cdimg'));
    expect(rp.index.formatVersion).toBe(FORMAT_VERSION);
    expect(rp.index.blobs.some((b) => b.chunks[0]?.codec === Codec.GROUP)).toBe(true);
    await rp.close();
    await unpackImage(v3, at('fx-u3'));
    await unpackImage(at('fx-p3.cdimg'), at('fx-up3'));
    expect(compareTrees(await walkTree(at('fx-u3')), await walkTree(at('fx-up3')))).toEqual([]);
    // a version 3 delta on a version 2 full image, and back; merged with a version 2 delta
    await diffImages({ oldPath: v3, newPath: at('fx-p3.cdimg'), out: at('fx-d33.cdimg') });
    await diffImages({ oldPath: at('fx-p3.cdimg'), newPath: v2, out: at('fx-d32.cdimg') });
    const m = await mergeDeltas({ deltas: [d23, at('fx-d32.cdimg')], out: at('fx-m.cdimg'), base: v2 });
    expect(m.output).toBe(at('fx-m.cdimg'));
    const chain = await CdimgReader.openChain([v2, at('fx-m.cdimg')]);
    expect(chain[1].imageId).toBe(chain[0].imageId); // v2 → v3 → v2
    await Promise.all(chain.map((r) => r.close()));
    const reg = [...(await walkTree(at('fx-u3'))).values()].filter((e) => e.type === 'file');
    expect(reg.length).toBeGreaterThan(20);
  });
});
