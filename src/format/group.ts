/**
 * Solid groups of small contents (format version 3; issues 14 and 18).
 *
 * A run of small contents in first-use order is stored as ONE zstd frame of
 * their bytes back to back; each member's chunk (Codec.GROUP) names that frame
 * (the same offset and stored size) and where it starts in the frame's content
 * (`groupOffset`). Repetition across files is paid once: on the 64k-file
 * node_modules tree of the scale bench, its small files take 0.55x of what a
 * zstd -3 frame per file takes; on the synthetic 150k-file image 0.83x (see
 * GROUP_TARGET_RAW).
 *
 * A reader decodes a group once (bounded: GROUP_MAX_RAW) and takes members out
 * of it, each checked against its own digest; the decoded group is kept a while
 * (GroupCache) because the next member asked for is usually in the same group.
 * The layout is a function of the contents in order alone (planGroups), so
 * `cdimg patch` and `convert` write the same bytes for the same tree.
 */
import { corrupt } from '../errors';
import { sha256 } from '../util/digest';
import { ByteLru } from '../util/lru';
import { type Blob, type Chunk, Codec, Encoding, GROUP_MAX_RAW, GROUP_MAX_STORED } from './types';
import { zstdDeclaredSize, zstdDecompressChecked, zstdFrame } from './zstd';

/**
 * Contents up to this size are grouped (32 KiB), and a group holds at most
 * GROUP_TARGET_RAW bytes (64 KiB). Measured on the scale bench's trees, as the
 * stored size of their small contents against a zstd -3 frame per content
 * (node_modules: 63,463 small files, 94 MB; synthetic: 15,000 text files of
 * 0.5-6 KiB), and the cold read of one member (its group read and decoded by
 * the serving thread: 128 KiB groups took a cold random read of a small file
 * from 0.93 to 1.97 ms, 0.33 ms of it decoding):
 *
 * | members up to / group up to | node_modules | synthetic |
 * |---|---|---|
 * | 64 KiB / 128 KiB | 0.515x | 0.808x |
 * | 32 KiB / 64 KiB | 0.550x | 0.826x |
 * | 16 KiB / 32 KiB | 0.590x | 0.856x |
 *
 * 64 KiB groups keep most of the gain for half the decode of a cold read.
 */
export const GROUP_SMALL_MAX = 32 * 1024;
export const GROUP_TARGET_RAW = 64 * 1024;

/**
 * The groups of contents of sizes `sizes`, in this order: for each content its
 * group number, or -1 when it is stored alone. A group is a run of consecutive
 * non-empty contents of at most GROUP_SMALL_MAX bytes (and one chunk of
 * `chunkSize`) holding at most GROUP_TARGET_RAW bytes, closed before the
 * content that would take it past that or when a content that is not grouped
 * comes; a run of one content is not a group.
 */
export function planGroups(sizes: ArrayLike<number>, chunkSize = Number.POSITIVE_INFINITY): Int32Array {
  const small = Math.min(GROUP_SMALL_MAX, chunkSize);
  const out = new Int32Array(sizes.length).fill(-1);
  let groups = 0;
  let start = -1;
  let raw = 0;
  const close = (end: number): void => {
    if (start >= 0 && end - start >= 2) {
      for (let i = start; i < end; i++) out[i] = groups;
      groups++;
    }
    start = -1;
    raw = 0;
  };
  for (let i = 0; i < sizes.length; i++) {
    const s = sizes[i];
    if (s <= 0 || s > small) {
      close(i);
      continue;
    }
    if (start >= 0 && raw + s > GROUP_TARGET_RAW) close(i);
    if (start < 0) start = i;
    raw += s;
  }
  close(sizes.length);
  return out;
}

/**
 * Bound on the dictionary of a group coded against bases (the concatenation of
 * its members' base regions): 16 MiB, 8x what the differ makes (DELTA_GROUP_RAW
 * of members against bases of about their size).
 */
export const GROUP_MAX_DICT = 16 * 1024 * 1024;

/** The content size a group's frame declares, bounded (CORRUPT otherwise), before anything is decoded. */
export function groupRawSize(stored: Buffer, what: string): number {
  if (stored.length > GROUP_MAX_STORED) throw corrupt(`${what}: a group frame of ${stored.length} bytes, over the bound`);
  const size = zstdDeclaredSize(stored);
  if (size === null || size > GROUP_MAX_RAW) throw corrupt(`${what}: not a group frame (${size === null ? 'no declared size' : `${size} bytes declared, over the bound`})`);
  return size;
}

/** The stored bytes of `blobs`' chunks, a group's frame counted once (not once per member). */
export function storedBytesOf(blobs: Iterable<{ chunks: readonly { offset: number; storedSize: number; codec: number }[] }>): number {
  let n = 0;
  const frames = new Set<number>();
  for (const b of blobs) {
    for (const c of b.chunks) {
      if (c.codec === Codec.GROUP) {
        if (frames.has(c.offset)) continue;
        frames.add(c.offset);
      }
      n += c.storedSize;
    }
  }
  return n;
}

/** The key of a group's frame in a groupIndex: its offset and stored size. */
export function groupFrameKey(frame: Pick<Chunk, 'offset' | 'storedSize'>): string {
  return `${frame.offset}:${frame.storedSize}`;
}

/**
 * The members of the solid groups coded against bases among `blobs`: each
 * PATCH blob whose one chunk is a group member (Codec.GROUP; validateIndex
 * refuses a group member that is not its blob's one chunk), by the frame they
 * share (groupFrameKey: same offset and stored size), each group's members in
 * group order (by groupOffset; members at the same offset keep `blobs`' order).
 * Look members up with groupMembersIn.
 */
export function groupIndex(blobs: Iterable<Blob>): Map<string, Chunk[]> {
  const m = new Map<string, Chunk[]>();
  for (const b of blobs) {
    const c = b.chunks[0];
    if (b.encoding !== Encoding.PATCH || b.chunks.length !== 1 || c.codec !== Codec.GROUP) continue;
    const key = groupFrameKey(c);
    const list = m.get(key);
    if (list) list.push(c);
    else m.set(key, [c]);
  }
  for (const list of m.values()) list.sort((x, y) => (x.groupOffset ?? 0) - (y.groupOffset ?? 0));
  return m;
}

/** The members (in group order) of the group whose frame is `frame`, from a groupIndex; none when no group coded against bases has that frame. */
export function groupMembersIn(index: ReadonlyMap<string, Chunk[]>, frame: Pick<Chunk, 'offset' | 'storedSize'>): Chunk[] {
  return index.get(groupFrameKey(frame)) ?? [];
}

/** The stored frame of a group of `members` (in group order) at zstd `level`. */
export function encodeGroup(members: readonly Uint8Array[], level: number): Buffer {
  return zstdFrame(Buffer.concat(members), level);
}

/** The decoded content of a group's frame, bounded by GROUP_MAX_RAW before anything is allocated. */
export function decodeGroup(stored: Buffer, what: string): Buffer {
  return zstdDecompressChecked(stored, groupRawSize(stored, what), what);
}

/** What a member of a group is, as a chunk says it. */
export interface GroupMemberRef {
  groupOffset?: number;
  rawSize: number;
  rawDigest: Buffer;
}

/** Member `c` of decoded group `group`, checked against its digest (CORRUPT otherwise). */
export function groupMember(group: Buffer, c: GroupMemberRef, what: string): Buffer {
  const at = c.groupOffset ?? -1;
  if (!(at >= 0 && at + c.rawSize <= group.length)) throw corrupt(`${what}: group member ${at}+${c.rawSize} outside its group (${group.length} bytes)`);
  const raw = group.subarray(at, at + c.rawSize);
  if (!sha256(raw).equals(c.rawDigest)) throw corrupt(`${what}: group member at ${at} decodes to the wrong content`);
  return raw;
}

/**
 * Decoded groups kept by key (a file and the group's offset), least recently
 * used dropped first past `maxBytes`. Bytes here are decoded, not verified:
 * each member is checked when it is taken (groupMember).
 */
export class GroupCache {
  private readonly lru: ByteLru;
  private readonly decoding = new Map<string, Promise<Buffer>>();
  constructor(maxBytes = 8 * 1024 * 1024) {
    this.lru = new ByteLru(maxBytes);
  }

  get(key: string): Buffer | undefined {
    return this.lru.get(key);
  }

  set(key: string, v: Buffer): void {
    this.lru.set(key, v);
  }

  /** The decoded group under `key`, decoding `read()`'s frame when it is not held. */
  async group(key: string, read: () => Promise<Buffer>, what: string): Promise<Buffer> {
    const hit = this.get(key);
    if (hit) return hit;
    let p = this.decoding.get(key);
    if (!p) {
      p = read()
        .then((stored) => {
          const g = decodeGroup(stored, what);
          this.set(key, g);
          return g;
        })
        .finally(() => this.decoding.delete(key));
      this.decoding.set(key, p);
    }
    return p;
  }

  clear(): void {
    this.lru.clear();
  }
}
