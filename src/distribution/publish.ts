/**
 * `ctr-cli publish docker://REG/REPO:TAG [--base REF …]`: make an ordinary
 * image pullable as a delta (by `ctr-cli pull --from` and by the d4fs
 * snapshotter's CRI pulls) without touching it.
 *
 * For each platform manifest chosen (this machine's by default; --platform,
 * --all-platforms), the image is converted from the registry by that
 * manifest's digest, diffed against each base (any image reference,
 * converted for the same platform, or a full .cdimg), optionally signed, and
 * each file is pushed to the image's own repository as a d4fs file artifact
 * (artifact.ts) whose OCI 1.1 `subject` is that manifest, by digest only: no
 * tag is moved, the user's tag and manifest stay as they were.
 *
 * Registries that index subjects answer the manifest PUTs with `OCI-Subject`
 * and list the files in their referrers API. For the others (Debian's
 * docker-registry) the referrers tag `sha256-<hex>` is maintained: an OCI
 * image index read, merged (other tools' entries kept as they are; d4fs
 * entries of the same files replaced; stale or invalid d4fs entries, which
 * would make discovery refuse the list, dropped) and written back only when
 * it changes, then read again to check no concurrent publisher overwrote it.
 * Publishing the same inputs again changes nothing (same files, same
 * manifests, same index bytes); signatures already on a file's artifact are
 * kept, and a key that signed the file already is not asked again.
 */
import { promises as fsp, createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { convertImage, type ProgressEvent } from '../convert/convert';
import { LEVELS } from '../convert/levels';
import { diffImages } from '../delta/diff';
import type { LevelPreset } from '../delta/codecs';
import { corrupt, D4fsError, failedPrecondition, invalidArgument, unavailable } from '../errors';
import { CdimgReader } from '../format/reader';
import { parsePlatform } from '../oci/image';
import { INDEX_TYPES, MANIFEST_TYPES, MT } from '../oci/mediatypes';
import { ClientTuning, RegistryClient } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import type { Platform } from '../oci/types';
import { ancestorsOf } from './planner';
import { loadSigningKey, SIGNATURE_MEDIA_TYPE, SignatureFile, SigningKey, signRoot, signaturePathOf, writeSignatureFile } from '../signing';
import { digestOf, fileDigestOf } from '../util/digest';
import { WorkerPool } from '../workers/pool';
import { ANN, ArtifactFile, contentTag, fileManifest, isContentTag, isD4fsReferrer, listedFile, parseFileManifest, ReferrerDescriptor, referrerDescriptor, referrersIndex, referrersTag, Subject } from './artifact';
import { isD4fsDocument, platformManifest, readReferrersTag } from './referrers';
import { parseRegistryTarget } from './registry';
import { mergeSignatures } from './signatures';

export interface PublishOptions {
  /** docker://REGISTRY/REPO:TAG (or @sha256:…): the image, and the repository its files go to. */
  image: string;
  /** Images to make deltas from: any image reference (converted for the same platform), or a full .cdimg. */
  bases?: string[];
  /** PEM private key: every file is signed (signatures already on a file's artifact are kept). */
  signKey?: string;
  /** Compression preset of the conversions and the deltas (default: default). */
  level?: LevelPreset;
  threads?: number;
  /** Platforms to publish from a multi-platform index (os/arch[/variant]); default this machine's. */
  platforms?: string[];
  /** Every platform of a multi-platform index. */
  allPlatforms?: boolean;
  /** Keep the files made (and their .sig) in this directory; default: a temporary directory, removed. */
  outDir?: string;
  registry?: RegistryOptions;
  tuning?: ClientTuning;
  /** A worker pool to use (the caller closes it). */
  pool?: WorkerPool;
  onProgress?: (e: ProgressEvent) => void;
}

/** One file published. */
export interface PublishedFile {
  kind: 'full' | 'delta';
  rootDigest: string;
  imageId: string;
  parentId: string;
  size: number;
  fileDigest: string;
  manifestDigest: string;
  manifestSize: number;
  /** False when the registry had the bytes already. */
  uploaded: boolean;
  /** Signatures the file's artifact carries. */
  signatures: number;
  /** The file, when kept (--out-dir). */
  path?: string;
  /** Deltas: the base reference given. */
  base?: string;
  /** Deltas: what a plain pull of the image moves when the base is held (layers the base lacks). */
  plainPullBytes?: number;
}

/** One base and what it gave. */
export interface PublishedBase {
  base: string;
  imageId: string;
  /** The delta's bytes; null when the base is the image itself, or a base given twice. */
  deltaBytes: number | null;
  /** The full file's bytes (what a node holding nothing pulls). */
  fullBytes: number;
  skipped?: string;
}

/** One platform image published. */
export interface PublishedImage {
  platform: string;
  /** The manifest the files are attached to (descriptor: media type, digest, size). */
  subject: Subject;
  /** d4fs image id of the image (every published file leads to it). */
  imageId: string;
  files: PublishedFile[];
  bases: PublishedBase[];
  /** The registry indexed the subject itself (it answered OCI-Subject): its referrers API lists the files. */
  referrersApi: boolean;
  /** The referrers tag maintained (registries without the referrers API). */
  referrersTag?: { tag: string; digest: string; changed: boolean; entries: number; dropped: string[] };
}

export interface PublishResult {
  registry: string;
  repository: string;
  /** The tag (or digest) published; it is not modified. */
  reference: string;
  /** What the reference resolves to (unchanged by the publish). */
  manifestDigest: string;
  images: PublishedImage[];
  seconds: number;
}

const exists = (p: string): Promise<boolean> => fsp.stat(p).then((s) => s.isFile(), () => false);

/** What a file holds, from its header and index. */
async function describeFile(path: string): Promise<ArtifactFile> {
  const r = await CdimgReader.open(path);
  try {
    return { rootDigest: r.rootDigest, kind: r.isDelta ? 'delta' : 'full', imageId: r.imageId, parentId: r.parentId ?? '', size: r.fileSize, fileDigest: await fileDigestOf(path) };
  } finally {
    await r.close();
  }
}

/** The platform manifests of the image `top` names that the options ask for. */
async function subjectsOf(client: RegistryClient, repo: string, top: { mediaType: string; bytes: Buffer; digest: string }, where: string, o: PublishOptions): Promise<Subject[]> {
  if (MANIFEST_TYPES.includes(top.mediaType)) return [{ mediaType: top.mediaType, digest: top.digest, size: top.bytes.length }];
  if (!INDEX_TYPES.includes(top.mediaType)) throw invalidArgument(`${where} is not an image (${top.mediaType})`);
  let platforms: (Platform | undefined)[];
  if (o.allPlatforms) {
    let doc: { manifests?: unknown };
    try {
      doc = JSON.parse(top.bytes.toString('utf8')) as { manifests?: unknown };
    } catch {
      throw corrupt(`${where}: index is not JSON`);
    }
    platforms = (Array.isArray(doc?.manifests) ? (doc.manifests as { mediaType?: string; platform?: Platform }[]) : []).filter((m) => MANIFEST_TYPES.includes(String(m.mediaType)) && m.platform?.os && m.platform.architecture && m.platform.os !== 'unknown').map((m) => m.platform as Platform);
    if (!platforms.length) throw invalidArgument(`${where}: the index lists no platform image`);
  } else {
    platforms = o.platforms?.length ? o.platforms.map(parsePlatform) : [undefined]; // undefined: this machine's
  }
  const out = new Map<string, Subject>();
  for (const p of platforms) {
    const { subject } = await platformManifest(client, repo, top, where, p);
    out.set(subject.digest, subject);
  }
  return [...out.values()];
}

/** The signatures a file's artifact carries already, from the d4fs referrers of the subject listing it. */
async function signaturesHeld(client: RegistryClient, repo: string, listed: readonly ReferrerDescriptor[], rootDigest: string): Promise<SignatureFile | undefined> {
  let held: SignatureFile | undefined;
  for (const d of listed) {
    let digest: string;
    try {
      const e = listedFile(d, 'referrer');
      if (e.rootDigest !== rootDigest) continue;
      digest = e.manifestDigest;
    } catch {
      continue; // an invalid entry: dropped from the list, its signatures not trusted to be of this file
    }
    try {
      const { file } = parseFileManifest((await client.getManifest(repo, digest)).bytes, `${client.registry}/${repo}@${digest}`);
      if (file.rootDigest === rootDigest && file.signature?.subject === rootDigest) held = mergeSignatures(held, file.signature, `signatures of ${rootDigest}`);
    } catch (e) {
      if (!(e instanceof D4fsError) || !['NOT_FOUND', 'CORRUPT', 'UNSUPPORTED'].includes(e.kind)) throw e;
    }
  }
  return held;
}

/**
 * Merge `ours` (descriptors of the files just pushed, all leading to
 * `target`) into the referrers tag of `subjectDigest`: other tools' entries
 * kept in their order, then the d4fs entries sorted by root digest (so the
 * same inputs give the same bytes). Written only when it changes; read back
 * to check a concurrent writer did not drop ours (then merged again, three
 * times at most).
 */
export async function updateReferrersTag(client: RegistryClient, repo: string, subjectDigest: string, ours: readonly ReferrerDescriptor[], target: string): Promise<NonNullable<PublishedImage['referrersTag']>> {
  const tag = referrersTag(subjectDigest);
  const where = `${client.registry}/${repo}:${tag}`;
  const mine = ours.map((d) => listedFile(d, `${where}: new entry`));
  const myRoots = new Set(mine.map((e) => e.rootDigest));
  for (let attempt = 0; attempt < 3; attempt++) {
    const cur = await readReferrersTag(client, repo, subjectDigest);
    if (cur === 'other') throw failedPrecondition(`${where} holds something other than an OCI image index (a referrers list): not overwritten`);
    const manifests = cur?.manifests ?? [];
    const foreign = manifests.filter((m) => !isD4fsReferrer(m));
    const dropped: string[] = [];
    const kept: { d: ReferrerDescriptor; e: ReturnType<typeof listedFile> }[] = [];
    manifests.filter(isD4fsReferrer).forEach((d, i) => {
      try {
        const e = listedFile(d, `${where}: entry ${i}`);
        if (!myRoots.has(e.rootDigest) && d.mediaType === MT.OCI_MANIFEST) kept.push({ d, e });
      } catch {
        dropped.push(String(d.digest));
      }
    });
    const useful = ancestorsOf([...mine, ...kept.map((k) => k.e)], target);
    for (const k of kept.filter((x) => !useful.has(x.e.imageId))) dropped.push(k.e.manifestDigest);
    const d4 = [...kept.filter((x) => useful.has(x.e.imageId)).map((x) => x.d), ...ours];
    const seen = new Set<string>();
    const rootOf = (d: ReferrerDescriptor): string => String(d.annotations?.[ANN.rootDigest] ?? '');
    const sorted = d4
      .filter((d) => !seen.has(d.digest) && !!seen.add(d.digest))
      .sort((a, b) => (rootOf(a) < rootOf(b) ? -1 : rootOf(a) > rootOf(b) ? 1 : a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
    const bytes = referrersIndex([...foreign, ...sorted]);
    if (cur && bytes.equals(cur.bytes)) return { tag, digest: cur.digest, changed: false, entries: sorted.length, dropped };
    const digest = await client.putManifest(repo, tag, bytes, MT.OCI_INDEX);
    const back = await readReferrersTag(client, repo, subjectDigest);
    if (back && back !== 'other' && ours.every((d) => back.manifests.some((m) => m.digest === d.digest))) {
      return { tag, digest, changed: true, entries: sorted.length, dropped };
    }
  }
  throw unavailable(`${where}: the referrers list keeps changing under this publish (concurrent publishers?); run it again`);
}

/** What publishing each platform image of one reference shares. */
interface PublishCtx {
  o: PublishOptions;
  client: RegistryClient;
  /** Registry host of the image. */
  registry: string;
  repo: string;
  /** The image as the user named it, for messages. */
  where: string;
  level: LevelPreset;
  pool: WorkerPool;
  key: SigningKey | undefined;
  /** A temporary .cdimg path in the work directory (removed at the end unless moved). */
  temp: (name: string) => string;
}

/** A file made for a subject: the full image, or a delta from a base. */
interface MadeFile {
  path: string;
  file: ArtifactFile;
  base?: string;
  plainPullBytes?: number;
}

/** Convert the image by its manifest's digest: the files describe exactly the manifest they are attached to. */
async function convertSubject(c: PublishCtx, subject: Subject): Promise<{ path: string; platform: string; full: ArtifactFile }> {
  const { o, where } = c;
  const fullTmp = c.temp('full');
  await convertImage({ ref: `docker://${c.registry}/${c.repo}@${subject.digest}`, output: fullTmp, level: LEVELS[c.level], pool: c.pool, registry: o.registry, onProgress: o.onProgress });
  const r = await CdimgReader.open(fullTmp);
  const platform = r.index.image.platform;
  const manifestDigest = r.index.image.manifestDigest;
  await r.close();
  if (manifestDigest !== subject.digest) throw corrupt(`${where}: converted manifest ${manifestDigest}, expected ${subject.digest}`);
  return { path: fullTmp, platform, full: await describeFile(fullTmp) };
}

/** The deltas from each base of `o.bases` (converted first unless a full .cdimg) to the full image; a base that is the image itself, or repeats one, is skipped. */
async function makeDeltas(c: PublishCtx, fullPath: string, full: ArtifactFile, platform: string): Promise<{ deltas: MadeFile[]; bases: PublishedBase[] }> {
  const { o, level, pool } = c;
  const deltas: MadeFile[] = [];
  const bases: PublishedBase[] = [];
  for (const [i, base] of (o.bases ?? []).entries()) {
    let basePath: string;
    if (base.endsWith('.cdimg') && (await exists(base))) basePath = base;
    else {
      basePath = c.temp(`base-${i}`);
      await convertImage({ ref: base, output: basePath, platform, level: LEVELS[level], pool, registry: o.registry, onProgress: o.onProgress });
    }
    const b = await describeFile(basePath);
    if (b.kind !== 'full') throw invalidArgument(`base ${base} is a delta; a base is a full image`);
    const already = bases.find((x) => x.imageId === b.imageId);
    if (b.imageId === full.imageId || already) {
      bases.push({ base, imageId: b.imageId, deltaBytes: null, fullBytes: full.size, skipped: already ? `same image as base ${already.base}` : 'the image itself' });
      continue;
    }
    const out = c.temp(`delta-${i}`);
    const s = await diffImages({ oldPath: basePath, newPath: fullPath, out, level, pool, onProgress: o.onProgress });
    const file = await describeFile(out);
    deltas.push({ path: out, file, base, plainPullBytes: s.plainPullBytes });
    bases.push({ base, imageId: b.imageId, deltaBytes: file.size, fullBytes: full.size });
  }
  return { deltas, bases };
}

/** Signatures of each file: those on the artifacts already, plus the key's unless it signed the file already. */
async function attachSignatures(c: PublishCtx, subject: Subject, made: MadeFile[]): Promise<void> {
  const { client, repo, key } = c;
  const api = await client.referrers(repo, subject.digest);
  const tagNow = await readReferrersTag(client, repo, subject.digest);
  const listed = [...((api?.manifests ?? []) as unknown as ReferrerDescriptor[]), ...(tagNow && tagNow !== 'other' ? tagNow.manifests : [])].filter(isD4fsReferrer);
  for (const m of made) {
    const held = await signaturesHeld(client, repo, listed, m.file.rootDigest);
    const mineToo: SignatureFile | undefined = key && !held?.signatures.some((s) => s.keyId === key.keyId) ? { mediaType: SIGNATURE_MEDIA_TYPE, kind: 'cdimg', subject: m.file.rootDigest, signatures: [signRoot(key, 'cdimg', m.file.rootDigest)] } : undefined;
    const signature = mergeSignatures(held, mineToo, `signatures of ${m.file.rootDigest}`);
    if (signature) m.file.signature = signature;
  }
}

/**
 * Push the files, their configs and manifests (by digest: no tag moves);
 * with `o.outDir` keep each file there. `indexed`: the registry indexed the
 * subject of every manifest (it answered OCI-Subject).
 */
async function pushFiles(c: PublishCtx, subject: Subject, made: MadeFile[]): Promise<{ files: PublishedFile[]; descriptors: ReferrerDescriptor[]; indexed: boolean }> {
  const { o, client, repo } = c;
  const files: PublishedFile[] = [];
  const descriptors: ReferrerDescriptor[] = [];
  let indexed = true;
  for (const m of made) {
    const uploaded = (await client.pushBlob(repo, m.file.fileDigest, m.file.size, () => createReadStream(m.path))) === 'uploaded';
    const doc = fileManifest(m.file, subject);
    await client.pushBlob(repo, digestOf(doc.config), doc.config.length, () => Readable.from([doc.config]));
    const put = await client.putManifestInfo(repo, digestOf(doc.bytes), doc.bytes, MT.OCI_MANIFEST);
    if (put.ociSubject !== subject.digest) indexed = false;
    descriptors.push(referrerDescriptor(doc.bytes));
    let kept: string | undefined;
    if (o.outDir) {
      kept = join(o.outDir, `${contentTag(m.file)}.cdimg`);
      if (m.path !== kept) await fsp.rename(m.path, kept);
      if (m.file.signature) await writeSignatureFile(signaturePathOf(kept), m.file.signature);
    }
    const { signature, ...info } = m.file;
    files.push({ ...info, manifestDigest: put.digest, manifestSize: doc.bytes.length, uploaded, signatures: signature?.signatures.length ?? 0, ...(kept ? { path: kept } : {}), ...(m.base ? { base: m.base, plainPullBytes: m.plainPullBytes } : {}) });
  }
  return { files, descriptors, indexed };
}

/** Publish one platform image: convert it, diff it from the bases, sign, push, and keep the referrers tag when the registry has no referrers API. */
async function publishSubject(c: PublishCtx, subject: Subject): Promise<PublishedImage> {
  const { path, platform, full } = await convertSubject(c, subject);
  const { deltas, bases } = await makeDeltas(c, path, full, platform);
  const made: MadeFile[] = [{ path, file: full }, ...deltas];
  await attachSignatures(c, subject, made);
  const { files, descriptors, indexed } = await pushFiles(c, subject, made);
  const referrers = indexed ? undefined : await updateReferrersTag(c.client, c.repo, subject.digest, descriptors, full.imageId);
  return { platform, subject, imageId: full.imageId, files, bases, referrersApi: indexed, ...(referrers ? { referrersTag: referrers } : {}) };
}

/**
 * Publish the d4fs files of the image `o.image` names as artifacts attached
 * to its manifest(s) in its own repository (see the module comment).
 */
export async function publishImage(o: PublishOptions): Promise<PublishResult> {
  const t0 = process.hrtime.bigint();
  const ref = parseRegistryTarget(o.image);
  const reference = (ref.tag ?? ref.digest) as string;
  if (ref.tag && (isContentTag(ref.tag) || /^sha256-[a-f0-9]{64}$/.test(ref.tag))) throw invalidArgument(`${ref.tag} is a d4fs or referrers tag, not an image tag`);
  const level: LevelPreset = o.level ?? 'default';
  if (!['fast', 'default', 'best'].includes(level)) throw invalidArgument(`unknown level "${level}": use fast, default or best`);
  const repo = ref.repository;
  const where = `${ref.registry}/${repo}${ref.tag ? ':' : '@'}${reference}`;
  const key: SigningKey | undefined = o.signKey ? await loadSigningKey(o.signKey) : undefined;
  const client = new RegistryClient(ref.registry, o.registry ?? {}, o.tuning);
  const pool = o.pool ?? new WorkerPool(o.threads, { eager: true });
  const work = o.outDir ?? (await fsp.mkdtemp(join(tmpdir(), 'd4fs-publish-')));
  if (o.outDir) await fsp.mkdir(o.outDir, { recursive: true });
  const temps: string[] = [];
  const temp = (name: string): string => {
    const p = join(work, `.publish-${process.pid}-${temps.length}-${name}.cdimg`);
    temps.push(p);
    return p;
  };
  const c: PublishCtx = { o, client, registry: ref.registry, repo, where, level, pool, key, temp };
  try {
    const top = await client.getManifest(repo, reference);
    if (isD4fsDocument(top)) throw invalidArgument(`${where} is a d4fs artifact (pushed with \`ctr-cli push --to\`), not an image: publish the image's own tag`);
    const subjects = await subjectsOf(client, repo, top, where, o);
    const images: PublishedImage[] = [];
    for (const subject of subjects) images.push(await publishSubject(c, subject));
    // the user's tag is not touched: say so if it moved under us (another push), rather than attach to a stale manifest silently
    const now = await client.getManifest(repo, reference);
    if (now.digest !== top.digest) throw failedPrecondition(`${where} moved to ${now.digest} during the publish (it was ${top.digest}): the files are attached to the old manifest; publish again`);
    return { registry: ref.registry, repository: repo, reference, manifestDigest: top.digest, images, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  } finally {
    await Promise.all(temps.map((t) => fsp.rm(t, { force: true })));
    if (!o.outDir) await fsp.rm(work, { recursive: true, force: true });
    if (!o.pool) await pool.close();
    await client.close();
  }
}
