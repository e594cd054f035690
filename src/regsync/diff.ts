/**
 * `registry diff`: one patch that turns an old image set into a new one.
 *
 *  1. Both sets are resolved (documents verified by digest).
 *  2. Layers of the new set that the old set holds (same digest) are
 *     referenced. Others are downloaded, decompressed (diff_id checked) and
 *     split into skeleton and file contents (./tarsplit.ts).
 *  3. Every regular file of the old set is indexed by content digest, path and
 *     name. A new file whose content the old set holds costs nothing (old);
 *     others are encoded by chooseBest against the most likely old file (same
 *     path, then same path or name up to version numbers, then same name) or
 *     as a whole zstd frame.
 *  4. Each skeleton is encoded against the skeleton of the old layer sharing
 *     most paths with it.
 *  5. The original compression is reproduced if possible (./recipe.ts); if
 *     not, the fallback blob's digest is computed now so that apply's rewrite
 *     is known in advance.
 *  6. A layer whose rebuild costs at least its compressed size is shipped
 *     verbatim instead.
 */
import { promises as fsp, createReadStream } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import type { CodecChoice, CodecId, LevelPreset, PatchCodecId } from '../delta/codecs';
import { invalidArgument } from '../errors';
import type { RegistryOptions } from '../oci/registry/options';
import type { ImageSource } from '../oci/types';
import { PatchWriter } from './container';
import { closeSet, ImageSpec, PlatformSelection, resolveSet, SetImage, SetLayer } from './imageset';
import { decompressFile, spoolBlob } from './layerio';
import { RegsyncPool } from './pool';
import { mapLimit } from '../util/ordered';
import type { GzipEncoding } from './worker';
import { describeRecipe, Detection, fallbackRecipe, produceBlob } from './recipe';
import { splitTar, SplitResult } from './tarsplit';
import {
  ContentEntry,
  DiffStats,
  DocEntry,
  LayerEntry,
  NewImage,
  OldImage,
  PATCH_FORMAT,
  PATCH_VERSION,
  PatchIndex,
  RebuiltLayer,
  SourceEntry,
} from './types';

/** Options of {@link diffImageSets}. */
export interface DiffOptions {
  old: ImageSpec[];
  new: ImageSpec[];
  /** Patch file to write. */
  out: string;
  platforms: PlatformSelection;
  /** Credentials and TLS for reading the new set (and the old set unless oldRegistry is given). */
  registry?: RegistryOptions;
  /** Credentials and TLS for reading the old set. */
  oldRegistry?: RegistryOptions;
  /** Effort of the content codecs (default "default"). */
  level?: LevelPreset;
  /** Patch codecs (default "auto"). */
  codec?: CodecChoice;
  /** Layers whose compression cannot be reproduced: rebuilt and rewritten (default), or shipped whole. */
  nonReproducible?: 'rewrite' | 'ship';
  /** Worker threads (default: available parallelism). */
  threads?: number;
  /** Parent of the temp directory (default: $D4FS_TMPDIR or the system temp dir). */
  workDir?: string;
  /** Try the gzip program when detecting recipes (default true). */
  gzipProgram?: boolean;
  /** Progress lines. */
  onProgress?: (message: string) => void;
}

/** What happened to one layer of the new set. */
export interface LayerReport {
  digest: string;
  size: number;
  diffId: string;
  kind: 'referenced' | 'rebuilt' | 'blob';
  /** Images (name:tag) that use it. */
  images: string[];
  /** Bytes this layer adds to the patch (skeleton and contents it introduced, or the blob). */
  patchBytes: number;
  /** Rebuilt layers: whether the original compressed digest is reproduced, and how. */
  reproducible?: boolean;
  recipe?: string;
  /** Rebuilt layers without recipe: why, and the digest apply will give the layer instead. */
  reason?: string;
  rewrittenDigest?: string;
  rewrittenSize?: number;
  /** Why a layer is shipped whole. */
  shipped?: string;
}

/** The savings report of a diff. */
export interface DiffReport {
  patch: string;
  root: string;
  patchBytes: number;
  plainBytes: number;
  dedupBytes: number;
  /** 100 * (1 - patch / plain). */
  percentSaved: number;
  /** 100 * (1 - patch / dedup). */
  percentSavedVsDedup: number;
  /** patch / dedup. */
  ratioVsDedup: number;
  images: { name: string; tag?: string; root: string; manifests: number }[];
  layers: LayerReport[];
  contents: DiffStats['contents'];
  /** Images whose manifests apply will rewrite (compression not reproducible). */
  rewrittenImages: string[];
  seconds: number;
}

/** An old regular file. */
interface OldFile {
  digest: string;
  size: number;
  path: string;
  layer: number;
  offset: number;
}

/** An old layer, spooled and split. */
interface OldLayer {
  diffId: string;
  digest: string;
  tarPath: string;
  tarSize: number;
  skeletonPath?: string;
  skeletonDigest?: string;
  skeletonSize: number;
  paths: Set<string>;
  truncated: boolean;
}

/** A new layer to process. */
interface NewLayer {
  layer: SetLayer;
  source: ImageSource;
  images: string[];
}

/** A new layer being rebuilt. */
interface Rebuild {
  nl: NewLayer;
  blobPath: string;
  tarPath: string;
  split: SplitResult;
  skeletonPath: string;
  detection: Promise<Detection>;
  contentIds: number[];
}

/** A content planned for the patch. */
interface PlannedContent {
  digest: string;
  size: number;
  /** Where the bytes are at diff time. */
  at: { path: string; offset: number };
  old?: OldFile;
  base?: OldFile;
  encoded?: { codec: CodecId | 'gzip'; data: Buffer; gzip?: GzipEncoding };
}

/**
 * A layer whose compression cannot be reproduced is rebuilt (and its
 * manifests rewritten) only when that costs at most this fraction of the
 * blob; otherwise the blob travels whole and the manifests stay identical.
 */
export const REWRITE_MAX_COST = 0.5;

const hexOf = (d: string): string => d.slice(7);
/** Whether an encoding needs its base at apply time. */
const usesBase = (e: NonNullable<PlannedContent['encoded']>): boolean => (e.codec === 'gzip' ? !!e.gzip?.usesBase : e.codec !== 'zstd');
const stemOf = (p: string): string => p.replace(/[0-9]+/g, '#');
const baseName = (p: string): string => p.slice(p.lastIndexOf('/') + 1);

/** Bytes of a document list, counting each digest once. */
function uniqueBytes(items: { digest: string; size: number }[]): number {
  const seen = new Map<string, number>();
  for (const i of items) seen.set(i.digest, i.size);
  let n = 0;
  for (const v of seen.values()) n += v;
  return n;
}

/** Digest and size of what a recipe makes from a tar. */
async function producedDigest(recipe: ReturnType<typeof fallbackRecipe>, tarPath: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of produceBlob(recipe, tarPath)) {
    h.update(c);
    size += c.length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

const imageLabel = (s: ImageSpec): string => `${s.name}${s.tag ? ':' + s.tag : ''}`;

/**
 * Make a patch carrying everything the new set needs beyond the old set.
 * Returns the savings report.
 */
export async function diffImageSets(opts: DiffOptions): Promise<DiffReport> {
  const started = Date.now();
  if (opts.new.length === 0) throw invalidArgument('the new set is empty');
  const targets = new Set<string>();
  for (const s of opts.new) {
    const key = `${s.name}:${s.tag ?? ''}`;
    if (targets.has(key)) throw invalidArgument(`two images of the new set would be pushed as ${s.name}${s.tag ? ':' + s.tag : ''}; name them apart ("REF NAME:TAG")`);
    targets.add(key);
  }
  const level = opts.level ?? 'default';
  const codec = opts.codec ?? 'auto';
  const progress = opts.onProgress ?? (() => undefined);
  const tmp = await fsp.mkdtemp(path.join(opts.workDir ?? process.env.D4FS_TMPDIR ?? os.tmpdir(), 'd4fs-regdiff-'));
  const pool = new RegsyncPool(opts.threads);
  let oldSet: SetImage[] = [];
  let newSet: SetImage[] = [];
  let writer: PatchWriter | undefined;
  try {
    progress(`resolving ${opts.old.length} old and ${opts.new.length} new images`);
    oldSet = await resolveSet(opts.old, opts.platforms, opts.oldRegistry ?? opts.registry ?? {});
    newSet = await resolveSet(opts.new, opts.platforms, opts.registry ?? {});

    // ---- layers of both sets
    const oldLayers = new Map<string, { layer: SetLayer; source: ImageSource }>();
    for (const img of oldSet) for (const m of img.manifests) for (const l of m.layers) if (!oldLayers.has(l.desc.digest)) oldLayers.set(l.desc.digest, { layer: l, source: img.source });
    const newLayers = new Map<string, NewLayer>();
    for (const img of newSet) {
      for (const m of img.manifests) {
        for (const l of m.layers) {
          const e = newLayers.get(l.desc.digest) ?? { layer: l, source: img.source, images: [] };
          if (!e.images.includes(imageLabel(img.spec))) e.images.push(imageLabel(img.spec));
          newLayers.set(l.desc.digest, e);
        }
      }
    }
    const toRebuild = [...newLayers.values()].filter((nl) => !oldLayers.has(nl.layer.desc.digest) && nl.layer.compression !== undefined);

    // ---- old layers: spool, split, index
    const olds: OldLayer[] = [];
    const byDigest = new Map<string, OldFile>();
    const byPath = new Map<string, OldFile[]>();
    const byStem = new Map<string, OldFile[]>();
    const byName = new Map<string, OldFile[]>();
    const byNameStem = new Map<string, OldFile[]>();
    const add = (m: Map<string, OldFile[]>, k: string, f: OldFile): void => {
      const l = m.get(k);
      if (l) l.push(f);
      else m.set(k, [f]);
    };
    if (toRebuild.length > 0) {
      await fsp.mkdir(path.join(tmp, 'old'));
      const seenDiffIds = new Set<string>();
      let n = 0;
      for (const { layer, source } of oldLayers.values()) {
        if (layer.compression === undefined || seenDiffIds.has(layer.diffId)) continue;
        seenDiffIds.add(layer.diffId);
        n++;
        progress(`reading old layer ${n} ${layer.desc.digest.slice(7, 19)} (${layer.desc.size} bytes)`);
        const base = path.join(tmp, 'old', hexOf(layer.diffId));
        const blobPath = `${base}.blob`;
        const what = `${source.description}: layer ${layer.desc.digest.slice(0, 19)}`;
        await spoolBlob(source, layer.desc, blobPath, what);
        await decompressFile(blobPath, layer.compression, layer.diffId, `${base}.tar`, what);
        await fsp.rm(blobPath);
        const split = await splitTar(createReadStream(`${base}.tar`, { highWaterMark: 1 << 20 }));
        const idx = olds.length;
        const ol: OldLayer = {
          diffId: layer.diffId,
          digest: layer.desc.digest,
          tarPath: `${base}.tar`,
          tarSize: split.size,
          skeletonSize: split.skeleton.length,
          paths: new Set(split.files.map((f) => f.path)),
          truncated: split.truncated,
        };
        if (!split.truncated) {
          ol.skeletonPath = `${base}.skel`;
          ol.skeletonDigest = `sha256:${createHash('sha256').update(split.skeleton).digest('hex')}`;
          await fsp.writeFile(ol.skeletonPath, split.skeleton);
        }
        olds.push(ol);
        for (const f of split.files) {
          const of: OldFile = { digest: f.digest, size: f.size, path: f.path, layer: idx, offset: f.offset };
          if (!byDigest.has(f.digest)) byDigest.set(f.digest, of);
          add(byPath, f.path, of);
          add(byStem, stemOf(f.path), of);
          add(byName, baseName(f.path), of);
          add(byNameStem, stemOf(baseName(f.path)), of);
        }
      }
    }

    // ---- new layers: spool, split, start recipe detection
    await fsp.mkdir(path.join(tmp, 'new'));
    const rebuilds: Rebuild[] = [];
    for (const [i, nl] of toRebuild.entries()) {
      const l = nl.layer;
      progress(`reading new layer ${i + 1}/${toRebuild.length} ${l.desc.digest.slice(7, 19)} (${l.desc.size} bytes)`);
      const base = path.join(tmp, 'new', hexOf(l.desc.digest));
      const what = `${nl.source.description}: layer ${l.desc.digest.slice(0, 19)}`;
      await spoolBlob(nl.source, l.desc, `${base}.blob`, what);
      await decompressFile(`${base}.blob`, l.compression as 'gzip', l.diffId, `${base}.tar`, what);
      const split = await splitTar(createReadStream(`${base}.tar`, { highWaterMark: 1 << 20 }));
      await fsp.writeFile(`${base}.skel`, split.skeleton);
      const detection = pool.detect({ blobPath: `${base}.blob`, tarPath: `${base}.tar`, compression: l.compression as 'gzip', gzipProgram: opts.gzipProgram });
      detection.catch(() => undefined); // awaited below
      rebuilds.push({ nl, blobPath: `${base}.blob`, tarPath: `${base}.tar`, split, skeletonPath: `${base}.skel`, detection, contentIds: [] });
    }

    // ---- plan contents
    const planned: PlannedContent[] = [];
    const plannedByDigest = new Map<string, number>();
    const pickBase = (p: string, size: number): OldFile | undefined => {
      const lists = [byPath.get(p), byStem.get(stemOf(p)), byName.get(baseName(p)), byNameStem.get(stemOf(baseName(p)))];
      for (const list of lists) {
        if (!list || list.length === 0) continue;
        let best = list[0];
        for (const f of list) if (Math.abs(f.size - size) < Math.abs(best.size - size)) best = f;
        return best;
      }
      return undefined;
    };
    for (const rb of rebuilds) {
      if (rb.split.truncated) continue;
      for (const f of rb.split.files) {
        let id = plannedByDigest.get(f.digest);
        if (id === undefined) {
          id = planned.length;
          const old = byDigest.get(f.digest);
          planned.push({ digest: f.digest, size: f.size, at: { path: rb.tarPath, offset: f.offset }, old, base: old ? undefined : pickBase(f.path, f.size) });
          plannedByDigest.set(f.digest, id);
        }
        rb.contentIds.push(id);
      }
    }
    const toEncode = planned.filter((p) => !p.old);
    progress(`encoding ${toEncode.length} file contents (${planned.length - toEncode.length} found in the old set)`);
    await mapLimit(toEncode, pool.threads * 2, async (p) => {
      const r = await pool.encode({
        target: { path: p.at.path, offset: p.at.offset, size: p.size },
        base: p.base ? { path: olds[p.base.layer].tarPath, offset: p.base.offset, size: p.base.size } : undefined,
        codec,
        level,
        gzip: opts.gzipProgram !== false,
      });
      p.encoded = { codec: r.codec, data: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength), gzip: r.gzip };
    });

    // ---- skeletons
    const skeletonBase = (rb: Rebuild): number | undefined => {
      let best: number | undefined;
      let bestScore = 0;
      olds.forEach((ol, i) => {
        if (!ol.skeletonPath) return;
        let score = 0;
        for (const f of rb.split.files) if (ol.paths.has(f.path)) score++;
        if (score > bestScore) {
          best = i;
          bestScore = score;
        }
      });
      return best;
    };
    const skeletons = await mapLimit(rebuilds, pool.threads, async (rb) => {
      if (rb.split.truncated) return undefined;
      const b = skeletonBase(rb);
      const r = await pool.encode({
        target: { path: rb.skeletonPath, offset: 0, size: rb.split.skeleton.length },
        base: b !== undefined ? { path: olds[b].skeletonPath as string, offset: 0, size: olds[b].skeletonSize } : undefined,
        codec: 'zstd',
        level: level === 'fast' ? 'default' : level,
      });
      const skCodec = r.codec as CodecId;
      return { base: skCodec === 'zstd' ? undefined : b, codec: skCodec, data: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength) };
    });

    // ---- decide per layer
    progress('checking how the layers were compressed');
    const owner = new Map<number, Rebuild>(); // planned content -> first rebuilt layer using it
    const decisions = new Map<string, { kind: 'rebuilt' | 'blob'; detection?: Detection; fallback?: { digest: string; size: number }; shipped?: string; cost: number }>();
    for (const [ri, rb] of rebuilds.entries()) {
      const digest = rb.nl.layer.desc.digest;
      const size = rb.nl.layer.desc.size;
      let detection: Detection;
      try {
        detection = await rb.detection;
      } catch (e) {
        detection = { reproducible: false, reason: `recipe detection failed: ${(e as Error).message}`, tried: 0 };
      }
      const sk = skeletons[ri];
      if (rb.split.truncated || !sk) {
        decisions.set(digest, { kind: 'blob', detection, shipped: 'the layer tar ends inside a file', cost: size });
        continue;
      }
      let cost = sk.data.length + 200;
      const mine: number[] = [];
      for (const id of rb.contentIds) {
        if (owner.has(id)) continue;
        mine.push(id);
        const p = planned[id];
        cost += (p.encoded?.data.length ?? 0) + 80;
      }
      if (!detection.reproducible && opts.nonReproducible === 'ship') {
        decisions.set(digest, { kind: 'blob', detection, shipped: 'compression not reproducible (--non-reproducible ship)', cost: size });
        continue;
      }
      if (cost >= size) {
        decisions.set(digest, { kind: 'blob', detection, shipped: `rebuilding would cost ${cost} bytes, the blob has ${size}`, cost: size });
        continue;
      }
      if (!detection.reproducible && cost > REWRITE_MAX_COST * size) {
        decisions.set(digest, {
          kind: 'blob',
          detection,
          shipped: `compression not reproducible and rebuilding would only save ${Math.round(100 * (1 - cost / size))}% (keeps the manifest identical)`,
          cost: size,
        });
        continue;
      }
      for (const id of mine) owner.set(id, rb);
      let fallback: { digest: string; size: number } | undefined;
      if (!detection.reproducible) fallback = await producedDigest(fallbackRecipe(rb.nl.layer.compression as 'gzip'), rb.tarPath);
      decisions.set(digest, { kind: 'rebuilt', detection, fallback, cost });
    }

    // ---- contents and sources actually used
    const used = new Set<number>();
    for (const rb of rebuilds) if (decisions.get(rb.nl.layer.desc.digest)?.kind === 'rebuilt') for (const id of rb.contentIds) used.add(id);
    const contents: ContentEntry[] = [];
    const contentIndex = new Map<string, number>(); // digest -> index in contents
    const oldNeeded = new Map<string, OldFile>();
    for (const id of used) {
      const p = planned[id];
      if (p.old) oldNeeded.set(p.digest, p.old);
      else if (p.encoded && usesBase(p.encoded) && p.base) oldNeeded.set(p.base.digest, byDigest.get(p.base.digest) as OldFile);
    }
    // Old contents first (patch bases must come before the patches), grouped per source layer.
    const perLayer = new Map<number, OldFile[]>();
    for (const f of oldNeeded.values()) {
      const l = perLayer.get(f.layer);
      if (l) l.push(f);
      else perLayer.set(f.layer, [f]);
    }
    const sources: SourceEntry[] = [];
    const sourceOf = new Map<number, number>(); // old layer -> source index
    const ensureSource = (layer: number): number => {
      let s = sourceOf.get(layer);
      if (s === undefined) {
        s = sources.length;
        const ol = olds[layer];
        sources.push({ diffId: ol.diffId, digest: ol.digest, tarSize: ol.tarSize, extract: [] });
        sourceOf.set(layer, s);
      }
      return s;
    };
    for (const [layer, files] of perLayer) {
      const s = ensureSource(layer);
      files.sort((a, b) => a.offset - b.offset);
      for (const f of files) {
        contentIndex.set(f.digest, contents.length);
        sources[s].extract.push([f.offset, contents.length]);
        contents.push({ digest: f.digest, size: f.size, enc: 'old' });
      }
    }

    // ---- write the patch
    await fsp.mkdir(path.dirname(path.resolve(opts.out)), { recursive: true });
    writer = new PatchWriter(path.join(tmp, 'payloads.spool'));
    const stats: DiffStats = {
      plainBytes: 0,
      dedupBytes: 0,
      layers: { referenced: 0, rebuilt: 0, blob: 0, reproducible: 0, notReproducible: 0 },
      contents: { old: 0, patched: 0, full: 0, oldBytes: 0, patchedBytes: 0, fullBytes: 0, encodedBytes: 0 },
    };
    const docs: DocEntry[] = [];
    const docSeen = new Set<string>();
    const addDoc = (role: DocEntry['role'], digest: string, mediaType: string, bytes: Buffer): void => {
      if (docSeen.has(digest)) return;
      docSeen.add(digest);
      docs.push({ role, digest, mediaType, size: bytes.length, payload: writer!.addBuffer(bytes) });
    };
    const images: NewImage[] = [];
    const allNewBlobs: { digest: string; size: number }[] = [];
    const dedupBlobs: { digest: string; size: number }[] = [];
    const oldBlobDigests = new Set<string>();
    for (const img of oldSet) {
      for (const m of img.manifests) {
        oldBlobDigests.add(m.configDesc.digest);
        for (const l of m.layers) oldBlobDigests.add(l.desc.digest);
      }
    }
    for (const img of newSet) {
      for (const ix of img.indexes) {
        addDoc('index', ix.digest, ix.mediaType, ix.bytes);
        allNewBlobs.push({ digest: ix.digest, size: ix.bytes.length });
        dedupBlobs.push({ digest: ix.digest, size: ix.bytes.length });
      }
      for (const m of img.manifests) {
        addDoc('manifest', m.doc.digest, m.doc.mediaType, m.doc.bytes);
        addDoc('config', m.configDesc.digest, m.configDesc.mediaType, m.configBytes);
        allNewBlobs.push({ digest: m.doc.digest, size: m.doc.bytes.length }, { digest: m.configDesc.digest, size: m.configBytes.length });
        dedupBlobs.push({ digest: m.doc.digest, size: m.doc.bytes.length });
        if (!oldBlobDigests.has(m.configDesc.digest)) dedupBlobs.push({ digest: m.configDesc.digest, size: m.configBytes.length });
        for (const l of m.layers) {
          allNewBlobs.push({ digest: l.desc.digest, size: l.desc.size });
          if (!oldBlobDigests.has(l.desc.digest)) dedupBlobs.push({ digest: l.desc.digest, size: l.desc.size });
        }
      }
      images.push({ name: img.spec.name, tag: img.spec.tag, ref: img.spec.ref, root: img.top.digest });
    }
    stats.plainBytes = uniqueBytes(allNewBlobs);
    stats.dedupBytes = uniqueBytes(dedupBlobs);

    // contents encoded for the patch (after the old ones)
    for (const id of [...used].sort((a, b) => a - b)) {
      const p = planned[id];
      if (p.old) {
        stats.contents.old++;
        stats.contents.oldBytes += p.size;
        continue;
      }
      const enc = p.encoded as NonNullable<PlannedContent['encoded']>;
      const payload = writer.addBuffer(enc.data);
      contentIndex.set(p.digest, contents.length);
      stats.contents.encodedBytes += enc.data.length;
      if (enc.codec === 'gzip') {
        const g = enc.gzip as GzipEncoding;
        const entry: ContentEntry = { digest: p.digest, size: p.size, enc: 'gzip', gzip: g.recipe, inner: g.inner, payload };
        if (g.usesBase) {
          entry.base = contentIndex.get((p.base as OldFile).digest) as number;
          if (g.baseInflate) entry.baseInflate = true;
          stats.contents.patched++;
          stats.contents.patchedBytes += p.size;
        } else {
          stats.contents.full++;
          stats.contents.fullBytes += p.size;
        }
        contents.push(entry);
      } else if (enc.codec === 'zstd') {
        stats.contents.full++;
        stats.contents.fullBytes += p.size;
        contents.push({ digest: p.digest, size: p.size, enc: 'zstd', payload });
      } else {
        stats.contents.patched++;
        stats.contents.patchedBytes += p.size;
        contents.push({ digest: p.digest, size: p.size, enc: enc.codec as PatchCodecId, base: contentIndex.get((p.base as OldFile).digest) as number, payload });
      }
    }

    const layers: LayerEntry[] = [];
    const layerReports: LayerReport[] = [];
    const rebuildOf = new Map(rebuilds.map((rb, i) => [rb.nl.layer.desc.digest, i]));
    const rewritten = new Set<string>();
    for (const nl of newLayers.values()) {
      const l = nl.layer;
      const base = { digest: l.desc.digest, size: l.desc.size, mediaType: l.desc.mediaType, diffId: l.diffId };
      const rep: LayerReport = { digest: l.desc.digest, size: l.desc.size, diffId: l.diffId, kind: 'referenced', images: nl.images, patchBytes: 0 };
      layerReports.push(rep);
      if (oldLayers.has(l.desc.digest)) {
        layers.push({ ...base, kind: 'referenced' });
        stats.layers.referenced++;
        continue;
      }
      const ri = rebuildOf.get(l.desc.digest);
      const d = ri !== undefined ? decisions.get(l.desc.digest) : undefined;
      if (ri === undefined || !d || d.kind === 'blob') {
        const blobPath = ri !== undefined ? rebuilds[ri].blobPath : path.join(tmp, 'new', `${hexOf(l.desc.digest)}.blob`);
        if (ri === undefined) await spoolBlob(nl.source, l.desc, blobPath, `${nl.source.description}: blob ${l.desc.digest.slice(0, 19)}`);
        layers.push({ ...base, kind: 'blob', payload: writer.addFile(blobPath, l.desc.size, l.desc.digest) });
        stats.layers.blob++;
        rep.kind = 'blob';
        rep.patchBytes = l.desc.size;
        rep.shipped = d?.shipped ?? `media type ${l.desc.mediaType} is not a layer d4fs rebuilds`;
        continue;
      }
      const rb = rebuilds[ri];
      const sk = skeletons[ri] as NonNullable<(typeof skeletons)[number]>;
      const skSource = sk.base !== undefined ? ensureSource(sk.base) : undefined;
      if (skSource !== undefined) {
        const ol = olds[sk.base as number];
        sources[skSource].skeletonDigest = ol.skeletonDigest;
        sources[skSource].skeletonSize = ol.skeletonSize;
      }
      const detection = d.detection as Detection;
      const entry: RebuiltLayer = {
        ...base,
        kind: 'rebuilt',
        tarSize: rb.split.size,
        skeleton: {
          size: rb.split.skeleton.length,
          digest: `sha256:${createHash('sha256').update(rb.split.skeleton).digest('hex')}`,
          codec: sk.codec,
          base: skSource,
          payload: writer.addBuffer(sk.data),
        },
        runs: rb.split.rawRuns,
        files: rb.contentIds.map((id) => contentIndex.get(planned[id].digest) as number),
      };
      if (skSource === undefined) delete entry.skeleton.base;
      stats.layers.rebuilt++;
      rep.kind = 'rebuilt';
      rep.patchBytes = d.cost;
      if (detection.reproducible) {
        entry.recipe = detection.recipe;
        stats.layers.reproducible++;
        rep.reproducible = true;
        rep.recipe = describeRecipe(detection.recipe);
      } else {
        const fb = d.fallback as { digest: string; size: number };
        const recipe = fallbackRecipe(l.compression as 'gzip');
        entry.fallback = { recipe, digest: fb.digest, size: fb.size, reason: detection.reason };
        stats.layers.notReproducible++;
        rep.reproducible = false;
        rep.reason = detection.reason;
        rep.recipe = describeRecipe(recipe);
        rep.rewrittenDigest = fb.digest;
        rep.rewrittenSize = fb.size;
        for (const im of nl.images) rewritten.add(im);
      }
      layers.push(entry);
    }

    const oldImages: OldImage[] = oldSet.map((img) => ({ name: img.spec.name, tag: img.spec.tag, ref: img.spec.ref, digest: img.top.digest }));
    const index: Omit<PatchIndex, 'payloads'> = {
      format: PATCH_FORMAT,
      version: PATCH_VERSION,
      created: new Date().toISOString(),
      platforms: opts.platforms === 'all' ? 'all' : opts.platforms.map((p) => `${p.os}/${p.architecture}${p.variant ? '/' + p.variant : ''}`),
      old: oldImages,
      images,
      docs,
      layers,
      contents,
      sources,
      stats,
    };
    progress('writing the patch');
    const { root, size } = await writer.finish(index, opts.out);
    writer = undefined;
    const pct = (a: number, b: number): number => (b > 0 ? Math.round(1000 * (1 - a / b)) / 10 : 0);
    return {
      patch: opts.out,
      root,
      patchBytes: size,
      plainBytes: stats.plainBytes,
      dedupBytes: stats.dedupBytes,
      percentSaved: pct(size, stats.plainBytes),
      percentSavedVsDedup: pct(size, stats.dedupBytes),
      ratioVsDedup: stats.dedupBytes > 0 ? Math.round((10000 * size) / stats.dedupBytes) / 10000 : 0,
      images: newSet.map((img) => ({ name: img.spec.name, tag: img.spec.tag, root: img.top.digest, manifests: img.manifests.length })),
      layers: layerReports,
      contents: stats.contents,
      rewrittenImages: [...rewritten],
      seconds: Math.round((Date.now() - started) / 100) / 10,
    };
  } finally {
    if (writer) await writer.abort().catch(() => undefined);
    await pool.close().catch(() => undefined);
    await closeSet(oldSet);
    await closeSet(newSet);
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

