/**
 * A strict streaming tar reader (ustar, pax, GNU long names) that keeps what
 * fidelity needs and common libraries drop: binary xattr values from pax
 * records (security.capability), nanosecond mtimes, base-256 numbers.
 * Hostile or damaged archives are refused with D4fsError (CORRUPT, HOSTILE,
 * UNSUPPORTED); nothing here touches the filesystem.
 */
import { corrupt, hostile, unsupported } from '../errors';
import { ByteReader } from './bytereader';
import { TarHeader, TarType } from './types';

export interface TarReadOptions {
  /** Largest regular file accepted (bytes). Default 64 GiB. */
  maxEntrySize?: number;
  /** Largest pax / long-name record accepted (bytes). Default 1 MiB. */
  maxMetaSize?: number;
  /** Description for error messages, e.g. "layer sha256:…". */
  what?: string;
}

export interface TarEntry {
  header: TarHeader;
  /** Stream the entry's data; must be consumed (or skipped by not calling) before the next entry. */
  body(): AsyncIterable<Buffer>;
}

const BLOCK = 512;
const DEFAULT_MAX_ENTRY = 64 * 1024 ** 3;
const DEFAULT_MAX_META = 1024 * 1024;

function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function cstring(b: Buffer, start: number, len: number): string {
  let end = start;
  const max = start + len;
  while (end < max && b[end] !== 0) end++;
  return b.toString('utf8', start, end);
}

/** Parse a numeric field: octal ASCII or GNU base-256 (positive only). */
function parseNumber(b: Buffer, start: number, len: number, field: string, what: string): number {
  if (b[start] & 0x80) {
    if (b[start] === 0xff) throw hostile(`${what}: negative base-256 ${field} in tar header`);
    let v = b[start] & 0x7f;
    for (let i = start + 1; i < start + len; i++) {
      v = v * 256 + b[i];
      if (v > Number.MAX_SAFE_INTEGER) throw hostile(`${what}: ${field} in tar header is absurdly large`);
    }
    return v;
  }
  let i = start;
  const end = start + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++;
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = b[i];
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) throw corrupt(`${what}: invalid octal ${field} in tar header`);
    v = v * 8 + (c - 0x30);
    digits++;
  }
  if (digits === 0) return 0;
  return v;
}

/**
 * Whether `stored` (the header's checksum field, parsed by the caller's own
 * rules) is the checksum of header block `b`: the sum of its bytes with the
 * field itself counted as spaces, unsigned or (historic tars) signed.
 */
export function headerChecksumMatches(b: Buffer, stored: number): boolean {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[i];
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return stored === unsigned || stored === signed;
}

function checksumOk(b: Buffer, what: string): boolean {
  return headerChecksumMatches(b, parseNumber(b, 148, 8, 'checksum', what));
}

interface PaxRecords {
  [key: string]: Buffer;
}

function parsePax(buf: Buffer, what: string): PaxRecords {
  const out: PaxRecords = {};
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] === 0) break; // padding
    let sp = pos;
    while (sp < buf.length && buf[sp] !== 0x20) sp++;
    if (sp >= buf.length) throw corrupt(`${what}: malformed pax record`);
    const len = Number(buf.toString('ascii', pos, sp));
    if (!Number.isInteger(len) || len <= sp - pos + 1 || pos + len > buf.length) throw corrupt(`${what}: malformed pax record length`);
    const rec = buf.subarray(sp + 1, pos + len);
    if (rec[rec.length - 1] !== 0x0a) throw corrupt(`${what}: pax record without newline`);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw corrupt(`${what}: pax record without key`);
    const key = rec.toString('utf8', 0, eq);
    out[key] = Buffer.from(rec.subarray(eq + 1, rec.length - 1));
    pos += len;
  }
  return out;
}

/** "1700000000.123456789" → [sec, nsec]; accepts a sign and short fractions. */
export function parsePaxTime(s: string, what: string): [number, number] {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(s.trim());
  if (!m) throw corrupt(`${what}: invalid pax time "${s.slice(0, 40)}"`);
  const neg = m[1] === '-';
  let sec = Number(m[2]);
  const frac = (m[3] ?? '').slice(0, 9).padEnd(9, '0');
  let nsec = Number(frac);
  if (!Number.isSafeInteger(sec)) throw hostile(`${what}: pax time out of range`);
  if (neg) {
    sec = -sec;
    if (nsec > 0) {
      sec -= 1;
      nsec = 1e9 - nsec;
    }
  }
  return [sec, nsec];
}

const TYPE_MAP: Record<string, TarType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};

/** Metadata records read so far: pax, GNU long name and long link apply to the next entry, global pax to every entry after it. */
interface PendingMeta {
  globalPax: PaxRecords;
  pax: PaxRecords | null;
  longName: string | null;
  longLink: string | null;
}

/**
 * Take the metadata record or skipped entry (`V`, a volume label) of type
 * `typeflag`: true when it was one (the loop goes on to the next header),
 * false for an entry of its own.
 */
async function takeMetaRecord(typeflag: string, size: number, meta: PendingMeta, readMeta: (size: number, kind: string) => Promise<Buffer>, r: ByteReader, what: string): Promise<boolean> {
  switch (typeflag) {
    case 'x':
      meta.pax = { ...(meta.pax ?? {}), ...parsePax(await readMeta(size, 'pax header'), what) };
      return true;
    case 'g':
      meta.globalPax = { ...meta.globalPax, ...parsePax(await readMeta(size, 'global pax header'), what) };
      return true;
    case 'L':
      meta.longName = cstring(await readMeta(size, 'GNU long name'), 0, size);
      return true;
    case 'K':
      meta.longLink = cstring(await readMeta(size, 'GNU long link'), 0, size);
      return true;
    case 'S':
      throw unsupported(`${what}: GNU sparse files are not supported`);
    case 'V':
      await r.skipExact(size + pad(size), `${what}: truncated archive`);
      return true;
    default:
      return false;
  }
}

/**
 * The header of an entry from its header block and the metadata that
 * applies to it (`rec`: global and own pax records; GNU long name and
 * link), and the size of its data as the archive declares it.
 */
function headerOf(block: Buffer, type: TarType, size: number, rec: PaxRecords, meta: PendingMeta, what: string): { header: TarHeader; entrySize: number } {
  const magic = block.toString('latin1', 257, 263);
  let name = cstring(block, 0, 100);
  if (magic === 'ustar\0') {
    const prefix = cstring(block, 345, 155);
    if (prefix) name = `${prefix}/${name}`;
  }
  if (meta.longName !== null) name = meta.longName;
  if (rec.path) name = rec.path.toString('utf8');
  let linkname = cstring(block, 157, 100);
  if (meta.longLink !== null) linkname = meta.longLink;
  if (rec.linkpath) linkname = rec.linkpath.toString('utf8');
  let entrySize = size;
  if (rec.size) {
    entrySize = Number(rec.size.toString('ascii'));
    if (!Number.isSafeInteger(entrySize) || entrySize < 0) throw hostile(`${what}: absurd size in pax header of "${name}"`);
  }
  let [mtimeSec, mtimeNsec] = [parseNumber(block, 136, 12, 'mtime', what), 0];
  if (rec.mtime) [mtimeSec, mtimeNsec] = parsePaxTime(rec.mtime.toString('ascii'), what);
  const num = (k: string, dflt: number): number => {
    if (!rec[k]) return dflt;
    const v = Number(rec[k].toString('ascii'));
    if (!Number.isSafeInteger(v) || v < 0) throw hostile(`${what}: invalid ${k} in pax header of "${name}"`);
    return v;
  };
  const xattrs = new Map<string, Buffer>();
  for (const [k, v] of Object.entries(rec)) {
    if (k.startsWith('SCHILY.xattr.')) xattrs.set(k.slice(13), v);
    else if (k.startsWith('LIBARCHIVE.xattr.')) xattrs.set(decodeURIComponent(k.slice(17)), Buffer.from(v.toString('ascii'), 'base64'));
  }
  const header: TarHeader = {
    name,
    type,
    mode: parseNumber(block, 100, 8, 'mode', what) & 0o7777,
    uid: num('uid', parseNumber(block, 108, 8, 'uid', what)),
    gid: num('gid', parseNumber(block, 116, 8, 'gid', what)),
    uname: rec.uname ? rec.uname.toString('utf8') : cstring(block, 265, 32),
    gname: rec.gname ? rec.gname.toString('utf8') : cstring(block, 297, 32),
    size: type === 'file' ? entrySize : 0,
    mtimeSec,
    mtimeNsec,
    linkname,
    devmajor: num('SCHILY.devmajor', magic.startsWith('ustar') ? parseNumber(block, 329, 8, 'devmajor', what) : 0),
    devminor: num('SCHILY.devminor', magic.startsWith('ustar') ? parseNumber(block, 337, 8, 'devminor', what) : 0),
    xattrs,
  };
  return { header, entrySize };
}

/**
 * Iterate over the entries of a tar stream. The source yields Buffers (any
 * Readable works). Errors are D4fsError; a truncated archive is CORRUPT.
 */
export async function* readTar(source: AsyncIterable<Buffer>, opts: TarReadOptions = {}): AsyncGenerator<TarEntry> {
  const what = opts.what ?? 'tar';
  const maxEntry = opts.maxEntrySize ?? DEFAULT_MAX_ENTRY;
  const maxMeta = opts.maxMetaSize ?? DEFAULT_MAX_META;
  const r = new ByteReader(source);
  const meta: PendingMeta = { globalPax: {}, pax: null, longName: null, longLink: null };

  const readMeta = async (size: number, kind: string): Promise<Buffer> => {
    if (size > maxMeta) throw hostile(`${what}: ${kind} record of ${size} bytes exceeds the ${maxMeta}-byte limit`);
    const data = await r.readExact(size);
    if (!data) throw corrupt(`${what}: truncated archive (inside a ${kind} record)`);
    await r.skipExact(pad(size), `${what}: truncated archive`);
    return data;
  };

  for (;;) {
    const block = await r.readExact(BLOCK);
    if (block === null) {
      if (meta.pax || meta.longName || meta.longLink) throw corrupt(`${what}: truncated archive (metadata record without its entry)`);
      return; // clean end without trailer blocks
    }
    if (isZeroBlock(block)) {
      // End of archive. Consume the rest (record padding) so that integrity
      // checks stacked on the source see the whole stream.
      await r.drainAll();
      return;
    }
    if (!checksumOk(block, what)) throw corrupt(`${what}: tar header checksum mismatch at byte ${r.position - BLOCK} (not a tar, or corrupt)`);
    const typeflag = String.fromCharCode(block[156]);
    const size = parseNumber(block, 124, 12, 'size', what);
    if (await takeMetaRecord(typeflag, size, meta, readMeta, r, what)) continue;
    const type = TYPE_MAP[typeflag];
    if (!type) throw unsupported(`${what}: unsupported tar entry type "${typeflag.replace(/[^\x20-\x7e]/g, '?')}"`);
    const rec: PaxRecords = { ...meta.globalPax, ...(meta.pax ?? {}) };
    if (Object.keys(rec).some((k) => k.startsWith('GNU.sparse'))) throw unsupported(`${what}: pax sparse files are not supported`);
    const { header, entrySize } = headerOf(block, type, size, rec, meta, what);
    const name = header.name;
    meta.pax = null;
    meta.longName = null;
    meta.longLink = null;
    if (header.size > maxEntry) throw hostile(`${what}: entry "${name}" declares ${header.size} bytes, over the ${maxEntry}-byte limit`);
    // Non-file entries may still carry data (e.g. hard links with size): skip it.
    const dataSize = type === 'file' ? header.size : entrySize;
    let consumed = false;
    const entry: TarEntry = {
      header,
      body: () => {
        if (consumed) throw new Error('tar entry body read twice');
        consumed = true;
        return r.stream(dataSize, `${what}: truncated archive (inside "${name}")`);
      },
    };
    yield entry;
    if (!consumed) await r.skipExact(dataSize, `${what}: truncated archive (inside "${name}")`);
    else await r.drainStream();
    await r.skipExact(pad(dataSize), `${what}: truncated archive (padding of "${name}")`);
  }
}

function pad(n: number): number {
  const rem = n % BLOCK;
  return rem === 0 ? 0 : BLOCK - rem;
}
