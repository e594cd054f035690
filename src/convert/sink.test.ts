/**
 * convert's content sink (src/convert/sink.ts): every way a content travels
 * (shared batch buffer, own buffer, temp file, several chunks), blobs held in
 * memory or spilled to the spool file, deduplication, dead contents never
 * written, the layout (tree order, back to back, no dead bytes), gathered
 * writes of more pieces than one writev takes, and determinism across
 * batching limits, memory caps and thread counts.
 */
import { promises as fsp, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { buildTar } from '../tar';
import { writeSimpleImage } from '../oci/writer';
import { convertImage } from './convert';
import { DEFAULT_SINK_LIMITS, SinkLimits } from './sink';
import { CdimgReader } from '../format/reader';
import { Codec, FileType, HEADER_SIZE } from '../format/types';
import { WorkerPool } from '../workers/pool';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** Random bytes from a fixed seed: incompressible, and the same in every run. */
function noise(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash('sha256').update(seed).digest();
  for (let o = 0; o < n; o += 32) {
    block.copy(out, o);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

// Contents by the path they end up at (or are deleted from).
const C = {
  small1: Buffer.from('small one\n'),
  small2: Buffer.from('small two\n'),
  dupe: Buffer.from('the same bytes under two names\n'),
  gone: noise('gone', 100 * 1024), // deleted by layer 2: dead
  replaced: noise('replaced-v1', 40 * 1024), // replaced by layer 2: dead
  own: noise('own-buffer', 300 * 1024), // > smallMax, <= inlineMax
  chunks: noise('chunks', 200 * 1024 + 7), // several 64 KiB chunks
  staged: noise('staged', 600 * 1024), // > inlineMax: temp file
  huge: noise('huge', 9 * 1024 * 1024 + 123), // many chunks; over every memory cap below
  empty: Buffer.alloc(0),
  replaced2: noise('replaced-v2', 50 * 1024),
  late: Buffer.from('added by layer 2\n'),
  opaqueGone: Buffer.from('hidden by an opaque directory\n'),
};

const layer1 = (): Buffer =>
  buildTar([
    { header: { name: './', type: 'dir' } },
    { header: { name: 'a/', type: 'dir' } },
    { header: { name: 'a/small1', type: 'file' }, data: C.small1 },
    { header: { name: 'a/gone', type: 'file' }, data: C.gone },
    { header: { name: 'a/huge', type: 'file' }, data: C.huge },
    { header: { name: 'a/replaced', type: 'file' }, data: C.replaced },
    { header: { name: 'a/own', type: 'file' }, data: C.own },
    { header: { name: 'b/', type: 'dir' } },
    { header: { name: 'b/dupe1', type: 'file' }, data: C.dupe },
    { header: { name: 'b/chunks', type: 'file' }, data: C.chunks },
    { header: { name: 'b/dupe2', type: 'file' }, data: C.dupe },
    { header: { name: 'b/staged', type: 'file' }, data: C.staged },
    { header: { name: 'b/empty', type: 'file' }, data: C.empty },
    { header: { name: 'o/', type: 'dir' } },
    { header: { name: 'o/x', type: 'file' }, data: C.opaqueGone },
    { header: { name: 'a/small2', type: 'file' }, data: C.small2 },
  ]);

const layer2 = (): Buffer =>
  buildTar([
    { header: { name: 'a/', type: 'dir' } },
    { header: { name: 'a/.wh.gone', type: 'file' } },
    { header: { name: 'a/replaced', type: 'file' }, data: C.replaced2 },
    { header: { name: 'o/', type: 'dir' } },
    { header: { name: 'o/.wh..wh..opq', type: 'file' } },
    { header: { name: 'late', type: 'file' }, data: C.late },
  ]);

/** Final tree: path → content. */
const EXPECTED: Record<string, Buffer> = {
  'a/small1': C.small1,
  'a/huge': C.huge,
  'a/replaced': C.replaced2,
  'a/own': C.own,
  'a/small2': C.small2,
  'b/dupe1': C.dupe,
  'b/dupe2': C.dupe,
  'b/chunks': C.chunks,
  'b/staged': C.staged,
  'b/empty': C.empty,
  late: C.late,
};

/** Live contents in the order the tree (depth first, names sorted) first uses them. */
const TREE_ORDER = [C.huge, C.own, C.replaced2, C.small1, C.small2, C.chunks, C.dupe, C.empty, C.staged, C.late].map(sha);

/** Small everything: most blobs spill to the spool file. */
const TINY: SinkLimits = { smallMax: 64 * 1024, inlineMax: 512 * 1024, batchBytes: 128 * 1024, batchItems: 3, maxBytesInFlight: 1024 * 1024, memMax: 200 * 1024 };

let work: string;
let pool: WorkerPool;
let ref: string;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-sink-'));
  pool = new WorkerPool(2);
  await writeSimpleImage(join(work, 'img'), 'v1', { layers: [layer1(), layer2()], compression: 'gzip' });
  ref = `oci:${join(work, 'img')}:v1`;
});
afterAll(async () => {
  await pool.close();
  await fsp.rm(work, { recursive: true, force: true });
});

async function convert(name: string, opts: { limits?: SinkLimits; threads?: number } = {}): Promise<string> {
  const out = join(work, 'out', `${name}.cdimg`);
  await convertImage({ ref, output: out, chunkSize: 64 * 1024, sinkLimits: opts.limits, ...(opts.threads ? { threads: opts.threads } : { pool }) });
  return out;
}

describe('convert stores contents through the sink', () => {
  let out: string;
  let r: CdimgReader;
  beforeAll(async () => {
    out = await convert('tiny', { limits: TINY });
    r = await CdimgReader.open(out);
  });
  afterAll(() => r.close());

  it('every file reads back with its bytes (each chunk verified)', async () => {
    const files = r.index.entries.filter((e) => e.type === FileType.REG);
    expect(files.map((e) => e.path).sort()).toEqual(Object.keys(EXPECTED).sort());
    for (const e of files) {
      const want = EXPECTED[e.path];
      expect(e.digest.toString('hex')).toBe(sha(want));
      const got = await r.readContent(e.digest);
      expect(got.equals(want)).toBe(true);
    }
    expect(r.blob(sha(C.chunks))!.chunks).toHaveLength(4);
    expect(r.blob(sha(C.huge))!.chunks).toHaveLength(Math.ceil(C.huge.length / (64 * 1024)));
  });

  it('stores each content once and drops deleted, replaced and opaque-hidden contents', () => {
    expect(r.index.blobs).toHaveLength(TREE_ORDER.length);
    for (const dead of [C.gone, C.replaced, C.opaqueGone]) expect(r.blob(sha(dead))).toBeUndefined();
  });

  it('lays blobs out in tree order, back to back, with no dead bytes (members of a solid group share its frame)', () => {
    const ranges = r.index.blobs
      .map((b) => ({ digest: b.digest.toString('hex'), start: b.chunks[0].offset, end: b.chunks[b.chunks.length - 1].offset + b.chunks[b.chunks.length - 1].storedSize, chunks: b.chunks }))
      .sort((x, y) => x.start - y.start || (x.chunks[0].groupOffset ?? 0) - (y.chunks[0].groupOffset ?? 0));
    expect(ranges.map((x) => x.digest)).toEqual(TREE_ORDER);
    expect(r.index.blobs.map((b) => b.digest.toString('hex'))).toEqual(TREE_ORDER);
    let pos = HEADER_SIZE;
    let groups = 0;
    for (const x of ranges) {
      const c0 = x.chunks[0];
      if (c0.codec === Codec.GROUP && c0.groupOffset !== 0) {
        // a later member of the group just written: the same frame, right after the member before
        expect(x.chunks).toHaveLength(1);
        expect(c0.offset + c0.storedSize).toBe(pos);
        continue;
      }
      if (c0.codec === Codec.GROUP) groups++;
      expect(x.start).toBe(pos);
      for (const c of x.chunks) {
        expect(c.offset).toBe(pos);
        pos += c.storedSize;
      }
      expect(pos).toBe(x.end);
    }
    // the tiny files of the test image are grouped
    expect(groups).toBeGreaterThan(0);
    // the index follows the last blob directly, and ends the file
    expect(r.header.indexOffset).toBe(pos);
    expect(r.fileSize).toBe(r.header.indexOffset + r.header.indexStoredLen);
  });

  it('leaves nothing beside the output (no spool, no staged contents, no temp file)', async () => {
    expect(await fsp.readdir(join(work, 'out'))).toEqual(['tiny.cdimg']);
  });

  it('writes the same bytes whatever the batching limits, memory cap and thread count', async () => {
    const a = readFileSync(out);
    const b = readFileSync(await convert('default'));
    const c = readFileSync(await convert('one-thread', { limits: { ...DEFAULT_SINK_LIMITS, inlineMax: 128 * 1024, memMax: 4 * 1024 * 1024 }, threads: 1 }));
    expect(sha(b)).toBe(sha(a));
    expect(sha(c)).toBe(sha(a));
  });
});

describe('many contents', () => {
  it('are written with gathered writes of at most IOV_MAX pieces, in tree order', async () => {
    // 1500 distinct contents: more pieces than one writev takes (1024)
    const files = Array.from({ length: 1500 }, (_, i) => ({ name: `d${i % 3}/f${String(i).padStart(4, '0')}`, data: i % 100 === 0 ? randomBytes(20 * 1024) : Buffer.from(`file ${i}\n`) }));
    const dirs = ['d0/', 'd1/', 'd2/'].map((name) => ({ header: { name, type: 'dir' as const } }));
    const dir = join(work, 'many');
    await writeSimpleImage(dir, 'v1', { layers: [buildTar([...dirs, ...files.map((f) => ({ header: { name: f.name, type: 'file' as const }, data: f.data }))])], compression: 'zstd' });
    for (const [name, limits] of [['many-mem', DEFAULT_SINK_LIMITS], ['many-spool', { ...DEFAULT_SINK_LIMITS, memMax: 0 }]] as const) {
      const out = join(work, `${name}.cdimg`);
      await convertImage({ ref: `oci:${dir}:v1`, output: out, pool, sinkLimits: limits });
      const r = await CdimgReader.open(out);
      try {
        const inTreeOrder = [...files].sort((x, y) => (x.name < y.name ? -1 : 1));
        const chunks = inTreeOrder.map((f) => r.blob(sha(f.data))!.chunks[0]);
        expect(chunks[0].offset).toBe(HEADER_SIZE);
        // each stored frame (a content's own, or a solid group's) right after the one before; a group's members in order
        let frames = 1;
        for (let i = 1; i < chunks.length; i++) {
          const [a, b] = [chunks[i - 1], chunks[i]];
          if (b.codec === Codec.GROUP && a.codec === Codec.GROUP && b.offset === a.offset) {
            expect(b.groupOffset).toBe((a.groupOffset as number) + a.rawSize);
            continue;
          }
          expect(b.offset).toBe(a.offset + a.storedSize);
          frames++;
        }
        // 1,500 files of 8-10 bytes (and 15 of 20 KiB) in far fewer frames
        expect(frames).toBeLessThan(100);
        expect(chunks[chunks.length - 1].offset + chunks[chunks.length - 1].storedSize).toBe(r.header.indexOffset);
        for (const f of files) expect((await r.readContent(Buffer.from(sha(f.data), 'hex'))).equals(f.data)).toBe(true);
      } finally {
        await r.close();
      }
    }
    expect(sha(readFileSync(join(work, 'many-mem.cdimg')))).toBe(sha(readFileSync(join(work, 'many-spool.cdimg'))));
  });
});
