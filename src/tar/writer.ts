/**
 * Tar header encoder (ustar + pax). Emits a pax header only where ustar cannot
 * hold the value (long names, big ids or sizes, sub-second mtimes, xattrs), so
 * simple entries come out as plain ustar. Binary xattr values are kept as is.
 */
import { TarHeader, TarType } from './types';

const BLOCK = 512;
export const TAR_END = Buffer.alloc(BLOCK * 2);

const TYPEFLAG: Record<TarType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
};

export function tarPadding(size: number): Buffer {
  const rem = size % BLOCK;
  return rem === 0 ? Buffer.alloc(0) : Buffer.alloc(BLOCK - rem);
}

function fitsOctal(v: number, len: number): boolean {
  return v >= 0 && v < 8 ** (len - 1);
}

function writeOctal(b: Buffer, off: number, len: number, v: number): void {
  const s = Math.max(0, v).toString(8).padStart(len - 1, '0');
  b.write(s.slice(-(len - 1)), off, len - 1, 'ascii');
  b[off + len - 1] = 0;
}

function writeString(b: Buffer, off: number, len: number, s: string): void {
  Buffer.from(s, 'utf8').copy(b, off, 0, len);
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'ascii'), body]);
}

function ustarBlock(h: TarHeader, name: string, linkname: string, typeflag: string, size: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  let prefix = '';
  let short = name;
  if (Buffer.byteLength(name) > 100) {
    // Split at a '/' so that name <= 100 and prefix <= 155 when possible.
    const bytes = Buffer.from(name);
    for (let i = bytes.length - 1; i > 0; i--) {
      if (bytes[i] === 0x2f && i <= 155 && bytes.length - i - 1 <= 100 && bytes.length - i - 1 > 0) {
        prefix = bytes.subarray(0, i).toString('utf8');
        short = bytes.subarray(i + 1).toString('utf8');
        break;
      }
    }
  }
  writeString(b, 0, 100, short);
  writeOctal(b, 100, 8, h.mode & 0o7777);
  writeOctal(b, 108, 8, fitsOctal(h.uid, 8) ? h.uid : 0);
  writeOctal(b, 116, 8, fitsOctal(h.gid, 8) ? h.gid : 0);
  writeOctal(b, 124, 12, fitsOctal(size, 12) ? size : 0);
  writeOctal(b, 136, 12, fitsOctal(h.mtimeSec, 12) ? h.mtimeSec : 0);
  b.fill(0x20, 148, 156);
  b.write(typeflag, 156, 1, 'ascii');
  writeString(b, 157, 100, linkname);
  b.write('ustar\u000000', 257, 8, 'latin1');
  writeString(b, 265, 32, h.uname);
  writeString(b, 297, 32, h.gname);
  if (h.type === 'char' || h.type === 'block') {
    writeOctal(b, 329, 8, h.devmajor);
    writeOctal(b, 337, 8, h.devminor);
  }
  writeString(b, 345, 155, prefix);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i];
  writeOctal(b, 148, 7, sum);
  b[155] = 0x20;
  return b;
}

/** Encode the header blocks (pax + ustar) of one entry. Data and padding follow separately. */
export function encodeTarHeader(h: TarHeader): Buffer {
  const typeflag = TYPEFLAG[h.type];
  const name = h.type === 'dir' && !h.name.endsWith('/') ? `${h.name}/` : h.name;
  const size = h.type === 'file' ? h.size : 0;
  const recs: Buffer[] = [];
  const nameBytes = Buffer.byteLength(name);
  const needsPrefixSplit = nameBytes > 100;
  let splittable = false;
  if (needsPrefixSplit) {
    const bytes = Buffer.from(name);
    for (let i = bytes.length - 1; i > 0; i--) {
      if (bytes[i] === 0x2f && i <= 155 && bytes.length - i - 1 <= 100 && bytes.length - i - 1 > 0) {
        splittable = true;
        break;
      }
    }
  }
  if (needsPrefixSplit && !splittable) recs.push(paxRecord('path', Buffer.from(name)));
  if (Buffer.byteLength(h.linkname) > 100) recs.push(paxRecord('linkpath', Buffer.from(h.linkname)));
  if (!fitsOctal(h.uid, 8)) recs.push(paxRecord('uid', Buffer.from(String(h.uid))));
  if (!fitsOctal(h.gid, 8)) recs.push(paxRecord('gid', Buffer.from(String(h.gid))));
  if (!fitsOctal(size, 12)) recs.push(paxRecord('size', Buffer.from(String(size))));
  if (h.mtimeNsec !== 0 || !fitsOctal(h.mtimeSec, 12)) {
    const frac = h.mtimeNsec ? '.' + String(h.mtimeNsec).padStart(9, '0').replace(/0+$/, '') : '';
    recs.push(paxRecord('mtime', Buffer.from(`${h.mtimeSec}${frac}`)));
  }
  if (Buffer.byteLength(h.uname) > 32) recs.push(paxRecord('uname', Buffer.from(h.uname)));
  if (Buffer.byteLength(h.gname) > 32) recs.push(paxRecord('gname', Buffer.from(h.gname)));
  for (const k of [...h.xattrs.keys()].sort()) recs.push(paxRecord(`SCHILY.xattr.${k}`, h.xattrs.get(k) as Buffer));
  const main = ustarBlock(h, needsPrefixSplit && !splittable ? name.slice(0, 99) : name, Buffer.byteLength(h.linkname) > 100 ? h.linkname.slice(0, 99) : h.linkname, typeflag, size);
  if (recs.length === 0) return main;
  const paxData = Buffer.concat(recs);
  const paxHeader: TarHeader = {
    ...h,
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    uname: '',
    gname: '',
    mtimeSec: fitsOctal(h.mtimeSec, 12) ? h.mtimeSec : 0,
    mtimeNsec: 0,
    linkname: '',
    xattrs: new Map(),
  };
  const paxName = `PaxHeaders/${Buffer.from(name).subarray(0, 80).toString('utf8').replace(/\/$/, '')}`;
  const px = ustarBlock(paxHeader, paxName, '', 'x', paxData.length);
  return Buffer.concat([px, paxData, tarPadding(paxData.length), main]);
}

/** Convenience for tests and small archives: build a whole tar in memory. */
export function buildTar(entries: { header: Partial<TarHeader> & { name: string; type: TarType }; data?: Buffer }[], opts: { end?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    const h: TarHeader = {
      mode: e.header.type === 'dir' ? 0o755 : 0o644,
      uid: 0,
      gid: 0,
      uname: '',
      gname: '',
      size: e.header.type === 'file' ? data.length : 0,
      mtimeSec: 1700000000,
      mtimeNsec: 0,
      linkname: '',
      devmajor: 0,
      devminor: 0,
      xattrs: new Map(),
      ...e.header,
    };
    parts.push(encodeTarHeader(h));
    if (h.type === 'file') {
      parts.push(data, tarPadding(data.length));
    }
  }
  if (opts.end !== false) parts.push(TAR_END);
  return Buffer.concat(parts);
}
