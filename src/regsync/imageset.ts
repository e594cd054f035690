/**
 * Image sets: the images named on a command line or in list files, resolved
 * to their documents (index, manifests, configs) and layers, for one
 * platform, several, or all of them.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { corrupt, invalidArgument, notFound, unsupported } from '../errors';
import { formatPlatform, hostPlatform, readSmallBlob } from '../oci/image';
import { INDEX_TYPES, layerCompression, LayerCompression, MANIFEST_TYPES, MT } from '../oci/mediatypes';
import { parseImageRef } from '../oci/ref';
import { openSource } from '../oci/source';
import type { RegistryOptions } from '../oci/registry/options';
import type { Descriptor, ImageSource, OciIndex, OciManifest, Platform, RawDocument } from '../oci/types';
import { digestOf, parseDigest } from '../util/digest';

const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const MAX_DOC = 4 * 1024 * 1024;

/** One image named by the user: a reference and the name it gets at the other end. */
export interface ImageSpec {
  ref: string;
  /** Repository relative to the destination prefix. */
  name: string;
  tag?: string;
}

/** Which platforms of multi-platform images to take. */
export type PlatformSelection = Platform[] | 'all';

/** A manifest of the set with its config and layers. */
export interface SetManifest {
  doc: RawDocument;
  manifest: OciManifest;
  configDesc: Descriptor;
  configBytes: Buffer;
  /** "os/arch[/variant]" from the config, or "unknown". */
  platform: string;
  layers: SetLayer[];
}

/** A layer of a manifest. */
export interface SetLayer {
  desc: Descriptor;
  /** diff_id from the config; for non-image artifacts the blob digest itself. */
  diffId: string;
  /** Compression, or undefined for media types that are not image layers (shipped whole). */
  compression: LayerCompression | undefined;
}

/** One image of a set, resolved. */
export interface SetImage {
  spec: ImageSpec;
  source: ImageSource;
  /** The document to tag at the other end: the index (all platforms) or the one platform's manifest. */
  top: RawDocument;
  /** Indexes to push (top first when it is one). */
  indexes: RawDocument[];
  manifests: SetManifest[];
}

/** Parse "NAME[:TAG]" as given after a reference in a list. */
function parseTarget(s: string, where: string): { name: string; tag?: string } {
  const colon = s.lastIndexOf(':');
  const slash = s.lastIndexOf('/');
  const name = colon > slash ? s.slice(0, colon) : s;
  const tag = colon > slash ? s.slice(colon + 1) : undefined;
  if (!REPO_RE.test(name) || name.length > 255) throw invalidArgument(`${where}: invalid repository name "${name}"`);
  if (tag !== undefined && !TAG_RE.test(tag)) throw invalidArgument(`${where}: invalid tag "${tag}"`);
  return { name, tag };
}

/** The default name of a reference at the other end: repository and tag for registries, the layout's name for files. */
export function defaultTarget(ref: string): { name: string; tag?: string } {
  const r = parseImageRef(ref);
  if (r.transport === 'docker') return { name: r.repository, tag: r.tag };
  const base = path
    .basename(r.path)
    .toLowerCase()
    .replace(/\.(tar|oci)$/, '')
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '');
  const tag = r.transport === 'docker-archive' ? undefined : r.tag;
  return { name: base || 'image', tag: tag ?? 'latest' };
}

/** One spec from "REF" or "REF=NAME[:TAG]" / "REF NAME[:TAG]". */
export function parseSpec(text: string, where: string): ImageSpec {
  const parts = text.trim().split(/\s+/);
  let ref = parts[0];
  let target: string | undefined = parts[1];
  if (parts.length > 2) throw invalidArgument(`${where}: expected "REF [NAME[:TAG]]", got "${text.trim()}"`);
  const eq = ref.lastIndexOf('=');
  if (target === undefined && eq > 0 && /^[a-z0-9][a-z0-9._/-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$/.test(ref.slice(eq + 1))) {
    target = ref.slice(eq + 1);
    ref = ref.slice(0, eq);
  }
  parseImageRef(ref); // validates
  const t = target !== undefined ? parseTarget(target, where) : defaultTarget(ref);
  return { ref, ...t };
}

/**
 * Expand command-line arguments into specs: an argument naming an existing
 * file (without a transport prefix) is a list, one "REF [NAME[:TAG]]" per
 * line ('#' starts a comment); anything else is a reference.
 */
export async function readSpecs(args: string[]): Promise<ImageSpec[]> {
  const out: ImageSpec[] = [];
  for (const a of args) {
    const looksLikeRef = /^(oci|oci-archive|docker-archive):/.test(a) || a.startsWith('docker://');
    let listText: string | undefined;
    if (!looksLikeRef) {
      try {
        const st = await fsp.stat(a);
        if (st.isFile()) listText = await fsp.readFile(a, 'utf8');
      } catch {
        // not a file: a reference
      }
    }
    if (listText === undefined) {
      out.push(parseSpec(a, 'argument'));
      continue;
    }
    listText.split('\n').forEach((line, i) => {
      const l = line.replace(/#.*$/, '').trim();
      if (l) out.push(parseSpec(l, `${a}:${i + 1}`));
    });
  }
  return out;
}

/** Parse a JSON document (bounded). */
function parseDoc<T>(doc: RawDocument, what: string): T {
  if (doc.bytes.length > MAX_DOC) throw corrupt(`${what} is larger than ${MAX_DOC} bytes`);
  try {
    return JSON.parse(doc.bytes.toString('utf8')) as T;
  } catch {
    throw corrupt(`${what} is not JSON`);
  }
}

/** Media type of a document: what it says, else what the source said, else guessed from its shape. */
function docMediaType(doc: RawDocument, parsed: { mediaType?: unknown; manifests?: unknown; layers?: unknown }): string {
  if (typeof parsed.mediaType === 'string' && parsed.mediaType) return parsed.mediaType;
  if (doc.mediaType && !['application/json', 'application/octet-stream', ''].includes(doc.mediaType)) return doc.mediaType;
  if (Array.isArray(parsed.manifests)) return MT.OCI_INDEX;
  return MT.OCI_MANIFEST;
}

function platformMatches(want: Platform, got: Platform | undefined): boolean {
  if (!got || got.os !== want.os || got.architecture !== want.architecture) return false;
  return !(want.variant && got.variant && want.variant !== got.variant);
}

/** Load a manifest's config and layers. */
async function loadManifest(source: ImageSource, doc: RawDocument, what: string): Promise<SetManifest> {
  const manifest = parseDoc<OciManifest>(doc, what);
  if (!manifest.config || !Array.isArray(manifest.layers)) throw corrupt(`${what}: manifest lacks config or layers`);
  parseDigest(manifest.config.digest, `${what}: config digest`);
  const configBytes = await readSmallBlob(source, manifest.config, `${what}: config`);
  let config: { rootfs?: { diff_ids?: unknown }; os?: string; architecture?: string; variant?: string } = {};
  try {
    config = JSON.parse(configBytes.toString('utf8')) as typeof config;
  } catch {
    // not an image config (an artifact): layers are shipped whole
  }
  const diffIds = Array.isArray(config?.rootfs?.diff_ids) ? (config.rootfs?.diff_ids as string[]) : undefined;
  const image = diffIds !== undefined && diffIds.length === manifest.layers.length;
  const layers = manifest.layers.map((desc, i): SetLayer => {
    parseDigest(desc.digest, `${what}: layer digest`);
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) throw corrupt(`${what}: layer ${i} has an invalid size`);
    const compression = image ? layerCompression(desc.mediaType) : undefined;
    const diffId = image && compression ? parseDigest(diffIds[i], `${what}: diff_id`) : desc.digest;
    if (compression === 'none' && diffId !== desc.digest) throw corrupt(`${what}: uncompressed layer ${desc.digest} has diff_id ${diffId}`);
    return { desc, diffId, compression };
  });
  const platform = config.os && config.architecture ? formatPlatform({ os: config.os, architecture: config.architecture, variant: config.variant }) : 'unknown';
  return { doc, manifest, configDesc: manifest.config, configBytes, platform, layers };
}

/** Fetch a child document by digest and check it. */
async function child(source: ImageSource, desc: Descriptor, what: string): Promise<RawDocument> {
  parseDigest(desc.digest, `${what}: digest`);
  const doc = await source.getManifest(desc.digest);
  const got = digestOf(doc.bytes);
  if (got !== desc.digest) throw corrupt(`${what}: ${desc.digest} hashes to ${got}`);
  return { bytes: doc.bytes, digest: got, mediaType: desc.mediaType || doc.mediaType };
}

/** Resolve one spec with the given platform selection. */
export async function resolveSetImage(spec: ImageSpec, platforms: PlatformSelection, opts: RegistryOptions): Promise<SetImage> {
  const source = await openSource(spec.ref, opts);
  try {
    const rootRaw = await source.getRoot();
    const root: RawDocument = { bytes: rootRaw.bytes, digest: digestOf(rootRaw.bytes), mediaType: rootRaw.mediaType };
    if (rootRaw.digest && rootRaw.digest !== root.digest && SHA_OK(rootRaw.digest)) {
      throw corrupt(`${source.description}: manifest hashes to ${root.digest}, expected ${rootRaw.digest}`);
    }
    const parsed = parseDoc<OciIndex & OciManifest>(root, `${source.description}: manifest`);
    root.mediaType = docMediaType(root, parsed);
    if (MANIFEST_TYPES.includes(root.mediaType)) {
      const m = await loadManifest(source, root, source.description);
      if (platforms !== 'all' && m.platform !== 'unknown' && !platforms.some((p) => platformMatches(p, parsePlatformString(m.platform)))) {
        throw notFound(`${source.description}: image is ${m.platform}, not ${platforms.map(formatPlatform).join(', ')}`);
      }
      return { spec, source, top: root, indexes: [], manifests: [m] };
    }
    if (!INDEX_TYPES.includes(root.mediaType)) throw unsupported(`${source.description}: unsupported media type ${root.mediaType}`);
    const entries = Array.isArray(parsed.manifests) ? parsed.manifests : [];
    if (platforms === 'all') {
      const manifests: SetManifest[] = [];
      for (const d of entries) {
        if (!MANIFEST_TYPES.includes(d.mediaType)) throw unsupported(`${source.description}: nested index ${d.digest} (${d.mediaType}) is not supported with --all-platforms`);
        const doc = await child(source, d, `${source.description}: manifest`);
        doc.mediaType = d.mediaType;
        manifests.push(await loadManifest(source, doc, `${source.description}@${d.digest.slice(0, 19)}`));
      }
      return { spec, source, top: root, indexes: [root], manifests };
    }
    const manifests: SetManifest[] = [];
    for (const want of platforms) {
      const pick = entries.find((m) => MANIFEST_TYPES.includes(m.mediaType) && platformMatches(want, m.platform));
      if (!pick) {
        const have = entries.map((m) => (m.platform ? formatPlatform(m.platform) : '?')).join(', ');
        throw notFound(`${source.description}: no image for ${formatPlatform(want)} (index has ${have || 'nothing'}); use --platform or --all-platforms`);
      }
      const doc = await child(source, pick, `${source.description}: manifest`);
      doc.mediaType = pick.mediaType;
      manifests.push(await loadManifest(source, doc, `${source.description}@${pick.digest.slice(0, 19)}`));
    }
    if (manifests.length !== 1) throw invalidArgument('several --platform values need --all-platforms (an index is pushed whole or not at all)');
    return { spec, source, top: manifests[0].doc, indexes: [], manifests };
  } catch (e) {
    await source.close();
    throw e;
  }
}

const SHA_OK = (d: string): boolean => /^sha256:[a-f0-9]{64}$/.test(d);

/** "os/arch[/variant]" back to a Platform. */
function parsePlatformString(s: string): Platform {
  const [os, architecture, variant] = s.split('/');
  return { os, architecture, variant };
}

/** Resolve every spec; closes what was opened when one fails. */
export async function resolveSet(specs: ImageSpec[], platforms: PlatformSelection, opts: RegistryOptions): Promise<SetImage[]> {
  const out: SetImage[] = [];
  try {
    for (const s of specs) out.push(await resolveSetImage(s, platforms, opts));
    return out;
  } catch (e) {
    await closeSet(out);
    throw e;
  }
}

/** Close the sources of a set. */
export async function closeSet(set: SetImage[]): Promise<void> {
  for (const i of set) await i.source.close().catch(() => undefined);
}

/** Platforms from --platform values and --all-platforms (default: the host's). */
export function platformSelection(values: string[] | undefined, all: boolean | undefined, parse: (s: string) => Platform): PlatformSelection {
  if (all) return 'all';
  if (values && values.length) return values.map(parse);
  return [hostPlatform()];
}
