/**
 * Garbage collection of a server root (`ctr-cli serve gc`, or on a schedule
 * inside the server):
 *
 *  - files that lead to no tagged image: a file is kept when its image is
 *    tagged or is the parent of a kept delta (so every chain that reaches a
 *    tag survives, and every client version that can still be updated);
 *  - stale merges: not used for `mergeTtlMs`, or made from a file now gone;
 *  - orphan blobs on disk that the catalogue does not name (a crash between
 *    landing and recording);
 *  - temp files left by crashed uploads and merges.
 *
 * A blob's signature file (<blob>.sig) goes with the blob; one whose blob
 * is gone (a crash between the two) goes once it is older than the grace.
 *
 * Anything younger than `graceMs` is left alone, so a push between its upload
 * and its tag, or an upload in progress in a running server, is never taken.
 * Catalogue rows go first, then the bytes: a running server at worst answers
 * 404 for something gc has just dropped; a download already open keeps going.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BlobStore } from './blobs';
import { Catalogue, CATALOGUE_FILE } from './catalogue';
import { notFound } from '../errors';
import { signaturePathOf } from '../signing';
import { ancestorsOf } from '../distribution/planner';

export interface GcOptions {
  /** Merges unused this long are dropped (default 7 days). */
  mergeTtlMs?: number;
  /** Nothing younger than this is removed (default 1 hour). */
  graceMs?: number;
  /** Report only. */
  dryRun?: boolean;
  /** Clock (tests). */
  now?: number;
}

export interface GcReport {
  dryRun: boolean;
  /** Root digests of stored files removed. */
  files: string[];
  /** Root digests of merge results removed. */
  merges: string[];
  /** Blob files the catalogue did not name. */
  orphanBlobs: string[];
  /** Temp files removed. */
  temps: number;
  /** Image versions dropped from the catalogue. */
  images: number;
  freedBytes: number;
}

export const DEFAULT_MERGE_TTL_MS = 7 * 24 * 3600 * 1000;
export const DEFAULT_GC_GRACE_MS = 3600 * 1000;

/** Run gc over an open catalogue and blob store. */
export async function collectGarbage(catalogue: Catalogue, blobs: BlobStore, opts: GcOptions = {}): Promise<GcReport> {
  const now = opts.now ?? Date.now();
  const grace = opts.graceMs ?? DEFAULT_GC_GRACE_MS;
  const ttl = opts.mergeTtlMs ?? DEFAULT_MERGE_TTL_MS;
  const dry = !!opts.dryRun;
  const report: GcReport = { dryRun: dry, files: [], merges: [], orphanBlobs: [], temps: 0, images: 0, freedBytes: 0 };
  const old = (iso: string, age: number): boolean => Date.parse(iso) < now - age;

  // 1. files that lead to no tag
  const files = catalogue.files();
  const wanted = new Set<string>();
  for (const t of catalogue.taggedImages()) for (const id of ancestorsOf(files, t)) wanted.add(id);
  const keptFiles = new Set<string>();
  const dropFiles: typeof files = [];
  for (const f of files) {
    if (wanted.has(f.imageId) || !old(f.created, grace)) keptFiles.add(f.rootDigest);
    else dropFiles.push(f);
  }

  // 2. stale merges
  const merges = catalogue.merges();
  const dropMerges = merges.filter((m) => old(m.lastUsed, ttl) || m.inputs.some((d) => !keptFiles.has(d)));
  const keptMergeRoots = new Set(merges.filter((m) => !dropMerges.includes(m)).map((m) => m.rootDigest));

  const removeBlob = async (rootDigest: string, size: number): Promise<void> => {
    if (keptFiles.has(rootDigest) || keptMergeRoots.has(rootDigest)) return;
    report.freedBytes += size;
    if (!dry) {
      await fsp.rm(blobs.pathOf(rootDigest), { force: true });
      await fsp.rm(signaturePathOf(blobs.pathOf(rootDigest)), { force: true });
    }
  };
  for (const f of dropFiles) {
    report.files.push(f.rootDigest);
    if (!dry) catalogue.removeFile(f.rootDigest);
  }
  for (const m of dropMerges) {
    report.merges.push(m.rootDigest);
    if (!dry) catalogue.removeMerge(m.chainKey);
  }
  for (const f of dropFiles) await removeBlob(f.rootDigest, f.size);
  for (const m of dropMerges) await removeBlob(m.rootDigest, m.size);
  if (!dry) report.images = catalogue.pruneImages();

  // 3. orphan blobs (re-read the catalogue: a running server may have added since)
  for (const b of await blobs.list()) {
    if (b.mtimeMs >= now - grace || catalogue.knowsBlob(b.rootDigest)) continue;
    report.orphanBlobs.push(b.rootDigest);
    report.freedBytes += b.size;
    if (!dry) {
      await fsp.rm(blobs.pathOf(b.rootDigest), { force: true });
      await fsp.rm(signaturePathOf(blobs.pathOf(b.rootDigest)), { force: true });
    }
  }
  // signature files whose blob is gone
  for (const name of await fsp.readdir(blobs.blobDir).catch(() => [] as string[])) {
    const m = /^([a-f0-9]{64})\.cdimg\.sig$/.exec(name);
    if (!m || (await blobs.has(`sha256:${m[1]}`))) continue;
    const st = await fsp.stat(join(blobs.blobDir, name)).catch(() => undefined);
    if (!st || st.mtimeMs >= now - grace) continue;
    report.freedBytes += st.size;
    if (!dry) await fsp.rm(join(blobs.blobDir, name), { force: true });
  }

  // 4. temp files of crashed uploads and merges
  for (const t of await blobs.staleTemps(grace)) {
    report.temps++;
    report.freedBytes += t.size;
    if (!dry) await fsp.rm(t.path, { force: true, recursive: true });
  }
  return report;
}

/** Run gc on a server root directory (the server may be running). */
export async function gcRoot(root: string, opts: GcOptions = {}): Promise<GcReport> {
  await fsp.access(join(root, CATALOGUE_FILE)).catch(() => {
    throw notFound(`${root} is not a d4fs-server root (no ${CATALOGUE_FILE})`);
  });
  const blobs = new BlobStore(root);
  await blobs.init();
  const catalogue = Catalogue.open(join(root, CATALOGUE_FILE));
  try {
    return await collectGarbage(catalogue, blobs, opts);
  } finally {
    catalogue.close();
  }
}
