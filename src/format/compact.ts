/**
 * Format version 2's index: the tree and the contents as columns
 * (proto/cdimg.proto: Columns, ContentColumns, the edit script of a delta).
 *
 * Why columns: version 1 wrote one protobuf message per entry and per chunk,
 * with the full path and up to four sha256 digests each. On a 150,000-file
 * image that is ~119 stored bytes per entry (issue 18), and a delta repeated
 * the whole tree. Here every field is a packed column (which zstd shrinks to
 * almost nothing when it repeats), paths are base names under a depth column,
 * a content's digest is stored once in one table, a single-chunk content's
 * chunk digest is the content digest, zstd chunks carry no stored digest (the
 * decoded bytes are checked against their raw digest; whole-file checks use
 * the blob section's digest), and a delta stores only an edit script against
 * its parent's tree plus the entries it inserts: unchanged entries cost
 * nothing.
 *
 * The image id stays the sha256 of version 1's Tree encoding (codec.ts), so an
 * image has the same id whichever version wrote it.
 */
import { corrupt } from '../errors';
import { PbWriter, readPbFields } from './columns-pb';
import { baseName, checkRebuilds, depthOf, editScript, fullTree } from './tree-edit';
import { checkTreeName } from '../tree/paths';
import { type Blob, type Chunk, Codec, Encoding, type Entry, FileType, type Index, type InsertedEntry, Kind } from './types';

const EMPTY = Buffer.alloc(0);
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// ---------------------------------------------------------------------------
// columns of entries
// ---------------------------------------------------------------------------

const zz = (n: number): number => (n >= 0 ? n * 2 : -n * 2 - 1);
/** The value of a zigzag-encoded varint (exported for format/check.ts). */
export const unzz = (z: number): number => (z % 2 === 0 ? z / 2 : -(z + 1) / 2);

/** An entry's fields that its type does not use must be empty: the columns do not store them. */
function checkUnused(e: Entry): void {
  const reg = e.type === FileType.REG;
  const sized = reg || e.type === FileType.SYMLINK;
  const link = e.type === FileType.SYMLINK || e.type === FileType.HARDLINK;
  const dev = e.type === FileType.CHAR || e.type === FileType.BLOCK;
  if ((!sized && e.size !== 0) || (!reg && e.digest.length !== 0) || (!link && e.linkTarget !== '') || (!dev && (e.devMajor !== 0 || e.devMinor !== 0))) {
    throw corrupt(`entry "${e.path}": a ${FileType[e.type] ?? e.type} entry with fields of another type`);
  }
}

/** Write the Columns message of `entries` (their digests go to `digests`, a table shared with the contents). */
function encodeColumns(w: PbWriter, entries: Entry[], digests: DigestTable): void {
  const n = entries.length;
  const depth: number[] = new Array<number>(n);
  const type: number[] = new Array<number>(n);
  const mode: number[] = new Array<number>(n);
  const uid: number[] = new Array<number>(n);
  const gid: number[] = new Array<number>(n);
  const mtime: number[] = new Array<number>(n);
  const nsec: number[] = new Array<number>(n);
  const size: number[] = [];
  const content: number[] = [];
  const dev: number[] = [];
  const owners = new Map<string, number>([['', 0]]);
  const uname: number[] = new Array<number>(n);
  const gname: number[] = new Array<number>(n);
  const names: string[] = [];
  const links: string[] = [];
  const owner = (s: string): number => {
    let i = owners.get(s);
    if (i === undefined) owners.set(s, (i = owners.size));
    return i;
  };
  let prevMtime = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    checkUnused(e);
    const pending = 'depth' in e ? (e as InsertedEntry) : undefined;
    depth[i] = pending ? pending.depth : depthOf(e.path);
    names.push(pending ? pending.name : baseName(e.path));
    type[i] = e.type;
    mode[i] = e.mode;
    uid[i] = e.uid;
    gid[i] = e.gid;
    mtime[i] = zz(e.mtimeSec - prevMtime);
    prevMtime = e.mtimeSec;
    nsec[i] = e.mtimeNsec;
    uname[i] = owner(e.uname);
    gname[i] = owner(e.gname);
    if (e.type === FileType.REG) {
      size.push(e.size);
      content.push(digests.add(e.digest));
    } else if (e.type === FileType.SYMLINK || e.type === FileType.HARDLINK) {
      links.push(e.linkTarget);
      // a symbolic link's size is its target's length in tar; kept as it came
      if (e.type === FileType.SYMLINK) size.push(e.size);
    }
    else if (e.type === FileType.CHAR || e.type === FileType.BLOCK) dev.push(e.devMajor, e.devMinor);
  }
  w.packed(1, depth);
  w.nulStrings(2, names);
  w.packed(3, type);
  w.packed(4, mode);
  w.packed(5, uid, true);
  w.packed(6, gid, true);
  w.packed(7, mtime, true);
  w.packed(8, nsec, true);
  w.packed(9, size);
  w.packed(10, content);
  w.nulStrings(12, links);
  w.packed(13, dev);
  for (let i = 0; i < n; i++) {
    for (const x of entries[i].xattrs) {
      const row = new PbWriter(16 + x.value.length);
      row.packedAlways(1, [i]);
      row.bytesField(2, Buffer.from(x.name, 'utf8'));
      row.bytesField(3, x.value);
      w.bytesField(14, row.finish());
    }
  }
  for (const s of owners.keys()) w.stringAlways(15, s);
  w.packed(16, uname, true);
  w.packed(17, gname, true);
}

/** NUL-terminated strings of a bytes column. */
function splitNul(b: Buffer, what: string): string[] {
  const out: string[] = [];
  let s = 0;
  for (let i = 0; i < b.length; i++) {
    if (b[i] !== 0) continue;
    out.push(decodeName(b, s, i, what));
    s = i + 1;
  }
  if (s !== b.length) throw corrupt(`${what} column does not end with a NUL`);
  return out;
}

function decodeName(b: Buffer, s: number, e: number, what: string): string {
  for (let i = s; i < e; i++) {
    if (b[i] >= 0x80) {
      try {
        return utf8.decode(b.subarray(s, e));
      } catch {
        throw corrupt(`${what} column holds invalid UTF-8`);
      }
    }
  }
  return b.toString('latin1', s, e);
}

/** A column of `n` values, or `n` zeros when the column is absent and `optional`. */
function column(f: Map<number, Buffer[]>, field: number, n: number, what: string, optional = false): number[] {
  const v = unpackAll(f.get(field), what);
  if (v.length === 0 && (optional || n === 0)) return new Array<number>(n).fill(0);
  if (v.length !== n) throw corrupt(`${what} column has ${v.length} values for ${n} entries`);
  return v;
}

function unpackAll(parts: Buffer[] | undefined, what: string): number[] {
  if (!parts) return [];
  const out: number[] = [];
  for (const p of parts) unpack(p, out, what);
  return out;
}

/** Varints of a packed column (values up to 2^53). */
function unpack(b: Buffer, out: number[], what: string): void {
  let p = 0;
  while (p < b.length) {
    let c = b[p++];
    if (c < 128) {
      out.push(c);
      continue;
    }
    let v = c & 127;
    let mul = 128;
    for (;;) {
      if (p >= b.length) throw corrupt(`${what} column: truncated varint`);
      c = b[p++];
      v += (c & 127) * mul;
      if (c < 128) break;
      mul *= 128;
      if (mul > 2 ** 56) throw corrupt(`${what} column: value out of range`);
    }
    if (v > Number.MAX_SAFE_INTEGER) throw corrupt(`${what} column: value out of range`);
    out.push(v);
  }
}

function decodeColumns(body: Buffer, digests: Buffer[]): InsertedEntry[] {
  const f = readPbFields(body, 'tree columns');
  const depth = unpackAll(f.get(1), 'depth');
  const n = depth.length;
  const names = splitNul(concat(f.get(2)), 'name');
  if (names.length !== n) throw corrupt(`name column has ${names.length} names for ${n} entries`);
  // every name as checkTreePath checks a path's components (validate.ts relies on it for version 2)
  for (let i = 0; i < n; i++) if (depth[i] !== 0) checkTreeName(names[i]);
  const type = column(f, 3, n, 'type');
  const mode = column(f, 4, n, 'mode');
  const uid = column(f, 5, n, 'uid', true);
  const gid = column(f, 6, n, 'gid', true);
  const mtime = column(f, 7, n, 'mtime', true);
  const nsec = column(f, 8, n, 'mtime_nsec', true);
  const size = unpackAll(f.get(9), 'size');
  const content = unpackAll(f.get(10), 'content');
  const links = splitNul(concat(f.get(12)), 'link target');
  const dev = unpackAll(f.get(13), 'device');
  const owners = (f.get(15) ?? []).map((b) => decodeName(b, 0, b.length, 'owner name'));
  if (owners.length === 0) owners.push('');
  const uname = column(f, 16, n, 'uname', true);
  const gname = column(f, 17, n, 'gname', true);
  const out: InsertedEntry[] = new Array<InsertedEntry>(n);
  let reg = 0;
  let sized = 0;
  let link = 0;
  let devs = 0;
  let prevMtime = 0;
  for (let i = 0; i < n; i++) {
    const t = type[i];
    const e: InsertedEntry = {
      path: '',
      depth: depth[i],
      name: names[i],
      type: t,
      mode: mode[i],
      uid: uid[i],
      gid: gid[i],
      mtimeSec: (prevMtime += unzz(mtime[i])),
      mtimeNsec: nsec[i],
      size: 0,
      digest: EMPTY,
      linkTarget: '',
      devMajor: 0,
      devMinor: 0,
      xattrs: [],
      uname: owners[uname[i]] ?? bad('uname'),
      gname: owners[gname[i]] ?? bad('gname'),
    };
    if (t === FileType.REG) {
      if (sized >= size.length || reg >= content.length) throw corrupt('size or content column shorter than the regular files');
      e.size = size[sized++];
      e.digest = digests[content[reg]] ?? bad('content');
      reg++;
    } else if (t === FileType.SYMLINK || t === FileType.HARDLINK) {
      e.linkTarget = links[link++] ?? bad('link target');
      if (t === FileType.SYMLINK) e.size = size[sized++] ?? bad('size');
    } else if (t === FileType.CHAR || t === FileType.BLOCK) {
      if (devs + 2 > dev.length) bad('device');
      e.devMajor = dev[devs++];
      e.devMinor = dev[devs++];
    }
    out[i] = e;
  }
  if (sized !== size.length || reg !== content.length || link !== links.length || devs !== dev.length) throw corrupt('tree columns hold values for entries that do not exist');
  for (const x of f.get(14) ?? []) {
    const xf = readPbFields(x, 'xattr');
    const at = unpackAll(xf.get(1), 'xattr entry');
    const i = at.length === 0 ? 0 : at[at.length - 1];
    const entry = out[i] ?? bad('xattr entry');
    const nm = xf.get(2)?.at(-1) ?? EMPTY;
    entry.xattrs.push({ name: decodeName(nm, 0, nm.length, 'xattr name'), value: xf.get(3)?.at(-1) ?? EMPTY });
  }
  return out;
}

function bad(what: string): never {
  throw corrupt(`tree columns: ${what} refers to nothing`);
}

/** The parts of a bytes column as one Buffer (exported for format/check.ts). */
export function concat(parts: Buffer[] | undefined): Buffer {
  if (!parts || parts.length === 0) return EMPTY;
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

/** The digests of a table column (32 bytes each). */
function digestList(b: Buffer, what: string): Buffer[] {
  if (b.length % 32 !== 0) throw corrupt(`${what}: ${b.length} bytes is not a whole number of digests`);
  const out: Buffer[] = new Array<Buffer>(b.length / 32);
  for (let i = 0; i < out.length; i++) out[i] = b.subarray(i * 32, i * 32 + 32);
  return out;
}

class DigestTable {
  private readonly at = new Map<string, number>();
  readonly list: Buffer[] = [];
  add(d: Buffer): number {
    const k = d.toString('latin1');
    let i = this.at.get(k);
    if (i === undefined) {
      if (d.length !== 32) throw corrupt(`a content digest of ${d.length} bytes`);
      this.at.set(k, (i = this.list.length));
      this.list.push(d);
    }
    return i;
  }
}

// ---------------------------------------------------------------------------
// contents
// ---------------------------------------------------------------------------

function encodeContents(w: PbWriter, blobs: Blob[], digests: DigestTable): void {
  const stored = blobs.filter((b) => b.encoding !== Encoding.SAME);
  const content: number[] = [];
  const encoding: number[] = [];
  const count: number[] = [];
  const offset: number[] = [];
  const storedSize: number[] = [];
  const rawSize: number[] = [];
  const codec: number[] = [];
  const storedDigests: Buffer[] = [];
  const rawDigests: Buffer[] = [];
  const base: number[] = [];
  const baseTable = new DigestTable();
  const baseOffset: number[] = [];
  const baseSize: number[] = [];
  const groupOffset: number[] = [];
  let end = 0;
  for (const b of stored) {
    content.push(digests.add(b.digest));
    encoding.push(b.encoding === Encoding.FULL ? 0 : b.encoding);
    count.push(b.chunks.length === 1 ? 0 : b.chunks.length + 1);
    for (const c of b.chunks) {
      offset.push(zz(c.offset - end));
      end = c.offset + c.storedSize;
      storedSize.push(c.storedSize);
      rawSize.push(c.rawSize);
      codec.push(c.codec === Codec.ZSTD ? 0 : c.codec);
      if (c.codec === Codec.GROUP) groupOffset.push(c.groupOffset ?? bad('group offset'));
      else if (c.codec !== Codec.ZSTD) storedDigests.push(c.storedDigest);
      if (b.chunks.length !== 1) rawDigests.push(c.rawDigest);
      if (c.baseDigest.length > 0) {
        base.push(baseTable.add(c.baseDigest) + 1);
        baseOffset.push(c.baseOffset);
        baseSize.push(c.baseSize);
      } else base.push(0);
    }
  }
  w.packed(1, content);
  w.packed(2, encoding, true);
  w.packed(3, count, true);
  w.packed(4, offset);
  w.packed(5, storedSize);
  w.packed(6, rawSize);
  w.packed(7, codec, true);
  w.bytesField(8, concatDigests(storedDigests));
  w.bytesField(9, concatDigests(rawDigests));
  w.packed(10, base, true);
  w.bytesField(11, concatDigests(baseTable.list));
  w.packed(12, baseOffset);
  w.packed(13, baseSize);
  w.packed(14, groupOffset);
}

function concatDigests(list: Buffer[]): Buffer {
  for (const d of list) if (d.length !== 32) throw corrupt(`a chunk digest of ${d.length} bytes`);
  return list.length ? Buffer.concat(list) : EMPTY;
}

function decodeContents(body: Buffer, digests: Buffer[]): Blob[] {
  const f = readPbFields(body, 'content columns');
  const content = unpackAll(f.get(1), 'content');
  const n = content.length;
  const encoding = column(f, 2, n, 'encoding', true);
  const count = column(f, 3, n, 'chunk count', true);
  const offset = unpackAll(f.get(4), 'offset');
  const chunks = offset.length;
  const storedSize = column(f, 5, chunks, 'stored size');
  const rawSize = column(f, 6, chunks, 'raw size');
  const codec = column(f, 7, chunks, 'codec', true);
  const storedDigests = digestList(concat(f.get(8)), 'stored digests');
  const rawDigests = digestList(concat(f.get(9)), 'raw digests');
  const base = column(f, 10, chunks, 'base', true);
  const baseDigests = digestList(concat(f.get(11)), 'base digests');
  const baseOffset = unpackAll(f.get(12), 'base offset');
  const baseSize = unpackAll(f.get(13), 'base size');
  const groupOffset = unpackAll(f.get(14), 'group offset');
  const out: Blob[] = new Array<Blob>(n);
  let k = 0;
  let gi = 0;
  let sd = 0;
  let rd = 0;
  let bi = 0;
  let end = 0;
  for (let i = 0; i < n; i++) {
    const digest = digests[content[i]] ?? bad('content');
    const m = count[i] === 0 ? 1 : count[i] - 1;
    if (k + m > chunks) throw corrupt('content columns: more chunks than the chunk columns hold');
    const list: Chunk[] = new Array<Chunk>(m);
    let size = 0;
    for (let j = 0; j < m; j++, k++) {
      const cd = codec[k] === 0 ? Codec.ZSTD : codec[k];
      const off = end + unzz(offset[k]);
      end = off + storedSize[k];
      const c: Chunk = {
        offset: off,
        storedSize: storedSize[k],
        storedDigest: cd === Codec.ZSTD || cd === Codec.GROUP ? EMPTY : (storedDigests[sd++] ?? bad('stored digest')),
        rawSize: rawSize[k],
        rawDigest: m === 1 ? digest : (rawDigests[rd++] ?? bad('raw digest')),
        codec: cd,
        baseDigest: EMPTY,
        baseOffset: 0,
        baseSize: 0,
      };
      if (cd === Codec.GROUP) c.groupOffset = groupOffset[gi++] ?? bad('group offset');
      if (base[k] !== 0) {
        c.baseDigest = baseDigests[base[k] - 1] ?? bad('base');
        if (bi >= baseOffset.length || bi >= baseSize.length) bad('base region');
        c.baseOffset = baseOffset[bi];
        c.baseSize = baseSize[bi++];
      }
      size += c.rawSize;
      list[j] = c;
    }
    out[i] = { digest, size, encoding: encoding[i] === 0 ? Encoding.FULL : encoding[i], chunks: list };
  }
  if (k !== chunks || sd !== storedDigests.length || rd !== rawDigests.length || bi !== baseOffset.length || bi !== baseSize.length || gi !== groupOffset.length) {
    throw corrupt('content columns hold values for chunks that do not exist');
  }
  return out;
}

// ---------------------------------------------------------------------------
// the index
// ---------------------------------------------------------------------------

/**
 * Encode a version 2 index. A delta's tree is written as an edit script
 * against `parentEntries`; a delta whose tree was never resolved keeps its
 * script (`treeEdit`); a delta written without either holds its whole tree
 * (`whole_tree`, as a merge of deltas whose base tree is unknown).
 */
export function encodeIndexV2(index: Index, parentEntries: Entry[] | undefined, sectionDigest: Buffer, writeHead: (w: PbWriter) => void): Buffer {
  const digests = new DigestTable();
  let treeEntries: Entry[] = index.entries;
  let ops: number[] | undefined;
  let whole = false;
  if (index.kind === Kind.DELTA && index.treeEdit) {
    treeEntries = index.treeEdit.inserted;
    ops = index.treeEdit.ops;
  } else if (index.kind === Kind.DELTA && parentEntries) {
    const script = editScript(parentEntries, index.entries);
    treeEntries = script.inserted;
    ops = script.ops;
    checkRebuilds(parentEntries, script, index.entries);
  } else {
    whole = index.kind === Kind.DELTA;
    checkRebuilds([], { ops: index.entries.length ? [0, 0, index.entries.length] : [], inserted: index.entries }, index.entries);
  }
  const cols = new PbWriter(64 + treeEntries.length * 48);
  encodeColumns(cols, treeEntries, digests);
  const contents = new PbWriter(64 + index.blobs.length * 24);
  encodeContents(contents, index.blobs, digests);
  const w = new PbWriter(256 + cols.pos + contents.pos + digests.list.length * 32);
  writeHead(w);
  w.bytesField(10, cols.finish());
  if (ops) w.packedAlways(11, ops);
  w.bytesField(12, contents.finish());
  w.bytesField(13, sectionDigest);
  w.bytesField(14, concatDigests(digests.list));
  if (whole) w.packedAlways(15, [1]);
  return w.finish();
}

/** What a version 2 index holds besides the head fields that version 1's decoder reads. */
export interface V2Body {
  tree: InsertedEntry[];
  ops: number[] | undefined;
  blobs: Blob[];
  sectionDigest: Buffer;
}

/** Decode the version 2 fields of an index. */
export function decodeIndexV2(raw: Buffer, kind: Kind, opts: { tree?: boolean } = {}): V2Body {
  const f = readPbFields(raw, 'index');
  const digests = digestList(concat(f.get(14)), 'digest table');
  const tree = opts.tree === false ? [] : decodeColumns(concat(f.get(10)), digests);
  const blobs = decodeContents(concat(f.get(12)), digests);
  const ops = kind === Kind.DELTA ? unpackAll(f.get(11), 'edit script') : undefined;
  const sectionDigest = f.get(13)?.at(-1) ?? EMPTY;
  const whole = unpackAll(f.get(15), 'whole tree').some((v) => v !== 0);
  if (whole && kind !== Kind.DELTA) throw corrupt('a full image flagged as a whole-tree delta');
  return { tree, ops: whole ? undefined : ops, blobs, sectionDigest };
}

/** A full image's entries from its decoded version 2 body. */
export function treeOfFull(body: V2Body): Entry[] {
  return fullTree(body.tree);
}
