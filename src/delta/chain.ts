/**
 * Materialise contents by digest through a chain of .cdimg files:
 * files[0] is a full image, files[i] a delta whose parent is files[i-1].
 * A content is looked up from the top: FULL → decompress; PATCH → apply each
 * chunk's patch to a region of its base content, resolved the same way (in
 * the same file first — merged deltas carry auxiliary bases — then in the
 * parent); SAME → the parent. Each chunk is decoded by its codec's row of the
 * registry (./codecs/registry.ts). Every chunk and every content is verified.
 * CPU-heavy: run it in worker threads (see ./tasks.ts).
 */
import { CdimgReader } from '../format/reader';
import { checkChain } from '../format/chain';
import { Blob, Chunk, Codec, Encoding } from '../format/types';
import { corrupt, failedPrecondition, notFound } from '../errors';
import { sha256 } from '../util/digest';
import { ByteLru } from '../util/lru';
import { codecByProto, decodeWith } from './codecs';
import { zstdPatch } from './codecs/zstd-patch';
import { GROUP_MAX_DICT, GroupCache, groupMember, groupRawSize } from '../format/group';

const MAX_DEPTH = 64;

export { checkChain };

async function openEach(paths: string[], opts: { reuse?: boolean; contentsOnly?: boolean }): Promise<CdimgReader[]> {
  const readers: CdimgReader[] = [];
  try {
    // each file on the indexes of those below it: a version 5 delta's base prefixes are resolved against them
    for (const p of paths) readers.push(await CdimgReader.open(p, { ...opts, below: readers.map((r) => r.index) }));
    return readers;
  } catch (e) {
    await Promise.all(readers.map((r) => r.close()));
    throw e;
  }
}

export class Chain {
  /** Materialised contents (bases used by several patches). */
  private readonly cache = new ByteLru(256 * 1024 * 1024, 64 * 1024 * 1024);
  /** Groups coded against bases, decoded (each member checked when taken). */
  private readonly groups = new GroupCache(16 * 1024 * 1024);
  private constructor(readonly readers: CdimgReader[]) {}

  /**
   * Open and check a chain (full image first); `reuse`: see CdimgReader.open
   * (read-only users only). `contentsOnly`: each file's stored contents
   * without the trees, for worker threads building contents of a chain the
   * main thread opened whole (a 150,000-entry tree costs ~200 MB and 2 s to
   * decode and check, per thread).
   */
  static async open(paths: string[], opts: { reuse?: boolean; contentsOnly?: boolean } = {}): Promise<Chain> {
    const readers = opts.contentsOnly ? await openEach(paths, opts) : await CdimgReader.openChain(paths, opts);
    try {
      checkChain(readers);
      return new Chain(readers);
    } catch (e) {
      await Promise.all(readers.map((r) => r.close()));
      throw e;
    }
  }

  /** A chain whose bottom may be a delta (merge reads deltas without their base). */
  static async openPartial(paths: string[]): Promise<Chain> {
    const readers: CdimgReader[] = [];
    try {
      // each delta gets its tree from the one below when that one has its own (a version 2 delta at the bottom has none)
      for (const p of paths) {
        const below = readers.at(-1);
        readers.push(await CdimgReader.open(p, { parent: below?.hasTree ? below : undefined, below: readers.map((r) => r.index) }));
      }
      for (let i = 1; i < readers.length; i++) {
        if (readers[i].parentId !== readers[i - 1].imageId) {
          throw failedPrecondition(`${readers[i].path} does not follow ${readers[i - 1].path}: it needs parent ${readers[i].parentId}, that image is ${readers[i - 1].imageId}`);
        }
      }
      return new Chain(readers);
    } catch (e) {
      await Promise.all(readers.map((r) => r.close()));
      throw e;
    }
  }

  get top(): CdimgReader {
    return this.readers[this.readers.length - 1];
  }

  /** Where a content is stored, from `level` down: the file level and its blob (FULL or PATCH). */
  locate(digest: Buffer, level = this.readers.length - 1): { level: number; blob: Blob } | undefined {
    for (let l = level; l >= 0; l--) {
      const b = this.readers[l].blob(digest);
      if (b && b.encoding !== Encoding.SAME) return { level: l, blob: b };
    }
    return undefined;
  }

  /** The whole content, verified. */
  async content(digest: Buffer, level = this.readers.length - 1, depth = 0): Promise<Buffer> {
    const key = `${level}:${digest.toString('hex')}`;
    const hit = this.cache.get(key) ?? this.cache.get(digest.toString('hex'));
    if (hit) return hit;
    if (depth > MAX_DEPTH) throw corrupt(`patch chain deeper than ${MAX_DEPTH} (cycle?) at sha256:${digest.toString('hex')}`);
    const where = this.locate(digest, level);
    if (!where) throw notFound(`content sha256:${digest.toString('hex')} is not in this chain (missing base image?)`);
    const parts: Buffer[] = [];
    for (const c of where.blob.chunks) parts.push(await this.chunk(where.level, c, depth));
    const data = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    if (data.length !== where.blob.size || !sha256(data).equals(where.blob.digest)) {
      throw corrupt(`${this.readers[where.level].path}: content sha256:${digest.toString('hex')} does not match its digest after decoding`);
    }
    this.cache.set(digest.toString('hex'), data);
    return data;
  }

  /** The size of a content of the chain (NOT_FOUND when no file from `level` down stores it). */
  sizeOf(digest: Buffer, level = this.readers.length - 1): number {
    const where = this.locate(digest, level);
    if (!where) throw notFound(`content sha256:${digest.toString('hex')} is not in this chain (missing base image?)`);
    return where.blob.size;
  }

  /**
   * Bytes [start, end) of a content: only the chunks they overlap are built
   * (each verified), and a patch chunk's base likewise only over its base
   * region, so a window of a 1 GiB file costs about the window, not the file.
   * The whole content goes through content() (verified whole, cached).
   */
  async range(digest: Buffer, start: number, end: number, level = this.readers.length - 1, depth = 0): Promise<Buffer> {
    if (depth > MAX_DEPTH) throw corrupt(`patch chain deeper than ${MAX_DEPTH} (cycle?) at sha256:${digest.toString('hex')}`);
    const where = this.locate(digest, level);
    if (!where) throw notFound(`content sha256:${digest.toString('hex')} is not in this chain (missing base image?)`);
    const size = where.blob.size;
    if (!(start >= 0 && start <= end && end <= size)) throw corrupt(`${this.readers[where.level].path}: region ${start}..${end} outside content sha256:${digest.toString('hex')} (${size} bytes)`);
    if ((start === 0 && end === size) || where.blob.chunks.length === 1) return (await this.content(digest, level, depth)).subarray(start, end);
    const parts: Buffer[] = [];
    let pos = 0;
    for (const c of where.blob.chunks) {
      const next = pos + c.rawSize;
      if (next > start && pos < end) {
        const raw = await this.chunk(where.level, c, depth);
        parts.push(raw.subarray(Math.max(0, start - pos), Math.min(c.rawSize, end - pos)));
      }
      pos = next;
      if (pos >= end) break;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  /** One chunk of a content stored at `level`, verified. */
  async chunk(level: number, c: Chunk, depth = 0): Promise<Buffer> {
    const r = this.readers[level];
    if (c.codec === Codec.GROUP) {
      // a member of a solid group: decoded and checked by the reader (its group kept for the neighbours),
      // or, in a group coded against bases (its blob PATCH), here against its members' base regions
      if (r.blob(c.rawDigest)?.encoding !== Encoding.PATCH) return r.readFullChunk(c);
      return this.groupMemberAgainstBases(level, c, depth);
    }
    const stored = await r.readStored(c);
    const codec = codecByProto(c.codec);
    // A base is looked up in the same file first (auxiliary bases of merged deltas), then below.
    const needsBase = codec.base === 'required' || (codec.base === 'optional' && c.baseDigest.length > 0);
    const raw = decodeWith(codec, stored, needsBase ? await this.baseRegion(level, c, depth) : null, c.rawSize);
    if (!sha256(raw).equals(c.rawDigest)) throw corrupt(`${r.path}: chunk at ${c.offset} decodes to the wrong content`);
    return raw;
  }

  /** Member `c` of a group coded against the base regions of its members (format/group.ts), verified. */
  private async groupMemberAgainstBases(level: number, c: Chunk, depth: number): Promise<Buffer> {
    const r = this.readers[level];
    const key = `${level}:${c.offset}:${c.storedSize}`;
    let group = this.groups.get(key);
    if (!group) {
      const what = `${r.path}: group at ${c.offset}`;
      const stored = await r.readStored(c);
      const size = groupRawSize(stored, what);
      const parts: Buffer[] = [];
      let dict = 0;
      for (const m of r.groupMembers(c)) {
        if (m.baseDigest.length === 0) continue;
        dict += m.baseSize;
        if (dict > GROUP_MAX_DICT) throw corrupt(`${what}: its members' bases exceed ${GROUP_MAX_DICT} bytes`);
        parts.push(await this.baseRegion(level, m, depth));
      }
      group = decodeWith(zstdPatch, stored, Buffer.concat(parts), size);
      this.groups.set(key, group);
    }
    return Buffer.from(groupMember(group, c, r.path));
  }

  /** The base region a patch chunk stored at `level` applies to. */
  private async baseRegion(level: number, c: Chunk, depth: number): Promise<Buffer> {
    const size = this.sizeOf(c.baseDigest, level);
    if (c.baseOffset + c.baseSize > size) throw corrupt(`${this.readers[level].path}: patch base region ${c.baseOffset}+${c.baseSize} outside its base (${size} bytes)`);
    return this.range(c.baseDigest, c.baseOffset, c.baseOffset + c.baseSize, level, depth + 1);
  }

  async close(): Promise<void> {
    await Promise.all(this.readers.map((r) => r.close()));
  }
}
