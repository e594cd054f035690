/**
 * `ctr-cli cdimg diff`: a delta from an old to a new image. Contents the old
 * image holds anywhere are SAME (renames, moves and duplicates cost nothing);
 * others are patched against a likely base — the old file at the same path,
 * else one with the same name, else a versioned neighbour (libssl.so.3 ↔
 * libssl.so.1.1) — or stored full, whichever is smaller, chunk by chunk, in
 * the worker pool. Every patch is verified when it is made.
 */
import { join } from 'node:path';
import { CdimgReader } from '../format/reader';
import { CdimgWriter } from '../format/writer';
import { Blob, Chunk, Codec, Encoding, Entry, FileType, Index, Kind, FORMAT_VERSION } from '../format/types';
import { failedPrecondition, invalidArgument } from '../errors';
import type { TaskModule, WorkerPool } from '../workers/pool';
import type * as DeltaTasks from './tasks';
import { OrderedWindow } from '../util/ordered';
import { CODEC_CHOICES, CodecChoice, isCodecChoice, wordList } from './codecs/registry';
import { LEVEL_PRESETS, LevelPreset } from './codecs/types';
import { BSDIFF_MAX_INPUT } from './codecs/bsdiff-engine';
import { DeltaSummary, summarizeDelta } from './summary';
import type { ProgressEvent } from '../convert/convert';

export type { CodecChoice };

/**
 * delta's task module (./tasks.ts), run by the worker pool (diff, merge by
 * rediff, patch). Named by path: the pool and ./tasks.ts load only in the
 * threads, on the first delta task.
 */
export const DELTA_TASKS: TaskModule<typeof DeltaTasks> = { file: join(__dirname, 'tasks.js') };

/** Chunks per part of a large content coded by one task (4 x 4 MiB: parts big enough to amortise a task, small enough to spread). */
const PART_CHUNKS = 4;

/** A FULL content of zstd chunks as a task argument (the thread then reads it without decoding the index); undefined otherwise. */
function fullBlobArg(b: Blob | undefined): DeltaTasks.FullBlobArg | undefined {
  if (!b || b.encoding !== Encoding.FULL || b.chunks.some((c) => c.codec !== Codec.ZSTD)) return undefined;
  return { size: b.size, chunks: b.chunks.map((c) => ({ offset: c.offset, storedSize: c.storedSize, rawSize: c.rawSize, rawDigest: c.rawDigest.toString('hex') })) };
}

export interface DiffOptions {
  oldPath: string;
  newPath: string;
  out: string;
  codec?: CodecChoice;
  level?: LevelPreset;
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
  private readonly byPath = new Map<string, Entry>();
  private readonly byName = new Map<string, Entry[]>();
  private readonly byVersionless = new Map<string, Entry[]>();

  constructor(oldEntries: Entry[]) {
    for (const e of oldEntries) {
      if (e.type !== FileType.REG || e.size === 0) continue;
      this.byPath.set(e.path, e);
      push(this.byName, nameOf(e.path), e);
      push(this.byVersionless, versionless(nameOf(e.path)), e);
    }
  }

  /** The best base for a new content stored at `paths` (size `size`), or undefined. */
  find(paths: string[], size: number): Entry | undefined {
    const plausible = (e: Entry | undefined): e is Entry => !!e && e.size > 0 && e.size <= size * 8 + 4096 && size <= e.size * 8 + 4096;
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
    for (const p of paths) {
      const e = pick(this.byName.get(nameOf(p)), p);
      if (e) return e;
    }
    for (const p of paths) {
      const e = pick(this.byVersionless.get(versionless(nameOf(p))), p);
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
    const k = e.digest.toString('hex');
    const c = out.get(k);
    if (c) c.paths.push(e.path);
    else out.set(k, { digest: e.digest, hex: k, size: e.size, paths: [e.path] });
  }
  return [...out.values()];
}

export function deltaChunk(offset: number, ch: { storedSize: number; storedDigest: string; rawSize: number; rawDigest: string; codec: Codec; baseOffset: number; baseSize: number; usesBase: boolean }, base: Buffer): Chunk {
  return {
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
}

/** The blob slots of the new image's contents: SAME for those the old image holds, the others to code (and their bytes already done). */
function planContents<C extends { digest: Buffer; size: number }>(contents: C[], oldHas: Set<string>): { blobs: Blob[]; work: { c: C; hex: string; slot: Blob }[]; same: number } {
  const blobs: Blob[] = [];
  const work: { c: C; hex: string; slot: Blob }[] = [];
  let same = 0;
  for (const c of contents) {
    const hex = c.digest.toString('hex');
    if (oldHas.has(hex)) {
      blobs.push({ digest: c.digest, size: c.size, encoding: Encoding.SAME, chunks: [] });
      same += c.size;
      continue;
    }
    const slot: Blob = { digest: c.digest, size: c.size, encoding: Encoding.FULL, chunks: [] };
    blobs.push(slot);
    work.push({ c, hex, slot });
  }
  return { blobs, work, same };
}

export async function diffImages(o: DiffOptions): Promise<DeltaSummary> {
  const t0 = process.hrtime.bigint();
  const codec = o.codec ?? 'auto';
  const level = o.level ?? 'default';
  if (!isCodecChoice(codec)) throw invalidArgument(`unknown codec "${codec}": use ${wordList(CODEC_CHOICES)}`);
  if (!LEVEL_PRESETS.includes(level)) throw invalidArgument(`unknown level "${level}": use ${wordList(LEVEL_PRESETS)}`);
  const oldR = await CdimgReader.open(o.oldPath);
  const newR = await CdimgReader.open(o.newPath).catch(async (e) => {
    await oldR.close();
    throw e;
  });
  const pool = o.pool ?? new (require('../workers/pool') as typeof import('../workers/pool')).WorkerPool(o.threads, { eager: true });
  let writer: CdimgWriter | undefined;
  // Many tasks may be in flight: the largest content goes first and is consumed first, and the
  // small ones behind it must not wait for it to start (the byte bound still caps memory).
  const window = new OrderedWindow<{ stored: Uint8Array; chunks: Parameters<typeof deltaChunk>[1][] }>(Math.max(16, pool.threads * 8), 256 * 1024 * 1024);
  try {
    for (const r of [oldR, newR]) {
      if (r.isDelta) throw failedPrecondition(`${r.path} is a delta; diff compares full images (apply it with \`ctr-cli cdimg patch\` first, or merge deltas with \`cdimg merge\`)`);
    }
    const oldHas = new Set(oldR.index.blobs.map((b) => b.digest.toString('hex')));
    oldR.requireTree();
    newR.requireTree();
    const finder = new BaseFinder(oldR.index.entries);
    const contents = contentsOf(newR.index.entries);
    writer = await CdimgWriter.create(o.out);
    const total = contents.reduce((n, c) => n + c.size, 0);
    const { blobs, work, same } = planContents(contents, oldHas);
    let done = same;
    // Largest first (then in index order): the longest task starts at once instead of after the small
    // ones, which then fill the other threads. The index keeps its order; stored bytes follow this one.
    work.sort((a, b) => b.c.size - a.c.size);
    const chunkSize = newR.index.chunkSize;
    for (const { c, hex, slot } of work) {
      const base = finder.find(c.paths, c.size);
      const w = writer;
      // A content coded in chunks (over bsdiff's whole-file limit, or without a base) goes in parts of
      // PART_CHUNKS chunks that threads code at once: one 256 MiB file is not one thread's minute.
      const chunked = c.size > chunkSize && (!base || c.size > BSDIFF_MAX_INPUT);
      const part = chunked ? PART_CHUNKS * chunkSize : Math.max(c.size, 1);
      for (let start = 0; start < Math.max(c.size, 1); start += part) {
        const end = Math.min(start + part, c.size);
        await window.push(
          () =>
            pool.run(DELTA_TASKS, 'diffContent', {
              oldChain: [o.oldPath],
              newChain: [o.newPath],
              target: hex,
              base: base ? base.digest.toString('hex') : '',
              codec,
              level,
              chunkSize,
              ...(chunked ? { start, end } : {}),
              targetBlob: fullBlobArg(newR.blob(hex)),
              ...(base ? { baseBlob: fullBlobArg(oldR.blob(base.digest)) } : {}),
            }),
          async (r) => {
            let off = await w.append(Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength));
            for (const ch of r.chunks) {
              slot.chunks.push(deltaChunk(off, ch, base ? base.digest : Buffer.alloc(0)));
              off += ch.storedSize;
            }
            if (slot.chunks.some((ch) => ch.codec !== Codec.ZSTD)) slot.encoding = Encoding.PATCH;
            done += end - start;
            o.onProgress?.({ phase: 'compress', done, total });
          },
          end - start,
        );
      }
    }
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
    };
    const fin = await writer.finish(index, { parentEntries: oldR.index.entries });
    return summarizeDelta(index, fin.size, oldR.index.entries, Number(process.hrtime.bigint() - t0) / 1e9, o.out);
  } catch (e) {
    await window.settle();
    await writer?.abort();
    throw e;
  } finally {
    await oldR.close();
    await newR.close();
    if (!o.pool) await pool.close();
  }
}
