/**
 * Writes OCI image layouts: blobs by digest, manifest, config, index.json
 * with a ref-name annotation. Used by `cdimg export` and by tests that need
 * images with precise contents (whiteouts, xattrs, hostile tars, zstd layers).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { zstdCompressOneShot } from '../format/zstd';
import { digestOf } from '../util/digest';
import { MT, LayerCompression } from './mediatypes';
import { Descriptor, OciIndex, OciManifest } from './types';

const REF_NAME = 'org.opencontainers.image.ref.name';

export class OciLayoutWriter {
  constructor(readonly dir: string) {}

  static async create(dir: string): Promise<OciLayoutWriter> {
    await fsp.mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
    await fsp.writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    try {
      await fsp.access(join(dir, 'index.json'));
    } catch {
      await fsp.writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MT.OCI_INDEX, manifests: [] }));
    }
    return new OciLayoutWriter(dir);
  }

  /** Store bytes as a blob; returns its descriptor. */
  async putBlob(data: Buffer, mediaType: string): Promise<Descriptor> {
    const digest = digestOf(data);
    const p = join(this.dir, 'blobs', 'sha256', digest.slice(7));
    try {
      await fsp.access(p);
    } catch {
      await fsp.writeFile(p, data);
    }
    return { mediaType, digest, size: data.length };
  }

  /** Move a file whose descriptor is known into the blob store (verified by the caller). */
  async putBlobFile(path: string, desc: Descriptor): Promise<Descriptor> {
    const p = join(this.dir, 'blobs', 'sha256', desc.digest.slice(7));
    try {
      await fsp.rename(path, p);
    } catch {
      await fsp.copyFile(path, p);
    }
    return desc;
  }

  /** Add a manifest (and tag it) to index.json, replacing an older one with the same tag. */
  async tag(manifest: Descriptor, tag: string): Promise<void> {
    const p = join(this.dir, 'index.json');
    const index = JSON.parse(await fsp.readFile(p, 'utf8')) as OciIndex;
    index.manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== tag);
    index.manifests.push({ ...manifest, annotations: { ...(manifest.annotations ?? {}), [REF_NAME]: tag } });
    await fsp.writeFile(p, JSON.stringify(index));
  }
}

export function compressLayer(tar: Buffer, c: LayerCompression): { data: Buffer; mediaType: string } {
  switch (c) {
    case 'gzip':
      return { data: gzipSync(tar), mediaType: MT.OCI_LAYER_GZIP };
    case 'zstd':
      return { data: zstdCompressOneShot(tar, { compressionLevel: 3 }), mediaType: MT.OCI_LAYER_ZSTD };
    case 'none':
      return { data: tar, mediaType: MT.OCI_LAYER_TAR };
  }
}

export interface SimpleImage {
  /** uncompressed layer tars, lowest first */
  layers: Buffer[];
  compression?: LayerCompression | LayerCompression[];
  config?: Record<string, unknown>;
  architecture?: string;
  os?: string;
}

/** Write a whole single-platform image from in-memory layer tars. */
export async function writeSimpleImage(dir: string, tag: string, img: SimpleImage): Promise<{ manifest: Descriptor; config: Descriptor; layers: Descriptor[] }> {
  const w = await OciLayoutWriter.create(dir);
  const layers: Descriptor[] = [];
  const diffIds: string[] = [];
  for (let i = 0; i < img.layers.length; i++) {
    const comp = Array.isArray(img.compression) ? img.compression[i] : img.compression ?? 'gzip';
    const { data, mediaType } = compressLayer(img.layers[i], comp);
    layers.push(await w.putBlob(data, mediaType));
    diffIds.push(digestOf(img.layers[i]));
  }
  const configDoc = {
    architecture: img.architecture ?? 'amd64',
    os: img.os ?? 'linux',
    config: img.config ?? { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: diffIds.map(() => ({ created: '2024-01-01T00:00:00Z', created_by: 'd4fs test' })),
  };
  const config = await w.putBlob(Buffer.from(JSON.stringify(configDoc)), MT.OCI_CONFIG);
  const manifestDoc: OciManifest = { schemaVersion: 2, mediaType: MT.OCI_MANIFEST, config, layers };
  const manifest = await w.putBlob(Buffer.from(JSON.stringify(manifestDoc)), MT.OCI_MANIFEST);
  await w.tag(manifest, tag);
  return { manifest, config, layers };
}
