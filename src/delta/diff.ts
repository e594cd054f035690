/**
 * `ctr-cli cdimg diff`: a delta from an old to a new image. Contents the old
 * image holds anywhere are SAME (renames, moves and duplicates cost nothing);
 * others are patched against a likely base — the old file at the same path,
 * else one with the same name, else a versioned neighbour (libssl.so.3 ↔
 * libssl.so.1.1) — or stored full, whichever is smaller, chunk by chunk, in
 * the worker pool. Every patch is verified when it is made.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { CdimgReader } from '../format/reader';
import { CdimgWriter } from '../format/writer';
import { uniquePrefixes } from '../format/bases';
import { Blob, Chunk, Codec, Encoding, Entry, FileType, Index, InsertedEntry, Kind, FORMAT_VERSION, TreeEdit } from '../format/types';
import { baseName, checkRebuilds, depthOf, editScript } from '../format/tree-edit';
import { failedPrecondition, invalidArgument } from '../errors';
import type { TaskModule, WorkerPool } from '../workers/pool';
import type * as DeltaTasks from './tasks';
import { OrderedWindow } from '../util/ordered';
import { CODEC_CHOICES, CodecChoice, isCodecChoice, wordList } from './codecs/registry';
import { LEVEL_PRESETS, LevelPreset } from './codecs/types';
import { BSDIFF_MAX_INPUT } from './codecs/bsdiff-engine';
import { DeltaSummary, deltaSummaryOf } from './summary';
import type { ProgressEvent } from '../convert/convert';

export type { CodecChoice };

/**
 * delta's task module (./tasks.ts), run by the worker pool (diff, merge by
 * rediff, patch). Named by path: the pool and ./tasks.ts load only in the
 * threads, on the first delta task.
 */
export const DELTA_TASKS: TaskModule<typeof DeltaTasks> = { file: join(__dirname, 'tasks.js') };

/**
 * Chunks per part of a large content coded by one task: at least PART_CHUNKS (4 x 4 MiB: parts big
 * enough to amortise a task, small enough to spread), up to PART_CHUNKS_MAX while the content still
 * makes two parts per thread. Each part decodes and hashes again the base chunk before its first unit
 * (the base window reaches half a unit back: ~12 ms per 4 MiB chunk), and a long part keeps a thread
 * busy while this thread plans the rest and writes the edit script (a thread waits for its next task
 * as long as this one is busy: 0.3-0.5 s of issue 18's 150,000-entry trees). Issue 18's 256 MiB text
 * file on two threads: 4 parts of 16 chunks instead of 16 parts of 4.
 */
const PART_CHUNKS = 4;
const PART_CHUNKS_MAX = 16;

/** Chunks per part of a content of `chunks` chunks coded by `threads` threads. */
export function partChunks(chunks: number, threads: number): number {
  return Math.min(PART_CHUNKS_MAX, Math.max(PART_CHUNKS, Math.ceil(chunks / (2 * Math.max(1, threads)))));
}

/** Let the event loop run (replies of the threads, which get their next task from this thread). */
const yieldToLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A FULL content of zstd chunks as a task argument (the thread then reads it without decoding the index); undefined otherwise. */
function fullBlobArg(b: Blob | undefined): DeltaTasks.FullBlobArg | undefined {
  if (!b || b.encoding !== Encoding.FULL || b.chunks.some((c) => c.codec !== Codec.ZSTD && c.codec !== Codec.GROUP)) return undefined;
  return {
    size: b.size,
    chunks: b.chunks.map((c) => ({
      offset: c.offset,
      storedSize: c.storedSize,
      rawSize: c.rawSize,
      rawDigest: c.rawDigest.toString('hex'),
      // a member of a solid group (read through the thread's decoded groups: format/reader.ts readZstdChunk)
      ...(c.codec === Codec.GROUP ? { codec: c.codec, groupOffset: c.groupOffset } : {}),
    })),
  };
}

export interface DiffOptions {
  oldPath: string;
  newPath: string;
  out: string;
  codec?: CodecChoice;
  level?: LevelPreset;
  /** Code small changed contents in groups too, keeping a group when smaller (default true; see deltaGroups). */
  groups?: boolean;
  threads?: number;
  pool?: WorkerPool;
  onProgress?: (e: ProgressEvent) => void;
}

/** "libssl.so.3" → "libssl.so.#", "python3.11" → "python#.#": names equal up to version numbers. */
export function versionless(name: string): string {
  return name.replace(/\d+/g, '#');
}

const dirOf = (p: string): string => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
const nameOf = (p: string): string => p.slice(p.lastIndexOf('/') + 1);

/** Index of the old image's regular files for base selection. */
export class BaseFinder {
  private readonly byPath: ReadonlyMap<string, Entry>;
  /** Built on the first lookup by name: a diff whose changed files all keep their paths never needs them (0.3 s of regexes and slices for 150,000 entries, issue 18). */
  private byName?: Map<string, Entry[]>;
  private byVersionless?: Map<string, Entry[]>;

  /** `byPath`: the old image's path → entry map when the caller has one (a validated reader's, every type): not built again. */
  constructor(
    private readonly oldEntries: Entry[],
    byPath?: ReadonlyMap<string, Entry>,
  ) {
    if (byPath) this.byPath = byPath;
    else {
      const m = new Map<string, Entry>();
      for (const e of oldEntries) if (e.type === FileType.REG && e.size > 0) m.set(e.path, e);
      this.byPath = m;
    }
  }

  private names(): { byName: Map<string, Entry[]>; byVersionless: Map<string, Entry[]> } {
    if (!this.byName || !this.byVersionless) {
      this.byName = new Map();
      this.byVersionless = new Map();
      for (const e of this.oldEntries) {
        if (e.type !== FileType.REG || e.size === 0) continue;
        push(this.byName, nameOf(e.path), e);
        push(this.byVersionless, versionless(nameOf(e.path)), e);
      }
    }
    return { byName: this.byName, byVersionless: this.byVersionless };
  }

  /** The best base for a new content stored at `paths` (size `size`), or undefined. */
  find(paths: string[], size: number): Entry | undefined {
    const plausible = (e: Entry | undefined): e is Entry => !!e && e.type === FileType.REG && e.size > 0 && e.size <= size * 8 + 4096 && size <= e.size * 8 + 4096;
    for (const p of paths) {
      const e = this.byPath.get(p);
      if (plausible(e)) return e;
    }
    const pick = (cands: Entry[] | undefined, p: string): Entry | undefined => {
      if (!cands) return undefined;
      const ok = cands.filter(plausible);
      if (!ok.length) return undefined;
      // prefer the same directory, then the closest size, then the path (deterministic)
      const dir = dirOf(p);
      return ok.sort((a, b) => Number(dirOf(b.path) === dir) - Number(dirOf(a.path) === dir) || Math.abs(a.size - size) - Math.abs(b.size - size) || (a.path < b.path ? -1 : 1))[0];
    };
    const { byName, byVersionless } = this.names();
    for (const p of paths) {
      const e = pick(byName.get(nameOf(p)), p);
      if (e) return e;
    }
    for (const p of paths) {
      const e = pick(byVersionless.get(versionless(nameOf(p))), p);
      if (e) return e;
    }
    return undefined;
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const a = m.get(k);
  if (a) a.push(v);
  else m.set(k, [v]);
}

/** Contents referenced by entries, in first-use order, with the paths that use them. */
export function contentsOf(entries: Entry[]): { digest: Buffer; hex: string; size: number; paths: string[] }[] {
  const out = new Map<string, { digest: Buffer; hex: string; size: number; paths: string[] }>();
  for (const e of entries) {
    if (e.type !== FileType.REG) continue;
    // a merge's composed script: a content by reference to the base is the base's (nothing to store)
    if (e.digest.length === 0 && (e as InsertedEntry).parentRef !== undefined) continue;
    const k = e.digest.toString('hex');
    const c = out.get(k);
    if (c) c.paths.push(e.path);
    else out.set(k, { digest: e.digest, hex: k, size: e.size, paths: [e.path] });
  }
  return [...out.values()];
}

export function deltaChunk(offset: number, ch: { storedSize: number; storedDigest: string; rawSize: number; rawDigest: string; codec: Codec; baseOffset: number; baseSize: number; usesBase: boolean; groupOffset?: number }, base: Buffer): Chunk {
  const c: Chunk = {
    offset,
    storedSize: ch.storedSize,
    storedDigest: Buffer.from(ch.storedDigest, 'hex'),
    rawSize: ch.rawSize,
    rawDigest: Buffer.from(ch.rawDigest, 'hex'),
    codec: ch.codec,
    baseDigest: ch.usesBase ? base : Buffer.alloc(0),
    baseOffset: ch.baseOffset,
    baseSize: ch.baseSize,
  };
  if (ch.groupOffset !== undefined) c.groupOffset = ch.groupOffset;
  return c;
}

/**
 * Changed or new contents up to 1 MiB are also coded in groups (issue 14, tasks.ts diffGroup):
 * members of at most DELTA_GROUP_MEMBER_MAX bytes, a group closed at DELTA_GROUP_RAW bytes of
 * members or DELTA_GROUP_ITEMS of them, or when the file kind (extension) changes. Members are
 * ordered by extension, then file name, then path, so that the same file of other locales or
 * other packages' copies of a module are coded together: what repeats across them is paid
 * once. Measured on the postgres pair of the delta bench (delta 4,793 KB without groups):
 * members ≤ 64 KiB in 1 MiB groups of mixed kinds 4,705 KB; ≤ 256 KiB in 2 MiB groups 4,715 KB
 * mixed, 4,687 KB one kind per group; ≤ 1 MiB in 4 MiB groups of one kind 4,567 KB (−4.7 %:
 * the 825 KB `postgres-15.mo` of twelve locales share their message ids), 4,670 KB at zstd 12
 * instead of 19. tzdata: 94.6 → 65.8 KB.
 */
export const DELTA_GROUP_MEMBER_MAX = 1024 * 1024;
export const DELTA_GROUP_RAW = 4 * 1024 * 1024;
export const DELTA_GROUP_ITEMS = 512;

/**
 * Zip archives are not grouped: the zip-members codec (codecs/zip-members.ts) codes each
 * one as its members decompressed, which a group of the archives as they are never beats
 * (libtomcat10-java's jars: 0.11x of zstd-patch of the jars), so trying the group was
 * only time spent.
 */
const ARCHIVE_RE = /\.(jar|war|ear|aar|apk|zip|whl|nupkg|xpi)$/i;

/** The order of contents in delta groups: extension, file name, path (of a content's first path). */
function groupKey(path: string): string {
  const name = path.slice(path.lastIndexOf('/') + 1);
  const dot = name.lastIndexOf('.');
  return `${dot > 0 ? name.slice(dot + 1) : ''}\0${name}\0${path}`;
}

/**
 * Contents cut into delta groups (see DELTA_GROUP_RAW): chosen in the order of groupKey, each
 * group's members then in the order of `work` (the order in which the index lists the contents),
 * so that each member starts where the member listed before it ends and the index's group offsets
 * (format/compact.ts, relative to that end) are all 0. Measured against groupKey's order within
 * the group: tzdata's delta 36,122 -> 35,062 bytes, node_modules' 49,188 -> 48,344, postgres's
 * -1,138 bytes (the frames' sizes moved too: tzdata's -654 bytes).
 */
export function deltaGroups<T extends { c: { size: number; paths: string[] } }>(work: T[]): T[][] {
  const keyed = work.map((x, i) => ({ x, i, k: groupKey(x.c.paths[0] ?? '') }));
  keyed.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0));
  const out: T[][] = [];
  let cur: typeof keyed = [];
  let raw = 0;
  let ext = '';
  const close = (): void => {
    out.push(cur.sort((a, b) => a.i - b.i).map((y) => y.x));
    cur = [];
    raw = 0;
  };
  for (const y of keyed) {
    // one kind of file per group: a group is kept or not as a whole, and mixed kinds (LLVM bitcode, which
    // bsdiff codes best alone, next to translations, which share their strings) made it lose (postgres pair)
    const e = y.k.slice(0, y.k.indexOf('\0'));
    if (cur.length && (e !== ext || raw + y.x.c.size > DELTA_GROUP_RAW || cur.length >= DELTA_GROUP_ITEMS)) close();
    cur.push(y);
    raw += y.x.c.size;
    ext = e;
  }
  if (cur.length) close();
  return out;
}

type Work = { c: ReturnType<typeof contentsOf>[number]; hex: string; slot: Blob };

/** The blob slots of the new image's contents: SAME for those the old image holds, the others to code (and their bytes already done). */
function planContents<C extends { digest: Buffer; hex?: string; size: number }>(contents: C[], oldHas: { has(hex: string): boolean }, slots?: ReadonlyMap<string, Blob>): { blobs: Blob[]; work: { c: C; hex: string; slot: Blob }[]; same: number } {
  const blobs: Blob[] = [];
  const work: { c: C; hex: string; slot: Blob }[] = [];
  let same = 0;
  for (const c of contents) {
    const hex = c.hex ?? c.digest.toString('hex');
    if (oldHas.has(hex)) {
      blobs.push({ digest: c.digest, size: c.size, encoding: Encoding.SAME, chunks: [] });
      same += c.size;
      continue;
    }
    // the slot of a content planned before (diffImages: the large ones) is the one its chunks go to
    const slot: Blob = slots?.get(hex) ?? { digest: c.digest, size: c.size, encoding: Encoding.FULL, chunks: [] };
    blobs.push(slot);
    work.push({ c, hex, slot });
  }
  return { blobs, work, same };
}

/**
 * Contents up to this size are coded in batches ({@link DeltaTasks.diffContents}) of up to
 * BATCH_ITEMS contents or BATCH_BYTES bytes: one task per small content kept two threads half
 * idle on 1,500 edited small files (messages, file opens, one append each: 1.7 s, issue 18).
 */
const BATCH_MAX_CONTENT = 1024 * 1024;
const BATCH_ITEMS = 32;
const BATCH_BYTES = 4 * 1024 * 1024;

/**
 * What writing the delta's index needs of the two trees, computed apart so that the main thread does
 * it while the threads code: the edit script of the new tree against the old one, with the check
 * writer.finish makes of a script it computes (the tree rebuilds from it: depth-first order), as
 * InsertedEntry (depth and name from the path, what the encoder derives from a plain entry); and
 * for the summary the old regular files and hard links whose path the new tree lacks.
 */
async function prepareIndex(oldR: CdimgReader, newR: CdimgReader): Promise<{ treeEdit: TreeEdit; removed: number }> {
  // between the steps the threads' replies are answered with their next tasks
  await yieldToLoop();
  const script = editScript(oldR.index.entries, newR.index.entries);
  await yieldToLoop();
  checkRebuilds(oldR.index.entries, script, newR.index.entries);
  const inserted: InsertedEntry[] = script.inserted.map((e) => ({ ...e, depth: depthOf(e.path), name: baseName(e.path) }));
  let removed = 0;
  for (const e of oldR.index.entries) if ((e.type === FileType.REG || e.type === FileType.HARDLINK) && !newR.byPath.has(e.path)) removed++;
  return { treeEdit: { ops: script.ops, inserted }, removed };
}

export async function diffImages(o: DiffOptions): Promise<DeltaSummary> {
  const t0 = process.hrtime.bigint();
  const codec = o.codec ?? 'auto';
  const level = o.level ?? 'default';
  if (!isCodecChoice(codec)) throw invalidArgument(`unknown codec "${codec}": use ${wordList(CODEC_CHOICES)}`);
  if (!LEVEL_PRESETS.includes(level)) throw invalidArgument(`unknown level "${level}": use ${wordList(LEVEL_PRESETS)}`);
  const ownPool = o.pool ? undefined : new (require('../workers/pool') as typeof import('../workers/pool')).WorkerPool(o.threads, { eager: true });
  const pool = o.pool ?? (ownPool as WorkerPool);
  // The threads load delta's task module and zstd while this thread reads the indexes (~0.1 s per
  // thread that was at the start of the first, longest task: issue 18). Failures show in real tasks.
  for (let i = 0; i < pool.started; i++) pool.run(DELTA_TASKS, 'warm', {}).catch(() => undefined);
  let oldR: CdimgReader | undefined;
  let newR: CdimgReader;
  try {
    oldR = await CdimgReader.open(o.oldPath);
    newR = await CdimgReader.open(o.newPath);
  } catch (e) {
    await oldR?.close();
    await ownPool?.close();
    throw e;
  }
  return diffReaders(o, oldR, newR, pool, codec, level, t0).finally(async () => {
    await oldR?.close();
    await newR.close();
    await ownPool?.close();
  });
}

async function diffReaders(o: DiffOptions, oldR: CdimgReader, newR: CdimgReader, pool: WorkerPool, codec: CodecChoice, level: LevelPreset, t0: bigint): Promise<DeltaSummary> {
  let writer: CdimgWriter | undefined;
  type Coded =
    | { stored: Uint8Array; chunks: DeltaTasks.DeltaChunkInfo[] }
    | { stored: Uint8Array; items: DeltaTasks.DeltaChunkInfo[][] }
    | { stored: Uint8Array; items: DeltaTasks.DeltaChunkInfo[][]; grouped: boolean };
  // Many tasks may be in flight: the largest content goes first and is consumed first, and the
  // small ones behind it must not wait for it to start (the byte bound still caps memory).
  const window = new OrderedWindow<Coded>(Math.max(16, pool.threads * 8), 256 * 1024 * 1024);
  let warming: Promise<void> | undefined;
  const stopWarming = { now: false };
  try {
    for (const r of [oldR, newR]) {
      if (r.isDelta) throw failedPrecondition(`${r.path} is a delta; diff compares full images (apply it with \`ctr-cli cdimg patch\` first, or merge deltas with \`cdimg merge\`)`);
    }
    oldR.requireTree();
    newR.requireTree();
    // the validated readers' maps (content hex → blob, path → entry), not built again
    const finder = new BaseFinder(oldR.index.entries, oldR.byPath);
    writer = await CdimgWriter.create(o.out);
    const chunkSize = newR.index.chunkSize;
    const w = writer;
    // progress: bytes of contents coded; the total and the SAME bytes once every content is planned
    let total = -1;
    let same = 0;
    let coded = 0;
    const progress = (bytes: number): void => {
      coded += bytes;
      if (total >= 0) o.onProgress?.({ phase: 'compress', done: same + coded, total });
    };
    /** Chunks coded for a content, appended at `off`: recorded in its slot; returns the offset after them. */
    const record = (slot: Blob, base: Entry | undefined, chunks: DeltaTasks.DeltaChunkInfo[], off: number): number => {
      for (const ch of chunks) {
        slot.chunks.push(deltaChunk(off, ch, base ? base.digest : Buffer.alloc(0)));
        off += ch.storedSize;
      }
      if (slot.chunks.some((ch) => ch.codec !== Codec.ZSTD)) slot.encoding = Encoding.PATCH;
      return off;
    };
    const argsOf = (hex: string, base: Entry | undefined): DeltaTasks.DiffContentArgs => ({
      oldChain: [o.oldPath],
      newChain: [o.newPath],
      target: hex,
      base: base ? base.digest.toString('hex') : '',
      codec,
      level,
      chunkSize,
      targetBlob: fullBlobArg(newR.blob(hex)),
      ...(base ? { baseBlob: fullBlobArg(oldR.blob(base.digest)) } : {}),
    });
    // small contents waiting to go as one task, in this order (their bytes are stored in it)
    let batch: { slot: Blob; base: Entry | undefined; args: DeltaTasks.DiffContentArgs }[] = [];
    let batchBytes = 0;
    const sendBatch = async (): Promise<void> => {
      if (!batch.length) return;
      const items = batch;
      const bytes = batchBytes;
      batch = [];
      batchBytes = 0;
      await window.push(
        () => pool.run(DELTA_TASKS, 'diffContents', { items: items.map((x) => x.args) }),
        async (r) => {
          if (!('items' in r) || r.items.length !== items.length) throw new Error('diffContents answered for another batch');
          let off = await w.append(Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength));
          items.forEach((x, k) => (off = record(x.slot, x.base, r.items[k], off)));
          progress(bytes);
        },
        bytes,
      );
    };
    // Work for the main thread that does not need the coded contents, done while the threads code:
    // the tree's edit script against the old tree (what writer.finish would compute at the end: 0.3-0.5 s
    // of a 150,000-entry tree on the critical path, issue 18) and the count of removed files.
    let after: Promise<{ treeEdit: TreeEdit; removed: number }> | undefined;
    const prepare = (): Promise<{ treeEdit: TreeEdit; removed: number }> => (after ??= prepareIndex(oldR, newR));
    /** Send one content to the threads: in parts, whole, or into the batch of small ones. */
    const code = async ({ c, hex, slot }: Work): Promise<void> => {
      // the threads have work waiting: the main thread is free for a while
      if (!after && pool.queueSize >= pool.threads) await prepare();
      const base = finder.find(c.paths, c.size);
      // A content coded in chunks (over bsdiff's whole-file limit, or without a base) goes in parts
      // (partChunks) that threads code at once: one 256 MiB file is not one thread's minute.
      const chunked = c.size > chunkSize && (!base || c.size > BSDIFF_MAX_INPUT);
      if (!chunked && c.size <= BATCH_MAX_CONTENT) {
        batch.push({ slot, base, args: argsOf(hex, base) });
        batchBytes += c.size;
        if (batch.length >= BATCH_ITEMS || batchBytes >= BATCH_BYTES) await sendBatch();
        return;
      }
      await sendBatch();
      const part = chunked ? partChunks(Math.ceil(c.size / chunkSize), pool.threads) * chunkSize : Math.max(c.size, 1);
      const args = argsOf(hex, base);
      for (let start = 0; start < Math.max(c.size, 1); start += part) {
        const end = Math.min(start + part, c.size);
        await window.push(
          () => pool.run(DELTA_TASKS, 'diffContent', { ...args, ...(chunked ? { start, end } : {}) }),
          async (r) => {
            if (!('chunks' in r)) throw new Error('diffContent answered for a batch');
            record(slot, base, r.chunks, await w.append(Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength)));
            progress(end - start);
          },
          end - start,
        );
      }
    };
    // Largest first (then in index order): the longest task starts at once instead of after the small
    // ones, which then fill the other threads. The index keeps its order; stored bytes follow this one.
    // The first contents over BATCH_MAX_CONTENT are planned and sent first, from their own entries,
    // until the threads have work waiting: they come first in that order anyway, and planning all
    // 150,000 contents before them kept the threads idle for 0.2-0.3 s more (issue 18). The others
    // follow once every content is planned (and the progress total known).
    const bySize = (a: Work, b: Work): number => b.c.size - a.c.size;
    const large = planContents(contentsOf(newR.index.entries.filter((e) => e.type === FileType.REG && e.size > BATCH_MAX_CONTENT)), oldR.blobs);
    large.work.sort(bySize);
    let sent = 0;
    while (sent < large.work.length && pool.queueSize < pool.threads) await code(large.work[sent++]);
    // the edit script, the longest step here, right after the threads got their longest tasks
    if (!after && pool.queueSize > 0) await prepare();
    await yieldToLoop();
    const contents = contentsOf(newR.index.entries);
    await yieldToLoop();
    const plan = planContents(contents, oldR.blobs, new Map(large.work.map((x) => [x.hex, x.slot])));
    const blobs = plan.blobs;
    same = plan.same;
    total = contents.reduce((n, c) => n + c.size, 0);
    const small = plan.work.filter((x) => x.c.size <= BATCH_MAX_CONTENT).sort(bySize);
    warming = warmSmallContents(oldR, newR, finder, small, stopWarming);
    for (const x of large.work.slice(sent)) await code(x);
    const grouping = (x: Work): boolean => o.groups !== false && x.c.size > 0 && x.c.size <= DELTA_GROUP_MEMBER_MAX && !ARCHIVE_RE.test(x.c.paths[0] ?? '');
    // in index order (deltaGroups keeps it within each group)
    const groupable = plan.work.filter((x) => x.c.size <= BATCH_MAX_CONTENT && grouping(x));
    for (const x of small) if (!grouping(x)) await code(x);
    await sendBatch();
    for (const g of deltaGroups(groupable)) {
      if (g.length === 1) {
        await code(g[0]);
        continue;
      }
      await sendBatch();
      const items = g.map((x) => ({ ...x, base: finder.find(x.c.paths, x.c.size) }));
      const bytes = items.reduce((n, x) => n + x.c.size, 0);
      await window.push(
        () => pool.run(DELTA_TASKS, 'diffGroup', { items: items.map((x) => argsOf(x.hex, x.base)) }),
        async (r) => {
          if (!('grouped' in r) || r.items.length !== items.length) throw new Error('diffGroup answered for another group');
          let off = await w.append(Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength));
          if (!r.grouped) items.forEach((x, k) => (off = record(x.slot, x.base, r.items[k], off)));
          else {
            // one frame for all: members coded against bases make every member's blob PATCH (format/group.ts)
            const encoding = r.items.some((ch) => ch[0].usesBase) ? Encoding.PATCH : Encoding.FULL;
            items.forEach((x, k) => {
              x.slot.chunks = [deltaChunk(off, r.items[k][0], x.base ? x.base.digest : Buffer.alloc(0))];
              x.slot.encoding = encoding;
            });
          }
          progress(bytes);
        },
        bytes,
      );
    }
    await sendBatch();
    const { treeEdit, removed } = await prepare();
    await window.flush();
    const index: Index = {
      formatVersion: FORMAT_VERSION,
      kind: Kind.DELTA,
      imageId: newR.index.imageId,
      parentId: oldR.index.imageId,
      image: newR.index.image,
      parentImage: oldR.index.image,
      entries: newR.index.entries,
      blobs,
      chunkSize: newR.index.chunkSize,
      // written as is: encodeIndexV2 computes the same script from parentEntries when there is none
      treeEdit,
    };
    // bases named by an 8-byte prefix where no other content of the old image shares it (format/bases.ts)
    const basePrefix = oldR.isDelta ? undefined : uniquePrefixes((function* () { for (const b of oldR.blobs.values()) yield b.digest; })());
    const fin = await writer.finish(index, { parentEntries: oldR.index.entries, basePrefix });
    // What summarizeDelta would count from the index, from the plan (0.3 s less, issue 18): every
    // regular file of the new tree uses one content of `contents` (its paths); removed: prepareIndex.
    const files = { same: 0, patched: 0, full: 0, removed };
    const counts = { same: 0, patched: 0, full: 0, auxiliary: 0 };
    contents.forEach((c, i) => {
      const e = blobs[i].encoding;
      const k = e === Encoding.SAME ? 'same' : e === Encoding.PATCH ? 'patched' : 'full';
      files[k] += c.paths.length;
      counts[k]++;
    });
    return deltaSummaryOf(index, fin.size, files, counts, Number(process.hrtime.bigint() - t0) / 1e9, o.out);
  } catch (e) {
    await window.settle();
    await writer?.abort();
    throw e;
  } finally {
    stopWarming.now = true;
    await warming;
  }
}

/**
 * Read the stored chunks of the small contents to code (and of their bases) once, in file order, one
 * read at a time per file, and drop the bytes: while the threads code the large contents, this brings
 * into the page cache the scattered chunks the batches then read one by one. With the files not in the
 * page cache the threads spent half of the small contents' phase waiting for those reads (1,500 edited
 * files of issue 18: ~0.7 s of 1.4 s per thread). Never fails: a read that fails here fails again,
 * with its error, in the thread that needs it.
 */
async function warmSmallContents(oldR: CdimgReader, newR: CdimgReader, finder: BaseFinder, work: Work[], stop: { now: boolean }): Promise<void> {
  const want = (r: CdimgReader): { path: string; chunks: Chunk[] } => ({ path: r.path, chunks: [] });
  const fresh = want(newR);
  const old = want(oldR);
  for (const { c, hex } of work) {
    fresh.chunks.push(...(newR.blob(hex)?.chunks ?? []));
    const base = finder.find(c.paths, c.size);
    if (base) old.chunks.push(...(oldR.blob(base.digest)?.chunks ?? []));
  }
  await Promise.allSettled(
    [fresh, old].map(async ({ path, chunks }) => {
      if (!chunks.length) return;
      chunks.sort((a, b) => a.offset - b.offset);
      const fh = await fsp.open(path, 'r');
      try {
        const buf = Buffer.allocUnsafe(chunks.reduce((n, x) => Math.max(n, x.storedSize), 0));
        for (const x of chunks) {
          if (stop.now) return;
          await fh.read(buf, 0, x.storedSize, x.offset);
        }
      } finally {
        await fh.close();
      }
    }),
  );
}
