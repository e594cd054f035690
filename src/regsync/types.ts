/**
 * The index of a registry patch (`ctr-cli registry diff` output). The full
 * description of the file format is in ./FORMAT.md; the rules checked on read
 * are in ./validate.ts.
 */
import type { CodecId, PatchCodecId } from '../delta/codecs';
import type { GzipContentRecipe } from './gzcontent';
import type { Recipe } from './recipe';

/** Value of {@link PatchIndex.format}. */
export const PATCH_FORMAT = 'd4fs-registry-patch';
/**
 * Version of the index this code writes. 2 stores recipes in their short
 * string form (./recipe.ts, storedRecipe); version 1's object recipes are
 * still read ({@link PATCH_VERSIONS_READ}).
 */
export const PATCH_VERSION = 2;
/**
 * Version written when a layer's recipe is a reconstruction record (`rec`,
 * a payload): readers that know only version 2 refuse such a patch by its
 * version instead of by an unknown recipe.
 */
export const PATCH_VERSION_RECORDS = 3;
/**
 * Version written when a content is LLVM bitcode coded as its values (enc `llvm-bitcode`):
 * readers that know only versions up to 3 refuse such a patch by its version.
 */
export const PATCH_VERSION_BITCODE = 4;
/** Versions of the index this code reads. */
export const PATCH_VERSIONS_READ: readonly number[] = [1, 2, 3, 4];

/** An image of the old set, as the patch was made against it. */
export interface OldImage {
  /** Repository relative to the registry or prefix ("d4fs/nginx"). */
  name: string;
  /** Tag, when the image was named by one. */
  tag?: string;
  /** Reference as given to `diff` (informational). */
  ref: string;
  /** Digest of the top document (index or manifest) at the time of the diff. */
  digest: string;
}

/** An image of the new set: what `apply` pushes and tags. */
export interface NewImage {
  /** Repository relative to the destination prefix ("d4fs/nginx"). */
  name: string;
  /** Tag to set; without one the image is pushed by digest only. */
  tag?: string;
  /** Reference as given to `diff` (informational). */
  ref: string;
  /** Digest of the top document in {@link PatchIndex.docs}. */
  root: string;
}

/** A manifest, index or config shipped whole. */
export interface DocEntry {
  role: 'index' | 'manifest' | 'config';
  digest: string;
  mediaType: string;
  size: number;
  /** Payload holding the bytes. */
  payload: number;
}

/** Fields every layer entry has: the descriptor in the new manifests. */
interface LayerBase {
  digest: string;
  size: number;
  mediaType: string;
  /** The uncompressed tar's digest (from the image config). */
  diffId: string;
}

/** The destination already holds the layer (it is in the old set). */
export interface ReferencedLayer extends LayerBase {
  kind: 'referenced';
}

/** The layer blob is shipped verbatim. */
export interface BlobLayer extends LayerBase {
  kind: 'blob';
  payload: number;
}

/** The layer is rebuilt from a skeleton and file contents, then recompressed. */
export interface RebuiltLayer extends LayerBase {
  kind: 'rebuilt';
  /** Size of the uncompressed tar. */
  tarSize: number;
  /** Skeleton (non-content bytes of the tar, in order). */
  skeleton: {
    size: number;
    digest: string;
    /** A codec of bytes (src/delta/codecs): zstd, a whole frame; a patch codec, against the skeleton of source `base`. */
    codec: CodecId;
    base?: number;
    payload: number;
  };
  /** Skeleton bytes before each file and after the last: `runs.length === files.length + 1`. */
  runs: number[];
  /** Content (index into {@link PatchIndex.contents}) of each file, in tar order. */
  files: number[];
  /**
   * Recipe that reproduces the original blob (`digest`), when one was found. In
   * the file: its short string form (./recipe.ts, storedRecipe); read back into
   * this object by validateIndex.
   */
  recipe?: Recipe;
  /** When no recipe was found: how apply recompresses and what it is expected to get. */
  fallback?: { recipe: Recipe; digest: string; size: number; reason: string };
}

/** One layer of the new set. */
export type LayerEntry = ReferencedLayer | BlobLayer | RebuiltLayer;

/** A file content the new layers need. */
export type ContentEntry =
  /** Found in an old layer (see {@link SourceEntry.extract}). */
  | { digest: string; size: number; enc: 'old' }
  /** Shipped as a whole zstd frame. */
  | { digest: string; size: number; enc: 'zstd'; payload: number }
  /** Shipped as a patch (a patch codec of src/delta/codecs) against content `base` (an `old` content). */
  | { digest: string; size: number; enc: PatchCodecId; base: number; payload: number }
  /**
   * A gzip file shipped as its decompressed content (`inner`, encoded whole or
   * against `base` — decompressed first when `baseInflate`), recompressed by
   * apply with the gzip program (see ./gzcontent.ts).
   */
  | {
      digest: string;
      size: number;
      enc: 'gzip';
      gzip: GzipContentRecipe;
      inner: { size: number; digest: string; codec: CodecId };
      base?: number;
      baseInflate?: boolean;
      payload: number;
    }
  /**
   * A content shipped as another form of it by a wrapper codec of
   * src/delta/codecs (whole, or against `base`, an old content, in the same
   * form): a zip archive (.jar, .whl) as its members decompressed
   * (`zip-members`: apply deflates them again), LLVM bitcode as its values
   * (`llvm-bitcode`: apply writes the bitstream back).
   */
  | { digest: string; size: number; enc: WrapperEnc; base?: number; payload: number };

/** The wrapper codecs a registry patch may use (src/delta/codecs). */
export const WRAPPER_ENCS = ['zip-members', 'llvm-bitcode'] as const;
export type WrapperEnc = (typeof WRAPPER_ENCS)[number];
/** Whether `enc` names a wrapper codec a registry patch may use. */
export const isWrapperEnc = (enc: unknown): enc is WrapperEnc => (WRAPPER_ENCS as readonly unknown[]).includes(enc);

/** An old layer that apply reads: contents to take from it, and whether its skeleton is a base. */
export interface SourceEntry {
  diffId: string;
  /** Blob digest in the old set (apply finds the layer by diffId, any compression). */
  digest: string;
  /** Size of the uncompressed tar. */
  tarSize: number;
  /** [offset in the tar, content index] pairs, by increasing offset. */
  extract: [number, number][];
  /** Digest of the layer's skeleton when a rebuilt layer's skeleton is encoded against it. */
  skeletonDigest?: string;
  skeletonSize?: number;
}

/** Length and digest of one payload; payloads follow each other without gaps. */
export interface PayloadEntry {
  length: number;
  digest: string;
}

/** Numbers computed by `diff` (informational; the report adds the patch size). */
export interface DiffStats {
  /** Bytes a plain pull/push of the new set moves: every distinct blob of it, plus its manifests. */
  plainBytes: number;
  /** Bytes with layer-level dedup only: distinct blobs of the new set the old set lacks, plus manifests. */
  dedupBytes: number;
  layers: { referenced: number; rebuilt: number; blob: number; reproducible: number; notReproducible: number };
  contents: { old: number; patched: number; full: number; oldBytes: number; patchedBytes: number; fullBytes: number; encodedBytes: number };
}

/** The index of a patch file. */
export interface PatchIndex {
  format: typeof PATCH_FORMAT;
  /** What the writer writes; a reader also takes the older versions of PATCH_VERSIONS_READ. */
  version: number;
  created: string;
  /** "os/arch[/variant]" selected, or "all". */
  platforms: string[] | 'all';
  old: OldImage[];
  images: NewImage[];
  docs: DocEntry[];
  layers: LayerEntry[];
  contents: ContentEntry[];
  sources: SourceEntry[];
  payloads: PayloadEntry[];
  stats: DiffStats;
}
