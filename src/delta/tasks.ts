/**
 * Worker-thread tasks of delta (diff, merge by rediff, patch): they open
 * .cdimg chains themselves (cached per worker), so only digests and results
 * cross threads. Run by the worker pool (src/workers/pool.ts), which loads
 * this file in its threads by path on the first delta task: threads that
 * only compress never load the delta modules.
 */
import { createHash } from 'node:crypto';
import { compressContents, CompressResult, StoredChunkInfo } from '../convert/tasks';
import { Codec } from '../format/types';
import { promises as fsp } from 'node:fs';
import { corrupt } from '../errors';
import { readZstdChunk } from '../format/reader';
import { zstdFrame } from '../format/zstd';
import { decodeGroup, encodeGroup } from '../format/group';
import { Chain } from './chain';
import { applyPatch, BSDIFF_MAX_INPUT, chunkBaseRange, CodecChoice, contentKind, ContentKind, encodeChunk, encodePatch, LevelPreset, MIN_PATCH_TARGET } from './codecs';
import { mapLimit } from '../util/ordered';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const chains = new Map<string, Promise<Chain>>();

function chainOf(paths: string[]): Promise<Chain> {
  const key = paths.join('\0');
  let c = chains.get(key);
  if (!c) {
    // the main thread opened and checked these chains whole: a worker needs their stored contents only
    c = Chain.open(paths, { contentsOnly: true });
    c.catch(() => chains.delete(key));
    chains.set(key, c);
    // Keep a few chains open per worker; close the oldest.
    if (chains.size > 8) {
      const [oldKey, old] = chains.entries().next().value as [string, Promise<Chain>];
      chains.delete(oldKey);
      old.then((x) => x.close()).catch(() => undefined);
    }
  }
  return c;
}

export interface DeltaChunkInfo extends StoredChunkInfo {
  codec: Codec;
  baseOffset: number;
  baseSize: number;
  /** GROUP chunks: the member's offset in its group (every member's stored bytes are the one frame) */
  groupOffset?: number;
  /** false when the chunk decodes without its base (full frames, self-contained gzip members) */
  usesBase: boolean;
}

export interface DiffContentArgs {
  /** chain of the old image (full image first) */
  oldChain: string[];
  /** chain of the new image */
  newChain: string[];
  /** sha256 hex of the new content */
  target: string;
  /** sha256 hex of the base content in the old image, '' for none */
  base: string;
  codec: CodecChoice;
  level: LevelPreset;
  chunkSize: number;
  /**
   * Only the units in [start, end) of the new content (multiples of
   * chunkSize; a large content is coded in parts by several threads at once).
   * Default: the whole content.
   */
  start?: number;
  end?: number;
  /**
   * The target's and the base's records when both files are full images and
   * the contents plain zstd chunks (`cdimg diff`): the thread reads those
   * chunks directly instead of decoding both indexes (~200 MB and 2 s per
   * thread for a 150,000-entry image).
   */
  targetBlob?: FullBlobArg;
  baseBlob?: FullBlobArg;
}

/** A FULL content of a full image as a task argument: its zstd chunks. */
export interface FullBlobArg {
  size: number;
  chunks: { offset: number; storedSize: number; rawSize: number; rawDigest: string; codec?: number; groupOffset?: number }[];
}

const NO_DIGEST = Buffer.alloc(0);

/**
 * The files one task (or one batch of tasks) reads, each opened once and closed when it
 * ends: a 256 MiB content read chunk by chunk opened its file 2 x 64 + 64 times, and the
 * small contents of a batch share their two files (open and close were a third of a
 * thread's time on issue 18's 1,500 edited small files, each a libuv round trip).
 */
class Files {
  private readonly handles = new Map<string, Promise<fsp.FileHandle>>();
  get(path: string): Promise<fsp.FileHandle> {
    let h = this.handles.get(path);
    if (!h) {
      h = fsp.open(path, 'r');
      this.handles.set(path, h);
    }
    return h;
  }
  async close(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(all.map((h) => h.then((fh) => fh.close()).catch(() => undefined)));
  }
}

/**
 * A FULL content read straight from its file, chunk by chunk, each chunk checked against
 * its digest when it is decoded. The differ walks a content forward (units in order, each
 * with a base window that moves forward too), so the chunks a range used are kept until a
 * later range starts past them: a 4 MiB unit patched against an 8 MiB base window decoded
 * three 4 MiB base chunks for each unit, the same chunk three times over (issue 18: half of
 * a thread's zstd decoding and sha256 on a 256 MiB text file).
 */
class FullBlob {
  /** raw offset of each chunk */
  private readonly starts: number[] = [];
  /** decoded and verified chunks (index → bytes) that the walk may still use */
  private readonly kept = new Map<number, Buffer>();
  constructor(
    private readonly path: string,
    private readonly blob: FullBlobArg,
    private readonly digest: string,
    private readonly files: Files,
    /** another content's blob (the base) whose kept chunks may hold this one's bytes */
    private readonly donor?: FullBlob,
  ) {
    let pos = 0;
    for (const c of blob.chunks) {
      this.starts.push(pos);
      pos += c.rawSize;
    }
  }
  sizeOf(): number {
    return this.blob.size;
  }
  async content(): Promise<Buffer> {
    const data = await this.range(0, this.blob.size);
    const only = this.blob.chunks.length === 1 ? this.blob.chunks[0] : undefined;
    // one chunk whose digest is the content's: chunk() checked these bytes against it already
    if (only && only.rawDigest === this.digest && only.rawSize === data.length) return data;
    if (sha(data) !== this.digest) throw corrupt(`${this.path}: content sha256:${this.digest} does not match its digest after decoding`);
    return data;
  }
  /** The sha256 (hex) of [start, end) when it is exactly one chunk: its digest, which chunk() checks. */
  digestOf(start: number, end: number): string | undefined {
    const i = this.indexAt(start);
    const c = i < 0 ? undefined : this.blob.chunks[i];
    return c && c.rawSize === end - start ? c.rawDigest : undefined;
  }
  /** A kept chunk of these exact bytes (same digest and size), if any. */
  keptWith(rawDigest: string, rawSize: number): Buffer | undefined {
    for (const [i, raw] of this.kept) {
      const c = this.blob.chunks[i];
      if (c.rawDigest === rawDigest && c.rawSize === rawSize) return raw;
    }
    return undefined;
  }
  async range(start: number, end: number): Promise<Buffer> {
    // the walk only goes forward: chunks wholly before this range are done with
    for (const i of this.kept.keys()) if (this.starts[i] + this.blob.chunks[i].rawSize <= start) this.kept.delete(i);
    const parts: Buffer[] = [];
    for (let i = Math.max(0, this.indexAt(start)); i < this.blob.chunks.length && this.starts[i] < end; i++) {
      const pos = this.starts[i];
      const c = this.blob.chunks[i];
      if (pos + c.rawSize <= start) continue;
      const raw = await this.chunk(i);
      parts.push(raw.subarray(Math.max(0, start - pos), Math.min(c.rawSize, end - pos)));
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
  /** Index of the chunk holding raw offset `pos` (-1 before the first). */
  private indexAt(pos: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let at = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid] <= pos) {
        at = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return at;
  }
  private async chunk(i: number): Promise<Buffer> {
    let raw = this.kept.get(i);
    if (raw) return raw;
    const c = this.blob.chunks[i];
    // A chunk whose digest and size are those of a base chunk already decoded here holds the
    // same bytes: that chunk was checked against the same sha256 when it was decoded, which
    // verifies these bytes as decoding this chunk would (issue 18: 27 of the 64 chunks of the
    // edited 256 MiB text file were not decoded a second time).
    raw = this.donor?.keptWith(c.rawDigest, c.rawSize);
    if (!raw) {
      // version 2 zstd chunks carry no stored digest: the decoded bytes are checked
      raw = await readZstdChunk(await this.files.get(this.path), this.path, { ...c, storedDigest: NO_DIGEST, rawDigest: Buffer.from(c.rawDigest, 'hex') });
    }
    this.kept.set(i, raw);
    return raw;
  }
}

/** What diffContent reads a content through: a chain, or a full image's chunks given by the main thread. */
interface ContentSource {
  sizeOf(): number;
  content(): Promise<Buffer>;
  range(start: number, end: number): Promise<Buffer>;
  /** The checked sha256 (hex) of [start, end), when the source knows it without hashing. */
  digestOf?(start: number, end: number): string | undefined;
}

async function sourceOf(paths: string[], hex: string, blob: FullBlobArg | undefined, files: Files, donor?: ContentSource): Promise<ContentSource> {
  if (blob) return new FullBlob(paths[paths.length - 1], blob, hex, files, donor instanceof FullBlob ? donor : undefined);
  const chain = await chainOf(paths);
  const d = Buffer.from(hex, 'hex');
  return { sizeOf: () => chain.sizeOf(d), content: () => chain.content(d), range: (s, e) => chain.range(d, s, e) };
}

/**
 * Kinds of contents this thread has seen, by the digest of their first chunk when that chunk
 * holds their first 64 KiB (the bytes contentKind reads): each part of a large content needs
 * the kind, and decoding its first chunk again for each part was 1 of every 17 chunk decodes.
 */
const kinds = new Map<string, ContentKind>();

async function kindOf(a: DiffContentArgs, targetSize: number, rangeOf: (s: number, e: number) => Promise<Buffer>): Promise<ContentKind> {
  const head = Math.min(targetSize, 65536);
  const first = a.targetBlob?.chunks[0];
  const key = first && first.rawSize >= head ? first.rawDigest : undefined;
  const known = key ? kinds.get(key) : undefined;
  if (known) return known;
  const kind = contentKind(await rangeOf(0, head));
  if (key) {
    if (kinds.size >= 256) kinds.clear();
    kinds.set(key, kind);
  }
  return kind;
}

/**
 * Encode one new content against its base (or alone): per unit the smallest of
 * full and patches, verified. Contents up to bsdiff's input limit are built
 * whole; larger ones are read unit by unit, each with only the window of the
 * base it is coded against (Chain.range), so memory stays a few chunks.
 */
export async function diffContent(a: DiffContentArgs): Promise<{ stored: Uint8Array; chunks: DeltaChunkInfo[] }> {
  const files = new Files();
  try {
    const r = await diffOne(a, files);
    return { stored: Buffer.concat(r.frames), chunks: r.chunks };
  } finally {
    await files.close();
  }
}

/** Arguments of {@link diffContents}: several small contents coded in one task. */
export interface DiffContentsArgs {
  items: DiffContentArgs[];
}

/**
 * Several contents in one task (the small ones of `cdimg diff`): their stored bytes back to
 * back in item order, and each item's chunks. One task and one reply instead of one per
 * content, and each file opened once: 1,500 edited small files took 1.7 s of two threads
 * half idle as single tasks (issue 18). A few items are in flight at once so that one
 * item's reads overlap another's coding.
 */
export async function diffContents(a: DiffContentsArgs): Promise<{ stored: Uint8Array; items: DeltaChunkInfo[][] }> {
  const files = new Files();
  try {
    const done = await mapLimit(a.items, 4, (item) => diffOne(item, files));
    return { stored: Buffer.concat(done.flatMap((r) => r.frames)), items: done.map((r) => r.chunks) };
  } finally {
    await files.close();
  }
}

/** A content already read (and checked) as a source. */
function inMemory(b: Buffer): ContentSource {
  return { sizeOf: () => b.length, content: async () => b, range: async (s, e) => b.subarray(s, e) };
}

/** One content coded (diffContent); `loaded`: its base and itself, already read and checked (diffGroup's members). */
async function diffOne(a: DiffContentArgs, files: Files, loaded?: { base: Buffer | undefined; target: Buffer }): Promise<{ frames: Buffer[]; chunks: DeltaChunkInfo[] }> {
  const oldSource = loaded ? (loaded.base ? inMemory(loaded.base) : undefined) : a.base ? await sourceOf(a.oldChain, a.base, a.baseBlob, files) : undefined;
  const newSource = loaded ? inMemory(loaded.target) : await sourceOf(a.newChain, a.target, a.targetBlob, files, oldSource);
  const targetSize = newSource.sizeOf();
  const baseSize = oldSource ? oldSource.sizeOf() : 0;
  // Whole contents up to bsdiff's input limit are one unit (cutting a binary loses matches across the cut);
  // larger ones go in chunks, each against a window of the base around the same relative offset.
  const whole = baseSize > 0 && targetSize <= BSDIFF_MAX_INPUT;
  const unit = whole ? Math.max(targetSize, 1) : a.chunkSize;
  const small = targetSize <= unit;
  const start = small ? 0 : (a.start ?? 0);
  const stop = small ? targetSize : Math.min(a.end ?? targetSize, targetSize);
  if (start % unit !== 0 || start >= Math.max(stop, 1)) throw new Error(`part ${start}..${stop} of a content is not a whole number of units`);
  // the base first: chunks of the target equal to chunks of the base are then not decoded (FullBlob)
  const base = oldSource && (whole || baseSize <= a.chunkSize) ? await oldSource.content() : undefined;
  const target = small ? await newSource.content() : undefined;
  const rangeOf = async (pos: number, end: number): Promise<Buffer> => (target ? target.subarray(pos, end) : newSource.range(pos, end));
  const baseOf = async (start: number, end: number): Promise<Buffer> => (base ? base.subarray(start, end) : oldSource ? oldSource.range(start, end) : Buffer.alloc(0));
  const kind = baseSize ? await kindOf(a, targetSize, rangeOf) : undefined;
  const frames: Buffer[] = [];
  const chunks: DeltaChunkInfo[] = [];
  // read unit by unit, the content is checked whole here (content() checks the ones it builds whole)
  const whole256 = target || start > 0 || stop < targetSize ? undefined : createHash('sha256');
  let pos = start;
  do {
    const len = Math.min(pos + unit, stop) - pos;
    let bo = 0;
    let bs = 0;
    if (baseSize) {
      if (whole && baseSize <= BSDIFF_MAX_INPUT) bs = baseSize;
      else {
        const r = chunkBaseRange(baseSize, targetSize, pos, len);
        bo = r.start;
        bs = r.end - r.start;
      }
    }
    // the base window first: a unit whose chunk equals a base chunk in it is then not decoded (FullBlob)
    const region = await baseOf(bo, bo + bs);
    const raw = await rangeOf(pos, pos + len);
    whole256?.update(raw);
    // the smallest of the codecs (the registry, src/delta/codecs); on a whole content also the
    // wrapper codecs (.gz files: their decompressed content, when the file rebuilds byte for byte)
    const { codec, data, usesBase } = encodeChunk(region, raw, { codec: a.codec, level: a.level, kind }, whole || (!baseSize && raw.length === targetSize));
    frames.push(data);
    chunks.push({
      storedSize: data.length,
      storedDigest: sha(data),
      rawSize: raw.length,
      // the whole content: its digest is known (the chain verified it when it built the content);
      // a unit that is one stored chunk: that chunk's digest, checked when it was decoded
      rawDigest: raw.length === targetSize ? a.target : (newSource.digestOf?.(pos, pos + raw.length) ?? sha(raw)),
      codec,
      baseOffset: usesBase ? bo : 0,
      baseSize: usesBase ? bs : 0,
      usesBase,
    });
    pos += raw.length;
  } while (pos < stop);
  if (whole256 && whole256.digest('hex') !== a.target) throw corrupt(`content sha256:${a.target} does not match its digest after decoding`);
  return { frames, chunks };
}

/**
 * Load this module and the codecs' zstd in a thread before its first real task (`cdimg diff`
 * sends one per thread while it reads the indexes): ~0.1 s of module loading and first calls
 * that the first, longest task of each thread paid (issue 18).
 */
export function warm(_: Record<string, never>): void {
  const t = Buffer.alloc(MIN_PATCH_TARGET, 0x61);
  encodeChunk(t, t, { codec: 'auto', level: 'default', kind: 'text' }, false);
  sha(t);
}

export interface MaterializeArgs {
  chain: string[];
  digest: string;
  level: number;
  chunkSize: number;
}

/** Build a content through its chain and store it as full zstd chunks (as convert does). */
export async function materializeFull(a: MaterializeArgs): Promise<CompressResult> {
  const data = await (await chainOf(a.chain)).content(Buffer.from(a.digest, 'hex'));
  return compressContents({ items: [{ data, size: data.length, digest: a.digest }], level: a.level, chunkSize: a.chunkSize });
}

export interface MaterializeGroupArgs {
  chain: string[];
  /** sha256 hex of the members, in group order */
  digests: string[];
  level: number;
}

/** Build the members of a solid group through their chain and encode the group (as convert does: format/group.ts). */
export async function materializeGroup(a: MaterializeGroupArgs): Promise<{ frame: Uint8Array }> {
  const chain = await chainOf(a.chain);
  const members: Buffer[] = [];
  for (const d of a.digests) members.push(await chain.content(Buffer.from(d, 'hex')));
  return { frame: encodeGroup(members, a.level) };
}

/**
 * zstd level of a group of small contents coded together in a delta, per preset: the
 * members are small (a group holds at most DELTA_GROUP_RAW of them, src/delta/diff.ts),
 * so the strongest level costs little; `fast` stays fast.
 */
export const GROUP_LEVELS: Readonly<Record<LevelPreset, number>> = Object.freeze({ fast: 3, default: 19, best: 19 });

/**
 * zstd's searchLog for a group coded against its members' bases (level 19's own is 6 here: 64
 * candidates per position in a binary tree of the bases and the group, ~0.35 s per MiB of group).
 * Most of a group is long matches against its bases, which the first candidates find. On issue
 * 18's node_modules update (four groups, 8.7 MB against 8.7 MB of bases; `cdimg diff` medians of 3
 * runs, 2 cores): 6 gave a 53,098-byte delta in 4.3 s, 2 55,259 bytes in 3.3 s, 1 56,785 bytes in
 * 3.2 s. On the delta bench's postgres pair (.mo catalogues of twelve locales, LLVM bitcode)
 * searchLog 2 cost 0.65 % of the delta (4,444 -> 4,473 KiB), 1 cost 1.1 % (4,494 KiB).
 */
export const GROUP_SEARCH_LOG = 2;

/**
 * A group's frame is not coded when its members coded alone take less than this fraction of
 * their level-1 zstd-patches (each against its own base; a level-1 frame without one): such
 * members are ones other codecs take far below any zstd stream (executables by bsdiff, .gz
 * files as their decompressed text, LLVM bitcode), and a group, one zstd stream, then never
 * came near them. On the delta bench's pairs and the scale bench's node_modules update (26
 * groups): the 7 groups under 0.5 lost by 1.5-46x (alone at 0.02-0.49x the level-1 patches;
 * postgresql-15's 217 .gz man pages, its bitcode, libssl's and nginx's executables), every
 * group kept had its members alone at 0.55x or more; skipping those frames took 2.7 s of CPU
 * (8 %) off postgresql-15's diff with the same delta, byte for byte (CODECS.md).
 */
export const GROUP_MIN_ALONE_SHARE = 0.5;

/**
 * Whether diffGroup codes a group's frame: always at `best`, else unless its members alone are
 * under GROUP_MIN_ALONE_SHARE x their level-1 patches (`levelOne`, computed only then).
 *
 * Tried and removed (session 18): also skipping the frame when the group's own level-1 patch is
 * over 1.1x its members' separated postgresql-15's LLVM bitcode groups (1.17-1.38, frames that
 * lost narrowly for 1.3-2 s of a thread each) from the winners of the delta bench (0.69-1.06),
 * but on the scale bench's synthetic pair (1,500 edited text files) it skipped groups that won:
 * its delta 137,796 -> 169,984 bytes. Since the llvm-bitcode codec codes bitcode members alone
 * far below their level-1 patches, the rule above skips those groups anyway (postgres: the same
 * delta and time without it).
 */
export function groupWorthTrying(preset: LevelPreset, aloneBytes: number, levelOne: () => number): boolean {
  return preset === 'best' || aloneBytes >= GROUP_MIN_ALONE_SHARE * levelOne();
}

/**
 * A group's frame is not coded when its members alone cost under this fraction of the bytes the
 * frame would code (the members and their bases): it can save at most what they cost, and that
 * is then too little for the time (zstd 19 over both). Near-identical members: redis's update,
 * two files of 1.1 MB alone 481 bytes (0.021 %), a frame of 375 in ~0.28 s of a thread, its
 * diff's longest task. The other groups of the bench's pairs (session 19): the smallest shares
 * 0.064 % (node_modules, a frame 61 bytes smaller) and 0.096 % (postgres, a frame 1,070 bytes
 * smaller: kept at this bound, skipped at 0.1 %), then 0.15 % and up.
 */
export const GROUP_MIN_GAIN_SHARE = 0.0005;

/** Whether members that cost `aloneCost` alone may pay for a frame over `frameInput` bytes (members and bases): always at best. */
export function groupCanPay(preset: LevelPreset, aloneCost: number, frameInput: number): boolean {
  return preset === 'best' || aloneCost >= GROUP_MIN_GAIN_SHARE * frameInput;
}

/** Sum of the members' level-1 zstd-patches against their bases (level-1 frames without one): what GROUP_MIN_ALONE_SHARE compares with. */
function levelOneSize(targets: Buffer[], bases: (Buffer | undefined)[]): number {
  let n = 0;
  targets.forEach((t, k) => {
    const b = bases[k];
    n += b ? encodePatch(b, t, 'zstd-patch', 1).length : zstdFrame(t, 1).length;
  });
  return n;
}

/**
 * What members coded alone cost in the delta, in bytes comparable with a group's frame: their
 * stored bytes and the stored digest (32 bytes) the index keeps for each of their chunks coded
 * otherwise than as a plain zstd frame (format/compact.ts, `stored_digests`), which members of a
 * group do not have (the group's frame is checked by its members' raw digests). On the postgres
 * pair a group of 220 members was 2,343 bytes smaller than its members alone and made the delta
 * 9,226 bytes smaller.
 */
export function aloneCost(storedBytes: number, items: readonly (readonly DeltaChunkInfo[])[]): number {
  let digests = 0;
  for (const chunks of items) for (const c of chunks) if (c.codec !== Codec.ZSTD && c.codec !== Codec.GROUP) digests++;
  return storedBytes + 32 * digests;
}

/**
 * Small changed or new contents coded together (issue 14): each is coded alone as
 * diffContents codes it, and all of them as one solid group (format/group.ts): a zstd
 * frame of their bytes back to back, against the concatenation of their bases (the
 * members that have one, in this order) as zstd-patch does. The group is kept when it
 * is smaller than the members coded alone: repetition across files (the same strings
 * changed in 40 translations, the same code in several modules) is then paid once.
 *
 * The members are coded alone one after another, and only as far as the decision needs: the
 * frame is coded once the members coded so far reach GROUP_MIN_ALONE_SHARE of the whole group's
 * level-1 patches and GROUP_MIN_GAIN_SHARE of the frame's input (groupWorthTrying and
 * groupCanPay then hold for the group, whatever the others cost), and the
 * members left are not coded once those coded so far cost more than the frame (the group is
 * kept whatever they would cost). The same decisions and bytes as coding every member first.
 * On issue 18's node_modules update 3.14 -> 2.95 s (its 4 groups kept, 93 of their 211 members
 * not coded alone). Tried: the rule on the members coded so far (a frame coded sooner): 2.82 s
 * there, but postgresql-15's bitcode groups, whose small members come first at ~1x their level-1
 * patches and whose large ones at ~0.3x, then coded six frames that lost: 9.4 -> 12.2 s.
 */
export async function diffGroup(a: DiffContentsArgs): Promise<{ stored: Uint8Array; items: DeltaChunkInfo[][]; grouped: boolean; codedAlone: number }> {
  const files = new Files();
  const targets: Buffer[] = [];
  const bases: (Buffer | undefined)[] = [];
  const alone: { frames: Buffer[]; chunks: DeltaChunkInfo[] }[] = [];
  const preset = a.items[0]?.level ?? 'default';
  let frame: Buffer | undefined;
  let dict = Buffer.alloc(0);
  let target = Buffer.alloc(0);
  let withBases = false;
  try {
    for (const it of a.items) {
      const oldSource = it.base ? await sourceOf(it.oldChain, it.base, it.baseBlob, files) : undefined;
      bases.push(oldSource ? await oldSource.content() : undefined);
      targets.push(await (await sourceOf(it.newChain, it.target, it.targetBlob, files, oldSource)).content());
    }
    target = Buffer.concat(targets);
    withBases = bases.some((b) => b !== undefined);
    dict = Buffer.concat(bases.filter((b): b is Buffer => b !== undefined));
    const level = GROUP_LEVELS[preset];
    const codeFrame = (): Buffer => (withBases ? encodePatch(dict, target, 'zstd-patch', level, { zstdSearchLog: GROUP_SEARCH_LOG }) : encodeGroup(targets, level));
    let levelOne: number | undefined;
    let storedBytes = 0;
    let cost = 0;
    if (preset === 'best') frame = codeFrame();
    for (const [k, it] of a.items.entries()) {
      if (frame && cost > frame.length) break;
      const r = await diffOne(it, files, { base: bases[k], target: targets[k] });
      alone.push(r);
      const stored = r.frames.reduce((n, f) => n + f.length, 0);
      storedBytes += stored;
      cost += aloneCost(stored, [r.chunks]);
      if (!frame && groupCanPay(preset, cost, target.length + dict.length) && groupWorthTrying(preset, storedBytes, () => (levelOne ??= levelOneSize(targets, bases)))) frame = codeFrame();
    }
    if (!frame || frame.length >= cost) {
      // every member was coded (the loop stops early only when the group is kept)
      return { stored: Buffer.concat(alone.flatMap((r) => r.frames)), items: alone.map((r) => r.chunks), grouped: false, codedAlone: alone.length };
    }
  } finally {
    await files.close();
  }
  // decoded as a reader decodes it before it is kept
  const back = withBases ? applyPatch(dict, frame, 'zstd-patch', target.length) : decodeGroup(frame, 'group');
  if (!back.equals(target)) throw new Error('a coded group does not decode to its members');
  let at = 0;
  const items = a.items.map((it, k): DeltaChunkInfo[] => {
    const b = bases[k];
    const info: DeltaChunkInfo = { storedSize: frame.length, storedDigest: '', rawSize: targets[k].length, rawDigest: it.target, codec: Codec.GROUP, baseOffset: 0, baseSize: b ? b.length : 0, usesBase: b !== undefined, groupOffset: at };
    at += targets[k].length;
    return [info];
  });
  return { stored: frame, items, grouped: true, codedAlone: alone.length };
}
