/**
 * Fidelity on real images built from Debian packages: what convert records
 * and what unpack writes must equal what umoci (an independent
 * implementation) extracts from the original layers, file by file: content
 * hash, type, mode, uid, gid, mtime (ns), xattrs, link targets, hard links.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildDebImage, ImageName } from './fixtures/debimages';
import { walkTree, compareTrees, umociUnpack, TreeNode } from './fixtures/treewalk';
import { convertImage } from '../src/convert/convert';
import { unpackImage } from '../src/unpack/unpack';
import { CdimgReader } from '../src/format/reader';
import { FileType, Entry } from '../src/format/types';
import { WorkerPool } from '../src/workers/pool';

const TYPE: Record<number, TreeNode['type']> = {
  [FileType.REG]: 'file',
  [FileType.HARDLINK]: 'file',
  [FileType.DIR]: 'dir',
  [FileType.SYMLINK]: 'symlink',
  [FileType.CHAR]: 'char',
  [FileType.BLOCK]: 'block',
  [FileType.FIFO]: 'fifo',
};

let work: string;
let pool: WorkerPool;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-fidelity-'));
  pool = new WorkerPool(2);
});
afterAll(async () => {
  await pool.close();
  await fsp.rm(work, { recursive: true, force: true });
});

const IMAGES: ImageName[] = ['nginx-v1', 'nginx-v2', 'redis-v1', 'libssl-v3'];

describe.each(IMAGES)('%s', (name) => {
  let reference: Map<string, TreeNode>;
  let cdimg: string;
  beforeAll(async () => {
    const img = await buildDebImage(name);
    const rootfs = await umociUnpack(img.layout, img.tag, join(work, `${name}-umoci`));
    reference = await walkTree(rootfs);
    cdimg = join(work, `${name}.cdimg`);
    await convertImage({ ref: img.ref, output: cdimg, pool });
  });

  it('records every path with exact metadata and content digest', async () => {
    const r = await CdimgReader.open(cdimg);
    try {
      const byPath = new Map<string, Entry>(r.index.entries.map((e) => [e.path, e]));
      expect([...byPath.keys()].sort()).toEqual([...reference.keys()].sort());
      const problems: string[] = [];
      for (const [p, ref] of reference) {
        const e = byPath.get(p) as Entry;
        const target = e.type === FileType.HARDLINK ? (byPath.get(e.linkTarget) as Entry) : e;
        const got = {
          type: TYPE[e.type],
          mode: target.mode,
          uid: target.uid,
          gid: target.gid,
          mtimeNs: BigInt(target.mtimeSec) * 1_000_000_000n + BigInt(target.mtimeNsec),
          sha256: target.type === FileType.REG ? target.digest.toString('hex') : undefined,
          linkTarget: e.type === FileType.SYMLINK ? e.linkTarget : undefined,
          xattrs: Object.fromEntries(target.xattrs.map((x) => [x.name, x.value.toString('base64')])),
        };
        const want = { type: ref.type, mode: ref.mode, uid: ref.uid, gid: ref.gid, mtimeNs: ref.mtimeNs, sha256: ref.sha256, linkTarget: ref.linkTarget, xattrs: ref.xattrs };
        // umoci leaves the bundle's rootfs directory with its own mtime when no layer names "./"
        if (p === '') {
          delete (got as Partial<typeof got>).mtimeNs;
          delete (want as Partial<typeof want>).mtimeNs;
        }
        try {
          expect(got).toEqual(want);
        } catch {
          problems.push(`${p}: ${JSON.stringify(got, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))} != ${JSON.stringify(want, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
        }
      }
      expect(problems).toEqual([]);
      expect(r.index.entries.length).toBeGreaterThan(100);
    } finally {
      await r.close();
    }
  });

  it('unpacks to the same tree umoci extracts', async () => {
    const dest = join(work, `${name}-d4fs`);
    const res = await unpackImage(cdimg, dest, { pool });
    expect(res.warnings).toEqual([]);
    const ours = await walkTree(dest);
    expect(compareTrees(ours, reference, { ignoreMtimeOf: (p) => p === '' })).toEqual([]);
  });
});
