/**
 * The containerd view of a d4fs image: an OCI image manifest with ONE layer
 * that is not a tar but a tiny JSON "pointer" naming the d4fs image, and the
 * original image config with its rootfs reduced to one synthetic diff ID.
 *
 * containerd never downloads or unpacks that layer: the snapshot of its
 * chain ID (= the synthetic diff ID, since it is the only layer) is provided
 * by the d4fs snapshotter as a FUSE mount of the image. Everything here is
 * pure (bytes in, bytes out) and deterministic.
 */
import { createHash } from 'node:crypto';
import { corrupt } from '../errors';
import { D4FS_ANNOTATIONS } from '../labels';
import type { Descriptor } from './client';

/** Media type of the d4fs pointer layer (defined here only). */
export const D4FS_LAYER_MEDIA_TYPE = 'application/vnd.d4fs.image.layer.v1+json';

/** OCI media types of the manifest and config this module writes. */
export const OCI_MANIFEST_MEDIA_TYPE = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG_MEDIA_TYPE = 'application/vnd.oci.image.config.v1+json';

/** A blob to write into the content store, with its descriptor. */
export interface ContentBlob {
  descriptor: Descriptor;
  bytes: Buffer;
}

/** What {@link buildContainerdImage} produces. */
export interface ContainerdImage {
  /** The pointer layer. */
  layer: ContentBlob;
  /** The rewritten image config. */
  config: ContentBlob;
  /** The OCI manifest naming config and layer. */
  manifest: ContentBlob;
  /** The synthetic diff ID of the single layer. */
  diffId: string;
  /** Chain ID of the single layer: equal to `diffId`. */
  chainId: string;
}

export interface ContainerdImageInput {
  /** d4fs image id ("sha256:…"). */
  imageId: string;
  /** Root digest of the .cdimg that delivered the image (informational). */
  rootDigest: string;
  /** The original image config JSON (from the .cdimg index). */
  configJson: Buffer;
}

/** "sha256:<hex>" of `bytes`. */
export function sha256Digest(bytes: Buffer | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** The synthetic diff ID naming d4fs image `imageId`: sha256("d4fs-image:" + imageId). */
export function d4fsDiffId(imageId: string): string {
  return sha256Digest(`d4fs-image:${imageId}`);
}

/** A descriptor and bytes for `value` serialised as JSON. */
function jsonBlob(mediaType: string, value: unknown, annotations?: Record<string, string>): ContentBlob {
  const bytes = Buffer.from(JSON.stringify(value));
  const descriptor: Descriptor = { mediaType, digest: sha256Digest(bytes), size: bytes.length };
  if (annotations) descriptor.annotations = annotations;
  return { descriptor, bytes };
}

type Json = Record<string, unknown>;

/**
 * The original config with `rootfs.diff_ids` = [diffId] and a history in
 * which exactly one entry describes a layer: every original entry is kept
 * but marked `empty_layer` (they describe how the image was built), and one
 * entry for the flattened d4fs layer is appended. An original config without
 * history stays without history.
 */
export function rewriteConfig(configJson: Buffer, imageId: string, diffId: string): Json {
  let cfg: unknown;
  try {
    cfg = JSON.parse(configJson.toString('utf8'));
  } catch (e) {
    throw corrupt(`image ${imageId}: its config is not valid JSON (${(e as Error).message})`, e);
  }
  if (!cfg || typeof cfg !== 'object' || Array.isArray(cfg)) throw corrupt(`image ${imageId}: its config is not a JSON object`);
  const out: Json = { ...(cfg as Json) };
  out.rootfs = { type: 'layers', diff_ids: [diffId] };
  if (Array.isArray(out.history)) {
    const history = (out.history as unknown[]).filter((h): h is Json => !!h && typeof h === 'object' && !Array.isArray(h));
    const layers = history.filter((h) => h.empty_layer !== true).length;
    const flattened: Json = {
      created_by: `d4fs: image ${imageId}, ${layers} layer${layers === 1 ? '' : 's'} flattened`,
      comment: 'd4fs delta image: served by the d4fs snapshotter',
    };
    if (typeof out.created === 'string') flattened.created = out.created;
    out.history = [...history.map((h) => ({ ...h, empty_layer: true })), flattened];
  }
  return out;
}

/** Builds the pointer layer, config and manifest of d4fs image `imageId`. */
export function buildContainerdImage(input: ContainerdImageInput): ContainerdImage {
  const { imageId, rootDigest } = input;
  if (!/^sha256:[0-9a-f]{64}$/.test(imageId)) throw corrupt(`invalid d4fs image id "${imageId.slice(0, 80)}"`);
  if (input.configJson.length === 0) throw corrupt(`image ${imageId}: the .cdimg carries no image config`);
  const diffId = d4fsDiffId(imageId);
  const layer = jsonBlob(D4FS_LAYER_MEDIA_TYPE, { mediaType: D4FS_LAYER_MEDIA_TYPE, imageId, rootDigest }, { [D4FS_ANNOTATIONS.imageId]: imageId, [D4FS_ANNOTATIONS.rootDigest]: rootDigest });
  const config = jsonBlob(OCI_CONFIG_MEDIA_TYPE, rewriteConfig(input.configJson, imageId, diffId));
  const manifest = jsonBlob(OCI_MANIFEST_MEDIA_TYPE, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST_MEDIA_TYPE,
    config: config.descriptor,
    layers: [layer.descriptor],
  });
  return { layer, config, manifest, diffId, chainId: diffId };
}
