/** Tests of reproducible gzip members. */

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as zlib from 'node:zlib';
import { decodeRecipe, encodeRecipe, gnuGzipAvailable, gzipHeaderLength, inspectGzip, rebuildGzip } from './gzmember';
import { D4fsError } from '../errors';

/** A gzip file with header fields set by hand: mtime, OS and an optional name. */
function gzipWith(content: Buffer, level: number, opts: { mtime: number; os: number; name?: string }): Buffer {
  const body = zlib.deflateRawSync(content, { level });
  const header = Buffer.from([0x1f, 0x8b, 8, opts.name ? 0x08 : 0, 0, 0, 0, 0, level === 9 ? 2 : level === 1 ? 4 : 0, opts.os]);
  header.writeUInt32LE(opts.mtime, 4);
  const name = opts.name ? Buffer.concat([Buffer.from(opts.name, 'latin1'), Buffer.from([0])]) : Buffer.alloc(0);
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(zlib.crc32(content), 0);
  trailer.writeUInt32LE(content.length, 4);
  return Buffer.concat([header, name, body, trailer]);
}

const manPage = Buffer.from(
  Array.from({ length: 400 }, (_, i) => `.TP\n.B option${i}\nDescribes option ${i} of the server; see nginx(8).\n`).join(''),
);

describe('inspectGzip / rebuildGzip', () => {
  it.each([1, 5, 6, 9])('reproduces a zlib level %i file exactly, header fields preserved', (level) => {
    const gz = gzipWith(manPage, level, { mtime: 1700000000, os: 3, name: 'nginx.8' });
    const m = inspectGzip(gz, 1 << 20);
    if (typeof m === 'string') throw new Error(m);
    expect(m.content.equals(manPage)).toBe(true);
    expect(m.header.readUInt32LE(4)).toBe(1700000000);
    expect(m.header[9]).toBe(3);
    expect(m.header.subarray(10).toString('latin1')).toBe('nginx.8\0');
    expect(rebuildGzip(m, m.content).equals(gz)).toBe(true);
    const recipe = decodeRecipe(encodeRecipe(m));
    expect(rebuildGzip(recipe, manPage).equals(gz)).toBe(true);
  });

  // Over 256 KiB: each zlib level is first checked on what it emits for a prefix of the content.
  const bigText = Buffer.from(
    Array.from({ length: 16_000 }, (_, i) => `${i} ${((i * 2654435761) >>> 0).toString(36)} entry ${i % 97} changed in ${(i * 7) % 1000}\n`).join(''),
  );
  it.each([1, 2, 3, 4, 5, 6, 7, 8, 9])('reproduces a large zlib level %i file (the prefix check never rejects a match)', (level) => {
    expect(bigText.length).toBeGreaterThan(512 * 1024);
    const gz = gzipWith(bigText, level, { mtime: 1, os: 3 });
    const m = inspectGzip(gz, 4 << 20, { gnu: false });
    if (typeof m === 'string') throw new Error(m);
    expect(m.engine).toBe('zlib');
    expect(rebuildGzip(m, m.content).equals(gz)).toBe(true);
  });

  it('a recipe rebuilds edited content as a valid gzip file', () => {
    const gz = gzipWith(manPage, 9, { mtime: 0, os: 3 });
    const m = inspectGzip(gz, 1 << 20);
    if (typeof m === 'string') throw new Error(m);
    const edited = Buffer.concat([manPage, Buffer.from('.SH NEW\n')]);
    expect(zlib.gunzipSync(rebuildGzip(m, edited)).equals(edited)).toBe(true);
  });

  const haveGzip = gnuGzipAvailable();
  (haveGzip ? it : it.skip).each([1, 6, 9])('reproduces GNU gzip -%in files (engine gnu) and rebuilds edited content', (level) => {
    const gz = spawnSync('gzip', [`-${level}n`, '-c'], { input: manPage }).stdout as Buffer;
    const m = inspectGzip(gz, 1 << 20);
    if (typeof m === 'string') throw new Error(m);
    expect(m.level).toBe(level);
    expect(rebuildGzip(m, m.content).equals(gz)).toBe(true);
    const recipe = decodeRecipe(encodeRecipe(m));
    expect(recipe).toEqual({ level, engine: m.engine, header: m.header });
    const edited = Buffer.concat([manPage, Buffer.from('.SH AUTHOR\n')]);
    const want = spawnSync('gzip', [`-${level}n`, '-c'], { input: edited }).stdout as Buffer;
    expect(rebuildGzip(recipe, edited).equals(want)).toBe(true);
    // Without the gnu engine, zlib alone usually cannot reproduce it.
    const z = inspectGzip(gz, 1 << 20, { gnu: false });
    if (typeof z !== 'string') expect(rebuildGzip(z, z.content).equals(gz)).toBe(true);
  });

  it('finds the level when the header XFL names another (XFL is only a hint)', () => {
    // zlib level 6, header saying -9 (XFL 2): zlib 9 and gzip -9 are tried first, then zlib's other levels
    const gz = gzipWith(manPage, 6, { mtime: 5, os: 3 });
    gz[8] = 2;
    const m = inspectGzip(gz, 1 << 20);
    if (typeof m === 'string') throw new Error(m);
    expect(m).toMatchObject({ engine: 'zlib', level: 6 });
    expect(rebuildGzip(m, m.content).equals(gz)).toBe(true);
  });

  it('rejects non-gzip, multi-member, damaged and oversized input', () => {
    expect(inspectGzip(Buffer.from('plain text, not gzip at all'), 1 << 20)).toBe('not-gzip');
    const one = zlib.gzipSync(manPage);
    expect(inspectGzip(Buffer.concat([one, zlib.gzipSync(Buffer.from('more'))]), 1 << 20)).toBe('multi-member');
    const badCrc = Buffer.from(one);
    badCrc[badCrc.length - 6] ^= 1;
    expect(inspectGzip(badCrc, 1 << 20)).toBe('bad-trailer');
    const badBody = Buffer.from(one);
    badBody[20] ^= 0xff;
    expect(['not-gzip', 'bad-trailer', 'multi-member']).toContain(inspectGzip(badBody, 1 << 20));
    expect(inspectGzip(one, 100)).toBe('too-large');
    // A lying ISIZE cannot make inflation exceed maxContent.
    const lying = Buffer.from(zlib.gzipSync(Buffer.alloc(1 << 20)));
    lying.writeUInt32LE(10, lying.length - 4);
    expect(inspectGzip(lying, 1000)).toBe('too-large');
    expect(inspectGzip(zlib.gzipSync(randomBytes(10)).subarray(0, 12), 1 << 20)).toBe('not-gzip');
  });

  it('parses optional header fields', () => {
    const h = Buffer.from([0x1f, 0x8b, 8, 0x04 | 0x08 | 0x10 | 0x02, 0, 0, 0, 0, 0, 3, 2, 0, 0xaa, 0xbb, 0x41, 0, 0x42, 0, 0x12, 0x34]);
    expect(gzipHeaderLength(Buffer.concat([h, Buffer.alloc(8)]))).toBe(h.length);
    expect(gzipHeaderLength(Buffer.from([0x1f, 0x8b, 8, 0xe0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]))).toBe(-1);
  });

  it('refuses malformed recipes', () => {
    expect(() => decodeRecipe(Buffer.from([9, 1, 2]))).toThrow(D4fsError);
    expect(() => decodeRecipe(Buffer.concat([Buffer.from([0x29]), Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3])]))).toThrow(D4fsError);
    expect(() => decodeRecipe(Buffer.concat([Buffer.from([0]), Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])]))).toThrow(D4fsError);
    expect(() => decodeRecipe(Buffer.concat([Buffer.from([9]), Buffer.from([0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 3])]))).toThrow(D4fsError);
  });
});

describe('d4fs-deflate pipeThrough (GNU gzip without fork)', () => {
  type Pipe = (file: string, args: string[], input: Uint8Array, maxOut: number) => { status: number; stdout: Buffer };
  const { pipeThrough } = require('d4fs-deflate') as { pipeThrough: Pipe };

  it('gives what spawnSync gives, for inputs larger than a pipe holds both ways', () => {
    const big = Buffer.concat([manPage, randomBytes(3 << 20), manPage]);
    for (const input of [manPage, big, Buffer.alloc(0)]) {
      const r = pipeThrough('gzip', ['-9', '-n', '-c'], input, input.length * 2 + 4096);
      expect(r.status).toBe(0);
      expect(r.stdout.equals(spawnSync('gzip', ['-9', '-n', '-c'], { input, maxBuffer: 64 << 20 }).stdout as Buffer)).toBe(true);
    }
    const echo = pipeThrough('cat', [], big, big.length);
    expect(echo.stdout.equals(big)).toBe(true);
  });

  it('reports exit status, a missing program, output over the bound and bad arguments', () => {
    expect(pipeThrough('false', [], Buffer.alloc(0), 10)).toEqual({ status: 1, stdout: Buffer.alloc(0) });
    // the child stops reading early: no hang, no SIGPIPE for this process
    expect(pipeThrough('head', ['-c', '3'], randomBytes(1 << 20), 10).stdout.length).toBe(3);
    expect(() => pipeThrough('d4fs-no-such-program', [], manPage, 10)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    expect(() => pipeThrough('cat', [], manPage, manPage.length - 1)).toThrow(expect.objectContaining({ code: 'EFBIG' }));
    // (TypeErrors of the addon's realm: matched by message)
    expect(() => pipeThrough('cat', ['a\0b'], manPage, 10)).toThrow(/strings without NUL/);
    expect(() => (pipeThrough as unknown as (...a: unknown[]) => unknown)('cat', 'x', manPage, 10)).toThrow(/pipeThrough\(file, args, input, maxOut\)/);
    expect(() => pipeThrough('cat', [], manPage, 0)).toThrow(/positive/);
  });
});
