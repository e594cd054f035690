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
import { randomBytes } from 'node:crypto';
import { corrupt } from '../errors';
import { PbWriter, readPbFields } from './columns-pb';
import { baseName, checkRebuilds, depthOf, editScript, fullTree } from './tree-edit';
import { checkTreeName } from '../tree/paths';
import { BASE_PREFIX_BYTES, type Blob, type Chunk, Codec, Encoding, type Entry, FileType, type Index, type InsertedEntry, Kind, LIMITS } from './types';

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

/**
 * A packed column of `n` values written in place, `at(i)` the i-th (called in order); left out when
 * there are none, or when it is `optional` (read as zeros when absent) and every value is 0.
 */
function packedOf(w: PbWriter, field: number, n: number, at: (i: number) => number, optional = false): void {
  const start = w.open(field);
  let nonZero = false;
  for (let i = 0; i < n; i++) {
    const v = at(i);
    if (v !== 0) nonZero = true;
    w.value(field, v);
  }
  w.close(start, n > 0 && (nonZero || !optional));
}

/**
 * Write the Columns message of `entries` (their digests go to `digests`, a table shared with the contents).
 *
 * Each column is written straight into `w`, one pass over the entries per
 * column. Before, a number[] per column (`new Array(n)` of more than 100,000
 * entries is a dictionary-mode array in V8), a name string kept per entry,
 * two Buffers per name and a buffer of the columns then copied into the
 * index: encoding the 151,520-entry index of issue 18 took its RSS up by
 * ~84 MB (heap +56 MB), and that was the peak of a convert. Measured with the
 * contents written the same way (encodeContents) and the index in one buffer
 * (encodeIndexV2): RSS +84 → +5 MB, 600 → 300-420 ms (noisy machine), and the
 * peak RSS of converting that image 529-541 → 458-465 MB (with convert's
 * imageIdOf and the writer's index frame), the same bytes.
 */
/**
 * `refs`: write InsertedEntry.parentRef as references (version 4, a delta's
 * edit script); otherwise every regular file's digest goes to the table.
 * `pathRefs`: write InsertedEntry.pathRef and linkRef as references (version
 * 6, a delta's edit script: Columns.path_ref); otherwise every entry's depth,
 * name and link target are written.
 */
function encodeColumns(w: PbWriter, entries: Entry[], digests: DigestTable, refs = false, pathRefs = false, seq = false, stored?: ReadonlyMap<string, number>): void {
  const n = entries.length;
  // per entry: 0, or 1 + (zigzag of (its parent ordinal - the previous path reference's - 1) << 1 | link target by reference)
  const pref: number[] = [];
  let anyPathRef = false;
  let prevPath = -1;
  for (let i = 0; i < n; i++) {
    const x = entries[i] as InsertedEntry;
    const r = pathRefs ? x.pathRef : undefined;
    if (r === undefined) {
      // a decoded reference (no name; only the root, ordinal 0, has none) cannot be written as a name
      if ((x.pathRef !== undefined && x.pathRef !== 0 && 'name' in x && x.name === '') || (x.linkRef && x.linkTarget === '')) throw corrupt('a path by parent reference in a file that cannot hold one (format version before 6, or a whole tree)');
      pref.push(0);
      continue;
    }
    if (!Number.isSafeInteger(r) || r < 0) throw corrupt(`a parent path reference ${r}`);
    pref.push(1 + zz(r - prevPath - 1) * 2 + (x.linkRef ? 1 : 0));
    prevPath = r;
    anyPathRef = true;
  }
  const byPath = (i: number): boolean => pref[i] !== 0;
  const linkByRef = (i: number): boolean => pref[i] !== 0 && pathRefTakesLink(pref[i]);
  const owners = new Map<string, number>([['', 0]]);
  const owner = (s: string): void => {
    if (!owners.has(s)) owners.set(s, owners.size);
  };
  // checks, owner and digest numbers first, in entry order
  const content: number[] = [];
  // per regular file: 0, or 1 + zigzag of (its parent ordinal - the previous reference's)
  const ref: number[] = [];
  let anyRef = false;
  let prevRef = 0;
  let sizes = 0;
  let devs = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    checkUnused(e);
    owner(e.uname);
    owner(e.gname);
    if (e.type === FileType.REG) {
      sizes++;
      const r = refs ? (e as InsertedEntry).parentRef : undefined;
      if (r !== undefined) {
        if (!Number.isSafeInteger(r) || r < 0) throw corrupt(`a parent reference ${r}`);
        ref.push(1 + zz(r - prevRef));
        prevRef = r;
        anyRef = true;
      } else {
        if (e.digest.length !== 32 && 'parentRef' in e && (e as InsertedEntry).parentRef !== undefined) throw corrupt('a content by parent reference in a file that cannot hold one (format version before 4, or a whole tree)');
        ref.push(0);
        content.push(digests.add(e.digest));
      }
    } else if (e.type === FileType.SYMLINK) {
      sizes++;
    } else if (e.type === FileType.CHAR || e.type === FileType.BLOCK) devs++;
  }
  const inserted = (e: Entry): InsertedEntry | undefined => ('depth' in e ? (e as InsertedEntry) : undefined);
  let at = w.open(1);
  let named = 0;
  for (let i = 0; i < n; i++) {
    if (byPath(i)) continue;
    named++;
    w.value(1, inserted(entries[i])?.depth ?? depthOf(entries[i].path));
  }
  w.close(at, named > 0);
  at = w.open(2);
  for (let i = 0; i < n; i++) if (!byPath(i)) w.nulString(2, inserted(entries[i])?.name ?? baseName(entries[i].path));
  w.close(at, named > 0);
  packedOf(w, 3, n, (i) => entries[i].type);
  packedOf(w, 4, n, (i) => entries[i].mode);
  packedOf(w, 5, n, (i) => entries[i].uid, true);
  packedOf(w, 6, n, (i) => entries[i].gid, true);
  let prevMtime = 0;
  packedOf(
    w,
    7,
    n,
    (i) => {
      const z = zz(entries[i].mtimeSec - prevMtime);
      prevMtime = entries[i].mtimeSec;
      return z;
    },
    true,
  );
  packedOf(w, 8, n, (i) => entries[i].mtimeNsec, true);
  at = w.open(9);
  let sizeValues = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    if (e.type !== FileType.REG && e.type !== FileType.SYMLINK) continue;
    const v = stored ? derivedSizeValue(e as InsertedEntry, refs, linkByRef(i), stored) : e.size;
    if (v === undefined) continue;
    w.value(9, v);
    sizeValues++;
  }
  w.close(at, sizes > 0 && (sizeValues > 0 || !stored));
  // version 6 (`seq`): 0 for the next digest of the table not used yet (the table is in order of first
  // use, so every first use), else 1 + the digest's number (sequentialContents)
  let nextNew = 0;
  packedOf(w, 10, content.length, (i) => {
    if (!seq) return content[i];
    const v = content[i] === nextNew ? 0 : content[i] + 1;
    nextNew = Math.max(nextNew, content[i] + 1);
    return v;
  });
  at = w.open(12);
  let written = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    if ((e.type !== FileType.SYMLINK && e.type !== FileType.HARDLINK) || linkByRef(i)) continue;
    w.nulString(12, e.linkTarget);
    written++;
  }
  w.close(at, written > 0);
  at = w.open(13);
  for (const e of entries) {
    if (e.type !== FileType.CHAR && e.type !== FileType.BLOCK) continue;
    w.value(13, e.devMajor);
    w.value(13, e.devMinor);
  }
  w.close(at, devs > 0);
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
  packedOf(w, 16, n, (i) => owners.get(entries[i].uname) as number, true);
  packedOf(w, 17, n, (i) => owners.get(entries[i].gname) as number, true);
  if (anyRef) packedOf(w, 18, ref.length, (i) => ref[i]);
  if (anyPathRef) packedOf(w, 19, n, (i) => pref[i]);
}

/**
 * Version 7's value in the size column of regular file or symbolic link `x` (`stored`: the sizes
 * of the contents the index stores, by digest), or undefined for none: see Columns.size in
 * proto/cdimg.proto, decodeColumns and the lean check (check.ts) for the reading side.
 */
function derivedSizeValue(x: InsertedEntry, refs: boolean, linkByRef: boolean, stored: ReadonlyMap<string, number>): number | undefined {
  if (x.type === FileType.REG) {
    if (refs && x.parentRef !== undefined) return x.sizeRef ? 0 : 1 + x.size;
    const s = stored.get(x.digest.toString('latin1'));
    if (s === undefined) return x.size;
    if (s !== x.size) throw corrupt(`a regular file of ${x.size} bytes whose content has ${s}`);
    return undefined;
  }
  if (linkByRef) return x.sizeRef ? 0 : 1 + x.size;
  if (x.sizeRef && x.linkTarget === '') throw corrupt('a link size by parent reference in a file that cannot hold one');
  return zz(x.size - Buffer.byteLength(x.linkTarget));
}

// Version 6's and 7's value codings, one value at a time: the decoder here and the lean check (check.ts) read them alike.

/** A tree content value: 0 is the next digest of the table not used yet (`nextNew`), v > 0 the digest numbered v - 1 (encodeColumns). */
export const sequentialContent = (nextNew: number, v: number): number => (v === 0 ? nextNew : v - 1);
/** A content-columns content number: the one before (`prev`, -1 at first) plus 1 plus the zigzag-decoded value (encodeContents). */
export const relativeContent = (prev: number, v: number): number => prev + 1 + unzz(v);
/** A non-zero path reference value: the parent ordinal after the previous reference's (`prev`, -1 at first) (encodeColumns). */
export const pathRefOrdinal = (prev: number, v: number): number => prev + 1 + unzz(Math.floor((v - 1) / 2));
/** Whether a non-zero path reference value also takes the link target. */
export const pathRefTakesLink = (v: number): boolean => (v - 1) % 2 === 1;
/** Version 7's non-zero base value: the base number after the previous base's (`prev`, 0 at first) (encodeContents). */
export const relativeBase = (prev: number, v: number): number => prev + 1 + unzz(v - 1);
/** The inverse of relativeBase: the value written for base number `n` after `prev`. */
const relativeBaseValue = (prev: number, n: number): number => 1 + zz(n - prev - 1);
/**
 * Version 7's size value of a regular file with a content reference or a link with a link target
 * reference: 0 when its size is the referenced parent entry's (InsertedEntry.sizeRef), else 1 + its size.
 */
export const refSize = (v: number): number | undefined => (v === 0 ? undefined : v - 1);
/** Version 7's size of a symbolic link whose target (`targetBytes` long) is written: that length plus the zigzag-decoded value. */
export const linkSize = (targetBytes: number, v: number): number => targetBytes + unzz(v);

/** Version 6's tree content column in place (sequentialContent); numbers are checked where they are used. */
export function sequentialContents(v: number[]): void {
  let nextNew = 0;
  for (let i = 0; i < v.length; i++) {
    v[i] = sequentialContent(nextNew, v[i]);
    nextNew = Math.max(nextNew, v[i] + 1);
  }
}

/** Version 6's content-columns content numbers in place (relativeContent). */
export function relativeContents(v: number[]): void {
  let prev = -1;
  for (let i = 0; i < v.length; i++) v[i] = prev = relativeContent(prev, v[i]);
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

/**
 * `refs`: references to the parent tree may appear (version 4, a delta's edit script);
 * `pathRefs`: paths by reference too (version 6, Columns.path_ref).
 */
function decodeColumns(body: Buffer, digests: Buffer[], refs = false, pathRefs = false, seq = false, stored?: ReadonlyMap<Buffer, number>): InsertedEntry[] {
  const f = readPbFields(body, 'tree columns');
  const depth = unpackAll(f.get(1), 'depth');
  const pref = unpackAll(f.get(19), 'path reference');
  if (pref.length && !pathRefs) throw corrupt('tree columns take paths from a parent tree this file cannot refer to (a full image, a whole tree, or a format version before 6)');
  // without path references every entry has a depth and a name; with them, the entries whose reference is 0
  const n = pref.length || depth.length;
  const named = pref.length ? pref.reduce((k, v) => k + (v === 0 ? 1 : 0), 0) : n;
  if (depth.length !== named) throw corrupt(`depth column has ${depth.length} values for ${named} entries`);
  const names = splitNul(concat(f.get(2)), 'name');
  if (names.length !== named) throw corrupt(`name column has ${names.length} names for ${named} entries`);
  // every name as checkTreePath checks a path's components (validate.ts relies on it for version 2)
  for (let i = 0; i < named; i++) if (depth[i] !== 0) checkTreeName(names[i]);
  const type = column(f, 3, n, 'type');
  const mode = column(f, 4, n, 'mode');
  const uid = column(f, 5, n, 'uid', true);
  const gid = column(f, 6, n, 'gid', true);
  const mtime = column(f, 7, n, 'mtime', true);
  const nsec = column(f, 8, n, 'mtime_nsec', true);
  const size = unpackAll(f.get(9), 'size');
  const content = unpackAll(f.get(10), 'content');
  if (seq) sequentialContents(content);
  const links = splitNul(concat(f.get(12)), 'link target');
  const dev = unpackAll(f.get(13), 'device');
  const owners = (f.get(15) ?? []).map((b) => decodeName(b, 0, b.length, 'owner name'));
  if (owners.length === 0) owners.push('');
  const uname = column(f, 16, n, 'uname', true);
  const gname = column(f, 17, n, 'gname', true);
  const ref = unpackAll(f.get(18), 'content reference');
  if (ref.length && !refs) throw corrupt('tree columns refer to a parent tree this file cannot refer to (a full image, a whole tree, or a format version before 4)');
  let ri = 0;
  let prevRef = 0;
  let ni = 0;
  let prevPath = -1;
  const out: InsertedEntry[] = new Array<InsertedEntry>(n);
  let reg = 0;
  let sized = 0;
  let link = 0;
  let devs = 0;
  let prevMtime = 0;
  for (let i = 0; i < n; i++) {
    const t = type[i];
    const pr = pref.length ? pref[i] : 0;
    const e: InsertedEntry = {
      path: '',
      depth: pr === 0 ? depth[ni] : 0,
      name: pr === 0 ? names[ni++] : '',
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
    let linkRef = false;
    if (pr !== 0) {
      // the path (and the link target, with the low bit) comes from the parent's tree (applyTreeEdit, composeEdits)
      prevPath = pathRefOrdinal(prevPath, pr);
      if (!Number.isSafeInteger(prevPath) || prevPath < 0 || prevPath >= LIMITS.maxEntries) throw corrupt(`tree columns: a path reference to parent entry ${prevPath}`);
      e.pathRef = prevPath;
      linkRef = pathRefTakesLink(pr);
      if (linkRef && t !== FileType.SYMLINK && t !== FileType.HARDLINK) throw corrupt('tree columns: a link target by reference for an entry that is not a link');
      if (linkRef) e.linkRef = true;
    }
    if (t === FileType.REG) {
      const r = ref.length ? (ref[ri++] ?? bad('content reference')) : 0;
      if (r !== 0) {
        // the digest comes from the parent's tree (applyTreeEdit, composeEdits)
        prevRef += unzz(r - 1);
        if (!Number.isSafeInteger(prevRef) || prevRef < 0 || prevRef >= LIMITS.maxEntries) throw corrupt(`tree columns: a content reference to parent entry ${prevRef}`);
        e.parentRef = prevRef;
        if (sized >= size.length) throw corrupt('size column shorter than the regular files');
        const v = size[sized++];
        if (!stored) e.size = v;
        else {
          // version 7: 0 for the size of the parent's entry (resolved with the content)
          const x = refSize(v);
          if (x === undefined) e.sizeRef = true;
          else e.size = x;
        }
      } else {
        if (reg >= content.length) throw corrupt('content column shorter than the regular files');
        e.digest = digests[content[reg]] ?? bad('content');
        reg++;
        // version 7: no value for a content the index stores (its size)
        const s = stored?.get(e.digest);
        if (s !== undefined) e.size = s;
        else {
          if (sized >= size.length) throw corrupt('size column shorter than the regular files');
          e.size = size[sized++];
        }
      }
    } else if (t === FileType.SYMLINK || t === FileType.HARDLINK) {
      if (!linkRef) e.linkTarget = links[link++] ?? bad('link target');
      if (t === FileType.SYMLINK) {
        const v = size[sized++] ?? bad('size');
        if (!stored) e.size = v;
        else if (!linkRef) e.size = linkSize(Buffer.byteLength(e.linkTarget), v);
        else {
          // version 7: 0 for the size of the parent's entry (resolved with the target)
          const x = refSize(v);
          if (x === undefined) e.sizeRef = true;
          else e.size = x;
        }
      }
    } else if (t === FileType.CHAR || t === FileType.BLOCK) {
      if (devs + 2 > dev.length) bad('device');
      e.devMajor = dev[devs++];
      e.devMinor = dev[devs++];
    }
    out[i] = e;
  }
  if (sized !== size.length || reg !== content.length || link !== links.length || devs !== dev.length || ri !== ref.length) throw corrupt('tree columns hold values for entries that do not exist');
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

/**
 * The digests of an index, numbered in order of first use. Found by an open
 * hash table over the digests' own bytes: no string key per digest (a Map of
 * latin1 strings holds a 32-character string and a slot per digest, by
 * estimate ~80 bytes, ~12 MB for issue 18's 150k contents; this table is
 * 2 MB). The hash is seeded per table, so that digests made to collide
 * (sha256 prefixes can be ground) cannot be aimed at its slots.
 */
class DigestTable {
  readonly list: Buffer[] = [];
  /** index in `list` + 1 of each slot, 0 when empty; at most half full */
  private slots: Int32Array;
  private shift: number;
  private readonly seed = ((b: Buffer): Int32Array => new Int32Array([b.readInt32LE(0), b.readInt32LE(4)]))(randomBytes(8));

  /** `expected`: about how many digests will come (the table starts large enough for them). */
  constructor(expected = 0) {
    let bits = 10;
    while (bits < 24 && 1 << bits < expected * 2) bits++;
    this.slots = new Int32Array(1 << bits);
    this.shift = 32 - bits;
  }

  add(d: Buffer): number {
    if (d.length !== 32) throw corrupt(`a content digest of ${d.length} bytes`);
    const mask = this.slots.length - 1;
    for (let s = this.slotOf(d); ; s = (s + 1) & mask) {
      const at = this.slots[s];
      if (at === 0) {
        const i = this.list.length;
        this.list.push(d);
        this.slots[s] = i + 1;
        if (this.list.length * 2 > this.slots.length) this.grow();
        return i;
      }
      // a full image's blobs and entries share their digest Buffers: mostly the same object
      const e = this.list[at - 1];
      if (e === d || d.equals(e)) return at - 1;
    }
  }

  private slotOf(d: Buffer): number {
    let h = Math.imul(d.readInt32LE(0) ^ this.seed[0], 0x9e3779b1) ^ Math.imul(d.readInt32LE(4) ^ this.seed[1], 0x85ebca77) ^ d.readInt32LE(8) ^ d.readInt32LE(12);
    h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
    return (h ^ (h >>> 15)) >>> this.shift;
  }

  private grow(): void {
    this.slots = new Int32Array(this.slots.length * 2);
    this.shift--;
    const mask = this.slots.length - 1;
    for (let i = 0; i < this.list.length; i++) {
      let s = this.slotOf(this.list[i]);
      while (this.slots[s] !== 0) s = (s + 1) & mask;
      this.slots[s] = i + 1;
    }
  }
}

// ---------------------------------------------------------------------------
// contents
// ---------------------------------------------------------------------------

/** The content columns of `blobs`, written in place one pass per column (see encodeColumns). */
function encodeContents(w: PbWriter, blobs: Blob[], digests: DigestTable, version: number, byPrefix?: (base: Buffer) => boolean): void {
  const stored: Blob[] = [];
  const baseTable = new DigestTable();
  // version 5: bases named by their first BASE_PREFIX_BYTES (./bases.ts), numbered after the full ones
  const prefixOf = new Map<bigint, number>();
  const prefixes: Buffer[] = [];
  const isPrefixed = (d: Buffer): boolean => d.length === BASE_PREFIX_BYTES || (byPrefix !== undefined && byPrefix(d));
  const baseNumber = (d: Buffer): number => {
    if (!isPrefixed(d)) return baseTable.add(d) + 1;
    const k = d.readBigUInt64BE(0);
    let at = prefixOf.get(k);
    if (at === undefined) {
      at = prefixes.length;
      prefixOf.set(k, at);
      prefixes.push(d.subarray(0, BASE_PREFIX_BYTES));
    }
    return -(at + 1);
  };
  // checks and digest numbers first, in order
  const content: number[] = [];
  let nc = 0;
  let groups = 0;
  let bases = 0;
  for (const b of blobs) {
    if (b.encoding === Encoding.SAME) continue;
    stored.push(b);
    content.push(digests.add(b.digest));
    for (const c of b.chunks) {
      nc++;
      if (c.codec === Codec.GROUP) {
        if (c.groupOffset === undefined) bad('group offset');
        groups++;
      }
      if (c.baseDigest.length > 0) {
        baseNumber(c.baseDigest);
        bases++;
      }
    }
  }
  // a column of the chunks (`count` values: those `v` does not skip)
  const chunks = (field: number, v: (c: Chunk) => number | undefined, optional = false, count = nc): void => {
    const at = w.open(field);
    let nonZero = false;
    for (const b of stored) {
      for (const c of b.chunks) {
        const x = v(c);
        if (x === undefined) continue;
        if (x !== 0) nonZero = true;
        w.value(field, x);
      }
    }
    w.close(at, count > 0 && (nonZero || !optional));
  };
  // version 6: zigzag of (the digest's number - the one before - 1): 0 in the table's order, as contents are listed
  let prevContent = -1;
  packedOf(w, 1, stored.length, (i) => {
    if (version < 6) return content[i];
    const z = zz(content[i] - prevContent - 1);
    prevContent = content[i];
    return z;
  });
  packedOf(w, 2, stored.length, (i) => (stored[i].encoding === Encoding.FULL ? 0 : stored[i].encoding), true);
  packedOf(w, 3, stored.length, (i) => (stored[i].chunks.length === 1 ? 0 : stored[i].chunks.length + 1), true);
  let end = 0;
  chunks(4, (c) => {
    const z = zz(c.offset - end);
    end = c.offset + c.storedSize;
    return z;
  });
  chunks(5, (c) => c.storedSize);
  chunks(6, (c) => c.rawSize);
  chunks(7, (c) => (c.codec === Codec.ZSTD ? 0 : c.codec), true);
  const storedDigests: Buffer[] = [];
  const rawDigests: Buffer[] = [];
  for (const b of stored) {
    for (const c of b.chunks) {
      if (c.codec !== Codec.GROUP && c.codec !== Codec.ZSTD) storedDigests.push(c.storedDigest);
      if (b.chunks.length !== 1) rawDigests.push(c.rawDigest);
    }
  }
  digestsField(w, 8, storedDigests);
  digestsField(w, 9, rawDigests);
  const full = baseTable.list.length;
  // version 7: 1 + zigzag of (the base's number - the previous base's - 1): 1 for bases listed in order
  let prevBase = 0;
  chunks(10, (c) => {
    if (c.baseDigest.length === 0) return 0;
    const n = baseNumber(c.baseDigest);
    const v = n > 0 ? n : full - n;
    if (version < 7) return v;
    const r = relativeBaseValue(prevBase, v);
    prevBase = v;
    return r;
  }, true);
  digestsField(w, 11, baseTable.list);
  chunks(12, (c) => (c.baseDigest.length > 0 ? c.baseOffset : undefined), false, bases);
  // version 7: zigzag of (base size - raw size): a whole base is about as large as what is built from it
  chunks(13, (c) => (c.baseDigest.length === 0 ? undefined : version >= 7 ? zz(c.baseSize - c.rawSize) : c.baseSize), false, bases);
  // version 5: a member's offset less the end of the member listed before it in the same group
  // (groupOffsets), 0 for members listed in group order: ~5 % of a full image's stored index
  const groupEnd = new Map<number, number>();
  chunks(14, (c) => (c.codec !== Codec.GROUP ? undefined : version >= 5 ? zz(relativeGroupOffset(groupEnd, c.offset, c.groupOffset as number, c.rawSize)) : c.groupOffset), false, groups);
  if (prefixes.length > 0) w.bytesField(15, Buffer.concat(prefixes));
}

/** A bytes field of 32-byte digests back to back (left out when there are none), written in place. */
function digestsField(w: PbWriter, field: number, list: Buffer[]): void {
  for (const d of list) if (d.length !== 32) throw corrupt(`a chunk digest of ${d.length} bytes`);
  if (list.length === 0) return;
  w.u32((field << 3) | 2);
  w.u32(list.length * 32);
  w.reserve(list.length * 32);
  for (const d of list) {
    w.buf.set(d, w.pos);
    w.pos += 32;
  }
}

/**
 * A group member's offset as version 5 writes it: less where the member listed before it in the
 * same group (the same frame, at `frame`) ended, 0 for the first; `ends` tracks the groups.
 */
function relativeGroupOffset(ends: Map<number, number>, frame: number, offset: number, rawSize: number): number {
  const rel = offset - (ends.get(frame) ?? 0);
  ends.set(frame, offset + rawSize);
  return rel;
}

/** The inverse of relativeGroupOffset: the member's offset from the value written. */
export function absoluteGroupOffset(ends: Map<number, number>, frame: number, rel: number, rawSize: number): number {
  const offset = rel + (ends.get(frame) ?? 0);
  ends.set(frame, offset + rawSize);
  return offset;
}

function decodeContents(body: Buffer, digests: Buffer[], version: number): Blob[] {
  const f = readPbFields(body, 'content columns');
  const content = unpackAll(f.get(1), 'content');
  if (version >= 6) relativeContents(content);
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
  // version 5: base prefixes, numbered after the full digests (validate.ts allows them in version 5 deltas only)
  const prefixBytes = concat(f.get(15));
  if (prefixBytes.length % BASE_PREFIX_BYTES !== 0) throw corrupt(`base prefixes: ${prefixBytes.length} bytes is not a whole number of prefixes`);
  for (let i = 0; i < prefixBytes.length; i += BASE_PREFIX_BYTES) baseDigests.push(prefixBytes.subarray(i, i + BASE_PREFIX_BYTES));
  const baseOffset = unpackAll(f.get(12), 'base offset');
  const baseSize = unpackAll(f.get(13), 'base size');
  const groupOffset = unpackAll(f.get(14), 'group offset');
  const out: Blob[] = new Array<Blob>(n);
  const groupEnd = new Map<number, number>();
  let k = 0;
  let gi = 0;
  let sd = 0;
  let rd = 0;
  let bi = 0;
  let end = 0;
  let prevBase = 0;
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
      if (cd === Codec.GROUP) {
        const g = groupOffset[gi++] ?? bad('group offset');
        c.groupOffset = version >= 5 ? absoluteGroupOffset(groupEnd, off, unzz(g), c.rawSize) : g;
      }
      if (base[k] !== 0) {
        const bn = version >= 7 ? (prevBase = relativeBase(prevBase, base[k])) : base[k];
        c.baseDigest = baseDigests[bn - 1] ?? bad('base');
        if (bi >= baseOffset.length || bi >= baseSize.length) bad('base region');
        c.baseOffset = baseOffset[bi];
        c.baseSize = version >= 7 ? c.rawSize + unzz(baseSize[bi++]) : baseSize[bi++];
        if (c.baseSize < 0) throw corrupt('content columns: a base size below 0');
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
 * checkRebuilds for a whole tree (every entry inserted), without building
 * the paths it compares: an entry's path must be its directory's (the last
 * entry one level up) and its name. Building them (a string per entry, each
 * compared and dropped) took ~70 ms and ~150k strings of garbage for the
 * 151k-entry index of issue 18.
 */
function checkDepthFirst(entries: Entry[]): void {
  // the last path at each depth, up to `top`
  const stack: string[] = [];
  let top = 0;
  for (const e of entries) {
    const p = e.path;
    const d = depthOf(p);
    if (d > top) notDepthFirst(p);
    if (d >= 2) {
      const dir = stack[d - 1];
      if (p.length <= dir.length || p.charCodeAt(dir.length) !== 47 || p.lastIndexOf('/') !== dir.length || !p.startsWith(dir)) notDepthFirst(p);
    }
    stack[d] = p;
    top = d + 1;
  }
}

function notDepthFirst(path: string): never {
  throw corrupt(`the tree is not in depth-first order at "${path}": it cannot be written in format version 2`);
}

/**
 * Encode a version 2 index. A delta's tree is written as an edit script
 * against `parentEntries`; a delta whose tree was never resolved keeps its
 * script (`treeEdit`); a delta written without either holds its whole tree
 * (`whole_tree`, as a merge of deltas whose base tree is unknown).
 */
export function encodeIndexV2(index: Index, parentEntries: Entry[] | undefined, sectionDigest: Buffer, writeHead: (w: PbWriter) => void, basePrefix?: (base: Buffer) => boolean): Buffer {
  const digests = new DigestTable(index.kind === Kind.DELTA ? 0 : index.entries.length);
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
    checkDepthFirst(index.entries);
  }
  // the columns are written in place, into one buffer sized for the whole index (the room left over is never
  // written): no buffer per column or per part, and no copy of the index (~10 MB for issue 18's image)
  const w = new PbWriter(1024 + treeEntries.length * 64 + index.blobs.length * 64 + (ops ? ops.length * 5 : 0) + index.image.configJson.length);
  writeHead(w);
  let at = w.open(10);
  encodeColumns(w, treeEntries, digests, ops !== undefined && index.formatVersion >= 4, ops !== undefined && index.formatVersion >= 6, index.formatVersion >= 6, index.formatVersion >= 7 ? storedSizes(index.blobs) : undefined);
  w.close(at, true);
  if (ops) w.packedAlways(11, ops);
  at = w.open(12);
  const contentsAt = w.pos;
  if (index.formatVersion < 5 && index.blobs.some((b) => b.chunks.some((c) => c.baseDigest.length === BASE_PREFIX_BYTES))) throw corrupt(`a base named by prefix in a version ${index.formatVersion} index`);
  encodeContents(w, index.blobs, digests, index.formatVersion, index.kind === Kind.DELTA && index.formatVersion >= 5 ? basePrefix : undefined);
  w.close(at, w.pos > contentsAt);
  w.bytesField(13, sectionDigest);
  digestsField(w, 14, digests.list);
  if (whole) w.packedAlways(15, [1]);
  return w.buf.subarray(0, w.pos);
}

/** The sizes of the contents an index stores (a reader's: the sum of their chunks' raw sizes), by digest (latin1). */
function storedSizes(blobs: Blob[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const b of blobs) {
    if (b.encoding === Encoding.SAME) continue;
    let n = 0;
    for (const c of b.chunks) n += c.rawSize;
    m.set(b.digest.toString('latin1'), n);
  }
  return m;
}

/** What a version 2 index holds besides the head fields that version 1's decoder reads. */
export interface V2Body {
  tree: InsertedEntry[];
  ops: number[] | undefined;
  blobs: Blob[];
  sectionDigest: Buffer;
}

/** Decode the version 2 fields of an index. */
export function decodeIndexV2(raw: Buffer, kind: Kind, opts: { tree?: boolean; version?: number } = {}): V2Body {
  const f = readPbFields(raw, 'index');
  const digests = digestList(concat(f.get(14)), 'digest table');
  const whole = unpackAll(f.get(15), 'whole tree').some((v) => v !== 0);
  if (whole && kind !== Kind.DELTA) throw corrupt('a full image flagged as a whole-tree delta');
  const refs = kind === Kind.DELTA && !whole && (opts.version ?? 0) >= 4;
  const blobs = decodeContents(concat(f.get(12)), digests, opts.version ?? 2);
  const v = opts.version ?? 0;
  // version 7: the stored contents' sizes, which the tree's sizes are derived from (only when the tree is
  // decoded: a FUSE thread opens its chain for the contents alone, 150,000 of them in a full image)
  const tree = opts.tree === false ? [] : decodeColumns(concat(f.get(10)), digests, refs, refs && v >= 6, v >= 6, v >= 7 ? new Map(blobs.map((b) => [b.digest, b.size])) : undefined);
  const ops = kind === Kind.DELTA ? unpackAll(f.get(11), 'edit script') : undefined;
  const sectionDigest = f.get(13)?.at(-1) ?? EMPTY;
  return { tree, ops: whole ? undefined : ops, blobs, sectionDigest };
}

/** A full image's entries from its decoded version 2 body. */
export function treeOfFull(body: V2Body): Entry[] {
  return fullTree(body.tree);
}
