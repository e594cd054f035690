/**
 * `registry diff`, the phases that read and encode (./diff.ts runs them, then
 * writes the patch): the layers of both sets, the old layers indexed by
 * content, path and name, the new layers split, their contents planned and
 * encoded, their skeletons encoded, and per layer the decision to rebuild it
 * or ship its blob.
 */
import { promises as fsp, createReadStream } from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import type { CodecChoice, CodecId, LevelPreset } from '../delta/codecs';
import type { ImageSource } from '../oci/types';
import type { SetImage, SetLayer } from './imageset';
import { decompressFile, spoolBlob } from './layerio';
import { RegsyncPool } from './pool';
import { mapLimit } from '../util/ordered';
import type { GzipEncoding } from './tasks';
import type { WrapperEnc } from './types';
import { Detection, fallbackRecipe, hasPayload, produceBlob } from './recipe';
import { splitTar, SplitResult } from './tarsplit';

/** An old regular file. */
export interface OldFile {
  digest: string;
  size: number;
  path: string;
  layer: number;
  offset: number;
}

/** An old layer, spooled and split. */
export interface OldLayer {
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

/** A layer of the old set and the source it is read from. */
export interface OldSetLayer {
  layer: SetLayer;
  source: ImageSource;
}

/** A new layer to process. */
export interface NewLayer {
  layer: SetLayer;
  source: ImageSource;
  images: string[];
}

/** A new layer being rebuilt. */
export interface Rebuild {
  nl: NewLayer;
  blobPath: string;
  tarPath: string;
  split: SplitResult;
  skeletonPath: string;
  detection: Promise<Detection>;
  contentIds: number[];
}

/** A content planned for the patch. */
export interface PlannedContent {
  digest: string;
  size: number;
  /** Where the bytes are at diff time. */
  at: { path: string; offset: number };
  old?: OldFile;
  base?: OldFile;
  encoded?: { codec: CodecId | 'gzip' | WrapperEnc; data: Buffer; gzip?: GzipEncoding; usesBase?: boolean };
}

/** The old layers, spooled and split, and their regular files indexed by content, path and name. */
export interface OldIndex {
  olds: OldLayer[];
  byDigest: Map<string, OldFile>;
  byPath: Map<string, OldFile[]>;
  byStem: Map<string, OldFile[]>;
  byName: Map<string, OldFile[]>;
  byNameStem: Map<string, OldFile[]>;
}

/** A skeleton encoded for the patch (undefined for a layer whose tar is truncated). */
export type EncodedSkeleton = { base: number | undefined; codec: CodecId; data: Buffer } | undefined;

/** What becomes of one rebuildable layer. */
export interface LayerDecision {
  kind: 'rebuilt' | 'blob';
  detection?: Detection;
  fallback?: { digest: string; size: number };
  shipped?: string;
  cost: number;
}

/**
 * A layer whose compression cannot be reproduced is rebuilt (and its
 * manifests rewritten) only when that costs at most this fraction of the
 * blob; otherwise the blob travels whole and the manifests stay identical.
 */
export const REWRITE_MAX_COST = 0.5;

export const hexOf = (d: string): string => d.slice(7);
const stemOf = (p: string): string => p.replace(/[0-9]+/g, '#');
const baseName = (p: string): string => p.slice(p.lastIndexOf('/') + 1);
export const imageLabel = (s: { name: string; tag?: string }): string => `${s.name}${s.tag ? ':' + s.tag : ''}`;

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

/** Phase: the layers of both sets; the new ones per digest with the images using them, and those to rebuild. */
export function collectLayers(oldSet: SetImage[], newSet: SetImage[]): { oldLayers: Map<string, OldSetLayer>; newLayers: Map<string, NewLayer>; toRebuild: NewLayer[] } {
  const oldLayers = new Map<string, OldSetLayer>();
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
  return { oldLayers, newLayers, toRebuild };
}

/** An empty {@link OldIndex}. */
export function emptyOldIndex(): OldIndex {
  return { olds: [], byDigest: new Map(), byPath: new Map(), byStem: new Map(), byName: new Map(), byNameStem: new Map() };
}

/** Phase: old layers spooled into tmp/old, split, their files indexed into `index`. */
export async function readOldLayers(oldLayers: Map<string, OldSetLayer>, tmp: string, progress: (message: string) => void, index: OldIndex): Promise<void> {
  const { olds, byDigest, byPath, byStem, byName, byNameStem } = index;
  const add = (m: Map<string, OldFile[]>, k: string, f: OldFile): void => {
    const l = m.get(k);
    if (l) l.push(f);
    else m.set(k, [f]);
  };
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

/** Bytes of the reconstruction record a detection made (0 for other recipes). */
export function recordBytes(d: Detection): number {
  return d.reproducible && hasPayload(d.recipe) ? (d.recipe.record?.length ?? 0) : 0;
}

/** Phase: new layers spooled into tmp/new and split; recipe detection started on the pool. */
export async function readNewLayers(
  toRebuild: NewLayer[],
  tmp: string,
  pool: RegsyncPool,
  opts: { gzipProgram?: boolean; goEncoders?: boolean; records?: boolean },
  progress: (message: string) => void,
): Promise<Rebuild[]> {
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
    const detection = pool.detect({ blobPath: `${base}.blob`, tarPath: `${base}.tar`, compression: l.compression as 'gzip', gzipProgram: opts.gzipProgram, goEncoders: opts.goEncoders, records: opts.records });
    detection.catch(() => undefined); // awaited below
    rebuilds.push({ nl, blobPath: `${base}.blob`, tarPath: `${base}.tar`, split, skeletonPath: `${base}.skel`, detection, contentIds: [] });
  }
  return rebuilds;
}

/** Phase: each distinct content of the rebuilt layers, found in the old set or given the most likely old file as base. */
export function planContents(rebuilds: Rebuild[], index: OldIndex): PlannedContent[] {
  const { byDigest, byPath, byStem, byName, byNameStem } = index;
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
  return planned;
}

/** Phase: the planned contents the old set lacks, encoded on the pool (sets their `encoded`). */
export async function encodeContents(
  planned: PlannedContent[],
  olds: OldLayer[],
  pool: RegsyncPool,
  opts: { codec: CodecChoice; level: LevelPreset; gzipProgram?: boolean },
  progress: (message: string) => void,
): Promise<void> {
  const { codec, level } = opts;
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
    p.encoded = { codec: r.codec, data: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength), gzip: r.gzip, usesBase: r.usesBase };
  });
}

/** Phase: each skeleton encoded against the old skeleton sharing most paths with it. */
export async function encodeSkeletons(rebuilds: Rebuild[], olds: OldLayer[], pool: RegsyncPool, level: LevelPreset): Promise<EncodedSkeleton[]> {
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
  return skeletons;
}

/**
 * Phase: per rebuildable layer (by digest), rebuild it or ship its blob,
 * from its recipe detection and what rebuilding costs; a content is counted
 * for the first rebuilt layer using it.
 */
export async function decideLayers(
  rebuilds: Rebuild[],
  skeletons: EncodedSkeleton[],
  planned: PlannedContent[],
  nonReproducible: 'rewrite' | 'ship' | undefined,
  progress: (message: string) => void,
): Promise<Map<string, LayerDecision>> {
  progress('checking how the layers were compressed');
  const owner = new Map<number, Rebuild>(); // planned content -> first rebuilt layer using it
  const decisions = new Map<string, LayerDecision>();
  for (const [ri, rb] of rebuilds.entries()) {
    const digest = rb.nl.layer.desc.digest;
    const size = rb.nl.layer.desc.size;
    let detection: Detection;
    try {
      detection = await rb.detection;
      // a record made in a worker thread arrives as a Uint8Array
      if (detection.reproducible && hasPayload(detection.recipe) && detection.recipe.record) {
        const r = detection.recipe.record;
        detection.recipe.record = Buffer.from(r.buffer, r.byteOffset, r.length);
      }
    } catch (e) {
      detection = { reproducible: false, reason: `recipe detection failed: ${(e as Error).message}`, tried: 0 };
    }
    const sk = skeletons[ri];
    if (rb.split.truncated || !sk) {
      decisions.set(digest, { kind: 'blob', detection, shipped: 'the layer tar ends inside a file', cost: size });
      continue;
    }
    let cost = sk.data.length + 200 + recordBytes(detection);
    const mine: number[] = [];
    for (const id of rb.contentIds) {
      if (owner.has(id)) continue;
      mine.push(id);
      const p = planned[id];
      cost += (p.encoded?.data.length ?? 0) + 80;
    }
    if (!detection.reproducible && nonReproducible === 'ship') {
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
  return decisions;
}
