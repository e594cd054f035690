/**
 * The documents a patch ships (indexes, manifests, configs): consistency
 * checks against the layer table before anything is pushed, the push plan of
 * every image, and the consistent rewrite of manifests and indexes when a
 * layer's compressed digest changes.
 */
import { hostile } from '../errors';
import { digestOf } from '../util/digest';
import { INDEX_TYPES, layerCompression, MANIFEST_TYPES } from '../oci/mediatypes';
import type { LayerEntry, PatchIndex } from './types';

/** What apply pushes for one image, in order. */
export interface PlanImage {
  name: string;
  tag?: string;
  root: string;
  /** Manifests to push before the root (children of an index). */
  manifests: string[];
  configs: { digest: string; mediaType: string }[];
  /** Distinct layer digests, in manifest order. */
  layers: string[];
}

/** The checked structure of the shipped documents. */
export interface DocPlan {
  images: PlanImage[];
  /** Image names (relative repositories) using each layer. */
  reposOfLayer: Map<string, string[]>;
  /** Layer digests of each manifest. */
  manifestLayers: Map<string, string[]>;
  /** Child manifest digests of each index. */
  indexChildren: Map<string, string[]>;
  mediaTypes: Map<string, string>;
}

interface Desc {
  mediaType?: unknown;
  digest?: unknown;
  size?: unknown;
}

function parse(bytes: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw hostile(`patch: ${what} is not JSON`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw hostile(`patch: ${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

function descs(v: unknown, what: string): Desc[] {
  if (!Array.isArray(v)) throw hostile(`patch: ${what} is not an array`);
  for (const d of v) if (!d || typeof d !== 'object') throw hostile(`patch: ${what} holds a non-object`);
  return v as Desc[];
}

/**
 * Check every shipped document against the index: manifests name shipped
 * configs and listed layers with the same sizes and media types, image
 * configs' diff_ids match the layers' diff_ids, indexes name shipped
 * manifests. Returns the push plan. Throws HOSTILE on any inconsistency.
 */
export function checkDocs(ix: PatchIndex, bytes: Map<string, Buffer>): DocPlan {
  const role = new Map(ix.docs.map((d) => [d.digest, d]));
  const layers = new Map<string, LayerEntry>(ix.layers.map((l) => [l.digest, l]));
  const manifestLayers = new Map<string, string[]>();
  const manifestConfig = new Map<string, { digest: string; mediaType: string }>();
  const indexChildren = new Map<string, string[]>();
  const mediaTypes = new Map<string, string>();
  for (const d of ix.docs) {
    const b = bytes.get(d.digest);
    if (!b || digestOf(b) !== d.digest) throw hostile(`patch: document ${d.digest} missing or damaged`);
    mediaTypes.set(d.digest, d.mediaType);
    const what = `${d.role} ${d.digest}`;
    if (d.role === 'config') continue;
    const doc = parse(b, what);
    if (d.role === 'manifest') {
      if (!MANIFEST_TYPES.includes(d.mediaType)) throw hostile(`patch: ${what} has media type ${d.mediaType}`);
      const cfg = doc.config as Desc | undefined;
      const c = typeof cfg?.digest === 'string' ? role.get(cfg.digest) : undefined;
      if (!c || c.role !== 'config' || c.size !== cfg?.size) throw hostile(`patch: ${what} names a config the patch does not carry`);
      const ls = descs(doc.layers, `${what}: layers`);
      const digests: string[] = [];
      for (const [i, l] of ls.entries()) {
        const e = typeof l.digest === 'string' ? layers.get(l.digest) : undefined;
        if (!e || e.size !== l.size || e.mediaType !== l.mediaType) throw hostile(`patch: ${what}: layer ${i} is not in the patch's layer table`);
        digests.push(e.digest);
      }
      // diff_ids of image configs must agree with the layer table (what rebuilt tars are checked against).
      let config: { rootfs?: { diff_ids?: unknown } } | undefined;
      try {
        config = JSON.parse((bytes.get(c.digest) as Buffer).toString('utf8')) as typeof config;
      } catch {
        config = undefined;
      }
      const diffIds = config?.rootfs?.diff_ids;
      if (Array.isArray(diffIds) && diffIds.length === ls.length) {
        ls.forEach((l, i) => {
          const e = layers.get(l.digest as string) as LayerEntry;
          if (layerCompression(e.mediaType) !== undefined && diffIds[i] !== e.diffId) throw hostile(`patch: ${what}: layer ${i} diff_id differs from the config's`);
        });
      } else {
        for (const [i, d2] of digests.entries()) if ((layers.get(d2) as LayerEntry).kind === 'rebuilt') throw hostile(`patch: ${what}: layer ${i} is rebuilt but the config has no matching diff_id`);
      }
      manifestLayers.set(d.digest, digests);
      manifestConfig.set(d.digest, { digest: c.digest, mediaType: c.mediaType });
    } else {
      if (!INDEX_TYPES.includes(d.mediaType)) throw hostile(`patch: ${what} has media type ${d.mediaType}`);
      const children: string[] = [];
      for (const [i, m] of descs(doc.manifests, `${what}: manifests`).entries()) {
        const e = typeof m.digest === 'string' ? role.get(m.digest) : undefined;
        if (!e || e.role !== 'manifest' || e.size !== m.size) throw hostile(`patch: ${what}: entry ${i} is a manifest the patch does not carry`);
        children.push(e.digest);
      }
      indexChildren.set(d.digest, children);
    }
  }
  const reposOfLayer = new Map<string, string[]>();
  const images: PlanImage[] = ix.images.map((img) => {
    const r = role.get(img.root);
    const manifests = r?.role === 'index' ? (indexChildren.get(img.root) as string[]) : [img.root];
    const configs: PlanImage['configs'] = [];
    const ls: string[] = [];
    for (const m of manifests) {
      const c = manifestConfig.get(m) as { digest: string; mediaType: string };
      if (!configs.some((x) => x.digest === c.digest)) configs.push(c);
      for (const l of manifestLayers.get(m) as string[]) {
        if (!ls.includes(l)) ls.push(l);
        const rs = reposOfLayer.get(l) ?? [];
        if (!rs.includes(img.name)) rs.push(img.name);
        reposOfLayer.set(l, rs);
      }
    }
    return { name: img.name, tag: img.tag, root: img.root, manifests: r?.role === 'index' ? manifests : [], configs, layers: ls };
  });
  return { images, reposOfLayer, manifestLayers, indexChildren, mediaTypes };
}

/** Indentation of a JSON document as written ("" for compact). */
function indentOf(b: Buffer): string {
  const m = /^[{[]\r?\n([ \t]+)/.exec(b.toString('utf8', 0, 64));
  return m ? m[1] : '';
}

/** Re-serialise with the original's indentation style. */
function serialise(v: unknown, original: Buffer): Buffer {
  const ind = indentOf(original);
  const text = ind ? JSON.stringify(v, null, ind) : JSON.stringify(v);
  return Buffer.from(original.toString('utf8').endsWith('\n') ? text + '\n' : text, 'utf8');
}

/**
 * Document `b` (JSON) with the descriptors of its `field` list that `moved`
 * names pointed at their new digest and size, written in the original's style.
 */
function repoint(b: Buffer, field: 'layers' | 'manifests', moved: Map<string, { digest: string; size: number }>): Buffer {
  const doc = JSON.parse(b.toString('utf8')) as Record<typeof field, Desc[]>;
  for (const d of doc[field]) {
    const n = moved.get(d.digest as string);
    if (n) {
      d.digest = n.digest;
      d.size = n.size;
    }
  }
  return serialise(doc, b);
}

/**
 * The documents to push: the originals, except manifests naming a layer in
 * `layerMap` (new digest and size) and indexes naming such a manifest, which
 * are rewritten consistently. Keyed by the original digest.
 */
export function rewriteDocs(plan: DocPlan, bytes: Map<string, Buffer>, layerMap: Map<string, { digest: string; size: number }>): Map<string, { bytes: Buffer; digest: string; mediaType: string }> {
  const out = new Map<string, { bytes: Buffer; digest: string; mediaType: string }>();
  for (const [digest, b] of bytes) out.set(digest, { bytes: b, digest, mediaType: plan.mediaTypes.get(digest) as string });
  const manifestMap = new Map<string, { digest: string; size: number }>();
  for (const [m, ls] of plan.manifestLayers) {
    if (!ls.some((l) => layerMap.has(l))) continue;
    const nb = repoint(bytes.get(m) as Buffer, 'layers', layerMap);
    const nd = digestOf(nb);
    out.set(m, { bytes: nb, digest: nd, mediaType: plan.mediaTypes.get(m) as string });
    manifestMap.set(m, { digest: nd, size: nb.length });
  }
  for (const [ix, children] of plan.indexChildren) {
    if (!children.some((c) => manifestMap.has(c))) continue;
    const nb = repoint(bytes.get(ix) as Buffer, 'manifests', manifestMap);
    out.set(ix, { bytes: nb, digest: digestOf(nb), mediaType: plan.mediaTypes.get(ix) as string });
  }
  return out;
}
