/**
 * Validation of a patch index read from an untrusted file. Everything apply
 * later relies on is checked here, before any payload is used or anything is
 * pushed: types, bounds, digests' syntax, names, and every cross-reference
 * (payloads, contents, sources, skeleton bases, byte accounting of each
 * rebuilt tar). The documents' own contents (manifests naming the right
 * config and layers) are checked by ./docs.ts once the payloads are verified.
 */
import { BYTES_CODECS, bytesCodec, isCodecId, wordList } from '../delta/codecs/registry';
import { hostile } from '../errors';
import { SHA256_RE } from '../util/digest';
import { GZ_MAX_INNER } from './gzcontent';
import { hasPayload, readRecipe } from './recipe';
import { isWrapperEnc, PATCH_FORMAT, PATCH_VERSIONS_READ, PatchIndex, WRAPPER_ENCS } from './types';

const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const PLATFORM_RE = /^[a-z0-9._-]+\/[a-z0-9._-]+(?:\/[a-z0-9._-]+)?$/i;
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

/** Bounds. */
export const LIMITS = {
  images: 100_000,
  docs: 1_000_000,
  layers: 1_000_000,
  contents: 50_000_000,
  sources: 1_000_000,
  payloads: 100_000_000,
  /** Largest document (manifest, index, config). */
  doc: 4 * 1024 * 1024,
  /** Largest layer blob or tar (1 TiB). */
  blob: 2 ** 40,
  /** Largest single file content (held in memory while patching). */
  content: 2 ** 32,
  /** Largest skeleton (held in memory). */
  skeleton: 2 ** 30,
};

/** The codecs of bytes a content or skeleton may name: "zstd, zstd-patch or bsdiff". */
const CODEC_NAMES = wordList(BYTES_CODECS.map((c) => c.name));

/** Throw HOSTILE with a path into the index. */
function bad(where: string, what: string): never {
  throw hostile(`patch index: ${where}: ${what}`);
}

type Obj = Record<string, unknown>;

function obj(v: unknown, where: string): Obj {
  if (!v || typeof v !== 'object' || Array.isArray(v)) bad(where, 'expected an object');
  return v as Obj;
}

function arr(v: unknown, where: string, max: number): unknown[] {
  if (!Array.isArray(v)) bad(where, 'expected an array');
  if (v.length > max) bad(where, `more than ${max} items`);
  return v;
}

function str(v: unknown, where: string, max = 4096): string {
  if (typeof v !== 'string' || v.length > max) bad(where, `expected a string of at most ${max} characters`);
  return v;
}

function int(v: unknown, where: string, max: number, min = 0): number {
  if (!Number.isSafeInteger(v) || (v as number) < min || (v as number) > max) bad(where, `expected an integer in [${min}, ${max}]`);
  return v as number;
}

function digest(v: unknown, where: string): string {
  if (typeof v !== 'string' || !SHA256_RE.test(v)) bad(where, 'expected a sha256 digest');
  return v;
}

function name(v: unknown, where: string): string {
  if (typeof v !== 'string' || v.length > 255 || !REPO_RE.test(v)) bad(where, 'invalid repository name');
  return v;
}

function tag(v: unknown, where: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !TAG_RE.test(v)) bad(where, 'invalid tag');
  return v;
}

function mediaType(v: unknown, where: string): string {
  if (typeof v !== 'string' || !MEDIA_TYPE_RE.test(v)) bad(where, 'invalid media type');
  return v;
}

/** The payload table and which payloads something uses (each at most once). */
interface Payloads {
  list: { length: number; digest: string }[];
  used: Set<number>;
}

/** A checked source (old layer read by apply). */
interface CheckedSource {
  diffId: string;
  tarSize: number;
  extract: unknown[];
  hasSkeleton: boolean;
}

/** A checked content: its size, encoding and, for a patch, its base. */
type CheckedContent = { size: number; enc: string; base?: number };

/** A reference to a payload, used at most once. */
function payloadRef(p: Payloads, v: unknown, where: string): number {
  const i = int(v, where, p.list.length - 1);
  if (p.used.has(i)) bad(where, `payload ${i} is used twice`);
  p.used.add(i);
  return i;
}

/** Format, version, creation time and platforms. */
function checkHeader(ix: Obj): void {
  if (ix.format !== PATCH_FORMAT) bad('format', `not "${PATCH_FORMAT}"`);
  if (!PATCH_VERSIONS_READ.includes(ix.version as number)) bad('version', `unsupported version ${String(ix.version)}`);
  str(ix.created, 'created', 64);
  if (ix.platforms !== 'all') {
    const ps = arr(ix.platforms, 'platforms', 256);
    ps.forEach((p, i) => {
      if (typeof p !== 'string' || !PLATFORM_RE.test(p)) bad(`platforms[${i}]`, 'invalid platform');
    });
  }
}

/** The payload table. */
function checkPayloads(ix: Obj): Payloads {
  const list = arr(ix.payloads, 'payloads', LIMITS.payloads).map((p, i) => {
    const o = obj(p, `payloads[${i}]`);
    return { length: int(o.length, `payloads[${i}].length`, LIMITS.blob), digest: digest(o.digest, `payloads[${i}].digest`) };
  });
  return { list, used: new Set<number>() };
}

/** The old set's images. */
function checkOldImages(ix: Obj): void {
  arr(ix.old, 'old', LIMITS.images).forEach((o, i) => {
    const w = `old[${i}]`;
    const e = obj(o, w);
    name(e.name, `${w}.name`);
    tag(e.tag, `${w}.tag`);
    str(e.ref, `${w}.ref`);
    digest(e.digest, `${w}.digest`);
  });
}

/** The shipped documents, each matching its payload; returns their roles by digest. */
function checkDocs(ix: Obj, payloads: Payloads): Map<string, string> {
  const docs = new Map<string, string>();
  arr(ix.docs, 'docs', LIMITS.docs).forEach((d, i) => {
    const w = `docs[${i}]`;
    const e = obj(d, w);
    if (e.role !== 'index' && e.role !== 'manifest' && e.role !== 'config') bad(`${w}.role`, 'expected index, manifest or config');
    const dg = digest(e.digest, `${w}.digest`);
    mediaType(e.mediaType, `${w}.mediaType`);
    const size = int(e.size, `${w}.size`, LIMITS.doc);
    const p = payloadRef(payloads, e.payload, `${w}.payload`);
    if (payloads.list[p].length !== size || payloads.list[p].digest !== dg) bad(w, 'payload does not match the document digest and size');
    if (docs.has(dg)) bad(w, `document ${dg} listed twice`);
    docs.set(dg, e.role as string);
  });
  return docs;
}

/** The new set's images: at least one, each rooted in a shipped index or manifest, no target twice. */
function checkNewImages(ix: Obj, docs: Map<string, string>): void {
  const images = arr(ix.images, 'images', LIMITS.images);
  if (images.length === 0) bad('images', 'no image');
  const targets = new Set<string>();
  images.forEach((o, i) => {
    const w = `images[${i}]`;
    const e = obj(o, w);
    const n = name(e.name, `${w}.name`);
    const t = tag(e.tag, `${w}.tag`);
    str(e.ref, `${w}.ref`);
    const root = digest(e.root, `${w}.root`);
    const role = docs.get(root);
    if (role !== 'index' && role !== 'manifest') bad(`${w}.root`, 'not an index or manifest of the patch');
    const key = `${n}:${t ?? '@' + root}`;
    if (targets.has(key)) bad(w, `${key} listed twice`);
    targets.add(key);
  });
}

/** The sources (old layers read by apply), each diff_id once; their extract lists are checked later. */
function checkSources(ix: Obj): CheckedSource[] {
  const sources = arr(ix.sources, 'sources', LIMITS.sources).map((s, i) => {
    const w = `sources[${i}]`;
    const e = obj(s, w);
    const src = {
      diffId: digest(e.diffId, `${w}.diffId`),
      tarSize: int(e.tarSize, `${w}.tarSize`, LIMITS.blob),
      extract: arr(e.extract, `${w}.extract`, LIMITS.contents),
      hasSkeleton: e.skeletonDigest !== undefined,
    };
    digest(e.digest, `${w}.digest`);
    if (src.hasSkeleton) {
      digest(e.skeletonDigest, `${w}.skeletonDigest`);
      int(e.skeletonSize, `${w}.skeletonSize`, Math.min(LIMITS.skeleton, src.tarSize));
    } else if (e.skeletonSize !== undefined) {
      bad(`${w}.skeletonSize`, 'without skeletonDigest');
    }
    return src;
  });
  const diffIds = new Set<string>();
  for (const [i, s] of sources.entries()) {
    if (diffIds.has(s.diffId)) bad(`sources[${i}]`, `layer ${s.diffId} listed twice`);
    diffIds.add(s.diffId);
  }
  return sources;
}

/** One content: its encoding, payload and base (an earlier content). */
function checkContent(c: unknown, i: number, payloads: Payloads): CheckedContent {
  const w = `contents[${i}]`;
  const e = obj(c, w);
  const size = int(e.size, `${w}.size`, LIMITS.content, 1);
  digest(e.digest, `${w}.digest`);
  if (e.enc === 'old') return { size, enc: 'old' as const };
  // a codec of bytes of the registry (src/delta/codecs): a patch names its base
  if (isCodecId(e.enc)) {
    payloadRef(payloads, e.payload, `${w}.payload`);
    if (bytesCodec(e.enc).base === 'none') return { size, enc: e.enc };
    const base = int(e.base, `${w}.base`, i - 1);
    return { size, enc: e.enc, base };
  }
  if (e.enc === 'gzip') {
    payloadRef(payloads, e.payload, `${w}.payload`);
    const g = obj(e.gzip, `${w}.gzip`);
    int(g.level, `${w}.gzip.level`, 9, 1);
    str(g.header, `${w}.gzip.header`, 4096);
    const inner = obj(e.inner, `${w}.inner`);
    int(inner.size, `${w}.inner.size`, GZ_MAX_INNER);
    digest(inner.digest, `${w}.inner.digest`);
    if (!isCodecId(inner.codec)) return bad(`${w}.inner.codec`, `expected ${CODEC_NAMES}`);
    if (e.baseInflate !== undefined && typeof e.baseInflate !== 'boolean') bad(`${w}.baseInflate`, 'expected a boolean');
    if (bytesCodec(inner.codec).base === 'none') {
      if (e.base !== undefined || e.baseInflate) bad(`${w}.base`, 'a whole inner content has no base');
      return { size, enc: 'gzip' as const };
    }
    const base = int(e.base, `${w}.base`, i - 1);
    return { size, enc: 'gzip' as const, base };
  }
  if (isWrapperEnc(e.enc)) {
    payloadRef(payloads, e.payload, `${w}.payload`);
    if (e.base === undefined) return { size, enc: e.enc };
    const base = int(e.base, `${w}.base`, i - 1);
    return { size, enc: e.enc, base };
  }
  return bad(`${w}.enc`, `expected ${wordList(['old', ...BYTES_CODECS.map((c) => c.name), 'gzip', ...WRAPPER_ENCS])}`);
}

/** The contents: each once, patch bases old contents. */
function checkContents(ix: Obj, payloads: Payloads): CheckedContent[] {
  const contents = arr(ix.contents, 'contents', LIMITS.contents).map((c, i) => checkContent(c, i, payloads));
  const seenDigests = new Set<string>();
  (ix.contents as Obj[]).forEach((c, i) => {
    if (seenDigests.has(c.digest as string)) bad(`contents[${i}]`, 'content listed twice');
    seenDigests.add(c.digest as string);
  });
  for (const [i, c] of contents.entries()) {
    if ('base' in c && c.base !== undefined && contents[c.base].enc !== 'old') bad(`contents[${i}].base`, 'a patch base must be an old content');
  }
  return contents;
}

/** The sources' extract lists: old contents only, in order, inside the layer; every old content provided. */
function checkExtracts(sources: CheckedSource[], contents: CheckedContent[]): void {
  const extracted = new Set<number>();
  sources.forEach((s, i) => {
    let last = -1;
    s.extract.forEach((x, k) => {
      const w = `sources[${i}].extract[${k}]`;
      const pair = arr(x, w, 2);
      if (pair.length !== 2) bad(w, 'expected [offset, content]');
      const off = int(pair[0], `${w}[0]`, s.tarSize);
      const ci = int(pair[1], `${w}[1]`, contents.length - 1);
      if (contents[ci].enc !== 'old') bad(w, 'only old contents are extracted');
      if (off <= last) bad(w, 'offsets must increase');
      if (off + contents[ci].size > s.tarSize) bad(w, 'extends past the end of the layer');
      last = off + contents[ci].size - 1;
      extracted.add(ci);
    });
  });
  contents.forEach((c, i) => {
    if (c.enc === 'old' && !extracted.has(i)) bad(`contents[${i}]`, 'old content that no source provides');
  });
}

/** A rebuilt layer: skeleton, runs and files adding up to its tar, exactly one of recipe and fallback. */
function checkRebuiltLayer(e: Obj, w: string, payloads: Payloads, sources: CheckedSource[], contents: CheckedContent[], version: number): void {
  const tarSize = int(e.tarSize, `${w}.tarSize`, LIMITS.blob);
  const sk = obj(e.skeleton, `${w}.skeleton`);
  const skSize = int(sk.size, `${w}.skeleton.size`, Math.min(LIMITS.skeleton, tarSize));
  digest(sk.digest, `${w}.skeleton.digest`);
  payloadRef(payloads, sk.payload, `${w}.skeleton.payload`);
  if (!isCodecId(sk.codec)) {
    bad(`${w}.skeleton.codec`, `expected ${CODEC_NAMES}`);
  } else if (bytesCodec(sk.codec).base === 'none') {
    if (sk.base !== undefined) bad(`${w}.skeleton.base`, `a ${sk.codec} skeleton has no base`);
  } else {
    const b = int(sk.base, `${w}.skeleton.base`, sources.length - 1);
    if (!sources[b].hasSkeleton) bad(`${w}.skeleton.base`, 'source without a skeleton digest');
  }
  const files = arr(e.files, `${w}.files`, LIMITS.contents).map((f, k) => int(f, `${w}.files[${k}]`, contents.length - 1));
  const runs = arr(e.runs, `${w}.runs`, LIMITS.contents + 1).map((r, k) => int(r, `${w}.runs[${k}]`, skSize));
  if (runs.length !== files.length + 1) bad(`${w}.runs`, 'must have one more item than files');
  const rawTotal = runs.reduce((a, b) => a + b, 0);
  if (rawTotal !== skSize) bad(`${w}.runs`, `add up to ${rawTotal}, the skeleton has ${skSize} bytes`);
  const contentTotal = files.reduce((a, f) => a + contents[f].size, 0);
  if (rawTotal + contentTotal !== tarSize) bad(w, `skeleton and contents make ${rawTotal + contentTotal} bytes, the tar has ${tarSize}`);
  if ((e.recipe === undefined) === (e.fallback === undefined)) bad(w, 'needs exactly one of recipe and fallback');
  try {
    // a recipe is read into its object (either stored form: the string or version 1's object), in place
    if (e.recipe !== undefined) {
      const r = readRecipe(e.recipe);
      e.recipe = r;
      if (hasPayload(r)) {
        if (version < 3) bad(`${w}.recipe`, 'a recipe with a payload (record, gzip members) needs index version 3');
        const p = payloadRef(payloads, r.payload, `${w}.recipe payload`);
        if (payloads.list[p].length < 9) bad(`${w}.recipe`, 'the recipe payload is too short');
      }
    } else {
      const fb = obj(e.fallback, `${w}.fallback`);
      fb.recipe = readRecipe(fb.recipe);
      digest(fb.digest, `${w}.fallback.digest`);
      int(fb.size, `${w}.fallback.size`, LIMITS.blob);
      str(fb.reason, `${w}.fallback.reason`);
    }
  } catch (err) {
    bad(w, (err as Error).message);
  }
}

/** The layers of the new set: each once, referenced, a blob matching its payload, or rebuilt. */
function checkLayers(ix: Obj, payloads: Payloads, sources: CheckedSource[], contents: CheckedContent[]): void {
  const layerDigests = new Set<string>();
  arr(ix.layers, 'layers', LIMITS.layers).forEach((l, i) => {
    const w = `layers[${i}]`;
    const e = obj(l, w);
    const dg = digest(e.digest, `${w}.digest`);
    if (layerDigests.has(dg)) bad(w, 'layer listed twice');
    layerDigests.add(dg);
    const size = int(e.size, `${w}.size`, LIMITS.blob);
    mediaType(e.mediaType, `${w}.mediaType`);
    digest(e.diffId, `${w}.diffId`);
    switch (e.kind) {
      case 'referenced':
        return;
      case 'blob': {
        const p = payloadRef(payloads, e.payload, `${w}.payload`);
        if (payloads.list[p].length !== size || payloads.list[p].digest !== dg) bad(w, 'payload does not match the layer digest and size');
        return;
      }
      case 'rebuilt': {
        checkRebuiltLayer(e, w, payloads, sources, contents, ix.version as number);
        return;
      }
      default:
        bad(`${w}.kind`, 'expected referenced, blob or rebuilt');
    }
  });
}

/**
 * Check a parsed index and return it typed. Throws HOSTILE (with where and
 * what) on the first violation. The recipes of its rebuilt layers are
 * replaced, in place, by their objects (see ./recipe.ts, readRecipe).
 */
export function validateIndex(v: unknown): PatchIndex {
  const ix = obj(v, 'index');
  checkHeader(ix);
  const payloads = checkPayloads(ix);
  checkOldImages(ix);
  const docs = checkDocs(ix, payloads);
  checkNewImages(ix, docs);
  const sources = checkSources(ix);
  const contents = checkContents(ix, payloads);
  checkExtracts(sources, contents);
  checkLayers(ix, payloads, sources, contents);

  const stats = obj(ix.stats, 'stats');
  int(stats.plainBytes, 'stats.plainBytes', Number.MAX_SAFE_INTEGER);
  int(stats.dedupBytes, 'stats.dedupBytes', Number.MAX_SAFE_INTEGER);
  if (payloads.used.size !== payloads.list.length) bad('payloads', `${payloads.list.length - payloads.used.size} payloads are not used by anything`);
  return ix as unknown as PatchIndex;
}
