/**
 * Image variants for regsync's tests and benchmark: the same image (same
 * config, same layer tars, so the same diff_ids) with its layers compressed
 * by another tool, and multi-platform indexes. Not used by the CLI.
 *
 *  - `gzip-9n`:     GNU `gzip -9 -n` (what Nix and many shell-built images
 *                   use): reproducible by the gzip program recipe.
 *  - `node-zlib`:   Node's zlib at level 6 with its own header: reproducible
 *                   by the node-zlib recipe.
 *  - `gzip-multi`:  two gzip members (the tar cut in half, each half by
 *                   `gzip -6 -n`), like pigz --independent or concatenated
 *                   streams: NOT reproducible.
 * The originals built by umoci (klauspost/pgzip) are not reproducible either.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { MT } from '../oci/mediatypes';
import type { Descriptor, OciIndex, OciManifest, Platform } from '../oci/types';
import { digestOf } from '../util/digest';

/** How {@link recompressLayout} compresses layers. */
export type Recompression = 'gzip-9n' | 'node-zlib' | 'gzip-multi';

const REF_NAME = 'org.opencontainers.image.ref.name';

function gzipProgram(data: Buffer, level: number): Buffer {
  const r = spawnSync('gzip', ['-c', '-n', `-${level}`], { input: data, maxBuffer: data.length + (1 << 24) });
  if (r.status !== 0) throw new Error(`gzip failed: ${r.stderr?.toString()}`);
  return r.stdout;
}

/** Compress a tar the way a mode says. */
export function compressAs(tar: Buffer, how: Recompression): Buffer {
  switch (how) {
    case 'gzip-9n':
      return gzipProgram(tar, 9);
    case 'node-zlib':
      return zlib.gzipSync(tar, { level: 6 });
    case 'gzip-multi': {
      const half = Math.floor(tar.length / 2);
      return Buffer.concat([gzipProgram(tar.subarray(0, half), 6), gzipProgram(tar.subarray(half), 6)]);
    }
  }
}

async function readJson<T>(p: string): Promise<T> {
  return JSON.parse(await fsp.readFile(p, 'utf8')) as T;
}

const blobFile = (layout: string, digest: string): string => path.join(layout, 'blobs', 'sha256', digest.slice(7));

async function putBlob(layout: string, data: Buffer): Promise<string> {
  const d = digestOf(data);
  await fsp.writeFile(blobFile(layout, d), data);
  return d;
}

async function initLayout(dir: string): Promise<void> {
  await fsp.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  await fsp.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
}

/** Add a tagged descriptor to a layout's index.json (replacing the tag). */
async function tagIn(dir: string, desc: Descriptor, tag: string): Promise<void> {
  const p = path.join(dir, 'index.json');
  let index: OciIndex = { schemaVersion: 2, mediaType: MT.OCI_INDEX, manifests: [] };
  try {
    index = await readJson<OciIndex>(p);
  } catch {
    // new layout
  }
  index.manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== tag);
  index.manifests.push({ ...desc, annotations: { [REF_NAME]: tag } });
  await fsp.writeFile(p, JSON.stringify(index));
}

/** The manifest of `layout:tag`. */
async function manifestOf(layout: string, tag: string): Promise<{ desc: Descriptor; manifest: OciManifest }> {
  const index = await readJson<OciIndex>(path.join(layout, 'index.json'));
  const desc = index.manifests.find((m) => m.annotations?.[REF_NAME] === tag);
  if (!desc) throw new Error(`${layout}: no tag ${tag}`);
  return { desc, manifest: await readJson<OciManifest>(blobFile(layout, desc.digest)) };
}

/**
 * Copy `layout:tag` into `outDir:tag` with every gzip layer recompressed
 * (same config: same diff_ids and image ID; new layer digests and manifest).
 * Returns the new manifest digest.
 */
export async function recompressLayout(layout: string, tag: string, outDir: string, how: Recompression): Promise<string> {
  await initLayout(outDir);
  const { desc, manifest } = await manifestOf(layout, tag);
  const layers: Descriptor[] = [];
  for (const l of manifest.layers) {
    const tar = zlib.gunzipSync(await fsp.readFile(blobFile(layout, l.digest)));
    const data = compressAs(tar, how);
    layers.push({ ...l, digest: await putBlob(outDir, data), size: data.length });
  }
  await putBlob(outDir, await fsp.readFile(blobFile(layout, manifest.config.digest)));
  const bytes = Buffer.from(JSON.stringify({ ...manifest, layers }));
  const digest = await putBlob(outDir, bytes);
  await tagIn(outDir, { mediaType: desc.mediaType || MT.OCI_MANIFEST, digest, size: bytes.length }, tag);
  return digest;
}

/**
 * Make `outDir:tag` a two-platform index of `layout:tag`: the original
 * (amd64) and a copy whose config says `other` (same layers). Returns the
 * index digest.
 */
export async function twoPlatformIndex(layout: string, tag: string, outDir: string, other: Platform): Promise<string> {
  await initLayout(outDir);
  const { manifest } = await manifestOf(layout, tag);
  for (const l of manifest.layers) await fsp.copyFile(blobFile(layout, l.digest), blobFile(outDir, l.digest));
  const cfgBytes = await fsp.readFile(blobFile(layout, manifest.config.digest));
  const cfg = JSON.parse(cfgBytes.toString('utf8')) as Record<string, unknown>;
  await putBlob(outDir, cfgBytes);
  const mBytes = Buffer.from(JSON.stringify(manifest));
  const mDigest = await putBlob(outDir, mBytes);
  const cfg2 = Buffer.from(JSON.stringify({ ...cfg, architecture: other.architecture, os: other.os, ...(other.variant ? { variant: other.variant } : {}) }));
  const cfg2Digest = await putBlob(outDir, cfg2);
  const m2 = Buffer.from(JSON.stringify({ ...manifest, config: { ...manifest.config, digest: cfg2Digest, size: cfg2.length } }));
  const m2Digest = await putBlob(outDir, m2);
  const index: OciIndex = {
    schemaVersion: 2,
    mediaType: MT.OCI_INDEX,
    manifests: [
      { mediaType: MT.OCI_MANIFEST, digest: mDigest, size: mBytes.length, platform: { os: String(cfg.os), architecture: String(cfg.architecture) } },
      { mediaType: MT.OCI_MANIFEST, digest: m2Digest, size: m2.length, platform: other },
    ],
  };
  const iBytes = Buffer.from(JSON.stringify(index));
  const iDigest = await putBlob(outDir, iBytes);
  await tagIn(outDir, { mediaType: MT.OCI_INDEX, digest: iDigest, size: iBytes.length }, tag);
  return iDigest;
}
