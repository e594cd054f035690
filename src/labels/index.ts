/**
 * Every label key d4fs reads or writes, in one module.
 *
 * Labels are containerd's key/value metadata on images, content blobs,
 * leases and snapshots; annotations are the OCI descriptors' (d4fs's are at
 * the end). Two families of labels live here:
 *
 *  - containerd's own keys (garbage-collection references, snapshot
 *    inheritance, unpack bookkeeping), whose spelling is fixed by containerd;
 *  - d4fs's keys, all under `containerd.io/snapshot/d4fs.` so that containerd
 *    passes them on to the snapshotter (only keys with the
 *    `containerd.io/snapshot/` prefix, and `containerd.io/snapshot.ref`, are
 *    inherited by Prepare, View and Commit through containerd's metadata
 *    layer).
 *
 * Keys that take a suffix (an index, a snapshotter name) are exported as
 * prefixes together with a builder function.
 */

// ---------------------------------------------------------------------------
// containerd: garbage collection
// ---------------------------------------------------------------------------

/** Marks an object as a GC root: it is kept even when nothing references it. Value: any (RFC 3339 time by convention). */
export const GC_ROOT = 'containerd.io/gc.root';

/** Lease/object expiry: the object becomes collectable after this RFC 3339 time. */
export const GC_EXPIRE = 'containerd.io/gc.expire';

/** On a lease: collect snapshots flat (do not keep parents of referenced snapshots). */
export const GC_FLAT = 'containerd.io/gc.flat';

/** Prefix of content references from one object to a blob; the value is the blob digest. */
export const GC_REF_CONTENT_PREFIX = 'containerd.io/gc.ref.content';

/** Reference from a manifest to its config blob. */
export const GC_REF_CONTENT_CONFIG = 'containerd.io/gc.ref.content.config';

/** Prefix of references from a manifest to its layers: `containerd.io/gc.ref.content.l.<i>`. */
export const GC_REF_CONTENT_LAYER_PREFIX = 'containerd.io/gc.ref.content.l.';

/** Prefix of references from an index to its manifests: `containerd.io/gc.ref.content.m.<i>`. */
export const GC_REF_CONTENT_MANIFEST_PREFIX = 'containerd.io/gc.ref.content.m.';

/** Prefix of references from content to a snapshot: `containerd.io/gc.ref.snapshot.<snapshotter>`. */
export const GC_REF_SNAPSHOT_PREFIX = 'containerd.io/gc.ref.snapshot.';

/** `containerd.io/gc.ref.content.<suffix>`, e.g. gcRefContent('l.0') or gcRefContent(String(i)). */
export function gcRefContent(suffix: string): string {
  return `${GC_REF_CONTENT_PREFIX}.${suffix}`;
}

/** `containerd.io/gc.ref.content.l.<index>`: a manifest's reference to layer `index`. */
export function gcRefContentLayer(index: number): string {
  return `${GC_REF_CONTENT_LAYER_PREFIX}${index}`;
}

/** `containerd.io/gc.ref.content.m.<index>`: an index's reference to manifest `index`. */
export function gcRefContentManifest(index: number): string {
  return `${GC_REF_CONTENT_MANIFEST_PREFIX}${index}`;
}

/** `containerd.io/gc.ref.snapshot.<snapshotter>`: an image config's reference to its unpacked chain. */
export function gcRefSnapshot(snapshotter: string): string {
  return `${GC_REF_SNAPSHOT_PREFIX}${snapshotter}`;
}

// ---------------------------------------------------------------------------
// containerd: content and images
// ---------------------------------------------------------------------------

/** On a compressed layer blob: digest of its uncompressed tar (the diff ID). */
export const UNCOMPRESSED = 'containerd.io/uncompressed';

/** Prefix of the registry a blob came from: `containerd.io/distribution.source.<host>` = repository. */
export const DISTRIBUTION_SOURCE_PREFIX = 'containerd.io/distribution.source.';

/** `containerd.io/distribution.source.<host>`. */
export function distributionSource(host: string): string {
  return `${DISTRIBUTION_SOURCE_PREFIX}${host}`;
}

// ---------------------------------------------------------------------------
// containerd: snapshots
// ---------------------------------------------------------------------------

/**
 * Target name of the snapshot being prepared (the layer's chain ID). When a
 * snapshotter can provide that snapshot itself (a "remote snapshot"), it
 * commits it under this name and answers ALREADY_EXISTS to Prepare.
 */
export const SNAPSHOT_REF = 'containerd.io/snapshot.ref';

/** Prefix of snapshot labels that containerd passes on to the snapshotter. */
export const SNAPSHOT_INHERITED_PREFIX = 'containerd.io/snapshot/';

/** Optional label of containerd's overlayfs snapshotter: the snapshot's upper directory. */
export const SNAPSHOT_OVERLAY_UPPERDIR = 'containerd.io/snapshot/overlay.upperdir';

/** CRI: the image reference a layer is unpacked for (set by the CRI plugin on Prepare). */
export const CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref';

/** CRI: digests of the image's layers, comma separated. */
export const CRI_IMAGE_LAYERS = 'containerd.io/snapshot/cri.image-layers';

/** CRI: digest of the layer being unpacked. */
export const CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';

/** CRI: digest of the image manifest. */
export const CRI_MANIFEST_DIGEST = 'containerd.io/snapshot/cri.manifest-digest';

/** True when `key` is passed on by containerd to snapshotters (see module comment). */
export function isInheritedSnapshotLabel(key: string): boolean {
  return key === SNAPSHOT_REF || key.startsWith(SNAPSHOT_INHERITED_PREFIX);
}

/** The subset of `labels` containerd would pass on to a snapshotter. */
export function filterInheritedLabels(labels: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (isInheritedSnapshotLabel(k)) out[k] = v;
  return out;
}

// ---------------------------------------------------------------------------
// d4fs
// ---------------------------------------------------------------------------

/** Prefix of every d4fs label (inherited by snapshotters). */
export const D4FS_PREFIX = 'containerd.io/snapshot/d4fs.';

/**
 * On a snapshot: it was provided by d4fs itself (a FUSE mount of a delta
 * image) rather than unpacked from a tar layer. Value: "true". The
 * snapshotter mounts it again after a restart and unmounts it on removal.
 */
export const D4FS_REMOTE = 'containerd.io/snapshot/d4fs.remote';

/**
 * On a remote snapshot that holds its whole image tree by itself (a CRI
 * pull's top layer over FUSE): mounts built on it do not stack the layers
 * below it. Set by the snapshotter only (reserved: never taken from a caller).
 */
export const D4FS_STANDALONE = 'containerd.io/snapshot/d4fs.standalone';

/** On a snapshot (set by `ctr-cli load`): the image reference the .cdimg was loaded as. */
export const D4FS_IMAGE_REF = 'containerd.io/snapshot/d4fs.image-ref';

/** On a snapshot (set by `ctr-cli load`): root digest of the .cdimg index the snapshot serves. */
export const D4FS_ROOT_DIGEST = 'containerd.io/snapshot/d4fs.root-digest';

/**
 * On a snapshot (set by `ctr-cli load`): the d4fs image id (sha256 of tree +
 * config) the FUSE mount serves. A claim: the snapshotter mounts the image
 * only for the snapshot named by the image's synthetic chain id
 * (d4fsDiffId in src/containerd/image.ts) and only from its own stores.
 */
export const D4FS_IMAGE_ID = 'containerd.io/snapshot/d4fs.image-id';

/**
 * On a snapshot (set by `ctr-cli load`): path of the local d4fs store the
 * image was loaded from. Informational only: the snapshotter serves images
 * from the stores of its own configuration and never reads a path from a
 * label (labels are untrusted: any image's layer annotations under
 * `containerd.io/snapshot/` reach Prepare).
 */
export const D4FS_STORE = 'containerd.io/snapshot/d4fs.store';

/** Value of boolean labels. */
export const LABEL_TRUE = 'true';

/**
 * Longest key plus value containerd accepts for one label (containerd's
 * labels.Validate); longer labels are refused with INVALID_ARGUMENT.
 */
export const MAX_LABEL_SIZE = 4096;

// ---------------------------------------------------------------------------
// d4fs: annotations (io.d4fs.*)
// ---------------------------------------------------------------------------

/**
 * d4fs's OCI annotations, outside the `containerd.io/` namespace:
 *
 *  - on the manifests of .cdimg artifacts in registries and on the
 *    descriptors of tag indexes and referrers (src/distribution/artifact.ts,
 *    written by push and publish, read by every pull: registries in the wild
 *    hold them, so their spelling is fixed);
 *  - `imageId` and `rootDigest` also on the pointer layer's descriptor of an
 *    image `ctr-cli load` registers with containerd (src/containerd/image.ts),
 *    and `imageId` as a label of its containerd image record.
 *
 * Loads before this table wrote the spellings `io.d4fs.image.id` and
 * `io.d4fs.image.root-digest` there. Nothing in d4fs reads either back (the
 * snapshotter goes by the snapshot labels above), so no reader needs them;
 * records written so carry them until the image is loaded again.
 */
export const D4FS_ANNOTATIONS = {
  /** "full" or "delta". */
  kind: 'io.d4fs.kind',
  /** The d4fs image id (sha256 of tree + config) a file leads to. */
  imageId: 'io.d4fs.image-id',
  /** The image id a delta applies to. */
  parentId: 'io.d4fs.parent-id',
  /** Root digest of the .cdimg index. */
  rootDigest: 'io.d4fs.root-digest',
  /** Size of the .cdimg in bytes. */
  size: 'io.d4fs.size',
  /** The file's signature file (src/signing), JSON. */
  signature: 'io.d4fs.signature',
} as const;
