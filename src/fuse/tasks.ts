/**
 * Worker-thread tasks of the FUSE content cache (run through FusePool, a
 * front of the worker pool of src/workers, never on the JavaScript thread
 * that serves FUSE requests; errors come back with their kind).
 *
 * The main thread plans: it finds where a content is stored in the chain and
 * makes sure every base a patch needs is already materialised, whole and
 * verified, in the cache. A task then decodes chunks with the delta module's
 * Chain (every stored chunk and every decoded chunk is verified against its
 * digest) and writes the result into the cache directory. Patch bases are
 * read from the cache files the main thread hands over instead of being
 * rebuilt through the chain: see {@link chainOf}.
 *
 * Inputs and outputs are plain data; chains and recently used bases are kept
 * per worker.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { Chain } from '../delta/chain';
import { codecByProto, decodeWith } from '../delta/codecs/registry';
import { zstdPatch } from '../delta/codecs/zstd-patch';
import { GROUP_MAX_DICT, GroupCache, groupMember, groupRawSize } from '../format/group';
import { corrupt, notFound } from '../errors';
import { forgetDecodedGroups, readFully, readZstdChunk } from '../format/reader';
import { type Blob, Codec, checkedByRawDigest } from '../format/types';
import { sha256 } from '../util/digest';
import { writeFully } from '../util/fileio';

/** Where the bases of a content's patches are: sha256 hex → path of the verified cache file. */
export type BasePaths = Record<string, string>;

/** Where a content is stored: the chain (full image first) and the level of the file holding its blob. */
export interface ContentSource {
  chain: string[];
  level: number;
  /** sha256 hex of the content. */
  digest: string;
  bases: BasePaths;
  /**
   * The stored chunks this task decodes, as the main thread's index has them.
   * With them the thread reads the file directly and opens no chain: no index
   * is decoded per thread (a 151k-entry image's content table cost each build
   * thread ~0.3 s and tens of MiB; issue 18). The chain remains the fallback
   * when a patch's base is not among `bases`.
   */
  direct?: DirectSource;
}

/** A stored chunk, its digests as hex ('' for none). */
export interface DirectChunk {
  offset: number;
  storedSize: number;
  storedDigest: string;
  rawSize: number;
  rawDigest: string;
  codec: number;
  baseDigest: string;
  baseOffset: number;
  baseSize: number;
  /** GROUP chunks: the member's offset in its group. */
  groupOffset?: number;
}

export interface DirectSource {
  /** The .cdimg file storing the chunks (the chain's file at `level`). */
  file: string;
  formatVersion: number;
  /** A member of a group coded against bases: every member of the group, in group order (their bases make its dictionary). */
  members?: DirectChunk[];
  /** The chunks to decode, in content order (all of the content's for buildContent, the one for buildChunk). */
  chunks: DirectChunk[];
}

export interface BuildContentArgs extends ContentSource {
  /** Final path; the content is written next to it under a temporary name, verified, then renamed. */
  out: string;
}

export interface BuildChunkArgs extends ContentSource {
  /** Index of the chunk in the blob. */
  chunk: number;
  /** Byte offset of the chunk in the content. */
  offset: number;
  /** Existing file (of the content's full size) the chunk is written into at `offset`. */
  out: string;
}

export interface VerifyFileArgs {
  path: string;
  digest: string;
  size: number;
}

// ---------------------------------------------------------------------------
// Per-worker state
// ---------------------------------------------------------------------------

const MAX_CHAINS = 16;
const chains = new Map<string, Promise<Chain>>();

/** Verified cache files of contents, by sha256 hex (accumulated from the tasks' arguments). */
const basePaths = new Map<string, string>();

/** Bases recently read by this worker. */
const BASE_BUDGET = 192 * 1024 * 1024;
const bases = new Map<string, Buffer>();
let baseBytes = 0;

/**
 * An open chain, kept per worker (least recently used closed first). Its
 * `content` looks in the cache files first: a patch base the main thread
 * already materialised and verified is read, not rebuilt through every
 * level below. Contents are named by digest, so any verified copy is the
 * content; when the file has gone meanwhile (evicted), the chain rebuilds it.
 */
function chainOf(paths: string[]): Promise<Chain> {
  const key = paths.join('\0');
  let c = chains.get(key);
  if (c) {
    chains.delete(key);
    chains.set(key, c);
    return c;
  }
  // Indexes decoded once per thread: a base image's index serves every chain of its updates.
  // the manager's main thread opened and checked these chains whole: a build thread needs their stored contents only
  c = Chain.open(paths, { reuse: true, contentsOnly: true }).then((chain) => {
    const rebuild = chain.content.bind(chain);
    chain.content = async (digest: Buffer, level?: number, depth?: number): Promise<Buffer> => {
      const hex = digest.toString('hex');
      const cached = await loadBase(hex);
      return cached ?? rebuild(digest, level, depth);
    };
    return chain;
  });
  c.catch(() => chains.delete(key));
  chains.set(key, c);
  while (chains.size > MAX_CHAINS) {
    const [oldest, old] = chains.entries().next().value as [string, Promise<Chain>];
    chains.delete(oldest);
    old.then((x) => x.close()).catch(() => undefined);
  }
  return c;
}

/** A verified content from the cache files handed over, or undefined. */
async function loadBase(hex: string): Promise<Buffer | undefined> {
  const hit = bases.get(hex);
  if (hit) {
    bases.delete(hex);
    bases.set(hex, hit);
    return hit;
  }
  const p = basePaths.get(hex);
  if (!p) return undefined;
  let data: Buffer;
  try {
    data = await fsp.readFile(p);
  } catch {
    basePaths.delete(hex);
    return undefined;
  }
  if (data.length <= BASE_BUDGET / 2) {
    bases.set(hex, data);
    baseBytes += data.length;
    for (const [k, v] of bases) {
      if (baseBytes <= BASE_BUDGET) break;
      bases.delete(k);
      baseBytes -= v.length;
    }
  }
  return data;
}

/**
 * Files read by direct builds, kept open (least recently used closed first,
 * and any unused for FILE_IDLE_MS: a file removed from the store must not
 * stay allocated on disk because a thread still holds it). A file is closed
 * only once no read uses it.
 */
const MAX_FILES = 32;
const FILE_IDLE_MS = 30_000;
interface OpenFile {
  fh: Promise<fsp.FileHandle>;
  used: number;
  users: number;
  closing: boolean;
}
const files = new Map<string, OpenFile>();
let fileSweeper: NodeJS.Timeout | undefined;

function retire(path: string, f: OpenFile): void {
  if (files.get(path) === f) files.delete(path);
  f.closing = true;
  if (f.users === 0) f.fh.then((h) => h.close()).catch(() => undefined);
}

/** Runs `use` with a kept read handle of `path`. */
async function withFile<T>(path: string, use: (fh: fsp.FileHandle) => Promise<T>): Promise<T> {
  let f = files.get(path);
  if (f) {
    files.delete(path);
    files.set(path, f);
  } else {
    f = { fh: fsp.open(path, 'r'), used: 0, users: 0, closing: false };
    const opened = f;
    opened.fh.catch(() => files.get(path) === opened && files.delete(path));
    files.set(path, f);
    while (files.size > MAX_FILES) {
      const [oldest, old] = files.entries().next().value as [string, OpenFile];
      retire(oldest, old);
    }
    fileSweeper ??= setInterval(() => {
      for (const [p, o] of files) if (o.users === 0 && Date.now() - o.used > FILE_IDLE_MS) retire(p, o);
    }, FILE_IDLE_MS / 2).unref();
  }
  f.users++;
  f.used = Date.now();
  try {
    return await use(await f.fh);
  } finally {
    f.users--;
    f.used = Date.now();
    if (f.closing && f.users === 0) f.fh.then((h) => h.close()).catch(() => undefined);
  }
}

/** `size` bytes at `offset` of base content `hex` (a verified cache file), or undefined when it is not at hand. */
async function baseRegion(hex: string, offset: number, size: number): Promise<Buffer | undefined> {
  const held = bases.get(hex);
  const p = basePaths.get(hex);
  if (!held && p) {
    // Small bases are read whole and kept (several chunks and contents patch against them);
    // of a large one only the region is read.
    const st = await fsp.stat(p).catch(() => undefined);
    if (!st) return undefined;
    if (offset + size > st.size) throw corrupt(`patch base region ${offset}+${size} outside its base sha256:${hex} (${st.size} bytes)`);
    if (st.size <= BASE_BUDGET / 2) return (await loadBase(hex))?.subarray(offset, offset + size);
    const fh = await fsp.open(p, 'r');
    try {
      const out = Buffer.allocUnsafe(size);
      await readFully(fh, out, offset);
      return out;
    } finally {
      await fh.close();
    }
  }
  if (!held) return undefined;
  if (offset + size > held.length) throw corrupt(`patch base region ${offset}+${size} outside its base sha256:${hex} (${held.length} bytes)`);
  return held.subarray(offset, offset + size);
}

/**
 * One chunk decoded straight from its file, verified as the chain verifies
 * it (stored digest when it has one, decoded bytes against the chunk digest);
 * undefined when it patches a base that is not at hand.
 */
async function directChunk(d: DirectSource, c: DirectChunk): Promise<Buffer | undefined> {
  if (!c.storedDigest && !checkedByRawDigest(c.codec, d.formatVersion)) throw corrupt(`${d.file}: stored chunk at ${c.offset} has no digest`);
  const storedDigest = Buffer.from(c.storedDigest, 'hex');
  const rawDigest = Buffer.from(c.rawDigest, 'hex');
  if (c.codec === Codec.GROUP && d.members) return directGroupMember(d, c, d.members);
  // zstd frames and members of solid groups (the group decoded once per thread: format/reader.ts)
  if (c.codec === Codec.ZSTD || c.codec === Codec.GROUP) return withFile(d.file, (fh) => readZstdChunk(fh, d.file, { ...c, storedDigest, rawDigest }));
  const codec = codecByProto(c.codec);
  const needsBase = codec.base === 'required' || (codec.base === 'optional' && c.baseDigest.length > 0);
  let base: Buffer | null = null;
  if (needsBase) {
    const region = await baseRegion(c.baseDigest, c.baseOffset, c.baseSize);
    if (!region) return undefined;
    base = region;
  }
  const stored = Buffer.allocUnsafe(c.storedSize);
  await withFile(d.file, (fh) => readFully(fh, stored, c.offset));
  if (c.storedDigest && !sha256(stored).equals(storedDigest)) throw corrupt(`${d.file}: stored chunk at ${c.offset} is damaged (digest mismatch)`);
  const raw = decodeWith(codec, stored, base, c.rawSize);
  if (!sha256(raw).equals(rawDigest)) throw corrupt(`${d.file}: chunk at ${c.offset} decodes to the wrong content`);
  return raw;
}

/** Groups coded against bases decoded by this thread (file and offset of the frame). */
const dictGroups = new GroupCache(32 * 1024 * 1024);

/**
 * Member `c` of a group coded against bases, from its file and the cache files of every
 * member's base (the main thread pinned them); undefined when a base is not at hand.
 */
async function directGroupMember(d: DirectSource, c: DirectChunk, members: DirectChunk[]): Promise<Buffer | undefined> {
  const key = `${d.file}\0${c.offset}:${c.storedSize}`;
  let group = dictGroups.get(key);
  if (!group) {
    const parts: Buffer[] = [];
    let dict = 0;
    for (const m of members) {
      if (!m.baseDigest) continue;
      dict += m.baseSize;
      if (dict > GROUP_MAX_DICT) throw corrupt(`${d.file}: group at ${c.offset}: its members' bases exceed ${GROUP_MAX_DICT} bytes`);
      const region = await baseRegion(m.baseDigest, m.baseOffset, m.baseSize);
      if (!region) return undefined;
      parts.push(region);
    }
    const stored = Buffer.allocUnsafe(c.storedSize);
    await withFile(d.file, (fh) => readFully(fh, stored, c.offset));
    const what = `${d.file}: group at ${c.offset}`;
    group = decodeWith(zstdPatch, stored, Buffer.concat(parts), groupRawSize(stored, what));
    dictGroups.set(key, group);
  }
  return Buffer.from(groupMember(group, { groupOffset: c.groupOffset, rawSize: c.rawSize, rawDigest: Buffer.from(c.rawDigest, 'hex') }, d.file));
}

/** The chunks of `a.direct` decoded directly, or undefined when one needs the chain (its base is not at hand). */
async function directChunks(a: ContentSource): Promise<Buffer[] | undefined> {
  if (!a.direct) return undefined;
  for (const [hex, p] of Object.entries(a.bases)) basePaths.set(hex, p);
  const out: Buffer[] = [];
  for (const c of a.direct.chunks) {
    const raw = await directChunk(a.direct, c);
    if (!raw) return undefined;
    out.push(raw);
  }
  return out;
}

/** The chain and blob of a content source (bases registered). */
async function open(a: ContentSource): Promise<{ chain: Chain; blob: Blob }> {
  for (const [hex, p] of Object.entries(a.bases)) basePaths.set(hex, p);
  const chain = await chainOf(a.chain);
  const reader = chain.readers[a.level];
  const blob = reader?.blob(a.digest);
  if (!blob) throw notFound(`content sha256:${a.digest} is not stored at level ${a.level} of the chain`);
  return { chain, blob };
}


function tempName(out: string): string {
  return join(dirname(out), `.tmp-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2)}`);
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

/** Materialises a whole content into `out` (temp file, verified, renamed). Returns its size. */
export async function buildContent(a: BuildContentArgs): Promise<number> {
  const direct = await directChunks(a);
  const source = direct ? undefined : await open(a);
  const digests = direct ? a.direct!.chunks.map((c) => c.rawDigest) : source!.blob.chunks.map((c) => c.rawDigest.toString('hex'));
  const size = direct ? direct.reduce((n, b) => n + b.length, 0) : source!.blob.size;
  const tmp = tempName(a.out);
  const fh = await fsp.open(tmp, 'wx', 0o600);
  try {
    // every chunk is verified against its own digest; a content of one chunk whose
    // digest is the content's is thereby verified, and is not hashed a second time.
    const once = digests.length === 1 && digests[0] === a.digest;
    const h = once ? undefined : createHash('sha256');
    let pos = 0;
    for (let i = 0; i < digests.length; i++) {
      const raw = direct ? direct[i] : await source!.chain.chunk(a.level, source!.blob.chunks[i]);
      h?.update(raw);
      await writeFully(fh, raw, pos);
      pos += raw.length;
    }
    if (pos !== size || (h ? h.digest('hex') : a.digest) !== a.digest) {
      throw corrupt(`${a.chain[a.level]}: content sha256:${a.digest} does not match its digest after decoding`);
    }
    await fh.close();
    await fsp.rename(tmp, a.out);
    return pos;
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

export interface BuildGroupArgs extends ContentSource {
  /** The cache directory: each member not there yet is written to `dir/<its sha256 hex>` (temp file, renamed). */
  dir: string;
}

/**
 * The other members of the group coded against bases that content `digest` belongs to
 * (format/group.ts), materialised into the cache directory: the group is decoded once
 * (this thread's chain keeps it) and every member is checked against its digest as it is
 * taken. Returns what it wrote; a member that fails is left out (its own open builds it
 * and reports the error).
 */
export async function buildGroupMembers(a: BuildGroupArgs): Promise<{ digest: string; size: number }[]> {
  for (const [hex, p] of Object.entries(a.bases)) basePaths.set(hex, p);
  // straight from the file and the members' base files when the main thread gave the members (no chain opened)
  const d = a.direct;
  let members: { hex: string; build: () => Promise<Buffer | undefined> }[];
  if (d?.members) {
    const list = d.members;
    members = list.map((m) => ({ hex: m.rawDigest, build: () => directGroupMember(d, m, list) }));
  } else {
    const { chain, blob } = await open(a);
    const c = blob.chunks[0];
    if (blob.chunks.length !== 1 || c.codec !== Codec.GROUP) return [];
    members = chain.readers[a.level].groupMembers(c).map((m) => ({ hex: m.rawDigest.toString('hex'), build: () => chain.chunk(a.level, m) }));
  }
  const out: { digest: string; size: number }[] = [];
  for (const m of members) {
    const hex = m.hex;
    if (hex === a.digest) continue;
    const path = join(a.dir, hex);
    if (await fsp.lstat(path).then(() => true, () => false)) continue;
    let raw: Buffer | undefined;
    try {
      raw = await m.build();
    } catch {
      continue;
    }
    if (!raw) continue;
    const tmp = tempName(path);
    try {
      await fsp.writeFile(tmp, raw, { flag: 'wx', mode: 0o600 });
      await fsp.rename(tmp, path);
      out.push({ digest: hex, size: raw.length });
    } catch {
      await fsp.rm(tmp, { force: true });
    }
  }
  return out;
}

/** Materialises one chunk of a content into `out` at `offset`. Returns the chunk's size. */
export async function buildChunk(a: BuildChunkArgs): Promise<number> {
  let raw: Buffer;
  let rawSize: number;
  const direct = a.direct?.chunks.length === 1 ? await directChunks(a) : undefined;
  if (direct) {
    raw = direct[0];
    rawSize = a.direct!.chunks[0].rawSize;
  } else {
    const { chain, blob } = await open(a);
    const c = blob.chunks[a.chunk];
    if (!c) throw notFound(`content sha256:${a.digest} has no chunk ${a.chunk}`);
    raw = await chain.chunk(a.level, c);
    rawSize = c.rawSize;
  }
  // The chunk's digest is checked when it is decoded; its size decides where the next chunk goes.
  if (raw.length !== rawSize) throw corrupt(`${a.chain[a.level]}: chunk ${a.chunk} of sha256:${a.digest} is ${raw.length} bytes, its index says ${rawSize}`);
  const fh = await fsp.open(a.out, 'r+');
  try {
    await writeFully(fh, raw, a.offset);
  } finally {
    await fh.close();
  }
  return raw.length;
}

/** True when the file at `path` has `size` bytes whose sha256 is `digest`. */
export async function verifyFile(a: VerifyFileArgs): Promise<boolean> {
  const st = await fsp.stat(a.path);
  if (st.size !== a.size) return false;
  const h = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    createReadStream(a.path, { highWaterMark: 1024 * 1024 })
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve());
  });
  return h.digest('hex') === a.digest;
}

/**
 * When this thread has been idle a moment (workers/thread.ts): the bases and
 * decoded groups it keeps go, so that the manager's memory after a burst of
 * reads is its index and little else.
 */
export function onThreadIdle(): void {
  dropBases();
  dictGroups.clear();
  forgetDecodedGroups();
}

/** Drops the per-worker base cache (tests, memory pressure). */
export function dropBases(): number {
  const n = bases.size;
  bases.clear();
  baseBytes = 0;
  return n;
}
