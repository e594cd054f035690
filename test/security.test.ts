/**
 * Issue 11 (security) regressions at the file level: forged image ids,
 * index decompression bombs, hostile values (NUL, device numbers), error kinds
 * across worker threads, unpacking into directories someone else controls,
 * terminal escapes, and a fuzz of damaged .cdimg files whose errors must carry
 * the documented codes.
 */
import { CliResult, runCli } from './helpers/cli';
import { promises as fsp, readFileSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildTar } from '../src/tar';
import { writeSimpleImage } from '../src/oci/writer';
import { convertImage } from '../src/convert/convert';
import { diffImages } from '../src/delta/diff';
import { patchImage } from '../src/delta/patch';
import { CdimgReader, forgetOpenedIndexes } from '../src/format/reader';
import { FORMAT_TASKS } from '../src/format/tasks';
import { FileType, HEADER_SIZE } from '../src/format/types';
import { D4fsError, EXIT_CODES } from '../src/errors';
import { verifyCdimg } from '../src/commands/cdimg';
import { LocalStore } from '../src/store/store';
import { WorkerPool } from '../src/workers/pool';
import { forTerminal } from '../src/util/text';
import { packageRoot } from '../src/util/paths';
import { kindOf } from './helpers/errors';
import { indexBomb, rewriteIndex } from './helpers/forge';
import { Prng } from './helpers/prng';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');

let work: string;
let pool: WorkerPool;
const at = (n: string) => join(work, n);

const cli = (...args: string[]): Promise<CliResult> => runCli(args);

async function expectKind(p: Promise<unknown>, kind: string, re?: RegExp): Promise<void> {
  const err = await p.then(() => undefined, (e) => e);
  expect(err).toBeInstanceOf(D4fsError);
  expect((err as D4fsError).kind).toBe(kind);
  if (re) expect((err as Error).message).toMatch(re);
}

async function image(name: string, files: Record<string, string | Buffer>, extra: Parameters<typeof buildTar>[0] = []): Promise<string> {
  const entries: Parameters<typeof buildTar>[0] = [{ header: { name: './', type: 'dir', mode: 0o755, mtimeSec: 1600000000 } }];
  for (const [p, d] of Object.entries(files)) entries.push({ header: { name: p, type: 'file', mode: 0o755 }, data: Buffer.isBuffer(d) ? d : Buffer.from(d) });
  entries.push(...extra);
  const dir = at(`oci-${name}`);
  await writeSimpleImage(dir, 'v1', { layers: [buildTar(entries)], compression: 'gzip', config: { Cmd: ['/bin/sh'] } });
  const out = at(`${name}.cdimg`);
  await convertImage({ ref: `oci:${dir}:v1`, output: out, pool });
  return out;
}

let small: string; // "small:v1"
let other: string; // an unrelated image
let smallV2: string;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-security-'));
  pool = new WorkerPool(2);
  const big = Buffer.alloc(6 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
  small = await image('small', { 'bin/app': 'application v1\n'.repeat(1000), 'etc/conf': 'a=1\n', 'data/big': big }, [
    { header: { name: 'bin/suid', type: 'file', mode: 0o4755 }, data: Buffer.from('suid') },
    { header: { name: 'dev/', type: 'dir' } },
    { header: { name: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 } },
  ]);
  other = await image('other', { 'evil': 'evil bytes\n' });
  const big2 = Buffer.from(big);
  big2.write('changed', 1000);
  smallV2 = await image('small2', { 'bin/app': 'application v2\n'.repeat(1000), 'etc/conf': 'a=2\n', 'data/big': big2 });
});
afterAll(async () => {
  await pool.close();
  await fsp.rm(work, { recursive: true, force: true });
});

describe('image ids are proofs (finding 2)', () => {
  it('a file carrying another image\'s id with a different tree is CORRUPT everywhere it is opened', async () => {
    const victim = await CdimgReader.open(small);
    const victimId = victim.index.imageId;
    await victim.close();
    const forged = at('forged.cdimg');
    await rewriteIndex(other, forged, (ix) => {
      ix.imageId = victimId;
    });
    forgetOpenedIndexes();
    await expectKind(CdimgReader.open(forged), 'CORRUPT', /image id does not match/);
    const v = await cli('cdimg', 'verify', forged);
    expect(v.code).toBe(EXIT_CODES.CORRUPT);
    expect(v.stderr).toMatch(/image id does not match/);
    // the local store takes nothing
    const store = await LocalStore.open(at('store-forged'));
    try {
      await expectKind(store.add(forged), 'CORRUPT');
      expect(store.images()).toEqual([]);
      expect((await fsp.readdir(join(store.root, 'files'))).filter((n) => n.endsWith('.cdimg'))).toEqual([]);
      expect(await fsp.readdir(join(store.root, 'tmp')).catch(() => [])).toEqual([]);
    } finally {
      store.close();
    }
  });

  it('a delta whose id is forged, or whose parent is not the base, is refused by patch', async () => {
    const delta = at('small-small2.cdimg');
    await diffImages({ oldPath: small, newPath: smallV2, out: delta, pool });
    const otherR = await CdimgReader.open(other);
    const otherId = otherR.index.imageId;
    await otherR.close();
    const forgedId = at('delta-forged-id.cdimg');
    await rewriteIndex(delta, forgedId, (ix) => {
      ix.imageId = otherId;
    });
    await expectKind(patchImage({ base: small, deltas: [forgedId], out: at('p1.cdimg'), pool }), 'CORRUPT', /image id/);
    // a delta that claims another parent (self-consistent otherwise) does not apply to small
    const wrongParent = at('delta-wrong-parent.cdimg');
    await rewriteIndex(delta, wrongParent, (ix) => {
      ix.parentId = otherId;
    }, { fixId: true });
    await expectKind(patchImage({ base: small, deltas: [wrongParent], out: at('p2.cdimg'), pool }), 'FAILED_PRECONDITION', /needs parent|does not apply/);
    expect(existsSync(at('p1.cdimg')) || existsSync(at('p2.cdimg'))).toBe(false);
  });
});

describe('index bounds (finding 5)', () => {
  it('a 1 GiB index claimed by a small file is refused from the header, in little memory', async () => {
    const bomb = indexBomb(1024 ** 3);
    expect(bomb.length).toBeLessThan(200 * 1024);
    const p = at('bomb.cdimg');
    await fsp.writeFile(p, bomb);
    await expectKind(CdimgReader.open(p), 'HOSTILE', /decompression bomb|over the limit/);
    const r = await run('/usr/bin/time', ['-f', '%M', process.execPath, CLI, 'cdimg', 'show', p]).then(
      () => { throw new Error('show accepted a bomb'); },
      (e: { code: number; stderr: string }) => e,
    );
    expect(r.code).toBe(EXIT_CODES.HOSTILE);
    const maxKiB = Number(r.stderr.trim().split('\n').pop());
    expect(maxKiB).toBeLessThan(200 * 1024); // was ~1.1 GB
  });

  it('a moderate ratio within the absolute limit is still decoded under the bound', async () => {
    // 20 MiB of zeros: ratio far over 256x -> refused before allocation
    const p = at('bomb2.cdimg');
    await fsp.writeFile(p, indexBomb(20 * 1024 * 1024));
    await expectKind(CdimgReader.open(p), 'HOSTILE', /decompression bomb/);
    await expectKind(CdimgReader.imageInfo(p), 'HOSTILE', /decompression bomb/);
  });
});

describe('hostile values (finding 7)', () => {
  it('a symlink target with NUL is refused by convert (exit 7)', async () => {
    const dir = at('oci-nul');
    await writeSimpleImage(dir, 'v1', {
      layers: [buildTar([{ header: { name: './', type: 'dir' } }, { header: { name: 'l', type: 'symlink', linkname: `a\0b${'x'.repeat(120)}` } }])],
      compression: 'gzip',
      config: {},
    });
    const r = await cli('convert', '--image', `oci:${dir}:v1`, '--output', at('nul.cdimg'));
    expect(r.code).toBe(EXIT_CODES.HOSTILE);
    expect(r.stderr).toMatch(/NUL/);
    expect(existsSync(at('nul.cdimg'))).toBe(false);
  });

  it('a device number out of range is refused by convert (exit 7)', async () => {
    const dir = at('oci-dev');
    await writeSimpleImage(dir, 'v1', {
      layers: [buildTar([{ header: { name: './', type: 'dir' } }, { header: { name: 'd', type: 'char', devmajor: 70000, devminor: 1 } }])],
      compression: 'gzip',
      config: {},
    });
    const r = await cli('convert', '--image', `oci:${dir}:v1`, '--output', at('dev.cdimg'));
    expect(r.code).toBe(EXIT_CODES.HOSTILE);
    expect(r.stderr).toMatch(/out-of-range/);
  });

  it('the validator refuses NUL in symlink targets and xattr names and out-of-range devices, even with a consistent id', async () => {
    // a NUL in a link target can only be said in format version 1 (version 2's column separates targets by NULs)
    const cases: [string, (ix: import('../src/format/types').Index) => void, RegExp, 1 | undefined][] = [
      ['nul-link', (ix) => { ix.entries.push({ ...ix.entries[0], path: 'zz', type: FileType.SYMLINK, linkTarget: 'a\0b', xattrs: [] }); }, /NUL/, 1],
      ['dev', (ix) => { const d = ix.entries.find((e) => e.type === FileType.CHAR); if (!d) throw new Error('no device'); d.devMajor = 1 << 20; }, /out-of-range/, undefined],
      ['xattr', (ix) => { ix.entries[1].xattrs = [{ name: 'user.a\0b', value: Buffer.from('x') }]; }, /xattr/, undefined],
    ];
    for (const [name, f, re, version] of cases) {
      const p = at(`v-${name}.cdimg`);
      await rewriteIndex(small, p, f, { fixId: true, version });
      await expectKind(CdimgReader.open(p), 'HOSTILE', re);
      const r = await cli('cdimg', 'unpack', p, at(`v-${name}-out`));
      expect(r.code).toBe(EXIT_CODES.HOSTILE);
      expect(existsSync(at(`v-${name}-out`))).toBe(false);
    }
  });
});

describe('errors keep their kind across worker threads (finding 7)', () => {
  const flipBlob = async (src: string, dst: string): Promise<void> => {
    const b = readFileSync(src);
    b[HEADER_SIZE + 40] ^= 0x01; // inside the first stored chunk
    await fsp.writeFile(dst, b);
  };
  it('unpack of a damaged file exits 6, like verify, and leaves nothing behind', async () => {
    const p = at('damaged.cdimg');
    await flipBlob(small, p);
    const v = await cli('cdimg', 'verify', p);
    expect(v.code).toBe(EXIT_CODES.CORRUPT);
    const u = await cli('cdimg', 'unpack', p, at('damaged-out'));
    expect(u.code).toBe(EXIT_CODES.CORRUPT);
    expect(existsSync(at('damaged-out'))).toBe(false);
    expect((await fsp.readdir(work)).filter((n) => n.includes('unpack-'))).toEqual([]);
  });
  it('patch with a damaged delta exits 6', async () => {
    const delta = at('small-small2.cdimg');
    if (!existsSync(delta)) await diffImages({ oldPath: small, newPath: smallV2, out: delta, pool });
    const p = at('damaged-delta.cdimg');
    await flipBlob(delta, p);
    const r = await cli('cdimg', 'patch', small, p, '--out', at('dd.cdimg'));
    expect(r.code).toBe(EXIT_CODES.CORRUPT);
    expect(existsSync(at('dd.cdimg'))).toBe(false);
  });
  it('the pool restores the kind of a D4fsError thrown in a thread', async () => {
    const err = await pool.run(FORMAT_TASKS, 'decodeChunk', { stored: Buffer.from('not zstd'), rawSize: 4, rawDigest: '00'.repeat(32) }).catch((e) => e);
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe('CORRUPT');
  });
});

describe('unpack into directories someone else controls (finding 6)', () => {
  it('refuses a non-empty destination (4), one owned by another user (10), a symlink (4), a parent others can write (10)', async () => {
    const full = at('u-full');
    await fsp.mkdir(full);
    await fsp.writeFile(join(full, 'x'), 'x');
    expect((await cli('cdimg', 'unpack', small, full)).code).toBe(EXIT_CODES.ALREADY_EXISTS);

    const foreign = at('u-foreign');
    await fsp.mkdir(foreign);
    await fsp.chown(foreign, 12345, 12345);
    const r = await cli('cdimg', 'unpack', small, foreign);
    expect(r.code).toBe(EXIT_CODES.PERMISSION_DENIED);
    expect(r.stderr).toMatch(/belongs to uid 12345/);

    const link = at('u-link');
    await fsp.symlink('/etc', link);
    expect((await cli('cdimg', 'unpack', small, link)).code).toBe(EXIT_CODES.ALREADY_EXISTS);

    const open = at('u-open');
    await fsp.mkdir(open);
    await fsp.chmod(open, 0o777);
    const r2 = await cli('cdimg', 'unpack', small, join(open, 'dest'));
    expect(r2.code).toBe(EXIT_CODES.PERMISSION_DENIED);
    expect(existsSync(join(open, 'dest'))).toBe(false);
  });

  it('faithful by default; --no-devices and --no-setuid for untrusted images; the destination stays ours', async () => {
    const a = at('u-faithful');
    expect((await cli('cdimg', 'unpack', small, a)).code).toBe(0);
    expect(statSync(join(a, 'bin/suid')).mode & 0o7777).toBe(0o4755);
    expect(statSync(join(a, 'dev/null')).isCharacterDevice()).toBe(process.getuid?.() === 0);
    const st = statSync(a);
    expect(st.uid).toBe(process.getuid?.());
    expect(st.mode & 0o022).toBe(0);

    const b = at('u-safe');
    const r = await cli('cdimg', 'unpack', '--no-devices', '--no-setuid', small, b);
    expect(r.code).toBe(0);
    expect(statSync(join(b, 'bin/suid')).mode & 0o7777).toBe(0o755);
    expect(existsSync(join(b, 'dev/null'))).toBe(false);
    expect(r.stderr).toMatch(/--no-devices/);
    expect(readFileSync(join(b, 'etc/conf'), 'utf8')).toBe('a=1\n');

    // an empty directory of ours is fine
    const c = at('u-empty');
    await fsp.mkdir(c);
    expect((await cli('cdimg', 'unpack', small, c)).code).toBe(0);
    expect(readFileSync(join(c, 'etc/conf'), 'utf8')).toBe('a=1\n');
  });
});

describe('terminal escapes (finding 9)', () => {
  it('forTerminal escapes C0, DEL, C1 and bidi controls and nothing else', () => {
    expect(forTerminal('a\x1b[31mb\x07c\x7f\x9bd\u202ee/ü')).toBe('a\\x1b[31mb\\x07c\\x7f\\x9bd\\u202ee/ü');
    expect(forTerminal('plain/path-1.2')).toBe('plain/path-1.2');
  });
  it('cdimg show escapes what the image says; --json stays exact', async () => {
    const p = at('esc.cdimg');
    await rewriteIndex(small, p, (ix) => {
      ix.image.sourceRef = 'oci:x\x1b]0;pwned\x07\x1b[2J';
    }, { fixId: true });
    const r = await cli('cdimg', 'show', p);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/\x1b|\x07/);
    expect(r.stdout).toContain('\\x1b]0;pwned\\x07');
    const j = await cli('cdimg', 'show', p, '--json', '--no-entries');
    expect(JSON.parse(j.stdout).source).toBe('oci:x\x1b]0;pwned\x07\x1b[2J');
  });
  it('error messages escape hostile paths', async () => {
    const dir = at('oci-esc');
    await writeSimpleImage(dir, 'v1', { layers: [buildTar([{ header: { name: '../\x1b[2Jx', type: 'file' }, data: Buffer.from('x') }])], compression: 'gzip', config: {} });
    const r = await cli('convert', '--image', `oci:${dir}:v1`, '--output', at('esc2.cdimg'));
    expect(r.code).toBe(EXIT_CODES.HOSTILE);
    expect(r.stderr).not.toMatch(/\x1b/);
    expect(r.stderr).toContain('\\x1b[2J');
  });
});

describe('fuzz: damaged .cdimg files fail with the documented kinds', () => {
  it('800 random flips, truncations and splices: CORRUPT, HOSTILE or UNSUPPORTED, never anything else', async () => {
    const good = readFileSync(small);
    const rng = new Prng(0x5ec11);
    const seen: Record<string, number> = {};
    const p = at('fuzz.cdimg');
    for (let i = 0; i < 800; i++) {
      const b = Buffer.from(good);
      let bytes = b;
      const what = rng.int(4);
      if (what === 0) {
        for (let k = 0, n = 1 + rng.int(4); k < n; k++) b[rng.int(b.length)] ^= 1 << rng.int(8);
      } else if (what === 1) {
        bytes = b.subarray(0, rng.int(b.length));
      } else if (what === 2) {
        // damage the header's numbers
        const off = 16 + 8 * rng.int(3);
        b.writeBigUInt64LE(BigInt(rng.int(2 ** 31)) * BigInt(1 + rng.int(2 ** 20)), off);
      } else {
        // damage the index region only
        const start = b.readUInt32LE(16);
        b[start + rng.int(b.length - start)] ^= 1 << rng.int(8);
      }
      await fsp.writeFile(p, bytes);
      forgetOpenedIndexes();
      const kind = await kindOf(verifyCdimg(p, 1));
      seen[kind] = (seen[kind] ?? 0) + 1;
      expect(['CORRUPT', 'HOSTILE', 'UNSUPPORTED', ...(bytes.equals(good) ? ['resolved'] : [])]).toContain(kind);
    }
    expect(seen.CORRUPT).toBeGreaterThan(50);
  }, 240_000);

  it('through the CLI: verify, show and unpack of damaged files exit 6, 7 or 8', async () => {
    const good = readFileSync(small);
    const rng = new Prng(77);
    for (let i = 0; i < 12; i++) {
      const b = Buffer.from(good);
      b[rng.int(b.length)] ^= 0x20;
      const p = at(`cli-fuzz-${i}.cdimg`);
      await fsp.writeFile(p, i % 3 === 0 ? b.subarray(0, rng.int(b.length)) : b);
      for (const args of [['cdimg', 'verify', p], ['cdimg', 'unpack', p, at(`cli-fuzz-out-${i}`)]]) {
        const r = await cli(...args);
        expect([EXIT_CODES.CORRUPT, EXIT_CODES.HOSTILE, EXIT_CODES.UNSUPPORTED]).toContain(r.code);
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
      }
      expect(existsSync(at(`cli-fuzz-out-${i}`))).toBe(false);
    }
  }, 240_000);
});
