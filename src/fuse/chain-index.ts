/**
 * What the serving thread knows about a chain of .cdimg files (full image
 * first, then deltas): every file's stored blobs, to find where a content is
 * stored, and the top file's entries, to build the tree. Files are opened
 * (the index verified against its root digest and validated), checked to
 * form a chain, and closed again: the worker threads read blobs themselves.
 *
 * Memory (issue 18: the manager bounded by design): nothing of the readers
 * is kept but the top file's Entry objects and, per level, the blobs the
 * file stores, sorted by digest (no map keyed by digest strings). The SAME
 * blobs a delta's index lists for every content of its tree that it does
 * not store are dropped (locate never returns them). The chain is opened
 * without the reader's reuse cache, which would keep every decoded index
 * (its maps of paths and blobs included) after the mount; a file's stored
 * blobs are shared instead by every open chain holding that file (see
 * `shared`), as long as one does, and so are entries (see `topEntries`).
 */
import { checkChain } from '../delta/chain';
import { failedPrecondition } from '../errors';
import { groupIndex, groupMembersIn } from '../format/group';
import { CdimgReader } from '../format/reader';
import { type Blob, type Chunk, Codec, Encoding, type Entry } from '../format/types';

/** Where a content is stored: the file, its level in the chain, its blob. */
export interface Location {
  file: string;
  level: number;
  blob: Blob;
  /** Format version of `file` (how its stored chunks are checked). */
  formatVersion: number;
}

/** True for the common blob kept in columns by StoredBlobs: one self-contained zstd chunk (or group member) holding the whole content. */
function isSimple(b: Blob): boolean {
  if (b.encoding !== Encoding.FULL || b.chunks.length !== 1) return false;
  const c = b.chunks[0];
  return (
    (c.codec === Codec.ZSTD || (c.codec === Codec.GROUP && c.groupOffset !== undefined && c.groupOffset <= 0x7fffffff)) &&
    c.rawSize === b.size &&
    c.storedDigest.length === 0 &&
    c.baseDigest.length === 0 &&
    c.baseOffset === 0 &&
    c.baseSize === 0 &&
    c.storedSize <= 0xffffffff &&
    c.rawDigest.equals(b.digest)
  );
}

const NO_DIGEST = Buffer.alloc(0);

/**
 * The blobs one file stores (FULL or PATCH), sorted by digest. Most blobs
 * of a big image are a small file's one zstd frame: those are kept as
 * columns (digest, offset, stored and raw size: 52 bytes each) and made
 * into a Blob when located; the others stay objects. Measured on the
 * 151k-entry image: the Blob, chunk array and Chunk objects were ~180 bytes
 * per content of the manager's heap (issue 18: the manager bounded by design).
 */
class StoredBlobs {
  private constructor(
    /** Simple blobs (see isSimple): digests, 32 bytes each, sorted. */
    private readonly digests: Buffer,
    private readonly offsets: Float64Array,
    private readonly storedSizes: Uint32Array,
    private readonly sizes: Float64Array,
    /** A group member's offset in its group (format/group.ts), -1 for a zstd chunk of its own. */
    private readonly groupOffsets: Int32Array,
    /** The other stored blobs, sorted by digest. */
    private readonly others: readonly Blob[],
  ) {}

  static of(blobs: readonly Blob[]): StoredBlobs {
    // sorted by the digest's first 48 bits as a number, Buffer.compare only on ties: 150k
    // blobs in ~130 ms instead of ~420 ms with Buffer.compare alone (part of every mount)
    const byDigest = (x: { b: Blob; k: number }, y: { b: Blob; k: number }): number => x.k - y.k || Buffer.compare(x.b.digest, y.b.digest);
    const simple: { b: Blob; k: number }[] = [];
    const others: { b: Blob; k: number }[] = [];
    for (const b of blobs) {
      if (b.encoding === Encoding.SAME) continue;
      (isSimple(b) ? simple : others).push({ b, k: b.digest.readUIntBE(0, 6) });
    }
    simple.sort(byDigest);
    others.sort(byDigest);
    const n = simple.length;
    const digests = Buffer.allocUnsafe(n * 32);
    const offsets = new Float64Array(n);
    const storedSizes = new Uint32Array(n);
    const sizes = new Float64Array(n);
    const groupOffsets = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const { b } = simple[i];
      const c = b.chunks[0];
      b.digest.copy(digests, i * 32);
      offsets[i] = c.offset;
      storedSizes[i] = c.storedSize;
      sizes[i] = b.size;
      groupOffsets[i] = c.codec === Codec.GROUP ? (c.groupOffset as number) : -1;
    }
    return new StoredBlobs(digests, offsets, storedSizes, sizes, groupOffsets, others.map((x) => x.b));
  }

  get size(): number {
    return this.sizes.length + this.others.length;
  }

  find(digest: Buffer): Blob | undefined {
    let lo = 0;
    let hi = this.sizes.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.digests.compare(digest, 0, 32, mid * 32, mid * 32 + 32);
      if (c === 0) return this.simpleBlob(mid);
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    lo = 0;
    hi = this.others.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const c = Buffer.compare(this.others[mid].digest, digest);
      if (c === 0) return this.others[mid];
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  private groups?: Map<string, Chunk[]>;

  /** The members of the group coded against bases (PATCH blobs) whose frame is at `offset`, in group order. */
  groupMembers(offset: number, storedSize: number): Chunk[] {
    // PATCH blobs are never simple: all of them are in `others`
    this.groups ??= groupIndex(this.others);
    return groupMembersIn(this.groups, { offset, storedSize });
  }

  private simpleBlob(i: number): Blob {
    const digest = this.digests.subarray(i * 32, i * 32 + 32);
    const size = this.sizes[i];
    const g = this.groupOffsets[i];
    const chunk: Chunk = { offset: this.offsets[i], storedSize: this.storedSizes[i], storedDigest: NO_DIGEST, rawSize: size, rawDigest: digest, codec: g < 0 ? Codec.ZSTD : Codec.GROUP, baseDigest: NO_DIGEST, baseOffset: 0, baseSize: 0 };
    if (g >= 0) chunk.groupOffset = g;
    return { digest, size, encoding: Encoding.FULL, chunks: [chunk] };
  }
}

/**
 * Stored blobs of the files open chains hold, by file identity (size and
 * root digest, the sha256 of its index): a base image under several of its
 * updates is kept once. Weak: gone with the last chain holding it.
 */
const shared = new Map<string, WeakRef<StoredBlobs>>();
const sharedGone = new FinalizationRegistry<string>((key) => {
  if (shared.get(key)?.deref() === undefined) shared.delete(key);
});

/** A file's identity: its size and root digest (the sha256 of its index). */
function fileKey(r: CdimgReader): string {
  return `${r.fileSize}:${r.header.rootDigest.toString('hex')}`;
}

function storedBlobsOf(r: CdimgReader): StoredBlobs {
  const key = fileKey(r);
  const known = shared.get(key)?.deref();
  if (known) return known;
  const s = StoredBlobs.of(r.index.blobs);
  shared.set(key, new WeakRef(s));
  sharedGone.register(s, key);
  return s;
}

/**
 * The entries of the top files of open chains, by file identity. An update
 * mounted next to its base (the chain v1 → delta beside v1) decodes the
 * base's index again to get its tree; the entries it keeps of the base are
 * then swapped for the open chain's own objects of the same file (same
 * identity: the same index bytes, so the same entries at the same
 * positions), so the two mounts share them instead of holding two copies.
 * Weak: gone with the last chain holding them.
 */
const topEntries = new Map<string, WeakRef<readonly Entry[]>>();
const topEntriesGone = new FinalizationRegistry<string>((key) => {
  if (topEntries.get(key)?.deref() === undefined) topEntries.delete(key);
});

/** Swaps the entries of `entries` that come from a lower level of the chain for those open chains already hold. */
function shareEntries(readers: readonly CdimgReader[], entries: Entry[]): number {
  let swapped = 0;
  for (let l = readers.length - 2; l >= 0; l--) {
    const live = topEntries.get(fileKey(readers[l]))?.deref();
    const fresh = readers[l].index.entries;
    if (!live || live === fresh || live.length !== fresh.length) continue;
    const at = new Map<Entry, number>();
    fresh.forEach((e, i) => at.set(e, i));
    for (let i = 0; i < entries.length; i++) {
      const k = at.get(entries[i]);
      if (k !== undefined) {
        entries[i] = live[k];
        swapped++;
      }
    }
  }
  return swapped;
}

const versionsOf = (readers: readonly CdimgReader[]): number[] => readers.map((r) => r.index.formatVersion);

export class ChainIndex {
  private constructor(
    readonly paths: readonly string[],
    private readonly levels: readonly StoredBlobs[],
    /** The entries of the top file (the image the chain leads to), validated. */
    readonly top: { readonly entries: readonly Entry[] },
    /** The image id the chain leads to (sha256:…). */
    readonly imageId: string,
    /** The image the top file is a delta from (undefined for a full image). */
    readonly parentId: string | undefined,
    /** Format version of each file. */
    private readonly versions: readonly number[],
  ) {}

  /** Opens and checks the chain `paths` (full image first). */
  static async open(paths: readonly string[]): Promise<ChainIndex> {
    if (paths.length === 0) throw failedPrecondition('empty chain');
    let readers: CdimgReader[] = [];
    try {
      readers = await CdimgReader.openChain(paths);
      checkChain(readers);
      const top = readers[readers.length - 1];
      // A copy of the array (not of the entries): shareEntries changes it.
      const entries = top.index.entries.slice();
      const key = fileKey(top);
      const known = topEntries.get(key)?.deref();
      if (known && known.length === entries.length) {
        // The same top file is open already (the same image at another mountpoint).
        return new ChainIndex([...paths], readers.map(storedBlobsOf), { entries: known }, top.imageId, top.parentId, versionsOf(readers));
      }
      shareEntries(readers, entries);
      topEntries.set(key, new WeakRef(entries));
      topEntriesGone.register(entries, key);
      return new ChainIndex([...paths], readers.map(storedBlobsOf), { entries }, top.imageId, top.parentId, versionsOf(readers));
    } finally {
      await Promise.all(readers.map((r) => r.close()));
    }
  }

  /** The top level. */
  get topLevel(): number {
    return this.paths.length - 1;
  }

  /** Blobs stored per level (SAME ones are not kept). */
  get storedBlobs(): number[] {
    return this.levels.map((l) => l.size);
  }

  /**
   * Where content `hex` (sha256 hex) is stored, looking from `fromLevel`
   * down (SAME entries defer to the levels below), as Chain.locate does.
   */
  /** The members of the group coded against bases that the content at `loc` belongs to (none for other contents). */
  groupMembers(loc: Location): Chunk[] {
    const c = loc.blob.chunks[0];
    if (loc.blob.encoding !== Encoding.PATCH || loc.blob.chunks.length !== 1 || c.codec !== Codec.GROUP) return [];
    return this.levels[loc.level]?.groupMembers(c.offset, c.storedSize) ?? [];
  }

  locate(hex: string, fromLevel = this.topLevel): Location | undefined {
    const digest = Buffer.from(hex, 'hex');
    if (digest.length !== 32) return undefined;
    for (let l = Math.min(fromLevel, this.topLevel); l >= 0; l--) {
      const b = this.levels[l].find(digest);
      if (b) return { file: this.paths[l], level: l, blob: b, formatVersion: this.versions[l] };
    }
    return undefined;
  }
}
