/**
 * Random-access reader of .cdimg files. Opening reads only the header and the
 * index (verified against the root digest, then validated); contents are read
 * chunk by chunk and every chunk is verified against its digests.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { corrupt, D4fsError, failedPrecondition, hostile, invalidArgument, notFound, unsupported } from '../errors';
import { sha256, digestFromRaw } from '../util/digest';
import { decodeIndex, resolveDeltaTree } from './codec';
import { FLAG_INDEX_ZSTD } from './writer';
import { Blob, Chunk, Codec, Encoding, Entry, HEADER_SIZE, Index, Kind, LIMITS, MAGIC, READ_VERSIONS, checkedByRawDigest } from './types';
import { resolveBasePrefixes } from './bases';
import { validateIndex, validateIndexContents, validateIndexHead } from './validate';
import { checkIndexLean } from './check';
import { zstdUnframe as decompressFull } from './zstd';
import { GroupCache, groupIndex, groupMember, groupMembersIn } from './group';

export interface HeaderInfo {
  version: number;
  flags: number;
  indexOffset: number;
  indexStoredLen: number;
  indexRawLen: number;
  rootDigest: Buffer;
}

export function parseHeader(h: Buffer, fileSize: number, what: string): HeaderInfo {
  if (h.length < HEADER_SIZE) throw corrupt(`${what}: file too short to be a .cdimg (${fileSize} bytes)`);
  if (!h.subarray(0, 8).equals(MAGIC)) throw corrupt(`${what}: not a .cdimg file (bad magic)`);
  const version = h.readUInt32LE(8);
  if (!READ_VERSIONS.includes(version)) throw unsupported(`${what}: .cdimg format version ${version} is not supported (this d4fs reads versions ${READ_VERSIONS.join(', ')})`);
  const flags = h.readUInt32LE(12);
  if (flags !== FLAG_INDEX_ZSTD) throw unsupported(`${what}: unknown header flags ${flags}`);
  const big = (o: number): number => {
    const v = h.readBigUInt64LE(o);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`${what}: header field out of range (corrupt header)`);
    return Number(v);
  };
  const indexOffset = big(16);
  const indexStoredLen = big(24);
  const indexRawLen = big(32);
  for (let i = 40; i < 48; i++) if (h[i] !== 0) throw corrupt(`${what}: corrupt header (reserved bytes set)`);
  for (let i = 80; i < HEADER_SIZE; i++) if (h[i] !== 0) throw corrupt(`${what}: corrupt header (reserved bytes set)`);
  if (indexOffset < HEADER_SIZE || indexOffset + indexStoredLen !== fileSize) {
    throw corrupt(`${what}: truncated or damaged file (index at ${indexOffset}+${indexStoredLen}, file is ${fileSize} bytes)`);
  }
  if (indexRawLen > LIMITS.maxIndexRaw) {
    throw hostile(`${what}: the index claims ${indexRawLen} bytes, over the limit of ${LIMITS.maxIndexRaw} (D4FS_MAX_INDEX_BYTES raises it)`);
  }
  if (indexRawLen > Math.max(64 * 1024, indexStoredLen * LIMITS.maxIndexRatio)) {
    throw hostile(`${what}: the index claims ${indexRawLen} bytes from ${indexStoredLen} stored (over ${LIMITS.maxIndexRatio}x: a decompression bomb?)`);
  }
  return { version, flags, indexOffset, indexStoredLen, indexRawLen, rootDigest: Buffer.from(h.subarray(48, 80)) };
}

/** What opening a file verified and decoded: shared by readers of files with the same header and size. */
interface OpenedIndex {
  header: HeaderInfo;
  index: Index;
  v: { blobs: Map<string, Blob>; byPath: Map<string, Entry> };
}

/**
 * Indexes verified and validated in this process, keyed by the whole header
 * (which holds the root digest, the sha256 of the index) and the file size.
 * A file with the same header and size has the same index bytes at the same
 * place, so a reader opened with `{ reuse: true }` takes the decoded index
 * from here instead of reading, hashing, decoding and validating it again;
 * its chunks are still read from its own file and verified as always. The
 * shared objects must not be mutated: only read-only users ask for reuse
 * (the FUSE manager mounting chains, a pull checking, storing and loading
 * the file it just downloaded).
 */
const opened = new Map<string, OpenedIndex>();
const OPENED_MAX = 16;
/** Raw index bytes the reuse cache may hold (decoded indexes keep views into their raw bytes). */
const OPENED_MAX_BYTES = 256 * 1024 * 1024;
let openedBytes = 0;

function remember(key: string, o: OpenedIndex): void {
  const had = opened.get(key);
  if (had) {
    opened.delete(key);
    openedBytes -= had.header.indexRawLen;
  }
  if (o.header.indexRawLen > OPENED_MAX_BYTES / 4) return; // too big to keep
  opened.set(key, o);
  openedBytes += o.header.indexRawLen;
  while (opened.size > OPENED_MAX || openedBytes > OPENED_MAX_BYTES) {
    const k = opened.keys().next().value as string;
    openedBytes -= (opened.get(k) as OpenedIndex).header.indexRawLen;
    opened.delete(k);
  }
}

/**
 * Raw index bytes being decoded at once in this process: concurrent opens of
 * big indexes (a server taking uploads, a manager mounting chains) wait for
 * each other instead of each allocating its index and its decoded tree. One
 * open is always let through, whatever its size.
 */
const DECODE_BUDGET = 512 * 1024 * 1024;
let decoding = 0;
const decodeWaiters: (() => void)[] = [];

async function decodeSlot(bytes: number): Promise<() => void> {
  while (decoding > 0 && decoding + bytes > DECODE_BUDGET) await new Promise<void>((r) => decodeWaiters.push(r));
  decoding += bytes;
  let done = false;
  return () => {
    if (done) return;
    done = true;
    decoding -= bytes;
    for (const w of decodeWaiters.splice(0)) w();
  };
}

/**
 * Heads (ids, image information; no tree, no contents) of indexes that
 * CdimgReader.check verified and checked in this process, keyed as `opened`
 * is: imageInfo and check (with `reuse`) take them as they take a decoded
 * index (loading an image into containerd right after storing it reads its
 * index only once). A few KB each: the last 16 are kept.
 */
const checkedHeads = new Map<string, { head: Index; hasTree: boolean }>();

function rememberHead(key: string, head: Index, hasTree: boolean): void {
  checkedHeads.delete(key);
  checkedHeads.set(key, { head, hasTree });
  while (checkedHeads.size > OPENED_MAX) checkedHeads.delete(checkedHeads.keys().next().value as string);
}

/** Forget every index kept for reuse (tests; memory). */
export function forgetOpenedIndexes(): void {
  opened.clear();
  openedBytes = 0;
  checkedHeads.clear();
}

/** The parent's entries for a delta that names it as its parent (FAILED_PRECONDITION otherwise). */
function parentTree(parent: CdimgReader, index: Index): Entry[] {
  const want = digestFromRaw(index.parentId);
  if (parent.imageId !== want) throw failedPrecondition(`does not apply to ${parent.path}: it needs parent ${want}, that image is ${parent.imageId}`);
  parent.requireTree();
  return parent.index.entries;
}

/** What CdimgReader.imageInfo tells about a file. */
export interface CdimgImageInfo {
  rootDigest: string;
  imageId: string;
  parentId: string | undefined;
  isDelta: boolean;
  image: Index['image'];
  fileSize: number;
}

async function openFile(path: string): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(path, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`${path}: no such file`);
    throw e;
  }
}

/** Reads and checks the header; `key` identifies the index for reuse (whole header and size). */
async function readHeader(fh: fsp.FileHandle, path: string): Promise<{ st: { size: number }; header: HeaderInfo; key: string }> {
  const st = await fh.stat();
  if (st.isDirectory()) throw invalidArgument(`${path} is a directory: name a .cdimg file`);
  if (!st.isFile()) throw invalidArgument(`${path} is not a regular file: name a .cdimg file`);
  const h = Buffer.alloc(HEADER_SIZE);
  const { bytesRead } = await fh.read(h, 0, HEADER_SIZE, 0);
  const header = parseHeader(h.subarray(0, bytesRead), st.size, path);
  return { st, header, key: `${st.size}:${h.toString('hex')}` };
}

/** The index as stored (compressed), not checked. */
async function readStoredIndex(fh: fsp.FileHandle, header: HeaderInfo): Promise<Buffer> {
  const stored = Buffer.alloc(header.indexStoredLen);
  await readFully(fh, stored, header.indexOffset);
  return stored;
}

/** The raw index bytes, checked against the root digest. */
async function readVerifiedIndex(fh: fsp.FileHandle, header: HeaderInfo, path: string): Promise<Buffer> {
  return verifiedIndex(await readStoredIndex(fh, header), header, path);
}

/** The raw index bytes of `stored`, checked against the root digest. */
function verifiedIndex(stored: Buffer, header: HeaderInfo, path: string): Buffer {
  let raw: Buffer;
  try {
    raw = decompressFull(stored, header.indexRawLen);
  } catch (e) {
    throw corrupt(`${path}: index is damaged (${(e as Error).message})`, e);
  }
  if (!sha256(raw).equals(header.rootDigest)) throw corrupt(`${path}: index does not match the root digest (file damaged)`);
  return raw;
}

/** An error as thrown by opening `path`: D4fsErrors keep their kind and gain the path; anything else is CORRUPT. */
function withPath(e: unknown, path: string): D4fsError {
  if (e instanceof D4fsError) {
    if (!e.message.startsWith(path)) e.message = `${path}: ${e.message}`;
    return e;
  }
  return corrupt(`${path}: ${(e as Error).message}`, e);
}

/**
 * The header and size of a file whose index is checked against its root
 * digest (read and decompressed, never taken from the reuse cache) and not
 * decoded: a copy of a file that was opened and validated is the same file
 * when this holds and its header and size are the validated file's.
 */
export async function verifyIndexBytes(path: string): Promise<{ header: HeaderInfo; size: number }> {
  const fh = await openFile(path);
  try {
    const { st, header } = await readHeader(fh, path);
    await readVerifiedIndex(fh, header, path);
    return { header, size: st.size };
  } catch (e) {
    throw withPath(e, path);
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** What CdimgReader.check tells about a file it checked. */
export interface CheckedCdimg extends CdimgImageInfo {
  header: HeaderInfo;
  /** False for a version 2 delta written as an edit script: its tree is checked on its parent's (open with `parent`). */
  hasTree: boolean;
  /** The index as stored, when it was read (not taken from the reuse cache): see sameStoredIndex. */
  storedIndex?: Buffer;
}

/**
 * Whether the file at `path` has `checked`'s header and size and, byte for
 * byte, its stored index (read from `path`): then it is the checked file as
 * far as any reader sees (the index was verified against the root digest
 * and validated; chunks are verified when read). Undefined when `checked`
 * kept no stored index: use verifyIndexBytes.
 */
export async function sameStoredIndex(path: string, checked: CheckedCdimg): Promise<boolean | undefined> {
  const want = checked.storedIndex;
  if (!want) return undefined;
  const fh = await openFile(path);
  try {
    const { st, header } = await readHeader(fh, path);
    if (st.size !== checked.fileSize || !sameHeader(header, checked.header)) return false;
    return (await readStoredIndex(fh, header)).equals(want);
  } catch (e) {
    throw withPath(e, path);
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** Whether two checked headers are the same (every field). */
export function sameHeader(a: HeaderInfo, b: HeaderInfo): boolean {
  return (
    a.version === b.version &&
    a.flags === b.flags &&
    a.indexOffset === b.indexOffset &&
    a.indexStoredLen === b.indexStoredLen &&
    a.indexRawLen === b.indexRawLen &&
    a.rootDigest.equals(b.rootDigest)
  );
}

/** The version 5 base prefixes of a delta's index resolved against the files below it (./bases.ts); nothing to do for others. */
function resolveBases(index: Index, below: readonly Index[]): void {
  // resolveBasePrefixes looks at the chunks once and returns when no base is named by prefix
  if (below.length === 0 || index.kind !== Kind.DELTA || index.formatVersion < 5) return;
  resolveBasePrefixes(index, below);
}

export class CdimgReader {
  readonly blobs: Map<string, Blob>;
  readonly byPath: Map<string, Entry>;
  private constructor(
    readonly path: string,
    private fh: fsp.FileHandle,
    readonly header: HeaderInfo,
    readonly index: Index,
    v: { blobs: Map<string, Blob>; byPath: Map<string, Entry> },
    readonly fileSize: number,
    /** Opened with `contentsOnly`: the stored contents without the tree. */
    private readonly treeless = false,
    /** The indexes of the files below this one in its chain, bottom first (empty: opened alone). */
    readonly below: readonly Index[] = [],
  ) {
    this.blobs = v.blobs;
    this.byPath = v.byPath;
  }

  /**
   * Open a file: header, index verified against the root digest, decoded and
   * validated. A delta of format version 2 writes its tree as an edit script
   * against its parent's: given `parent` (the reader of its parent image, or
   * of the top of a chain leading to it) it gets its whole tree and its image
   * id is checked; without one only its contents are validated and
   * `hasTree` is false (ids, image information and chunks can be read;
   * `requireTree` throws). The bases a version 5 delta names by prefix are
   * resolved against the files below it (`parent` and the files below it,
   * or `below`: their indexes, bottom first; ./bases.ts); opened alone, they
   * stay prefixes.
   */
  static async open(path: string, opts: { reuse?: boolean; parent?: CdimgReader; contentsOnly?: boolean; below?: readonly Index[] } = {}): Promise<CdimgReader> {
    const fh = await openFile(path);
    const below = opts.parent ? [...opts.parent.below, opts.parent.index] : (opts.below ?? []);
    try {
      const { st, header, key } = await readHeader(fh, path);
      const known = opts.reuse ? (opened.get(key) ?? (opts.contentsOnly ? opened.get(`${key}:contents`) : undefined)) : undefined;
      if (known) {
        remember(known.v.byPath.size || !opts.contentsOnly ? key : `${key}:contents`, known);
        resolveBases(known.index, below);
        return new CdimgReader(path, fh, known.header, known.index, known.v, st.size, !known.v.byPath.size && !!opts.contentsOnly, below);
      }
      const release = await decodeSlot(header.indexRawLen);
      try {
        return CdimgReader.fromRaw(path, fh, header, key, st.size, await readVerifiedIndex(fh, header, path), opts, below);
      } finally {
        release();
      }
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw withPath(e, path);
    }
  }

  /** What open does with the verified raw index: decode, validate, remember. */
  private static fromRaw(path: string, fh: fsp.FileHandle, header: HeaderInfo, key: string, size: number, raw: Buffer, opts: { reuse?: boolean; parent?: CdimgReader; contentsOnly?: boolean }, below: readonly Index[] = []): CdimgReader {
    let index = decodeIndex(raw, { contentsOnly: opts.contentsOnly });
    if (index.formatVersion !== header.version) throw corrupt(`the header says format version ${header.version}, the index ${index.formatVersion}`);
    resolveBases(index, below);
    if (opts.contentsOnly && index.formatVersion >= 2) {
      // the contents alone (a worker building contents of a chain the main thread opened whole)
      const blobs = validateIndexContents(index, header.indexOffset, HEADER_SIZE);
      const v = { blobs, byPath: new Map<string, Entry>() };
      if (opts.reuse) remember(`${key}:contents`, { header, index, v });
      return new CdimgReader(path, fh, header, index, v, size, true, below);
    }
    if (index.treeEdit) {
      if (!opts.parent) {
        const blobs = validateIndexContents(index, header.indexOffset, HEADER_SIZE);
        return new CdimgReader(path, fh, header, index, { blobs, byPath: new Map() }, size, false, below);
      }
      index = resolveDeltaTree(index, parentTree(opts.parent, index));
    }
    const v = validateIndex(index, header.indexOffset, HEADER_SIZE);
    if (opts.reuse) remember(key, { header, index, v });
    return new CdimgReader(path, fh, header, index, v, size, false, below);
  }

  /**
   * Check a file as `open(path, { reuse })` (no parent) checks it — header,
   * index against the root digest, decoded and validated (a version 2 delta
   * written as an edit script: its contents; its tree needs its parent) —
   * and tell what it is, without keeping a decoded index: for callers that
   * only admit a file (LocalStore.add). A version 2 index is checked on its
   * columns (format/check.ts: on a 151,520-entry image ~4x less CPU than
   * decoding and validating it, and none of the ~270 MB its objects took);
   * anything that check does not accept is decoded and validated as open
   * does, on the same bytes, whose answer (or error) counts. With `reuse`,
   * an index this process already validated is taken as open takes it.
   */
  static async check(path: string, opts: { reuse?: boolean } = {}): Promise<CheckedCdimg> {
    const fh = await openFile(path);
    try {
      const { st, header, key } = await readHeader(fh, path);
      const known = opts.reuse ? opened.get(key) : undefined;
      const head = opts.reuse ? checkedHeads.get(key) : undefined;
      let index: Index;
      let hasTree: boolean;
      let stored: Buffer | undefined;
      if (known) {
        index = known.index;
        hasTree = !index.treeEdit;
      } else if (head) {
        index = head.head;
        hasTree = head.hasTree;
      } else {
        const release = await decodeSlot(header.indexRawLen);
        try {
          stored = await readStoredIndex(fh, header);
          const raw = verifiedIndex(stored, header, path);
          const lean = checkIndexLean(raw, header.version, header.indexOffset, HEADER_SIZE);
          if (lean) {
            index = lean.head;
            hasTree = lean.hasTree;
            if (opts.reuse) rememberHead(key, index, hasTree);
          } else {
            const r = CdimgReader.fromRaw(path, fh, header, key, st.size, raw, opts);
            index = r.index;
            hasTree = r.hasTree;
          }
        } finally {
          release();
        }
      }
      const isDelta = index.kind === Kind.DELTA;
      return {
        rootDigest: digestFromRaw(header.rootDigest),
        imageId: digestFromRaw(index.imageId),
        parentId: isDelta ? digestFromRaw(index.parentId) : undefined,
        isDelta,
        image: index.image,
        fileSize: st.size,
        header,
        hasTree,
        storedIndex: stored,
      };
    } catch (e) {
      throw withPath(e, path);
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  /** Open a chain (a full image first, then each delta on the one before it): every file gets its tree. */
  static async openChain(paths: readonly string[], opts: { reuse?: boolean } = {}): Promise<CdimgReader[]> {
    const readers: CdimgReader[] = [];
    try {
      for (const p of paths) readers.push(await CdimgReader.open(p, { ...opts, parent: readers.at(-1) }));
      return readers;
    } catch (e) {
      await Promise.all(readers.map((r) => r.close()));
      throw e;
    }
  }

  /** Whether the whole tree of the image is known (false only for a version 2 delta opened without its parent). */
  get hasTree(): boolean {
    return !this.index.treeEdit && !this.treeless;
  }

  /** Throws FAILED_PRECONDITION unless the tree is known: for commands that need a delta's whole tree. */
  requireTree(): void {
    if (this.treeless) throw failedPrecondition(`${this.path} was opened for its contents only`);
    if (this.index.treeEdit) {
      throw failedPrecondition(`${this.path} is a delta whose tree is written against its parent image ${digestFromRaw(this.index.parentId)}: name its chain (the full image and the deltas before it) or load it into the store first`);
    }
  }

  /**
   * What a file is — its ids, kind and image information — from its index,
   * verified against the root digest, without decoding or validating the tree
   * and the blobs: for files that were opened and validated when they entered
   * the local store (loading an image needs only this much). Takes the index
   * this process already decoded when there is one.
   */
  static async imageInfo(path: string): Promise<CdimgImageInfo> {
    const fh = await openFile(path);
    try {
      const { st, header, key } = await readHeader(fh, path);
      const known = opened.get(key)?.index ?? checkedHeads.get(key)?.head;
      let index: Index;
      if (known) {
        index = known;
      } else {
        const release = await decodeSlot(header.indexRawLen);
        try {
          index = decodeIndex(await readVerifiedIndex(fh, header, path), { tree: false });
        } finally {
          release();
        }
        validateIndexHead(index);
      }
      const isDelta = index.kind === Kind.DELTA;
      return {
        rootDigest: digestFromRaw(header.rootDigest),
        imageId: digestFromRaw(index.imageId),
        parentId: isDelta ? digestFromRaw(index.parentId) : undefined,
        isDelta,
        image: index.image,
        fileSize: st.size,
      };
    } catch (e) {
      throw withPath(e, path);
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  get rootDigest(): string {
    return digestFromRaw(this.header.rootDigest);
  }
  get imageId(): string {
    return digestFromRaw(this.index.imageId);
  }
  get parentId(): string | undefined {
    return this.index.kind === Kind.DELTA ? digestFromRaw(this.index.parentId) : undefined;
  }
  get isDelta(): boolean {
    return this.index.kind === Kind.DELTA;
  }

  private groupsByFrame?: Map<string, Chunk[]>;

  /**
   * The members of the solid group coded against bases (their blobs PATCH: see
   * ./group.ts) whose frame `c` names, in group order; built on first use.
   */
  groupMembers(c: Pick<Chunk, 'offset' | 'storedSize'>): Chunk[] {
    this.groupsByFrame ??= groupIndex(this.index.blobs);
    return groupMembersIn(this.groupsByFrame, c);
  }

  blob(digest: Buffer | string): Blob | undefined {
    const key = typeof digest === 'string' ? digest.replace(/^sha256:/, '') : digest.toString('hex');
    return this.blobs.get(key);
  }

  /**
   * Read a chunk's stored bytes, verified against its stored digest when it
   * has one. A zstd chunk of format version 2 has none: the caller checks the
   * decoded bytes against `rawDigest` (every decoder here does), or uses
   * readStoredVerified to copy stored bytes as they are.
   */
  async readStored(c: Chunk): Promise<Buffer> {
    const buf = Buffer.alloc(c.storedSize);
    await readFully(this.fh, buf, c.offset);
    if (c.storedDigest.length === 0 && checkedByRawDigest(c.codec, this.index.formatVersion)) return buf;
    if (!sha256(buf).equals(c.storedDigest)) throw corrupt(`${this.path}: stored chunk at ${c.offset} is damaged (digest mismatch)`);
    return buf;
  }

  /** A chunk's stored bytes, checked even when they have no stored digest (a zstd chunk is decoded and its content checked). */
  async readStoredVerified(c: Chunk): Promise<Buffer> {
    const stored = await this.readStored(c);
    if (c.codec === Codec.GROUP) {
      await readZstdChunk(this.fh, this.path, c);
      return stored;
    }
    if (c.storedDigest.length === 0) {
      let data: Buffer;
      try {
        data = decompressFull(stored, c.rawSize);
      } catch (e) {
        throw corrupt(`${this.path}: stored chunk at ${c.offset} is damaged (${(e as Error).message})`, e);
      }
      if (!sha256(data).equals(c.rawDigest)) throw corrupt(`${this.path}: stored chunk at ${c.offset} is damaged (decodes to the wrong content)`);
    }
    return stored;
  }

  /**
   * Check every stored byte of the file: version 2, the blob section against
   * its digest (one sequential read); version 1, every stored chunk against
   * its stored digest. Nothing is decompressed.
   */
  async verifySection(): Promise<void> {
    if (this.index.formatVersion === 1) {
      for (const b of this.index.blobs) for (const c of b.chunks) await this.readStored(c);
      return;
    }
    const h = createHash('sha256');
    const piece = Buffer.alloc(4 * 1024 * 1024);
    for (let at = HEADER_SIZE; at < this.header.indexOffset; ) {
      const n = Math.min(piece.length, this.header.indexOffset - at);
      await readFully(this.fh, piece.subarray(0, n), at);
      h.update(piece.subarray(0, n));
      at += n;
    }
    if (!h.digest().equals(this.index.sectionDigest ?? Buffer.alloc(0))) throw corrupt(`${this.path}: the blob section does not match its digest (file damaged)`);
  }

  /** Decode a ZSTD or GROUP chunk and verify it. Patch chunks need a base: see the delta module. */
  async readFullChunk(c: Chunk): Promise<Buffer> {
    if (c.codec !== Codec.ZSTD && c.codec !== Codec.GROUP) throw unsupported(`chunk at ${c.offset} is a patch; it needs its base content`);
    if (c.storedDigest.length === 0 && this.index.formatVersion < 2) throw corrupt(`${this.path}: stored chunk at ${c.offset} has no digest`);
    return readZstdChunk(this.fh, this.path, c);
  }

  /** Whole content of a FULL blob (small files; large ones should go chunk by chunk). */
  async readContent(digest: Buffer): Promise<Buffer> {
    const b = this.blob(digest);
    if (!b) throw notFound(`content ${digestFromRaw(digest)} is not in ${this.path}`);
    if (b.encoding !== Encoding.FULL) throw unsupported(`content ${digestFromRaw(digest)} is not stored in full in ${this.path}`);
    const parts: Buffer[] = [];
    for (const c of b.chunks) parts.push(await this.readFullChunk(c));
    const data = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    if (!sha256(data).equals(b.digest)) throw corrupt(`${this.path}: content ${digestFromRaw(digest)} does not match its digest`);
    return data;
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}


/**
 * What reading one stored zstd chunk needs: a Chunk, or these of its fields
 * (`codec` and `groupOffset` for a member of a solid group: see ./group.ts).
 */
export type ZstdChunkRef = Pick<Chunk, 'offset' | 'storedSize' | 'storedDigest' | 'rawSize' | 'rawDigest'> & { codec?: number; groupOffset?: number };

/**
 * Groups decoded by readZstdChunk in this thread, by file handle and offset (a
 * handle names one open file: a file replaced at the same path is another
 * handle). 16 MiB: 128 groups of 128 KiB.
 */
const groups = new GroupCache(16 * 1024 * 1024);
const handleIds = new WeakMap<fsp.FileHandle, number>();
let lastHandleId = 0;

/** Member `c` of a solid group of `path`: the group decoded once (kept in `groups`), the member copied out and checked. */
async function readGroupMember(fh: fsp.FileHandle, path: string, c: ZstdChunkRef): Promise<Buffer> {
  let id = handleIds.get(fh);
  if (id === undefined) {
    id = ++lastHandleId;
    handleIds.set(fh, id);
  }
  const read = async (): Promise<Buffer> => {
    const stored = Buffer.allocUnsafe(c.storedSize);
    await readFully(fh, stored, c.offset);
    return stored;
  };
  let group: Buffer;
  try {
    group = await groups.group(`${id}:${c.offset}:${c.storedSize}`, read, `${path}: group at ${c.offset}`);
  } catch (e) {
    if (e instanceof D4fsError && e.kind !== 'CORRUPT') throw e;
    throw corrupt(`${path}: stored group at ${c.offset} is damaged (${(e as Error).message})`, e);
  }
  // a copy: the member outlives the group in callers' caches
  return Buffer.from(groupMember(group, c, path));
}

/** Drops the groups readZstdChunk keeps decoded in this thread. */
export function forgetDecodedGroups(): void {
  groups.clear();
}

/**
 * One zstd chunk of `path`, read through `fh`, decoded and verified: its
 * stored bytes against its stored digest when it has one (format version 1),
 * the decoded bytes against its chunk digest; damage is CORRUPT naming the
 * file and the offset. The one read-decode-verify of a stored chunk: the
 * reader, the FUSE cache (small contents, build threads) and diff's threads
 * use it.
 */
export async function readZstdChunk(fh: fsp.FileHandle, path: string, c: ZstdChunkRef): Promise<Buffer> {
  if (c.codec === Codec.GROUP) return readGroupMember(fh, path, c);
  const stored = Buffer.allocUnsafe(c.storedSize);
  await readFully(fh, stored, c.offset);
  if (c.storedDigest.length > 0 && !sha256(stored).equals(c.storedDigest)) throw corrupt(`${path}: stored chunk at ${c.offset} is damaged (digest mismatch)`);
  let raw: Buffer;
  try {
    raw = decompressFull(stored, c.rawSize);
  } catch (e) {
    if (e instanceof D4fsError && e.kind !== 'CORRUPT') throw e;
    throw corrupt(`${path}: stored chunk at ${c.offset} is damaged (${(e as Error).message})`, e);
  }
  if (!sha256(raw).equals(c.rawDigest)) throw corrupt(`${path}: chunk at ${c.offset} decodes to the wrong content`);
  return raw;
}

export async function readFully(fh: fsp.FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, pos + done);
    if (bytesRead === 0) throw corrupt(`unexpected end of file at ${pos + done} (truncated?)`);
    done += bytesRead;
  }
}

