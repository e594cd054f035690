import { Readable } from 'node:stream';
import { buildTar, encodeTarHeader, readTar, TarHeader, TAR_END, tarPadding } from './index';
import { D4fsError } from '../errors';

async function readAll(buf: Buffer, chunk = 777): Promise<{ h: TarHeader; data: Buffer }[]> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < buf.length; i += chunk) pieces.push(buf.subarray(i, i + chunk));
  const out: { h: TarHeader; data: Buffer }[] = [];
  for await (const e of readTar(Readable.from(pieces))) {
    const parts: Buffer[] = [];
    if (e.header.type === 'file') for await (const c of e.body()) parts.push(c);
    out.push({ h: e.header, data: Buffer.concat(parts) });
  }
  return out;
}

const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex'); // binary, not UTF-8 safe

describe('tar reader/writer', () => {
  it('round-trips long names, binary xattrs, ns mtimes, big ids, devices', async () => {
    const longDir = 'd'.repeat(120);
    const tar = buildTar([
      { header: { name: 'etc/', type: 'dir', mode: 0o755 } },
      { header: { name: `${longDir}/${'f'.repeat(200)}`, type: 'file', mode: 0o4755, uid: 3000000, gid: 70000, mtimeSec: 1700000000, mtimeNsec: 123456789, xattrs: new Map([['security.capability', cap], ['user.note', Buffer.from('hé')]]) }, data: Buffer.from('hello') },
      { header: { name: 'link', type: 'symlink', linkname: 'x'.repeat(300) } },
      { header: { name: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 } },
      { header: { name: 'hl', type: 'link', linkname: 'etc/' } },
      { header: { name: 'fifo', type: 'fifo' } },
    ]);
    const got = await readAll(tar);
    expect(got.map((g) => g.h.name)).toEqual(['etc/', `${longDir}/${'f'.repeat(200)}`, 'link', 'dev/null', 'hl', 'fifo']);
    const f = got[1].h;
    expect(f.mode).toBe(0o4755);
    expect(f.uid).toBe(3000000);
    expect(f.gid).toBe(70000);
    expect([f.mtimeSec, f.mtimeNsec]).toEqual([1700000000, 123456789]);
    expect(f.xattrs.get('security.capability')).toEqual(cap);
    expect(f.xattrs.get('user.note')?.toString()).toBe('hé');
    expect(got[1].data.toString()).toBe('hello');
    expect(got[2].h.linkname).toBe('x'.repeat(300));
    expect([got[3].h.type, got[3].h.devmajor, got[3].h.devminor]).toEqual(['char', 1, 3]);
    expect(got[4].h.type).toBe('link');
    expect(got[5].h.type).toBe('fifo');
  });

  it('reads GNU tar output (long names, base-256) the same as ours', async () => {
    // encode a header whose size needs base-256 by hand: GNU format
    const h = encodeTarHeader({ name: 'a', type: 'file', mode: 0o644, uid: 0, gid: 0, uname: '', gname: '', size: 3, mtimeSec: 1, mtimeNsec: 0, linkname: '', devmajor: 0, devminor: 0, xattrs: new Map() });
    const got = await readAll(Buffer.concat([h, Buffer.from('abc'), tarPadding(3), TAR_END]));
    expect(got[0].data.toString()).toBe('abc');
  });

  it('refuses a truncated archive', async () => {
    const tar = buildTar([{ header: { name: 'f', type: 'file' }, data: Buffer.alloc(5000, 1) }]);
    await expect(readAll(tar.subarray(0, 2048))).rejects.toThrow(/truncated/);
  });

  it('refuses a header with a bad checksum', async () => {
    const tar = buildTar([{ header: { name: 'f', type: 'file' }, data: Buffer.from('x') }]);
    tar[10] ^= 0xff;
    await expect(readAll(tar)).rejects.toThrow(/checksum/);
  });

  it('refuses absurd sizes (base-256 2^62)', async () => {
    const tar = buildTar([{ header: { name: 'f', type: 'file' }, data: Buffer.from('x') }]);
    // size field at 124..136: base-256 with high bit, value 2^62
    tar.fill(0, 124, 136);
    tar[124] = 0x80;
    tar[128] = 0x40;
    let sum = 0;
    tar.fill(0x20, 148, 156);
    for (let i = 0; i < 512; i++) sum += tar[i];
    tar.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
    const err = await readAll(tar).catch((e) => e);
    expect(err).toBeInstanceOf(D4fsError);
    expect((err as D4fsError).kind).toBe('HOSTILE');
  });

  it('stops at the end-of-archive blocks and drains trailing padding', async () => {
    const tar = Buffer.concat([buildTar([{ header: { name: 'f', type: 'file' }, data: Buffer.from('x') }]), Buffer.alloc(8192)]);
    const got = await readAll(tar);
    expect(got).toHaveLength(1);
  });
});
