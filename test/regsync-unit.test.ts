/**
 * Unit tests of regsync's parts that need no registry: the raw tar splitter
 * (exact reassembly of real GNU tar archives in every format, including
 * damaged ones), compression-recipe detection, gzip files inside layers, and
 * the patch container's refusal of damaged and hostile files.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { compressFull, decompressFull, encodePatch } from '../src/delta/codecs';
import { D4fsError } from '../src/errors';
import { HEADER_SIZE, PatchReader } from '../src/regsync/container';
import { diffImageSets } from '../src/regsync/diff';
import { gzipRecipeOf, gzipWithRecipe } from '../src/regsync/gzcontent';
import { parseSpec } from '../src/regsync/imageset';
import { goDeflate, goDeflateSync, kpDeflate, kpDeflatePrefix } from '../src/regsync/goflate';
import { describeRecipe, detectRecipe, FALLBACK_GZIP_HEADER, produceBlob, readRecipe, Recipe, storedRecipe } from '../src/regsync/recipe';
import { splitTar, SplitResult } from '../src/regsync/tarsplit';
import { decode, encode } from '../src/regsync/tasks';
import { validateIndex } from '../src/regsync/validate';
import { zipOf } from './helpers/zip';
import { assemble, hasLlvmAs, llvmModule } from './helpers/llvm';
import { kindOf } from './helpers/errors';
import { goGzip } from './helpers/gocompress';
import { buildOciLayout } from './helpers/registry';

jest.setTimeout(120_000);

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Rebuild a tar from its split: skeleton runs and contents (read back from the original at their offsets). */
function reassemble(orig: Buffer, s: SplitResult): Buffer {
  const parts: Buffer[] = [];
  let pos = 0;
  s.rawRuns.forEach((run, i) => {
    parts.push(s.skeleton.subarray(pos, pos + run));
    pos += run;
    if (i < s.files.length) {
      const f = s.files[i];
      const c = orig.subarray(f.offset, f.offset + f.size);
      expect(sha(c)).toBe(f.digest);
      parts.push(c);
    }
  });
  return Buffer.concat(parts);
}

/** Feed a buffer in chunks of the given sizes (cycled). */
async function* chunked(b: Buffer, sizes: number[]): AsyncGenerator<Buffer> {
  let i = 0;
  for (let p = 0; p < b.length; ) {
    const n = sizes[i++ % sizes.length];
    yield b.subarray(p, p + n);
    p += n;
  }
}

describe('tar splitter', () => {
  let dir: string;
  let tree: string;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-tarsplit-'));
    tree = path.join(dir, 'tree');
    const long = path.join(tree, 'a'.repeat(60), 'b'.repeat(60), 'c'.repeat(60));
    await fsp.mkdir(long, { recursive: true });
    await fsp.writeFile(path.join(long, 'long-name-file.txt'), 'x'.repeat(700));
    await fsp.writeFile(path.join(tree, 'empty'), '');
    await fsp.writeFile(path.join(tree, 'exact512'), Buffer.alloc(512, 7));
    await fsp.writeFile(path.join(tree, 'big.bin'), Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7919) & 255)));
    await fsp.link(path.join(tree, 'exact512'), path.join(tree, 'hardlink'));
    await fsp.symlink('../' + 'l'.repeat(150), path.join(tree, 'longlink'));
    const sparse = await fsp.open(path.join(tree, 'sparse'), 'w');
    await sparse.write(Buffer.from('head'), 0, 4, 0);
    await sparse.write(Buffer.from('tail'), 0, 4, 5_000_000);
    await sparse.close();
    execFileSync('setfattr', ['-n', 'user.test', '-v', 'value', path.join(tree, 'big.bin')]);
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  for (const format of ['gnu', 'oldgnu', 'ustar', 'posix', 'v7']) {
    test(`GNU tar --format=${format}: skeleton + contents give the tar back byte for byte`, async () => {
      const out = path.join(dir, `${format}.tar`);
      const args = ['-c', '-f', out, `--format=${format}`, '-C', tree, '--sort=name'];
      if (format === 'gnu' || format === 'oldgnu' || format === 'posix') args.push('--sparse');
      if (format === 'posix') args.push('--xattrs', '--xattrs-include=*');
      try {
        execFileSync('tar', [...args, '.'], { stdio: ['ignore', 'ignore', 'pipe'] });
      } catch {
        // ustar/v7 cannot hold the long names: tar still writes the rest and exits 2
      }
      const orig = await fsp.readFile(out);
      const s = await splitTar(createReadStream(out, { highWaterMark: 4096 }));
      expect(s.truncated).toBe(false);
      expect(s.size).toBe(orig.length);
      expect(reassemble(orig, s).equals(orig)).toBe(true);
      const names = s.files.map((f) => f.path);
      expect(names).toContain('big.bin');
      if (format !== 'v7' && format !== 'ustar') expect(names.some((n) => n.endsWith('long-name-file.txt'))).toBe(true);
      // chunking does not change the result
      const odd = await splitTar(chunked(orig, [1, 7, 511, 513, 3]));
      expect(odd.skeleton.equals(s.skeleton)).toBe(true);
      expect(odd.files).toEqual(s.files);
      expect(odd.rawRuns).toEqual(s.rawRuns);
    });
  }

  test('damaged tars still reassemble exactly: bad checksum, garbage after the end, cut inside a file', async () => {
    const out = path.join(dir, 'posix.tar');
    const orig = await fsp.readFile(out);
    const s0 = await splitTar(chunked(orig, [65536]));
    // a bad header in the middle: from there on everything is skeleton
    const bad = Buffer.from(orig);
    const second = s0.files[1].offset - 512;
    bad[second + 148] ^= 0x01;
    const s1 = await splitTar(chunked(bad, [4096]));
    expect(s1.files.length).toBeLessThan(s0.files.length);
    expect(reassemble(bad, s1).equals(bad)).toBe(true);
    // data after the end-of-archive blocks
    const tail = Buffer.concat([orig, Buffer.from('trailing garbage')]);
    const s2 = await splitTar(chunked(tail, [4096]));
    expect(s2.files).toEqual(s0.files);
    expect(reassemble(tail, s2).equals(tail)).toBe(true);
    // cut inside a file: reported as truncated (such a layer is shipped whole)
    const big = s0.files.find((f) => f.path === 'big.bin');
    const cut = orig.subarray(0, (big as { offset: number }).offset + 1000);
    const s3 = await splitTar(chunked(cut, [4096]));
    expect(s3.truncated).toBe(true);
  });
});

describe('compression recipes', () => {
  let dir: string;
  let tarPath: string;
  let tar: Buffer;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-recipe-'));
    tarPath = path.join(dir, 'l.tar');
    execFileSync('tar', ['-c', '-f', tarPath, '-C', path.resolve(__dirname, '..', 'src'), '.']);
    tar = await fsp.readFile(tarPath);
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const check = async (name: string, blob: Buffer): Promise<Awaited<ReturnType<typeof detectRecipe>>> => {
    const p = path.join(dir, `${name}.gz`);
    await fsp.writeFile(p, blob);
    const d = await detectRecipe(p, tarPath, 'gzip');
    if (d.reproducible) {
      const parts: Buffer[] = [];
      for await (const c of produceBlob(d.recipe, tarPath)) parts.push(c);
      expect(sha(Buffer.concat(parts))).toBe(sha(blob));
    }
    return d;
  };

  test('Node zlib at any level and memLevel, with any header, is reproduced', async () => {
    const d1 = await check('zlib-1-m9', zlib.gzipSync(tar, { level: 1, memLevel: 9 }));
    expect(d1.reproducible && d1.recipe.kind === 'gzip' && d1.recipe.engine === 'node-zlib' && d1.recipe.level === 1 && d1.recipe.memLevel === 9).toBe(true);
    // a Go-like header (OS 255, odd mtime) around a zlib body: the header is kept verbatim
    const body = zlib.deflateRawSync(tar, { level: 9 });
    const header = Buffer.from([0x1f, 0x8b, 8, 0, 0x00, 0x09, 0x6e, 0x88, 0, 0xff]);
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(zlib.crc32(tar) >>> 0, 0);
    trailer.writeUInt32LE(tar.length, 4);
    const d2 = await check('odd-header', Buffer.concat([header, body, trailer]));
    expect(d2.reproducible).toBe(true);
  });

  test('the gzip program is reproduced (levels, --rsyncable)', async () => {
    const g1 = execFileSync('gzip', ['-c', '-n', '-1'], { input: tar, maxBuffer: 1 << 26 });
    const d1 = await check('gzip-1', g1);
    expect(d1.reproducible).toBe(true);
    const gr = execFileSync('gzip', ['-c', '-n', '-6', '--rsyncable'], { input: tar, maxBuffer: 1 << 26 });
    const d2 = await check('gzip-rsyncable', gr);
    expect(d2.reproducible && d2.recipe.kind === 'gzip' && d2.recipe.engine === 'gzip' && d2.recipe.rsyncable).toBe(true);
  });

  test("Go's compress/gzip at every level is reproduced (go-flate), also by the raw encoder fed in odd pieces", async () => {
    for (const level of [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) {
      const blob = goGzip('stdlib', level, tar, level === 7 ? 'layer.tar' : undefined);
      const d = await check(`go-${level}`, blob);
      expect({ level, engine: d.reproducible && d.recipe.kind === 'gzip' ? d.recipe.engine : d }).toEqual({ level, engine: 'go-flate' });
      if (d.reproducible && d.recipe.kind === 'gzip' && d.recipe.engine === 'go-flate') expect(d.recipe.level).toBe(level === -1 ? 6 : level);
      // stored in the patch as "go LEVEL" (Go's own header left out); level 7's header has a name and a time: kept, still short
      if (d.reproducible) {
        const stored = storedRecipe(d.recipe);
        if (level !== 7) expect(stored).toBe(`go ${level === -1 ? 6 : level}`);
        expect(JSON.stringify(stored).length).toBeLessThanOrEqual(64);
        expect(readRecipe(stored)).toEqual(d.recipe);
      }
      // the encoder's output does not depend on how its input is split
      const body = blob.subarray(level === 7 ? 10 + 'layer.tar'.length + 1 : 10, blob.length - 8);
      const parts: Buffer[] = [];
      for await (const c of goDeflate(level, chunked(tar, [1, 7, 65536, 3, 1 << 20, 12345]))) parts.push(c);
      expect(Buffer.concat(parts).equals(body)).toBe(true);
    }
    // empty and tiny inputs
    for (const input of [Buffer.alloc(0), Buffer.from('x'), Buffer.from('hello, deflate: hello, deflate')]) {
      for (const level of [-2, 0, 1, 6, 9]) {
        const blob = goGzip('stdlib', level, input);
        expect(goDeflateSync(level, input).equals(blob.subarray(10, blob.length - 8))).toBe(true);
      }
    }
  });

  test("klauspost's compress/gzip and pgzip (v1.15.12, level 5, its default; pgzip's default blocks and umoci's 256 KiB) are reproduced", async () => {
    const cases = [
      { name: 'klauspost', blob: goGzip('klauspost', -1, tar), engine: 'klauspost-flate' },
      { name: 'pgzip-1m', blob: goGzip('pgzip', -1, tar), engine: 'pgzip', blockSize: 1 << 20 },
      { name: 'pgzip-256k', blob: goGzip('pgzip', 5, tar, undefined, 256 << 10), engine: 'pgzip', blockSize: 256 << 10 },
    ];
    for (const c of cases) {
      const d = await check(c.name, c.blob);
      const r = d.reproducible && d.recipe.kind === 'gzip' ? d.recipe : undefined;
      expect({ name: c.name, engine: r?.engine, level: r && 'level' in r ? r.level : undefined }).toEqual({ name: c.name, engine: c.engine, level: 5 });
      if (r?.engine === 'pgzip') expect(r.blockSize).toBe(c.blockSize);
      // stored without klauspost's header (mtime 0x886e0900), at most 64 bytes of JSON
      const stored = d.reproducible ? storedRecipe(d.recipe) : '';
      expect(stored).toBe(c.engine === 'pgzip' ? `pgzip 5 ${c.blockSize}` : 'kp 5');
      expect(d.reproducible && readRecipe(stored)).toEqual(d.reproducible && d.recipe);
    }
    // empty, tiny and incompressible inputs through the raw encoder, fed in odd pieces
    for (const input of [Buffer.alloc(0), Buffer.from('x'), randomBytes(300_000), tar.subarray(0, 70_000)]) {
      for (const block of [0, 256 << 10]) {
        const blob = block ? goGzip('pgzip', 5, input, undefined, block) : goGzip('klauspost', 5, input);
        const parts: Buffer[] = [];
        for await (const p of kpDeflate(5, block, chunked(input, [3, 65536, 1, 100_000]))) parts.push(p);
        expect({ n: input.length, block, ok: Buffer.concat(parts).equals(blob.subarray(10, blob.length - 8)) }).toEqual({ n: input.length, block, ok: true });
      }
    }
  });

  test("klauspost's levels -2 to 9, alone and in pgzip's blocks of any size, are reproduced; a Go header on another encoder's body is not, and the reason says so", async () => {
    for (const level of [-2, 0, 1, 2, 3, 4, 6, 7, 8, 9]) {
      const d = await check(`klauspost-${level}`, goGzip('klauspost', level, tar));
      const r = d.reproducible && d.recipe.kind === 'gzip' && d.recipe.engine === 'klauspost-flate' ? d.recipe : undefined;
      expect({ level, got: r?.level }).toEqual({ level, got: level });
      const input = tar.subarray(0, 300_000);
      const blob = goGzip('pgzip', level, input, undefined, 100_000);
      const parts: Buffer[] = [];
      for await (const p of kpDeflate(level, 100_000, chunked(input, [4096, 77777]))) parts.push(p);
      expect({ level, pgzip: Buffer.concat(parts).equals(blob.subarray(10, blob.length - 8)) }).toEqual({ level, pgzip: true });
    }
    // an unusual block size is read from the stream's sync flushes
    const d100k = await check('pgzip-100k', goGzip('pgzip', 5, tar, undefined, 100_000));
    expect(d100k.reproducible && d100k.recipe.kind === 'gzip' && d100k.recipe.engine === 'pgzip' ? d100k.recipe.blockSize : 0).toBe(100_000);
    // pigz's body under a header as Go writes it: no encoder reproduces it (a record would), and the reason names what was tried
    const pigz = execFileSync('pigz', ['-c', '-n', '-6'], { input: tar, maxBuffer: 1 << 28 });
    const goHeader = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    const pgh = path.join(dir, 'pigz-go-header.gz');
    await fsp.writeFile(pgh, Buffer.concat([goHeader, pigz.subarray(10)]));
    const d = await detectRecipe(pgh, tarPath, 'gzip', { records: false });
    expect(d.reproducible).toBe(false);
    if (!d.reproducible) expect(d.reason).toMatch(/klauspost\/compress v1\.15\.12 at any level/);
  });

  test('a recipe with a Go level outside -2..9 is refused before anything runs', async () => {
    const p = path.join(dir, 'l.tar');
    const gen = produceBlob({ kind: 'gzip', engine: 'go-flate', level: 11, header: Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]).toString('base64') }, p);
    await expect(gen.next()).rejects.toThrow(/Go compress\/flate level/);
    // klauspost's and pgzip's: a level out of range, a block size the encoder would not take
    const header = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]).toString('base64');
    for (const bad of [
      { kind: 'gzip', engine: 'klauspost-flate', level: 10, header },
      { kind: 'gzip', engine: 'pgzip', level: 5, blockSize: 16384, header },
      { kind: 'gzip', engine: 'pgzip', level: 5, blockSize: 2 ** 40, header },
      { kind: 'gzip', engine: 'pgzip', level: 5, header },
    ]) {
      await expect(produceBlob(bad as never, p).next()).rejects.toMatchObject({ kind: 'INVALID_ARGUMENT' });
    }
  });

  test('recipes are stored as short strings (header left out when it is the default one) and read back exactly; version 1 objects are still read', () => {
    const b64 = (b: number[]): string => Buffer.from(b).toString('base64');
    const goHeader = (xfl: number, mtime = 0): string => {
      const h = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
      h.writeUInt32LE(mtime, 4);
      return h.toString('base64');
    };
    const named = Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 8, 0, 0xf1, 0x53, 0x65, 0, 0xff]), Buffer.from('layer.tar\0')]);
    const cases: [Recipe, string][] = [
      [{ kind: 'none' }, 'none'],
      [{ kind: 'zstd', engine: 'zstd-napi', level: 3 }, 'zstd 3'],
      [{ kind: 'gzip', engine: 'go-flate', level: 6, header: goHeader(0) }, 'go 6'],
      [{ kind: 'gzip', engine: 'go-flate', level: 9, header: goHeader(2) }, 'go 9'],
      [{ kind: 'gzip', engine: 'go-flate', level: 1, header: goHeader(4) }, 'go 1'],
      [{ kind: 'gzip', engine: 'go-flate', level: -2, header: goHeader(0) }, 'go -2'],
      [{ kind: 'gzip', engine: 'go-flate', level: 6, header: goHeader(2) }, `go 6 @${goHeader(2).replace(/=+$/, '')}`],
      [{ kind: 'gzip', engine: 'go-flate', level: 7, header: named.toString('base64') }, `go 7 @${named.toString('base64').replace(/=+$/, '')}`],
      [{ kind: 'gzip', engine: 'klauspost-flate', level: 5, header: goHeader(0, 0x886e0900) }, 'kp 5'],
      [{ kind: 'gzip', engine: 'klauspost-flate', level: 9, header: goHeader(2, 0x886e0900) }, 'kp 9'],
      [{ kind: 'gzip', engine: 'klauspost-flate', level: 5, header: goHeader(0) }, `kp 5 @${goHeader(0).replace(/=+$/, '')}`],
      [{ kind: 'gzip', engine: 'pgzip', level: 5, blockSize: 262144, header: goHeader(0, 0x886e0900) }, 'pgzip 5 262144'],
      [{ kind: 'gzip', engine: 'node-zlib', zlib: '1.3.0.1-motley', level: 6, memLevel: 8, strategy: 0, windowBits: 15, header: FALLBACK_GZIP_HEADER.toString('base64') }, 'zlib 6 8 0 15 ~1.3.0.1-motley'],
      [{ kind: 'gzip', engine: 'node-zlib', zlib: 'x', level: 9, memLevel: 9, strategy: 1, windowBits: 15, header: b64([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]) }, 'zlib 9 9 1 15 @H4sIAAAAAAACAw ~x'],
      [{ kind: 'gzip', engine: 'gzip', tool: 'gzip 1.12', level: 6, rsyncable: true, header: b64([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]) }, 'gzip 6 1 ~gzip 1.12'],
      [{ kind: 'gzip', engine: 'gzip', tool: 'gzip 1.12', level: 9, rsyncable: false, header: b64([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]) }, 'gzip 9 0 ~gzip 1.12'],
      [{ kind: 'gzip', engine: 'record', payload: 7, bodySize: 123456, header: b64([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]) }, 'rec 7 123456'],
      [{ kind: 'gzip', engine: 'record', payload: 0, bodySize: 99, header: named.toString('base64') }, `rec 0 99 @${named.toString('base64').replace(/=+$/, '')}`],
    ];
    for (const [r, s] of cases) {
      expect(storedRecipe(r)).toBe(s);
      expect(readRecipe(s)).toEqual(r);
      // no stored form is longer than version 1's object
      expect(JSON.stringify(s).length).toBeLessThan(JSON.stringify(r).length);
      // version 1's objects are read as they are
      expect(readRecipe(JSON.parse(JSON.stringify(r)))).toEqual(r);
    }
    // informational text outside printable ASCII is replaced, never stored raw
    expect(storedRecipe({ ...(cases[12][0] as Extract<Recipe, { engine: 'node-zlib' }>), zlib: 'a\u001b[31mb' })).toBe('zlib 6 8 0 15 ~a?[31mb');
  });

  test('hostile stored recipes are refused with INVALID_ARGUMENT', () => {
    const hostileRecipes: unknown[] = [
      'go 11', 'go 06', 'go -0', 'go +6', 'go 6 7', 'go', 'go 6 ', ' go 6', 'go  6', 'GO 6', 'go 6\n', 'go 99999999999',
      'kp 10', 'kp -3', 'pgzip 5', 'pgzip 5 16384', 'pgzip 5 999999999', 'pgzip 5 262144 1',
      'zlib 6 8 0', 'zlib 6 0 0 15', 'zlib 6 8 5 15', 'zlib 6 8 0 16', 'zlib 10 8 0 15', 'gzip 6 2', 'gzip 0 0', 'gzip 6',
      'zstd 0', 'zstd 20', 'zstd 3 @H4sIAAAAAAAA/w', 'none 1', 'brotli 5', 'go 6 ~go1.19', 'none ~x',
      'rec 1', 'rec -1 100', 'rec 1 1', 'rec 1 100 5', 'rec 1 1000000000', 'rec 1 100 ~x',
      'go 6 @H4sIAAAAAAAA/x', // not canonical base64 (stray bits)
      'go 6 @H4sIAAAAAAAA/w==', // padding is not part of the form
      'go 6 @AAAAAAAAAAAAAA', // not a gzip header
      'go 6 @H4sIAAAAAAAA/wAA', // a header and a byte more
      'go 6 @H4sICAAAAAAA/w', // FNAME without its name
      `go 6 @${'A'.repeat(4100)}`, `zlib 6 8 0 15 ~${'x'.repeat(201)}`, 'gzip 6 0 ~\u0007', 'x'.repeat(100_000),
      42, null, [], true, {}, { kind: 'gzip' }, { kind: 'gzip', engine: 'go-flate', level: 6 }, { kind: 'gzip', engine: 'go-flate', level: '6', header: 'H4sIAAAAAAAA/w==' },
    ];
    for (const v of hostileRecipes) {
      let kind = 'accepted';
      try {
        readRecipe(v);
      } catch (e) {
        kind = e instanceof D4fsError ? e.kind : String(e);
      }
      expect({ v, kind }).toEqual({ v, kind: 'INVALID_ARGUMENT' });
    }
  });

  test("pgzip's blocks compressed in native threads give the same bytes as one thread, for any number of threads and any input length", async () => {
    const block = 20_000; // small blocks: many batches, tails of full and short blocks
    const inputs = [
      Buffer.alloc(0),
      tar.subarray(0, 10_000), // one short block (no tail after it)
      tar.subarray(0, block), // exactly one block: an empty last block with its tail as dictionary
      tar.subarray(0, 3 * block), // exactly three
      tar.subarray(0, 5 * block + 16_384), // a last block of exactly the tail's size
      tar.subarray(0, 7 * block + 16_385),
      tar.subarray(0, 400_123),
    ];
    for (const level of [-2, 0, 1, 5, 7, 9]) {
      for (const input of inputs) {
        const blob = goGzip('pgzip', level, input, undefined, block);
        const want = blob.subarray(10, blob.length - 8);
        for (const threads of [1, 2, 3, 16]) {
          const parts: Buffer[] = [];
          for await (const p of kpDeflate(level, block, chunked(input, [7_000, 50_001, 1]), threads)) parts.push(p);
          expect({ level, n: input.length, threads, same: Buffer.concat(parts).equals(want) }).toEqual({ level, n: input.length, threads, same: true });
        }
      }
    }
    // the thread count is checked like the rest
    expect(() => kpDeflatePrefix(5, block, Buffer.alloc(1), 17)).toThrow(/threads 0..16/);
  });

  // pigz (zlib in 128 KiB blocks), libdeflate and zopfli: programs from Debian (scripts/install-deps.sh)
  const otherDeflaters: { name: string; cmd: string; args: string[] }[] = [
    { name: 'pigz-6', cmd: 'pigz', args: ['-6', '-c'] },
    { name: 'pigz-1', cmd: 'pigz', args: ['-1', '-c'] },
    { name: 'pigz-9', cmd: 'pigz', args: ['-9', '-c'] },
    { name: 'libdeflate-9', cmd: 'libdeflate-gzip', args: ['-9', '-c'] },
    { name: 'libdeflate-6', cmd: 'libdeflate-gzip', args: ['-6', '-c'] },
    { name: 'libdeflate-12', cmd: 'libdeflate-gzip', args: ['-12', '-c'] },
    { name: 'zopfli', cmd: 'zopfli', args: ['-c', '--i1'] },
  ];
  const gzipBy = (cmd: string, args: string[], input: string): Buffer => execFileSync(cmd, [...args, input], { maxBuffer: 1 << 30 });

  test('any other deflate stream (pigz, libdeflate, zopfli) is reproduced by a reconstruction record, checked by rebuilding it', async () => {
    const sizes: string[] = [];
    // 1 MiB of the tar keeps zopfli's own time short
    const part = path.join(dir, 'part.tar');
    await fsp.writeFile(part, tar.subarray(0, 1 << 20));
    for (const c of otherDeflaters) {
      const blob = gzipBy(c.cmd, c.args, part);
      const bp = path.join(dir, `${c.name}.gz`);
      await fsp.writeFile(bp, blob);
      const d = await detectRecipe(bp, part, 'gzip');
      if (d.reproducible) {
        // the blob rebuilt from the tar and the recipe has the original digest
        const parts: Buffer[] = [];
        for await (const b of produceBlob(d.recipe, part)) parts.push(b);
        expect(sha(Buffer.concat(parts))).toBe(sha(blob));
      }
      const r = d.reproducible ? d.recipe : undefined;
      expect({ name: c.name, engine: r?.kind === 'gzip' ? r.engine : d }).toEqual({ name: c.name, engine: 'record' });
      if (r?.kind === 'gzip' && r.engine === 'record') {
        const rec = r.record as Buffer;
        expect(r.bodySize).toBeLessThan(blob.length);
        // a record is a small part of the layer, never a copy of it (zopfli's and libdeflate -12's
        // optimal parses cost the most: 10-12% on this tar of sources)
        expect(rec.length).toBeLessThan(0.2 * blob.length);
        sizes.push(`${c.name} ${((100 * rec.length) / blob.length).toFixed(2)}%`);
      }
    }
    expect(sizes).toHaveLength(otherDeflaters.length);
    // without records such a layer is not reproducible, and the reason says why
    const p = path.join(dir, 'pigz-norec.gz');
    await fsp.writeFile(p, gzipBy('pigz', ['-6', '-c'], tarPath));
    const d = await detectRecipe(p, tarPath, 'gzip', { records: false });
    expect(d.reproducible).toBe(false);
    if (!d.reproducible) expect(d.reason).toMatch(/no zlib, gzip or Go encoder reproduces/);
  });

  test('records of streams with stored blocks, fixed blocks, empty input and long runs rebuild exactly', async () => {
    const inputs: [string, Buffer][] = [
      ['empty', Buffer.alloc(0)],
      ['one byte', Buffer.from('x')],
      ['zeros', Buffer.alloc(3 << 20)],
      ['random', randomBytes(300_000)], // stored blocks
      ['mixed', Buffer.concat([randomBytes(70_000), Buffer.alloc(100_000, 7), tar.subarray(0, 500_000)])],
    ];
    for (const [name, input] of inputs) {
      const tp = path.join(dir, `in-${name.replace(/ /g, '-')}`);
      await fsp.writeFile(tp, input);
      // zlib's fixed-Huffman strategy, its stored level 0, and pigz
      const blobs = [zlib.gzipSync(input, { strategy: zlib.constants.Z_FIXED }), zlib.gzipSync(input, { level: 0 }), gzipBy('pigz', ['-6', '-c'], tp)];
      for (const [k, blob] of blobs.entries()) {
        const bp = path.join(dir, `rec-${k}.gz`);
        await fsp.writeFile(bp, blob);
        const d = await detectRecipe(bp, tp, 'gzip', { records: true, goEncoders: false, gzipProgram: false });
        expect({ name, k, ok: d.reproducible }).toEqual({ name, k, ok: true });
        if (d.reproducible) {
          const parts: Buffer[] = [];
          for await (const c of produceBlob(d.recipe, tp)) parts.push(c);
          expect({ name, k, same: Buffer.concat(parts).equals(blob) }).toEqual({ name, k, same: true });
        }
      }
    }
  });

  test('damaged or hostile records and records given other data: CORRUPT or another digest, never a crash or a hang', async () => {
    const blob = gzipBy('pigz', ['-6', '-c'], tarPath);
    const p = path.join(dir, 'dmg.gz');
    await fsp.writeFile(p, blob);
    const d = await detectRecipe(p, tarPath, 'gzip');
    const r = d.reproducible && d.recipe.kind === 'gzip' && d.recipe.engine === 'record' ? d.recipe : undefined;
    expect(r).toBeDefined();
    if (!r) return;
    const rec = r.record as Buffer;
    const outcome = async (record: Buffer, tp = tarPath): Promise<string> => {
      let same = false;
      const kind = await kindOf(
        (async () => {
          const parts: Buffer[] = [];
          for await (const c of produceBlob({ ...r, record }, tp)) parts.push(c);
          same = sha(Buffer.concat(parts)) === sha(blob);
        })(),
      );
      return kind !== 'resolved' ? kind : same ? 'SAME' : 'OTHER';
    };
    expect(await outcome(rec)).toBe('SAME');
    const cases: Buffer[] = [rec.subarray(0, 5), rec.subarray(0, rec.length >> 1), rec.subarray(0, rec.length - 3), Buffer.alloc(0), randomBytes(rec.length), Buffer.concat([rec.subarray(0, 11), randomBytes(2000)])];
    for (let i = 0; i < 40; i++) {
      const f = Buffer.from(rec);
      const at = i < 4 ? i : 11 + Math.floor(Math.random() * (rec.length - 11));
      f[at] ^= 1 << (i % 8);
      cases.push(f);
    }
    for (const c of cases) expect(['CORRUPT', 'OTHER']).toContain(await outcome(c));
    // the right record over another tar
    const other = path.join(dir, 'other.tar');
    const t2 = Buffer.from(tar);
    t2[t2.length >> 1] ^= 0xff;
    await fsp.writeFile(other, t2);
    expect(await outcome(rec, other)).toBe('CORRUPT');
    await fsp.writeFile(other, tar.subarray(0, tar.length - 1000));
    expect(await outcome(rec, other)).toBe('CORRUPT');
  });

  test('several gzip members (eStargz-like Go members, pigz and zlib members) are rebuilt member by member; --no-records and trailing data are not', async () => {
    // eStargz: Go's compress/gzip, a member per piece
    const pieces: Buffer[] = [];
    for (let at = 0; at < tar.length; at += 40_000) pieces.push(tar.subarray(at, at + 40_000));
    const estargz = Buffer.concat(pieces.map((p) => goGzip('stdlib', 9, p)));
    let d = await check('estargz', estargz);
    const r = d.reproducible ? d.recipe : undefined;
    expect(r?.kind === 'gzip' ? r.engine : d).toBe('members');
    if (r?.kind === 'gzip' && r.engine === 'members') {
      expect(describeRecipe(r)).toMatch(new RegExp(`^${pieces.length} gzip members: ${pieces.length} by Go compress/flate level 9 \\(a description of \\d+ bytes\\)$`));
      expect((r.record as Buffer).length).toBeLessThan(pieces.length * 40); // ~30 bytes a member: no bytes of the data
      expect(readRecipe(storedRecipe({ ...r, payload: 3 }))).toEqual({ ...r, payload: 3, record: undefined, header: FALLBACK_GZIP_HEADER.toString('base64') });
    }
    // writers mixed: Go, pigz, Node's zlib (records for the last two)
    const half = tar.length >> 1;
    const third = tar.length / 3;
    const mixed = Buffer.concat([goGzip('stdlib', 6, tar.subarray(0, third)), execFileSync('pigz', ['-c', '-n', '-6'], { input: tar.subarray(third, half), maxBuffer: 1 << 28 }), zlib.gzipSync(tar.subarray(half))]);
    d = await check('mixed', mixed);
    expect(d.reproducible && d.recipe.kind === 'gzip' && d.recipe.engine === 'members' ? describeRecipe(d.recipe) : d).toMatch(/^3 gzip members: 1 by Go compress\/flate level 6, 2 by reconstruction records of \d+ bytes/);
    // without records, the pigz member is not reproduced
    const mp = path.join(dir, 'mixed-norec.gz');
    await fsp.writeFile(mp, mixed);
    d = await detectRecipe(mp, tarPath, 'gzip', { records: false });
    expect(d.reproducible).toBe(false);
    if (!d.reproducible) expect(d.reason).toMatch(/several gzip members.*member 2: no Go level reproduces it/);
    // data after the last member
    d = await check('trailing', Buffer.concat([zlib.gzipSync(tar.subarray(0, half)), zlib.gzipSync(tar.subarray(half)), Buffer.from('garbage!')]));
    expect(d.reproducible).toBe(false);
    if (!d.reproducible) expect(d.reason).toMatch(/not a gzip member/);
    // a description that lies (damaged, or describing another blob): CORRUPT, never a crash
    const good = d.reproducible ? undefined : await detectRecipe(path.join(dir, 'estargz.gz'), tarPath, 'gzip');
    const gr = good?.reproducible && good.recipe.kind === 'gzip' && good.recipe.engine === 'members' ? good.recipe : undefined;
    expect(gr).toBeDefined();
    if (gr) {
      const desc = gr.record as Buffer;
      const bad: Buffer[] = [desc.subarray(0, desc.length - 1), desc.subarray(0, 9), Buffer.concat([desc, Buffer.from([0])]), randomBytes(desc.length)];
      for (let i = 0; i < 30; i++) {
        // fixed positions (a flip of a Go level to another level that happens to write the same bytes would be no lie)
        const f = Buffer.from(desc);
        f[(i * 7919 + 13) % f.length] ^= 1 << (i % 8);
        bad.push(f);
      }
      for (const b of bad) {
        let outcome = 'SAME';
        const kind = await kindOf(
          (async () => {
            const parts: Buffer[] = [];
            for await (const c of produceBlob({ ...gr, record: b }, tarPath)) parts.push(c);
            if (!Buffer.concat(parts).equals(estargz)) outcome = 'OTHER';
          })(),
        );
        expect(['CORRUPT', 'INVALID_ARGUMENT']).toContain(kind === 'resolved' ? outcome === 'OTHER' ? 'CORRUPT' : 'SAME' : kind);
      }
    }
  });

  test('gzip files inside layers: gzip -9n files are recompressed exactly from their content', async () => {
    const text = Buffer.from(Array.from({ length: 4000 }, (_, i) => `changelog line ${i} ${'x'.repeat(i % 50)}\n`).join(''));
    const gz = execFileSync('gzip', ['-c', '-n', '-9'], { input: text });
    const r = gzipRecipeOf(gz);
    expect(r?.recipe.level).toBe(9);
    expect(r?.inner.equals(text)).toBe(true);
    expect(gzipWithRecipe(text, r!.recipe).equals(gz)).toBe(true);
    // Node's zlib output is not what the gzip program writes: left alone
    expect(gzipRecipeOf(zlib.gzipSync(text, { level: 9 }))).toBeUndefined();
  });
});

/** A jar of class-like members, most of them edited near their start between versions. */
function appJar(v: number): Buffer {
  return zipOf(
    Array.from({ length: 40 }, (_, i) => ({
      name: `com/example/C${i}.class`,
      data: Buffer.from(`${i % 4 !== 1 ? `v${v} ` : ''}${Array.from({ length: 300 }, (_, k) => `com/example/Type${(i * 7 + k * 13) % 997};m${(k * 2654435761) % 100003}`).join('\u0001')}`),
      how: 'libz' as const,
    })),
  );
}

/**
 * `data` (a wrapper codec's encoding of v2 against v1) decodes to v2 and, damaged in its middle,
 * is CORRUPT; `alone` (v2 encoded without a base) decodes to v2 too.
 */
async function expectDecodesBack(codec: 'zip-members' | 'llvm-bitcode', data: Uint8Array, alone: { codec: Parameters<typeof decode>[0]['codec']; data: Uint8Array }, v1: Buffer, v2: Buffer): Promise<void> {
  const digest = `sha256:${createHash('sha256').update(v2).digest('hex')}`;
  const out = await decode({ codec, payload: { data }, base: { data: v1 }, size: v2.length, digest });
  expect(Buffer.from(out!).equals(v2)).toBe(true);
  const bad = Buffer.from(data);
  bad[bad.length >> 1] ^= 0x10;
  await expect(decode({ codec, payload: { data: bad }, base: { data: v1 }, size: v2.length, digest })).rejects.toMatchObject({ kind: 'CORRUPT' });
  const back = await decode({ codec: alone.codec, payload: { data: alone.data }, size: v2.length, digest });
  expect(Buffer.from(back!).equals(v2)).toBe(true);
}

describe('LLVM bitcode in registry patches', () => {
  (hasLlvmAs ? test : test.skip)('a .bc file is encoded as its values, decodes to the file byte for byte; a damaged payload is CORRUPT or refused by its digest', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-regsync-bc-'));
    try {
      const v1 = assemble(dir, 'v1', llvmModule(80, false));
      const v2 = assemble(dir, 'v2', llvmModule(80, true));
      const enc = await encode({ target: { data: v2 }, base: { data: v1 }, codec: 'auto', level: 'default' });
      expect(enc.codec).toBe('llvm-bitcode');
      expect(enc.usesBase).toBe(true);
      const alone = await encode({ target: { data: v2 }, codec: 'auto', level: 'default' });
      expect(alone.codec).toBe('llvm-bitcode');
      await expectDecodesBack('llvm-bitcode', enc.data, alone, v1, v2);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('executables in registry patches', () => {
  test('a large executable is patched with the whole context-mixing model (applied offline), smaller than a lazily read delta codes it, and decodes back', async () => {
    // an "ELF" of 2.4 MB whose next version has scattered edits: bsdiff's diff stream covers the whole file (over 2 MiB)
    const v1 = Buffer.concat([Buffer.from('\x7fELF\x02\x01\x01\x00', 'latin1'), randomBytes(2_400_000)]);
    const v2 = Buffer.from(v1);
    for (let i = 4096; i < v2.length; i += 997) v2[i] ^= 1 + (i % 251);
    const enc = await encode({ target: { data: v2 }, base: { data: v1 }, codec: 'auto', level: 'default' });
    expect(enc.codec).toBe('bsdiff');
    const data = Buffer.from(enc.data);
    expect(data.toString('latin1', 0, 8)).toBe('D4BSDIF2');
    expect(data[24 + 12]).toBe(3); // the runs section: the whole diff stream by the context-mixing model
    // what `cdimg diff` (read lazily through FUSE) writes for the same pair: the block model, larger
    const lazy = encodePatch(v1, v2, 'bsdiff', 12);
    expect(lazy[24 + 12]).toBe(4);
    expect(data.length).toBeLessThan(lazy.length);
    const digest = `sha256:${createHash('sha256').update(v2).digest('hex')}`;
    const out = await decode({ codec: 'bsdiff', payload: { data }, base: { data: v1 }, size: v2.length, digest });
    expect(Buffer.from(out!).equals(v2)).toBe(true);
  });
});

describe('zip archives in registry patches', () => {
  test('a jar is encoded as its members when that is smaller, and decodes to the jar byte for byte; a damaged payload is CORRUPT', async () => {
    const [v1, v2] = [appJar(1), appJar(2)];
    const plain = await encode({ target: { data: v2 }, base: { data: v1 }, codec: 'auto', level: 'fast' });
    expect(plain.codec).toBe('zip-members');
    expect(plain.usesBase).toBe(true);
    const asIs = compressFull(v2, 3).length;
    expect(plain.data.length * 4).toBeLessThan(asIs);
    // a new jar (no base): its members in a frame
    const alone = await encode({ target: { data: v2 }, codec: 'auto', level: 'fast' });
    await expectDecodesBack('zip-members', plain.data, alone, v1, v2);
  });
});

describe('patch container', () => {
  let dir: string;
  let patch: string;
  let bytes: Buffer;
  let reader: PatchReader;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-container-'));
    const noise = createHash('sha256');
    const blobs: Buffer[] = [];
    for (let i = 0; i < 8000; i++) blobs.push(noise.copy().update(String(i)).digest());
    const incompressible = Buffer.concat(blobs); // 256 KB, the same in both versions
    const files = (v: number): Record<string, string | Buffer> => ({
      'usr/lib/libnoise.so': incompressible,
      'etc/app.conf': `version=${v}\n` + 'setting=1\n'.repeat(200),
      'usr/bin/tool': 'binary '.repeat(3000) + `v${v}`,
      'usr/share/doc/readme': 'same in both versions\n'.repeat(100),
      'usr/share/java/app.jar': appJar(v),
    });
    await buildOciLayout(path.join(dir, 'v1'), 'v1', files(1));
    await buildOciLayout(path.join(dir, 'v2'), 'v2', files(2));
    patch = path.join(dir, 'p.patch');
    await diffImageSets({
      old: [parseSpec(`oci:${path.join(dir, 'v1')}:v1 app:v1`, 't')],
      new: [parseSpec(`oci:${path.join(dir, 'v2')}:v2 app:v2`, 't')],
      out: patch,
      platforms: 'all',
      level: 'fast',
      threads: 1,
    });
    bytes = await fsp.readFile(patch);
    reader = await PatchReader.open(patch);
    await reader.verifyPayloads();
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const refuse = async (b: Buffer, kind: string, msg: RegExp): Promise<void> => {
    const p = path.join(dir, 'bad.patch');
    await fsp.writeFile(p, b);
    let err: unknown;
    try {
      const r = await PatchReader.open(p);
      await r.verifyPayloads();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe(kind);
    expect((err as Error).message).toMatch(msg);
  };

  test('the diff carries the old content by reference and the rest encoded', () => {
    const ix = reader.index;
    // the jar as its members, patched against the old jar's (src/delta/codecs/zip-members.ts)
    expect(ix.contents.some((c) => c.enc === 'zip-members' && c.base !== undefined)).toBe(true);
    expect(ix.layers.some((l) => l.kind === 'rebuilt')).toBe(true);
    expect(ix.contents.some((c) => c.enc === 'old')).toBe(true);
    expect(ix.contents.some((c) => c.enc !== 'old')).toBe(true);
  });

  test('truncation, appended data, bad magic and damaged payloads are refused', async () => {
    await refuse(bytes.subarray(0, bytes.length - 1), 'CORRUPT', /truncated/);
    await refuse(bytes.subarray(0, 40), 'CORRUPT', /too short/);
    await refuse(Buffer.concat([bytes, Buffer.from('x')]), 'CORRUPT', /data appended/);
    const magic = Buffer.from(bytes);
    magic[0] = 0x41;
    await refuse(magic, 'CORRUPT', /bad magic/);
    const idx = Buffer.from(bytes);
    idx[HEADER_SIZE + 5] ^= 1;
    await refuse(idx, 'CORRUPT', /root digest/);
    const pay = Buffer.from(bytes);
    pay[pay.length - 1] ^= 1;
    await refuse(pay, 'CORRUPT', /does not match its digest/);
  });

  test('hostile indexes are refused with HOSTILE', () => {
    const mutate = (f: (ix: Record<string, any>) => void): unknown => {
      const ix = JSON.parse(JSON.stringify(reader.index)) as Record<string, any>;
      f(ix);
      try {
        validateIndex(ix);
        return undefined;
      } catch (e) {
        return e;
      }
    };
    // a rebuilt layer given `recipe` in place of whatever it had (recipe or fallback)
    const setRecipe = (ix: Record<string, any>, recipe: string): void => {
      const l = ix.layers.find((x: any) => x.kind === 'rebuilt');
      delete l.fallback;
      l.recipe = recipe;
    };
    const cases: [string, (ix: Record<string, any>) => void][] = [
      ['repository name', (ix) => (ix.images[0].name = 'a/../b')],
      ['tag', (ix) => (ix.images[0].tag = 'bad tag')],
      ['payload used twice', (ix) => (ix.docs[1].payload = ix.docs[0].payload)],
      ['payload out of range', (ix) => (ix.docs[0].payload = 10_000)],
      ['huge size', (ix) => (ix.layers[0].size = 2 ** 60)],
      ['runs', (ix) => ix.layers.find((l: any) => l.kind === 'rebuilt').runs.push(1)],
      ['tar size', (ix) => (ix.layers.find((l: any) => l.kind === 'rebuilt').tarSize += 1)],
      ['unknown kind', (ix) => (ix.layers[0].kind = 'magic')],
      ['recipe', (ix) => {
        const l = ix.layers.find((x: any) => x.kind === 'rebuilt');
        (l.recipe ?? l.fallback.recipe).level = 42;
      }],
      ['stored recipe', (ix) => {
        const l = ix.layers.find((x: any) => x.kind === 'rebuilt');
        if (l.recipe) l.recipe = 'go 42';
        else l.fallback.recipe = 'zlib 6 8 0 15 @AAAAAAAAAAAAAA';
      }],
      ['recipe of another kind', (ix) => {
        const l = ix.layers.find((x: any) => x.kind === 'rebuilt');
        if (l.recipe) l.recipe = ['go 6'];
        else l.fallback.recipe = 7;
      }],
      ['version', (ix) => (ix.version = 5)],
      // recipes with a payload of their own (reconstruction records, gzip members)
      ['record payload out of range', (ix) => {
        ix.version = 3;
        setRecipe(ix, `rec ${ix.payloads.length} 1000`);
      }],
      ['record payload used twice', (ix) => {
        ix.version = 3;
        setRecipe(ix, `rec ${ix.docs[0].payload} 1000`);
      }],
      ['members payload used twice', (ix) => {
        ix.version = 3;
        setRecipe(ix, `gzm ${ix.docs[0].payload} 1000`);
      }],
      ['record in a version 2 index', (ix) => {
        ix.version = 2;
        setRecipe(ix, `rec ${ix.payloads.length - 1} 1000`);
      }],
      ['record payload negative', (ix) => {
        ix.version = 3;
        setRecipe(ix, 'rec -1 1000');
      }],
      ['members recipe with a header', (ix) => {
        ix.version = 3;
        setRecipe(ix, 'gzm 1 1000 @H4sIAAAAAAAA/w');
      }],
      ['extract past the end', (ix) => (ix.sources[0].extract[0][0] = ix.sources[0].tarSize)],
      ['old content nobody provides', (ix) => (ix.sources[0].extract = [])],
      ['digest syntax', (ix) => (ix.contents[0].digest = 'md5:abc')],
      ['format', (ix) => (ix.format = 'other')],
      ['savings not a number', (ix) => (ix.stats.plainBytes = '1e99')],
      ['negative savings', (ix) => (ix.stats.dedupBytes = -1)],
      // an archive coded as its members: its base must be an earlier old content, its payload its own
      ['zip members on a new base', (ix) => {
        const z = ix.contents.findIndex((c: any) => c.enc === 'zip-members');
        const newer = ix.contents.findIndex((c: any, i: number) => i < z && c.enc !== 'old');
        ix.contents[z].base = newer >= 0 ? newer : z;
      }],
      ['zip members on a later content', (ix) => {
        const z = ix.contents.findIndex((c: any) => c.enc === 'zip-members');
        ix.contents[z].base = z + 1;
      }],
      ['zip members without a payload', (ix) => delete ix.contents.find((c: any) => c.enc === 'zip-members').payload],
    ];
    for (const [name, f] of cases) {
      const e = mutate(f);
      expect([name, e instanceof D4fsError ? e.kind : String(e)]).toEqual([name, 'HOSTILE']);
    }
    // and the writer's own output passes
    expect(() => validateIndex(JSON.parse(JSON.stringify(reader.index)))).not.toThrow();
  });

  test('the index stores each recipe in its short string form; a version 1 index (object recipes) is still read', async () => {
    const storedLen = Number(bytes.readBigUInt64LE(16));
    const raw = JSON.parse(decompressFull(bytes.subarray(HEADER_SIZE, HEADER_SIZE + storedLen), Number(bytes.readBigUInt64LE(24))).toString('utf8')) as Record<string, any>;
    expect(raw.version).toBe(2);
    const rebuilt = (raw.layers as any[]).filter((l) => l.kind === 'rebuilt');
    expect(rebuilt.length).toBeGreaterThan(0);
    for (const l of rebuilt) {
      const stored = l.recipe ?? l.fallback.recipe;
      expect(typeof stored).toBe('string');
      expect(JSON.stringify(stored).length).toBeLessThanOrEqual(64);
    }
    // the reader gives objects back, the same as the writer had
    const readBack = reader.index.layers.filter((l) => l.kind === 'rebuilt');
    readBack.forEach((l, i) => {
      const r = l.kind === 'rebuilt' ? (l.recipe ?? l.fallback!.recipe) : undefined;
      expect(storedRecipe(r!)).toBe(rebuilt[i].recipe ?? rebuilt[i].fallback.recipe);
    });
    // version 1: the same index with the recipes as objects
    const v1 = JSON.parse(JSON.stringify(raw)) as Record<string, any>;
    v1.version = 1;
    for (const l of v1.layers as any[]) {
      if (l.kind !== 'rebuilt') continue;
      if (l.recipe) l.recipe = readRecipe(l.recipe);
      else l.fallback.recipe = readRecipe(l.fallback.recipe);
    }
    const stored = compressFull(Buffer.from(JSON.stringify(v1)), 3);
    const header = Buffer.from(bytes.subarray(0, HEADER_SIZE));
    header.writeBigUInt64LE(BigInt(stored.length), 16);
    header.writeBigUInt64LE(BigInt(Buffer.byteLength(JSON.stringify(v1))), 24);
    createHash('sha256').update(stored).digest().copy(header, 40);
    const p = path.join(dir, 'v1.patch');
    await fsp.writeFile(p, Buffer.concat([header, stored, bytes.subarray(HEADER_SIZE + storedLen)]));
    const old = await PatchReader.open(p);
    await old.verifyPayloads();
    expect(old.index.version).toBe(1);
    expect(old.index.layers).toEqual(reader.index.layers);
  });

  test('fuzz: 400 random flips, truncations and header changes fail as CORRUPT, HOSTILE or UNSUPPORTED', async () => {
    let seed = 0x9e3779b9;
    const rnd = (n: number): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const p = path.join(dir, 'fuzz.patch');
    const kinds: Record<string, number> = {};
    for (let i = 0; i < 400; i++) {
      let b = Buffer.from(bytes);
      const what = rnd(3);
      if (what === 0) for (let k = 0, n = 1 + rnd(3); k < n; k++) b[rnd(b.length)] ^= 1 << rnd(8);
      else if (what === 1) b = b.subarray(0, rnd(b.length));
      else b.writeBigUInt64LE(BigInt(rnd(2 ** 31)) * BigInt(1 + rnd(2 ** 16)), 16 + 8 * rnd(3));
      await fsp.writeFile(p, b);
      const kind = await kindOf(PatchReader.open(p).then((r) => r.verifyPayloads()));
      kinds[kind] = (kinds[kind] ?? 0) + 1;
      expect(['CORRUPT', 'HOSTILE', 'UNSUPPORTED', ...(b.equals(bytes) ? ['resolved'] : [])]).toContain(kind);
    }
    expect(kinds.CORRUPT).toBeGreaterThan(50);
  });

  test('a zstd bomb as index is refused before it is decompressed', async () => {
    const json = Buffer.alloc(64 * 1024 * 1024, 0x20);
    const stored = compressFull(json, 1);
    const header = Buffer.from(bytes.subarray(0, HEADER_SIZE));
    header.writeBigUInt64LE(BigInt(stored.length), 16);
    header.writeBigUInt64LE(1024n, 24); // declared small
    header.writeBigUInt64LE(0n, 32);
    createHash('sha256').update(stored).digest().copy(header, 40);
    await refuse(Buffer.concat([header, stored]), 'CORRUPT', /does not decompress/);
  });
});

describe('registry CLI: --help, one-line errors, exit codes', () => {
  const CLI = path.resolve(__dirname, '..', 'cli', 'ctr-cli.js');
  let dir: string;
  let patch: string;
  const cli = (args: string[]): { code: number; stdout: string; stderr: string } => {
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, D4FS_TMPDIR: dir } });
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  };
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'd4fs-regcli-'));
    await buildOciLayout(path.join(dir, 'v1'), 'v1', { 'etc/app.conf': 'version=1\n'.repeat(100) });
    await buildOciLayout(path.join(dir, 'v2'), 'v2', { 'etc/app.conf': 'version=2\n'.repeat(100) });
    // an image whose manifest is Docker schema 1 (not supported)
    const s1 = path.join(dir, 's1');
    await fsp.mkdir(path.join(s1, 'blobs', 'sha256'), { recursive: true });
    const s1doc = Buffer.from(JSON.stringify({ schemaVersion: 1, mediaType: 'application/vnd.docker.distribution.manifest.v1+prettyjws', name: 'x', tag: 'v1', fsLayers: [] }));
    await fsp.writeFile(path.join(s1, 'blobs', 'sha256', sha(s1doc).slice(7)), s1doc);
    await fsp.writeFile(path.join(s1, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await fsp.writeFile(
      path.join(s1, 'index.json'),
      JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.docker.distribution.manifest.v1+prettyjws', digest: sha(s1doc), size: s1doc.length, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }),
    );
    patch = path.join(dir, 'p.patch');
    const r = cli(['registry', 'diff', '--old', `oci:${path.join(dir, 'v1')}:v1`, '--new', `oci:${path.join(dir, 'v2')}:v2`, '--out', patch, '--level', 'fast', '-q']);
    expect(r.code).toBe(0);
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const FLAGS: Record<string, string[]> = {
    diff: ['--old <ref-or-list...>', '--new <ref-or-list...>', '--out', '--src-creds', '--src-authfile', '--src-tls-verify', '--platform', '--all-platforms', '--json'],
    apply: ['<patch>', '--to', '--old <ref-or-list...>', '--old-from', '--dest-creds', '--dest-authfile', '--dest-tls-verify', '--src-creds', '--src-tls-verify', '--vet-only', '--json'],
    'pull-incremental': ['--base <ref|scratch>', '--final', '--out', '--src-creds', '--src-tls-verify', '--all-platforms', '--json'],
    'push-vet': ['<archive>', '--base', '--dest-creds', '--dest-tls-verify', '--json'],
    push: ['<archive>', '<target>', '--base-repo', '--dest-creds', '--dest-tls-verify', '--json'],
    sync: ['--from', '--to', '--repos', '--src-creds', '--dest-creds', '--src-tls-verify', '--dest-tls-verify', '--all-platforms', '--json'],
  };

  test('every registry command has --help naming its options', () => {
    const top = cli(['registry', '--help']);
    expect(top.code).toBe(0);
    for (const [cmd, flags] of Object.entries(FLAGS)) {
      expect(top.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
      const h = cli(['registry', cmd, '--help']);
      expect(h.code).toBe(0);
      expect(h.stdout.startsWith(`Usage: ctr-cli registry ${cmd} `)).toBe(true);
      for (const f of flags) expect(h.stdout).toContain(f);
    }
  });

  test('errors are one line with the exit code of their kind', async () => {
    const bad = path.join(dir, 'short.patch');
    await fsp.writeFile(bad, 'abc');
    const cases: [string[], number, RegExp][] = [
      [['registry', 'diff', '--new', 'x:1', '--out', 'p'], 2, /required option '--old/],
      [['registry', 'diff', '--old', 'x:1', '--new', 'y:1', '--out', 'p', '--level', 'huge'], 2, /level must be fast, default or best/],
      [['registry', 'diff', '--old', 'x:1', '--new', 'y:1', '--out', 'p', '--src-tls-verify', 'maybe'], 2, /expected true or false/],
      [['registry', 'diff', '--old', `oci:${path.join(dir, 'nowhere')}:v1`, '--new', `oci:${path.join(dir, 'v2')}:v2`, '--out', path.join(dir, 'x.patch'), '-q'], 3, /not an OCI image layout/],
      [['registry', 'diff', '--old', `oci:${path.join(dir, 'v1')}:v1`, '--new', `oci:${path.join(dir, 's1')}:v1`, '--out', path.join(dir, 'x.patch'), '-q'], 8, /unsupported media type application\/vnd\.docker\.distribution\.manifest\.v1/],
      [['registry', 'apply', patch], 2, /required option '--to/],
      [['registry', 'apply', patch, '--to', 'docker://Bad Host', '-q'], 2, /invalid registry host|invalid registry target/],
      [['registry', 'apply', path.join(dir, 'nowhere.patch'), '--to', 'docker://127.0.0.1:1', '-q'], 3, /does not exist/],
      [['registry', 'apply', bad, '--to', 'docker://127.0.0.1:1', '-q'], 6, /too short for a patch header/],
      [['registry', 'apply', patch, '--to', 'docker://127.0.0.1:1', '-q'], 11, /cannot reach registry 127\.0\.0\.1:1/],
      [['registry', 'apply', patch, '--to', 'docker://127.0.0.1:1', '--old', 'UPPER:v1', '-q'], 2, /invalid repository name/],
      [['registry', 'pull-incremental', '--base', 'scratch', '--final', 'docker://127.0.0.1:1/UPPER:x', '--out', path.join(dir, 'x.tar')], 2, /invalid repository name/],
      [['registry', 'push-vet', path.join(dir, 'nowhere.tar'), '--base', 'docker://127.0.0.1:1/x'], 3, /does not exist/],
      [['registry', 'push', patch, 'oci:somewhere'], 2, /expected docker:\/\/HOST\/REPO/],
      [['registry', 'push-vet', patch, '--base', 'somewhere'], 2, /expected docker:\/\/HOST\/REPO/],
      [['registry', 'push', bad, 'docker://127.0.0.1:1/x:v1'], 6, /truncated/],
      [['registry', 'sync', '--from', 'docker://127.0.0.1:1', '--to', 'docker://127.0.0.1:1', '--repos', ',', '-q'], 2, /--repos names no repository/],
      [['registry', 'sync', '--from', 'docker://127.0.0.1:1', '--to', 'docker://127.0.0.1:1', '-q'], 11, /cannot reach registry/],
    ];
    for (const [args, code, msg] of cases) {
      const r = cli(args);
      const lines = r.stderr.trim().split('\n').filter((l) => !/^\(run with --help/.test(l));
      expect(`${args.join(' ')} -> ${r.code}`).toBe(`${args.join(' ')} -> ${code}`);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(msg);
    }
  });

  test('sync without --repos against a registry that does not list its repositories: a failed precondition naming --repos', async () => {
    // a registry answering /v2/ and nothing else (the catalog is 404, as where it is turned off)
    const seen: string[] = [];
    const server = http.createServer((req, res) => {
      seen.push(req.url ?? '');
      if (req.url === '/v2/') res.writeHead(200, { 'Content-Type': 'application/json' }).end('{}');
      else res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"errors":[{"code":"UNSUPPORTED","message":"the catalog is turned off"}]}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, 'registry', 'sync', '--from', `docker://${host}/team`, '--to', `docker://${host}/mirror`, '-q'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, D4FS_TMPDIR: dir } });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('exit', (code) => resolve({ code, stderr }));
      });
      expect(r.code).toBe(5);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/repository catalog not found .*name them with --repos/);
      expect(seen).toContain('/v2/_catalog');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
