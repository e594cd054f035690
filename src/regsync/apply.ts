/**
 * `registry apply`: rebuild every image of a patch's new set and push it.
 *
 * Nothing is uploaded before all of this has succeeded:
 *  1. the patch is opened and validated, every payload verified, and the
 *     shipped documents checked against the layer table (./docs.ts);
 *  2. push-vet: the old set is resolved (at the destination, or --old-from),
 *     every referenced layer is found at the destination (in the target
 *     repository, or mountable from an old image's repository, or the same
 *     diff_id in another compression), and every old layer the patch takes
 *     contents from is named by an old image and its blob is there;
 *     otherwise FAILED_PRECONDITION lists what is missing;
 *  3. old contents are extracted (verified by digest), new contents decoded
 *     (verified), each layer tar rebuilt (diff_id checked) and recompressed
 *     (digest checked when the recipe reproduces it; otherwise the fallback
 *     recipe's blob replaces it and the manifests naming it are rewritten).
 * Then blobs, configs, manifests and indexes are pushed, tags last. Every
 * step is idempotent: a re-run after an interruption skips what exists.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { corrupt, D4fsError, failedPrecondition } from '../errors';
import { RegistryClient } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import { parsePlatform } from '../oci/image';
import type { ImageSource } from '../oci/types';
import { PatchReader } from './container';
import { checkDocs, DocPlan, rewriteDocs } from './docs';
import { closeSet, ImageSpec, resolveSetImage, SetImage, SetLayer } from './imageset';
import { openLayerTar } from './layerio';
import { RegsyncPool } from './pool';
import { mapLimit } from '../util/ordered';
import { describeRecipe, fallbackRecipe, gzipProgram, hasPayload, produceBlob, Recipe } from './recipe';
import { assembleTar, extractFromTar, fileRange, streamOf, writeHashed } from './apply-io';
import { parseTarget, refIn, RegistryTarget, relativeSpec, repoIn } from './target';
import type { LayerEntry, RebuiltLayer } from './types';

/** Options of {@link applyPatch}. */
export interface ApplyOptions {
  patch: string;
  /** "docker://HOST[:PORT][/PREFIX]". */
  to: string;
  dest?: RegistryOptions;
  /** Old images (NAME[:TAG] relative to the old-set registry, or full references); default: the patch's old set. */
  old?: string[];
  /** Where the old set is read ("docker://HOST[/PREFIX]"); default: the destination. */
  oldFrom?: string;
  oldFromOptions?: RegistryOptions;
  /** Refuse the patch unless its root digest is this. */
  expectRoot?: string;
  /** Stop after push-vet (nothing is rebuilt or pushed). */
  vetOnly?: boolean;
  threads?: number;
  workDir?: string;
  onProgress?: (message: string) => void;
}

/** Outcome of one layer. */
export interface AppliedLayer {
  digest: string;
  kind: LayerEntry['kind'];
  /** How it reached each repository. */
  actions: string[];
  /** For rebuilt layers: the digest pushed (equal to digest when reproduced). */
  pushedDigest: string;
  reproduced: boolean;
  recipe?: string;
  note?: string;
}

/** Outcome of one image. */
export interface AppliedImage {
  target: string;
  /** Digest of the top document in the patch. */
  digest: string;
  /** Digest pushed (differs when manifests were rewritten). */
  pushedDigest: string;
  identical: boolean;
  rewrittenLayers: string[];
}

/** The report of an apply. */
export interface ApplyReport {
  root: string;
  /** Bytes of the patch (what crossed the link). */
  patchBytes: number;
  /** From the diff: bytes a plain pull/push of the new set moves, and with layer-level dedup only. */
  plainBytes: number;
  dedupBytes: number;
  /** 100 * (1 - patch / plain). */
  percentSaved: number;
  destination: string;
  vetOnly: boolean;
  images: AppliedImage[];
  layers: AppliedLayer[];
  bytesUploaded: number;
  bytesReadFromOldSet: number;
  blobsUploaded: number;
  blobsExisting: number;
  blobsMounted: number;
  seconds: number;
}

/** How a referenced layer reaches a target repository. */
type Placement =
  | { how: 'present' }
  | { how: 'mount'; from: string; digest: string; size: number }
  | { how: 'copy'; source: ImageSource; layer: SetLayer };

/** Where the old set was found. */
interface OldIndex {
  byDiffId: Map<string, { layer: SetLayer; source: ImageSource; repo?: string }>;
  byDigest: Map<string, { layer: SetLayer; source: ImageSource; repo?: string }>;
  missingImages: string[];
}

/** Resolve the old images (those that fail are listed, not fatal here). */
async function resolveOld(specs: ImageSpec[], platforms: 'all' | string[], opts: RegistryOptions, base: RegistryTarget, destIsBase: boolean): Promise<{ set: SetImage[]; index: OldIndex }> {
  const sel = platforms === 'all' ? 'all' : platforms.map(parsePlatform);
  const set: SetImage[] = [];
  const index: OldIndex = { byDiffId: new Map(), byDigest: new Map(), missingImages: [] };
  for (const s of specs) {
    try {
      const img = await resolveSetImage(s, sel, opts);
      set.push(img);
      const repo = destIsBase && s.ref.startsWith(`docker://${base.registry}/`) ? s.ref.slice(`docker://${base.registry}/`.length).replace(/[:@].*$/, '') : undefined;
      for (const m of img.manifests) {
        for (const l of m.layers) {
          const e = { layer: l, source: img.source, repo };
          if (!index.byDiffId.has(l.diffId)) index.byDiffId.set(l.diffId, e);
          if (!index.byDigest.has(l.desc.digest)) index.byDigest.set(l.desc.digest, e);
        }
      }
    } catch (e) {
      if (e instanceof D4fsError && (e.kind === 'NOT_FOUND' || e.kind === 'CORRUPT')) index.missingImages.push(`${s.ref} (${e.message})`);
      else throw e;
    }
  }
  return { set, index };
}

/**
 * Whether an old layer's blob can be read where the old set was found: a
 * HEAD in its repository at the destination, otherwise the start of a
 * download (closed at once).
 */
async function oldBlobPresentWith(client: RegistryClient, e: { layer: SetLayer; source: ImageSource; repo?: string }): Promise<boolean> {
  if (e.repo) return client.blobExists(e.repo, e.layer.desc.digest);
  try {
    const s = await e.source.openBlob(e.layer.desc);
    s.destroy();
    return true;
  } catch (err) {
    if (err instanceof D4fsError && err.kind === 'NOT_FOUND') return false;
    throw err;
  }
}

/** What the phases of an apply share once push-vet has resolved the old set. */
interface ApplyContext {
  client: RegistryClient;
  dest: RegistryTarget;
  oldBase: RegistryTarget;
  patch: PatchReader;
  ix: PatchReader['index'];
  /** Shipped documents by digest. */
  docBytes: Map<string, Buffer>;
  plan: DocPlan;
  old: OldIndex;
  tmp: string;
  progress: (message: string) => void;
}

/** A rebuilt layer's blob, ready to push. */
interface BuiltBlob {
  path: string;
  digest: string;
  size: number;
  reproduced: boolean;
  recipe: Recipe;
  note?: string;
}

/** Another compression of a referenced layer that the destination already holds. */
type Substitute = { digest: string; size: number; note: string };

/** Phase 1: the patch opened and validated, every payload verified, the shipped documents checked. */
async function openPatch(opts: ApplyOptions, progress: (message: string) => void): Promise<{ patch: PatchReader; docBytes: Map<string, Buffer>; plan: DocPlan }> {
  progress(`verifying ${opts.patch}`);
  const patch = await PatchReader.open(opts.patch, { expectRoot: opts.expectRoot });
  await patch.verifyPayloads();
  const ix = patch.index;
  const docBytes = new Map<string, Buffer>();
  for (const d of ix.docs) docBytes.set(d.digest, await patch.payload(d.payload));
  const plan: DocPlan = checkDocs(ix, docBytes);
  return { patch, docBytes, plan };
}

/** The old images push-vet resolves: --old, or the patch's old set, relative to where the old set is read. */
function oldSpecsOf(opts: ApplyOptions, ix: PatchReader['index'], oldBase: RegistryTarget): ImageSpec[] {
  return opts.old?.length
    ? opts.old.map((o, i) => relativeSpec(o, oldBase, `--old[${i}]`))
    : ix.old.map((o) => ({ ref: refIn(oldBase, o.name, o.tag, o.digest), name: o.name, tag: o.tag }));
}

/**
 * Phase 2a (push-vet): how each referenced layer reaches each repository
 * naming it; what cannot be found is added to `missing`.
 */
async function placeReferenced(
  ctx: ApplyContext,
  missing: string[],
): Promise<{ placements: Map<string, Map<string, Placement>>; substitute: Map<string, Substitute> }> {
  const { client, dest, oldBase, ix, plan, old } = ctx;
  const oldBlobPresent = (e: { layer: SetLayer; source: ImageSource; repo?: string }): Promise<boolean> => oldBlobPresentWith(client, e);
  const placements = new Map<string, Map<string, Placement>>(); // layer digest -> repo -> placement
  const substitute = new Map<string, Substitute>(); // referenced layer -> other compression
  for (const l of ix.layers) {
    if (l.kind !== 'referenced') continue;
    const repos = plan.reposOfLayer.get(l.digest) ?? [];
    const perRepo = new Map<string, Placement>();
    placements.set(l.digest, perRepo);
    for (const name of repos) {
      const repo = repoIn(dest, name);
      if (await client.blobExists(repo, l.digest)) {
        perRepo.set(repo, { how: 'present' });
        continue;
      }
      const same = old.byDigest.get(l.digest);
      if (same?.repo && oldBase === dest && (await client.blobExists(same.repo, l.digest))) {
        perRepo.set(repo, { how: 'mount', from: same.repo, digest: l.digest, size: l.size });
        continue;
      }
      const twin = old.byDiffId.get(l.diffId);
      if (twin?.repo && oldBase === dest && (await client.blobExists(twin.repo, twin.layer.desc.digest))) {
        substitute.set(l.digest, { digest: twin.layer.desc.digest, size: twin.layer.desc.size, note: `destination holds this layer as ${twin.layer.desc.digest} (other compression)` });
        perRepo.set(repo, twin.repo === repo ? { how: 'present' } : { how: 'mount', from: twin.repo, digest: twin.layer.desc.digest, size: twin.layer.desc.size });
        continue;
      }
      if (same && oldBase !== dest && (await oldBlobPresent(same))) {
        perRepo.set(repo, { how: 'copy', source: same.source, layer: same.layer });
        continue;
      }
      missing.push(`layer ${l.digest} (diff_id ${l.diffId}) for ${dest.registry}/${repo}`);
    }
  }
  return { placements, substitute };
}

/**
 * Phase 2b (push-vet): every old layer the patch takes contents from is
 * there, the gzip program if needed; FAILED_PRECONDITION lists what is missing.
 */
async function vetSources(ctx: ApplyContext, missing: string[]): Promise<void> {
  const { client, ix, old } = ctx;
  const oldBlobPresent = (e: { layer: SetLayer; source: ImageSource; repo?: string }): Promise<boolean> => oldBlobPresentWith(client, e);
  for (const s of ix.sources) {
    const o = old.byDiffId.get(s.diffId);
    if (!o) missing.push(`old layer with diff_id ${s.diffId} (was ${s.digest}), needed for file contents`);
    else if (!(await oldBlobPresent(o))) missing.push(`old layer ${o.layer.desc.digest} (diff_id ${s.diffId}) of ${o.source.description}, needed for file contents: its blob is missing`);
  }
  if (ix.contents.some((c) => c.enc === 'gzip') && !gzipProgram()) {
    throw failedPrecondition('push-vet: this patch recompresses gzip files inside layers with the gzip program, which is not installed here');
  }
  if (missing.length) {
    const extra = old.missingImages.length ? `; old images not found: ${old.missingImages.join('; ')}` : '';
    throw failedPrecondition(`push-vet: the destination lacks ${missing.length} blob(s) the patch references:\n  ${missing.join('\n  ')}${extra}`);
  }
}

/** The report before anything is rebuilt or pushed. */
function initialReport(patch: PatchReader, dest: RegistryTarget, vetOnly: boolean): ApplyReport {
  const ix = patch.index;
  return {
    root: patch.root,
    patchBytes: patch.size,
    plainBytes: ix.stats.plainBytes,
    dedupBytes: ix.stats.dedupBytes,
    percentSaved: ix.stats.plainBytes > 0 ? Math.round(1000 * (1 - patch.size / ix.stats.plainBytes)) / 10 : 0,
    destination: `docker://${dest.registry}${dest.prefix ? '/' + dest.prefix : ''}`,
    vetOnly,
    images: [],
    layers: [],
    bytesUploaded: 0,
    bytesReadFromOldSet: 0,
    blobsUploaded: 0,
    blobsExisting: 0,
    blobsMounted: 0,
    seconds: 0,
  };
}

/**
 * Phase 3a: old contents extracted from the old layers into `contentPath`
 * (verified by digest), and the old skeletons patches base on; returns their
 * paths by source index.
 */
async function extractOldContents(ctx: ApplyContext, report: ApplyReport, contentPath: (digest: string) => string): Promise<Map<number, string>> {
  const { ix, old, tmp, progress } = ctx;
  const skeletonPaths = new Map<number, string>();
  for (const [si, s] of ix.sources.entries()) {
    const o = old.byDiffId.get(s.diffId) as NonNullable<ReturnType<typeof old.byDiffId.get>>;
    progress(`reading old layer ${si + 1}/${ix.sources.length} ${s.diffId.slice(7, 19)}`);
    const what = `${o.source.description}: layer ${o.layer.desc.digest.slice(0, 19)}`;
    const tar = await openLayerTar(o.source, o.layer.desc, o.layer.compression ?? 'none', o.layer.diffId, what);
    report.bytesReadFromOldSet += o.layer.desc.size;
    const got = await extractFromTar(tar, s.extract.map(([offset, ci]) => ({ offset, size: ix.contents[ci].size, digest: ix.contents[ci].digest, out: contentPath(ix.contents[ci].digest) })), s.skeletonDigest !== undefined, what);
    if (s.skeletonDigest !== undefined) {
      const sk = got.skeleton as Buffer;
      const d = `sha256:${createHash('sha256').update(sk).digest('hex')}`;
      if (d !== s.skeletonDigest) throw corrupt(`${what}: skeleton hashes to ${d}, the patch expects ${s.skeletonDigest} (different tar splitter?)`);
      const p = path.join(tmp, `skel-${si}`);
      await fsp.writeFile(p, sk);
      skeletonPaths.set(si, p);
    }
  }
  return skeletonPaths;
}

/** Phase 3b: the new contents decoded on the pool into `contentPath` (verified). */
async function decodeContents(ctx: ApplyContext, pool: RegsyncPool, contentPath: (digest: string) => string): Promise<void> {
  const { patch, ix, progress } = ctx;
  const toDecode = ix.contents.filter((c) => c.enc !== 'old');
  progress(`decoding ${toDecode.length} file contents`);
  await mapLimit(toDecode, pool.threads * 2, async (c) => {
    if (!('payload' in c)) return;
    const r = patch.payloadRange(c.payload);
    const base = 'base' in c && c.base !== undefined ? ix.contents[c.base] : undefined;
    await (pool as RegsyncPool).decode({
      codec: c.enc,
      gzip: c.enc === 'gzip' ? { recipe: c.gzip, inner: c.inner, baseInflate: !!c.baseInflate } : undefined,
      payload: { path: patch.path, offset: r.start, size: r.length },
      base: base ? { path: contentPath(base.digest), offset: 0, size: base.size } : undefined,
      size: c.size,
      digest: c.digest,
      outPath: contentPath(c.digest),
    });
  });
}

/** Compress a rebuilt layer's tar: by its recipe when it reproduces the blob, else by the fallback recipe. */
async function compressLayer(patch: PatchReader, l: RebuiltLayer, tarPath: string, blobPath: string): Promise<BuiltBlob> {
  const compression = l.recipe ? l.recipe.kind : (l.fallback as NonNullable<RebuiltLayer['fallback']>).recipe.kind;
  if (hasPayload(l.recipe)) {
    // a record or a members' description is the patch's own statement about the blob (its payload
    // verified): if it does not rebuild the digest here, the patch is wrong, and nothing is pushed
    const recipe: Recipe = { ...l.recipe, record: await patch.payload(l.recipe.payload) };
    const out = await writeHashed(produceBlob(recipe, tarPath), blobPath);
    if (out.digest !== l.digest || out.size !== l.size) throw corrupt(`rebuilt layer ${l.digest}: its ${describeRecipe(l.recipe)} gives ${out.digest} (${out.size} bytes)`);
    return { path: blobPath, ...out, reproduced: true, recipe };
  }
  if (l.recipe) {
    let out: { digest: string; size: number } | undefined;
    let why = '';
    try {
      out = await writeHashed(produceBlob(l.recipe, tarPath), blobPath);
    } catch (e) {
      why = (e as Error).message;
    }
    if (out && out.digest === l.digest && out.size === l.size) {
      return { path: blobPath, ...out, reproduced: true, recipe: l.recipe };
    } else {
      const fb = fallbackRecipe(compression === 'gzip' ? 'gzip' : compression === 'zstd' ? 'zstd' : 'none');
      const got = await writeHashed(produceBlob(fb, tarPath), blobPath);
      return {
        path: blobPath,
        ...got,
        reproduced: false,
        recipe: fb,
        note: `recipe ${describeRecipe(l.recipe)} did not reproduce the blob here (${why || `got ${out?.digest}`}); recompressed with ${describeRecipe(fb)}`,
      };
    }
  } else {
    const fb = l.fallback as NonNullable<RebuiltLayer['fallback']>;
    const got = await writeHashed(produceBlob(fb.recipe, tarPath), blobPath);
    const note =
      `compression not reproducible (${fb.reason}); recompressed with ${describeRecipe(fb.recipe)}` +
      (got.digest !== fb.digest ? `; the diff side expected ${fb.digest} (other zlib version)` : '');
    return { path: blobPath, ...got, reproduced: false, recipe: fb.recipe, note };
  }
}

/** Phase 3c: each rebuilt layer's tar assembled (diff_id checked) and compressed into ldir. */
async function rebuildLayers(
  ctx: ApplyContext,
  pool: RegsyncPool,
  ldir: string,
  skeletonPaths: Map<number, string>,
  contentPath: (digest: string) => string,
): Promise<Map<string, BuiltBlob>> {
  const { patch, ix, progress } = ctx;
  const built = new Map<string, BuiltBlob>();
  const rebuilt = ix.layers.filter((l): l is RebuiltLayer => l.kind === 'rebuilt');
  for (const [i, l] of rebuilt.entries()) {
    progress(`rebuilding layer ${i + 1}/${rebuilt.length} ${l.digest.slice(7, 19)}`);
    const r = patch.payloadRange(l.skeleton.payload);
    const skel = Buffer.from(
      (await pool.decode({
        codec: l.skeleton.codec,
        payload: { path: patch.path, offset: r.start, size: r.length },
        base: l.skeleton.base !== undefined ? { path: skeletonPaths.get(l.skeleton.base) as string, offset: 0, size: ix.sources[l.skeleton.base].skeletonSize as number } : undefined,
        size: l.skeleton.size,
        digest: l.skeleton.digest,
      })) as Uint8Array,
    );
    const tarPath = path.join(ldir, `${l.digest.slice(7)}.tar`);
    const tar = await writeHashed(assembleTar(skel, l.runs, l.files.map((f) => ({ path: contentPath(ix.contents[f].digest), size: ix.contents[f].size }))), tarPath);
    if (tar.digest !== l.diffId || tar.size !== l.tarSize) throw corrupt(`rebuilt layer ${l.digest}: tar hashes to ${tar.digest} (${tar.size} bytes), expected diff_id ${l.diffId}`);
    const blobPath = path.join(ldir, `${l.digest.slice(7)}.blob`);
    built.set(l.digest, await compressLayer(patch, l, tarPath, blobPath));
    await fsp.rm(tarPath);
  }
  return built;
}

/** Pushes blobs into repositories, counting what it did into the report. */
class BlobPlacer {
  private readonly pushedTo = new Map<string, string>(); // pushed layer digest -> first repo holding it

  constructor(
    private readonly client: RegistryClient,
    private readonly report: ApplyReport,
  ) {}

  count(res: 'exists' | 'uploaded' | 'mounted', bytes: number): void {
    const report = this.report;
    if (res === 'exists') report.blobsExisting++;
    else if (res === 'mounted') report.blobsMounted++;
    else {
      report.blobsUploaded++;
      report.bytesUploaded += bytes;
    }
  }

  /** Put a blob into a repository: already there, mounted from a repository that has it, or uploaded. */
  async place(repo: string, digest: string, size: number, open: () => Readable): Promise<'exists' | 'uploaded' | 'mounted'> {
    const { client, pushedTo } = this;
    if (await client.blobExists(repo, digest)) return 'exists';
    const from = pushedTo.get(digest);
    if (from && from !== repo && (await client.mountBlob(repo, digest, from))) return 'mounted';
    const res = await client.pushBlob(repo, digest, size, open);
    pushedTo.set(digest, repo);
    return res;
  }
}

/** What the push phase needs from the phases before. */
interface PushInputs {
  placements: Map<string, Map<string, Placement>>;
  built: Map<string, BuiltBlob>;
  /** The documents, rewritten where layers changed digest. */
  docs: ReturnType<typeof rewriteDocs>;
  /** Layers that changed digest. */
  layerMap: Map<string, { digest: string; size: number }>;
}

/** Phase 4a: one layer of an image into its repository; the action goes into the layer's report. */
async function pushLayer(ctx: ApplyContext, inp: PushInputs, placer: BlobPlacer, repo: string, digest: string, rep: AppliedLayer): Promise<void> {
  const { client, patch, ix, old } = ctx;
  const l = ix.layers.find((x) => x.digest === digest) as LayerEntry;
  if (l.kind === 'referenced') {
    const pl = inp.placements.get(digest)?.get(repo) ?? { how: 'present' };
    if (pl.how === 'present') {
      rep.actions.push(`${repo}: present`);
      placer.count('exists', 0);
    } else if (pl.how === 'mount') {
      let res: 'exists' | 'uploaded' | 'mounted' = 'mounted';
      if (!(await client.blobExists(repo, pl.digest))) {
        if (!(await client.mountBlob(repo, pl.digest, pl.from))) {
          const o = old.byDigest.get(pl.digest);
          if (!o) throw failedPrecondition(`cannot mount ${pl.digest} from ${pl.from} into ${repo}`);
          const stream = await o.source.openBlob(o.layer.desc);
          res = await client.pushBlob(repo, pl.digest, pl.size, () => stream);
        }
      } else res = 'exists';
      rep.actions.push(`${repo}: ${res === 'mounted' ? `mounted from ${pl.from}` : res}`);
      placer.count(res, pl.size);
    } else {
      const res = await placer.place(repo, l.digest, l.size, () => Readable.from(streamOf(pl.source, pl.layer)));
      rep.actions.push(`${repo}: ${res === 'uploaded' ? 'copied from the old set' : res}`);
      placer.count(res, l.size);
    }
  } else if (l.kind === 'blob') {
    const r = patch.payloadRange(l.payload);
    const res = await placer.place(repo, l.digest, l.size, () => Readable.from(fileRange(patch.path, r.start, r.length)));
    rep.actions.push(`${repo}: ${res}`);
    placer.count(res, l.size);
  } else {
    const b = inp.built.get(digest) as NonNullable<ReturnType<typeof inp.built.get>>;
    const res = await placer.place(repo, b.digest, b.size, () => createReadStream(b.path, { highWaterMark: 1 << 20 }));
    rep.actions.push(`${repo}: ${res}`);
    placer.count(res, b.size);
  }
}

/** Phase 4: blobs, configs, manifests and indexes pushed image by image, tags last. */
async function pushImages(ctx: ApplyContext, inp: PushInputs, substitute: Map<string, Substitute>, report: ApplyReport): Promise<void> {
  const { client, dest, ix, plan, docBytes, progress } = ctx;
  const { built, docs, layerMap } = inp;
  const layerReport = new Map<string, AppliedLayer>();
  for (const l of ix.layers) {
    const b = built.get(l.digest);
    const sub = substitute.get(l.digest);
    layerReport.set(l.digest, {
      digest: l.digest,
      kind: l.kind,
      actions: [],
      pushedDigest: b?.digest ?? sub?.digest ?? l.digest,
      reproduced: b ? b.reproduced : !sub,
      recipe: b ? describeRecipe(b.recipe) : undefined,
      note: b?.note ?? sub?.note,
    });
  }
  const placer = new BlobPlacer(client, report);
  for (const img of plan.images) {
    const repo = repoIn(dest, img.name);
    progress(`pushing ${dest.registry}/${repo}${img.tag ? ':' + img.tag : ''}`);
    for (const digest of img.layers) await pushLayer(ctx, inp, placer, repo, digest, layerReport.get(digest) as AppliedLayer);
    for (const c of img.configs) {
      const bytes = docBytes.get(c.digest) as Buffer;
      placer.count(await placer.place(repo, c.digest, bytes.length, () => Readable.from([bytes])), bytes.length);
    }
    for (const m of img.manifests) {
      const d = docs.get(m) as { bytes: Buffer; digest: string; mediaType: string };
      await client.putManifest(repo, d.digest, d.bytes, d.mediaType);
    }
    const top = docs.get(img.root) as { bytes: Buffer; digest: string; mediaType: string };
    await client.putManifest(repo, top.digest, top.bytes, top.mediaType);
    if (img.tag) await client.putManifest(repo, img.tag, top.bytes, top.mediaType);
    report.images.push({
      target: `${dest.registry}/${repo}${img.tag ? ':' + img.tag : '@' + top.digest}`,
      digest: img.root,
      pushedDigest: top.digest,
      identical: top.digest === img.root,
      rewrittenLayers: img.layers.filter((d) => layerMap.has(d)),
    });
  }
  report.layers = [...layerReport.values()];
}

/**
 * Apply a patch to a registry. With vetOnly, stops after push-vet and
 * reports what would be done.
 */
export async function applyPatch(opts: ApplyOptions): Promise<ApplyReport> {
  const started = Date.now();
  const progress = opts.onProgress ?? (() => undefined);
  const dest = parseTarget(opts.to, opts.dest ?? {});
  const oldBase = opts.oldFrom ? parseTarget(opts.oldFrom, opts.oldFromOptions ?? {}) : dest;
  const client = new RegistryClient(dest.registry, dest.opts);
  const tmp = await fsp.mkdtemp(path.join(opts.workDir ?? process.env.D4FS_TMPDIR ?? os.tmpdir(), 'd4fs-regapply-'));
  let pool: RegsyncPool | undefined;
  let oldSet: SetImage[] = [];
  try {
    // ---- 1. the patch
    const { patch, docBytes, plan } = await openPatch(opts, progress);
    const ix = patch.index;

    // ---- 2. push-vet
    const oldSpecs = oldSpecsOf(opts, ix, oldBase);
    progress(`push-vet: resolving ${oldSpecs.length} old images at ${oldBase.registry}`);
    const resolved = await resolveOld(oldSpecs, ix.platforms, oldBase.opts, oldBase, oldBase.registry === dest.registry);
    oldSet = resolved.set;
    const ctx: ApplyContext = { client, dest, oldBase, patch, ix, docBytes, plan, old: resolved.index, tmp, progress };
    const missing: string[] = [];
    const { placements, substitute } = await placeReferenced(ctx, missing);
    await vetSources(ctx, missing);
    const report = initialReport(patch, dest, !!opts.vetOnly);
    if (opts.vetOnly) {
      for (const l of ix.layers) report.layers.push({ digest: l.digest, kind: l.kind, actions: [], pushedDigest: l.digest, reproduced: l.kind !== 'rebuilt' || !!l.recipe });
      report.seconds = Math.round((Date.now() - started) / 100) / 10;
      return report;
    }

    // ---- 3. rebuild
    pool = new RegsyncPool(opts.threads);
    const cdir = path.join(tmp, 'c');
    const ldir = path.join(tmp, 'l');
    await fsp.mkdir(cdir);
    await fsp.mkdir(ldir);
    const contentPath = (digest: string): string => path.join(cdir, digest.slice(7));
    const skeletonPaths = await extractOldContents(ctx, report, contentPath);
    await decodeContents(ctx, pool, contentPath);
    const built = await rebuildLayers(ctx, pool, ldir, skeletonPaths, contentPath);

    // rewrite documents naming layers that changed digest
    const layerMap = new Map<string, { digest: string; size: number }>();
    for (const [d, b] of built) if (b.digest !== d) layerMap.set(d, { digest: b.digest, size: b.size });
    for (const [d, s] of substitute) layerMap.set(d, { digest: s.digest, size: s.size });
    const docs = rewriteDocs(plan, docBytes, layerMap);

    // ---- 4. push
    await pushImages(ctx, { placements, built, docs, layerMap }, substitute, report);
    report.seconds = Math.round((Date.now() - started) / 100) / 10;
    return report;
  } finally {
    await pool?.close().catch(() => undefined);
    await closeSet(oldSet);
    await client.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
