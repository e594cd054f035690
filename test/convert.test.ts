/**
 * convert / show / verify / unpack on hand-made images: every edge case of
 * layer flattening, every hostile input, determinism, all local transports,
 * damaged .cdimg files, and the CLI's exit codes.
 */
import { promises as fsp, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { buildTar } from '../src/tar';
import { writeSimpleImage, OciLayoutWriter } from '../src/oci/writer';
import { convertImage } from '../src/convert/convert';
import { CdimgReader, forgetOpenedIndexes } from '../src/format/reader';
import { FileType } from '../src/format/types';
import { unpackImage } from '../src/unpack/unpack';
import { verifyCdimg } from '../src/commands/cdimg';
import { WorkerPool } from '../src/workers/pool';
import { digestOf } from '../src/util/digest';
import { MT } from '../src/oci/mediatypes';
import { packageRoot } from '../src/util/paths';
import { expectError } from './helpers/errors';

const run = promisify(execFile);
const CLI = join(packageRoot(), 'dist', 'cli', 'ctr-cli.js');
const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex');

let work: string;
let pool: WorkerPool;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-convert-'));
  pool = new WorkerPool(2);
});
afterAll(async () => {
  await pool.close();
  await fsp.rm(work, { recursive: true, force: true });
});

const layer1 = () =>
  buildTar([
    { header: { name: './', type: 'dir', mode: 0o755, mtimeSec: 1600000000 } },
    { header: { name: 'etc/', type: 'dir' } },
    { header: { name: 'etc/passwd', type: 'file' }, data: Buffer.from('root:x:0:0::/root:/bin/sh\n') },
    { header: { name: 'etc/shadow', type: 'file', mode: 0o640, gid: 42 }, data: Buffer.from('root:*:1::::::\n') },
    { header: { name: 'tmp/', type: 'dir', mode: 0o1777 } },
    { header: { name: 'usr/', type: 'dir' } },
    { header: { name: 'usr/bin/', type: 'dir' } },
    { header: { name: 'usr/bin/su', type: 'file', mode: 0o4755 }, data: Buffer.from('su binary') },
    { header: { name: 'usr/bin/wall', type: 'file', mode: 0o2755, gid: 5 }, data: Buffer.from('wall') },
    { header: { name: 'usr/bin/ping', type: 'file', mode: 0o755, xattrs: new Map([['security.capability', cap], ['user.origin', Buffer.from('test')]]) }, data: Buffer.from('ping') },
    { header: { name: 'a.txt', type: 'file', mtimeNsec: 123456789 }, data: Buffer.from('A') },
    { header: { name: 'b', type: 'link', linkname: 'a.txt' } },
    { header: { name: 'dup1', type: 'file' }, data: Buffer.from('same content') },
    { header: { name: 'dup2', type: 'file' }, data: Buffer.from('same content') },
    { header: { name: 'dev/', type: 'dir' } },
    { header: { name: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 } },
    { header: { name: 'dev/sda', type: 'block', devmajor: 8, devminor: 0, mode: 0o660, gid: 6 } },
    { header: { name: 'fifo', type: 'fifo' } },
    { header: { name: 'loop1', type: 'symlink', linkname: 'loop2' } },
    { header: { name: 'loop2', type: 'symlink', linkname: 'loop1' } },
    { header: { name: 'abs', type: 'symlink', linkname: '/etc/passwd' } },
    { header: { name: `long/${'n'.repeat(250)}`, type: 'file', uid: 1000000, gid: 1000000 }, data: Buffer.from('long') },
    { header: { name: 'old/', type: 'dir' } },
    { header: { name: 'old/x', type: 'file' }, data: Buffer.from('x') },
    { header: { name: 'becomes-file/', type: 'dir' } },
    { header: { name: 'becomes-file/y', type: 'file' }, data: Buffer.from('y') },
    { header: { name: 'big', type: 'file' }, data: Buffer.alloc(300 * 1024, 7) },
  ]);

const layer2 = () =>
  buildTar([
    { header: { name: '.wh.a.txt', type: 'file' } },
    { header: { name: 'etc/', type: 'dir', mode: 0o755, mtimeSec: 1700000100 } },
    { header: { name: 'etc/.wh..wh..opq', type: 'file' } },
    { header: { name: 'etc/hostname', type: 'file' }, data: Buffer.from('box\n') },
    { header: { name: 'c', type: 'link', linkname: 'b' } },
    { header: { name: '.wh.old', type: 'file' } },
    { header: { name: 'becomes-file', type: 'file' }, data: Buffer.from('now a file') },
    // A whiteout must not hide what its own layer adds.
    { header: { name: 'new-in-2', type: 'file' }, data: Buffer.from('kept') },
    { header: { name: '.wh.new-in-2', type: 'file' } },
  ]);

async function makeImage(name: string, layers: Buffer[], compression: ('gzip' | 'zstd' | 'none')[] | 'gzip' | 'zstd' | 'none' = 'gzip'): Promise<string> {
  const dir = join(work, name);
  await writeSimpleImage(dir, 'v1', { layers, compression, config: { Env: ['PATH=/usr/bin:/bin', 'A=1'], Entrypoint: ['/usr/bin/su'], Cmd: ['-c', 'id'], User: '1000:1000', WorkingDir: '/tmp', Labels: { 'org.test': 'yes' } } });
  return `oci:${dir}:v1`;
}

async function dirHasNoLeftovers(dir: string, allowed: string[]): Promise<void> {
  const names = (await fsp.readdir(dir)).filter((n) => !allowed.includes(n));
  expect(names).toEqual([]);
}

describe('flattening edge cases', () => {
  let out: string;
  let reader: CdimgReader;
  beforeAll(async () => {
    const ref = await makeImage('edge', [layer1(), layer2()], ['gzip', 'zstd']);
    out = join(work, 'edge.cdimg');
    await convertImage({ ref, output: out, pool });
    reader = await CdimgReader.open(out);
  });
  afterAll(() => reader.close());

  const e = (p: string) => reader.byPath.get(p);

  it('applies whiteouts, opaque dirs and type changes', () => {
    expect(e('a.txt')).toBeUndefined();
    expect(e('old')).toBeUndefined();
    expect(e('old/x')).toBeUndefined();
    expect(e('etc/passwd')).toBeUndefined();
    expect(e('etc/shadow')).toBeUndefined();
    expect(e('etc/hostname')?.type).toBe(FileType.REG);
    expect(e('etc')?.mtimeSec).toBe(1700000100);
    expect(e('becomes-file')?.type).toBe(FileType.REG);
    expect(e('becomes-file/y')).toBeUndefined();
    expect(e('new-in-2')?.type).toBe(FileType.REG);
  });

  it('keeps hard links across layers after the original name is deleted', () => {
    expect(e('b')?.type).toBe(FileType.REG);
    expect(e('c')?.type).toBe(FileType.HARDLINK);
    expect(e('c')?.linkTarget).toBe('b');
    expect(e('b')?.mtimeNsec).toBe(123456789);
  });

  it('keeps full metadata', () => {
    expect(e('')?.mtimeSec).toBe(1600000000);
    expect(e('tmp')?.mode).toBe(0o1777);
    expect(e('usr/bin/su')?.mode).toBe(0o4755);
    expect(e('usr/bin/wall')?.mode).toBe(0o2755);
    expect(e('usr/bin/wall')?.gid).toBe(5);
    const ping = e('usr/bin/ping');
    expect(ping?.xattrs.find((x) => x.name === 'security.capability')?.value).toEqual(cap);
    expect(ping?.xattrs.find((x) => x.name === 'user.origin')?.value.toString()).toBe('test');
    expect([e('dev/null')?.type, e('dev/null')?.devMajor, e('dev/null')?.devMinor]).toEqual([FileType.CHAR, 1, 3]);
    expect([e('dev/sda')?.type, e('dev/sda')?.devMajor]).toEqual([FileType.BLOCK, 8]);
    expect(e('fifo')?.type).toBe(FileType.FIFO);
    expect(e('loop1')?.linkTarget).toBe('loop2');
    expect(e('abs')?.linkTarget).toBe('/etc/passwd');
    const long = e(`long/${'n'.repeat(250)}`);
    expect([long?.uid, long?.gid]).toEqual([1000000, 1000000]);
  });

  it('stores identical content once', () => {
    expect(e('dup1')?.digest).toEqual(e('dup2')?.digest);
    const n = reader.index.blobs.filter((b) => b.digest.equals(e('dup1')!.digest)).length;
    expect(n).toBe(1);
  });

  it('keeps the image config whole', () => {
    const cfg = JSON.parse(reader.index.image.configJson.toString());
    expect(cfg.config.Entrypoint).toEqual(['/usr/bin/su']);
    expect(cfg.config.User).toBe('1000:1000');
    expect(cfg.config.WorkingDir).toBe('/tmp');
    expect(cfg.config.Labels).toEqual({ 'org.test': 'yes' });
    expect(reader.index.image.layers).toHaveLength(2);
  });

  it('reads one file without scanning (random access) and verifies it', async () => {
    const data = await reader.readContent(e('big')!.digest);
    expect(data.equals(Buffer.alloc(300 * 1024, 7))).toBe(true);
  });

  it('unpacks the tree with all metadata', async () => {
    const dest = join(work, 'edge-unpacked');
    const r = await unpackImage(out, dest, { pool });
    expect(r.warnings).toEqual([]);
    expect(r.bytes).toBe(reader.index.entries.filter((x) => x.type === FileType.REG).reduce((n, x) => n + x.size, 0));
    const st = (p: string) => statSync(join(dest, p), { bigint: true });
    expect(Number(st('usr/bin/su').mode) & 0o7777).toBe(0o4755);
    expect(Number(st('tmp').mode) & 0o7777).toBe(0o1777);
    expect(st('b').ino).toBe(st('c').ino);
    expect(st('b').mtimeNs).toBe(1700000000123456789n);
    expect(st('').mtimeNs).toBe(1600000000000000000n);
    expect(readFileSync(join(dest, 'etc/hostname'), 'utf8')).toBe('box\n');
    const { stdout } = await run('getfattr', ['--absolute-names', '-e', 'hex', '-n', 'security.capability', join(dest, 'usr/bin/ping')]);
    expect(stdout).toContain(`0x${cap.toString('hex')}`);
    expect(st('dev/null').rdev).toBe(BigInt((1 << 8) | 3));
  });
});

describe('determinism and transports', () => {
  it('gives the same bytes twice, and the same image id for gzip, zstd and plain layers', async () => {
    const refGz = await makeImage('det-gz', [layer1(), layer2()], 'gzip');
    const refZst = await makeImage('det-zst', [layer1(), layer2()], 'zstd');
    const refRaw = await makeImage('det-raw', [layer1(), layer2()], 'none');
    const o1 = join(work, 'det1.cdimg');
    const o2 = join(work, 'det2.cdimg');
    const r1 = await convertImage({ ref: refGz, output: o1, pool });
    const r2 = await convertImage({ ref: refGz, output: o2, threads: 1 });
    expect(readFileSync(o1).equals(readFileSync(o2))).toBe(true);
    expect(r1.rootDigest).toBe(r2.rootDigest);
    const r3 = await convertImage({ ref: refZst, output: join(work, 'det3.cdimg'), pool });
    const r4 = await convertImage({ ref: refRaw, output: join(work, 'det4.cdimg'), pool });
    expect(r3.imageId).toBe(r1.imageId);
    expect(r4.imageId).toBe(r1.imageId);
  });

  it('reads oci-archive and docker-archive (made by skopeo) to the same image id', async () => {
    const ref = await makeImage('arch', [layer1(), layer2()], 'gzip');
    const r0 = await convertImage({ ref, output: join(work, 'arch0.cdimg'), pool });
    const ociArchive = join(work, 'img.oci.tar');
    const dockerArchive = join(work, 'img.docker.tar');
    await run('skopeo', ['--insecure-policy', 'copy', '--quiet', ref, `oci-archive:${ociArchive}:v1`]);
    await run('skopeo', ['--insecure-policy', 'copy', '--quiet', ref, `docker-archive:${dockerArchive}:test/arch:v1`]);
    const r1 = await convertImage({ ref: `oci-archive:${ociArchive}:v1`, output: join(work, 'arch1.cdimg'), pool });
    const r2 = await convertImage({ ref: `docker-archive:${dockerArchive}`, output: join(work, 'arch2.cdimg'), pool });
    const r3 = await convertImage({ ref: `docker-archive:${dockerArchive}:test/arch:v1`, output: join(work, 'arch3.cdimg'), pool });
    expect(r1.imageId).toBe(r0.imageId);
    // docker-archive keeps the tree; its config is the one skopeo wrote (same tree => same entries)
    const a = await CdimgReader.open(join(work, 'arch0.cdimg'));
    const b = await CdimgReader.open(join(work, 'arch2.cdimg'));
    try {
      expect(b.index.entries).toEqual(a.index.entries);
    } finally {
      await a.close();
      await b.close();
    }
    expect(r3.imageId).toBe(r2.imageId);
  });

  it('selects the platform from an image index', async () => {
    const dir = join(work, 'multi');
    const w = await OciLayoutWriter.create(dir);
    const mk = async (arch: string, content: string) => {
      const tar = buildTar([{ header: { name: 'arch', type: 'file' }, data: Buffer.from(content) }]);
      const layer = await w.putBlob(gzipSync(tar), MT.OCI_LAYER_GZIP);
      const config = await w.putBlob(Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [digestOf(tar)] } })), MT.OCI_CONFIG);
      const m = await w.putBlob(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.OCI_MANIFEST, config, layers: [layer] })), MT.OCI_MANIFEST);
      return { ...m, platform: { os: 'linux', architecture: arch } };
    };
    const index = { schemaVersion: 2, mediaType: MT.OCI_INDEX, manifests: [await mk('arm64', 'arm'), await mk('amd64', 'x86')] };
    const idx = await w.putBlob(Buffer.from(JSON.stringify(index)), MT.OCI_INDEX);
    await w.tag(idx, 'multi');
    const out = join(work, 'multi-arm.cdimg');
    await convertImage({ ref: `oci:${dir}:multi`, output: out, platform: 'linux/arm64', pool });
    const r = await CdimgReader.open(out);
    try {
      expect((await r.readContent(r.byPath.get('arch')!.digest)).toString()).toBe('arm');
      expect(r.index.image.platform).toBe('linux/arm64');
    } finally {
      await r.close();
    }
    await expectError(convertImage({ ref: `oci:${dir}:multi`, output: join(work, 'multi-s390.cdimg'), platform: 'linux/s390x', pool }), 'NOT_FOUND', /no image for platform linux\/s390x/);
  });
});

describe('hostile and damaged images are refused, nothing is left behind', () => {
  const cases: [string, () => Buffer, string, RegExp][] = [
    ['dot-dot path', () => buildTar([{ header: { name: '../evil', type: 'file' }, data: Buffer.from('x') }]), 'HOSTILE', /contains "\.\."/],
    ['nested dot-dot', () => buildTar([{ header: { name: 'a/../../evil', type: 'file' }, data: Buffer.from('x') }]), 'HOSTILE', /contains "\.\."/],
    ['absolute path', () => buildTar([{ header: { name: '/etc/evil', type: 'file' }, data: Buffer.from('x') }]), 'HOSTILE', /absolute path/],
    ['hard link escaping the root', () => buildTar([{ header: { name: 'l', type: 'link', linkname: '../../etc/passwd' } }]), 'HOSTILE', /contains "\.\."/],
    ['hard link to a missing file', () => buildTar([{ header: { name: 'l', type: 'link', linkname: 'nothing' } }]), 'CORRUPT', /does not exist/],
    ['write through a symlink', () => buildTar([{ header: { name: 'a', type: 'symlink', linkname: '/etc' } }, { header: { name: 'a/passwd', type: 'file' }, data: Buffer.from('x') }]), 'HOSTILE', /through a symlink/],
    ['truncated tar', () => buildTar([{ header: { name: 'f', type: 'file' }, data: Buffer.alloc(10000, 1) }]).subarray(0, 4096), 'CORRUPT', /truncated/],
  ];
  for (const [name, tar, kind, re] of cases) {
    it(`refuses ${name}`, async () => {
      const slug = name.replace(/\W+/g, '-');
      const ref = await makeImage(`hostile-${slug}`, [tar()], 'none');
      const outDir = join(work, `out-${slug}`);
      await fsp.mkdir(outDir);
      await expectError(convertImage({ ref, output: join(outDir, 'x.cdimg'), pool }), kind, re);
      await dirHasNoLeftovers(outDir, []);
    });
  }

  it('refuses absurd sizes', async () => {
    const tar = buildTar([{ header: { name: 'f', type: 'file' }, data: Buffer.from('x') }]);
    tar.fill(0, 124, 136);
    tar[124] = 0x80;
    tar[128] = 0x40; // 2^62 bytes
    tar.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += tar[i];
    tar.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
    const ref = await makeImage('hostile-size', [tar], 'none');
    await expectError(convertImage({ ref, output: join(work, 'size.cdimg'), pool }), 'HOSTILE', /limit|absurd/);
  });

  it('refuses corrupt gzip even when its digest matches', async () => {
    const dir = join(work, 'badgz');
    const w = await OciLayoutWriter.create(dir);
    const tar = buildTar([{ header: { name: 'f', type: 'file' }, data: Buffer.alloc(50000, 3) }]);
    const gz = gzipSync(tar);
    gz[gz.length >> 1] ^= 0x55;
    const layer = await w.putBlob(gz, MT.OCI_LAYER_GZIP);
    const config = await w.putBlob(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [digestOf(tar)] } })), MT.OCI_CONFIG);
    const m = await w.putBlob(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.OCI_MANIFEST, config, layers: [layer] })), MT.OCI_MANIFEST);
    await w.tag(m, 'v1');
    await expectError(convertImage({ ref: `oci:${dir}:v1`, output: join(work, 'badgz.cdimg'), pool }), 'CORRUPT', /gzip|diff_id|mismatch/);
  });

  it('refuses a blob that does not match its digest', async () => {
    const ref = await makeImage('flipped', [layer1()], 'gzip');
    const dir = ref.slice(4, -3);
    const manifest = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')).manifests[0].digest.slice(7);
    const layerDigest = JSON.parse(readFileSync(join(dir, 'blobs/sha256', manifest), 'utf8')).layers[0].digest.slice(7);
    const p = join(dir, 'blobs/sha256', layerDigest);
    const b = readFileSync(p);
    b[100] ^= 1;
    await fsp.writeFile(p, b);
    await expectError(convertImage({ ref, output: join(work, 'flipped.cdimg'), pool }), 'CORRUPT', /digest mismatch|gzip/);
  });

  it('refuses a missing layout and a missing tag with clear messages', async () => {
    await expectError(convertImage({ ref: `oci:${join(work, 'nope')}:v1`, output: join(work, 'nope.cdimg'), pool }), 'NOT_FOUND', /not an OCI image layout/);
    const ref = await makeImage('tagged', [layer1()], 'gzip');
    await expectError(convertImage({ ref: ref.replace(/:v1$/, ':v9'), output: join(work, 'v9.cdimg'), pool }), 'NOT_FOUND', /no image tagged "v9"/);
  });
});

describe('damaged .cdimg files are refused', () => {
  let good: Buffer;
  let path: string;
  beforeAll(async () => {
    const ref = await makeImage('dmg', [layer1()], 'gzip');
    path = join(work, 'dmg.cdimg');
    await convertImage({ ref, output: path, pool });
    good = readFileSync(path);
  });
  const damaged = async (name: string, f: (b: Buffer) => Buffer): Promise<string> => {
    const p = join(work, name);
    await fsp.writeFile(p, f(Buffer.from(good)));
    return p;
  };

  it('truncated', async () => {
    await expectError(CdimgReader.open(await damaged('t.cdimg', (b) => b.subarray(0, b.length - 10))), 'CORRUPT', /truncated or damaged/);
    await expectError(CdimgReader.open(await damaged('t2.cdimg', (b) => b.subarray(0, 50))), 'CORRUPT', /too short/);
  });
  it('bit flip in the index', async () => {
    await expectError(CdimgReader.open(await damaged('i.cdimg', (b) => { b[b.length - 20] ^= 0x10; return b; })), 'CORRUPT', /index|root digest/);
  });
  it('bit flip in a blob: verify fails, reading that content fails', async () => {
    const p = await damaged('b.cdimg', (b) => { b[200] ^= 0x01; return b; });
    await expectError(verifyCdimg(p, 1), 'CORRUPT', /damaged|digest/);
  });
  it('wrong version and random bytes', async () => {
    await expectError(CdimgReader.open(await damaged('v.cdimg', (b) => { b.writeUInt32LE(99, 8); return b; })), 'UNSUPPORTED', /version 99/);
    await expectError(CdimgReader.open(await damaged('r.cdimg', () => Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 0xff)))), 'CORRUPT', /not a \.cdimg/);
  });
  it('imageInfo: ids and image information from the verified index, without the tree; damage is refused the same way', async () => {
    forgetOpenedIndexes();
    const info = await CdimgReader.imageInfo(path);
    const r = await CdimgReader.open(path);
    try {
      expect(info).toEqual({ rootDigest: r.rootDigest, imageId: r.imageId, parentId: undefined, isDelta: false, image: r.index.image, fileSize: statSync(path).size });
    } finally {
      await r.close();
    }
    await expectError(CdimgReader.imageInfo(await damaged('ii.cdimg', (b) => { b[b.length - 20] ^= 0x10; return b; })), 'CORRUPT', /index|root digest/);
    await expectError(CdimgReader.imageInfo(await damaged('it.cdimg', (b) => b.subarray(0, b.length - 10))), 'CORRUPT', /truncated or damaged/);
    await expectError(CdimgReader.imageInfo(join(work, 'no-such.cdimg')), 'NOT_FOUND', /no such file/);
    // an index this process decoded (reuse) is taken as it is
    const a = await CdimgReader.open(path, { reuse: true });
    await a.close();
    expect((await CdimgReader.imageInfo(path)).image).toBe(a.index.image);
  });
  it('the good file verifies', async () => {
    const r = await verifyCdimg(path, 2);
    expect(r.contentsVerified).toBeGreaterThan(5);
  });
  it('reuse shares a verified index only with files of the same header; their chunks are still verified', async () => {
    forgetOpenedIndexes();
    const a = await CdimgReader.open(path, { reuse: true });
    const copy = await damaged('copy.cdimg', (b) => b);
    const b = await CdimgReader.open(copy, { reuse: true });
    const plain = await CdimgReader.open(copy);
    try {
      expect(b.index).toBe(a.index); // decoded once
      expect(plain.index).not.toBe(a.index); // without reuse: read and decoded again
      const reg = a.index.entries.find((e) => e.type === FileType.REG && e.size > 0)!;
      expect((await b.readContent(reg.digest)).length).toBe(reg.size);
    } finally {
      await Promise.all([a.close(), b.close(), plain.close()]);
    }
    // same header, damaged blob: the shared index does not make the damaged bytes readable
    const reg = a.index.entries.find((e) => e.type === FileType.REG && e.size > 0)!;
    const chunk = a.blob(reg.digest)!.chunks[0];
    const dmg = await damaged('dmg-reuse.cdimg', (x) => { x[chunk.offset] ^= 0x01; return x; });
    const d = await CdimgReader.open(dmg, { reuse: true });
    try {
      expect(d.index).toBe(a.index);
      await expectError(d.readContent(reg.digest), 'CORRUPT', /damaged/);
    } finally {
      await d.close();
    }
    // a file with another header (a flipped index byte changes nothing in the header) is read on its own
    const other = await damaged('hdr.cdimg', (x) => { x[x.length - 20] ^= 0x10; return x; });
    await expectError(CdimgReader.open(other), 'CORRUPT', /index|root digest/);
    const truncated = await damaged('short.cdimg', (x) => x.subarray(0, x.length - 10));
    await expectError(CdimgReader.open(truncated, { reuse: true }), 'CORRUPT', /truncated or damaged/);
  });
});

describe('ctr-cli', () => {
  const cli = async (args: string[]) => run('node', [CLI, ...args]).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e) => ({ code: e.code as number, stdout: e.stdout as string, stderr: e.stderr as string }),
  );

  it('has --help on every command', async () => {
    for (const args of [['--help'], ['convert', '--help'], ['cdimg', '--help'], ['cdimg', 'show', '--help'], ['cdimg', 'verify', '--help'], ['cdimg', 'unpack', '--help']]) {
      const r = await cli(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Usage: ctr-cli/);
    }
  });

  it('converts with D4C flags, shows JSON, and exits with meaningful codes', async () => {
    const ref = await makeImage('cli', [layer1(), layer2()], 'gzip');
    const out = join(work, 'cli.cdimg');
    const conv = await cli(['convert', '--imageTag', ref, '--output', out, '--threadNum', '2', '--json']);
    expect(conv.code).toBe(0);
    expect(JSON.parse(conv.stdout).entries).toBeGreaterThan(10);
    const show = await cli(['cdimg', 'show', '--cdimg', out, '--json']);
    expect(show.code).toBe(0);
    const s = JSON.parse(show.stdout);
    expect(s.kind).toBe('full');
    expect(s.entryList.find((x: { path: string }) => x.path === '/usr/bin/su').mode).toBe('4755');
    const missing = await cli(['convert', '--output', out]);
    expect(missing.code).toBe(2);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);
    expect(missing.stderr).toMatch(/--image is required/);
    const notFound = await cli(['convert', '--image', `oci:${join(work, 'nothing')}`, '--output', join(work, 'n.cdimg')]);
    expect(notFound.code).toBe(3);
    await fsp.writeFile(join(work, 'junk.cdimg'), 'junk');
    const junk = await cli(['cdimg', 'verify', join(work, 'junk.cdimg')]);
    expect(junk.code).toBe(6);
    expect(junk.stderr).toMatch(/too short|not a \.cdimg/);
    const bad = await cli(['convert', '--image', '../x:y:z', '--output', out]);
    expect(bad.code).toBe(2);
  });
});
