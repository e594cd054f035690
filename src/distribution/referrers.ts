/**
 * Discovery of d4fs files attached to an ordinary image (OCI 1.1 referrers):
 * what `ctr-cli pull --from docker://REG/REPO:TAG` does when TAG names a
 * plain image, and what the snapshotter does for a CRI pull, given the
 * manifest digest containerd is unpacking.
 *
 * The registry's referrers API (GET /v2/<repo>/referrers/<digest>, filtered
 * by artifactType) is asked first; on registries without it (404: Debian's
 * docker-registry, distribution 2.x) the referrers tag schema is read: the
 * tag `sha256-<hex>` holds an OCI image index listing the subject's
 * referrers. A registry that has the API but lists no d4fs file is asked for
 * the tag too (files published before it had the API).
 *
 * Everything read here is untrusted. Each d4fs descriptor must describe a
 * file (the checks parseTagIndex makes on a tag index), and together they
 * must lead to one image (the target): otherwise CORRUPT. The files
 * themselves are checked when they are fetched (fetchChain: manifest fields
 * against the descriptor, bytes against their digest, image id recomputed),
 * and {@link checkAttachedImage} checks that the image reached is the one the
 * subject manifest describes (its config, which covers the diff_ids).
 */
import { corrupt, D4fsError, notFound, unsupported } from '../errors';
import { CdimgReader } from '../format/reader';
import { hostPlatform, formatPlatform } from '../oci/image';
import { INDEX_TYPES, MANIFEST_TYPES, MT } from '../oci/mediatypes';
import type { RegistryClient } from '../oci/registry/client';
import type { Platform, RawDocument } from '../oci/types';
import { ancestorsOf } from './planner';
import { parseSignatureFile } from '../signing';
import type { LocalStore } from '../store/store';
import { digestOf, parseDigest } from '../util/digest';
import { ANN, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, INDEX_ARTIFACT_TYPE, isD4fsReferrer, listedFile, ListedFile, parseReferrersIndex, ReferrerDescriptor, referrersTag, Subject } from './artifact';
import type { FileInfo } from './protocol';

export interface D4fsReferrers {
  /** d4fs image id every listed file leads to (the subject image's). */
  target: string;
  entries: (FileInfo & { manifestDigest: string; manifestSize: number })[];
}

/** The referrers tag of a subject as read: its descriptors and the index's digest and bytes. */
export interface ReferrersTagIndex {
  tag: string;
  digest: string;
  bytes: Buffer;
  manifests: ReferrerDescriptor[];
}

/**
 * Read the referrers tag (`sha256-<hex>`) of `subjectDigest`: undefined when
 * there is no such tag. A tag that holds something other than an OCI image
 * index is `other` (discovery then assumes no referrers, as the spec says; a
 * publisher refuses to overwrite it).
 */
export async function readReferrersTag(client: RegistryClient, repo: string, subjectDigest: string): Promise<ReferrersTagIndex | 'other' | undefined> {
  const tag = referrersTag(subjectDigest);
  let doc: RawDocument;
  try {
    doc = await client.getManifest(repo, tag);
  } catch (e) {
    if (e instanceof D4fsError && e.kind === 'NOT_FOUND') return undefined;
    throw e;
  }
  if (doc.mediaType !== MT.OCI_INDEX) return 'other';
  return { tag, digest: doc.digest, bytes: doc.bytes, manifests: parseReferrersIndex(doc.bytes, `${client.registry}/${repo}:${tag}`) };
}

/** Signatures an untrusted descriptor's annotation claims (0 when none or unreadable): to prefer the richer of two manifests of one file. */
function claimedSignatures(d: ReferrerDescriptor): number {
  const text = d.annotations?.[ANN.signature];
  if (typeof text !== 'string') return 0;
  try {
    return parseSignatureFile(text, 'annotation').signatures.length;
  } catch {
    return 0;
  }
}

/**
 * The one image `entries` lead to: the only image no listed delta starts
 * from, from which every listed file's image is an ancestor. CORRUPT when
 * there is none, or more than one.
 */
export function targetOf(entries: readonly FileInfo[], what: string): string {
  const parents = new Set(entries.filter((e) => e.kind === 'delta').map((e) => e.parentId));
  const sinks = [...new Set(entries.map((e) => e.imageId))].filter((id) => !parents.has(id));
  if (sinks.length !== 1) {
    throw corrupt(`${what}: the d4fs files attached lead to ${sinks.length ? `${sinks.length} images (${sinks.join(', ')})` : 'no image (their deltas form a cycle)'}, not to one`);
  }
  const useful = ancestorsOf(entries, sinks[0]);
  const stray = entries.find((e) => !useful.has(e.imageId));
  if (stray) throw corrupt(`${what}: the attached ${stray.kind} ${stray.rootDigest} leads to ${stray.imageId}, not to ${sinks[0]}`);
  return sinks[0];
}

/**
 * Validate the d4fs descriptors of a referrers list (others are ignored):
 * each must be an image manifest whose annotations describe a file (as in a
 * tag index), and together they must lead to one target. Two manifests of
 * one file (a republish that added signatures, on a registry that lists
 * both): the one claiming more signatures is kept. Undefined when none.
 */
export function d4fsReferrersOf(manifests: readonly ReferrerDescriptor[], what: string): D4fsReferrers | undefined {
  const byRoot = new Map<string, { e: ListedFile; sigs: number }>();
  manifests.forEach((m, i) => {
    if (!isD4fsReferrer(m)) return;
    const at = `${what}: referrer ${i}`;
    if (m.mediaType !== MT.OCI_MANIFEST) throw corrupt(`${at}: a d4fs artifact is an ${MT.OCI_MANIFEST}, not ${String(m.mediaType)}`);
    const e = listedFile(m, at);
    const sigs = claimedSignatures(m);
    const had = byRoot.get(e.rootDigest);
    if (had) {
      for (const k of ['kind', 'imageId', 'parentId', 'size'] as const) {
        if (had.e[k] !== e[k]) throw corrupt(`${at}: file ${e.rootDigest} is listed twice with different ${k}`);
      }
      if (sigs <= had.sigs) return;
    }
    byRoot.set(e.rootDigest, { e, sigs });
  });
  if (byRoot.size === 0) return undefined;
  const entries = [...byRoot.values()].map((x) => x.e);
  return { target: targetOf(entries, what), entries };
}

/**
 * d4fs artifacts attached to `subjectDigest` in `repo`: the referrers API
 * (GET /v2/<repo>/referrers/<digest>?artifactType=…) where the registry has
 * it, else the `sha256-<hex>` tag index; undefined when there are none.
 * Untrusted: entries validated (the same checks parseTagIndex makes), all
 * must lead to one target (else CORRUPT).
 */
export async function findD4fsReferrers(client: RegistryClient, repo: string, subjectDigest: string): Promise<D4fsReferrers | undefined> {
  parseDigest(subjectDigest, 'subject digest');
  const where = `${client.registry}/${repo}@${subjectDigest}`;
  const api = await client.referrers(repo, subjectDigest, ARTIFACT_TYPE);
  if (api) {
    const found = d4fsReferrersOf(api.manifests as unknown as ReferrerDescriptor[], `${where} (referrers API)`);
    if (found) return found;
  }
  const tag = await readReferrersTag(client, repo, subjectDigest);
  if (!tag || tag === 'other') return undefined;
  return d4fsReferrersOf(tag.manifests, `${client.registry}/${repo}:${tag.tag}`);
}

/** Whether `got` is a platform `want` accepts (os and architecture; the variant when both name one). */
function platformMatches(want: Platform, got: Platform | undefined): boolean {
  if (!got || got.os !== want.os || got.architecture !== want.architecture) return false;
  return !(want.variant && got.variant && want.variant !== got.variant);
}

function parseDoc(doc: RawDocument, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(doc.bytes.toString('utf8')) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    /* below */
  }
  throw corrupt(`${what}: manifest is not a JSON object`);
}

/** Whether a fetched document is one of d4fs's own (a tag index artifact or a file artifact), not an image. */
export function isD4fsDocument(doc: RawDocument): boolean {
  let v: { artifactType?: unknown; config?: { mediaType?: unknown } } | null;
  try {
    v = JSON.parse(doc.bytes.toString('utf8')) as typeof v;
  } catch {
    return false;
  }
  if (doc.mediaType === MT.OCI_INDEX) return v?.artifactType === INDEX_ARTIFACT_TYPE;
  if (doc.mediaType === MT.OCI_MANIFEST) return v?.config?.mediaType === CONFIG_MEDIA_TYPE;
  return false;
}

/**
 * The image manifest `top` resolves to for `platform` (default: this
 * machine's): `top` itself when it is an image manifest, else the matching
 * entry of an index (nested indexes followed), fetched by digest.
 */
export async function platformManifest(client: RegistryClient, repo: string, top: RawDocument, where: string, platform: Platform = hostPlatform()): Promise<{ subject: Subject; manifest: RawDocument }> {
  let doc = top;
  for (let depth = 0; INDEX_TYPES.includes(doc.mediaType); depth++) {
    if (depth > 4) throw corrupt(`${where}: nested indexes too deep`);
    const manifests = parseDoc(doc, where).manifests;
    const list = (Array.isArray(manifests) ? manifests : []) as { mediaType?: string; digest?: string; platform?: Platform }[];
    const pick = list.find((m) => MANIFEST_TYPES.includes(String(m.mediaType)) && platformMatches(platform, m.platform)) ?? list.find((m) => INDEX_TYPES.includes(String(m.mediaType)) && platformMatches(platform, m.platform));
    if (!pick) {
      const have = list.map((m) => (m.platform?.os && m.platform.architecture ? formatPlatform(m.platform) : '?')).join(', ');
      throw notFound(`${where}: no image for platform ${formatPlatform(platform)} (index has: ${have || 'nothing'})`);
    }
    let digest: string;
    try {
      digest = parseDigest(String(pick.digest), 'manifest digest');
    } catch (e) {
      throw corrupt(`${where}: ${(e as Error).message}`);
    }
    doc = await client.getManifest(repo, digest);
  }
  if (!MANIFEST_TYPES.includes(doc.mediaType)) throw unsupported(`${where}: unsupported manifest media type "${doc.mediaType}"`);
  return { subject: { mediaType: doc.mediaType, digest: doc.digest, size: doc.bytes.length }, manifest: doc };
}

/** An ordinary image and the d4fs files attached to its (platform) manifest. */
export interface AttachedImage extends D4fsReferrers {
  subject: Subject;
  /** The subject manifest's bytes (to check the image reached against: {@link checkAttachedImage}). */
  manifest: Buffer;
}

/**
 * For a pull of `top` (what a tag resolves to): undefined when `top` is
 * d4fs's own document (a tag index or file artifact: the caller reads it as
 * before); else the d4fs files attached to the image's manifest for this
 * machine's platform. NOT_FOUND when the image has none.
 */
export async function attachedImage(client: RegistryClient, repo: string, top: RawDocument, where: string, platform?: Platform): Promise<AttachedImage | undefined> {
  if (isD4fsDocument(top)) return undefined;
  if (!INDEX_TYPES.includes(top.mediaType) && !MANIFEST_TYPES.includes(top.mediaType)) return undefined;
  const { subject, manifest } = await platformManifest(client, repo, top, where, platform);
  const found = await findD4fsReferrers(client, repo, subject.digest);
  if (!found) {
    throw notFound(`${where} is an image with no d4fs files attached to its manifest ${subject.digest} (publish them with \`ctr-cli publish docker://${client.registry}/${repo}:TAG\`)`);
  }
  return { ...found, subject, manifest: manifest.bytes };
}

/**
 * Check that the image a pull reached through attached files is the image
 * the subject manifest describes: its config (which the image id covers, and
 * which lists the layers' diff_ids) must be the manifest's config. Stops an
 * artifact of another image attached to this manifest.
 */
export async function checkAttachedImage(store: LocalStore, target: string, manifest: Buffer, where: string): Promise<void> {
  let want: string;
  try {
    want = String((JSON.parse(manifest.toString('utf8')) as { config?: { digest?: unknown } } | null)?.config?.digest ?? '');
  } catch {
    throw corrupt(`${where}: the image's manifest is not JSON`);
  }
  const chain = store.chainFor(target);
  const r = await CdimgReader.open(chain[chain.length - 1].path, { reuse: true });
  try {
    const got = digestOf(r.index.image.configJson);
    if (got !== want) throw corrupt(`${where}: the d4fs image attached (${target}) has config ${got}, the image's manifest names config ${want}: it is another image`);
  } finally {
    await r.close();
  }
}
