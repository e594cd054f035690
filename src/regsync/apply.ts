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
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
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
import { describeRecipe, fallbackRecipe, gzipProgram, produceBlob, Recipe } from './recipe';
import { TarSplitter } from './tarsplit';
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

/** Write a stream to a file, returning digest and size. */
async function writeHashed(chunks: AsyncIterable<Buffer>, out: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  const ws = createWriteStream(out);
  try {
    for await (const c of chunks) {
      h.update(c);
      size += c.length;
      if (!ws.write(c)) await new Promise<void>((r) => ws.once('drain', () => r()));
    }
    ws.end();
    await finished(ws);
  } catch (e) {
    ws.destroy();
    throw e;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

/** Chunks of a file range. */
async function* fileRange(p: string, start: number, length: number): AsyncGenerator<Buffer> {
  if (length === 0) return;
  for await (const c of createReadStream(p, { start, end: start + length - 1, highWaterMark: 1 << 20 })) yield c as Buffer;
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
    progress(`verifying ${opts.patch}`);
    const patch = await PatchReader.open(opts.patch, { expectRoot: opts.expectRoot });
    await patch.verifyPayloads();
    const ix = patch.index;
    const docBytes = new Map<string, Buffer>();
    for (const d of ix.docs) docBytes.set(d.digest, await patch.payload(d.payload));
    const plan: DocPlan = checkDocs(ix, docBytes);

    // ---- 2. push-vet
    const oldSpecs: ImageSpec[] = opts.old?.length
      ? opts.old.map((o, i) => relativeSpec(o, oldBase, `--old[${i}]`))
      : ix.old.map((o) => ({ ref: refIn(oldBase, o.name, o.tag, o.digest), name: o.name, tag: o.tag }));
    progress(`push-vet: resolving ${oldSpecs.length} old images at ${oldBase.registry}`);
    const resolved = await resolveOld(oldSpecs, ix.platforms, oldBase.opts, oldBase, oldBase.registry === dest.registry);
    oldSet = resolved.set;
    const old = resolved.index;
    const missing: string[] = [];
    const oldBlobPresent = (e: { layer: SetLayer; source: ImageSource; repo?: string }): Promise<boolean> => oldBlobPresentWith(client, e);
    const placements = new Map<string, Map<string, Placement>>(); // layer digest -> repo -> placement
    const substitute = new Map<string, { digest: string; size: number; note: string }>(); // referenced layer -> other compression
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
    const report: ApplyReport = {
      root: patch.root,
      patchBytes: patch.size,
      plainBytes: ix.stats.plainBytes,
      dedupBytes: ix.stats.dedupBytes,
      percentSaved: ix.stats.plainBytes > 0 ? Math.round(1000 * (1 - patch.size / ix.stats.plainBytes)) / 10 : 0,
      destination: `docker://${dest.registry}${dest.prefix ? '/' + dest.prefix : ''}`,
      vetOnly: !!opts.vetOnly,
      images: [],
      layers: [],
      bytesUploaded: 0,
      bytesReadFromOldSet: 0,
      blobsUploaded: 0,
      blobsExisting: 0,
      blobsMounted: 0,
      seconds: 0,
    };
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

    // layer tars and blobs
    const built = new Map<string, { path: string; digest: string; size: number; reproduced: boolean; recipe: Recipe; note?: string }>();
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
      const compression = l.recipe ? l.recipe.kind : (l.fallback as NonNullable<RebuiltLayer['fallback']>).recipe.kind;
      const blobPath = path.join(ldir, `${l.digest.slice(7)}.blob`);
      if (l.recipe) {
        let out: { digest: string; size: number } | undefined;
        let why = '';
        try {
          out = await writeHashed(produceBlob(l.recipe, tarPath), blobPath);
        } catch (e) {
          why = (e as Error).message;
        }
        if (out && out.digest === l.digest && out.size === l.size) {
          built.set(l.digest, { path: blobPath, ...out, reproduced: true, recipe: l.recipe });
        } else {
          const fb = fallbackRecipe(compression === 'gzip' ? 'gzip' : compression === 'zstd' ? 'zstd' : 'none');
          const got = await writeHashed(produceBlob(fb, tarPath), blobPath);
          built.set(l.digest, {
            path: blobPath,
            ...got,
            reproduced: false,
            recipe: fb,
            note: `recipe ${describeRecipe(l.recipe)} did not reproduce the blob here (${why || `got ${out?.digest}`}); recompressed with ${describeRecipe(fb)}`,
          });
        }
      } else {
        const fb = l.fallback as NonNullable<RebuiltLayer['fallback']>;
        const got = await writeHashed(produceBlob(fb.recipe, tarPath), blobPath);
        const note =
          `compression not reproducible (${fb.reason}); recompressed with ${describeRecipe(fb.recipe)}` +
          (got.digest !== fb.digest ? `; the diff side expected ${fb.digest} (other zlib version)` : '');
        built.set(l.digest, { path: blobPath, ...got, reproduced: false, recipe: fb.recipe, note });
      }
      await fsp.rm(tarPath);
    }

    // rewrite documents naming layers that changed digest
    const layerMap = new Map<string, { digest: string; size: number }>();
    for (const [d, b] of built) if (b.digest !== d) layerMap.set(d, { digest: b.digest, size: b.size });
    for (const [d, s] of substitute) layerMap.set(d, { digest: s.digest, size: s.size });
    const docs = rewriteDocs(plan, docBytes, layerMap);

    // ---- 4. push
    const pushedTo = new Map<string, string>(); // pushed layer digest -> first repo holding it
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
    const count = (res: 'exists' | 'uploaded' | 'mounted', bytes: number): void => {
      if (res === 'exists') report.blobsExisting++;
      else if (res === 'mounted') report.blobsMounted++;
      else {
        report.blobsUploaded++;
        report.bytesUploaded += bytes;
      }
    };
    /** Put a blob into a repository: already there, mounted from a repository that has it, or uploaded. */
    const placeBlob = async (repo: string, digest: string, size: number, open: () => Readable): Promise<'exists' | 'uploaded' | 'mounted'> => {
      if (await client.blobExists(repo, digest)) return 'exists';
      const from = pushedTo.get(digest);
      if (from && from !== repo && (await client.mountBlob(repo, digest, from))) return 'mounted';
      const res = await client.pushBlob(repo, digest, size, open);
      pushedTo.set(digest, repo);
      return res;
    };
    for (const img of plan.images) {
      const repo = repoIn(dest, img.name);
      progress(`pushing ${dest.registry}/${repo}${img.tag ? ':' + img.tag : ''}`);
      for (const digest of img.layers) {
        const l = ix.layers.find((x) => x.digest === digest) as LayerEntry;
        const rep = layerReport.get(digest) as AppliedLayer;
        if (l.kind === 'referenced') {
          const pl = placements.get(digest)?.get(repo) ?? { how: 'present' };
          if (pl.how === 'present') {
            rep.actions.push(`${repo}: present`);
            count('exists', 0);
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
            count(res, pl.size);
          } else {
            const res = await placeBlob(repo, l.digest, l.size, () => Readable.from(streamOf(pl.source, pl.layer)));
            rep.actions.push(`${repo}: ${res === 'uploaded' ? 'copied from the old set' : res}`);
            count(res, l.size);
          }
        } else if (l.kind === 'blob') {
          const r = patch.payloadRange(l.payload);
          const res = await placeBlob(repo, l.digest, l.size, () => Readable.from(fileRange(patch.path, r.start, r.length)));
          rep.actions.push(`${repo}: ${res}`);
          count(res, l.size);
        } else {
          const b = built.get(digest) as NonNullable<ReturnType<typeof built.get>>;
          const res = await placeBlob(repo, b.digest, b.size, () => createReadStream(b.path, { highWaterMark: 1 << 20 }));
          rep.actions.push(`${repo}: ${res}`);
          count(res, b.size);
        }
      }
      for (const c of img.configs) {
        const bytes = docBytes.get(c.digest) as Buffer;
        count(await placeBlob(repo, c.digest, bytes.length, () => Readable.from([bytes])), bytes.length);
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
    report.seconds = Math.round((Date.now() - started) / 100) / 10;
    return report;
  } finally {
    await pool?.close().catch(() => undefined);
    await closeSet(oldSet);
    await client.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** A layer blob of the old set, as stored. */
async function* streamOf(source: ImageSource, layer: SetLayer): AsyncGenerator<Buffer> {
  for await (const c of await source.openBlob(layer.desc)) yield c as Buffer;
}

/** The tar of a rebuilt layer: skeleton runs and file contents interleaved. */
async function* assembleTar(skeleton: Buffer, runs: number[], files: { path: string; size: number }[]): AsyncGenerator<Buffer> {
  let pos = 0;
  for (let i = 0; i < runs.length; i++) {
    if (runs[i] > 0) {
      yield skeleton.subarray(pos, pos + runs[i]);
      pos += runs[i];
    }
    if (i < files.length) {
      let n = 0;
      for await (const c of createReadStream(files[i].path, { highWaterMark: 1 << 20 })) {
        n += (c as Buffer).length;
        yield c as Buffer;
      }
      if (n !== files[i].size) throw corrupt(`content ${files[i].path} has ${n} bytes, expected ${files[i].size}`);
    }
  }
}

/** A byte range of a tar to capture into a file, verified by digest. */
interface Capture {
  offset: number;
  size: number;
  digest: string;
  out: string;
}

/**
 * Read a (verified) tar stream to its end, writing the given ranges to files
 * (each checked against its digest) and, when asked, collecting the skeleton.
 */
async function extractFromTar(tar: Readable, captures: Capture[], wantSkeleton: boolean, what: string): Promise<{ skeleton?: Buffer }> {
  const skel: Buffer[] = [];
  const splitter = wantSkeleton
    ? new TarSplitter({ raw: (b) => skel.push(Buffer.from(b)), fileStart: () => undefined, fileData: () => undefined, fileEnd: () => undefined })
    : undefined;
  let pos = 0;
  let k = 0;
  let cur: { c: Capture; hash: ReturnType<typeof createHash>; parts: Buffer[]; got: number } | undefined;
  const flush = async (): Promise<void> => {
    if (!cur) return;
    const d = `sha256:${cur.hash.digest('hex')}`;
    if (d !== cur.c.digest) throw corrupt(`${what}: bytes at ${cur.c.offset} hash to ${d}, the patch expects ${cur.c.digest}`);
    await fsp.writeFile(cur.c.out, Buffer.concat(cur.parts));
    cur = undefined;
  };
  for await (const chunk of tar) {
    const b = chunk as Buffer;
    splitter?.write(b);
    let i = 0;
    while (i < b.length) {
      if (!cur && k < captures.length && pos + i >= captures[k].offset) cur = { c: captures[k++], hash: createHash('sha256'), parts: [], got: 0 };
      if (cur) {
        const take = Math.min(cur.c.size - cur.got, b.length - i);
        const part = b.subarray(i, i + take);
        cur.hash.update(part);
        cur.parts.push(Buffer.from(part));
        cur.got += take;
        i += take;
        if (cur.got === cur.c.size) await flush();
      } else {
        const next = k < captures.length ? captures[k].offset - pos : b.length;
        i = Math.max(i, Math.min(b.length, next));
      }
    }
    pos += b.length;
  }
  splitter?.end();
  if (cur || k < captures.length) throw corrupt(`${what}: layer ends before the contents the patch takes from it`);
  return { skeleton: wantSkeleton ? Buffer.concat(skel) : undefined };
}
