/**
 * `ctr-cli cdimg merge A-B B-C [C-D…]`: compose a chain of deltas into one
 * delta A-D without the full images (D4C's delta merging).
 *
 * Strategy "compose" (default, needs nothing but the deltas): every content of
 * D is taken from the newest delta that stores it, as stored bytes (no
 * decoding). A patch whose base is itself new in B or C keeps that base as an
 * auxiliary content of the merged delta, so PATCH∘PATCH is kept as two
 * patches; a content no delta stores is SAME (A holds it).
 *
 * Strategy "rediff" (needs --base A): every content D patches is rebuilt and
 * diffed directly against the original base in A — smaller, much slower.
 */
import { CdimgReader } from '../format/reader';
import { CdimgWriter } from '../format/writer';
import { resolveBasePrefixes, uniquePrefixes } from '../format/bases';
import { BASE_PREFIX_BYTES, Blob, Chunk, Codec, Encoding, Index, Kind, FORMAT_VERSION, type TreeEdit } from '../format/types';
import { composeEdits } from '../format/tree-edit';
import { failedPrecondition, invalidArgument } from '../errors';
import type { WorkerPool } from '../workers/pool';
import { OrderedWindow } from '../util/ordered';
import { contentsOf, BaseFinder, deltaChunk, deltaGroups, CodecChoice, DELTA_GROUP_MEMBER_MAX, DELTA_TASKS } from './diff';
import type { DiffContentArgs } from './tasks';
import { DeltaSummary, summarizeDelta } from './summary';
import { LevelPreset } from './codecs';

export interface MergeOptions {
  deltas: string[];
  out: string;
  strategy?: 'compose' | 'rediff';
  /** the full image A (for rediff) */
  base?: string;
  codec?: CodecChoice;
  level?: LevelPreset;
  threads?: number;
  pool?: WorkerPool;
}

/**
 * zstd level of a composed merge's index (see mergeDeltas): level 9 codes the
 * 52 KB index of the libssl 3-step merge in 0.5 ms instead of 3.5 ms (level 15)
 * or 10 ms (19), for 314 bytes more than level 15 (0.09 % of that merge).
 */
export const MERGE_INDEX_LEVEL = 9;

/**
 * Where a content is stored in the chain of deltas, at `level` or below: the
 * lowest delta that stores it; undefined = in A (SAME). The lowest: a stored
 * content's bases are contents of the tree before its delta, so they are
 * stored lower still or in A, and the contents a composed merge copies never
 * patch one another in a circle. Taken from the top, a chain that goes back
 * and forth (libssl v1→v2→v3→v2) copied v2's contents as the last delta
 * patches them, against v3's, which the delta before patches against v2's:
 * the merge was refused.
 */
function locate(readers: CdimgReader[], hex: string, level: number): { level: number; blob: Blob } | undefined {
  for (let l = 0; l <= level; l++) {
    const b = readers[l].blobs.get(hex);
    if (b && b.encoding !== Encoding.SAME) return { level: l, blob: b };
  }
  return undefined;
}

/**
 * Contents the chain shows to be in A: the bases of the first delta's patches
 * and the contents it holds as SAME. A composed merge never stores them (a file
 * that goes back to A's content is SAME in the merge), even where a later delta
 * stores them patched against a content of its own parent.
 */
function contentsOfA(first: CdimgReader): { has(hex: string): boolean } {
  const out = new Set<string>();
  // bases a version 5 delta names by prefix (format/bases.ts), unresolved without A: a content of
  // A is the one content of A that begins with the prefix
  const prefixes = new Set<string>();
  for (const b of first.blobs.values()) {
    if (b.encoding === Encoding.SAME) out.add(b.digest.toString('hex'));
    for (const c of b.chunks) {
      if (c.baseDigest.length === BASE_PREFIX_BYTES) prefixes.add(c.baseDigest.toString('hex'));
      else if (c.baseDigest.length > 0) out.add(c.baseDigest.toString('hex'));
    }
  }
  return { has: (hex) => out.has(hex) || (prefixes.size > 0 && prefixes.has(hex.slice(0, 2 * BASE_PREFIX_BYTES))) };
}

/**
 * Give each delta its tree where the one below has one (the base, a version 1
 * delta): a version 2 delta opened alone has only its edit script.
 */
async function giveTrees(readers: CdimgReader[], base: CdimgReader | undefined): Promise<void> {
  for (let i = 0; i < readers.length; i++) {
    const below = i === 0 ? base : readers[i - 1];
    if (readers[i].hasTree || !below?.hasTree) continue;
    const again = await CdimgReader.open(readers[i].path, { parent: below });
    await readers[i].close();
    readers[i] = again;
  }
}

/** The merged delta's contents as they are decided: by digest, in the order they were first met. */
interface Merged {
  out: Map<string, Blob>;
  order: string[];
}

/**
 * compose: every content of the top image from the newest delta that stores
 * it, as stored bytes (and, recursively, the bases those patches need that A
 * lacks); a content no delta stores is SAME.
 */
async function composeContents(readers: CdimgReader[], contents: ReturnType<typeof contentsOf>, w: CdimgWriter, m: Merged): Promise<void> {
  // a solid group's frame is copied once, where its first member is met; its other members point at the copy
  const groupsCopied = new Map<string, number>();
  const copyStored = async (level: number, blob: Blob): Promise<void> => {
    const key = blob.digest.toString('hex');
    if (m.out.has(key)) return;
    const slot: Blob = { digest: blob.digest, size: blob.size, encoding: blob.encoding, chunks: [] };
    m.out.set(key, slot);
    m.order.push(key);
    for (const c of blob.chunks) {
      const groupKey = c.codec === Codec.GROUP ? `${level}:${c.offset}:${c.storedSize}` : undefined;
      let off = groupKey === undefined ? undefined : groupsCopied.get(groupKey);
      if (off === undefined) {
        off = await w.append(await readers[level].readStored(c));
        if (groupKey !== undefined) groupsCopied.set(groupKey, off);
      }
      slot.chunks.push({ ...c, offset: off });
      if (c.baseDigest.length > 0 && !inA.has(c.baseDigest.toString('hex'))) {
        const b = locate(readers, c.baseDigest.toString('hex'), level);
        if (b) await copyStored(b.level, b.blob);
      }
      // a group coded against bases decodes with every member's record and base: all come along
      if (groupKey !== undefined && blob.encoding === Encoding.PATCH) {
        for (const m of readers[level].groupMembers(c)) {
          const mb = readers[level].blob(m.rawDigest);
          if (mb) await copyStored(level, mb);
        }
      }
    }
  };
  const inA = contentsOfA(readers[0]);
  for (const c of contents) {
    const where = inA.has(c.hex) ? undefined : locate(readers, c.hex, readers.length - 1);
    if (where) {
      await copyStored(where.level, where.blob);
    } else if (!m.out.has(c.hex)) {
      m.out.set(c.hex, { digest: c.digest, size: c.size, encoding: Encoding.SAME, chunks: [] });
      m.order.push(c.hex);
    }
  }
}

/**
 * A composed delta whose stored contents patch one another in a circle cannot be read (a reader
 * looks for a base in the same file first): a content of A patched in a later delta against a
 * content that an earlier delta patched against it (A→B, B→A, A→B). Refused with the way out.
 * A member of a group coded against bases depends on every member's base.
 */
function refuseBaseCycles(m: Merged): void {
  const deps = new Map<string, Set<string>>();
  const groups = new Map<number, string[]>();
  for (const [key, b] of m.out) {
    const d = new Set<string>();
    for (const c of b.chunks) {
      if (c.baseDigest.length > 0) d.add(c.baseDigest.toString('hex'));
      if (c.codec === Codec.GROUP && b.encoding === Encoding.PATCH) groups.set(c.offset, [...(groups.get(c.offset) ?? []), key]);
    }
    deps.set(key, d);
  }
  for (const members of groups.values()) {
    const all = new Set(members.flatMap((k) => [...(deps.get(k) ?? [])]));
    for (const k of members) deps.set(k, all);
  }
  const state = new Map<string, 1 | 2>(); // 1: on the path, 2: done
  const visit = (start: string): void => {
    const stack: [string, Iterator<string>][] = [[start, (deps.get(start) ?? new Set<string>()).values()]];
    state.set(start, 1);
    while (stack.length) {
      const [k, it] = stack[stack.length - 1];
      const n = it.next();
      if (n.done) {
        state.set(k, 2);
        stack.pop();
        continue;
      }
      const next = n.value;
      if (!m.out.has(next) || m.out.get(next)?.encoding === Encoding.SAME) continue; // from the parent image
      const st = state.get(next);
      if (st === 1) throw failedPrecondition(`these deltas go back and forth over the same contents (sha256:${next} is patched against a content patched against it): compose cannot merge them; use --strategy rediff --base A.cdimg`);
      if (st === undefined) {
        state.set(next, 1);
        stack.push([next, (deps.get(next) ?? new Set<string>()).values()]);
      }
    }
  };
  for (const k of m.out.keys()) if (!state.has(k)) visit(k);
}

/** rediff: contents A holds are SAME; every other content is rebuilt through A+deltas and diffed against A. */
async function rediffContents(o: MergeOptions, top: CdimgReader, baseR: CdimgReader, pool: WorkerPool, w: CdimgWriter, m: Merged): Promise<void> {
  const chain = [o.base as string, ...o.deltas];
  const aHas = new Set(baseR.index.blobs.map((b) => b.digest.toString('hex')));
  const finder = new BaseFinder(baseR.index.entries);
  type Coded = { stored: Uint8Array; chunks: Parameters<typeof deltaChunk>[1][] } | { stored: Uint8Array; items: Parameters<typeof deltaChunk>[1][][]; grouped: boolean };
  const window = new OrderedWindow<Coded>(Math.max(2, pool.threads * 3), 256 * 1024 * 1024);
  try {
    const work: { c: ReturnType<typeof contentsOf>[number]; key: string; slot: Blob }[] = [];
    for (const c of contentsOf(top.index.entries)) {
      const key = c.digest.toString('hex');
      if (aHas.has(key)) {
        m.out.set(key, { digest: c.digest, size: c.size, encoding: Encoding.SAME, chunks: [] });
        m.order.push(key);
        continue;
      }
      const slot: Blob = { digest: c.digest, size: c.size, encoding: Encoding.FULL, chunks: [] };
      m.out.set(key, slot);
      m.order.push(key);
      work.push({ c, key, slot });
    }
    // Largest first, as `cdimg diff` stores them, then the groups of small contents as it makes them
    // (deltaGroups, from the index's order): a rediff gives diff(A, last)'s bytes.
    const inIndexOrder = [...work];
    work.sort((a, b) => b.c.size - a.c.size);
    const argsOf = (key: string, base: ReturnType<BaseFinder['find']>): DiffContentArgs => ({
      oldChain: [o.base as string],
      newChain: chain,
      target: key,
      base: base ? base.digest.toString('hex') : '',
      codec: o.codec ?? 'auto',
      level: o.level ?? 'default',
      chunkSize: top.index.chunkSize,
    });
    const alone = async ({ c, key, slot }: (typeof work)[number]): Promise<void> => {
      const base = finder.find(c.paths, c.size);
      await window.push(
        () => pool.run(DELTA_TASKS, 'diffContent', argsOf(key, base)),
        async (r) => {
          if (!('chunks' in r)) throw new Error('diffContent answered for a group');
          let off = await w.append(Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength));
          slot.chunks = r.chunks.map((ch): Chunk => {
            const chunk = deltaChunk(off, ch, base ? base.digest : Buffer.alloc(0));
            off += ch.storedSize;
            return chunk;
          });
          slot.encoding = slot.chunks.some((ch) => ch.codec !== Codec.ZSTD) ? Encoding.PATCH : Encoding.FULL;
        },
        c.size,
      );
    };
    const grouping = (x: (typeof work)[number]): boolean => x.c.size > 0 && x.c.size <= DELTA_GROUP_MEMBER_MAX;
    for (const x of work) if (!grouping(x)) await alone(x);
    for (const g of deltaGroups(inIndexOrder.filter(grouping))) {
      if (g.length === 1) {
        await alone(g[0]);
        continue;
      }
      const items = g.map((x) => ({ ...x, base: finder.find(x.c.paths, x.c.size) }));
      await window.push(
        () => pool.run(DELTA_TASKS, 'diffGroup', { items: items.map((x) => argsOf(x.key, x.base)) }),
        async (r) => {
          if (!('grouped' in r) || r.items.length !== items.length) throw new Error('diffGroup answered for another group');
          let off = await w.append(Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength));
          const encoding = r.grouped && r.items.some((ch) => ch[0].usesBase) ? Encoding.PATCH : Encoding.FULL;
          for (const [k, x] of items.entries()) {
            const base = x.base ? x.base.digest : Buffer.alloc(0);
            if (r.grouped) {
              x.slot.chunks = [deltaChunk(off, r.items[k][0], base)];
              x.slot.encoding = encoding;
              continue;
            }
            x.slot.chunks = r.items[k].map((ch): Chunk => {
              const chunk = deltaChunk(off, ch, base);
              off += ch.storedSize;
              return chunk;
            });
            x.slot.encoding = x.slot.chunks.some((ch) => ch.codec !== Codec.ZSTD) ? Encoding.PATCH : Encoding.FULL;
          }
        },
        items.reduce((n, x) => n + x.c.size, 0),
      );
    }
    await window.flush();
  } catch (e) {
    await window.settle();
    throw e;
  }
}

export async function mergeDeltas(o: MergeOptions): Promise<DeltaSummary> {
  const t0 = process.hrtime.bigint();
  if (o.deltas.length < 2) throw invalidArgument('merge needs at least two deltas (A-B B-C …)');
  const strategy = o.strategy ?? 'compose';
  if (strategy === 'rediff' && !o.base) throw invalidArgument('--strategy rediff needs --base (the full first image)');
  const readers: CdimgReader[] = [];
  let baseR: CdimgReader | undefined;
  let writer: CdimgWriter | undefined;
  // compose needs no worker threads: the pool is loaded only for rediff
  const pool = strategy === 'rediff' ? (o.pool ?? new (require('../workers/pool') as typeof import('../workers/pool')).WorkerPool(o.threads)) : undefined;
  try {
    // opened together: one file's reads overlap another's decoding
    const opened = await Promise.allSettled(o.deltas.map((p) => CdimgReader.open(p)));
    for (const r of opened) if (r.status === 'fulfilled') readers.push(r.value);
    for (const r of opened) if (r.status === 'rejected') throw r.reason;
    for (const r of readers) if (!r.isDelta) throw failedPrecondition(`${r.path} is a full image; merge composes deltas (use \`cdimg diff\` against a full image)`);
    for (let i = 1; i < readers.length; i++) {
      if (readers[i].parentId !== readers[i - 1].imageId) {
        throw failedPrecondition(`${readers[i].path} does not follow ${readers[i - 1].path}: it needs parent ${readers[i].parentId}, but ${readers[i - 1].path} leads to ${readers[i - 1].imageId}`);
      }
    }
    if (o.base) {
      baseR = await CdimgReader.open(o.base);
      if (baseR.isDelta || baseR.imageId !== readers[0].parentId) throw failedPrecondition(`${o.base} is not the full image ${readers[0].parentId} the first delta applies to`);
    }
    await giveTrees(readers, baseR);
    // bases version 5 deltas name by prefix: those the base image or an earlier delta holds get their
    // digests (format/bases.ts); the others are contents of A, and stay prefixes in the merged delta
    for (let i = 0; i < readers.length; i++) resolveBasePrefixes(readers[i].index, [...(baseR ? [baseR.index] : []), ...readers.slice(0, i).map((r) => r.index)]);
    // stored bytes are copied as they are: a version 2 file's are checked against its section digest first
    for (const r of readers) if (r.index.formatVersion >= 2) await r.verifySection();
    const top = readers[readers.length - 1];
    writer = await CdimgWriter.create(o.out);
    const w = writer;
    const merged: Merged = { out: new Map<string, Blob>(), order: [] };

    // without the trees (version 2 deltas and no base) the merged tree is the composed edit script:
    // the contents to look at are those of the entries it inserts (the others are A's)
    const treeEdit = top.hasTree ? undefined : composeEdits(readers.map((r) => r.index.treeEdit as TreeEdit));
    if (strategy === 'compose') {
      await composeContents(readers, contentsOf(treeEdit ? treeEdit.inserted : top.index.entries), w, merged);
      refuseBaseCycles(merged);
    }
    else await rediffContents(o, top, baseR as CdimgReader, pool as WorkerPool, w, merged);
    const { out, order } = merged;

    const index: Index = {
      formatVersion: FORMAT_VERSION,
      kind: Kind.DELTA,
      imageId: top.index.imageId,
      parentId: readers[0].index.parentId,
      image: top.index.image,
      parentImage: readers[0].index.parentImage,
      entries: treeEdit ? [] : top.index.entries,
      blobs: order.map((k) => out.get(k) as Blob),
      chunkSize: top.index.chunkSize,
      treeEdit,
    };
    // Index at MERGE_INDEX_LEVEL, not the writer's 19: a good part of a merge's own work otherwise.
    // A rediff is diff(A, last) and keeps its bytes (the writer's level): servers and tests compare them.
    const fin = await writer.finish(index, {
      indexLevel: strategy === 'compose' ? MERGE_INDEX_LEVEL : undefined,
      parentEntries: baseR?.index.entries,
      // with the base image at hand, bases are named by prefix as diff names them
      basePrefix: baseR ? uniquePrefixes(Array.from(baseR.blobs.values(), (b) => b.digest)) : undefined,
    });
    return summarizeDelta(index, fin.size, baseR?.index.entries, Number(process.hrtime.bigint() - t0) / 1e9, o.out);
  } catch (e) {
    await writer?.abort();
    throw e;
  } finally {
    await Promise.all(readers.map((r) => r.close()));
    await baseR?.close();
    if (pool && !o.pool) await pool.close();
  }
}
