/**
 * The image id, hashed a piece of the tree at a time (computeImageId), is the
 * sha256 of the whole Tree message: the same digest for trees shorter and
 * longer than a piece, with xattrs, links and a config.
 */
import { createHash } from 'node:crypto';
import { computeImageId } from './codec';
import { encodeTreePb } from './pb';
import { Entry, FileType } from './types';

function tree(n: number): Entry[] {
  const out: Entry[] = [{ path: '', type: FileType.DIR, mode: 0o755, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, size: 0, digest: Buffer.alloc(0), linkTarget: '', devMajor: 0, devMinor: 0, xattrs: [], uname: '', gname: '' }];
  for (let i = 1; i < n; i++) {
    const reg = i % 3 !== 0;
    out.push({
      path: `d${i % 7}/f${i}`,
      type: reg ? FileType.REG : FileType.SYMLINK,
      mode: 0o644,
      uid: i % 5,
      gid: 1000,
      mtimeSec: 1_700_000_000 + i,
      mtimeNsec: i % 1000,
      size: reg ? i : 3,
      digest: reg ? Buffer.alloc(32, i % 251) : Buffer.alloc(0),
      linkTarget: reg ? '' : 'x/y',
      devMajor: 0,
      devMinor: 0,
      xattrs: i % 11 === 0 ? [{ name: 'user.k', value: Buffer.from(`v${i}`) }] : [],
      uname: i % 2 ? 'root' : '',
      gname: 'g',
    });
  }
  return out;
}

describe('computeImageId', () => {
  it.each([0, 1, 4095, 4096, 4097, 10_000])('is the sha256 of the Tree message for %i entries', (n) => {
    const entries = tree(n);
    for (const config of [Buffer.alloc(0), Buffer.from('{"architecture":"amd64"}')]) {
      expect(computeImageId(entries, config).toString('hex')).toBe(createHash('sha256').update(encodeTreePb(entries, config)).digest('hex'));
    }
  });
});
