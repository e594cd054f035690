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
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import type { CodecChoice, LevelPreset, PatchCodecId } from '../delta/codecs';
import { invalidArgument } from '../errors';
import type { RegistryOptions } from '../oci/registry/options';
import { PatchWriter } from './container';
import { closeSet, ImageSpec, PlatformSelection, resolveSet, SetImage } from './imageset';
import { spoolBlob } from './layerio';
import { RegsyncPool } from './pool';
import type { GzipEncoding } from './tasks';
import { describeRecipe, Detection, fallbackRecipe, hasPayload } from './recipe';
import {
  collectLayers,
  decideLayers,
  emptyOldIndex,
  EncodedSkeleton,
  encodeContents,
  encodeSkeletons,
  hexOf,
  LayerDecision,
  NewLayer,
  OldFile,
  OldIndex,
  OldLayer,
  OldSetLayer,
  PlannedContent,
  planContents,
  readNewLayers,
  readOldLayers,
  Rebuild,
} from './diff-read';
import {
  ContentEntry,
  DiffStats,
  DocEntry,
  isWrapperEnc,
  LayerEntry,
  NewImage,
  OldImage,
  PATCH_FORMAT,
  PATCH_VERSION,
  PATCH_VERSION_BITCODE,
  PATCH_VERSION_RECORDS,
  PatchIndex,
  RebuiltLayer,
  SourceEntry,
  type WrapperEnc,
} from './types';

export { REWRITE_MAX_COST } from './diff-read';

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
  /** Try Go's and klauspost's encoders when detecting recipes (default true). */
  goEncoders?: boolean;
  /** Make a deflate reconstruction record for gzip layers no encoder reproduces (default true; false: such layers are rewritten). */
  records?: boolean;
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

/** Whether an encoding needs its base at apply time. */
const usesBase = (e: NonNullable<PlannedContent['encoded']>): boolean => (e.codec === 'gzip' ? !!e.gzip?.usesBase : isWrapperEnc(e.codec) ? !!e.usesBase : e.codec !== 'zstd');

/** Bytes of a document list, counting each digest once. */
function uniqueBytes(items: { digest: string; size: number }[]): number {
  const seen = new Map<string, number>();
  for (const i of items) seen.set(i.digest, i.size);
  let n = 0;
  for (const v of seen.values()) n += v;
  return n;
}

/** The contents and old-layer sources of the patch, as they are filled in. */
interface PatchTables {
  olds: OldLayer[];
  /** Planned contents that rebuilt layers use. */
  used: Set<number>;
  contents: ContentEntry[];
  /** digest -> index in contents */
  contentIndex: Map<string, number>;
  sources: SourceEntry[];
  /** old layer -> source index */
  sourceOf: Map<number, number>;
}

/** The source entry reading an old layer, added on first use. */
function ensureSource(t: PatchTables, layer: number): number {
  let s = t.sourceOf.get(layer);
  if (s === undefined) {
    s = t.sources.length;
    const ol = t.olds[layer];
    t.sources.push({ diffId: ol.diffId, digest: ol.digest, tarSize: ol.tarSize, extract: [] });
    t.sourceOf.set(layer, s);
  }
  return s;
}

/**
 * Phase: the contents the rebuilt layers use, and first the old ones they
 * need (found in the old set or bases of patches), grouped per source layer.
 */
function collectOldContents(rebuilds: Rebuild[], decisions: Map<string, LayerDecision>, planned: PlannedContent[], index: OldIndex): PatchTables {
  const { olds, byDigest } = index;
  const used = new Set<number>();
  for (const rb of rebuilds) if (decisions.get(rb.nl.layer.desc.digest)?.kind === 'rebuilt') for (const id of rb.contentIds) used.add(id);
  const t: PatchTables = { olds, used, contents: [], contentIndex: new Map(), sources: [], sourceOf: new Map() };
  const { contents, contentIndex, sources } = t;
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
  for (const [layer, files] of perLayer) {
    const s = ensureSource(t, layer);
    files.sort((a, b) => a.offset - b.offset);
    for (const f of files) {
      contentIndex.set(f.digest, contents.length);
      sources[s].extract.push([f.offset, contents.length]);
      contents.push({ digest: f.digest, size: f.size, enc: 'old' });
    }
  }
  return t;
}

/** Phase: the documents of the new set into the patch; the plain and dedup byte counts into stats. */
function addDocuments(writer: PatchWriter, oldSet: SetImage[], newSet: SetImage[], stats: DiffStats): { docs: DocEntry[]; images: NewImage[] } {
  const docs: DocEntry[] = [];
  const docSeen = new Set<string>();
  const addDoc = (role: DocEntry['role'], digest: string, mediaType: string, bytes: Buffer): void => {
    if (docSeen.has(digest)) return;
    docSeen.add(digest);
    docs.push({ role, digest, mediaType, size: bytes.length, payload: writer.addBuffer(bytes) });
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
  return { docs, images };
}

/** Phase: the contents encoded for the patch, after the old ones (in plan order). */
function addEncodedContents(writer: PatchWriter, t: PatchTables, planned: PlannedContent[], stats: DiffStats): void {
  const { contents, contentIndex } = t;
  for (const id of [...t.used].sort((a, b) => a - b)) {
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
    const baseOf = (): number => contentIndex.get((p.base as OldFile).digest) as number;
    // a content of its own or a patch: counted as such in the stats
    const count = (patched: boolean): void => {
      if (patched) {
        stats.contents.patched++;
        stats.contents.patchedBytes += p.size;
      } else {
        stats.contents.full++;
        stats.contents.fullBytes += p.size;
      }
    };
    if (enc.codec === 'gzip' || isWrapperEnc(enc.codec)) {
      // encoded through what the file holds (a .gz file's content, an archive's members, bitcode's values)
      const g = enc.codec === 'gzip' ? (enc.gzip as GzipEncoding) : undefined;
      const entry: ContentEntry = g ? { digest: p.digest, size: p.size, enc: 'gzip', gzip: g.recipe, inner: g.inner, payload } : { digest: p.digest, size: p.size, enc: enc.codec as WrapperEnc, payload };
      const patched = g ? g.usesBase : !!enc.usesBase;
      if (patched) entry.base = baseOf();
      if (g?.usesBase && g.baseInflate && entry.enc === 'gzip') entry.baseInflate = true;
      count(patched);
      contents.push(entry);
    } else if (enc.codec === 'zstd') {
      count(false);
      contents.push({ digest: p.digest, size: p.size, enc: 'zstd', payload });
    } else {
      count(true);
      contents.push({ digest: p.digest, size: p.size, enc: enc.codec as PatchCodecId, base: baseOf(), payload });
    }
  }
}

/** What the layer phase reads: the plan and encodings of the phases before. */
interface LayerInputs {
  tmp: string;
  oldLayers: Map<string, OldSetLayer>;
  newLayers: Map<string, NewLayer>;
  rebuilds: Rebuild[];
  skeletons: EncodedSkeleton[];
  decisions: Map<string, LayerDecision>;
  planned: PlannedContent[];
}

/** The patch entry of a rebuilt layer (its skeleton written), filling in its report. */
function rebuiltLayerEntry(writer: PatchWriter, t: PatchTables, inp: LayerInputs, ri: number, d: LayerDecision, rep: LayerReport, stats: DiffStats, rewritten: Set<string>): RebuiltLayer {
  const rb = inp.rebuilds[ri];
  const nl = rb.nl;
  const l = nl.layer;
  const base = { digest: l.desc.digest, size: l.desc.size, mediaType: l.desc.mediaType, diffId: l.diffId };
  const sk = inp.skeletons[ri] as NonNullable<EncodedSkeleton>;
  const skSource = sk.base !== undefined ? ensureSource(t, sk.base) : undefined;
  if (skSource !== undefined) {
    const ol = t.olds[sk.base as number];
    t.sources[skSource].skeletonDigest = ol.skeletonDigest;
    t.sources[skSource].skeletonSize = ol.skeletonSize;
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
    files: rb.contentIds.map((id) => t.contentIndex.get(inp.planned[id].digest) as number),
  };
  if (skSource === undefined) delete entry.skeleton.base;
  stats.layers.rebuilt++;
  rep.kind = 'rebuilt';
  rep.patchBytes = d.cost;
  if (detection.reproducible) {
    const r = detection.recipe;
    entry.recipe = hasPayload(r) ? { ...r, payload: writer.addBuffer(r.record as Buffer) } : r;
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
  return entry;
}

/** Phase: one entry per layer of the new set (referenced, blob written whole, or rebuilt) and its report. */
async function addLayers(
  writer: PatchWriter,
  t: PatchTables,
  inp: LayerInputs,
  stats: DiffStats,
): Promise<{ layers: LayerEntry[]; layerReports: LayerReport[]; rewritten: Set<string> }> {
  const { tmp, oldLayers, newLayers, rebuilds, decisions } = inp;
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
    layers.push(rebuiltLayerEntry(writer, t, inp, ri, d, rep, stats, rewritten));
  }
  return { layers, layerReports, rewritten };
}

/** The savings report of a written patch. */
function diffReport(
  out: string,
  written: { root: string; size: number },
  stats: DiffStats,
  newSet: SetImage[],
  layerReports: LayerReport[],
  rewritten: Set<string>,
  started: number,
): DiffReport {
  const { root, size } = written;
  const pct = (a: number, b: number): number => (b > 0 ? Math.round(1000 * (1 - a / b)) / 10 : 0);
  return {
    patch: out,
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
}

/** The new set must not push two images to one name:tag. */
function checkTargets(specs: ImageSpec[]): void {
  if (specs.length === 0) throw invalidArgument('the new set is empty');
  const targets = new Set<string>();
  for (const s of specs) {
    const key = `${s.name}:${s.tag ?? ''}`;
    if (targets.has(key)) throw invalidArgument(`two images of the new set would be pushed as ${s.name}${s.tag ? ':' + s.tag : ''}; name them apart ("REF NAME:TAG")`);
    targets.add(key);
  }
}

/**
 * Make a patch carrying everything the new set needs beyond the old set.
 * Returns the savings report.
 */
export async function diffImageSets(opts: DiffOptions): Promise<DiffReport> {
  const started = Date.now();
  checkTargets(opts.new);
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

    // ---- read, plan and encode (./diff-read.ts)
    const { oldLayers, newLayers, toRebuild } = collectLayers(oldSet, newSet);
    const oldIndex = emptyOldIndex();
    if (toRebuild.length > 0) await readOldLayers(oldLayers, tmp, progress, oldIndex);
    const rebuilds = await readNewLayers(toRebuild, tmp, pool, { gzipProgram: opts.gzipProgram, goEncoders: opts.goEncoders, records: opts.records }, progress);
    const planned = planContents(rebuilds, oldIndex);
    await encodeContents(planned, oldIndex.olds, pool, { codec, level, gzipProgram: opts.gzipProgram }, progress);
    const skeletons = await encodeSkeletons(rebuilds, oldIndex.olds, pool, level);
    const decisions = await decideLayers(rebuilds, skeletons, planned, opts.nonReproducible, progress);
    const tables = collectOldContents(rebuilds, decisions, planned, oldIndex);

    // ---- write the patch
    await fsp.mkdir(path.dirname(path.resolve(opts.out)), { recursive: true });
    writer = new PatchWriter(path.join(tmp, 'payloads.spool'));
    const stats: DiffStats = {
      plainBytes: 0,
      dedupBytes: 0,
      layers: { referenced: 0, rebuilt: 0, blob: 0, reproducible: 0, notReproducible: 0 },
      contents: { old: 0, patched: 0, full: 0, oldBytes: 0, patchedBytes: 0, fullBytes: 0, encodedBytes: 0 },
    };
    const { docs, images } = addDocuments(writer, oldSet, newSet, stats);
    addEncodedContents(writer, tables, planned, stats);
    const { layers, layerReports, rewritten } = await addLayers(writer, tables, { tmp, oldLayers, newLayers, rebuilds, skeletons, decisions, planned }, stats);

    const oldImages: OldImage[] = oldSet.map((img) => ({ name: img.spec.name, tag: img.spec.tag, ref: img.spec.ref, digest: img.top.digest }));
    const index: Omit<PatchIndex, 'payloads'> = {
      format: PATCH_FORMAT,
      version: tables.contents.some((c) => c.enc === 'llvm-bitcode') ? PATCH_VERSION_BITCODE : layers.some((l) => l.kind === 'rebuilt' && hasPayload(l.recipe)) ? PATCH_VERSION_RECORDS : PATCH_VERSION,
      created: new Date().toISOString(),
      platforms: opts.platforms === 'all' ? 'all' : opts.platforms.map((p) => `${p.os}/${p.architecture}${p.variant ? '/' + p.variant : ''}`),
      old: oldImages,
      images,
      docs,
      layers,
      contents: tables.contents,
      sources: tables.sources,
      stats,
    };
    progress('writing the patch');
    const written = await writer.finish(index, opts.out);
    writer = undefined;
    return diffReport(opts.out, written, stats, newSet, layerReports, rewritten, started);
  } finally {
    if (writer) await writer.abort().catch(() => undefined);
    await pool.close().catch(() => undefined);
    await closeSet(oldSet);
    await closeSet(newSet);
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
