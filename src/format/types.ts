/** TypeScript view of proto/cdimg.proto (numbers for 64-bit fields: values are bounded by validation). */

export enum Kind {
  UNSPECIFIED = 0,
  FULL = 1,
  DELTA = 2,
}

export enum FileType {
  UNSPECIFIED = 0,
  REG = 1,
  DIR = 2,
  SYMLINK = 3,
  HARDLINK = 4,
  CHAR = 5,
  BLOCK = 6,
  FIFO = 7,
}

export enum Encoding {
  UNSPECIFIED = 0,
  SAME = 1,
  FULL = 2,
  PATCH = 3,
}

export enum Codec {
  UNSPECIFIED = 0,
  ZSTD = 1,
  ZSTD_PATCH = 2,
  BSDIFF = 3,
  GZIP_MEMBER = 4,
  /**
   * Format version 3: a member of a solid group. The chunk's stored bytes are one zstd
   * frame shared by every member of the group (the same offset and stored size); the
   * member is bytes [groupOffset, groupOffset + rawSize) of the frame's content. In a
   * delta, members may have a base region: the frame is then compressed as zstd-patch
   * does, against the concatenation of the base regions of all the group's members in
   * group order, and every member's blob is PATCH (see src/format/group.ts).
   */
  GROUP = 5,
  /**
   * A zip archive (.jar, .whl, .apk) rebuilt byte for byte: u8 inner codec, then its
   * expanded form (a table, then the archive with the members the system's zlib rebuilds
   * decompressed; src/delta/zipmember.ts) encoded with that codec, for patch codecs
   * against the base's expanded form.
   */
  ZIP_MEMBERS = 6,
  /**
   * Format version 7: an LLVM bitcode file rebuilt byte for byte: u8 inner codec, then its
   * expanded form (every value of the bitstream as a byte-aligned varint;
   * src/delta/bitcode.ts) encoded with that codec, for patch codecs against the base's
   * expanded form.
   */
  LLVM_BITCODE = 7,
}

/**
 * What a chunk of a codec refers to: `none`, nothing (self-contained; its base fields
 * are ignored); `required`, a patch against the region [baseOffset, baseOffset +
 * baseSize) of the content `baseDigest`; `optional`, that region when `baseDigest` is set.
 */
export type CodecBase = 'none' | 'required' | 'optional';

/**
 * The format's columns of the codec registry (src/delta/codecs/registry.ts adds how each
 * codec encodes, decodes and is chosen): its name and what its chunks refer to, which
 * validate.ts checks. Every {@link Codec} but UNSPECIFIED has a row (the compiler checks).
 */
export const CODEC_FORMATS = {
  [Codec.ZSTD]: { name: 'zstd', base: 'none' },
  [Codec.ZSTD_PATCH]: { name: 'zstd-patch', base: 'required' },
  [Codec.BSDIFF]: { name: 'bsdiff', base: 'required' },
  [Codec.GZIP_MEMBER]: { name: 'gzip-member', base: 'optional' },
  [Codec.GROUP]: { name: 'group', base: 'optional' },
  [Codec.ZIP_MEMBERS]: { name: 'zip-members', base: 'optional' },
  [Codec.LLVM_BITCODE]: { name: 'llvm-bitcode', base: 'optional' },
} as const satisfies Record<Exclude<Codec, Codec.UNSPECIFIED>, { name: string; base: CodecBase }>;

/** A codec value that has a row in {@link CODEC_FORMATS}. */
export type KnownCodec = keyof typeof CODEC_FORMATS;

/** The row of codec `c`, or undefined for UNSPECIFIED and values this version does not know. */
export function codecFormat(c: number): { name: string; base: CodecBase } | undefined {
  return Object.prototype.hasOwnProperty.call(CODEC_FORMATS, c) ? CODEC_FORMATS[c as KnownCodec] : undefined;
}

export interface Xattr {
  name: string;
  value: Buffer;
}

export interface Entry {
  path: string;
  type: FileType;
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  size: number;
  digest: Buffer;
  linkTarget: string;
  devMajor: number;
  devMinor: number;
  xattrs: Xattr[];
  uname: string;
  gname: string;
}

export interface Chunk {
  offset: number;
  storedSize: number;
  storedDigest: Buffer;
  rawSize: number;
  rawDigest: Buffer;
  codec: Codec;
  /**
   * The base's digest: 32 bytes; in a version 5 delta opened without the images below it, the
   * BASE_PREFIX_BYTES it is named by until ./bases.ts resolves it (empty: no base).
   */
  baseDigest: Buffer;
  baseOffset: number;
  baseSize: number;
  /** GROUP chunks: where the member starts in its group's decoded bytes. */
  groupOffset?: number;
}

export interface Blob {
  digest: Buffer;
  size: number;
  encoding: Encoding;
  chunks: Chunk[];
}

export interface Layer {
  digest: string;
  size: number;
  mediaType: string;
  diffId: string;
}

export interface ImageInfo {
  sourceRef: string;
  manifestDigest: string;
  configDigest: string;
  configJson: Buffer;
  layers: Layer[];
  platform: string;
  manifestMediaType: string;
}

export interface Index {
  formatVersion: number;
  kind: Kind;
  imageId: Buffer;
  parentId: Buffer;
  image: ImageInfo;
  entries: Entry[];
  blobs: Blob[];
  chunkSize: number;
  parentImage?: ImageInfo;
  /** Version 2: sha256 of the blob section [HEADER_SIZE, index offset), for whole-file checks. */
  sectionDigest?: Buffer;
  /**
   * Version 2 delta opened without its parent: the edit script of its tree,
   * `entries` is empty until the parent's tree is applied (CdimgReader.open with `parent`).
   */
  treeEdit?: TreeEdit;
}

/** An entry of a version 2 delta's edit script before its path is known (the parent's tree gives the directories). */
export interface InsertedEntry extends Entry {
  depth: number;
  name: string;
  /**
   * Version 4: the entry's content is that of the parent tree's entry at this
   * ordinal (a regular file whose content did not change: re-stamped, its
   * mode changed, moved), so the delta does not store its digest again.
   * Decoded entries carry an empty `digest` until applyTreeEdit (or
   * composeEdits, for a reference into an intermediate tree) resolves it;
   * entries written carry both, the digest for what reads them before writing.
   */
  parentRef?: number;
  /**
   * Version 6: the entry's path is that of the parent tree's entry at this
   * ordinal (a changed entry at the same path: re-stamped, edited), so the
   * delta does not store its name again. Decoded entries carry depth 0 and
   * name '' until applyTreeEdit (or composeEdits) resolves it; entries
   * written carry their depth and name too.
   */
  pathRef?: number;
  /** Version 6, with pathRef, a SYMLINK or HARDLINK: its target is that parent entry's (decoded: '' until resolved). */
  linkRef?: boolean;
  /**
   * Version 7, a regular file with parentRef or a SYMLINK with linkRef: its
   * size is that of the parent entry it refers to (the same content, or the
   * same target). Decoded entries carry size 0 until applyTreeEdit (or
   * composeEdits) resolves it; entries written carry their size too.
   */
  sizeRef?: boolean;
}

/** What a version 2 delta says about its tree: the edit script against its parent's entries and the entries it inserts. */
export interface TreeEdit {
  /** Triples (keep, drop, insert): copy `keep` entries of the parent, skip `drop`, insert the next `insert` of `inserted`. */
  ops: number[];
  inserted: InsertedEntry[];
}

/**
 * The version this d4fs writes. Version 2 (issue 18): the index in columns,
 * a delta's tree as an edit script against its parent's, a blob-section
 * digest instead of per-chunk stored digests of zstd frames. Version 3
 * (issues 14 and 18): version 2 plus solid groups of small contents
 * (Codec.GROUP, the content column `group_offset`; see ./group.ts). Version 4
 * (issue 14): a delta's inserted regular file whose content is its parent's
 * entry's names that entry instead of repeating the 32-byte digest (a package
 * upgrade re-stamps every file: tzdata's delta was 53 KiB of 64 KiB index).
 * Version 5 (issues 14 and 18): version 4 plus a delta's patch bases named
 * by an 8-byte prefix of their digest (the content column `base_prefixes`):
 * a base is a content of the parent image, which the chain below already
 * names in full (tzdata's delta: 458 bases, 14.7 KB of 50 KiB); and a group
 * member's offset relative to the end of the member listed before it in the
 * same group (0 in order: ~5 % of a full image's stored index). Version 6
 * (issues 14 and 18): version 5 plus a delta's changed entry at the same path
 * as its parent's entry names that entry for its path (and its link target)
 * instead of repeating them (Columns.path_ref): a package upgrade re-stamps
 * every file, and tzdata's delta repeated 3.1 KB of names and 1 KB of link
 * targets of its 40 KB. Also, in every version 6 index, the numbers of
 * contents in the digest table are written relative to the table's order
 * (the tree's `content`: 0 for the next digest not used yet; the contents'
 * `content`: zigzag of the step from the one before): as absolute numbers
 * they took 10 % of a full image's stored index (node_modules: 1.95 →
 * 1.82 MB). Version 7 (issue 14): version 6 without sizes the index says
 * otherwise (Columns.size): a regular file's is its content's when the index
 * stores that content, or its parent's entry's when it takes the content
 * from there; a symbolic link's is written less its target's length, or taken
 * from its parent's entry with the target. And a chunk's base number is
 * written relative to the one before, its base size less its raw size (the
 * content columns `base` and `base_size`). The delta bench's tzdata delta
 * 35,062 -> 32,762 bytes, node_modules' 48,344 -> 47,907; the node_modules
 * v2 full index 1,821,722 -> 1,789,997 bytes (26.2 -> 25.7 B/entry).
 */
export const FORMAT_VERSION = 7;
/**
 * Versions this d4fs reads: 1 (every file written before version 2), 2, 3,
 * 4 (version 3 plus contents by parent reference in a delta's inserted
 * entries: Columns.content_ref, InsertedEntry.parentRef), 5 (version 4
 * plus a delta's patch bases named by the first BASE_PREFIX_BYTES bytes of
 * their digest, resolved against the images below it: ./bases.ts), 6
 * (version 5 plus paths and link targets by parent reference in a delta's
 * inserted entries: Columns.path_ref, InsertedEntry.pathRef) and 7 (version
 * 6 with sizes derived where the index says them: InsertedEntry.sizeRef).
 */
export const READ_VERSIONS: readonly number[] = [1, 2, 3, 4, 5, 6, 7];

/**
 * Bytes of a base digest a version 5 delta keeps when the prefix names one
 * content of its parent's chain (./bases.ts): 8 instead of 32 for each base.
 */
export const BASE_PREFIX_BYTES = 8;

/**
 * True when a chunk of a file of format `version` is checked by its decoded bytes
 * (its raw digest, and the file by its section digest) and carries no stored digest:
 * zstd frames from version 2 on, group members (version 3).
 */
export function checkedByRawDigest(codec: number, version: number): boolean {
  return (codec === Codec.ZSTD && version >= 2) || (codec === Codec.GROUP && version >= 3);
}
export const HEADER_SIZE = 128;
export const MAGIC = Buffer.from('D4FSCDIM', 'ascii');
/** Default chunk size of large contents. */
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
/** Limits applied to untrusted files. */
function envBytes(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/** Change the index bounds of this process (a server's --max-index-size). */
export function setIndexLimits(o: { maxRaw?: number; maxRatio?: number }): void {
  if (o.maxRaw !== undefined) LIMITS.maxIndexRaw = o.maxRaw;
  if (o.maxRatio !== undefined) LIMITS.maxIndexRatio = o.maxRatio;
}

/**
 * Bounds on what an untrusted file may make a reader allocate or do. The index
 * bounds are checked on the header, before anything is allocated:
 * - maxIndexRaw: 512 MiB of raw index. Real indexes take ~120-210 raw bytes per
 *   entry (150,000 files: 31 MB raw), so this admits ~2.5 million entries, 10x
 *   the largest images seen (ML/CUDA images with ~250,000 files).
 *   `D4FS_MAX_INDEX_BYTES` or setIndexLimits() changes it (servers lower it).
 * - maxIndexRatio: raw bytes per stored byte of index. Every regular file
 *   carries random digests that do not compress, so real indexes shrink 1.5-4x;
 *   a tree of only empty files or directories, the most compressible real case,
 *   shrinks ~30x. 256x refuses a 34 KB file that claims a 1 GiB index.
 */
export const LIMITS = {
  maxIndexRaw: envBytes('D4FS_MAX_INDEX_BYTES') ?? 512 * 1024 * 1024,
  maxIndexRatio: 256,
  maxEntries: 5_000_000,
  maxFileSize: 2 ** 44, // 16 TiB
  maxChunkSize: 64 * 1024 * 1024,
  maxPathBytes: 4096,
  maxXattrValue: 64 * 1024,
};

/**
 * Bounds on a solid group (format version 3) that a reader enforces: the decoded group
 * (4 MiB, 16x what the writer makes: see GROUP_TARGET_RAW in ./group.ts) and its frame.
 */
export const GROUP_MAX_RAW = 4 * 1024 * 1024;
export const GROUP_MAX_STORED = GROUP_MAX_RAW + 64 * 1024;

export const emptyImageInfo = (): ImageInfo => ({
  sourceRef: '',
  manifestDigest: '',
  configDigest: '',
  configJson: Buffer.alloc(0),
  layers: [],
  platform: '',
  manifestMediaType: '',
});

/** Index chunks for zstd frames laid out back to back from `offset` (as a worker reports them). */
export function zstdChunksAt(offset: number, infos: { storedSize: number; storedDigest: string; rawSize: number; rawDigest: string }[]): Chunk[] {
  let o = offset;
  return infos.map((ch) => {
    const chunk: Chunk = {
      offset: o,
      storedSize: ch.storedSize,
      storedDigest: Buffer.from(ch.storedDigest, 'hex'),
      rawSize: ch.rawSize,
      rawDigest: Buffer.from(ch.rawDigest, 'hex'),
      codec: Codec.ZSTD,
      baseDigest: Buffer.alloc(0),
      baseOffset: 0,
      baseSize: 0,
    };
    o += ch.storedSize;
    return chunk;
  });
}
