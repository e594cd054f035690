/**
 * `ctr-cli push --cdimg FILE --to docker://REGISTRY/REPO:TAG` and
 * `ctr-cli pull --from docker://REGISTRY/REPO:TAG`: an OCI registry as the
 * store of d4fs files (artifact layout and tag convention in artifact.ts).
 *
 * Push uploads the file (chunked, digest-checked), its config and its
 * artifact manifest under the content tag, then rewrites TAG's index
 * artifact from the repository's content tags. Pull reads TAG's index, plans
 * the cheapest chain from the versions the local store holds (the planner the
 * server uses), fetches those artifacts by digest, verifies and stores them.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import { Readable } from 'node:stream';
import { CdimgReader } from '../format/reader';
import { corrupt, D4fsError, failedPrecondition, invalidArgument } from '../errors';
import { MT } from '../oci/mediatypes';
import { parseRegistryRef } from '../oci/ref';
import { RegistryClient, ClientTuning } from '../oci/registry/client';
import type { RegistryOptions } from '../oci/registry/options';
import { checkImageName, LocalStore } from '../store/store';
import { policyRequires, SignaturePolicy } from '../signing';
import { digestOf, fileDigestOf } from '../util/digest';
import { mapLimit } from '../util/ordered';
import { ancestorsOf, planChain } from './planner';
import { ArtifactEntry, ArtifactFile, contentTag, fileManifest, INDEX_ARTIFACT_TYPE, isContentTag, parseFileManifest, parseTagIndex, tagIndex } from './artifact';
import { downloadBlob, registrySource, sweepParts } from './download';
import { containerdLoader } from './load';
import type { FileInfo } from './protocol';
import { checkDownloaded, checkHeld, checkPlanChain, describe, Downloaded, finishPull, keepHeldSignatures, noteSignedBy, offeredImages, openStore, PulledFile, PullCommon, PullResult, storeDownloaded } from './pull';
import { signatureToSend } from './push';
import { attachedImage, checkAttachedImage } from './referrers';
import { mergeSignatures } from './signatures';

/** "docker://HOST/REPO:TAG" (the docker:// is optional) → parts; a tag is required. */
export function parseRegistryTarget(s: string): { registry: string; repository: string; tag?: string; digest?: string } {
  const r = parseRegistryRef(s.replace(/^docker:\/\//, ''));
  return { registry: r.registry, repository: r.repository, tag: r.digest ? undefined : r.tag, digest: r.digest };
}

export interface RegistryPushOptions {
  file: string;
  /** Signature file to send (default FILE.sig when it exists). */
  signature?: string;
  /** docker://REGISTRY/REPO:TAG */
  to: string;
  registry?: RegistryOptions;
  tuning?: ClientTuning;
}

export interface RegistryPushResult extends ArtifactEntry {
  registry: string;
  repository: string;
  tag: string;
  contentTag: string;
  /** Digest of TAG's index artifact. */
  indexDigest: string;
  /** Files TAG's index lists. */
  indexed: number;
  /** Whether the file's bytes had to be uploaded. */
  uploaded: boolean;
  /** Content tags that could not be read (left out of the index). */
  warnings: string[];
  /** Signatures sent with the file (0: none). */
  signaturesSent: number;
  /** Signatures the file's artifact carries now. */
  signatures: number;
  seconds: number;
}

/** Every d4fs file artifact of a repository, from its content tags. */
export async function listArtifacts(client: RegistryClient, repo: string): Promise<{ entries: ArtifactEntry[]; warnings: string[] }> {
  let tags: string[];
  try {
    tags = await client.listTags(repo);
  } catch (e) {
    if (e instanceof D4fsError && e.kind === 'NOT_FOUND') return { entries: [], warnings: [] };
    throw e;
  }
  const warnings: string[] = [];
  const found = await mapLimit(tags.filter(isContentTag).sort(), 8, async (t) => {
    try {
      const m = await client.getManifest(repo, t);
      const { file } = parseFileManifest(m.bytes, `${repo}:${t}`);
      if (contentTag(file) !== t) throw corrupt(`${repo}:${t} carries ${contentTag(file)}`);
      return { ...file, manifestDigest: m.digest, manifestSize: m.bytes.length };
    } catch (e) {
      if (!(e instanceof D4fsError) || (e.kind !== 'CORRUPT' && e.kind !== 'UNSUPPORTED' && e.kind !== 'NOT_FOUND')) throw e;
      warnings.push(`${repo}:${t}: ${e.message}`);
      return undefined;
    }
  });
  const byRoot = new Map<string, ArtifactEntry>();
  for (const f of found) if (f) byRoot.set(f.rootDigest, f);
  return { entries: [...byRoot.values()], warnings };
}

/**
 * Store one file as an artifact in `repo`: its bytes (skipped when the
 * repository has the blob), its config and its manifest under the file's
 * content tag. `file` must describe the bytes at `path` (the registry checks
 * the digest as they arrive). Idempotent.
 */
export async function pushFileArtifact(client: RegistryClient, repo: string, file: ArtifactFile, path: string): Promise<ArtifactEntry & { uploaded: boolean }> {
  const uploaded = (await client.pushBlob(repo, file.fileDigest, file.size, () => createReadStream(path))) === 'uploaded';
  const m = fileManifest(file);
  await client.pushBlob(repo, digestOf(m.config), m.config.length, () => Readable.from([m.config]));
  const manifestDigest = await client.putManifest(repo, contentTag(file), m.bytes, MT.OCI_MANIFEST);
  return { ...file, manifestDigest, manifestSize: m.bytes.length, uploaded };
}

export async function pushToRegistry(o: RegistryPushOptions): Promise<RegistryPushResult> {
  const t0 = process.hrtime.bigint();
  const ref = parseRegistryTarget(o.to);
  if (!ref.tag) throw invalidArgument(`push --to needs a tag (docker://REGISTRY/REPO:TAG), not a digest`);
  if (isContentTag(ref.tag)) throw invalidArgument(`tag ${ref.tag} is reserved for d4fs content tags`);
  const r = await CdimgReader.open(o.file);
  const info: FileInfo = { rootDigest: r.rootDigest, kind: r.isDelta ? 'delta' : 'full', imageId: r.imageId, parentId: r.parentId ?? '', size: r.fileSize };
  await r.close();
  const fileDigest = await fileDigestOf(o.file);
  const sig = await signatureToSend(o.file, o.signature);
  // a registry checks nothing: a signature of another file is refused here, before anything is sent
  if (sig && (sig.kind !== 'cdimg' || sig.subject !== info.rootDigest)) {
    throw corrupt(`${o.signature ?? `${o.file}.sig`}: the signature is for another file (${sig.kind} ${sig.subject}), ${o.file} is cdimg ${info.rootDigest}`);
  }
  const client = new RegistryClient(ref.registry, o.registry ?? {}, o.tuning);
  try {
    const repo = ref.repository;
    const { entries, warnings } = await listArtifacts(client, repo);
    if (info.kind === 'delta' && !entries.some((e) => e.imageId === info.parentId)) {
      throw failedPrecondition(`${o.file} is a delta from image ${info.parentId}, which ${ref.registry}/${repo} does not hold: push that image (or a chain leading to it) first`);
    }
    // the signatures the registry has for this file stay: a push adds, never drops
    const had = entries.find((e) => e.rootDigest === info.rootDigest && e.fileDigest === fileDigest)?.signature;
    const signature = mergeSignatures(had?.subject === info.rootDigest ? had : undefined, sig, `signatures of ${o.file}`);
    const { uploaded, ...entry } = await pushFileArtifact(client, repo, { ...info, fileDigest, ...(signature ? { signature } : {}) }, o.file);
    const ctag = contentTag(entry);
    const all = [...entries.filter((e) => e.rootDigest !== entry.rootDigest), entry];
    const useful = ancestorsOf(all, entry.imageId);
    const listed = all.filter((e) => useful.has(e.imageId));
    const indexDigest = await client.putManifest(repo, ref.tag, tagIndex(entry.imageId, listed), MT.OCI_INDEX);
    return {
      registry: ref.registry,
      repository: repo,
      tag: ref.tag,
      contentTag: ctag,
      ...entry,
      indexDigest,
      indexed: listed.length,
      uploaded,
      warnings,
      signaturesSent: sig?.signatures.length ?? 0,
      signatures: signature?.signatures.length ?? 0,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } finally {
    await client.close();
  }
}

export interface RegistryPullOptions extends PullCommon {
  /** docker://REGISTRY/REPO:TAG (or @sha256: of an index or file artifact). */
  from: string;
  /** Local name (default REPO:TAG). */
  image?: string;
  registry?: RegistryOptions;
  tuning?: ClientTuning;
  /** Network failures retried (resuming) per file within this run (default 2). */
  retries?: number;
  retryDelayMs?: number;
}

export async function pullFromRegistry(o: RegistryPullOptions): Promise<PullResult> {
  const t0 = process.hrtime.bigint();
  const ref = parseRegistryTarget(o.from);
  const reference = (ref.tag ?? ref.digest) as string;
  const name = checkImageName(o.image ?? `${ref.repository}:${ref.tag ?? 'latest'}`);
  const loader = o.noLoad ? undefined : (o.loader ?? containerdLoader());
  const { store, close } = await openStore(o.store);
  const client = new RegistryClient(ref.registry, o.registry ?? {}, o.tuning);
  const repo = ref.repository;
  const where = `${ref.registry}/${repo}${ref.tag ? ':' : '@'}${reference}`;
  try {
    const top = await client.getManifest(repo, reference);
    let target: string;
    let entries: (FileInfo & { manifestDigest: string })[];
    // an ordinary image: the d4fs files attached to its manifest (`ctr-cli publish`, referrers.ts)
    const attached = await attachedImage(client, repo, top, where);
    if (attached) {
      target = attached.target;
      entries = attached.entries;
    } else if (top.mediaType === MT.OCI_INDEX) {
      const idx = parseTagIndex(top.bytes, where);
      target = idx.target;
      entries = idx.entries;
    } else if (top.mediaType === MT.OCI_MANIFEST) {
      const { file } = parseFileManifest(top.bytes, where);
      target = file.imageId;
      entries = [{ ...file, manifestDigest: top.digest }];
    } else {
      throw invalidArgument(`${where} is not a d4fs artifact (${top.mediaType}); expected an ${INDEX_ARTIFACT_TYPE} index or a d4fs file manifest`);
    }
    const fetched = await fetchChain({ client, repo, registry: ref.registry, where, entries, target, store, policy: o.policy, retries: o.retries, retryDelayMs: o.retryDelayMs, onProgress: o.onProgress });
    const { files, plan } = fetched;
    if (attached) await checkAttachedImage(store, target, attached.manifest, where);
    const loaded = await finishPull(store, name, target, loader, o.load);
    return {
      name,
      imageId: target,
      from: plan.from ?? null,
      upToDate: plan.files.length === 0,
      files,
      bytes: files.reduce((n, f) => n + f.bytes, 0),
      ...loaded,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } finally {
    await client.close();
    close();
  }
}

/** What {@link fetchChain} needs: the files a registry lists toward `target`, and where to put them. */
export interface FetchChainOptions {
  client: RegistryClient;
  repo: string;
  /** Registry host (for messages). */
  registry: string;
  /** What is being pulled (for messages). */
  where: string;
  entries: (FileInfo & { manifestDigest: string })[];
  /** The d4fs image id to reach. */
  target: string;
  store: LocalStore;
  policy?: SignaturePolicy;
  retries?: number;
  retryDelayMs?: number;
  onProgress?: PullCommon['onProgress'];
}

/**
 * Plan the cheapest chain of listed files from what the store holds to
 * `target`, download what is missing (resumable, every byte verified, the
 * image id recomputed on open) and store it. Shared by `ctr-cli pull --from`
 * and the snapshotter's CRI pulls.
 */
export async function fetchChain(o: FetchChainOptions): Promise<{ files: PulledFile[]; plan: { from?: string | null; files: unknown[] } }> {
  const { client, repo, where, entries, target, store } = o;
  const ref = { registry: o.registry };
  const policy = policyRequires(o.policy) ? o.policy : undefined;
  const held = new Set(await offeredImages(store, policy));
  const plan = planChain(entries, held, target);
  if (!plan) throw failedPrecondition(`${where}: no chain of listed files leads to ${target}`);
  checkPlanChain(plan.files, held, target, where);
  const storedRoots = new Set(store.files().map((f) => f.rootDigest));
  // with a policy, what the pull builds on must be trusted too (checked before anything moves)
  // a held file of the plan may be trusted through the signatures its artifact carries
  const heldPlan = [];
  for (const f of plan.files.filter((x) => storedRoots.has(x.rootDigest))) {
    const signature = policy ? parseFileManifest((await client.getManifest(repo, f.manifestDigest)).bytes, `${ref.registry}/${repo}@${f.manifestDigest}`).file.signature : undefined;
    heldPlan.push({ rootDigest: f.rootDigest, signature });
  }
  const heldSigs = await checkHeld(store, policy, plan.files.length ? plan.from : target, heldPlan);
  const tmpDir = dirname(store.tempPath('pull'));
  await fsp.mkdir(tmpDir, { recursive: true });
  const files: PulledFile[] = [];
  const pending: Downloaded[] = [];
  for (const [i, e] of plan.files.entries()) {
    const base: PulledFile = { rootDigest: e.rootDigest, kind: e.kind, imageId: e.imageId, parentId: e.parentId, size: e.size, merged: false, downloaded: false, bytes: 0, resumedFrom: 0, refetched: false, signatures: 0 };
    if (storedRoots.has(e.rootDigest)) {
      files.push(base);
      continue;
    }
    const what = `${ref.registry}/${repo}@${e.manifestDigest}`;
    const m = await client.getManifest(repo, e.manifestDigest);
    const { file, signatureError } = parseFileManifest(m.bytes, what);
    for (const k of ['rootDigest', 'kind', 'imageId', 'parentId', 'size'] as const) {
      if (file[k] !== e[k]) throw corrupt(`${what}: ${k} is ${file[k]}, the index says ${e[k]}`);
    }
    const d = await downloadBlob(registrySource(client, repo), { rootDigest: file.rootDigest, fileDigest: file.fileDigest, size: file.size }, tmpDir, {
      retries: o.retries,
      retryDelayMs: o.retryDelayMs,
      onProgress: (done, total) => o.onProgress?.({ file: i + 1, files: plan.files.length, rootDigest: e.rootDigest, done, total }),
    });
    try {
      await checkDownloaded(d.path, file, what);
    } catch (err) {
      await fsp.rm(d.path, { force: true });
      throw err;
    }
    const dl: Downloaded = { path: d.path, file, signature: file.signature, signatureError, what: describe(file, `${ref.registry}/${repo}`) };
    // no policy: stored as soon as it is here; with one, every downloaded file is checked before any is stored
    if (policy) pending.push(dl);
    else await storeDownloaded(store, [dl], undefined);
    files.push({ ...base, downloaded: true, bytes: d.downloaded, resumedFrom: d.resumedFrom, refetched: d.refetched, signatures: file.signature?.signatures.length ?? 0 });
  }
  await storeDownloaded(store, pending, policy);
  await keepHeldSignatures(heldSigs);
  await noteSignedBy(store, files, policy);
  await sweepParts(tmpDir);
  return { files, plan };
}
