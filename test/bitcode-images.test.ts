/**
 * Images holding LLVM bitcode (issue 14 item 3): `cdimg diff` codes the changed `.bc` files
 * with the llvm-bitcode codec, and the deltas patch, chain, merge (compose and rediff) and
 * verify to the images that convert makes, file for file.
 */
import { createHash } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { imageOfFiles } from './helpers/cdimg';
import { convertImage } from '../src/convert/convert';
import { CdimgReader } from '../src/format/reader';
import { Codec } from '../src/format/types';
import { diffImages } from '../src/delta/diff';
import { patchImage } from '../src/delta/patch';
import { mergeDeltas } from '../src/delta/merge';
import { unpackImage } from '../src/unpack/unpack';
import { verifyCdimg } from '../src/unpack/verify';
import { assemble, hasLlvmAs, llvmModule } from './helpers/llvm';

jest.setTimeout(120_000);

if (!hasLlvmAs) console.warn('SKIPPED: test/bitcode-images.test.ts needs llvm-as (Debian package llvm), which this machine lacks');
const itLlvm = hasLlvmAs ? it : it.skip;

let work: string;
const at = (f: string): string => path.join(work, f);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Version `v` of the image: three bitcode modules (one changed at each version) and a text file. */
function files(v: number): { name: string; data: Buffer }[] {
  const bc = (name: string, n: number, changedAt: number): Buffer => assemble(work, `${name}-${v}`, llvmModule(n, v >= changedAt, v));
  return [
    { name: 'lib/bitcode/a.bc', data: bc('a', 120, 2) },
    { name: 'lib/bitcode/b.bc', data: bc('b', 60, 3) },
    { name: 'lib/bitcode/sub/c.bc', data: bc('c', 30, 99) },
    { name: 'etc/notes.txt', data: Buffer.from(`version ${v}\n`) },
  ];
}

async function image(v: number): Promise<string> {
  return imageOfFiles(at(`img${v}`), files(v));
}

async function idOf(paths: string[]): Promise<string> {
  const rs = await CdimgReader.openChain(paths);
  const id = rs[rs.length - 1].imageId;
  await Promise.all(rs.map((r) => r.close()));
  return id;
}

/** Every regular file under `dir` with its sha256, by relative path. */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out[path.relative(dir, p)] = sha(readFileSync(p));
    }
  };
  await walk(dir);
  return out;
}

beforeAll(async () => {
  work = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-bitcode-images-'));
});
afterAll(async () => {
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

describe('images with LLVM bitcode', () => {
  itLlvm('are diffed with the llvm-bitcode codec; the deltas patch, chain, merge and verify to the converted images', async () => {
    for (const v of [1, 2, 3]) await convertImage({ ref: await image(v), output: at(`v${v}.cdimg`) });
    const ids = await Promise.all([1, 2, 3].map((v) => idOf([at(`v${v}.cdimg`)])));
    // groups off: each changed file coded alone (a group's frame may also win; groups.test.ts covers those)
    await diffImages({ oldPath: at('v1.cdimg'), newPath: at('v2.cdimg'), out: at('d12.cdimg'), groups: false });
    await diffImages({ oldPath: at('v2.cdimg'), newPath: at('v3.cdimg'), out: at('d23.cdimg') });
    const d12 = await CdimgReader.open(at('d12.cdimg'));
    const codecs = d12.index.blobs.flatMap((b) => b.chunks.map((c) => c.codec));
    await d12.close();
    expect(codecs).toContain(Codec.LLVM_BITCODE);

    expect(await idOf([at('v1.cdimg'), at('d12.cdimg')])).toBe(ids[1]);
    expect(await idOf([at('v1.cdimg'), at('d12.cdimg'), at('d23.cdimg')])).toBe(ids[2]);
    // patch: byte-identical to what convert makes of v2
    await patchImage({ base: at('v1.cdimg'), deltas: [at('d12.cdimg')], out: at('p2.cdimg') });
    expect(sha(readFileSync(at('p2.cdimg')))).toBe(sha(readFileSync(at('v2.cdimg'))));
    // merged both ways, then patched and unpacked: v3's files
    for (const strategy of ['compose', 'rediff'] as const) {
      const m = at(`m-${strategy}.cdimg`);
      await mergeDeltas({ deltas: [at('d12.cdimg'), at('d23.cdimg')], out: m, strategy, base: at('v1.cdimg') });
      expect(await idOf([at('v1.cdimg'), m])).toBe(ids[2]);
      await patchImage({ base: at('v1.cdimg'), deltas: [m], out: at(`p3-${strategy}.cdimg`) });
      await unpackImage(at(`p3-${strategy}.cdimg`), at(`u3-${strategy}`));
    }
    await unpackImage(at('v3.cdimg'), at('u3'));
    const want = await tree(at('u3'));
    expect(Object.keys(want)).toHaveLength(4);
    for (const strategy of ['compose', 'rediff']) expect(await tree(at(`u3-${strategy}`))).toEqual(want);
    // every blob of the delta decoded and checked against its digest, with its base image
    const v = await verifyCdimg(at('d12.cdimg'), 1, [at('v1.cdimg')]);
    expect(v.treeChecked).toBe(true);
  });
});
