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
 */
import { corrupt, unsupported } from '../errors';
import { MT } from '../oci/mediatypes';
import { parseSignatureFile, SignatureFile } from '../signing';
import type { Descriptor } from '../oci/types';
import { parseDigest, digestOf } from '../util/digest';
import { CDIMG_MEDIA_TYPE, FileInfo } from './protocol';

export const ARTIFACT_TYPE = CDIMG_MEDIA_TYPE;
export const CONFIG_MEDIA_TYPE = 'application/vnd.d4fs.cdimg.config.v1+json';
export const INDEX_ARTIFACT_TYPE = 'application/vnd.d4fs.cdimg.index.v1';

export const ANN = {
  kind: 'io.d4fs.kind',
  imageId: 'io.d4fs.image-id',
  parentId: 'io.d4fs.parent-id',
  rootDigest: 'io.d4fs.root-digest',
  size: 'io.d4fs.size',
  signature: 'io.d4fs.signature',
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

/** The artifact manifest of a file (deterministic bytes: pushing twice gives the same digest). */
export function fileManifest(f: ArtifactFile): { bytes: Buffer; config: Buffer } {
  const config = configBytes(f);
  const doc = {
    schemaVersion: 2,
    mediaType: MT.OCI_MANIFEST,
    artifactType: ARTIFACT_TYPE,
    config: { mediaType: CONFIG_MEDIA_TYPE, digest: digestOf(config), size: config.length },
    layers: [{ mediaType: CDIMG_MEDIA_TYPE, digest: f.fileDigest, size: f.size, annotations: { [ANN.title]: `${f.rootDigest.slice(7)}.cdimg` } }],
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

/** Parse a fetched file manifest: the file it carries and its layer descriptor. */
export function parseFileManifest(bytes: Buffer, what: string): { file: ArtifactFile; configDigest: string; signatureError?: string } {
  let doc: { config?: Descriptor; layers?: Descriptor[]; annotations?: Record<string, string> };
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
  return { file: { ...info, fileDigest, ...(signature ? { signature } : {}) }, signatureError, configDigest: parseDigest(String(doc.config.digest), 'config digest') };
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
  const entries = doc.manifests.map((m, i) => {
    const f = fileFromAnnotations(m.annotations, `${what}: entry ${i}`);
    if (!Number.isSafeInteger(m.size) || m.size <= 0) throw corrupt(`${what}: entry ${i}: invalid size`);
    return { ...f, manifestDigest: parseDigest(String(m.digest), 'manifest digest'), manifestSize: m.size };
  });
  return { target, entries };
}
