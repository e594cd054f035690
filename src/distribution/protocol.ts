/**
 * The d4fs-server HTTP API, shared by the server (src/server) and its client
 * (src/distribution): paths, headers, media types, JSON shapes, and the
 * validation of every name that ends up in a URL.
 *
 *   GET  /healthz                                   liveness (open)
 *   GET  /metrics                                   Prometheus text (open)
 *   GET  /v1/repositories                           repository names           (read)
 *   GET  /v1/repositories/NAME/tags                 tags of NAME               (read)
 *   GET  /v1/repositories/NAME/tags/TAG             one tag                    (read)
 *   PUT  /v1/repositories/NAME/tags/TAG             {imageId} → set the tag    (write)
 *   DELETE /v1/repositories/NAME/tags/TAG           remove the tag             (write)
 *   PUT  /v1/repositories/NAME/blobs/sha256:HEX     upload a .cdimg (body)     (write)
 *   POST /v1/repositories/NAME/pull                 {tag|imageId, have} → plan (read)
 *   GET|HEAD /v1/blobs/sha256:HEX                   a stored .cdimg; Range     (read)
 *
 * NAME is a repository ("library/nginx"), TAG a docker-style tag; a blob is
 * named by the root digest of its .cdimg (ETag = that digest). No endpoint
 * takes a filesystem path.
 *
 * Signatures (src/signing, src/distribution/signatures.ts): an upload may
 * carry the file's signature file in {@link SIGNATURE_HEADER}; every file of
 * a pull plan carries the signatures the server holds for it (`signature`).
 * A pull that says `"signed": true` (and which keys it trusts) gets a chain
 * it can verify: merges only when the server signs them with a key the
 * client trusts, else the unmerged chain of the original signed files.
 */
import { invalidArgument } from '../errors';
import type { SignatureFile } from '../signing';
import { parseDigest } from '../util/digest';

/** Version prefix of every API path. */
export const API = '/v1';

/** Media type of a .cdimg body (uploads, downloads, and the OCI artifact layer). */
export const CDIMG_MEDIA_TYPE = 'application/vnd.d4fs.cdimg.v1';

/** Response header carrying the sha256 of a blob's whole bytes (the .cdimg file). */
export const FILE_DIGEST_HEADER = 'x-d4fs-file-digest';

/** Upload header carrying the file's signature file (base64 of its JSON). */
export const SIGNATURE_HEADER = 'x-d4fs-signature';

/** Most key ids a pull may name as trusted. */
export const MAX_TRUSTED_KEYS = 64;

/** Largest JSON request body the server reads. */
export const MAX_JSON_BODY = 1024 * 1024;

/** Most image ids a pull may offer as held. */
export const MAX_HAVE = 10_000;

const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/** Validate a repository name ("libssl", "library/nginx"); throws INVALID_ARGUMENT. */
export function checkRepoName(name: string): string {
  if (typeof name !== 'string' || name.length > 255 || !REPO_RE.test(name)) {
    throw invalidArgument(`invalid repository name ${JSON.stringify(String(name).slice(0, 100))}: lower-case components separated by /`);
  }
  return name;
}

/** Validate a tag ("v3", "1.22-bookworm"); throws INVALID_ARGUMENT. */
export function checkTag(tag: string): string {
  if (typeof tag !== 'string' || !TAG_RE.test(tag)) {
    throw invalidArgument(`invalid tag ${JSON.stringify(String(tag).slice(0, 100))}: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
  }
  return tag;
}

/** "NAME:TAG" (TAG defaults to latest) → parts, validated. */
export function parseImageName(s: string): { repository: string; tag: string } {
  if (typeof s !== 'string' || !s) throw invalidArgument('image name is empty: expected NAME:TAG');
  const slash = s.lastIndexOf('/');
  const colon = s.lastIndexOf(':');
  if (colon > slash) return { repository: checkRepoName(s.slice(0, colon)), tag: checkTag(s.slice(colon + 1)) };
  return { repository: checkRepoName(s), tag: 'latest' };
}

/** One stored .cdimg as the catalogue and the planner see it. */
export interface FileInfo {
  /** Root digest of the .cdimg (its name). */
  rootDigest: string;
  kind: 'full' | 'delta';
  /** The image the file leads to. */
  imageId: string;
  /** The image a delta applies to; '' for a full image. */
  parentId: string;
  /** Bytes of the .cdimg file. */
  size: number;
}

/** A file of a pull plan, as the server sends it. */
export interface PlanFileJson extends FileInfo {
  /** sha256 of the whole file's bytes (checked by the client while it downloads). */
  fileDigest: string;
  /** True when the server composed it from a chain of stored deltas. */
  merged: boolean;
  /** Root digests of the stored files it was merged from (merged files only). */
  mergedFrom?: string[];
  /** The signatures the server holds for the file (for a merge: the server's own, when it has a signing key). */
  signature?: SignatureFile;
}

/** POST /v1/repositories/NAME/pull body. */
export interface PullRequestJson {
  /** Tag to pull (or imageId). */
  tag?: string;
  /** Image id to pull instead of a tag. */
  imageId?: string;
  /** Image ids the client can already rebuild. */
  have: string[];
  /**
   * The client requires signed files: plan only files it can verify (a
   * merge only when the server signs it with a key the client trusts).
   */
  signed?: boolean;
  /** Key ids (sha256 of the public key's DER) the client trusts; with `signed`. */
  trustedKeys?: string[];
}

/** The plan a pull gets back: at most a full image, then at most one delta. */
export interface PullPlanJson {
  repository: string;
  tag?: string;
  imageId: string;
  /** The held image the chain starts from; null when it starts from nothing. */
  from: string | null;
  /** Bytes to download. */
  bytes: number;
  /** Bytes of the chain of stored files before merging. */
  chainBytes: number;
  /** Root digests of the stored files on the cheapest chain. */
  chain: string[];
  /** Files to download, in the order they apply. */
  files: PlanFileJson[];
  /** Key id of the key the server signs its merges with (when it has one). */
  serverKeyId?: string;
}

/** Answer of a blob upload. */
export interface UploadResultJson extends FileInfo {
  fileDigest: string;
  /** False when the server already held the file. */
  created: boolean;
  /** Signatures the server holds for the file now (0: unsigned). */
  signatures?: number;
}

/** A tag. */
export interface TagJson {
  repository: string;
  tag: string;
  imageId: string;
  updated: string;
}

/** Error body of every failed request. */
export interface ErrorJson {
  error: { kind: string; message: string };
}

/** Path of a blob ("/v1/blobs/sha256:…"). */
export function blobPath(rootDigest: string): string {
  return `${API}/blobs/${parseDigest(rootDigest, 'blob digest')}`;
}

/** Path of a repository's resource ("/v1/repositories/NAME/…"). */
export function repoPath(repository: string, rest: string): string {
  return `${API}/repositories/${checkRepoName(repository)}/${rest}`;
}

/** Quoted strong ETag of a blob. */
export const etagOf = (rootDigest: string): string => `"${rootDigest}"`;
