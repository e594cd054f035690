/**
 * Deltas on real data (Debian packages of two and three versions, npm
 * packages with big binaries) and on hand-made edge cases:
 * patch(old, diff(old, new)) equals convert(new) byte for byte; merged chains
 * patch to the direct result; renames and moves are SAME; versioned names
 * find their base; chains are checked; damaged deltas are refused; export
 * round-trips.
 */
import { promises as fsp, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildDebImage, ImageName } from './fixtures/debimages';
import { buildNpmImage } from './fixtures/npmimages';
import { startRegistry, TestRegistry } from './helpers/registry';
import { convertImage } from '../src/convert/convert';
import { diffImages } from '../src/delta/diff';
import { mergeDeltas } from '../src/delta/merge';
import { patchImage } from '../src/delta/patch';
import { exportImage } from '../src/oci/export';
import { CdimgReader } from '../src/format/reader';
import { CdimgWriter } from '../src/format/writer';
import { Codec, Encoding } from '../src/format/types';
import { D4fsError } from '../src/errors';
import { WorkerPool } from '../src/workers/pool';
import { buildTar } from '../src/tar';
import { writeSimpleImage } from '../src/oci/writer';
import { packageRoot } from '../src/util/paths';
import { expectError } from './helpers/errors';
import { openTop } from './helpers/cdimg';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let work: string;
let pool: WorkerPool;
const cd = (name: string) => join(work, name);
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-delta-'));
  pool = new WorkerPool(2);
});
afterAll(async () => {
  await pool.close();
  await fsp.rm(work, { recursive: true, force: true });
});

async function convertDeb(name: ImageName): Promise<string> {
  const out = cd(`${name}.cdimg`);
  try {
    await fsp.access(out);
  } catch {
    await convertImage({ ref: (await buildDebImage(name)).ref, output: out, pool });
  }
  return out;
}

const same = (a: string, b: string) => readFileSync(a).equals(readFileSync(b));

describe('round trips on real images', () => {
  it.each([
    ['libssl-v1', 'libssl-v2'],
    ['nginx-v1', 'nginx-v2'],
    ['redis-v1', 'redis-v2'],
  ] as [ImageName, ImageName][])('%s → %s: patch(old, diff(old, new)) is convert(new) byte for byte', async (a, b) => {
    const [oldP, newP] = [await convertDeb(a), await convertDeb(b)];
    const delta = cd(`${a}-${b}.cdimg`);
    const s = await diffImages({ oldPath: oldP, newPath: newP, out: delta, pool });
    expect(s.files.patched + s.files.full).toBeGreaterThan(0);
    expect(s.deltaBytes).toBeLessThan(s.plainPullBytes);
    const out = cd(`${b}-patched.cdimg`);
    await patchImage({ base: oldP, deltas: [delta], out, pool });
    expect(same(out, newP)).toBe(true);
  });

  it('merges a 3-step chain; patching the merge gives the direct result (compose and rediff)', async () => {
    const [v1, v2, v3] = [await convertDeb('libssl-v1'), await convertDeb('libssl-v2'), await convertDeb('libssl-v3')];
    await diffImages({ oldPath: v1, newPath: v2, out: cd('s12.cdimg'), pool });
    await diffImages({ oldPath: v2, newPath: v3, out: cd('s23.cdimg'), pool });
    const direct = await diffImages({ oldPath: v1, newPath: v3, out: cd('s13.cdimg'), pool });
    const composed = await mergeDeltas({ deltas: [cd('s12.cdimg'), cd('s23.cdimg')], out: cd('m13.cdimg') });
    const rediffed = await mergeDeltas({ deltas: [cd('s12.cdimg'), cd('s23.cdimg')], out: cd('r13.cdimg'), strategy: 'rediff', base: v1, pool });
    for (const m of ['m13.cdimg', 'r13.cdimg', 's13.cdimg']) {
      await patchImage({ base: v1, deltas: [cd(m)], out: cd(`p-${m}`), pool });
      expect(same(cd(`p-${m}`), v3)).toBe(true);
    }
    // a chain applies directly too
    await patchImage({ base: v1, deltas: [cd('s12.cdimg'), cd('s23.cdimg')], out: cd('p-chain.cdimg'), pool });
    expect(same(cd('p-chain.cdimg'), v3)).toBe(true);
    expect(composed.parentId).toBe(direct.parentId);
    expect(composed.imageId).toBe(direct.imageId);
    expect(rediffed.deltaBytes).toBeLessThanOrEqual(composed.deltaBytes);
  });

  it('handles an npm package with a big binary (two versions of @esbuild/linux-x64)', async () => {
    const a = await buildNpmImage('@esbuild/linux-x64', '0.28.1');
    const b = await buildNpmImage('@esbuild/linux-x64', '0.28.2');
    await convertImage({ ref: a.ref, output: cd('esb1.cdimg'), pool });
    await convertImage({ ref: b.ref, output: cd('esb2.cdimg'), pool });
    const s = await diffImages({ oldPath: cd('esb1.cdimg'), newPath: cd('esb2.cdimg'), out: cd('esb12.cdimg'), pool });
    expect(s.files.patched).toBeGreaterThanOrEqual(1);
    const r = await openTop([cd('esb1.cdimg'), cd('esb12.cdimg')]);
    try {
      const bin = r.byPath.get('opt/esbuild-linux-x64/bin/esbuild');
      expect(bin?.size).toBeGreaterThan(4 * 1024 * 1024);
      const blob = r.blob(bin!.digest)!;
      // patched as one unit (whole files up to bsdiff's 16 MiB limit), against the whole old binary
      expect(blob.chunks).toHaveLength(1);
      expect(blob.encoding).toBe(Encoding.PATCH);
      expect(blob.chunks.reduce((n, c) => n + c.storedSize, 0)).toBeLessThan(bin!.size / 4);
    } finally {
      await r.close();
    }
    // in the full image the same binary is stored in 4 MiB chunks (lazy reads build only what they touch)
    const full = await CdimgReader.open(cd('esb2.cdimg'));
    try {
      const bin = full.byPath.get('opt/esbuild-linux-x64/bin/esbuild')!;
      expect(full.blob(bin.digest)!.chunks.length).toBe(Math.ceil(bin.size / full.index.chunkSize));
    } finally {
      await full.close();
    }
    await patchImage({ base: cd('esb1.cdimg'), deltas: [cd('esb12.cdimg')], out: cd('esb2p.cdimg'), pool });
    expect(same(cd('esb2p.cdimg'), cd('esb2.cdimg'))).toBe(true);
  });
});

describe('content addressing in the differ', () => {
  const rnd = (n: number, seed: number) => {
    const b = Buffer.alloc(n);
    let x = seed;
    for (let i = 0; i < n; i++) {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      b[i] = x >> 16;
    }
    return b;
  };
  it('makes renamed, moved and duplicated files SAME and patches versioned names against their neighbour', async () => {
    const lib1 = Buffer.concat([rnd(100000, 1), Buffer.from('version 1.0'), rnd(100000, 2)]);
    const lib2 = Buffer.concat([rnd(100000, 1), Buffer.from('version 2.0 with more'), rnd(100000, 2)]);
    const big = rnd(300000, 3);
    const v1 = buildTar([
      { header: { name: 'usr/lib/', type: 'dir' } },
      { header: { name: 'usr/lib/libfoo.so.1', type: 'file' }, data: lib1 },
      { header: { name: 'data/', type: 'dir' } },
      { header: { name: 'data/big', type: 'file' }, data: big },
      { header: { name: 'gone', type: 'file' }, data: Buffer.from('bye') },
    ]);
    const v2 = buildTar([
      { header: { name: 'usr/lib/', type: 'dir' } },
      { header: { name: 'usr/lib/libfoo.so.2', type: 'file' }, data: lib2 },
      { header: { name: 'moved/', type: 'dir' } },
      { header: { name: 'moved/big-renamed', type: 'file' }, data: big },
      { header: { name: 'moved/big-copy', type: 'file' }, data: big },
    ]);
    await writeSimpleImage(cd('ca'), 'v1', { layers: [v1] });
    await writeSimpleImage(cd('ca'), 'v2', { layers: [v2] });
    await convertImage({ ref: `oci:${cd('ca')}:v1`, output: cd('ca1.cdimg'), pool });
    await convertImage({ ref: `oci:${cd('ca')}:v2`, output: cd('ca2.cdimg'), pool });
    const s = await diffImages({ oldPath: cd('ca1.cdimg'), newPath: cd('ca2.cdimg'), out: cd('ca12.cdimg'), pool });
    expect(s.files).toEqual({ same: 2, patched: 1, full: 0, removed: 3 }); // libfoo.so.1, data/big, gone
    const r = await openTop([cd('ca1.cdimg'), cd('ca12.cdimg')]);
    try {
      expect(r.blob(r.byPath.get('moved/big-renamed')!.digest)!.encoding).toBe(Encoding.SAME);
      const lib = r.blob(r.byPath.get('usr/lib/libfoo.so.2')!.digest)!;
      expect(lib.encoding).toBe(Encoding.PATCH);
      expect(lib.chunks[0].baseDigest.equals(require('node:crypto').createHash('sha256').update(lib1).digest())).toBe(true);
      expect(lib.chunks[0].storedSize).toBeLessThan(2000);
    } finally {
      await r.close();
    }
    await patchImage({ base: cd('ca1.cdimg'), deltas: [cd('ca12.cdimg')], out: cd('ca2p.cdimg'), pool });
    expect(same(cd('ca2p.cdimg'), cd('ca2.cdimg'))).toBe(true);
  });
});

describe('chains are checked and damaged deltas refused', () => {
  let v1: string, v2: string, v3: string, d12: string, d23: string;
  beforeAll(async () => {
    [v1, v2, v3] = [await convertDeb('libssl-v1'), await convertDeb('libssl-v2'), await convertDeb('libssl-v3')];
    d12 = cd('c12.cdimg');
    d23 = cd('c23.cdimg');
    await diffImages({ oldPath: v1, newPath: v2, out: d12, pool });
    await diffImages({ oldPath: v2, newPath: v3, out: d23, pool });
  });

  it('refuses deltas that do not chain', async () => {
    await expectError(patchImage({ base: v2, deltas: [d12], out: cd('x.cdimg'), pool }), 'FAILED_PRECONDITION', /does not apply/);
    await expectError(patchImage({ base: v1, deltas: [d23], out: cd('x.cdimg'), pool }), 'FAILED_PRECONDITION', /does not apply/);
    await expectError(mergeDeltas({ deltas: [d23, d12], out: cd('x.cdimg') }), 'FAILED_PRECONDITION', /does not follow/);
    await expectError(diffImages({ oldPath: d12, newPath: v3, out: cd('x.cdimg'), pool }), 'FAILED_PRECONDITION', /is a delta/);
    await expect(fsp.access(cd('x.cdimg'))).rejects.toThrow();
  });

  it('refuses truncated and bit-flipped deltas', async () => {
    const buf = readFileSync(d12);
    await fsp.writeFile(cd('trunc.cdimg'), buf.subarray(0, buf.length - 100));
    await expectError(patchImage({ base: v1, deltas: [cd('trunc.cdimg')], out: cd('y.cdimg'), pool }), 'CORRUPT', /truncated or damaged/);
    // flip a byte inside the first patch chunk
    const r = await CdimgReader.open(d12);
    const patched = r.index.blobs.find((b) => b.encoding === Encoding.PATCH)!;
    const at = patched.chunks[0].offset + 3;
    await r.close();
    const flipped = Buffer.from(buf);
    flipped[at] ^= 0x40;
    await fsp.writeFile(cd('flip.cdimg'), flipped);
    const err = await patchImage({ base: v1, deltas: [cd('flip.cdimg')], out: cd('y.cdimg'), pool }).catch((e) => e);
    expect(String(err.message)).toMatch(/damaged|digest/);
    await expect(fsp.access(cd('y.cdimg'))).rejects.toThrow();
  });

  it('refuses a delta whose patch base is missing, and cycles of bases', async () => {
    const r = await CdimgReader.open(d12);
    const idx = r.index;
    const target = idx.blobs.find((b) => b.encoding === Encoding.PATCH)!;
    const stored = await r.readStored(target.chunks[0]);
    await r.close();
    const craft = async (name: string, mutate: (blobs: typeof idx.blobs) => void) => {
      const w = await CdimgWriter.create(cd(name));
      const off = await w.append(stored);
      const blobs = idx.blobs.map((b) => ({ ...b, chunks: b.chunks.map((c) => ({ ...c, offset: off, storedSize: stored.length, storedDigest: target.chunks[0].storedDigest })) }));
      mutate(blobs);
      await w.finish({ ...idx, blobs });
    };
    await craft('nobase.cdimg', (blobs) => {
      const b = blobs.find((x) => x.digest.equals(target.digest))!;
      b.chunks[0].baseDigest = Buffer.alloc(32, 7);
    });
    const e1 = await patchImage({ base: v1, deltas: [cd('nobase.cdimg')], out: cd('z.cdimg'), pool }).catch((e) => e);
    expect(String(e1.message)).toMatch(/not in this chain/);
    await craft('cycle.cdimg', (blobs) => {
      const b = blobs.find((x) => x.digest.equals(target.digest))!;
      b.chunks = [{ ...b.chunks[0], codec: Codec.ZSTD_PATCH, baseDigest: b.digest }];
    });
    const e2 = await patchImage({ base: v1, deltas: [cd('cycle.cdimg')], out: cd('z.cdimg'), pool }).catch((e) => e);
    expect(String(e2.message)).toMatch(/deeper than|cycle/);
    await expect(fsp.access(cd('z.cdimg'))).rejects.toThrow();
  });
});

describe('export', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry();
  });
  afterAll(async () => registry?.stop());

  it('exports to oci:, oci-archive: and docker:// and converts back to the same tree', async () => {
    const src = await convertDeb('nginx-v2');
    const before = await CdimgReader.open(src);
    const targets = [`oci:${cd('exp-layout')}:v2`, `oci-archive:${cd('exp.tar')}:v2`, `docker://${registry.host}/d4fs/exported:v2`];
    try {
      for (const [i, to] of targets.entries()) {
        const r = await exportImage(src, to, { pool });
        expect(r.layerBytes).toBeGreaterThan(1000);
        await convertImage({ ref: to, output: cd(`back${i}.cdimg`), pool });
        const after = await CdimgReader.open(cd(`back${i}.cdimg`));
        try {
          expect(after.index.entries).toEqual(before.index.entries);
          const cfg = JSON.parse(after.index.image.configJson.toString());
          const orig = JSON.parse(before.index.image.configJson.toString());
          expect(cfg.config).toEqual(orig.config);
          expect(cfg.rootfs.diff_ids).toHaveLength(1);
        } finally {
          await after.close();
        }
      }
      // skopeo reads what we wrote
      const { stdout } = await run('skopeo', ['inspect', `oci:${cd('exp-layout')}:v2`]);
      expect(JSON.parse(stdout).Layers).toHaveLength(1);
    } finally {
      await before.close();
    }
    const e = await exportImage(cd('c12.cdimg'), `oci:${cd('nope')}`, { pool }).catch((x) => x);
    expect((e as D4fsError).kind).toBe('FAILED_PRECONDITION');
  });
});

describe('ctr-cli cdimg diff/merge/patch', () => {
  it('diffs images converted on the fly and prints a JSON summary', async () => {
    const [a, b] = [await buildDebImage('libssl-v1'), await buildDebImage('libssl-v2')];
    const { stdout } = await run('node', [CLI, 'cdimg', 'diff', '--old-image', a.ref, '--new-image', b.ref, '--outCdimg', cd('cli12.cdimg'), '--threadNum', '2', '--json']);
    const s = JSON.parse(stdout);
    expect(s.files.same).toBeGreaterThan(100);
    expect(s.savingPercent).toBeGreaterThan(50);
    expect((await fsp.readdir(work)).filter((n) => n.startsWith('.cli12'))).toEqual([]);
    const bad = await run('node', [CLI, 'cdimg', 'merge', cd('cli12.cdimg'), '--out', cd('m.cdimg')]).catch((e) => e);
    expect(bad.code).toBe(2);
    const wrong = await run('node', [CLI, 'cdimg', 'patch', await convertDeb('libssl-v3'), cd('cli12.cdimg'), '--out', cd('m.cdimg')]).catch((e) => e);
    expect(wrong.code).toBe(5);
    expect(wrong.stderr).toMatch(/does not apply/);
  });
});

