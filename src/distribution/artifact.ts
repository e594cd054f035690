/**
 * .cdimg files as OCI artifacts, so that any OCI registry (distribution,
 * Harbor, a CDN in front of one) can carry d4fs images and deltas at scale.
 *
 * One file = one artifact manifest (OCI image manifest, artifactType
 * application/vnd.d4fs.cdimg.v1):
 *   config  application/vnd.d4fs.cdimg.config.v1+json
 *           {"kind","imageId","parentId","rootDigest","size"}
 *   layer   application/vnd.d4fs.cdimg.v1  = the .cdimg bytes (digest = sha256 of the file)
 *   annotations io.d4fs.kind / image-id / parent-id / root-digest / size
 *               io.d4fs.signature: the file's signature file (src/signing), JSON,
 *               when it is signed
 *
 * Why the signature is an annotation and not a second layer
 * (application/vnd.d4fs.signature.v1+json): it is a few hundred bytes that
 * every pull needs, and it comes with the manifest a pull fetches anyway (no
 * blob round trip); the layer list stays the one .cdimg layer that readers
 * (and older d4fs clients, which ignore unknown annotations) expect. The
 * manifest digest then covers the signature, and the tag index, which names
 * file manifests by digest, pins both. Adding a signature changes the
 * manifest under the content tag; pushes merge the signatures already there
 * so a later push never drops one.
 *
 * Tag convention in the repository:
 *   d4fs-full-<imageId hex, 32>                    the full image of a version
 *   d4fs-delta-<parentId hex, 32>-<imageId hex, 32> a delta between two versions
 *   <tag>   an index artifact (OCI image index, artifactType
 *           application/vnd.d4fs.cdimg.index.v1, annotation io.d4fs.image-id =
 *           the version <tag> names) listing every file of the repository
 *           that leads toward that version, each descriptor annotated like
 *           its manifest. A puller reads this one document, plans the
 *           cheapest chain from the versions it holds, and fetches only
 *           those artifacts by digest.
 *
 * The content tags are named by content (re-pushing is idempotent); only the
 * user's tag moves. Every field read back is validated, and every file is
 * checked against its digests after download.
 *
 * Attached to an ordinary image (`ctr-cli publish`, for CRI pulls): the same
 * file manifests, plus an OCI 1.1 `subject` = the image's (platform)
 * manifest, pushed by digest only (no content tag: the content tags keep the
 * manifests the tag indexes above name). They are found through the
 * registry's referrers API, or, on registries without it, through the
 * referrers tag schema: the tag `sha256-<hex of the subject digest>` is an
 * OCI image index listing every referrer of the subject (d4fs files and
 * anyone else's: signatures, SBOMs), each descriptor carrying its
 * artifactType and its manifest's annotations. Publishers merge into it,
 * keeping other tools' entries (see referrers.ts and publish.ts).
 */
import { corrupt, invalidArgument, unsupported } from '../errors';
import { D4FS_ANNOTATIONS } from '../labels';
import { MT } from '../oci/mediatypes';
import { parseSignatureFile, SignatureFile } from '../signing';
import type { Descriptor } from '../oci/types';
import { parseDigest, digestOf } from '../util/digest';
import { CDIMG_MEDIA_TYPE, FileInfo } from './protocol';

export const ARTIFACT_TYPE = CDIMG_MEDIA_TYPE;
export const CONFIG_MEDIA_TYPE = 'application/vnd.d4fs.cdimg.config.v1+json';
export const INDEX_ARTIFACT_TYPE = 'application/vnd.d4fs.cdimg.index.v1';

/** The annotations of artifacts: d4fs's (src/labels) and the OCI title. */
export const ANN = {
  ...D4FS_ANNOTATIONS,
  title: 'org.opencontainers.image.title',
} as const;

/** A file as the registry holds it: its metadata plus the digest of its bytes. */
export interface ArtifactFile extends FileInfo {
  /** sha256 of the .cdimg bytes (the layer blob). */
  fileDigest: string;
  /** The file's signatures (an annotation of its manifest). */
  signature?: SignatureFile;
}

/** An artifact file with the manifest that carries it. */
export interface ArtifactEntry extends ArtifactFile {
  manifestDigest: string;
  manifestSize: number;
}

const hex32 = (d: string): string => parseDigest(d).slice(7, 39);

/** Content tag of a file (see the module comment). */
export function contentTag(f: FileInfo): string {
  return f.kind === 'full' ? `d4fs-full-${hex32(f.imageId)}` : `d4fs-delta-${hex32(f.parentId)}-${hex32(f.imageId)}`;
}

/** Whether a tag is one of the content tags. */
export const isContentTag = (t: string): boolean => /^d4fs-(full-[a-f0-9]{32}|delta-[a-f0-9]{32}-[a-f0-9]{32})$/.test(t);

/** Annotations describing a file. */
function annotationsOf(f: ArtifactFile): Record<string, string> {
  const a: Record<string, string> = { [ANN.kind]: f.kind, [ANN.imageId]: f.imageId, [ANN.rootDigest]: f.rootDigest, [ANN.size]: String(f.size) };
  if (f.kind === 'delta') a[ANN.parentId] = f.parentId;
  return a;
}

/** Config blob of a file's artifact (deterministic bytes). */
export function configBytes(f: ArtifactFile): Buffer {
  return Buffer.from(JSON.stringify({ kind: f.kind, imageId: f.imageId, parentId: f.parentId, rootDigest: f.rootDigest, size: f.size }));
}

/** The manifest an artifact is attached to (OCI 1.1 `subject`): an image's (platform) manifest. */
export interface Subject {
  mediaType: string;
  digest: string;
  size: number;
}

/**
 * The artifact manifest of a file (deterministic bytes: pushing twice gives
 * the same digest). With `subject`, the manifest is attached to that image
 * manifest (found through the referrers API or tag schema).
 */
export function fileManifest(f: ArtifactFile, subject?: Subject): { bytes: Buffer; config: Buffer } {
  const config = configBytes(f);
  const doc = {
    schemaVersion: 2,
    mediaType: MT.OCI_MANIFEST,
    artifactType: ARTIFACT_TYPE,
    config: { mediaType: CONFIG_MEDIA_TYPE, digest: digestOf(config), size: config.length },
    layers: [{ mediaType: CDIMG_MEDIA_TYPE, digest: f.fileDigest, size: f.size, annotations: { [ANN.title]: `${f.rootDigest.slice(7)}.cdimg` } }],
    ...(subject ? { subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size } } : {}),
    annotations: f.signature?.signatures.length ? { ...annotationsOf(f), [ANN.signature]: JSON.stringify(f.signature) } : annotationsOf(f),
  };
  return { bytes: Buffer.from(JSON.stringify(doc)), config };
}

/** The index artifact a user tag points at. */
export function tagIndex(target: string, entries: readonly ArtifactEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => (a.rootDigest < b.rootDigest ? -1 : a.rootDigest > b.rootDigest ? 1 : 0));
  const doc = {
    schemaVersion: 2,
    mediaType: MT.OCI_INDEX,
    artifactType: INDEX_ARTIFACT_TYPE,
    manifests: sorted.map((e) => ({ mediaType: MT.OCI_MANIFEST, artifactType: ARTIFACT_TYPE, digest: e.manifestDigest, size: e.manifestSize, annotations: annotationsOf(e) })),
    annotations: { [ANN.imageId]: parseDigest(target) },
  };
  return Buffer.from(JSON.stringify(doc));
}

/** Read the file description out of annotations (validated). */
function fileFromAnnotations(a: Record<string, unknown> | undefined, what: string): FileInfo {
  if (!a || typeof a !== 'object') throw corrupt(`${what}: no d4fs annotations`);
  const kind = a[ANN.kind];
  if (kind !== 'full' && kind !== 'delta') throw corrupt(`${what}: ${ANN.kind} must be full or delta`);
  const size = Number(a[ANN.size]);
  if (!Number.isSafeInteger(size) || size <= 0) throw corrupt(`${what}: invalid ${ANN.size}`);
  const d = (k: string): string => {
    try {
      return parseDigest(String(a[k] ?? ''), k);
    } catch (e) {
      throw corrupt(`${what}: ${(e as Error).message}`);
    }
  };
  return { kind, imageId: d(ANN.imageId), parentId: kind === 'delta' ? d(ANN.parentId) : '', rootDigest: d(ANN.rootDigest), size };
}

/** Parse a fetched file manifest: the file it carries and its layer descriptor (and the subject it is attached to, if any). */
export function parseFileManifest(bytes: Buffer, what: string): { file: ArtifactFile; configDigest: string; signatureError?: string; subject?: Subject } {
  let doc: { config?: Descriptor; layers?: Descriptor[]; annotations?: Record<string, string>; subject?: unknown };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as typeof doc;
  } catch {
    throw corrupt(`${what}: manifest is not JSON`);
  }
  if (doc?.config?.mediaType !== CONFIG_MEDIA_TYPE) throw unsupported(`${what} is not a d4fs artifact (config media type ${String(doc?.config?.mediaType)})`);
  if (!Array.isArray(doc.layers) || doc.layers.length !== 1 || doc.layers[0].mediaType !== CDIMG_MEDIA_TYPE) throw corrupt(`${what}: a d4fs artifact has exactly one ${CDIMG_MEDIA_TYPE} layer`);
  const info = fileFromAnnotations(doc.annotations, what);
  const layer = doc.layers[0];
  if (layer.size !== info.size) throw corrupt(`${what}: layer size ${layer.size} differs from ${ANN.size} ${info.size}`);
  let fileDigest: string;
  try {
    fileDigest = parseDigest(String(layer.digest), 'layer digest');
  } catch (e) {
    throw corrupt(`${what}: ${(e as Error).message}`);
  }
  const sigText = doc.annotations?.[ANN.signature];
  let signature: SignatureFile | undefined;
  let signatureError: string | undefined;
  if (sigText !== undefined) {
    // a damaged signature leaves the file unsigned (a policy then refuses it, saying why), not unreadable
    try {
      signature = parseSignatureFile(String(sigText), `${what}: annotation ${ANN.signature}`);
    } catch (e) {
      signatureError = (e as Error).message;
    }
  }
  const subject = doc.subject === undefined ? undefined : parseSubject(doc.subject, what);
  return { file: { ...info, fileDigest, ...(signature ? { signature } : {}) }, signatureError, configDigest: parseDigest(String(doc.config.digest), 'config digest'), ...(subject ? { subject } : {}) };
}

/** A manifest's `subject` descriptor, validated. */
function parseSubject(v: unknown, what: string): Subject {
  const s = v as Partial<Subject> | null;
  if (!s || typeof s !== 'object' || typeof s.mediaType !== 'string' || !s.mediaType || !Number.isSafeInteger(s.size) || (s.size as number) <= 0) throw corrupt(`${what}: invalid subject`);
  return { mediaType: s.mediaType, digest: corruptDigest(s.digest, 'subject digest', what), size: s.size as number };
}

/** parseDigest for untrusted documents: a bad digest is CORRUPT. */
function corruptDigest(v: unknown, name: string, what: string): string {
  try {
    return parseDigest(String(v ?? ''), name);
  } catch (e) {
    throw corrupt(`${what}: ${(e as Error).message}`);
  }
}

/** A d4fs file as an index lists it (tag index or referrers list): its description and the manifest that carries it. */
export type ListedFile = FileInfo & { manifestDigest: string; manifestSize: number };

/** One descriptor of a d4fs index (tag index or referrers list), validated: the file its annotations describe and its manifest. */
export function listedFile(m: Descriptor | undefined, what: string): ListedFile {
  if (!m || typeof m !== 'object') throw corrupt(`${what}: not a descriptor`);
  const f = fileFromAnnotations(m.annotations, what);
  if (!Number.isSafeInteger(m.size) || m.size <= 0) throw corrupt(`${what}: invalid size`);
  return { ...f, manifestDigest: corruptDigest(m.digest, 'manifest digest', what), manifestSize: m.size };
}

/** Parse a tag's index artifact: the target version and the files listed. */
export function parseTagIndex(bytes: Buffer, what: string): { target: string; entries: (FileInfo & { manifestDigest: string; manifestSize: number })[] } {
  let doc: { artifactType?: string; manifests?: Descriptor[]; annotations?: Record<string, string> };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as typeof doc;
  } catch {
    throw corrupt(`${what}: index is not JSON`);
  }
  if (doc?.artifactType !== INDEX_ARTIFACT_TYPE || !Array.isArray(doc.manifests)) throw unsupported(`${what} is not a d4fs index artifact`);
  let target: string;
  try {
    target = parseDigest(String(doc.annotations?.[ANN.imageId] ?? ''), ANN.imageId);
  } catch (e) {
    throw corrupt(`${what}: ${(e as Error).message}`);
  }
  const entries = doc.manifests.map((m, i) => listedFile(m, `${what}: entry ${i}`));
  return { target, entries };
}

// ---------------------------------------------------------------------------
// Referrers (OCI 1.1): files attached to an image manifest

/** Largest referrers list read or written (the registry's manifest limit is 4 MiB too). */
const MAX_REFERRERS = 10_000;

/** The referrers tag of a manifest digest (distribution spec 1.1, referrers tag schema): `sha256-<hex>`. */
export function referrersTag(subjectDigest: string): string {
  return parseDigest(subjectDigest, 'subject digest').replace(':', '-');
}

/** A descriptor of a referrers list (what the referrers API answers, and what the tag schema's index holds). */
export interface ReferrerDescriptor extends Descriptor {
  artifactType?: string;
}

/**
 * The descriptor a referrers list holds for a pushed manifest: its media
 * type, digest and size, its artifactType (else its config's media type) and
 * all its annotations, as the spec asks.
 */
export function referrerDescriptor(manifest: Buffer): ReferrerDescriptor {
  let doc: { mediaType?: unknown; artifactType?: unknown; config?: { mediaType?: unknown }; annotations?: unknown };
  try {
    doc = JSON.parse(manifest.toString('utf8')) as typeof doc;
  } catch {
    throw invalidArgument('referrer manifest is not JSON');
  }
  const artifactType = typeof doc.artifactType === 'string' && doc.artifactType ? doc.artifactType : typeof doc.config?.mediaType === 'string' ? doc.config.mediaType : undefined;
  const annotations = doc.annotations && typeof doc.annotations === 'object' ? (doc.annotations as Record<string, string>) : undefined;
  return {
    mediaType: typeof doc.mediaType === 'string' ? doc.mediaType : MT.OCI_MANIFEST,
    ...(artifactType ? { artifactType } : {}),
    digest: digestOf(manifest),
    size: manifest.length,
    ...(annotations ? { annotations } : {}),
  };
}

/** Whether a referrers-list descriptor names a d4fs file artifact (others are other tools' and left alone). */
export const isD4fsReferrer = (d: { artifactType?: unknown } | null | undefined): boolean => !!d && typeof d === 'object' && d.artifactType === ARTIFACT_TYPE;

/**
 * The descriptors of a referrers list (an OCI image index, from the
 * referrers API or the referrers tag), checked for shape only. Entries that
 * are not objects are CORRUPT; their meaning is checked by the reader.
 */
export function parseReferrersIndex(bytes: Buffer, what: string): ReferrerDescriptor[] {
  let doc: { schemaVersion?: unknown; mediaType?: unknown; manifests?: unknown };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as typeof doc;
  } catch {
    throw corrupt(`${what}: referrers list is not JSON`);
  }
  if (!doc || typeof doc !== 'object' || !Array.isArray(doc.manifests)) throw corrupt(`${what}: a referrers list is an OCI image index with a manifests array`);
  if (doc.mediaType !== undefined && doc.mediaType !== MT.OCI_INDEX) throw corrupt(`${what}: referrers list has media type ${String(doc.mediaType)}, not ${MT.OCI_INDEX}`);
  if (doc.manifests.length > MAX_REFERRERS) throw corrupt(`${what}: more than ${MAX_REFERRERS} referrers`);
  doc.manifests.forEach((m, i) => {
    if (!m || typeof m !== 'object' || Array.isArray(m)) throw corrupt(`${what}: referrer ${i} is not a descriptor`);
  });
  return doc.manifests as ReferrerDescriptor[];
}

/** The bytes of a referrers tag index (an OCI image index) listing `manifests`, in order. */
export function referrersIndex(manifests: readonly ReferrerDescriptor[]): Buffer {
  if (manifests.length > MAX_REFERRERS) throw invalidArgument(`more than ${MAX_REFERRERS} referrers`);
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.OCI_INDEX, manifests }));
}
