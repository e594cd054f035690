/**
 * Resolve an image from any ImageSource: index → platform → manifest →
 * config, every document verified against its digest; open layers as
 * decompressed streams verified against both the layer digest and diff_id.
 */
import { Readable, pipeline, PassThrough } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { corrupt, invalidArgument, notFound, unsupported } from '../errors';
import { zstdDecompressStream } from '../format/zstd';
import { digestOf, parseDigest, VerifyingStream } from '../util/digest';
import { INDEX_TYPES, layerCompression, MANIFEST_TYPES, MT, LayerCompression } from './mediatypes';
import { Descriptor, ImageConfig, ImageSource, OciIndex, OciManifest, Platform, RawDocument } from './types';

const MAX_DOC = 4 * 1024 * 1024;

export interface ResolvedImage {
  source: ImageSource;
  manifest: OciManifest;
  manifestDoc: RawDocument;
  config: ImageConfig;
  configBytes: Buffer;
  configDigest: string;
  platform: string;
  layers: { desc: Descriptor; diffId: string; compression: LayerCompression }[];
}

export function hostPlatform(): Platform {
  const archMap: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  const p: Platform = { os: 'linux', architecture: archMap[process.arch] ?? process.arch };
  if (process.arch === 'arm64') p.variant = 'v8';
  return p;
}

export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9._-]+$/i.test(p))) {
    throw invalidArgument(`invalid platform "${s}": expected os/arch[/variant], e.g. linux/amd64`);
  }
  return { os: parts[0], architecture: parts[1], variant: parts[2] };
}

export const formatPlatform = (p: Platform): string => `${p.os}/${p.architecture}${p.variant ? '/' + p.variant : ''}`;

function parseJson<T>(doc: RawDocument, what: string): T {
  if (doc.bytes.length > MAX_DOC) throw corrupt(`${what} is larger than ${MAX_DOC} bytes`);
  try {
    return JSON.parse(doc.bytes.toString('utf8')) as T;
  } catch (e) {
    throw corrupt(`${what} is not valid JSON: ${(e as Error).message}`);
  }
}

function checkDoc(doc: RawDocument, expected: string | undefined, what: string): void {
  const got = digestOf(doc.bytes);
  if (expected && got !== expected) throw corrupt(`${what}: digest mismatch: expected ${expected}, got ${got}`);
  doc.digest = got;
}

function mediaTypeOf(doc: RawDocument, parsed: { mediaType?: string; manifests?: unknown; layers?: unknown }): string {
  if (parsed.mediaType) return parsed.mediaType;
  if (doc.mediaType && doc.mediaType !== 'application/json' && doc.mediaType !== 'application/octet-stream') return doc.mediaType;
  if (parsed.manifests) return MT.OCI_INDEX;
  if (parsed.layers) return MT.OCI_MANIFEST;
  return doc.mediaType;
}

function platformMatches(want: Platform, got: Platform | undefined): boolean {
  if (!got) return false;
  if (got.os !== want.os || got.architecture !== want.architecture) return false;
  if (want.variant && got.variant && want.variant !== got.variant) return false;
  return true;
}

/** Read a small blob whole, verified. */
export async function readSmallBlob(source: ImageSource, desc: Descriptor, what: string): Promise<Buffer> {
  if (desc.size > MAX_DOC) throw corrupt(`${what} declares ${desc.size} bytes, over ${MAX_DOC}`);
  const s = await source.openBlob(desc);
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of s.pipe(new VerifyingStream(desc.digest, what, desc.size))) {
    n += (c as Buffer).length;
    if (n > MAX_DOC) throw corrupt(`${what} is larger than ${MAX_DOC} bytes`);
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

/** Resolve the image a source names, selecting a platform from an index. */
export async function resolveImage(source: ImageSource, opts: { platform?: Platform; expectedRootDigest?: string } = {}): Promise<ResolvedImage> {
  const want = opts.platform ?? hostPlatform();
  let doc = await source.getRoot();
  checkDoc(doc, opts.expectedRootDigest ?? (doc.digest || undefined), `${source.description}: manifest`);
  let parsed = parseJson<OciIndex & OciManifest>(doc, `${source.description}: manifest`);
  let mt = mediaTypeOf(doc, parsed);
  for (let depth = 0; INDEX_TYPES.includes(mt); depth++) {
    if (depth > 4) throw corrupt(`${source.description}: nested indexes too deep`);
    const manifests = Array.isArray(parsed.manifests) ? parsed.manifests : [];
    const pick = manifests.find((m) => MANIFEST_TYPES.includes(m.mediaType) && platformMatches(want, m.platform)) ??
      manifests.find((m) => INDEX_TYPES.includes(m.mediaType) && platformMatches(want, m.platform));
    if (!pick) {
      const have = manifests.map((m) => (m.platform ? formatPlatform(m.platform) : '?')).join(', ');
      throw notFound(`${source.description}: no image for platform ${formatPlatform(want)} (index has: ${have || 'nothing'}); choose one with --platform`);
    }
    parseDigest(pick.digest, 'manifest digest');
    doc = await source.getManifest(pick.digest);
    checkDoc(doc, pick.digest, `${source.description}: manifest ${pick.digest}`);
    parsed = parseJson(doc, `${source.description}: manifest ${pick.digest}`);
    mt = mediaTypeOf(doc, parsed);
  }
  if (!MANIFEST_TYPES.includes(mt)) throw unsupported(`${source.description}: unsupported manifest media type "${mt}"`);
  doc.mediaType = mt;
  const manifest = parsed as OciManifest;
  if (!manifest.config || !Array.isArray(manifest.layers)) throw corrupt(`${source.description}: manifest lacks config or layers`);
  parseDigest(manifest.config.digest, 'config digest');
  const configBytes = await readSmallBlob(source, manifest.config, `${source.description}: config`);
  let config: ImageConfig;
  try {
    config = JSON.parse(configBytes.toString('utf8')) as ImageConfig;
  } catch (e) {
    throw corrupt(`${source.description}: config is not valid JSON`);
  }
  const diffIds = config.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== manifest.layers.length) {
    throw corrupt(`${source.description}: config lists ${diffIds?.length ?? 0} diff_ids for ${manifest.layers.length} layers`);
  }
  const layers = manifest.layers.map((desc, i) => {
    parseDigest(desc.digest, 'layer digest');
    parseDigest(diffIds[i], 'diff_id');
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) throw corrupt(`${source.description}: layer ${i} has an invalid size`);
    const compression = layerCompression(desc.mediaType);
    if (!compression) throw unsupported(`${source.description}: layer ${i} has unsupported media type "${desc.mediaType}"`);
    return { desc, diffId: diffIds[i], compression };
  });
  const has = config.os && config.architecture ? { os: config.os, architecture: config.architecture, variant: config.variant } : undefined;
  // A platform the user asked for by name must be what the image is: a
  // single-platform image of another architecture is not a match.
  if (opts.platform && has && !platformMatches(opts.platform, has)) {
    throw notFound(`${source.description}: the image is for ${formatPlatform(has)}, not ${formatPlatform(opts.platform)} (it has no other platforms); drop --platform or choose ${formatPlatform(has)}`);
  }
  const platform = has ? formatPlatform(has) : formatPlatform(want);
  return { source, manifest, manifestDoc: doc, config, configBytes, configDigest: manifest.config.digest, platform, layers };
}

/**
 * The layer's uncompressed tar as a stream. The stored bytes are checked
 * against the layer digest and the tar against the diff_id; a mismatch or
 * bad compression ends the stream with a CORRUPT error.
 */
export async function openLayer(image: ResolvedImage, i: number): Promise<Readable> {
  const { desc, diffId, compression } = image.layers[i];
  const what = `${image.source.description}: layer ${i + 1}/${image.layers.length} (${desc.digest.slice(0, 19)})`;
  const raw = await image.source.openBlob(desc);
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  const stages: NodeJS.ReadWriteStream[] = [new VerifyingStream(desc.digest, `${what}`, desc.size)];
  if (compression === 'gzip') stages.push(createGunzip({ chunkSize: 1 << 20 }));
  else if (compression === 'zstd') stages.push(zstdDecompressStream()); // lazy on purpose: a native addon, for zstd layers only
  if (compression !== 'none') stages.push(new VerifyingStream(diffId, `${what}: uncompressed content (diff_id)`));
  else if (diffId !== desc.digest) throw corrupt(`${what}: uncompressed layer digest ${desc.digest} differs from its diff_id ${diffId}`);
  pipeline([raw, ...stages, out] as unknown as [Readable, ...NodeJS.ReadWriteStream[]], (err) => {
    if (err) out.destroy(classifyLayerError(err, what));
  });
  return out;
}

/** Turn a raw stream error from a layer (zlib, zstd, premature close) into a D4fsError. */
export function classifyLayerError(err: Error, what: string): Error {
  if ((err as { kind?: string }).kind) return err;
  const code = (err as NodeJS.ErrnoException).code;
  if (code && /^Z_/.test(code)) return corrupt(`${what}: corrupt gzip data (${err.message})`, err);
  if (/zstd|Unknown frame|corrupt|Data corruption|Src size|Restored data|checksum/i.test(err.message)) {
    return corrupt(`${what}: corrupt zstd data (${err.message})`, err);
  }
  if (code === 'ERR_STREAM_PREMATURE_CLOSE') return corrupt(`${what}: stream ended early (truncated?)`, err);
  return err;
}
