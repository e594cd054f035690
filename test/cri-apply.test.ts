/**
 * Applying a layer in overlayfs' format (src/cri/apply.ts): what a CRI
 * image's lower layer, provided empty by d4fs, gets when another image
 * builds on it.
 */
import { promises as fsp, lstatSync, readFileSync, readlinkSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { get as getAttribute } from 'fs-xattr';
import { buildTar } from '../src/tar';
import { applyLayer } from '../src/cri/apply';
import { D4fsError } from '../src/errors';

let work: string;
beforeAll(async () => {
  work = await fsp.mkdtemp(join(tmpdir(), 'd4fs-apply-'));
});
afterAll(async () => {
  await fsp.rm(work, { recursive: true, force: true });
});

async function* once(b: Buffer): AsyncIterable<Buffer> {
  yield b;
}

describe('applyLayer', () => {
  it('writes files, links and metadata; whiteouts become 0:0 devices, opaque markers an xattr', async () => {
    const dir = join(work, 'a');
    await fsp.mkdir(dir);
    const tar = buildTar([
      { header: { name: './', type: 'dir', mode: 0o755 } },
      { header: { name: 'etc/', type: 'dir', mode: 0o755 } },
      { header: { name: 'etc/conf', type: 'file', mode: 0o640, uid: 1000, gid: 1001, mtimeSec: 1600000000 }, data: Buffer.from('a=1\n') },
      { header: { name: 'etc/link', type: 'link', linkname: 'etc/conf' } },
      { header: { name: 'bin/', type: 'dir' } },
      { header: { name: 'bin/sh', type: 'symlink', linkname: 'busybox' } },
      { header: { name: 'usr/bin/su', type: 'file', mode: 0o4755 }, data: Buffer.from('su') },
      { header: { name: 'var/.wh..wh..opq', type: 'file' } },
      { header: { name: '.wh.gone', type: 'file' } },
    ]);
    const n = await applyLayer(dir, once(tar), 'test layer');
    expect(n).toBe(9);
    expect(readFileSync(join(dir, 'etc/conf'), 'utf8')).toBe('a=1\n');
    const st = lstatSync(join(dir, 'etc/conf'));
    expect([st.mode & 0o7777, st.uid, st.gid, st.mtimeMs]).toEqual([0o640, 1000, 1001, 1600000000000]);
    expect(lstatSync(join(dir, 'etc/link')).ino).toBe(st.ino);
    expect(readlinkSync(join(dir, 'bin/sh'))).toBe('busybox');
    expect(lstatSync(join(dir, 'usr/bin/su')).mode & 0o7777).toBe(0o4755);
    const wh = lstatSync(join(dir, 'gone'));
    expect(wh.isCharacterDevice()).toBe(true);
    expect(wh.rdev).toBe(0);
    expect((await getAttribute(join(dir, 'var'), 'trusted.overlay.opaque')).toString()).toBe('y');
  });

  it('refuses a path through a symlink and a hard link to what the layer lacks; writes nothing outside', async () => {
    const dir = join(work, 'b');
    await fsp.mkdir(dir);
    const outside = join(work, 'outside');
    await fsp.mkdir(outside);
    const evil = buildTar([
      { header: { name: 'x', type: 'symlink', linkname: outside } },
      { header: { name: 'x/pwned', type: 'file' }, data: Buffer.from('no') },
    ]);
    const e1 = await applyLayer(dir, once(evil), 'evil layer').catch((e) => e);
    expect(e1).toBeInstanceOf(D4fsError);
    expect((e1 as D4fsError).kind).toBe('HOSTILE');
    expect(existsSync(join(outside, 'pwned'))).toBe(false);

    const dir2 = join(work, 'c');
    await fsp.mkdir(dir2);
    const e2 = await applyLayer(dir2, once(buildTar([{ header: { name: 'l', type: 'link', linkname: 'etc/shadow' } }])), 'link layer').catch((e) => e);
    expect((e2 as D4fsError).kind).toBe('HOSTILE');
    const e3 = await applyLayer(dir2, once(buildTar([{ header: { name: '../up', type: 'file' }, data: Buffer.from('x') }])), 'dotdot layer').catch((e) => e);
    expect((e3 as D4fsError).kind).toBe('HOSTILE');
  });
});
